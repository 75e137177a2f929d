// What a training run shows while it runs: on a terminal, one line that is
// rewritten in place (step, task, loss, tokens/s, time left); elsewhere (a
// log file, a batch job) only the periodic summary lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace imp {

// "1h02m", "4m05s", "12s".
std::string format_duration(double seconds);

class ProgressDisplay {
 public:
  // mode: "live", "lines", or "auto" (live when `out` is a terminal).
  // Steps run from first_step + 1 to total_steps.
  ProgressDisplay(const std::string& mode, int64_t first_step, int64_t total_steps,
                  FILE* out = stdout);

  bool live() const { return live_; }

  // After each step: rewrites the live line, at most a few times a second.
  void step(int64_t step, const std::string& task, double loss, int64_t tokens);

  // Prints a whole line (a log line, a note) above the live line.
  void print_line(const std::string& line);

  // Estimated seconds until the last step, from the pace since the start;
  // negative before the first step has finished.
  double seconds_left(int64_t step) const;

  // Ends the live line so that later output starts on a fresh line.
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  void clear_live_line();

  FILE* out_;
  bool live_ = false;
  int64_t first_step_;
  int64_t total_steps_;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_draw_{};
  // Tokens since the last redraw, and an exponential average of the rate.
  int64_t tokens_since_draw_ = 0;
  double smoothed_tokens_per_second_ = 0.0;
  size_t drawn_width_ = 0;
};

}  // namespace imp
