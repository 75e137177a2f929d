#include "imp/moe/moe_layer.h"

#include <cmath>

#include "imp/core/error.h"
#include "imp/dist/collectives.h"
#include "imp/dist/process_group.h"
#include "imp/model/linear.h"

namespace imp {

namespace {

void uniform_fan_in(torch::Tensor& parameter, int64_t fan_in) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  parameter.uniform_(-bound, bound);
}

}  // namespace

MoeLayerImpl::MoeLayerImpl(int64_t d_model, int64_t mlp_dim, const MoeConfig& config)
    : config_(config) {
  TORCH_CHECK(d_model >= 1 && mlp_dim >= 1, "MoE layer needs d_model >= 1 and mlp_dim >= 1, got ",
              d_model, " and ", mlp_dim);
  TORCH_CHECK(config.group_size >= 1, "moe.group_size must be >= 1, got ", config.group_size);
  TORCH_CHECK(config.capacity_factor > 0, "moe.capacity_factor must be positive, got ",
              config.capacity_factor);
  TORCH_CHECK(
      config.router != "token_choice" || (config.top_k >= 1 && config.top_k <= config.num_experts),
      "moe.top_k must be in [1, num_experts = ", config.num_experts, "], got ", config.top_k);

  router = register_module("router", Router(d_model, config));
  const int64_t num_experts = config.num_experts;
  fc1_weight = register_parameter("fc1_weight", torch::empty({num_experts, d_model, mlp_dim}));
  fc1_bias = register_parameter("fc1_bias", torch::empty({num_experts, 1, mlp_dim}));
  fc2_weight = register_parameter("fc2_weight", torch::empty({num_experts, mlp_dim, d_model}));
  fc2_bias = register_parameter("fc2_bias", torch::empty({num_experts, 1, d_model}));
  reset_parameters();
}

void MoeLayerImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  router->reset_parameters();
  const int64_t d_model = fc1_weight.size(1), mlp_dim = fc1_weight.size(2);
  uniform_fan_in(fc1_weight, d_model);
  uniform_fan_in(fc1_bias, d_model);
  uniform_fan_in(fc2_weight, mlp_dim);
  uniform_fan_in(fc2_bias, mlp_dim);
}

int64_t MoeLayerImpl::first_local_expert() const {
  return expert_group_ == nullptr ? 0 : expert_group_->rank() * num_local_experts();
}

void MoeLayerImpl::shard_experts(dist::ProcessGroup& group) {
  TORCH_CHECK(expert_group_ == nullptr, "the MoE layer's experts are already sharded");
  const int64_t world = group.world_size();
  IMP_REQUIRE(ConfigError, config_.num_experts % world == 0, "train.expert_parallel shards the ",
              config_.num_experts, " experts of each MoE layer across ", world,
              " processes, which needs model.moe.num_experts to be a multiple of ", world,
              "; change one of them or turn expert_parallel off");
  const int64_t local = config_.num_experts / world;
  torch::NoGradGuard no_grad;
  for (torch::Tensor parameter : expert_parameters()) {
    parameter.mutable_grad().reset();
    parameter.set_data(parameter.narrow(0, group.rank() * local, local).clone());
  }
  expert_group_ = &group;
}

void MoeLayerImpl::unshard_experts() {
  if (expert_group_ == nullptr) return;
  torch::NoGradGuard no_grad;
  for (torch::Tensor parameter : expert_parameters()) {
    parameter.mutable_grad().reset();
    // all_gather concatenates in rank order, which is expert order.
    parameter.set_data(expert_group_->all_gather(parameter.detach()));
  }
  expert_group_ = nullptr;
}

torch::Tensor MoeLayerImpl::run_experts_sharded(const torch::Tensor& expert_in) {
  dist::ProcessGroup& group = *expert_group_;
  const int64_t world = group.world_size();
  const int64_t local = num_local_experts();
  const int64_t slots = expert_in.size(1), d_model = expert_in.size(2);

  // Out: the rows of experts [d * El, (d + 1) * El) go to process d; they
  // are consecutive in the expert-major buffer.
  std::vector<int64_t> received;
  torch::Tensor incoming = dist::all_to_all_with_grad(
      group, expert_in.reshape({-1, d_model}), std::vector<int64_t>(world, local * slots),
      &received);  // [sum over sources of El * slots_s, D]

  // Each source's block is [El, slots_s, D]; join them along the slot axis
  // so that every local expert runs once over the slots of all sources.
  std::vector<int64_t> source_slots;
  std::vector<torch::Tensor> blocks;
  int64_t row = 0;
  for (int64_t count : received) {
    source_slots.push_back(count / local);
    blocks.push_back(incoming.narrow(0, row, count).view({local, count / local, d_model}));
    row += count;
  }
  torch::Tensor local_out = run_experts(torch::cat(blocks, 1)).to(torch::kFloat);  // [El, sum slots_s, D]

  // Back: each source's slots return to it, in the order they came.
  std::vector<torch::Tensor> replies;
  int64_t slot = 0;
  for (int64_t count : source_slots) {
    replies.push_back(local_out.narrow(1, slot, count).reshape({local * count, d_model}));
    slot += count;
  }
  torch::Tensor outgoing = torch::cat(replies, 0);
  return dist::all_to_all_with_grad(group, outgoing, received)
      .view({config_.num_experts, slots, d_model});  // [E, G*C, D]
}

torch::Tensor MoeLayerImpl::expert_hidden(const torch::Tensor& expert_in) {
  // Outside autocast, bf16 tokens meeting float32 weights are cast to float32.
  // Inside autocast, the matmuls cast both to bf16 anyway.
  torch::Tensor in = expert_in.to(fc1_weight.scalar_type());
  return torch::gelu(batched_linear(in, fc1_weight, fc1_bias));  // [E, G*C, M]
}

torch::Tensor MoeLayerImpl::run_experts(const torch::Tensor& expert_in) {
  return batched_linear(expert_hidden(expert_in), fc2_weight, fc2_bias);  // [E, G*C, D]
}

void MoeLayerImpl::check_input(const torch::Tensor& x, const torch::Tensor& mask) const {
  const int64_t d_model = fc1_weight.size(1);
  TORCH_CHECK(x.dim() == 3 && x.size(2) == d_model,
              "MoE input must be [B, N, D] with D = ", d_model, ", got ", x.sizes());
  if (mask.defined()) {
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == x.size(0) && mask.size(1) == x.size(1),
                "MoE mask must be [B, N] = [", x.size(0), ", ", x.size(1), "], got ", mask.sizes());
    TORCH_CHECK(mask.scalar_type() == torch::kBool, "MoE mask must be bool, got ",
                mask.scalar_type());
    TORCH_CHECK(mask.device() == x.device(), "MoE mask is on ", mask.device(),
                " but the input is on ", x.device());
  }
}

MoeLayerImpl::Dispatch MoeLayerImpl::dispatch(const torch::Tensor& x, const torch::Tensor& mask) {
  const int64_t d_model = x.size(2), num_tokens = x.size(0) * x.size(1);
  const int64_t num_experts = config_.num_experts;
  // Group: T tokens become G groups of S slots, the tail padded with masked
  // zero tokens.
  const int64_t num_groups = (num_tokens + config_.group_size - 1) / config_.group_size;
  const int64_t group_size = (num_tokens + num_groups - 1) / num_groups;
  const int64_t padding = num_groups * group_size - num_tokens;
  torch::Tensor x_flat = x.reshape({num_tokens, d_model});  // [T, D]
  torch::Tensor valid = mask.defined() ? mask.reshape({num_tokens})
                                       : torch::ones({num_tokens}, x.options().dtype(torch::kBool));
  if (padding > 0) {
    x_flat = torch::constant_pad_nd(x_flat, {0, 0, 0, padding});  // [G*S, D]
    valid = torch::constant_pad_nd(valid, {0, padding}, 0);       // [G*S]
  }
  Dispatch out;
  out.valid = valid.view({num_groups, group_size});  // [G, S]
  out.padded_tokens = num_groups * group_size;

  // Route.
  out.plan = router->route(x_flat.view({num_groups, group_size, d_model}), out.valid);
  const int64_t num_slots = out.plan.token_index.size(1);  // G*C
  TORCH_CHECK(out.plan.token_index.size(0) == num_experts && num_slots == num_groups * out.plan.capacity,
              "routing plan must be [E, G*C] = [", num_experts, ", ", num_groups * out.plan.capacity,
              "], got ", out.plan.token_index.sizes());
  out.slot_rows = out.plan.token_index.reshape({num_experts * num_slots});  // [E*G*C]

  // Gather each slot's token into the expert buffer.
  out.expert_in =
      x_flat.index_select(0, out.slot_rows).view({num_experts, num_slots, d_model});  // [E, G*C, D]
  return out;
}

MoeOutput MoeLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  check_input(x, mask);
  const int64_t d_model = x.size(2);
  const int64_t batch = x.size(0), length = x.size(1), num_tokens = batch * length;
  const int64_t num_experts = config_.num_experts;
  MoeOutput out;
  if (num_tokens == 0) {
    out.y = torch::zeros_like(x);
    if (expert_group_ != nullptr) {
      // The other processes' exchanges need this one, forward and backward:
      // send nothing, and tie the (empty) reply into y so that the backward
      // pass runs the reverse exchanges too.
      torch::Tensor nothing = torch::zeros({num_experts, 0, d_model}, x.options())
                                  .requires_grad_(torch::GradMode::is_enabled());
      out.y = out.y + run_experts_sharded(nothing).sum().to(x.scalar_type());
    }
    out.aux_loss = torch::zeros({}, x.options().dtype(torch::kFloat));
    out.metrics.tokens_per_expert = torch::zeros({num_experts}, torch::kLong);
    return out;
  }

  Dispatch routed = dispatch(x, mask);
  const int64_t num_slots = routed.expert_in.size(1);
  torch::Tensor expert_out = expert_group_ ? run_experts_sharded(routed.expert_in)
                                           : run_experts(routed.expert_in);  // [E, G*C, D]

  // Combine: weight every slot by its router probability (0 for dropped
  // slots) and add it to its token's row.
  torch::Tensor weighted = expert_out * routed.plan.combine_weight.unsqueeze(-1);  // [E, G*C, D]
  torch::Tensor y_flat = torch::zeros({routed.padded_tokens, d_model}, x.options())
                             .index_add(0, routed.slot_rows,
                                        weighted.reshape({num_experts * num_slots, d_model})
                                            .to(x.scalar_type()));         // [G*S, D]
  out.y = y_flat.narrow(0, 0, num_tokens).view({batch, length, d_model});  // [B, N, D]

  // Metrics.
  out.aux_loss = routed.plan.aux_loss.to(torch::kFloat);
  out.metrics = compute_routing_metrics(routed.plan, routed.valid);
  return out;
}

bool MoeLayerImpl::has_hidden_path(const torch::Tensor& x) const {
  return expert_group_ == nullptr && x.numel() > 0;
}

MoeHidden MoeLayerImpl::forward_to_hidden(const torch::Tensor& x, const torch::Tensor& mask) {
  check_input(x, mask);
  TORCH_CHECK(has_hidden_path(x), "forward_to_hidden needs local experts and at least one token");
  Dispatch routed = dispatch(x, mask);
  MoeHidden out;
  out.hidden = expert_hidden(routed.expert_in);
  out.combine_weight = routed.plan.combine_weight;
  out.slot_rows = routed.slot_rows;
  out.aux_loss = routed.plan.aux_loss.to(torch::kFloat);
  out.padded_tokens = routed.padded_tokens;
  return out;
}

std::pair<torch::Tensor, torch::Tensor> MoeLayerImpl::hidden_gradients(const MoeHidden& part,
                                                                       const torch::Tensor& grad_y) {
  torch::NoGradGuard no_grad;
  const int64_t num_experts = part.hidden.size(0), num_slots = part.hidden.size(1);
  const int64_t d_model = grad_y.size(-1);
  // g: dL/d(weighted), the gradient that index_add hands each slot.
  torch::Tensor g = grad_y.reshape({-1, d_model});
  const int64_t padding = part.padded_tokens - g.size(0);
  if (padding > 0) g = torch::constant_pad_nd(g, {0, 0, 0, padding});
  g = g.index_select(0, part.slot_rows).view({num_experts, num_slots, d_model});  // [E, G*C, D]

  const torch::Tensor weight = part.combine_weight.unsqueeze(-1);                  // [E, G*C, 1]
  const torch::ScalarType type = part.hidden.scalar_type();
  const torch::Tensor p = matmul_transposed(g.to(type), fc2_weight);               // [E, G*C, M]
  // Both products stay in the hidden activations' dtype; only the sum runs
  // in at least float32. Under bf16 autocast, float32 copies of the
  // [E, G*C, M] products made these two lines five times slower.
  torch::Tensor grad_hidden = p * weight.to(type);
  const torch::ScalarType sum_type = c10::promoteTypes(type, torch::kFloat);
  torch::Tensor grad_weight = (p * part.hidden).sum(-1, /*keepdim=*/false, sum_type) + (g * fc2_bias).sum(-1);
  batched_linear_parameter_backward(part.hidden, fc2_weight, fc2_bias, g * weight);
  return {grad_hidden, grad_weight.to(part.combine_weight.scalar_type())};
}

}  // namespace imp
