#include "imp/model/encoder.h"

#include <torch/nn/functional/activation.h>

#include "imp/moe/routing_stats.h"

namespace imp {

bool is_moe_layer(const ModelConfig& config, int layer) {
  if (config.moe.num_experts <= 0) return false;
  const int from_last = config.num_layers - 1 - layer;
  if (from_last % config.moe.moe_every != 0) return false;
  const int rank_from_last = from_last / config.moe.moe_every;
  return config.moe.max_moe_layers <= 0 || rank_from_last < config.moe.max_moe_layers;
}

MlpImpl::MlpImpl(int64_t d_model, int64_t mlp_dim) {
  fc1_ = register_module("fc1", torch::nn::Linear(d_model, mlp_dim));
  fc2_ = register_module("fc2", torch::nn::Linear(mlp_dim, d_model));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return fc2_(torch::gelu(fc1_(x)));
}

EncoderBlockImpl::EncoderBlockImpl(const ModelConfig& config, bool moe) {
  const std::vector<int64_t> width{config.d_model};
  ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions(width)));
  attention_ = register_module("attention", SelfAttention(config.d_model, config.num_heads));
  ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions(width)));
  if (moe) {
    moe_ = register_module("moe", MoeLayer(config.d_model, config.mlp_dim, config.moe));
  } else {
    mlp_ = register_module("mlp", Mlp(config.d_model, config.mlp_dim));
  }
}

BlockOutput EncoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  BlockOutput out;
  // Sums with a bf16 branch would give bf16; casting the branch back keeps
  // the residual stream in the stream's own dtype.
  torch::Tensor h = x + attention_(ln1_(x), mask).to(x.scalar_type());

  if (moe_.is_empty()) {
    out.x = h + mlp_(ln2_(h)).to(h.scalar_type());
    return out;
  }
  MoeOutput routed = moe_(ln2_(h), mask);
  out.x = h + routed.y.to(h.scalar_type());
  out.aux_loss = routed.aux_loss;
  out.routing = std::move(routed.metrics);
  return out;
}

EncoderImpl::EncoderImpl(const ModelConfig& config) {
  for (int layer = 0; layer < config.num_layers; ++layer) {
    const bool moe = is_moe_layer(config, layer);
    if (moe) moe_layers_.push_back(layer);
    blocks_.push_back(register_module("block" + std::to_string(layer), EncoderBlock(config, moe)));
  }
  final_ln_ = register_module(
      "final_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.d_model})));
}

EncoderOutput EncoderImpl::forward(const torch::Tensor& tokens, const torch::Tensor& mask,
                                   const std::string& modality, RoutingStats* stats) {
  torch::Tensor x = tokens.to(at::kFloat);
  torch::Tensor aux = torch::zeros({}, x.options());
  for (size_t layer = 0; layer < blocks_.size(); ++layer) {
    BlockOutput out = blocks_[layer]->forward(x, mask);
    x = out.x;
    if (!blocks_[layer]->is_moe()) continue;
    aux = aux + out.aux_loss.to(at::kFloat);
    if (stats != nullptr) stats->add(static_cast<int>(layer), modality, out.routing);
  }
  return {final_ln_(x), aux};
}

}  // namespace imp
