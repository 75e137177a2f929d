#include "imp/model/onednn_attention.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#ifdef IMP_WITH_ONEDNN
#include <torch/autograd.h>

#include <cmath>

#include "imp/model/onednn.h"
#endif

namespace imp {

#ifndef IMP_WITH_ONEDNN

bool onednn_attention_applies(const at::Tensor&) { return false; }

at::Tensor onednn_attention(const at::Tensor&, const at::Tensor&, int64_t) {
  TORCH_CHECK(false, "this build of imp has no oneDNN attention: it was built without libdnnl-dev ",
              "or against LibTorch 2.x");
}

#else

namespace {

using onednn::Operand;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Memory layout of every operand of one attention call. Scores are
// [B, H, N, N]. The output is [B, N, D] with the heads side by side.
// Queries, keys and values (and their gradients) are in one of two layouts:
//
// - in place: the three D-wide slices of the projection's [B, N, 3D] rows,
//   with head h at column h * K of its slice, read through strided
//   descriptors with no copy. Used for float32.
// - packed: copied once into [3, B, H, N, K], each head a contiguous matrix.
//   Used for bfloat16. For strided heads oneDNN 2.6 falls back to a
//   GEMM-based kernel whose output scaling is a scalar loop. On a CPU with
//   AMX that made the scaled bfloat16 products of IMP-Ti 5 to 13 times
//   slower than the brgemm kernels it picks for contiguous heads. In float32
//   both kernels ran at the same speed, and the copies made a step 4-11%
//   slower, so float32 stays in place.
struct Layout {
  int64_t B, H, N, K, D;
  bool packed;

  // Offset of the queries (0), keys (1) or values (2), in elements.
  int64_t offset(int which) const { return which * (packed ? B * H * N * K : D); }
  Operand heads(at::ScalarType type) const {  // [N, K] per head
    if (packed) return {{B, H, N, K}, {H * N * K, N * K, K, 1}, onednn::type_of(type)};
    return {{B, H, N, K}, {N * 3 * D, K, 3 * D, 1}, onednn::type_of(type)};
  }
  Operand heads_transposed(at::ScalarType type) const {  // [K, N] per head
    if (packed) return {{B, H, K, N}, {H * N * K, N * K, 1, K}, onednn::type_of(type)};
    return {{B, H, K, N}, {N * 3 * D, K, 1, 3 * D}, onednn::type_of(type)};
  }
  Operand output(at::ScalarType type) const {  // [N, K] per head, inside [B, N, D]
    return {{B, H, N, K}, {N * D, K, D, 1}, onednn::type_of(type)};
  }
  Operand output_gradient(at::ScalarType type) const {  // as the heads when packed
    if (packed) return {{B, H, N, K}, {H * N * K, N * K, K, 1}, onednn::type_of(type)};
    return output(type);
  }
  Operand scores(at::ScalarType type) const {  // [N, N] per head, contiguous
    return {{B, H, N, N}, {H * N * N, N * N, N, 1}, onednn::type_of(type)};
  }
  Operand scores_transposed(at::ScalarType type) const {
    return {{B, H, N, N}, {H * N * N, N * N, 1, N}, onednn::type_of(type)};
  }
};

void* element(const at::Tensor& tensor, int64_t offset) {
  return static_cast<char*>(tensor.data_ptr()) + offset * tensor.element_size();
}

// Attention as one autograd node. The forward pass saves the queries, keys
// and values in their layout and the attention probabilities, in float and,
// for bfloat16, also in the heads' dtype. The backward pass returns the
// gradient of the projection's [B, N, 3D] output.
struct OnednnAttentionFunction : public torch::autograd::Function<OnednnAttentionFunction> {
  // The mask comes as a pointer because autograd functions take only defined
  // tensors as tensor arguments, and the mask may be undefined.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& qkv, const at::Tensor* mask,
                            int64_t num_heads) {
    const int64_t B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3, H = num_heads;
    const at::ScalarType type = qkv.scalar_type();
    const Layout layout{B, H, N, D / H, D, type != at::kFloat};
    const float scale = static_cast<float>(1.0 / std::sqrt(double(layout.K)));
    // Packed: [B, N, 3D] -> [B, N, 3, H, K] -> [3, B, H, N, K].
    const at::Tensor heads =
        layout.packed ? qkv.view({B, N, 3, H, layout.K}).permute({2, 0, 3, 1, 4}).contiguous() : qkv;

    at::Tensor scores = at::empty({B, H, N, N}, qkv.options().dtype(at::kFloat));
    onednn::multiply(layout.heads(type), element(heads, layout.offset(0)), layout.heads_transposed(type),
                     element(heads, layout.offset(1)), layout.scores(at::kFloat), scores.data_ptr(), scale);
    if (mask->defined()) scores.masked_fill_(mask->reshape({B, 1, 1, N}).logical_not(), -INFINITY);
    const at::Tensor probs = at::_softmax(scores, -1, false);
    scores.reset();
    const at::Tensor probs_typed = type == at::kFloat ? probs : probs.to(type);

    at::Tensor output = at::empty({B, N, D}, qkv.options());
    onednn::multiply(layout.scores(type), probs_typed.data_ptr(), layout.heads(type),
                     element(heads, layout.offset(2)), layout.output(type), output.data_ptr());
    ctx->save_for_backward({heads, probs, probs_typed});
    ctx->saved_data["num_heads"] = num_heads;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& heads = saved[0];
    const at::Tensor& probs = saved[1];  // [B, H, N, N]
    const at::Tensor& probs_typed = saved[2];
    const int64_t B = probs.size(0), H = probs.size(1), N = probs.size(2), D = heads.numel() / (3 * B * N);
    const at::ScalarType type = heads.scalar_type();
    const Layout layout{B, H, N, D / H, D, type != at::kFloat};
    const float scale = static_cast<float>(1.0 / std::sqrt(double(layout.K)));
    at::Tensor grad = grads[0].to(type);
    // Packed: [B, N, D] -> [B, H, N, K].
    grad = layout.packed ? grad.view({B, N, H, layout.K}).permute({0, 2, 1, 3}).contiguous() : grad.contiguous();

    at::Tensor grad_heads = at::empty_like(heads);
    // Values: P^T dO.
    onednn::multiply(layout.scores_transposed(type), probs_typed.data_ptr(), layout.output_gradient(type),
                     grad.data_ptr(), layout.heads(type), element(grad_heads, layout.offset(2)));
    // Probabilities: dO V^T, then back through the softmax.
    at::Tensor grad_probs = at::empty({B, H, N, N}, heads.options().dtype(at::kFloat));
    onednn::multiply(layout.output_gradient(type), grad.data_ptr(), layout.heads_transposed(type),
                     element(heads, layout.offset(2)), layout.scores(at::kFloat), grad_probs.data_ptr());
    at::Tensor grad_scores = at::_softmax_backward_data(grad_probs, probs, -1, at::kFloat);
    grad_probs.reset();
    if (type != at::kFloat) grad_scores = grad_scores.to(type);
    // Queries: scale dS K. Keys: scale dS^T Q.
    onednn::multiply(layout.scores(type), grad_scores.data_ptr(), layout.heads(type),
                     element(heads, layout.offset(1)), layout.heads(type), element(grad_heads, layout.offset(0)),
                     scale);
    onednn::multiply(layout.scores_transposed(type), grad_scores.data_ptr(), layout.heads(type),
                     element(heads, layout.offset(0)), layout.heads(type), element(grad_heads, layout.offset(1)),
                     scale);
    // Packed: [3, B, H, N, K] -> [B, N, 3, H, K] -> [B, N, 3D].
    if (layout.packed) grad_heads = grad_heads.permute({1, 3, 0, 2, 4}).reshape({B, N, 3 * D});
    return {grad_heads, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool onednn_attention_applies(const at::Tensor& qkv) {
  return qkv.device().is_cpu() && onednn::supports(qkv.scalar_type());
}

at::Tensor onednn_attention(const at::Tensor& qkv, const at::Tensor& mask, int64_t num_heads) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % (3 * num_heads) == 0, "onednn_attention: qkv of shape ",
              qkv.sizes(), " is not [B, N, 3D] with D divisible by ", num_heads, " heads");
  TORCH_CHECK(onednn_attention_applies(qkv),
              "onednn_attention: qkv must be a CPU tensor of float, or of bfloat16 on a CPU with oneDNN's ",
              "bfloat16 kernels, got ",
              qkv.scalar_type(), " on ", qkv.device());
  TORCH_CHECK(!mask.defined() || (mask.scalar_type() == at::kBool && mask.numel() == qkv.size(0) * qkv.size(1)),
              "onednn_attention: the mask must be a [B, N] bool tensor");
  return OnednnAttentionFunction::apply(qkv.contiguous(), &mask, num_heads);
}

#endif  // IMP_WITH_ONEDNN

}  // namespace imp
