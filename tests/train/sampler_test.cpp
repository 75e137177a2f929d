#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "imp/core/error.h"
#include "imp/train/sampler.h"

namespace imp {
namespace {

std::vector<size_t> draw(TaskSampler& sampler, int64_t steps) {
  std::vector<size_t> out;
  for (int64_t s = 0; s < steps; ++s) out.push_back(sampler.next(s));
  return out;
}

TEST(TaskSampler, MultinomialFrequenciesFollowWeights) {
  const std::vector<double> weights = {60000, 30000, 10000};
  TaskSampler sampler(weights, "multinomial", 7);
  const int64_t steps = 200000;
  std::vector<double> counts(3, 0.0);
  for (size_t task : draw(sampler, steps)) counts[task] += 1;
  for (size_t t = 0; t < 3; ++t) {
    const double p = weights[t] / 100000.0;
    // Five binomial standard deviations: a false alarm about once in 3 million runs.
    const double tolerance = 5.0 * std::sqrt(p * (1 - p) / steps);
    EXPECT_NEAR(counts[t] / steps, p, tolerance) << "task " << t;
  }
}

TEST(TaskSampler, SameSeedSameDraws) {
  TaskSampler a({1, 2, 3}, "multinomial", 42);
  TaskSampler b({1, 2, 3}, "multinomial", 42);
  EXPECT_EQ(draw(a, 5000), draw(b, 5000));
}

TEST(TaskSampler, DifferentSeedDifferentDraws) {
  TaskSampler a({1, 1}, "multinomial", 1);
  TaskSampler b({1, 1}, "multinomial", 2);
  EXPECT_NE(draw(a, 200), draw(b, 200));
}

TEST(TaskSampler, ProbabilitiesAreNormalised) {
  TaskSampler sampler({3, 1}, "multinomial", 0);
  ASSERT_EQ(sampler.probabilities().size(), 2u);
  EXPECT_DOUBLE_EQ(sampler.probabilities()[0], 0.75);
  EXPECT_DOUBLE_EQ(sampler.probabilities()[1], 0.25);
}

TEST(TaskSampler, ZeroWeightTaskNeverDrawn) {
  TaskSampler sampler({1, 0, 1}, "multinomial", 3);
  for (size_t task : draw(sampler, 10000)) EXPECT_NE(task, 1u);
}

TEST(TaskSampler, RoundRobinGivesExactShares) {
  // Weights 2:1:1: every window of 4 steps contains task 0 twice and the others once.
  TaskSampler sampler({2, 1, 1}, "round_robin", 0);
  std::vector<size_t> steps = draw(sampler, 400);
  for (size_t window = 0; window < 400; window += 4) {
    std::vector<int> counts(3, 0);
    for (size_t s = window; s < window + 4; ++s) counts[steps[s]] += 1;
    EXPECT_EQ(counts, (std::vector<int>{2, 1, 1})) << "window at step " << window;
  }
}

TEST(TaskSampler, RejectsBadWeightsAndMode) {
  EXPECT_THROW(TaskSampler({}, "multinomial", 0), ConfigError);
  EXPECT_THROW(TaskSampler({0, 0}, "multinomial", 0), ConfigError);
  EXPECT_THROW(TaskSampler({1, -1}, "multinomial", 0), ConfigError);
  EXPECT_THROW(TaskSampler({1}, "random", 0), ConfigError);
}

}  // namespace
}  // namespace imp
