#include <gtest/gtest.h>

#include "imp/train/lr_schedule.h"

namespace imp {
namespace {

TEST(LearningRate, WarmupThenCosine) {
  OptimizerConfig config;
  config.lr = 1e-3;
  config.end_lr = 0.0;
  config.warmup_steps = 10;
  // Warmup: step s gets lr * (s + 1) / warmup.
  EXPECT_DOUBLE_EQ(learning_rate(config, 0, 110), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(config, 9, 110), 1e-3);
  // Decay over steps 10..109 (99 intervals): peak at 10, half way at 10 + 49.5, end at 109.
  EXPECT_DOUBLE_EQ(learning_rate(config, 10, 110), 1e-3);
  EXPECT_NEAR(learning_rate(config, 109, 110), 0.0, 1e-12);
  EXPECT_NEAR(learning_rate(config, 59, 110), 0.5e-3 * (1 + std::cos(M_PI * 49.0 / 99.0)), 1e-12);
}

TEST(LearningRate, EndsAtEndLr) {
  OptimizerConfig config;
  config.lr = 1.0;
  config.end_lr = 0.1;
  config.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(learning_rate(config, 0, 50), 1.0);
  EXPECT_NEAR(learning_rate(config, 49, 50), 0.1, 1e-12);
  for (int s = 1; s < 50; ++s) {
    EXPECT_LE(learning_rate(config, s, 50), learning_rate(config, s - 1, 50)) << "step " << s;
  }
}

}  // namespace
}  // namespace imp
