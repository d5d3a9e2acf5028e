// A one-line progress bar on stderr for long jobs (calibration passes, QAT epochs). It draws only
// when stderr is a terminal and QFORGE_NO_PROGRESS is unset, so logs and pipes stay clean.
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <string_view>

namespace qforge::io {

// Renders one progress line of at most width - 1 characters, e.g.
//   "calibrate [#######.......] 120/360 images  45.2 images/s 00:02<00:05"
// total 0 means unknown: no bar and no ETA.
std::string format_progress(std::string_view label, size_t done, size_t total,
                            std::string_view unit, double elapsed_s, int width);

// "00:05", "1:02:03".
std::string format_duration(double seconds);

// Thread-safe; redraws at most about 10 times per second.
class Progress {
 public:
  Progress(std::string label, size_t total, std::string unit);
  // Without finish(), for instance while an exception unwinds, the line is erased.
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(size_t n = 1);
  // Replaces the label (a QAT epoch's running loss and learning rate); drawn with the next
  // advance.
  void set_label(std::string label);
  // Draws the final state and ends the line. Later calls do nothing.
  void finish();
  bool enabled() const { return enabled_; }
  size_t done() const;

 private:
  using Clock = std::chrono::steady_clock;
  void draw_locked(Clock::time_point now);
  void write_line_locked(const std::string& line);

  std::string label_;
  size_t total_;
  std::string unit_;
  bool enabled_;
  bool finished_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_;
  bool drawn_ = false;
  size_t done_ = 0;
  size_t last_length_ = 0;
  mutable std::mutex mutex_;
};

// True when stderr is a terminal and QFORGE_NO_PROGRESS is not set.
bool progress_enabled();

}  // namespace qforge::io
