// MoE layer against hand-derived values and a naive per-token reference.
// Dimension letters as in imp/moe/moe_layer.h: B batch, N tokens, T = B*N,
// D d_model, M mlp_dim, E experts, G groups, S group size, C capacity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "imp/core/autocast.h"
#include "imp/moe/moe_layer.h"

namespace imp {
namespace {

MoeConfig make_config(int num_experts, const std::string& router, double capacity_factor,
                      int group_size, int top_k = 1) {
  MoeConfig config;
  config.num_experts = num_experts;
  config.router = router;
  config.capacity_factor = capacity_factor;
  config.group_size = group_size;
  config.top_k = top_k;
  return config;
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor flat = t.to(torch::kLong).contiguous().view(-1);
  return std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// What the reference computes, in float64.
struct ReferenceOutput {
  torch::Tensor y;                         // [B, N, D]
  std::vector<int64_t> tokens_per_expert;  // [E]
  int64_t dropped_tokens = 0;
  double aux_loss = 0.0;
};

// The MoE layer written out with loops over groups, experts and tokens, from
// the definitions in moe_layer.h and router.h, sharing no code with them.
class NaiveMoe {
 public:
  explicit NaiveMoe(MoeLayerImpl& layer)
      : config_(layer.config()),
        router_(layer.router->weight.detach().to(torch::kDouble).contiguous()),
        fc1_weight_(layer.fc1_weight.detach().to(torch::kDouble).contiguous()),
        fc1_bias_(layer.fc1_bias.detach().to(torch::kDouble).contiguous()),
        fc2_weight_(layer.fc2_weight.detach().to(torch::kDouble).contiguous()),
        fc2_bias_(layer.fc2_bias.detach().to(torch::kDouble).contiguous()) {}

  ReferenceOutput run(const torch::Tensor& x, const torch::Tensor& mask) {
    const int64_t batch = x.size(0), length = x.size(1), d_model = x.size(2);
    const int64_t num_experts = router_.size(0);
    const int64_t num_tokens = batch * length;
    torch::Tensor x_flat =
        x.detach().to(torch::kDouble).reshape({num_tokens, d_model}).contiguous();
    auto xa = x_flat.accessor<double, 2>();

    tokens_.assign(num_tokens, std::vector<double>(d_model));
    real_.assign(num_tokens, true);
    torch::Tensor mask_flat =
        mask.defined() ? mask.reshape({num_tokens}).contiguous() : torch::Tensor();
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t d = 0; d < d_model; ++d) tokens_[t][d] = xa[t][d];
      if (mask_flat.defined()) real_[t] = mask_flat[t].item<bool>();
    }
    probs_.assign(num_tokens, std::vector<double>(num_experts));
    for (int64_t t = 0; t < num_tokens; ++t) probs_[t] = router_probs(tokens_[t]);

    ReferenceOutput out;
    y_.assign(num_tokens, std::vector<double>(d_model, 0.0));
    out.tokens_per_expert.assign(num_experts, 0);
    times_processed_.assign(num_tokens, 0);

    const int64_t num_groups = ceil_div(num_tokens, config_.group_size);
    const int64_t group_size = ceil_div(num_tokens, num_groups);
    for (int64_t g = 0; g < num_groups; ++g) {
      if (config_.router == "experts_choose") {
        experts_choose_group(g, group_size, out);
      } else {
        token_choice_group(g, group_size, out);
      }
    }

    for (int64_t t = 0; t < num_tokens; ++t) {
      if (real_[t] && times_processed_[t] == 0) ++out.dropped_tokens;
    }
    if (config_.router == "token_choice") out.aux_loss = aux_loss();

    out.y = torch::zeros({num_tokens, d_model}, torch::kDouble);
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t d = 0; d < d_model; ++d) out.y[t][d] = y_[t][d];
    }
    out.y = out.y.view({batch, length, d_model});
    return out;
  }

 private:
  bool is_real(int64_t t) const { return t < static_cast<int64_t>(real_.size()) && real_[t]; }

  std::vector<double> router_probs(const std::vector<double>& token) const {
    auto w = router_.accessor<double, 2>();
    std::vector<double> logits(w.size(0));
    for (int64_t e = 0; e < w.size(0); ++e) {
      double sum = 0.0;
      for (int64_t d = 0; d < w.size(1); ++d) sum += w[e][d] * token[d];
      logits[e] = sum;
    }
    const double max_logit = *std::max_element(logits.begin(), logits.end());
    double total = 0.0;
    for (double& l : logits) total += (l = std::exp(l - max_logit));
    for (double& l : logits) l /= total;
    return logits;
  }

  // fc2(gelu(fc1(token))) of expert e, with the exact (erf) GELU.
  std::vector<double> expert(int64_t e, const std::vector<double>& token) const {
    auto w1 = fc1_weight_.accessor<double, 3>();
    auto b1 = fc1_bias_.accessor<double, 3>();
    auto w2 = fc2_weight_.accessor<double, 3>();
    auto b2 = fc2_bias_.accessor<double, 3>();
    const int64_t d_model = w1.size(1), mlp_dim = w1.size(2);
    std::vector<double> hidden(mlp_dim);
    for (int64_t m = 0; m < mlp_dim; ++m) {
      double sum = b1[e][0][m];
      for (int64_t d = 0; d < d_model; ++d) sum += token[d] * w1[e][d][m];
      hidden[m] = 0.5 * sum * (1.0 + std::erf(sum / std::sqrt(2.0)));
    }
    std::vector<double> out(d_model);
    for (int64_t d = 0; d < d_model; ++d) {
      double sum = b2[e][0][d];
      for (int64_t m = 0; m < mlp_dim; ++m) sum += hidden[m] * w2[e][m][d];
      out[d] = sum;
    }
    return out;
  }

  void add_expert_output(int64_t e, int64_t t, ReferenceOutput& out) {
    std::vector<double> expert_out = expert(e, tokens_[t]);
    for (size_t d = 0; d < expert_out.size(); ++d) y_[t][d] += probs_[t][e] * expert_out[d];
    ++out.tokens_per_expert[e];
    ++times_processed_[t];
  }

  void experts_choose_group(int64_t g, int64_t group_size, ReferenceOutput& out) {
    const int64_t num_experts = router_.size(0);
    const int64_t k = std::clamp<int64_t>(
        std::llround(config_.capacity_factor * group_size / num_experts), 1, group_size);
    for (int64_t e = 0; e < num_experts; ++e) {
      std::vector<int64_t> slots(group_size);
      std::iota(slots.begin(), slots.end(), g * group_size);
      auto score = [&](int64_t t) { return is_real(t) ? probs_[t][e] : -1.0; };
      std::stable_sort(slots.begin(), slots.end(),
                       [&](int64_t a, int64_t b) { return score(a) > score(b); });
      for (int64_t i = 0; i < k; ++i) {
        if (is_real(slots[i])) add_expert_output(e, slots[i], out);
      }
    }
  }

  void token_choice_group(int64_t g, int64_t group_size, ReferenceOutput& out) {
    const int64_t num_experts = router_.size(0);
    const int64_t top_k = config_.top_k;
    const int64_t capacity = std::clamp<int64_t>(
        std::llround(top_k * config_.capacity_factor * group_size / num_experts), 1, group_size);
    std::vector<int64_t> filled(num_experts, 0);
    for (int64_t choice = 0; choice < top_k; ++choice) {
      for (int64_t s = 0; s < group_size; ++s) {
        const int64_t t = g * group_size + s;
        if (!is_real(t)) continue;
        const int64_t e = ranked_experts(t)[choice];
        if (filled[e] == capacity) continue;
        ++filled[e];
        add_expert_output(e, t, out);
      }
    }
  }

  std::vector<int64_t> ranked_experts(int64_t t) const {
    std::vector<int64_t> experts(probs_[t].size());
    std::iota(experts.begin(), experts.end(), 0);
    std::stable_sort(experts.begin(), experts.end(),
                     [&](int64_t a, int64_t b) { return probs_[t][a] > probs_[t][b]; });
    return experts;
  }

  // E * sum_e (fraction of real tokens whose first choice is e) * (mean prob of e).
  double aux_loss() const {
    const int64_t num_experts = router_.size(0);
    std::vector<double> first_choice(num_experts, 0.0), prob_sum(num_experts, 0.0);
    int64_t num_real = 0;
    for (size_t t = 0; t < probs_.size(); ++t) {
      if (!real_[t]) continue;
      ++num_real;
      first_choice[ranked_experts(t)[0]] += 1.0;
      for (int64_t e = 0; e < num_experts; ++e) prob_sum[e] += probs_[t][e];
    }
    double loss = 0.0;
    for (int64_t e = 0; e < num_experts; ++e) {
      loss += (first_choice[e] / num_real) * (prob_sum[e] / num_real);
    }
    return num_experts * loss;
  }

  MoeConfig config_;
  torch::Tensor router_, fc1_weight_, fc1_bias_, fc2_weight_, fc2_bias_;
  std::vector<std::vector<double>> tokens_, probs_, y_;
  std::vector<bool> real_;
  std::vector<int64_t> times_processed_;
};

bool all_finite(const torch::Tensor& t) { return torch::isfinite(t).all().item<bool>(); }

// ---------------------------------------------------------------------------
// experts_choose capacity

struct CapacityCase {
  int64_t batch, length, group_size, num_experts;
  double capacity_factor;
  int64_t expected_groups, expected_k;
  std::vector<int64_t> expected_tokens_per_expert;  // the same for every expert
};

TEST(MoeExpertsChoose, FillsEveryExpertWithKTokens) {
  const std::vector<CapacityCase> cases = {
      // T = 10, G = ceil(10/4) = 3, S = ceil(10/3) = 4, 2 padded slots.
      // k = round(2 * 4 / 4) = 2; the last group has 2 real tokens, so each
      // expert takes 2 real tokens in each of the 3 groups: 6.
      {2, 5, 4, 4, 2.0, 3, 2, {6}},
      // T = 21, G = 3, S = 7, no padding. k = round(1 * 7 / 3) = round(2.33) = 2,
      // 3 groups: 6 tokens per expert.
      {3, 7, 8, 3, 1.0, 3, 2, {6}},
      // T = 13, G = ceil(13/5) = 3, S = ceil(13/3) = 5, 2 padded slots.
      // k = round(1.5 * 5 / 2) = round(3.75) = 4, but the last group has only
      // 3 real tokens: each expert takes 4 + 4 + 3 = 11 real tokens.
      {1, 13, 5, 2, 1.5, 3, 4, {11}},
  };
  for (const CapacityCase& c : cases) {
    SCOPED_TRACE("T=" + std::to_string(c.batch * c.length) + " group_size=" +
                 std::to_string(c.group_size) + " E=" + std::to_string(c.num_experts));
    torch::manual_seed(1);
    MoeLayer layer(6, 8,
                   make_config(c.num_experts, "experts_choose", c.capacity_factor, c.group_size));
    MoeOutput out = layer->forward(torch::randn({c.batch, c.length, 6}));

    EXPECT_EQ(out.y.sizes(), (std::vector<int64_t>{c.batch, c.length, 6}));
    EXPECT_EQ(out.metrics.num_groups, c.expected_groups);
    EXPECT_EQ(out.metrics.capacity, c.expected_k);
    EXPECT_EQ(out.metrics.num_tokens, c.batch * c.length);
    EXPECT_EQ(to_vector(out.metrics.tokens_per_expert),
              std::vector<int64_t>(c.num_experts, c.expected_tokens_per_expert[0]));
    EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);
  }
}

// ---------------------------------------------------------------------------
// Combine weights

// Zero weights and a known fc2 bias make expert e output b_e for any token:
// fc1 gives 0, GELU(0) = 0, fc2 adds b_e.
void set_constant_experts(MoeLayerImpl& layer, const torch::Tensor& expert_outputs /*[E, D]*/) {
  torch::NoGradGuard no_grad;
  layer.fc1_weight.zero_();
  layer.fc1_bias.zero_();
  layer.fc2_weight.zero_();
  layer.fc2_bias.copy_(expert_outputs.unsqueeze(1));
}

TEST(MoeCombine, WeightsExpertsByRouterProbability) {
  // capacity_factor = E makes k = S for experts_choose and gives token_choice
  // with top_k = E room for every token, so every expert takes every token
  // and y[t] = sum_e p[t, e] * b_e.
  for (const std::string router : {"experts_choose", "token_choice"}) {
    SCOPED_TRACE(router);
    torch::manual_seed(2);
    MoeLayer layer(4, 5, make_config(3, router, 3.0, 64, /*top_k=*/3));
    torch::Tensor b = torch::tensor(
        {{1.0, -1.0, 2.0, 0.5}, {0.0, 3.0, -2.0, 1.0}, {-1.5, 0.25, 0.0, 4.0}});  // [E, D]
    set_constant_experts(*layer, b);
    torch::Tensor x = torch::randn({2, 3, 4});
    MoeOutput out = layer->forward(x);

    // Probabilities from the router weight, independently of the router.
    torch::Tensor w = layer->router->weight.detach().to(torch::kDouble);  // [E, D]
    torch::Tensor xd = x.to(torch::kDouble).view({6, 4});
    for (int64_t t = 0; t < 6; ++t) {
      std::vector<double> logits(3);
      double total = 0.0;
      for (int64_t e = 0; e < 3; ++e) {
        logits[e] = std::exp((w[e] * xd[t]).sum().item<double>());
        total += logits[e];
      }
      for (int64_t d = 0; d < 4; ++d) {
        double expected = 0.0;
        for (int64_t e = 0; e < 3; ++e) expected += logits[e] / total * b[e][d].item<double>();
        EXPECT_NEAR(out.y.view({6, 4})[t][d].item<double>(), expected, 1e-5)
            << "token " << t << " dim " << d;
      }
    }
  }
}

TEST(MoeCombine, GradientReachesRouter) {
  torch::manual_seed(3);
  MoeLayer layer(8, 16, make_config(4, "experts_choose", 1.0, 64));
  MoeOutput out = layer->forward(torch::randn({2, 6, 8}));
  out.y.sum().backward();
  torch::Tensor grad = layer->router->weight.grad();
  ASSERT_TRUE(grad.defined());
  EXPECT_TRUE(all_finite(grad));
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
}

// ---------------------------------------------------------------------------
// Capacity, empty experts and small batches

// Makes every token's first choice expert 0: feature 0 of every token is 1
// and the router scores it 20 for expert 0 and 0 for the others.
void force_expert_zero(MoeLayerImpl& layer, torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  layer.router->weight.zero_();
  layer.router->weight[0][0] = 20.0;
  x.select(-1, 0).fill_(1.0);
}

TEST(MoeTokenChoice, DropsTokensBeyondCapacity) {
  torch::manual_seed(4);
  // T = 8, C = round(1 * 1.0 * 8 / 4) = 2: tokens 0 and 1 fill expert 0,
  // tokens 2..7 overflow and are dropped.
  MoeLayer layer(4, 8, make_config(4, "token_choice", 1.0, 64));
  torch::Tensor x = torch::randn({1, 8, 4});
  force_expert_zero(*layer, x);
  MoeOutput out = layer->forward(x);

  EXPECT_EQ(out.metrics.capacity, 2);
  EXPECT_EQ(to_vector(out.metrics.tokens_per_expert), (std::vector<int64_t>{2, 0, 0, 0}));
  EXPECT_EQ(out.metrics.num_tokens, 8);
  EXPECT_EQ(out.metrics.dropped_tokens, 6);
  torch::Tensor y = out.y.squeeze(0);  // [N, D]
  EXPECT_GT(y[0].abs().sum().item<double>(), 0.0);
  EXPECT_GT(y[1].abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(y.slice(0, 2), torch::zeros({6, 4})));

  // Experts 1..3 processed nothing: their gradients are zero, not NaN.
  out.y.sum().backward();
  for (const torch::Tensor& p :
       {layer->fc1_weight, layer->fc1_bias, layer->fc2_weight, layer->fc2_bias}) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_TRUE(all_finite(p.grad()));
    EXPECT_TRUE(torch::equal(p.grad().slice(0, 1), torch::zeros_like(p.grad().slice(0, 1))));
    EXPECT_GT(p.grad()[0].abs().sum().item<double>(), 0.0);
  }
}

TEST(MoeTokenChoice, SingleTokenLeavesExpertsEmpty) {
  torch::manual_seed(5);
  // One token, 8 experts: C = round(1 * 1 / 8) = 0, clamped to 1. Only the
  // token's first choice does any work.
  MoeLayer layer(4, 6, make_config(8, "token_choice", 1.0, 64));
  MoeOutput out = layer->forward(torch::randn({1, 1, 4}));
  EXPECT_EQ(out.y.sizes(), (std::vector<int64_t>{1, 1, 4}));
  EXPECT_EQ(out.metrics.capacity, 1);
  std::vector<int64_t> per_expert = to_vector(out.metrics.tokens_per_expert);
  EXPECT_EQ(std::accumulate(per_expert.begin(), per_expert.end(), int64_t{0}), 1);
  const int64_t chosen =
      std::max_element(per_expert.begin(), per_expert.end()) - per_expert.begin();

  out.y.sum().backward();
  for (const torch::Tensor& p :
       {layer->fc1_weight, layer->fc1_bias, layer->fc2_weight, layer->fc2_bias}) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_TRUE(all_finite(p.grad()));
    for (int64_t e = 0; e < 8; ++e) {
      if (e == chosen) continue;
      EXPECT_EQ(p.grad()[e].abs().sum().item<double>(), 0.0) << "expert " << e;
    }
  }
}

TEST(MoeExpertsChoose, HandlesFewerTokensThanExperts) {
  torch::manual_seed(6);
  // T = 3, E = 8: k = round(1 * 3 / 8) = 0, clamped to 1. Each expert takes
  // its favourite of the 3 tokens, so several experts share tokens.
  MoeLayer layer(4, 6, make_config(8, "experts_choose", 1.0, 64));
  torch::Tensor x = torch::randn({1, 3, 4}, torch::requires_grad());
  MoeOutput out = layer->forward(x);
  EXPECT_EQ(out.y.sizes(), (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(out.metrics.capacity, 1);
  EXPECT_EQ(to_vector(out.metrics.tokens_per_expert), std::vector<int64_t>(8, 1));

  out.y.sum().backward();
  EXPECT_TRUE(all_finite(x.grad()));
  EXPECT_TRUE(all_finite(layer->router->weight.grad()));
  EXPECT_TRUE(all_finite(layer->fc1_weight.grad()));
  EXPECT_TRUE(all_finite(layer->fc2_weight.grad()));
}

// ---------------------------------------------------------------------------
// Masks

TEST(MoeMask, MaskedTokensGetZeroAndAreNotCounted) {
  // 4 real tokens of 8: row 0 has 3, row 1 has 1.
  torch::Tensor mask =
      torch::tensor({true, true, true, false, true, false, false, false}).view({2, 4});
  for (const std::string router : {"experts_choose", "token_choice"}) {
    SCOPED_TRACE(router);
    torch::manual_seed(7);
    // experts_choose: S = 8, k = round(1 * 8 / 2) = 4, so each expert takes
    // the 4 real tokens before any masked one. token_choice: C = 4 per expert,
    // room for every real token.
    MoeLayer layer(4, 6, make_config(2, router, 1.0, 64));
    MoeOutput out = layer->forward(torch::randn({2, 4, 4}), mask);

    torch::Tensor masked_out = out.y.index({mask.logical_not()});  // [4, D]
    EXPECT_TRUE(torch::equal(masked_out, torch::zeros_like(masked_out)));
    EXPECT_EQ(out.metrics.num_tokens, 4);
    EXPECT_EQ(out.metrics.dropped_tokens, 0);
    std::vector<int64_t> per_expert = to_vector(out.metrics.tokens_per_expert);
    if (router == "experts_choose") {
      EXPECT_EQ(per_expert, (std::vector<int64_t>{4, 4}));
    } else {
      EXPECT_EQ(per_expert[0] + per_expert[1], 4);
    }
  }
}

TEST(MoeMask, AllMaskedGivesZeros) {
  MoeLayer layer(4, 6, make_config(2, "experts_choose", 1.0, 64));
  MoeOutput out = layer->forward(torch::randn({1, 3, 4}), torch::zeros({1, 3}, torch::kBool));
  EXPECT_TRUE(torch::equal(out.y, torch::zeros({1, 3, 4})));
  EXPECT_EQ(out.metrics.num_tokens, 0);
  EXPECT_EQ(to_vector(out.metrics.tokens_per_expert), (std::vector<int64_t>{0, 0}));
}

// ---------------------------------------------------------------------------
// Reference and gradients

struct ReferenceCase {
  std::string router;
  int num_experts, top_k, group_size;
  double capacity_factor;
};

TEST(MoeReference, MatchesNaiveLoops) {
  const std::vector<ReferenceCase> cases = {
      // T = 15 in G = 3 groups of S = 5 (group_size 6 gives G = 3).
      {"experts_choose", 4, 1, 6, 1.0},
      {"experts_choose", 3, 1, 4, 2.0},  // G = 4, S = 4, 1 padded slot
      {"token_choice", 4, 2, 6, 1.0},    // C = round(2 * 5 / 4) = 3
      {"token_choice", 3, 1, 4, 0.5},    // C = round(0.5 * 4 / 3) = 1, many drops
      {"token_choice", 4, 1, 64, 1.25},  // one group
  };
  for (const ReferenceCase& c : cases) {
    SCOPED_TRACE(c.router + " E=" + std::to_string(c.num_experts) + " top_k=" +
                 std::to_string(c.top_k) + " group_size=" + std::to_string(c.group_size));
    torch::manual_seed(8);
    MoeLayer layer(5, 7,
                   make_config(c.num_experts, c.router, c.capacity_factor, c.group_size, c.top_k));
    layer->to(torch::kDouble);
    torch::Tensor x = torch::randn({3, 5, 5}, torch::kDouble);
    torch::Tensor mask = torch::rand({3, 5}) > 0.2;

    MoeOutput out = layer->forward(x, mask);
    ReferenceOutput expected = NaiveMoe(*layer).run(x, mask);

    EXPECT_TRUE(torch::allclose(out.y, expected.y, /*rtol=*/1e-10, /*atol=*/1e-12))
        << "max difference " << (out.y - expected.y).abs().max().item<double>();
    EXPECT_EQ(to_vector(out.metrics.tokens_per_expert), expected.tokens_per_expert);
    EXPECT_EQ(out.metrics.dropped_tokens, expected.dropped_tokens);
    EXPECT_NEAR(out.aux_loss.item<double>(), expected.aux_loss, 1e-6);
  }
}

TEST(MoeReference, MatchesNaiveLoopsWithoutMask) {
  torch::manual_seed(9);
  MoeLayer layer(5, 7, make_config(4, "experts_choose", 1.0, 4));
  layer->to(torch::kDouble);
  torch::Tensor x = torch::randn({2, 5, 5}, torch::kDouble);
  MoeOutput out = layer->forward(x);
  ReferenceOutput expected = NaiveMoe(*layer).run(x, torch::Tensor());
  EXPECT_TRUE(torch::allclose(out.y, expected.y, 1e-10, 1e-12));
  EXPECT_EQ(to_vector(out.metrics.tokens_per_expert), expected.tokens_per_expert);
}

// Central differences of sum(y * r) against autograd, entry by entry, for the
// input and every parameter. Routing is piecewise constant, so a step of
// 1e-6 stays inside one routing decision unless two scores are that close.
TEST(MoeGradient, MatchesFiniteDifferences) {
  torch::manual_seed(10);
  // T = 5, group_size 3: G = 2, S = 3 with one padded slot, k = round(3 / 3) = 1.
  MoeLayer layer(3, 4, make_config(3, "experts_choose", 1.0, 3));
  layer->to(torch::kDouble);
  torch::Tensor x = torch::randn({1, 5, 3}, torch::kDouble).requires_grad_();
  torch::Tensor r = torch::randn({1, 5, 3}, torch::kDouble);
  auto loss = [&]() { return (layer->forward(x).y * r).sum(); };

  loss().backward();
  const double step = 1e-6;
  std::vector<std::pair<std::string, torch::Tensor>> inputs = {
      {"x", x},
      {"router.weight", layer->router->weight},
      {"fc1_weight", layer->fc1_weight},
      {"fc1_bias", layer->fc1_bias},
      {"fc2_weight", layer->fc2_weight},
      {"fc2_bias", layer->fc2_bias}};
  for (auto& [name, tensor] : inputs) {
    torch::Tensor analytic = tensor.grad().view(-1);
    torch::Tensor flat = tensor.detach().view(-1);  // shares storage, outside autograd
    for (int64_t i = 0; i < flat.numel(); ++i) {
      torch::NoGradGuard no_grad;
      const double original = flat[i].item<double>();
      flat[i] = original + step;
      const double plus = loss().item<double>();
      flat[i] = original - step;
      const double minus = loss().item<double>();
      flat[i] = original;
      const double numeric = (plus - minus) / (2 * step);
      EXPECT_NEAR(analytic[i].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
          << name << "[" << i << "]";
    }
  }
}

// The recomputation path (forward_to_hidden, then hidden_gradients, then
// autograd from the hidden activations and the combine weights) gives the
// gradients of the full forward pass, for both routers, with padded slots,
// masked tokens and, under token choice, dropped tokens. In float64 on
// LibTorch's kernels and in float32, which may run on oneDNN.
TEST(MoeGradient, HiddenPathMatchesFullForward) {
  for (const std::string router : {"experts_choose", "token_choice"}) {
    for (const torch::ScalarType dtype : {torch::kDouble, torch::kFloat}) {
      torch::manual_seed(12);
      // T = 14, group_size 4: G = 4, S = 4 with two padded slots. Experts
      // choose one token each per group. Token choice with capacity 0.5
      // drops tokens.
      MoeLayer layer(6, 10, make_config(3, router, router == "token_choice" ? 0.5 : 0.75, 4, 2));
      layer->to(dtype);
      torch::Tensor x = torch::randn({2, 7, 6}, dtype).requires_grad_();
      torch::Tensor mask = torch::ones({2, 7}, torch::kBool);
      mask[1].slice(0, 5) = false;
      torch::Tensor r = torch::randn({2, 7, 6}, dtype);
      const std::vector<torch::Tensor> tensors{x, layer->router->weight, layer->fc1_weight, layer->fc1_bias,
                                               layer->fc2_weight, layer->fc2_bias};
      auto take_gradients = [&]() {
        std::vector<torch::Tensor> out;
        for (torch::Tensor t : tensors) {
          out.push_back(t.grad().defined() ? t.grad().clone() : torch::zeros_like(t));
          t.mutable_grad().reset();
        }
        return out;
      };
      MoeOutput full = layer->forward(x, mask);
      ((full.y * r).sum() + full.aux_loss).backward();
      const std::vector<torch::Tensor> expected = take_gradients();

      ASSERT_TRUE(layer->has_hidden_path(x));
      MoeHidden part = layer->forward_to_hidden(x, mask);
      auto [grad_hidden, grad_combine] = layer->hidden_gradients(part, r);
      std::vector<torch::Tensor> roots{part.hidden, part.combine_weight}, grads{grad_hidden, grad_combine};
      if (part.aux_loss.requires_grad()) {
        roots.push_back(part.aux_loss);
        grads.push_back(torch::ones_like(part.aux_loss));
      }
      torch::autograd::backward(roots, grads);
      const std::vector<torch::Tensor> actual = take_gradients();

      const double tolerance = dtype == torch::kDouble ? 1e-12 : 1e-5;
      const char* names[] = {"x", "router.weight", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"};
      for (size_t i = 0; i < expected.size(); ++i) {
        const double scale = expected[i].abs().max().item<double>();
        ASSERT_GT(scale, 0.0) << router << " " << names[i];
        EXPECT_LE((actual[i] - expected[i]).abs().max().item<double>(), tolerance * scale)
            << router << " " << dtype << " " << names[i];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Precision and checks

TEST(MoeDtype, KeepsFloat32StreamUnderAutocast) {
  torch::manual_seed(11);
  MoeLayer layer(8, 16, make_config(4, "token_choice", 1.0, 64));
  torch::Tensor x = torch::randn({2, 3, 8});
  MoeOutput reference = layer->forward(x);
  MoeOutput out;
  {
    AutocastScope autocast(torch::kCPU, true);
    out = layer->forward(x);
  }
  EXPECT_EQ(out.y.scalar_type(), torch::kFloat);
  EXPECT_EQ(out.aux_loss.scalar_type(), torch::kFloat);
  // bf16 experts round to about 3 significant digits; the routing is the
  // same because the router stays in float32.
  EXPECT_EQ(to_vector(out.metrics.tokens_per_expert),
            to_vector(reference.metrics.tokens_per_expert));
  EXPECT_TRUE(torch::allclose(out.y, reference.y, 5e-2, 5e-2));
  EXPECT_FALSE(torch::equal(out.y, reference.y));
}

TEST(MoeDtype, ReturnsBf16ForBf16Input) {
  MoeLayer layer(8, 16, make_config(4, "experts_choose", 1.0, 64));
  MoeOutput out = layer->forward(torch::randn({2, 3, 8}).to(torch::kBFloat16));
  EXPECT_EQ(out.y.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(out.aux_loss.scalar_type(), torch::kFloat);
}

TEST(MoeChecks, RejectsWrongShapes) {
  MoeLayer layer(8, 16, make_config(4, "experts_choose", 1.0, 64));
  EXPECT_THROW(layer->forward(torch::randn({2, 3, 7})), c10::Error);
  EXPECT_THROW(layer->forward(torch::randn({6, 8})), c10::Error);
  EXPECT_THROW(layer->forward(torch::randn({2, 3, 8}), torch::ones({2, 4}, torch::kBool)),
               c10::Error);
  EXPECT_THROW(layer->forward(torch::randn({2, 3, 8}), torch::ones({2, 3})), c10::Error);
}

TEST(MoeChecks, RejectsInvalidConfig) {
  EXPECT_THROW(MoeLayer(8, 16, make_config(0, "experts_choose", 1.0, 64)), c10::Error);
  EXPECT_THROW(MoeLayer(8, 16, make_config(4, "experts_choose", 0.0, 64)), c10::Error);
  EXPECT_THROW(MoeLayer(8, 16, make_config(4, "experts_choose", 1.0, 0)), c10::Error);
  EXPECT_THROW(MoeLayer(8, 16, make_config(4, "token_choice", 1.0, 64, 5)), c10::Error);
}

TEST(MoeParameters, StacksExpertsAndRegistersNames) {
  MoeLayer layer(8, 16, make_config(4, "experts_choose", 1.0, 64));
  auto params = layer->named_parameters();
  EXPECT_EQ(params["router.weight"].sizes(), (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(params["fc1_weight"].sizes(), (std::vector<int64_t>{4, 8, 16}));
  EXPECT_EQ(params["fc1_bias"].sizes(), (std::vector<int64_t>{4, 1, 16}));
  EXPECT_EQ(params["fc2_weight"].sizes(), (std::vector<int64_t>{4, 16, 8}));
  EXPECT_EQ(params["fc2_bias"].sizes(), (std::vector<int64_t>{4, 1, 8}));
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)): fan_in 8 for fc1, 16 for fc2.
  EXPECT_LE(params["fc1_weight"].abs().max().item<double>(), 1.0 / std::sqrt(8.0));
  EXPECT_LE(params["fc2_weight"].abs().max().item<double>(), 0.25);
}

}  // namespace
}  // namespace imp
