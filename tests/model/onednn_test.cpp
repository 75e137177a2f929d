#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "imp/core/autocast.h"
#include "imp/model/linear.h"
#include "imp/model/onednn_attention.h"

namespace imp {
namespace {

// Attention written out with LibTorch operators: softmax(Q K^T / sqrt(K)) V
// per head, padded keys excluded. qkv: [B, N, 3D]; returns [B, N, D].
torch::Tensor attention_by_definition(const torch::Tensor& qkv, const torch::Tensor& mask, int64_t heads) {
  const int64_t B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3, K = D / heads;
  const torch::Tensor split = qkv.reshape({B, N, 3, heads, K}).permute({2, 0, 3, 1, 4});
  torch::Tensor scores = torch::matmul(split[0], split[1].transpose(-2, -1)) / std::sqrt(double(K));
  if (mask.defined()) scores = scores.masked_fill(mask.reshape({B, 1, 1, N}).logical_not(), -INFINITY);
  return torch::matmul(scores.softmax(-1), split[2]).transpose(1, 2).reshape({B, N, D});
}

struct Result {
  torch::Tensor output, grad;
};

Result run(bool fused, const torch::Tensor& qkv_values, const torch::Tensor& mask, int64_t heads,
           const torch::Tensor& grad_output) {
  torch::Tensor qkv = qkv_values.detach().clone().requires_grad_(true);
  torch::Tensor output = fused ? onednn_attention(qkv, mask, heads) : attention_by_definition(qkv, mask, heads);
  output.backward(grad_output.to(output.scalar_type()));
  return {output.detach(), qkv.grad()};
}

// Largest difference relative to the reference's largest magnitude.
double relative_error(const torch::Tensor& value, const torch::Tensor& reference) {
  return (value.to(torch::kFloat) - reference).abs().max().item<double>() /
         reference.abs().max().item<double>();
}

class OnednnAttention : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!onednn_attention_applies(torch::zeros({1, 1, 3}))) GTEST_SKIP() << "built without oneDNN";
    torch::manual_seed(7);
  }
};

TEST_F(OnednnAttention, FloatMatchesDefinition) {
  const int64_t B = 3, N = 11, D = 24, heads = 3;
  const torch::Tensor qkv = torch::randn({B, N, 3 * D});
  const torch::Tensor grad = torch::randn({B, N, D});
  // Each example keeps a different number of keys, at least one.
  const torch::Tensor mask = torch::arange(N).unsqueeze(0) < torch::tensor({11, 6, 1}).unsqueeze(1);
  for (const torch::Tensor& m : {torch::Tensor(), mask}) {
    const Result fused = run(true, qkv, m, heads, grad);
    const Result reference = run(false, qkv, m, heads, grad);
    EXPECT_EQ(fused.output.sizes(), reference.output.sizes());
    EXPECT_LT(relative_error(fused.output, reference.output), 1e-6) << "mask " << m.defined();
    EXPECT_LT(relative_error(fused.grad, reference.grad), 1e-6) << "mask " << m.defined();
  }
}

// In both dtypes: bfloat16 reads the heads through another memory layout.
TEST_F(OnednnAttention, PaddedKeysAreIgnored) {
  const int64_t B = 2, N = 5, D = 8, heads = 2;
  for (const torch::ScalarType type : {torch::kFloat, torch::kBFloat16}) {
    if (!onednn_attention_applies(torch::zeros({1, 1, 3}, type))) continue;
    torch::Tensor qkv = torch::randn({B, N, 3 * D}).to(type);
    const torch::Tensor mask = torch::tensor({true, true, false, true, false}).expand({B, N});
    const Result before = run(true, qkv, mask, heads, torch::ones({B, N, D}));
    // Changing the padded tokens' keys and values changes nothing.
    torch::Tensor changed = qkv.clone();
    changed.index_put_({torch::indexing::Slice(), torch::tensor({2, 4}), torch::indexing::Slice(D, 3 * D)}, 100.0);
    const Result after = run(true, changed, mask, heads, torch::ones({B, N, D}));
    EXPECT_TRUE(torch::equal(before.output, after.output)) << type;
    // Their key and value gradients are zero.
    const torch::Tensor padded = before.grad.index({torch::indexing::Slice(), torch::tensor({2, 4}),
                                                    torch::indexing::Slice(D, 3 * D)});
    EXPECT_EQ(padded.abs().max().item<float>(), 0.0f) << type;
  }
}

TEST_F(OnednnAttention, BfloatStaysCloseToFloat) {
  if (!onednn_attention_applies(torch::zeros({1, 1, 3}, torch::kBFloat16))) {
    GTEST_SKIP() << "this CPU has no oneDNN bfloat16 kernels";
  }
  const int64_t B = 2, N = 13, D = 12, heads = 3;
  const torch::Tensor qkv = torch::randn({B, N, 3 * D}).to(torch::kBFloat16);
  const torch::Tensor grad = torch::randn({B, N, D}).to(torch::kBFloat16);
  const torch::Tensor mask = torch::arange(N).unsqueeze(0) < torch::tensor({13, 4}).unsqueeze(1);
  for (const torch::Tensor& m : {torch::Tensor(), mask}) {
    const Result fused = run(true, qkv, m, heads, grad);
    // The definition on the same bfloat16 values, computed in float.
    const Result reference = run(false, qkv.to(torch::kFloat), m, heads, grad.to(torch::kFloat));
    EXPECT_EQ(fused.output.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(fused.grad.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(fused.grad.sizes(), qkv.sizes());
    EXPECT_LT(relative_error(fused.output, reference.output), 1e-2) << "mask " << m.defined();
    EXPECT_LT(relative_error(fused.grad, reference.grad), 2e-2) << "mask " << m.defined();
  }
}

TEST_F(OnednnAttention, RejectsIndivisibleWidth) {
  EXPECT_THROW(onednn_attention(torch::randn({1, 4, 3 * 10}), torch::Tensor(), 4), c10::Error);
}

// Gradients of `output` weighted by `weights`, for each of `inputs`.
std::vector<torch::Tensor> gradients(const torch::Tensor& output, const torch::Tensor& weights,
                                     const std::vector<torch::Tensor>& inputs) {
  return torch::autograd::grad({output}, inputs, {weights});
}

TEST(Linear, MatchesLayerAndGradients) {
  torch::manual_seed(3);
  torch::nn::Linear layer(24, 40);
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{5, 24}, std::vector<int64_t>{3, 7, 24}}) {
    const torch::Tensor x = torch::randn(shape).requires_grad_(true);
    const torch::Tensor ours = linear(layer, x);
    const torch::Tensor theirs = layer->forward(x);
    ASSERT_EQ(ours.sizes(), theirs.sizes());
    EXPECT_LT(relative_error(ours, theirs), 1e-6);
    const torch::Tensor weights = torch::randn(ours.sizes());
    const std::vector<torch::Tensor> inputs{x, layer->weight, layer->bias};
    const auto ours_grad = gradients(ours, weights, inputs), theirs_grad = gradients(theirs, weights, inputs);
    for (size_t i = 0; i < inputs.size(); ++i) {
      ASSERT_EQ(ours_grad[i].sizes(), theirs_grad[i].sizes()) << "input " << i;
      EXPECT_LT(relative_error(ours_grad[i], theirs_grad[i]), 1e-6) << "input " << i;
    }
  }
}

TEST(Linear, UnderAutocastIsTheLayer) {
  torch::nn::Linear layer(8, 4);
  const torch::Tensor x = torch::randn({6, 8});
  AutocastScope autocast(c10::DeviceType::CPU, true);
  const torch::Tensor ours = linear(layer, x);
  EXPECT_EQ(ours.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(ours, layer->forward(x)));
}

TEST(BatchedLinear, MatchesBaddbmmOnExpertSlice) {
  torch::manual_seed(5);
  // Experts 1 and 2 of 4, as a process of an expert-parallel run keeps them.
  const torch::Tensor all_weights = torch::randn({4, 16, 12});
  const torch::Tensor weight = all_weights.narrow(0, 1, 2).detach().requires_grad_(true);
  const torch::Tensor bias = torch::randn({2, 1, 12}).requires_grad_(true);
  const torch::Tensor x = torch::randn({2, 9, 16}).requires_grad_(true);
  const torch::Tensor ours = batched_linear(x, weight, bias);
  const torch::Tensor theirs = torch::baddbmm(bias, x, weight);
  ASSERT_EQ(ours.sizes(), theirs.sizes());
  EXPECT_LT(relative_error(ours, theirs), 1e-6);
  const torch::Tensor weights = torch::randn(ours.sizes());
  const std::vector<torch::Tensor> inputs{x, weight, bias};
  const auto ours_grad = gradients(ours, weights, inputs), theirs_grad = gradients(theirs, weights, inputs);
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_EQ(ours_grad[i].sizes(), theirs_grad[i].sizes()) << "input " << i;
    EXPECT_LT(relative_error(ours_grad[i], theirs_grad[i]), 1e-6) << "input " << i;
  }
  // No rows at all (an expert-parallel process that received no tokens).
  EXPECT_EQ(batched_linear(torch::zeros({2, 0, 16}), weight, bias).sizes(), torch::IntArrayRef({2, 0, 12}));
}

}  // namespace
}  // namespace imp
