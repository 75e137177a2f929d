#include "imp/model/encoder.h"

#include <torch/autograd.h>
#include <torch/nn/functional/activation.h>

#include "imp/core/autocast.h"
#include "imp/model/linear.h"
#include "imp/moe/routing_stats.h"

namespace imp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One encoder block run without keeping its activations: the forward pass
// saves only the block's input, and the backward pass runs the block again
// with gradients on, under the autocast state of the forward pass, and
// back-propagates through that copy (EncoderBlockImpl::recompute_for_backward,
// which skips what the backward pass does not read). The recomputed pass
// accumulates the parameters' gradients itself, so only the input's gradient
// is returned. Blocks hold no randomness, so the second pass equals the first.
struct RecomputedBlock : public torch::autograd::Function<RecomputedBlock> {
  // Outputs: the block's output [B, N, D] and its auxiliary loss (a zero
  // scalar for dense blocks). Routing metrics go to *routing.
  // The mask comes as a pointer because autograd functions take only
  // defined tensors as tensor arguments, and the mask may be undefined.
  static variable_list forward(AutogradContext* ctx, torch::Tensor x, const torch::Tensor* mask_ptr,
                               EncoderBlockImpl* block, RoutingMetrics* routing) {
    const torch::Tensor mask = *mask_ptr;
    const bool autocast = autocast_is_enabled(x.device().type());
    BlockOutput out;
    {
      torch::NoGradGuard no_grad;
      out = block->forward(x, mask);
    }
    ctx->save_for_backward({x});
    ctx->saved_data["mask"] = mask;
    // A pointer kept as an integer: IValue holds no raw pointers, and the
    // block outlives every backward pass of the graph it is part of.
    ctx->saved_data["block"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(block));
    ctx->saved_data["autocast"] = autocast;
    ctx->saved_data["has_aux"] = out.aux_loss.defined();
    if (routing != nullptr) *routing = std::move(out.routing);
    torch::Tensor aux = out.aux_loss.defined() ? out.aux_loss : torch::zeros({}, x.options());
    return {out.x, aux};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    const torch::Tensor mask = ctx->saved_data["mask"].toTensor();
    auto* block = reinterpret_cast<EncoderBlockImpl*>(
        static_cast<intptr_t>(ctx->saved_data["block"].toInt()));
    torch::AutoGradMode grad_on(true);
    const torch::Tensor grad_aux = ctx->saved_data["has_aux"].toBool() ? grads[1] : torch::Tensor();
    EncoderBlockImpl::BackwardRoots roots =
        block->recompute_for_backward(x, mask, grads[0], grad_aux, ctx->saved_data["autocast"].toBool());
    if (!roots.tensors.empty()) torch::autograd::backward(roots.tensors, roots.grads);
    return {x.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

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

torch::Tensor MlpImpl::forward(const torch::Tensor& x) { return linear(fc2_, hidden(x)); }

torch::Tensor MlpImpl::hidden(const torch::Tensor& x) { return torch::gelu(linear(fc1_, x)); }

torch::Tensor MlpImpl::output_backward(const torch::Tensor& hidden, const torch::Tensor& grad_output) {
  return linear_backward(fc2_, hidden, grad_output);
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

torch::Tensor EncoderBlockImpl::attention_residual(const torch::Tensor& x, const torch::Tensor& mask) {
  // Sums with a bf16 branch would give bf16; casting the branch back keeps
  // the residual stream in the stream's own dtype.
  return x + attention_(ln1_(x), mask).to(x.scalar_type());
}

BlockOutput EncoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  BlockOutput out;
  torch::Tensor h = attention_residual(x, mask);

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

EncoderBlockImpl::BackwardRoots EncoderBlockImpl::recompute_for_backward(const torch::Tensor& x,
                                                                         const torch::Tensor& mask,
                                                                         const torch::Tensor& grad_output,
                                                                         const torch::Tensor& grad_aux,
                                                                         bool autocast) {
  const c10::DeviceType device = x.device().type();
  BackwardRoots roots;
  auto add_root = [&roots](const torch::Tensor& tensor, const torch::Tensor& grad) {
    if (tensor.requires_grad() && grad.defined()) {
      roots.tensors.push_back(tensor);
      roots.grads.push_back(grad);
    }
  };
  // Only the recomputed forward runs under autocast. The backward pass must
  // not: like the plain path's, it runs in each saved tensor's own precision.
  if (!moe_.is_empty() && !moe_->has_hidden_path(x)) {
    // Sharded experts run their last linear map on other processes, so the
    // block runs in full.
    BlockOutput out;
    {
      AutocastScope scope(device, autocast);
      out = forward(x, mask);
    }
    add_root(out.x, grad_output);
    add_root(out.aux_loss, grad_aux);
    return roots;
  }

  torch::Tensor h, hidden;
  MoeHidden part;
  {
    AutocastScope scope(device, autocast);
    h = attention_residual(x, mask);
    if (moe_.is_empty()) {
      hidden = mlp_->hidden(ln2_(h));
    } else {
      part = moe_->forward_to_hidden(ln2_(h), mask);
    }
  }
  // The block's output is h plus the feed-forward branch, so the gradient
  // reaches h unchanged.
  add_root(h, grad_output);
  if (moe_.is_empty()) {
    add_root(hidden, mlp_->output_backward(hidden, grad_output));
    return roots;
  }
  auto [grad_hidden, grad_combine] = moe_->hidden_gradients(part, grad_output);
  add_root(part.hidden, grad_hidden);
  add_root(part.combine_weight, grad_combine);
  add_root(part.aux_loss, grad_aux);
  return roots;
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
                                   const std::string& modality, RoutingStats* stats,
                                   bool rematerialize) {
  torch::Tensor x = tokens.to(at::kFloat);
  torch::Tensor aux = torch::zeros({}, x.options());
  // Recomputing pays only when a backward pass will follow. The last block
  // runs plainly, because the backward pass starts with it: recomputing it
  // would rebuild at once the activations just freed, for no lower peak.
  const bool recompute = rematerialize && torch::GradMode::is_enabled();
  for (size_t layer = 0; layer < blocks_.size(); ++layer) {
    BlockOutput out;
    if (recompute && layer + 1 < blocks_.size()) {
      variable_list outputs =
          RecomputedBlock::apply(x, &mask, blocks_[layer].get(), &out.routing);
      out.x = outputs[0];
      if (blocks_[layer]->is_moe()) out.aux_loss = outputs[1];
    } else {
      out = blocks_[layer]->forward(x, mask);
    }
    x = out.x;
    if (!blocks_[layer]->is_moe()) continue;
    aux = aux + out.aux_loss.to(at::kFloat);
    if (stats != nullptr) stats->add(static_cast<int>(layer), modality, out.routing);
  }
  return {final_ln_(x), aux};
}

}  // namespace imp
