#include "imp/train/sampler.h"

#include <algorithm>
#include <numeric>

#include "imp/core/error.h"
#include "imp/core/random.h"

namespace imp {

TaskSampler::TaskSampler(std::vector<double> weights, std::string mode, uint64_t seed)
    : mode_(std::move(mode)), seed_(seed) {
  IMP_REQUIRE(ConfigError, !weights.empty(), "the task sampler needs at least one task");
  IMP_REQUIRE(ConfigError, mode_ == "multinomial" || mode_ == "round_robin",
              "train.sampler is '", mode_, "'; expected multinomial or round_robin");
  double total = 0.0;
  for (size_t i = 0; i < weights.size(); ++i) {
    IMP_REQUIRE(ConfigError, weights[i] >= 0.0, "task ", i, " has a negative weight ", weights[i]);
    total += weights[i];
  }
  IMP_REQUIRE(ConfigError, total > 0.0, "all task weights are zero; give some task a weight > 0");

  double running = 0.0;
  for (double w : weights) {
    probabilities_.push_back(w / total);
    running += w / total;
    cumulative_.push_back(running);
  }
  cumulative_.back() = 1.0;  // no gap above the last task from rounding
  credit_.assign(weights.size(), 0.0);
}

size_t TaskSampler::next(int64_t step) {
  if (mode_ == "multinomial") {
    const double u = unit_double(mix64(seed_, static_cast<uint64_t>(step)));
    return std::upper_bound(cumulative_.begin(), cumulative_.end(), u) - cumulative_.begin();
  }
  // Smooth weighted round robin: every task earns its probability each step;
  // the richest task runs and pays one step back.
  for (size_t i = 0; i < credit_.size(); ++i) credit_[i] += probabilities_[i];
  const size_t chosen = std::max_element(credit_.begin(), credit_.end()) - credit_.begin();
  credit_[chosen] -= 1.0;
  return chosen;
}

}  // namespace imp
