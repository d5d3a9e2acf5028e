// FloatSpill: values come back in the order they went in, after a rewind as often as asked, and
// reading past the end is an error, not garbage.
#include "tools/io/spill_file.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/error.h"

namespace qforge::io {
namespace {

TEST(FloatSpill, ReadsBackWhatWasAppendedInOrder) {
  FloatSpill spill;
  std::vector<float> a(1000), b(3);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) * 0.5f - 7.f;
  b = {-0.0f, 1e-30f, 3.5e30f};
  spill.append(a);
  spill.append(b);
  EXPECT_EQ(spill.size(), 1003u);
  for (int pass = 0; pass < 2; ++pass) {
    spill.rewind();
    std::vector<float> first(600), second(403);
    spill.read(first);
    spill.read(second);
    for (size_t i = 0; i < 600; ++i) ASSERT_EQ(first[i], a[i]) << i;
    for (size_t i = 0; i < 400; ++i) ASSERT_EQ(second[i], a[600 + i]) << i;
    for (size_t i = 0; i < 3; ++i) ASSERT_EQ(second[400 + i], b[i]) << i;
    EXPECT_TRUE(std::signbit(second[400]));
  }
  std::vector<float> more(1);
  EXPECT_THROW(spill.read(more), Error);
}

TEST(FloatSpill, AnUnusableDirectoryIsNamed) {
  const char* old = std::getenv("TMPDIR");
  const std::string saved = old ? old : "";
  ::setenv("TMPDIR", "/nonexistent/qforge-spill-dir", 1);
  try {
    FloatSpill spill;
    ADD_FAILURE() << "a temporary file was made in a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/qforge-spill-dir"), std::string::npos)
        << e.what();
  }
  if (old) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
}

}  // namespace
}  // namespace qforge::io
