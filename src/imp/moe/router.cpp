#include "imp/moe/router.h"

#include "imp/core/autocast.h"

#include <algorithm>
#include <cmath>

#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/nn/init.h>

namespace imp {

namespace {

void check_routing_inputs(const torch::Tensor& probs, const torch::Tensor& valid) {
  TORCH_CHECK(probs.dim() == 3, "router probabilities must be [G, S, E], got ", probs.sizes());
  TORCH_CHECK(valid.dim() == 2 && valid.size(0) == probs.size(0) && valid.size(1) == probs.size(1),
              "routing mask must be [G, S] = [", probs.size(0), ", ", probs.size(1), "], got ",
              valid.sizes());
  TORCH_CHECK(valid.scalar_type() == torch::kBool, "routing mask must be bool, got ",
              valid.scalar_type());
}

// round(requested) clamped to [1, S]. std::llround rounds halves away from
// zero, so 2.5 slots become 3.
int64_t round_capacity(double requested, int64_t group_size) {
  return std::clamp<int64_t>(std::llround(requested), 1, group_size);
}

// [G, 1, 1] offsets g * S that turn a position within group g into a row of
// the flat [G*S, D] token buffer.
torch::Tensor group_offsets(int64_t num_groups, int64_t group_size, const torch::Tensor& like) {
  return torch::arange(num_groups, like.options().dtype(torch::kLong))
      .mul_(group_size)
      .view({-1, 1, 1});
}

}  // namespace

RoutingPlan route_experts_choose(const torch::Tensor& probs, const torch::Tensor& valid,
                                 double capacity_factor) {
  check_routing_inputs(probs, valid);
  TORCH_CHECK(capacity_factor > 0, "capacity_factor must be positive, got ", capacity_factor);
  const int64_t num_groups = probs.size(0), group_size = probs.size(1), num_experts = probs.size(2);

  const double requested = capacity_factor * static_cast<double>(group_size) / num_experts;
  const int64_t k = round_capacity(requested, group_size);
  if (std::abs(static_cast<double>(k) - requested) > 0.1 * requested) {
    TORCH_WARN_ONCE("experts_choose capacity rounded from ", requested, " to ", k,
                    " tokens per expert and group (S=", group_size, ", E=", num_experts,
                    ", capacity_factor=", capacity_factor, "); the effective capacity factor is ",
                    k * num_experts / double(group_size));
  }

  // Each expert ranks the slots of its group. Masked and padded slots score
  // -1, below every probability, so an expert takes them only when the group
  // has fewer than k real tokens.
  torch::Tensor scores = probs.detach().masked_fill(valid.logical_not().unsqueeze(-1), -1.0);
  torch::Tensor chosen = std::get<1>(scores.transpose(1, 2).topk(k, /*dim=*/-1));  // [G, E, k]

  // The combine weight is the probability itself, gathered so that its
  // gradient reaches the router.
  torch::Tensor slot_valid = valid.unsqueeze(1)
                                 .expand({num_groups, num_experts, group_size})
                                 .gather(-1, chosen);               // [G, E, k]
  torch::Tensor weight = probs.transpose(1, 2).gather(-1, chosen);  // [G, E, k]
  weight = weight.masked_fill(slot_valid.logical_not(), 0.0);

  // Slot layout [E, G*k]: row e lists expert e's tokens group by group.
  torch::Tensor token_index = chosen + group_offsets(num_groups, group_size, chosen);  // [G, E, k]

  RoutingPlan plan;
  plan.token_index = token_index.permute({1, 0, 2}).reshape({num_experts, num_groups * k});
  plan.combine_weight = weight.permute({1, 0, 2}).reshape({num_experts, num_groups * k});
  plan.slot_valid = slot_valid.permute({1, 0, 2}).reshape({num_experts, num_groups * k});
  plan.aux_loss = torch::zeros({}, probs.options());
  plan.capacity = k;
  return plan;
}

RoutingPlan route_token_choice(const torch::Tensor& probs, const torch::Tensor& valid,
                               int64_t top_k, double capacity_factor) {
  check_routing_inputs(probs, valid);
  TORCH_CHECK(capacity_factor > 0, "capacity_factor must be positive, got ", capacity_factor);
  const int64_t num_groups = probs.size(0), group_size = probs.size(1), num_experts = probs.size(2);
  TORCH_CHECK(top_k >= 1 && top_k <= num_experts,
              "top_k must be in [1, num_experts = ", num_experts, "], got ", top_k);
  const int64_t capacity = round_capacity(
      static_cast<double>(top_k) * capacity_factor * static_cast<double>(group_size) / num_experts,
      group_size);

  // Each token's top_k experts, best first.
  torch::Tensor expert = std::get<1>(probs.detach().topk(top_k, /*dim=*/-1));  // [G, S, K]
  torch::Tensor expert_prob = probs.gather(-1, expert);                        // [G, S, K]

  // Slots go to all first choices of a group before any second choice, so
  // the assignments are listed choice-major: entry k*S + s is choice k of
  // token s.
  const int64_t num_choices = top_k * group_size;
  torch::Tensor expert_order =
      expert.transpose(1, 2).reshape({num_groups, num_choices});  // [G, K*S]
  torch::Tensor prob_order =
      expert_prob.transpose(1, 2).reshape({num_groups, num_choices});  // [G, K*S]
  torch::Tensor valid_order =
      valid.unsqueeze(1).expand({num_groups, top_k, group_size}).reshape({num_groups, num_choices});
  torch::Tensor token_order = torch::arange(group_size, expert.options()).repeat({top_k});  // [K*S]
  token_order = token_order.view({1, num_choices}) +
                group_offsets(num_groups, group_size, expert).view({-1, 1});

  // An assignment's position in its expert's queue is the number of earlier
  // assignments to that expert in the group. Masked tokens take no place.
  torch::Tensor one_hot =
      torch::one_hot(expert_order, num_experts).mul_(valid_order.unsqueeze(-1));  // [G, K*S, E]
  torch::Tensor position = one_hot.cumsum(1).sub_(1).mul_(one_hot).sum(-1);       // [G, K*S]
  torch::Tensor within_capacity = valid_order.logical_and(position < capacity);   // [G, K*S]

  // Scatter the assignments within capacity into the [E, G*C] slot layout.
  // The others go to one extra slot at the end, which is cut off. This avoids
  // masked_select, whose data-dependent size synchronises with the host.
  const int64_t num_slots = num_experts * num_groups * capacity;
  torch::Tensor group = torch::arange(num_groups, expert.options()).view({-1, 1});
  torch::Tensor destination = expert_order * (num_groups * capacity) + group * capacity + position;
  destination = torch::where(within_capacity, destination, torch::full_like(destination, num_slots))
                    .reshape(-1);

  torch::Tensor token_index = torch::zeros({num_slots + 1}, expert.options())
                                  .scatter_(0, destination, token_order.reshape(-1));
  torch::Tensor combine_weight = torch::zeros({num_slots + 1}, probs.options())
                                     .index_add(0, destination, prob_order.reshape(-1));
  torch::Tensor slot_valid = torch::zeros({num_slots + 1}, valid.options())
                                 .scatter_(0, destination, within_capacity.reshape(-1));

  RoutingPlan plan;
  plan.token_index = token_index.narrow(0, 0, num_slots).view({num_experts, num_groups * capacity});
  plan.combine_weight =
      combine_weight.narrow(0, 0, num_slots).view({num_experts, num_groups * capacity});
  plan.slot_valid = slot_valid.narrow(0, 0, num_slots).view({num_experts, num_groups * capacity});
  plan.capacity = capacity;

  // Switch Transformer load balancing over real tokens: f_e counts first
  // choices and carries no gradient, P_e is differentiable.
  torch::Tensor real = valid.to(probs.scalar_type()).unsqueeze(-1);  // [G, S, 1]
  torch::Tensor num_real = real.sum().clamp_min(1.0);
  torch::Tensor first_choice =
      torch::one_hot(expert.select(-1, 0), num_experts).to(probs.scalar_type());  // [G, S, E]
  torch::Tensor fraction = (first_choice * real).sum(torch::IntArrayRef{0, 1}) / num_real;  // [E]
  torch::Tensor mean_prob = (probs * real).sum(torch::IntArrayRef{0, 1}) / num_real;        // [E]
  plan.aux_loss = (fraction * mean_prob).sum() * static_cast<double>(num_experts);
  return plan;
}

RoutingMetrics compute_routing_metrics(const RoutingPlan& plan, const torch::Tensor& valid) {
  torch::NoGradGuard no_grad;
  const int64_t num_experts = plan.token_index.size(0);

  torch::Tensor tokens_per_expert = plan.slot_valid.sum(1);  // [E] int64
  torch::Tensor valid_flat = valid.reshape(-1);              // [G*S]
  torch::Tensor times_processed = torch::zeros({valid_flat.size(0)}, plan.token_index.options())
                                      .index_add_(0, plan.token_index.reshape(-1),
                                                  plan.slot_valid.reshape(-1).to(torch::kLong));
  torch::Tensor dropped = valid_flat.logical_and(times_processed == 0).sum();
  torch::Tensor num_tokens = valid_flat.sum();

  // First choices of the real tokens (zeros without probabilities).
  torch::Tensor top_choice = torch::zeros({num_experts}, tokens_per_expert.options());
  if (plan.probs.defined()) {
    torch::Tensor first = plan.probs.argmax(-1).reshape(-1);  // [G*S]
    top_choice = (torch::one_hot(first, num_experts) * valid_flat.unsqueeze(1).to(torch::kLong))
                     .sum(0)
                     .to(tokens_per_expert.scalar_type());
  }

  // One device-to-host copy for all counts.
  torch::Tensor host = torch::cat({tokens_per_expert, num_tokens.view({1}), dropped.view({1}),
                                   top_choice})
                           .to(torch::kCPU);  // [2E + 2]
  RoutingMetrics metrics;
  metrics.tokens_per_expert = host.narrow(0, 0, num_experts).clone();
  metrics.num_tokens = host[num_experts].item<int64_t>();
  metrics.dropped_tokens = host[num_experts + 1].item<int64_t>();
  if (plan.probs.defined()) {
    metrics.top_choice_per_expert = host.narrow(0, num_experts + 2, num_experts).clone();
  }
  metrics.capacity = plan.capacity;
  metrics.num_groups = valid.size(0);
  return metrics;
}

RouterImpl::RouterImpl(int64_t d_model, const MoeConfig& config) : config_(config) {
  TORCH_CHECK(config.num_experts >= 1, "an MoE router needs num_experts >= 1, got ",
              config.num_experts);
  TORCH_CHECK(config.router == "experts_choose" || config.router == "token_choice",
              "moe.router must be experts_choose or token_choice, got '", config.router, "'");
  weight = register_parameter("weight", torch::empty({config.num_experts, d_model}));
  reset_parameters();
}

void RouterImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
  weight.uniform_(-bound, bound);
}

torch::Tensor RouterImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == weight.size(1),
              "router input must be [G, S, D] with D = ", weight.size(1), ", got ", x.sizes());
  const torch::ScalarType dtype = torch::promote_types(
      torch::promote_types(x.scalar_type(), weight.scalar_type()), torch::kFloat);

  // Autocast would run this matmul in bf16. Excluding its dispatch keys keeps
  // float32 and leaves the caller's autocast state as it is.
  AutocastOff no_autocast;
  torch::Tensor logits = torch::matmul(x.to(dtype), weight.to(dtype).t());  // [G, S, E]
  return torch::softmax(logits, /*dim=*/-1);
}

RoutingPlan RouterImpl::route(const torch::Tensor& x, const torch::Tensor& valid) {
  torch::Tensor probs = forward(x);  // [G, S, E]
  RoutingPlan plan = config_.router == "token_choice"
                         ? route_token_choice(probs, valid, config_.top_k, config_.capacity_factor)
                         : route_experts_choose(probs, valid, config_.capacity_factor);
  plan.probs = probs.detach();
  return plan;
}

}  // namespace imp
