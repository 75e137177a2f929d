#include "imp/train/adamw.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

namespace imp {
namespace {

using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;

// Sizes below, at and above one SSE2 group, and spanning several of the
// optimizer's 256K-element slices. Together they pass the 1M elements from
// which the update runs on several threads.
const std::vector<int64_t> kSizes = {1, 3, 4, 7, 1000, 40000, (1 << 18) + 5, 3 * (1 << 18) + 1000};

std::vector<torch::Tensor> make_parameters() {
  std::vector<torch::Tensor> parameters;
  for (int64_t size : kSizes) parameters.push_back(torch::randn({size}).requires_grad_(true));
  return parameters;
}

std::vector<torch::Tensor> copy_of(const std::vector<torch::Tensor>& parameters) {
  std::vector<torch::Tensor> copies;
  for (const torch::Tensor& p : parameters) copies.push_back(p.detach().clone().requires_grad_(true));
  return copies;
}

// Gives each parameter the same gradient in both lists, except `skipped`,
// which gets none, as a parameter that a task does not reach.
void set_gradients(std::vector<torch::Tensor>& a, std::vector<torch::Tensor>& b, size_t skipped) {
  for (size_t i = 0; i < a.size(); ++i) {
    a[i].mutable_grad().reset();
    b[i].mutable_grad().reset();
    if (i == skipped) continue;
    const torch::Tensor grad = torch::randn_like(a[i]) * static_cast<double>(i + 1);
    a[i].mutable_grad() = grad.clone();
    b[i].mutable_grad() = grad.clone();
  }
}

const AdamWParamState& state_of(torch::optim::Optimizer& optimizer, const torch::Tensor& parameter) {
  return static_cast<const AdamWParamState&>(
      *optimizer.state().at(optimizer_state_key(parameter)));
}

double max_relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item<double>();
}

TEST(FusedAdamW, MatchesLibTorchAdamW) {
  for (const double weight_decay : {0.0, 0.05}) {
    torch::manual_seed(3);
    std::vector<torch::Tensor> fused_parameters = make_parameters();
    std::vector<torch::Tensor> plain_parameters = copy_of(fused_parameters);
    const AdamWOptions options = AdamWOptions(1e-2).betas({0.9, 0.98}).eps(1e-6).weight_decay(weight_decay);
    FusedAdamW fused(fused_parameters, options);
    torch::optim::AdamW plain(plain_parameters, options);
    for (int step = 0; step < 6; ++step) {
      // Parameter 2 misses steps 1 and 4, so its step count falls behind.
      set_gradients(fused_parameters, plain_parameters, step % 3 == 1 ? 2 : kSizes.size());
      fused.step();
      plain.step();
    }
    for (size_t i = 0; i < fused_parameters.size(); ++i) {
      SCOPED_TRACE("size " + std::to_string(kSizes[i]) + ", weight decay " + std::to_string(weight_decay));
      EXPECT_LT(max_relative_difference(fused_parameters[i], plain_parameters[i]), 1e-6);
      const AdamWParamState& a = state_of(fused, fused_parameters[i]);
      const AdamWParamState& b = state_of(plain, plain_parameters[i]);
      EXPECT_EQ(a.step(), b.step());
      EXPECT_EQ(a.step(), i == 2 ? 4 : 6);
      EXPECT_LT(max_relative_difference(a.exp_avg(), b.exp_avg()), 1e-6);
      EXPECT_LT(max_relative_difference(a.exp_avg_sq(), b.exp_avg_sq()), 1e-6);
    }
  }
}

TEST(FusedAdamW, ThreadCountKeepsValues) {
  torch::manual_seed(4);
  std::vector<torch::Tensor> serial = make_parameters();
  std::vector<torch::Tensor> parallel = copy_of(serial);
  const AdamWOptions options = AdamWOptions(1e-2).weight_decay(0.05);
  FusedAdamW serial_optimizer(serial, options);
  FusedAdamW parallel_optimizer(parallel, options);
  const int threads = at::get_num_threads();
  for (int step = 0; step < 3; ++step) {
    set_gradients(serial, parallel, kSizes.size());
    at::set_num_threads(1);
    serial_optimizer.step();
    at::set_num_threads(2);
    parallel_optimizer.step();
  }
  at::set_num_threads(threads);
  for (size_t i = 0; i < serial.size(); ++i) {
    EXPECT_TRUE(torch::equal(serial[i], parallel[i])) << "size " << kSizes[i];
  }
}

TEST(FusedAdamW, ParameterWithoutGradientStaysPut) {
  torch::manual_seed(4);
  torch::Tensor used = torch::randn({10}).requires_grad_(true);
  torch::Tensor unused = torch::randn({10}).requires_grad_(true);
  const torch::Tensor before = unused.detach().clone();
  FusedAdamW optimizer({used, unused}, AdamWOptions(1e-2).weight_decay(0.1));
  used.mutable_grad() = torch::ones({10});
  optimizer.step();
  EXPECT_TRUE(torch::equal(unused.detach(), before));
  EXPECT_EQ(optimizer.state().count(optimizer_state_key(unused)), 0u);
  EXPECT_FALSE(torch::equal(used.detach(), before));
}

// amsgrad has no fused pass: the whole step is LibTorch's, bit for bit.
TEST(FusedAdamW, AmsgradTakesLibTorchStep) {
  torch::manual_seed(5);
  std::vector<torch::Tensor> fused_parameters = make_parameters();
  std::vector<torch::Tensor> plain_parameters = copy_of(fused_parameters);
  const AdamWOptions options = AdamWOptions(1e-2).amsgrad(true);
  FusedAdamW fused(fused_parameters, options);
  torch::optim::AdamW plain(plain_parameters, options);
  for (int step = 0; step < 3; ++step) {
    set_gradients(fused_parameters, plain_parameters, kSizes.size());
    fused.step();
    plain.step();
  }
  for (size_t i = 0; i < fused_parameters.size(); ++i) {
    EXPECT_TRUE(torch::equal(fused_parameters[i].detach(), plain_parameters[i].detach())) << kSizes[i];
  }
}

}  // namespace
}  // namespace imp
