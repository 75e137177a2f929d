// Linear probe: a multinomial logistic regression fitted on frozen features.
//
// Dimension letters: N examples, D feature width, K classes.
#pragma once

#include <ATen/ATen.h>

namespace imp {

struct LinearProbeOptions {
  int steps = 300;             // L-BFGS iterations on the full training set
  double l2 = 1e-4;            // weight penalty, keeps the fit well-posed on separable data
};

// Fits on (train_features [N, D], train_labels [N]) and returns top-1 accuracy
// on (test_features, test_labels). Features are standardised with the
// training set's mean and standard deviation first.
double linear_probe_accuracy(const at::Tensor& train_features, const at::Tensor& train_labels,
                             const at::Tensor& test_features, const at::Tensor& test_labels,
                             int64_t num_classes, const LinearProbeOptions& options = {});

}  // namespace imp
