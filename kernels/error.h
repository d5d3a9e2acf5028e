// Typed errors shared by every layer. "Invalid" input is told apart from valid but unsupported
// input; the command line turns either into one line on stderr and a non-zero exit.
#pragma once

#include <stdexcept>
#include <string>

namespace qforge {

enum class ErrorKind {
  kInvalid,      // the input breaks a rule (bad file, bad shape, bad flag)
  kUnsupported,  // the input is valid but qforge does not handle it (unknown op, attribute value)
  kIo,           // a file cannot be read or written
  kInternal,     // an invariant of qforge itself failed
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] inline void throw_invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalid, message);
}
[[noreturn]] inline void throw_unsupported(const std::string& message) {
  throw Error(ErrorKind::kUnsupported, message);
}
[[noreturn]] inline void throw_io(const std::string& message) {
  throw Error(ErrorKind::kIo, message);
}
[[noreturn]] inline void throw_internal(const std::string& message) {
  throw Error(ErrorKind::kInternal, message);
}

}  // namespace qforge
