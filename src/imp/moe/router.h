// Routers of the Mixture-of-Experts layer: the learned gate that scores every
// token against every expert, and the two rules that turn those scores into
// expert slots (experts choose tokens, or tokens choose experts).
//
// Dimension letters:
//   G  groups; tokens are routed independently within each group
//   S  group size, token slots per group (the last group is padded)
//   D  d_model
//   E  experts
//   C  capacity, token slots each expert has per group (k for experts_choose)
//   K  experts per token (top_k, token_choice only)
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "imp/config/config.h"

namespace imp {

// Dispatch and combine instructions of one forward pass: the token each expert
// slot reads and the weight its output is added back with. Slot c of expert e
// in group g is entry g * C + c of row e, so the expert buffer [E, G*C, D] is
// filled row by row.
struct RoutingPlan {
  torch::Tensor token_index;     // [E, G*C] int64, row g*S + s of the flat token buffer
  torch::Tensor combine_weight;  // [E, G*C] router dtype; 0 where the output is dropped
  torch::Tensor slot_valid;      // [E, G*C] bool, the slot contains a real (unmasked) token
  torch::Tensor aux_loss;        // scalar, load-balancing loss; 0 for experts_choose
  torch::Tensor probs;           // [G, S, E] router probabilities, for metrics; may be undefined
  int64_t capacity = 0;          // C
};

// Counts of one MoE forward pass, for logging and RoutingStats.
struct RoutingMetrics {
  torch::Tensor
      tokens_per_expert;       // [E] int64 on the CPU; a token counts once per expert that took it
  int64_t num_tokens = 0;      // real tokens in
  int64_t dropped_tokens = 0;  // real tokens that no expert processed
  // [E] int64 on the CPU: real tokens whose highest router probability is
  // expert e. Under experts-choose every expert fills its slots whatever the
  // tokens, so this, not tokens_per_expert, shows which experts a modality's
  // tokens prefer. Undefined when the plan carries no probabilities.
  torch::Tensor top_choice_per_expert;
  int64_t capacity = 0;        // C, slots per expert and group
  int64_t num_groups = 0;      // G
};

// Experts choose tokens: within each group, every expert takes the k tokens
// it gives the highest probability, k = round(capacity_factor * S / E)
// clamped to [1, S]. Every expert is therefore full, and a token may be taken
// by several experts or by none. The combine weight is the router
// probability itself, so the router learns through it.
//
// probs: [G, S, E] router probabilities; valid: [G, S] bool, false for masked
// and padded slots. Invalid slots rank below every real token (score -1) and
// their combine weight is 0, so an expert only takes one when a group has
// fewer than k real tokens. The rounding of k can move the effective capacity
// far from capacity_factor, e.g. S = 3 and E = 8 give k = 1 (2.7x the
// requested 0.375); a warning is printed once per process when k differs
// from the requested value by more than 10%.
RoutingPlan route_experts_choose(const torch::Tensor& probs, const torch::Tensor& valid,
                                 double capacity_factor);

// Tokens choose experts: each real token picks its top_k experts by
// probability. Each expert has C = round(top_k * capacity_factor * S / E)
// slots per group, clamped to [1, S], filled first by first choices, then by
// second choices and so on, in token order within each choice. Assignments
// beyond C are dropped, so that expert adds nothing for that token. The
// combine weight is the router probability of the expert, not renormalised
// over the chosen experts.
//
// aux_loss is the Switch Transformer load-balancing loss over real tokens,
// E * sum_e f_e * P_e, where f_e is the fraction of tokens whose first choice
// is e and P_e the mean probability of e. It equals 1 for a uniform router.
// The caller scales it by MoeConfig::aux_loss_weight.
RoutingPlan route_token_choice(const torch::Tensor& probs, const torch::Tensor& valid,
                               int64_t top_k, double capacity_factor);

// Counts real tokens per expert, dropped tokens and, when the plan carries
// router probabilities, each expert's first choices. valid: [G, S].
// Copies 2E + 2 numbers to the host, which synchronises with the device.
RoutingMetrics compute_routing_metrics(const RoutingPlan& plan, const torch::Tensor& valid);

// The learned gate: a linear map D -> E without bias, followed by a softmax
// over experts. It always runs in at least float32, also under autocast,
// because bf16 keeps 8 significant bits: its probabilities tie often in the
// top-k ranking and it rounds the combine weights. Initialised like torch::nn::Linear,
// U(-1/sqrt(D), 1/sqrt(D)).
class RouterImpl : public torch::nn::Module {
 public:
  RouterImpl(int64_t d_model, const MoeConfig& config);

  void reset_parameters();

  // Returns the probabilities [G, S, E] of x [G, S, D], in float32, or in
  // float64 when x or the weight is float64.
  torch::Tensor forward(const torch::Tensor& x);

  // Computes the probabilities of x and applies the routing rule of the
  // config. valid: [G, S] bool.
  RoutingPlan route(const torch::Tensor& x, const torch::Tensor& valid);

  int64_t num_experts() const { return weight.size(0); }

  torch::Tensor weight;  // [E, D]

 private:
  MoeConfig config_;
};
TORCH_MODULE(Router);

}  // namespace imp
