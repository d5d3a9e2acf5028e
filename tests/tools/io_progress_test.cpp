// Progress: the rendered line, and silence when disabled.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>

#include "tools/io/progress.h"

namespace qforge::io {
namespace {

TEST(IoProgress, LineShowsLabelBarCountsRateElapsedAndEta) {
  std::string line = format_progress("calibrate", 120, 360, "images", 2.0, 100);
  EXPECT_EQ(line.rfind("calibrate [", 0), 0u) << line;
  EXPECT_NE(line.find("] 120/360 images  60.0 images/s 00:02<00:04"), std::string::npos) << line;
  size_t open = line.find('['), close = line.find(']');
  std::string bar = line.substr(open + 1, close - open - 1);
  EXPECT_EQ(bar.size(), 40u);
  EXPECT_EQ(std::count(bar.begin(), bar.end(), '#'), 13);  // a third of 40, rounded down
  EXPECT_LE(line.size(), 99u);

  std::string done = format_progress("epoch 1", 360, 360, "images", 4.0, 80);
  std::string full = done.substr(done.find('[') + 1, done.find(']') - done.find('[') - 1);
  EXPECT_EQ(full, std::string(full.size(), '#')) << done;
  EXPECT_GE(full.size(), 10u);
  EXPECT_NE(done.find("] 360/360 images  90.0 images/s 00:04<00:00"), std::string::npos) << done;
}

TEST(IoProgress, NarrowTerminalsAndUnknownTotals) {
  std::string narrow = format_progress("calibrate", 1, 10, "batches", 1.0, 40);
  EXPECT_EQ(narrow.find('['), std::string::npos) << narrow;  // no room for a bar
  EXPECT_LE(narrow.size(), 39u);
  std::string unknown = format_progress("scan", 42, 0, "files", 0.0, 80);
  EXPECT_EQ(unknown, "scan 42 files 00:00");
  EXPECT_EQ(format_duration(3723.9), "1:02:03");
  EXPECT_EQ(format_duration(65), "01:05");
  EXPECT_EQ(format_duration(-1), "--:--");
  // Nothing done yet: no rate to estimate from.
  EXPECT_NE(format_progress("x", 0, 5, "", 1.0, 80).find("0/5   0.0 it/s 00:01<--:--"),
            std::string::npos);
}

TEST(IoProgress, DisabledByEnvironmentWritesNothing) {
  const char* old = std::getenv("QFORGE_NO_PROGRESS");
  std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  ::setenv("QFORGE_NO_PROGRESS", "1", 1);
  testing::internal::CaptureStderr();
  {
    Progress progress("calibrate", 3, "batches");
    EXPECT_FALSE(progress.enabled());
    progress.advance();
    progress.advance(2);
    EXPECT_EQ(progress.done(), 3u);
    progress.finish();
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  if (saved) {
    ::setenv("QFORGE_NO_PROGRESS", saved->c_str(), 1);
  } else {
    ::unsetenv("QFORGE_NO_PROGRESS");
  }
}

}  // namespace
}  // namespace qforge::io
