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

struct MatmulBiasGradients {
  at::Tensor a, b, bias;
};

// Gradients of out = a @ b + bias for dL/dout = grad (contiguous), with the
// shapes that MatmulBiasFunction below takes. Computes only those asked for.
MatmulBiasGradients matmul_bias_backward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& grad,
                                         bool need_a, bool need_b, bool need_bias) {
  MatmulBiasGradients out;
  if (need_a) {
    out.a = at::empty(a.sizes(), grad.options());
    onednn::multiply(grad, b.transpose(-1, -2), out.a);
  }
  if (need_b) {
    if (b.transpose(-1, -2).is_contiguous()) {
      // Written in the weight's own layout: (a^T grad)^T = grad^T a.
      at::Tensor transposed = at::empty(b.transpose(-1, -2).sizes(), grad.options());
      onednn::multiply(grad.transpose(-1, -2), a, transposed);
      out.b = transposed.transpose(-1, -2);
    } else {
      out.b = at::empty(b.sizes(), grad.options());
      onednn::multiply(a.transpose(-1, -2), grad, out.b);
    }
  }
  if (need_bias) {
    // Summed in float32, the bias's dtype, over the rows it was added to.
    out.bias = a.dim() == 2 ? at::sum(grad, {0}, false, at::kFloat) : at::sum(grad, {1}, true, at::kFloat);
  }
  return out;
}

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
    MatmulBiasGradients g = matmul_bias_backward(saved[0], saved[1], grads[0].contiguous(),
                                                 ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                                 ctx->needs_input_grad(2));
    return {g.a, g.b, g.bias};
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
  // ATen's linear, not the module's forward. For inputs of three or more
  // dimensions the C++ frontend runs a matmul and then adds the float32 bias
  // in place. Under autocast that addition converts the bfloat16 output to
  // float32 and back. ATen's linear casts the bias with the other operands
  // and fuses it into the matmul.
  return at::linear(x, layer->weight, layer->bias);
}

namespace {

// Adds `grad` to the gradient that autograd keeps for `parameter`.
void accumulate_gradient(const torch::Tensor& parameter, const torch::Tensor& grad) {
  torch::Tensor& total = const_cast<torch::Tensor&>(parameter).mutable_grad();
  if (total.defined()) {
    total.add_(grad);
  } else {
    // A tensor of its own, never a view: optimizers detach gradients in place.
    total = at::empty_like(parameter, at::MemoryFormat::Contiguous).copy_(grad);
  }
}

}  // namespace

torch::Tensor linear_backward(const torch::nn::Linear& layer, const torch::Tensor& x, const torch::Tensor& grad_y) {
  torch::NoGradGuard no_grad;
  const at::Tensor& weight = layer->weight;
  const at::Tensor& bias = layer->bias;
  const at::Tensor rows = x.reshape({-1, x.size(-1)}).contiguous();
  const at::Tensor grad = grad_y.reshape({-1, grad_y.size(-1)}).to(x.scalar_type()).contiguous();
#ifdef IMP_WITH_ONEDNN
  if (onednn_applies(x, weight)) {
    MatmulBiasGradients g = matmul_bias_backward(rows, weight.t(), grad, true, weight.requires_grad(),
                                                 bias.defined() && bias.requires_grad());
    if (g.b.defined()) accumulate_gradient(weight, g.b.t());
    if (g.bias.defined()) accumulate_gradient(bias, g.bias);
    return g.a.view(x.sizes());
  }
#endif
  AutocastOff plain;
  const at::Tensor w = weight.to(x.scalar_type());
  if (weight.requires_grad()) accumulate_gradient(weight, at::mm(grad.t(), rows));
  if (bias.defined() && bias.requires_grad()) accumulate_gradient(bias, grad.sum(0));
  return at::mm(grad, w).view(x.sizes());
}

torch::Tensor batched_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
#ifdef IMP_WITH_ONEDNN
  if (onednn_applies(x, weight)) return MatmulBiasFunction::apply(x.contiguous(), weight.contiguous(), bias);
#endif
  return torch::baddbmm(bias, x, weight);
}

void batched_linear_parameter_backward(const torch::Tensor& x, const torch::Tensor& weight,
                                       const torch::Tensor& bias, const torch::Tensor& grad_y) {
  torch::NoGradGuard no_grad;
  const at::Tensor grad = grad_y.to(x.scalar_type()).contiguous();
  const bool weight_grad = weight.requires_grad(), bias_grad = bias.requires_grad();
#ifdef IMP_WITH_ONEDNN
  if (onednn_applies(x, weight)) {
    MatmulBiasGradients g = matmul_bias_backward(x.contiguous(), weight.contiguous(), grad, false,
                                                 weight_grad, bias_grad);
    if (g.b.defined()) accumulate_gradient(weight, g.b);
    if (g.bias.defined()) accumulate_gradient(bias, g.bias);
    return;
  }
#endif
  AutocastOff plain;
  if (weight_grad) accumulate_gradient(weight, at::bmm(x.transpose(1, 2), grad));
  if (bias_grad) accumulate_gradient(bias, grad.sum(1, true));
}

torch::Tensor matmul_transposed(const torch::Tensor& a, const torch::Tensor& b) {
  torch::NoGradGuard no_grad;
  const at::Tensor b_transposed = b.to(a.scalar_type()).contiguous().transpose(-1, -2);
#ifdef IMP_WITH_ONEDNN
  if (onednn_applies(a, b)) {
    std::vector<int64_t> sizes = a.sizes().vec();
    sizes.back() = b.size(-2);
    at::Tensor out = at::empty(sizes, a.options());
    onednn::multiply(a.contiguous(), b_transposed, out);
    return out;
  }
#endif
  AutocastOff plain;
  return at::bmm(a, b_transposed);
}

}  // namespace imp
