// Chooses the task of each AGD step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imp {

// Draws task indices with probabilities proportional to `weights`.
//   multinomial: an independent draw per step (the IMP paper's sampler).
//   round_robin: a fixed interleaved order in which each task gets its share
//                of every window of steps (smooth weighted round robin).
// The sequence depends only on the weights, the mode and the seed, so every
// process of a data-parallel run draws the same task at each step.
class TaskSampler {
 public:
  TaskSampler(std::vector<double> weights, std::string mode, uint64_t seed);
  virtual ~TaskSampler() = default;

  // Task index for step `step`. Steps must be asked for in order 0, 1, 2, ...
  virtual size_t next(int64_t step);

  // Reports the loss a task reached, for samplers that adapt to training
  // state (e.g. loss as reward). The fixed samplers here ignore it.
  virtual void observe(size_t task, double loss) {}

  // Normalised probabilities, one per task.
  const std::vector<double>& probabilities() const { return probabilities_; }

 private:
  std::vector<double> probabilities_;
  std::vector<double> cumulative_;
  std::string mode_;
  uint64_t seed_;
  std::vector<double> credit_;  // round_robin state
};

}  // namespace imp
