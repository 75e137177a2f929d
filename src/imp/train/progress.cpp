#include "imp/train/progress.h"

#include <unistd.h>

#include <algorithm>

namespace imp {

std::string format_duration(double seconds) {
  if (seconds < 0) return "?";
  const long long total = static_cast<long long>(seconds + 0.5);
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof(text), "%lldh%02lldm", total / 3600, (total % 3600) / 60);
  } else if (total >= 60) {
    std::snprintf(text, sizeof(text), "%lldm%02llds", total / 60, total % 60);
  } else {
    std::snprintf(text, sizeof(text), "%llds", total);
  }
  return text;
}

ProgressDisplay::ProgressDisplay(const std::string& mode, int64_t first_step, int64_t total_steps,
                                 FILE* out)
    : out_(out), first_step_(first_step), total_steps_(total_steps) {
  live_ = mode == "live" || (mode == "auto" && ::isatty(::fileno(out)) == 1);
}

double ProgressDisplay::seconds_left(int64_t step) const {
  const int64_t done = step - first_step_;
  if (done <= 0) return -1.0;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  return elapsed / static_cast<double>(done) * static_cast<double>(total_steps_ - step);
}

void ProgressDisplay::clear_live_line() {
  if (drawn_width_ == 0) return;
  std::fprintf(out_, "\r%*s\r", static_cast<int>(drawn_width_), "");
  drawn_width_ = 0;
}

void ProgressDisplay::step(int64_t step, const std::string& task, double loss, int64_t tokens) {
  if (!live_) return;
  tokens_since_draw_ += tokens;
  const Clock::time_point now = Clock::now();
  const double since_draw = std::chrono::duration<double>(now - last_draw_).count();
  if (since_draw < 0.25 && step != total_steps_) return;
  // The first line measures from the start.
  const double window = std::chrono::duration<double>(
      now - (last_draw_ == Clock::time_point{} ? start_ : last_draw_)).count();
  if (window > 0) {
    const double rate = tokens_since_draw_ / window;
    smoothed_tokens_per_second_ =
        smoothed_tokens_per_second_ > 0 ? 0.7 * smoothed_tokens_per_second_ + 0.3 * rate : rate;
  }
  last_draw_ = now;
  tokens_since_draw_ = 0;

  char line[256];
  const int width = std::snprintf(
      line, sizeof(line), "step %lld/%lld (%.0f%%) | %s loss %.4f | %.0f tokens/s | %s left",
      static_cast<long long>(step), static_cast<long long>(total_steps_),
      100.0 * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, total_steps_)),
      task.c_str(), loss, smoothed_tokens_per_second_, format_duration(seconds_left(step)).c_str());
  const size_t shown = std::min(static_cast<size_t>(std::max(width, 0)), sizeof(line) - 1);
  // Pad over a longer previous line instead of clearing it, which flickers.
  std::fprintf(out_, "\r%s%*s", line,
               static_cast<int>(drawn_width_ > shown ? drawn_width_ - shown : 0), "");
  drawn_width_ = shown;
  std::fflush(out_);
}

void ProgressDisplay::print_line(const std::string& line) {
  clear_live_line();
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void ProgressDisplay::finish() {
  clear_live_line();
  std::fflush(out_);
}

}  // namespace imp
