#include "imp/model/attention.h"

#include "imp/model/linear.h"
#include "imp/model/onednn_attention.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>

namespace imp {

SelfAttentionImpl::SelfAttentionImpl(int64_t d_model, int64_t num_heads) : num_heads_(num_heads) {
  TORCH_CHECK(d_model % num_heads == 0, "d_model ", d_model, " is not divisible by num_heads ",
              num_heads);
  qkv_ = register_module("qkv", torch::nn::Linear(d_model, 3 * d_model));
  out_ = register_module("out", torch::nn::Linear(d_model, d_model));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), H = num_heads_, K = D / H;
  torch::Tensor projected = linear(qkv_, x);  // [B, N, 3D]: queries, keys, values
#if TORCH_VERSION_MAJOR < 2
  if (onednn_attention_applies(projected)) return linear(out_, onednn_attention(projected, mask, H));
#endif

  // [B, N, 3D] -> [B, N, 3, H, K] -> [3, B, H, N, K]
  torch::Tensor qkv = projected.reshape({B, N, 3, H, K}).permute({2, 0, 3, 1, 4});
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];  // each [B, H, N, K]

  torch::Tensor keep;  // [B, 1, 1, N], true = may be attended to
  if (mask.defined()) keep = mask.reshape({B, 1, 1, N});

  torch::Tensor context;  // [B, H, N, K]
#if TORCH_VERSION_MAJOR >= 2
  // The fused kernel picks flash or memory-efficient attention where it can.
  context = at::scaled_dot_product_attention(q, k, v, keep.defined() ? c10::optional<at::Tensor>(keep)
                                                                    : c10::nullopt);
#else
  torch::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(K)));
  // Softmax in fp32: bf16 scores under autocast lose too much precision.
  scores = scores.to(at::kFloat);
  if (keep.defined()) scores = scores.masked_fill(keep.logical_not(), -INFINITY);
  context = at::matmul(scores.softmax(-1).to(v.scalar_type()), v);
#endif

  // [B, H, N, K] -> [B, N, H, K] -> [B, N, D]
  return linear(out_, context.transpose(1, 2).reshape({B, N, D}));
}

}  // namespace imp
