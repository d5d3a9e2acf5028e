// A temporary file of float values written in order and read back in the same order: results
// that must outlive the model producing them without staying in memory (the float model's
// outputs, compared later with the Q/DQ model's). The file has no name: it is unlinked as soon
// as it is made and disappears with the process.
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace qforge::io {

class FloatSpill {
 public:
  // In $TMPDIR, or /tmp. Io error naming the directory when no file can be made there.
  FloatSpill();
  ~FloatSpill();
  FloatSpill(const FloatSpill&) = delete;
  FloatSpill& operator=(const FloatSpill&) = delete;

  void append(std::span<const float> values);
  // Reading starts again at the first value appended.
  void rewind();
  // The next values.size() values (an internal error past the end of what was appended).
  void read(std::span<float> values);

  size_t size() const { return appended_; }  // values appended

 private:
  [[noreturn]] void fail(const std::string& what, int error_number) const;

  std::string directory_;
  int fd_ = -1;
  size_t appended_ = 0;
  size_t read_ = 0;
};

}  // namespace qforge::io
