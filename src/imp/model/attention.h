// Multi-head self-attention with an optional key padding mask.
//
// The same function has three implementations. LibTorch 2.x runs its fused
// scaled_dot_product_attention. On CPU, LibTorch 1.x runs oneDNN's batched
// matmul (onednn_attention.h). Elsewhere the formula is written out with
// LibTorch operators.
//
// Dimension letters: B batch, N tokens, D d_model, H heads, K head width.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace imp {

class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t d_model, int64_t num_heads);

  // x: [B, N, D]; mask: [B, N] bool, true = real token, or undefined when
  // every token is real. Padded tokens are never attended to. Returns [B, N, D].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

 private:
  int64_t num_heads_;
  torch::nn::Linear qkv_{nullptr};
  torch::nn::Linear out_{nullptr};
};
TORCH_MODULE(SelfAttention);

}  // namespace imp
