// The model's linear maps. On CPU in float32 outside autocast they run as
// oneDNN matmuls with the bias fused in, because LibTorch 1.x sends float32
// matmuls to OpenBLAS. In one microbenchmark on a 2-core Zen 4 machine
// OpenBLAS took 1.1x to 1.6x as long for the IMP-Ti layer shapes. Everywhere
// else, and in builds without oneDNN, they are LibTorch's own operators.
// Both paths give the same values up to float rounding.
#pragma once

#include <torch/nn/modules/linear.h>

namespace imp {

// layer(x) for x of shape [..., in]: returns [..., out].
torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x);

// The backward pass of y = linear(layer, x) without its forward pass, for
// recomputation that needs only what the backward pass reads. Adds the
// gradients of the layer's weight and bias for dL/dy = grad_y to their
// .grad, as autograd does, and returns dL/dx. Computes in x's dtype: a
// reduced-precision x means the forward pass ran under autocast, which cast
// the weight and bias to that dtype too.
torch::Tensor linear_backward(const torch::nn::Linear& layer, const torch::Tensor& x, const torch::Tensor& grad_y);

// One linear map per expert: bias[e] + x[e] @ weight[e], as torch::baddbmm.
// x: [E, S, in]; weight: [E, in, out]; bias: [E, 1, out]. Returns [E, S, out].
torch::Tensor batched_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias);

// Adds the weight and bias gradients of y = batched_linear(x, weight, bias)
// for dL/dy = grad_y to their .grad. dL/dx is not computed. In x's dtype, as
// linear_backward.
void batched_linear_parameter_backward(const torch::Tensor& x, const torch::Tensor& weight,
                                       const torch::Tensor& bias, const torch::Tensor& grad_y);

// Returns a @ b^T for each batch entry, in a's dtype, without autograd.
// a: [E, S, K], b: [E, N, K], result: [E, S, N].
torch::Tensor matmul_transposed(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace imp
