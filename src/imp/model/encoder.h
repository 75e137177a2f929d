// The shared pre-norm Transformer encoder. Every modality's tokens go through
// the same blocks; some blocks have a Mixture-of-Experts feed-forward layer.
//
// Dimension letters: B batch, N tokens, D d_model, M mlp_dim.
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "imp/config/config.h"
#include "imp/model/attention.h"
#include "imp/moe/moe_layer.h"

namespace imp {

class RoutingStats;

// Whether encoder layer `layer` (0-based) has an MoE feed-forward layer: MoE
// layers sit at the end of the encoder, every moe_every-th layer counted from
// the last one, at most max_moe_layers of them (0 = no limit).
bool is_moe_layer(const ModelConfig& config, int layer);

// Dense GELU feed-forward layer D -> M -> D.
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t d_model, int64_t mlp_dim);
  torch::Tensor forward(const torch::Tensor& x);

  // The two halves of forward() for recomputation: hidden(x) is gelu(fc1(x)),
  // and output_backward() is the backward pass of fc2 applied to it, which
  // needs fc2's input but not its output (see linear_backward).
  torch::Tensor hidden(const torch::Tensor& x);
  torch::Tensor output_backward(const torch::Tensor& hidden, const torch::Tensor& grad_output);

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(Mlp);

struct BlockOutput {
  torch::Tensor x;         // [B, N, D]
  torch::Tensor aux_loss;  // scalar; undefined for dense blocks
  RoutingMetrics routing;  // filled by MoE blocks only
};

// x + attention(LN(x)), then x + ffn(LN(x)). The residual stream stays in
// float32 under bf16 autocast, so LayerNorm always gets float32 input.
class EncoderBlockImpl : public torch::nn::Module {
 public:
  EncoderBlockImpl(const ModelConfig& config, bool moe);
  BlockOutput forward(const torch::Tensor& x, const torch::Tensor& mask);
  bool is_moe() const { return !moe_.is_empty(); }

  // Recomputes the block from its input x for a backward pass whose forward
  // pass kept nothing, under bf16 autocast when `autocast`. Returns the
  // tensors to back-propagate from, with their gradients, for
  // dL/d(output) = grad_output and dL/d(aux_loss) = grad_aux (undefined when
  // there is none). The feed-forward layer's last linear map is not run,
  // because its backward pass needs only its input. Its parameter gradients
  // are added to their .grad here, and the returned tensors end just before
  // it. MoE layers with sharded experts run in full.
  struct BackwardRoots {
    std::vector<torch::Tensor> tensors, grads;
  };
  BackwardRoots recompute_for_backward(const torch::Tensor& x, const torch::Tensor& mask,
                                       const torch::Tensor& grad_output, const torch::Tensor& grad_aux,
                                       bool autocast);

 private:
  // x + attention(LN(x)), in x's dtype.
  torch::Tensor attention_residual(const torch::Tensor& x, const torch::Tensor& mask);

  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  SelfAttention attention_{nullptr};
  Mlp mlp_{nullptr};
  MoeLayer moe_{nullptr};
};
TORCH_MODULE(EncoderBlock);

struct EncoderOutput {
  torch::Tensor hidden;    // [B, N, D], after the final LayerNorm
  torch::Tensor aux_loss;  // scalar sum of the MoE layers' auxiliary losses (0 if none)
};

class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const ModelConfig& config);

  // tokens: [B, N, D]; mask: [B, N] bool (true = real token) or undefined.
  // When `stats` is given, each MoE layer's routing is added to it under
  // `modality`. With `rematerialize`, each block but the last keeps only
  // its input for the backward pass and runs again there (activation
  // checkpointing): the same gradients for less memory and about one more
  // forward pass of time.
  EncoderOutput forward(const torch::Tensor& tokens, const torch::Tensor& mask,
                        const std::string& modality, RoutingStats* stats,
                        bool rematerialize = false);

  // Encoder layer index of each MoE block, in order.
  const std::vector<int>& moe_layers() const { return moe_layers_; }

 private:
  std::vector<EncoderBlock> blocks_;
  torch::nn::LayerNorm final_ln_{nullptr};
  std::vector<int> moe_layers_;
};
TORCH_MODULE(Encoder);

}  // namespace imp
