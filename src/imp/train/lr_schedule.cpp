#include "imp/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace imp {

double learning_rate(const OptimizerConfig& config, int64_t step, int64_t total_steps) {
  if (step < config.warmup_steps) {
    return config.lr * static_cast<double>(step + 1) / config.warmup_steps;
  }
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - 1 - config.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - config.warmup_steps) / decay_steps);
  return config.end_lr + 0.5 * (config.lr - config.end_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace imp
