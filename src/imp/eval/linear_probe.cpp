#include "imp/eval/linear_probe.h"

#include <torch/nn/functional/loss.h>
#include <torch/optim/lbfgs.h>

#include "imp/core/autocast.h"
#include "imp/eval/metrics.h"

namespace imp {

double linear_probe_accuracy(const at::Tensor& train_features, const at::Tensor& train_labels,
                             const at::Tensor& test_features, const at::Tensor& test_labels,
                             int64_t num_classes, const LinearProbeOptions& options) {
  TORCH_CHECK(train_features.dim() == 2 && test_features.dim() == 2 &&
                  train_features.size(1) == test_features.size(1),
              "linear probe features must be [N, D] with one D, got ", train_features.sizes(),
              " and ", test_features.sizes());
  torch::NoGradGuard outer_no_grad;
  // L-BFGS's line search stalls on bf16 rounding and leaves the weights at 0.
  AutocastOff fp32;
  at::Tensor x_train = train_features.to(at::kFloat);
  const at::Tensor mean = x_train.mean(0, true);
  const at::Tensor std = x_train.std(0, true, true).clamp_min(1e-6);
  x_train = (x_train - mean) / std;
  const at::Tensor x_test = (test_features.to(at::kFloat) - mean) / std;

  const int64_t D = x_train.size(1);
  at::Tensor weight = torch::zeros({D, num_classes}, x_train.options()).requires_grad_(true);
  at::Tensor bias = torch::zeros({num_classes}, x_train.options()).requires_grad_(true);
  torch::optim::LBFGS optimizer(
      {weight, bias},
      torch::optim::LBFGSOptions(1.0).max_iter(options.steps).line_search_fn("strong_wolfe"));
  auto closure = [&]() -> at::Tensor {
    torch::AutoGradMode enable_grad(true);
    optimizer.zero_grad();
    at::Tensor logits = at::addmm(bias, x_train, weight);
    at::Tensor loss = torch::nn::functional::cross_entropy(logits, train_labels) +
                      options.l2 * weight.pow(2).sum();
    loss.backward();
    return loss;
  };
  optimizer.step(closure);

  return top1_accuracy(at::addmm(bias, x_test, weight), test_labels);
}

}  // namespace imp
