// Checking the qforge::Error a call throws.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "kernels/error.h"

namespace qforge::testing {

// Runs fn, expects a qforge::Error of the given kind, returns its message.
template <class Fn>
std::string error_of(ErrorKind kind, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no qforge::Error thrown";
  return {};
}

}  // namespace qforge::testing
