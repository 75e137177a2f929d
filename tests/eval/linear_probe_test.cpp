#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/core/autocast.h"
#include "imp/eval/linear_probe.h"

namespace imp {
namespace {

TEST(LinearProbe, SeparatesGaussianClusters) {
  // Three well separated clusters in 8 dims: a logistic regression must be
  // near perfect on fresh samples of the same clusters.
  torch::manual_seed(0);
  torch::Tensor centres = torch::randn({3, 8}) * 5;
  auto sample = [&](int64_t n) {
    torch::Tensor labels = torch::arange(n) % 3;
    torch::Tensor x = centres.index_select(0, labels) + torch::randn({n, 8});
    return std::make_pair(x, labels);
  };
  auto [train_x, train_y] = sample(600);
  auto [test_x, test_y] = sample(300);
  EXPECT_GE(linear_probe_accuracy(train_x, train_y, test_x, test_y, 3), 0.97);
}

TEST(LinearProbe, FitsInsideBf16Autocast) {
  // Callers evaluate models under autocast; the probe must still optimise in fp32.
  torch::manual_seed(2);
  torch::Tensor centres = torch::randn({2, 16}) * 3;
  torch::Tensor labels = torch::arange(400) % 2;
  torch::Tensor x = centres.index_select(0, labels) + torch::randn({400, 16});
  AutocastScope bf16(c10::kCPU, true);
  EXPECT_GE(linear_probe_accuracy(x, labels, x, labels, 2), 0.95);
}

TEST(LinearProbe, ChanceOnNoiseLabels) {
  torch::manual_seed(1);
  torch::Tensor train_x = torch::randn({400, 4}), test_x = torch::randn({2000, 4});
  torch::Tensor train_y = torch::randint(0, 2, {400}), test_y = torch::randint(0, 2, {2000});
  const double accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, 2);
  EXPECT_GT(accuracy, 0.42);
  EXPECT_LT(accuracy, 0.58);
}

}  // namespace
}  // namespace imp
