// Progress bar drawing with carriage returns; no escape sequences, so any terminal shows it.
#include "tools/io/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace qforge::io {

namespace {

constexpr auto kRedrawInterval = std::chrono::milliseconds(100);
constexpr int kDefaultWidth = 80;
constexpr int kMinBar = 10;
constexpr int kMaxBar = 40;

int terminal_width() {
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return kDefaultWidth;
}

std::string format_rate(double rate) {
  char buffer[32];
  // Fixed width, so that the bar does not jump as the rate changes.
  std::snprintf(buffer, sizeof buffer, rate >= 100 ? "%5.0f" : "%5.1f", rate);
  return buffer;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  auto total = static_cast<long long>(seconds);
  long long h = total / 3600, m = total / 60 % 60, s = total % 60;
  char buffer[48];
  if (h > 0) {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", h, m, s);
  } else {
    std::snprintf(buffer, sizeof buffer, "%02lld:%02lld", m, s);
  }
  return buffer;
}

std::string format_progress(std::string_view label, size_t done, size_t total,
                            std::string_view unit, double elapsed_s, int width) {
  // Built with append: GCC 12 warns falsely (-Wrestrict) on "literal" + std::string&&.
  std::string stats = std::to_string(done);
  if (total > 0) {
    std::string total_text = std::to_string(total);
    if (stats.size() < total_text.size()) stats.insert(0, total_text.size() - stats.size(), ' ');
    stats.append("/").append(total_text);
  }
  if (!unit.empty()) stats.append(" ").append(unit);
  double rate = elapsed_s > 0 ? static_cast<double>(done) / elapsed_s : 0.0;
  if (elapsed_s > 0) {
    stats.append(" ").append(format_rate(rate)).append(" ");
    stats.append(unit.empty() ? std::string_view("it") : unit).append("/s");
  }
  stats.append(" ").append(format_duration(elapsed_s));
  if (total > 0) {
    double eta = rate > 0 ? static_cast<double>(total - std::min(done, total)) / rate : -1.0;
    stats.append("<").append(format_duration(eta));
  }

  std::string line(label);
  int room = width - 1 - static_cast<int>(line.size() + stats.size()) - 4;  // spaces, brackets
  if (total > 0 && room >= kMinBar) {
    int bar = std::min(room, kMaxBar);
    int filled = static_cast<int>(static_cast<double>(bar) * std::min(done, total) / total);
    line.append(" [").append(filled, '#').append(bar - filled, '.').append("]");
  }
  line.append(" ").append(stats);
  if (width > 1 && line.size() > static_cast<size_t>(width - 1)) line.resize(width - 1);
  return line;
}

bool progress_enabled() {
  return ::isatty(STDERR_FILENO) == 1 && std::getenv("QFORGE_NO_PROGRESS") == nullptr;
}

Progress::Progress(std::string label, size_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      enabled_(progress_enabled()),
      start_(Clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  std::lock_guard lock(mutex_);
  if (!enabled_ || finished_ || !drawn_) return;
  write_line_locked("");
  std::fputc('\r', stderr);
  std::fflush(stderr);
}

size_t Progress::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

void Progress::set_label(std::string label) {
  std::lock_guard<std::mutex> lock(mutex_);
  label_ = std::move(label);
}

void Progress::advance(size_t n) {
  std::lock_guard lock(mutex_);
  done_ += n;
  if (!enabled_ || finished_) return;
  Clock::time_point now = Clock::now();
  // The first draw also waits one interval: a rate over a few microseconds means nothing.
  if (now - last_draw_ < kRedrawInterval) return;
  draw_locked(now);
}

void Progress::finish() {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw_locked(Clock::now());
  std::fputc('\n', stderr);
  std::fflush(stderr);
}

void Progress::draw_locked(Clock::time_point now) {
  double elapsed = std::chrono::duration<double>(now - start_).count();
  write_line_locked(format_progress(label_, done_, total_, unit_, elapsed, terminal_width()));
  last_draw_ = now;
  drawn_ = true;
}

void Progress::write_line_locked(const std::string& line) {
  // Spaces over whatever the previous, longer line left behind.
  std::string out = "\r" + line;
  if (line.size() < last_length_) out.append(last_length_ - line.size(), ' ');
  last_length_ = line.size();
  std::fputs(out.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace qforge::io
