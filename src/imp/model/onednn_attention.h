// Multi-head self-attention on CPU through oneDNN's batched matmul, for
// LibTorch versions without a fused scaled-dot-product attention.
//
// LibTorch 1.x computes attention with bmm, which needs each head's queries,
// keys and values as contiguous matrices. That costs three copies out of the
// projection's [B, N, 3D] output and a transposing copy of the result, and
// its float GEMMs run one small matrix at a time. oneDNN runs all B x H
// products of one kind in one call. In float32 it reads the heads in place
// through strided memory descriptors and writes the result and the gradients
// straight into the layouts that the surrounding linear layers use. In
// bfloat16 the heads are copied once into contiguous matrices, for which
// oneDNN has much faster kernels (see onednn_attention.cpp).
//
// Dimension letters: B batch, N tokens, D d_model, H heads, K head width.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace imp {

// Whether this build has the oneDNN path and it can run on `qkv`: a CPU tensor
// of float, or of bfloat16 where the CPU has oneDNN's bfloat16 kernels
// (AVX-512).
bool onednn_attention_applies(const at::Tensor& qkv);

// qkv: [B, N, 3D], the concatenated query, key and value projections, each
// split into `num_heads` heads of D / num_heads. mask: [B, N] bool, true = a
// key that may be attended to, or undefined. Returns the attention output
// [B, N, D] (heads side by side) in qkv's dtype, differentiable with respect
// to qkv. Scores and their softmax are float in both dtypes.
at::Tensor onednn_attention(const at::Tensor& qkv, const at::Tensor& mask, int64_t num_heads);

}  // namespace imp
