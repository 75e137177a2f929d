#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/model/position.h"

namespace imp {
namespace {

TEST(PositionResize, SameGridOnlyReshapes) {
  // A [1, D=2, 2, 3] table lays out as [1, 6, 2] with token n = (row, col).
  torch::Tensor table = torch::arange(12, torch::kFloat).reshape({1, 2, 2, 3});
  torch::Tensor out = resize_positions(table, {2, 3});
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({1, 6, 2}));
  EXPECT_EQ(out[0][4][0].item<float>(), 4.0f);   // channel 0 at (1, 1)
  EXPECT_EQ(out[0][4][1].item<float>(), 10.0f);  // channel 1 at (1, 1)
}

TEST(PositionResize, ConstantTableStaysConstant) {
  torch::Tensor table = torch::full({1, 4, 1, 3, 3}, 0.5);
  torch::Tensor out = resize_positions(table, {2, 6, 6});
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({1, 72, 4}));
  EXPECT_TRUE(torch::allclose(out, torch::full_like(out, 0.5)));
}

TEST(PositionResize, LinearRampInterpolatesBetweenCentres) {
  // 1D table [0, 1] on 2 positions resized to 4 with align_corners=false:
  // new centres sit at source coordinates -0.25, 0.25, 0.75, 1.25, which
  // clamp at the ends: 0, 0.25, 0.75, 1.
  torch::Tensor table = torch::tensor({0.0f, 1.0f}).reshape({1, 1, 2});
  torch::Tensor out = resize_positions(table, {4}).reshape({4});
  torch::Tensor expected = torch::tensor({0.0f, 0.25f, 0.75f, 1.0f});
  EXPECT_TRUE(torch::allclose(out, expected)) << out;
}

TEST(PositionResize, BilinearMatchesSeparableRamps) {
  // table(y, x) = y + 10 x on a 2x2 grid, resized to 4x4: bilinear
  // interpolation of a separable linear function is the same function of the
  // clamped source coordinates, so out(i, j) = ry(i) + 10 rx(j).
  torch::Tensor table = torch::tensor({0.0f, 10.0f, 1.0f, 11.0f}).reshape({1, 1, 2, 2});
  torch::Tensor out = resize_positions(table, {4, 4}).reshape({4, 4});
  const float ramp[4] = {0.0f, 0.25f, 0.75f, 1.0f};
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      EXPECT_NEAR(out[i][j].item<float>(), ramp[i] + 10.0f * ramp[j], 1e-5) << i << "," << j;
    }
  }
}

TEST(PositionResize, GradientFlowsToTable) {
  torch::Tensor table = torch::randn({1, 3, 2, 2}, torch::requires_grad());
  resize_positions(table, {5, 5}).sum().backward();
  ASSERT_TRUE(table.grad().defined());
  // Every output position's weights sum to one, so the gradients do too.
  EXPECT_NEAR(table.grad().sum().item<float>(), 3.0f * 25.0f, 1e-3);
}

TEST(PositionResize, RejectsRankMismatch) {
  torch::Tensor table = torch::zeros({1, 3, 2, 2});
  EXPECT_THROW(resize_positions(table, {2, 2, 2}), c10::Error);
}

}  // namespace
}  // namespace imp
