#pragma once

#include "imp/config/config.h"

namespace imp {

// Learning rate at `step` (0-based) of `total_steps`: linear warmup from 0 to
// `lr` over warmup_steps, then cosine decay to end_lr at the last step.
double learning_rate(const OptimizerConfig& config, int64_t step, int64_t total_steps);

}  // namespace imp
