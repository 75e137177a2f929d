#include "imp/model/linear.h"

#include <ATen/ATen.h>

#include "imp/core/autocast.h"

#ifdef IMP_WITH_ONEDNN
#include <torch/autograd.h>

#include "imp/model/onednn.h"
#endif

namespace imp {
namespace {

#ifdef IMP_WITH_ONEDNN

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Autograd node for out = a @ b + bias, batched over leading dimensions, all
// in float32. a is [..., M, K] and contiguous. b is [..., K, N], either
// contiguous or the transpose of a contiguous tensor (a weight used as
// weight.t()). bias broadcasts over the M rows: [N] for two dimensions,
// [E, 1, N] for three. Saves a and b, as LibTorch's matmul does.
struct MatmulBiasFunction : public torch::autograd::Function<MatmulBiasFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            const at::Tensor& bias) {
    std::vector<int64_t> sizes = a.sizes().vec();
    sizes.back() = b.size(-1);
    at::Tensor out = at::empty(sizes, a.options());
    if (a.dim() == 2) {
      onednn::multiply(a, b, out, bias.view({1, -1}));
    } else {
      // For a bias that differs between batch entries oneDNN 2.6 chose its
      // slow reference kernel, so the experts' biases are added afterwards.
      onednn::multiply(a, b, out);
      out.add_(bias);
    }
    ctx->save_for_backward({a, b});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& a = saved[0];
    const at::Tensor& b = saved[1];
    const at::Tensor grad = grads[0].contiguous();
    at::Tensor grad_a, grad_b, grad_bias;
    if (ctx->needs_input_grad(0)) {
      grad_a = at::empty(a.sizes(), grad.options());
      onednn::multiply(grad, b.transpose(-1, -2), grad_a);
    }
    if (ctx->needs_input_grad(1)) {
      if (b.transpose(-1, -2).is_contiguous()) {
        // Written in the weight's own layout: (a^T grad)^T = grad^T a.
        at::Tensor transposed = at::empty(b.transpose(-1, -2).sizes(), grad.options());
        onednn::multiply(grad.transpose(-1, -2), a, transposed);
        grad_b = transposed.transpose(-1, -2);
      } else {
        grad_b = at::empty(b.sizes(), grad.options());
        onednn::multiply(a.transpose(-1, -2), grad, grad_b);
      }
    }
    if (ctx->needs_input_grad(2)) {
      // Summed in float32, the bias's dtype, over the rows it was added to.
      grad_bias = a.dim() == 2 ? at::sum(grad, {0}, false, at::kFloat) : at::sum(grad, {1}, true, at::kFloat);
    }
    return {grad_a, grad_b, grad_bias};
  }
};

// Inside autocast LibTorch already runs the matmul in bfloat16 on oneDNN, and
// a oneDNN path of ours measured no faster there.
bool onednn_applies(const at::Tensor& x, const at::Tensor& weight) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
         x.numel() > 0 && !autocast_is_enabled(c10::DeviceType::CPU) && onednn::supports(at::kFloat);
}

#endif  // IMP_WITH_ONEDNN

}  // namespace

torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
#ifdef IMP_WITH_ONEDNN
  if (layer->bias.defined() && onednn_applies(x, layer->weight)) {
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = layer->weight.size(0);
    const at::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
    return MatmulBiasFunction::apply(rows, layer->weight.t(), layer->bias).view(sizes);
  }
#endif
  return layer.ptr()->forward(x);
}

torch::Tensor batched_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#ifdef IMP_WITH_ONEDNN
  if (onednn_applies(x, weight)) return MatmulBiasFunction::apply(x.contiguous(), weight.contiguous(), bias);
#endif
  return torch::baddbmm(bias, x, weight);
}

}  // namespace imp
