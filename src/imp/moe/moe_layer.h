// Mixture-of-Experts feed-forward layer: a learned router sends each token to
// a few of E GELU MLP experts and adds their outputs back, weighted by the
// router probabilities.
//
// Dimension letters:
//   B  batch
//   N  tokens per example
//   T  tokens in the batch, B*N
//   D  d_model
//   M  mlp_dim, hidden width of each expert
//   E  experts
//   G  groups, ceil(T / group_size)
//   S  group size, ceil(T / G) token slots per group
//   C  capacity, slots per expert and group (k for experts_choose)
#pragma once

#include <cstdint>
#include <utility>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "imp/config/config.h"
#include "imp/moe/router.h"

namespace imp::dist {
class ProcessGroup;
}  // namespace imp::dist

namespace imp {

struct MoeOutput {
  torch::Tensor y;         // [B, N, D], the dtype of the input x
  torch::Tensor aux_loss;  // scalar float32, unweighted; 0 for experts_choose
  RoutingMetrics metrics;
};

// The tensors that the backward pass of MoeLayerImpl::forward reads,
// recomputed without the experts' last linear map and the combine (see
// forward_to_hidden).
struct MoeHidden {
  torch::Tensor hidden;          // [E, G*C, M], the experts' GELU activations
  torch::Tensor combine_weight;  // [E, G*C] float32, as in RoutingPlan
  torch::Tensor slot_rows;       // [E*G*C], the token row of each slot
  torch::Tensor aux_loss;        // as in MoeOutput
  int64_t padded_tokens = 0;     // G*S
};

// MoE layer with E experts, each Linear(D, M) -> GELU -> Linear(M, D) with
// biases. The experts' weights are stacked along a leading E axis and run as
// batched matmuls over a [E, G*C, D] buffer of dispatched tokens.
//
// The T = B*N tokens are flattened and split into G groups of S slots; the
// last group is padded with masked slots, so S*G - T < G slots are padding.
// Routing (MoeConfig::router) happens within each group:
//   experts_choose  every expert takes its top-k tokens, see route_experts_choose
//   token_choice    every token takes its top_k experts, see route_token_choice
// A token's output is the sum over the experts that processed it of
// probability * expert(x). Masked and padded tokens, and tokens no expert
// took, get zero output.
//
// Precision: the router always runs in float32 (see RouterImpl). The expert
// matmuls follow autocast, so they run in bf16 inside an AutocastScope, and
// y is returned in x's dtype to keep the residual stream's precision.
//
// Expert parallelism (shard_experts): each of W processes keeps E/W of the
// experts, El = E/W, and routes its own tokens as above. The dispatched
// buffer [E, G*C, D] then travels by all-to-all, each expert's rows to the
// process that has that expert. That process runs its El experts on the
// rows of all processes at once and sends the outputs back the same way. A token's
// output is what one process holding every expert would compute, so the
// sharded layer equals the whole one whenever the routing groups are the
// same. Every process must run every forward and backward pass of a sharded
// layer, in the same order, because each one joins the all-to-alls.
class MoeLayerImpl : public torch::nn::Module {
 public:
  MoeLayerImpl(int64_t d_model, int64_t mlp_dim, const MoeConfig& config);

  // Draws all weights like torch::nn::Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  // for weights and biases alike, fan_in = D for fc1 and the router, M for fc2.
  void reset_parameters();

  // x: [B, N, D]; mask: [B, N] bool, true = real token, or undefined when all
  // tokens are real. Synchronises with the device once, for the metrics.
  MoeOutput forward(const torch::Tensor& x, const torch::Tensor& mask = {});

  // For recomputation in the backward pass: forward() up to the experts'
  // hidden activations. The experts' last linear map and the combine are
  // left out, since their backward pass needs neither of their outputs:
  // hidden_gradients() gives the gradients of what remains. Needs local
  // experts (no sharding) and at least one token, which has_hidden_path()
  // checks.
  bool has_hidden_path(const torch::Tensor& x) const;
  MoeHidden forward_to_hidden(const torch::Tensor& x, const torch::Tensor& mask = {});
  // For dL/dy = grad_y ([B, N, D]) of forward(x, mask).y: returns
  // dL/d(hidden) and dL/d(combine_weight), and adds the gradients of
  // fc2_weight and fc2_bias to their .grad. With out = fc2(hidden) and
  // g = dL/d(out * combine_weight), both follow from one product P = g fc2^T:
  // dL/d(hidden) = combine_weight * P and dL/d(combine_weight) =
  // sum(g * out) = sum(hidden * P) + g . fc2_bias, so out is never formed.
  std::pair<torch::Tensor, torch::Tensor> hidden_gradients(const MoeHidden& part, const torch::Tensor& grad_y);

  const MoeConfig& config() const { return config_; }
  // E, the experts of the whole layer, sharded or not.
  int64_t num_experts() const { return config_.num_experts; }
  // The experts this process holds: all E, or El once sharded, starting at
  // expert first_local_expert().
  int64_t num_local_experts() const { return fc1_weight.size(0); }
  int64_t first_local_expert() const;

  // Keeps only this process's experts, [rank * El, (rank + 1) * El), in
  // fc1_weight, fc1_bias, fc2_weight and fc2_bias (their gradients are
  // reset), and runs the experts in parallel from then on. The parameters
  // stay the same tensors (their data is replaced), so an optimizer built
  // over them keeps them. Throws ConfigError when E is not a multiple of the
  // group's size. `group` must outlive the sharding.
  void shard_experts(dist::ProcessGroup& group);
  // Collects every process's experts so that each has all E again, and
  // runs them locally from then on. A collective: every process calls it.
  void unshard_experts();
  bool experts_sharded() const { return expert_group_ != nullptr; }
  // The expert parameters, sharded by shard_experts.
  std::vector<torch::Tensor> expert_parameters() const {
    return {fc1_weight, fc1_bias, fc2_weight, fc2_bias};
  }

  Router router{nullptr};
  torch::Tensor fc1_weight;  // [E, D, M]
  torch::Tensor fc1_bias;    // [E, 1, M]
  torch::Tensor fc2_weight;  // [E, M, D]
  torch::Tensor fc2_bias;    // [E, 1, D]

 private:
  // The routed tokens of x in the experts' buffer.
  struct Dispatch {
    RoutingPlan plan;
    torch::Tensor valid;      // [G, S] bool, real tokens
    torch::Tensor slot_rows;  // [E*G*C]
    torch::Tensor expert_in;  // [E, G*C, D]
    int64_t padded_tokens = 0;
  };
  // Checks x and mask as forward() documents them.
  void check_input(const torch::Tensor& x, const torch::Tensor& mask) const;
  // Groups x's tokens, routes them and gathers each slot's token. x must
  // contain at least one token.
  Dispatch dispatch(const torch::Tensor& x, const torch::Tensor& mask);
  // The first half of every local expert: [El, S', D] -> [El, S', M].
  torch::Tensor expert_hidden(const torch::Tensor& expert_in);
  // Runs every local expert on its slots: [El, S', D] -> [El, S', D].
  torch::Tensor run_experts(const torch::Tensor& expert_in);
  // Sends each expert's slots to the process holding it, runs the local
  // experts on the slots of every process and returns this process's
  // outputs in float32: [E, G*C, D] -> [E, G*C, D].
  torch::Tensor run_experts_sharded(const torch::Tensor& expert_in);

  MoeConfig config_;
  dist::ProcessGroup* expert_group_ = nullptr;
};
TORCH_MODULE(MoeLayer);

}  // namespace imp
