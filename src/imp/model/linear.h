// The model's linear maps. On CPU in float32 outside autocast they run as
// oneDNN matmuls with the bias fused in, because LibTorch 1.x sends float32
// matmuls to OpenBLAS. In one microbenchmark on a 2-core Zen 4 machine
// OpenBLAS took 1.1x to 1.6x as long for the IMP-Ti layer shapes. Everywhere else, and in builds without oneDNN, they are
// LibTorch's own operators. Both paths give the same values up to float
// rounding.
#pragma once

#include <torch/nn/modules/linear.h>

namespace imp {

// layer(x) for x of shape [..., in]: returns [..., out].
torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x);

// One linear map per expert: bias[e] + x[e] @ weight[e], as torch::baddbmm.
// x: [E, S, in]; weight: [E, in, out]; bias: [E, 1, out]. Returns [E, S, out].
torch::Tensor batched_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace imp
