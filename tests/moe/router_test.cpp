// Routing rules on hand-made probabilities. Dimension letters as in
// imp/moe/router.h: G groups, S group size, E experts, C capacity.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "imp/core/autocast.h"
#include "imp/moe/router.h"

namespace imp {
namespace {

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor flat = t.to(torch::kLong).contiguous().view(-1);
  return std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
}

std::vector<double> to_doubles(const torch::Tensor& t) {
  torch::Tensor flat = t.detach().to(torch::kDouble).contiguous().view(-1);
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

void expect_doubles_near(const std::vector<double>& actual, const std::vector<double>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i)
    EXPECT_NEAR(actual[i], expected[i], 1e-12) << "entry " << i;
}

// One group of four tokens over two experts, [G=1, S=4, E=2].
torch::Tensor four_token_probs() {
  return torch::tensor({0.9, 0.1,   // token 0
                        0.2, 0.8,   // token 1
                        0.6, 0.4,   // token 2
                        0.3, 0.7},  // token 3
                       torch::kDouble)
      .view({1, 4, 2});
}

TEST(RouterExpertsChoose, TakesTopKTokensPerExpert) {
  torch::Tensor valid = torch::ones({1, 4}, torch::kBool);
  // k = round(1.0 * S / E) = round(4 / 2) = 2. Expert 0 ranks tokens
  // 0 (0.9), 2 (0.6), 3 (0.3), 1 (0.2); expert 1 ranks 1 (0.8), 3 (0.7), ...
  RoutingPlan plan = route_experts_choose(four_token_probs(), valid, 1.0);

  EXPECT_EQ(plan.capacity, 2);
  ASSERT_EQ(plan.token_index.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(to_vector(plan.token_index), (std::vector<int64_t>{0, 2, 1, 3}));
  expect_doubles_near(to_doubles(plan.combine_weight), {0.9, 0.6, 0.8, 0.7});
  EXPECT_TRUE(plan.slot_valid.all().item<bool>());
  EXPECT_EQ(plan.aux_loss.item<double>(), 0.0);
}

TEST(RouterExpertsChoose, RanksMaskedTokensLast) {
  // Token 0 is masked. Expert 0 now takes 2 (0.6) and 3 (0.3); expert 1 is
  // unaffected, 1 (0.8) and 3 (0.7).
  torch::Tensor valid = torch::tensor({false, true, true, true}).view({1, 4});
  RoutingPlan plan = route_experts_choose(four_token_probs(), valid, 1.0);
  EXPECT_EQ(to_vector(plan.token_index), (std::vector<int64_t>{2, 3, 1, 3}));
  expect_doubles_near(to_doubles(plan.combine_weight), {0.6, 0.3, 0.8, 0.7});

  // With only token 1 real, each expert's second slot contains a masked
  // token whose weight is zero.
  valid = torch::tensor({false, true, false, false}).view({1, 4});
  plan = route_experts_choose(four_token_probs(), valid, 1.0);
  std::vector<int64_t> index = to_vector(plan.token_index);
  EXPECT_EQ(index[0], 1);
  EXPECT_EQ(index[2], 1);
  expect_doubles_near(to_doubles(plan.combine_weight), {0.2, 0.0, 0.8, 0.0});
  EXPECT_EQ(to_vector(plan.slot_valid), (std::vector<int64_t>{1, 0, 1, 0}));
}

TEST(RouterExpertsChoose, OffsetsTokenIndexByGroup) {
  // Two groups with the same probabilities: group 1's tokens are rows 4..7.
  torch::Tensor probs = torch::cat({four_token_probs(), four_token_probs()}, 0);  // [2, 4, 2]
  RoutingPlan plan = route_experts_choose(probs, torch::ones({2, 4}, torch::kBool), 1.0);
  ASSERT_EQ(plan.token_index.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(to_vector(plan.token_index), (std::vector<int64_t>{0, 2, 4, 6, 1, 3, 5, 7}));
}

TEST(RouterExpertsChoose, ClampsCapacityToOne) {
  // k = round(1.0 * 3 / 8) = 0, clamped to 1.
  torch::Tensor probs = torch::softmax(torch::randn({1, 3, 8}, torch::kDouble), -1);
  RoutingPlan plan = route_experts_choose(probs, torch::ones({1, 3}, torch::kBool), 1.0);
  EXPECT_EQ(plan.capacity, 1);
  EXPECT_EQ(plan.token_index.sizes(), (std::vector<int64_t>{8, 1}));
}

// Three tokens over two experts: token 2 prefers expert 1, the others expert 0.
torch::Tensor three_token_probs() {
  return torch::tensor({0.7, 0.3,   // token 0
                        0.6, 0.4,   // token 1
                        0.4, 0.6},  // token 2
                       torch::kDouble)
      .view({1, 3, 2});
}

TEST(RouterTokenChoice, FillsFirstChoicesFirst) {
  // C = round(top_k 2 * 0.5 * S 3 / E 2) = round(1.5) = 2.
  // Expert 0 queue: first choices t0, t1, then second choice t2 -> t2 dropped.
  // Expert 1 queue: first choice t2, then second choices t0, t1 -> t1 dropped.
  RoutingPlan plan =
      route_token_choice(three_token_probs(), torch::ones({1, 3}, torch::kBool), 2, 0.5);
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(to_vector(plan.token_index), (std::vector<int64_t>{0, 1, 2, 0}));
  expect_doubles_near(to_doubles(plan.combine_weight), {0.7, 0.6, 0.6, 0.3});
  EXPECT_TRUE(plan.slot_valid.all().item<bool>());

  // First choices: e0 twice, e1 once, f = (2/3, 1/3).
  // Mean probabilities P = (1.7/3, 1.3/3).
  // aux = 2 * (2/3 * 1.7/3 + 1/3 * 1.3/3) = 9.4 / 9.
  EXPECT_NEAR(plan.aux_loss.item<double>(), 9.4 / 9.0, 1e-12);
}

TEST(RouterTokenChoice, LeavesUnusedSlotsEmpty) {
  // top_k 1, C = round(1 * 1.0 * 3 / 2) = round(1.5) = 2: expert 0 gets t0
  // and t1, expert 1 gets t2 and leaves one slot empty with weight 0.
  RoutingPlan plan =
      route_token_choice(three_token_probs(), torch::ones({1, 3}, torch::kBool), 1, 1.0);
  EXPECT_EQ(plan.capacity, 2);
  EXPECT_EQ(to_vector(plan.slot_valid), (std::vector<int64_t>{1, 1, 1, 0}));
  std::vector<int64_t> index = to_vector(plan.token_index);
  EXPECT_EQ(index[0], 0);
  EXPECT_EQ(index[1], 1);
  EXPECT_EQ(index[2], 2);
  expect_doubles_near(to_doubles(plan.combine_weight), {0.7, 0.6, 0.6, 0.0});
}

TEST(RouterTokenChoice, MaskedTokensTakeNoSlot) {
  // Token 0 masked. Expert 0: t1 first, t2 second. Expert 1: t2, then t1.
  torch::Tensor valid = torch::tensor({false, true, true}).view({1, 3});
  RoutingPlan plan = route_token_choice(three_token_probs(), valid, 2, 0.5);
  EXPECT_EQ(to_vector(plan.token_index), (std::vector<int64_t>{1, 2, 2, 1}));
  expect_doubles_near(to_doubles(plan.combine_weight), {0.6, 0.4, 0.6, 0.4});

  // Over t1 and t2: f = (1/2, 1/2), P = (0.5, 0.5), aux = 2 * 0.5 = 1.
  EXPECT_NEAR(plan.aux_loss.item<double>(), 1.0, 1e-12);
}

TEST(RouterTokenChoice, RejectsTopKAboveExperts) {
  EXPECT_THROW(route_token_choice(three_token_probs(), torch::ones({1, 3}, torch::kBool), 3, 1.0),
               c10::Error);
}

TEST(RouterMetrics, CountsRealTokensAndDrops) {
  // Token 2 masked, top_k 1: t0 and t1 both pick expert 0, which has
  // C = round(1 * 1.0 * 3 / 2) = 2 slots, so expert 1 stays empty.
  torch::Tensor valid = torch::tensor({true, true, false}).view({1, 3});
  RoutingPlan plan = route_token_choice(three_token_probs(), valid, 1, 1.0);
  RoutingMetrics metrics = compute_routing_metrics(plan, valid);
  EXPECT_EQ(to_vector(metrics.tokens_per_expert), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(metrics.num_tokens, 2);
  EXPECT_EQ(metrics.dropped_tokens, 0);
  EXPECT_EQ(metrics.capacity, 2);
  EXPECT_EQ(metrics.num_groups, 1);

  // C = round(1 * 0.5 * 3 / 2) = round(0.75) = 1: t1 overflows expert 0.
  plan = route_token_choice(three_token_probs(), valid, 1, 0.5);
  metrics = compute_routing_metrics(plan, valid);
  EXPECT_EQ(to_vector(metrics.tokens_per_expert), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(metrics.dropped_tokens, 1);
}

TEST(RouterMetrics, CountsFirstChoicesOfRealTokens) {
  // Experts-choose fills both experts whatever the tokens prefer; the first
  // choices still show that t0 and t1 prefer expert 0. t2 is masked.
  torch::Tensor valid = torch::tensor({true, true, false}).view({1, 3});
  RoutingPlan plan = route_experts_choose(three_token_probs(), valid, 1.0);
  RoutingMetrics metrics = compute_routing_metrics(plan, valid);
  EXPECT_FALSE(metrics.top_choice_per_expert.defined());  // the plan carries no probabilities
  plan.probs = three_token_probs();
  metrics = compute_routing_metrics(plan, valid);
  EXPECT_EQ(to_vector(metrics.top_choice_per_expert), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(to_vector(metrics.tokens_per_expert), (std::vector<int64_t>{2, 2}));
}

TEST(RouterModule, StaysFloat32UnderAutocast) {
  torch::manual_seed(0);
  MoeConfig config;
  config.num_experts = 4;
  Router router(8, config);
  torch::Tensor x = torch::randn({2, 5, 8});
  torch::Tensor expected = torch::softmax(torch::matmul(x, router->weight.t()), -1);

  torch::Tensor probs;
  {
    AutocastScope autocast(torch::kCPU, true);
    probs = router->forward(x);
    // The same matmul outside the router does run in bf16 here.
    EXPECT_EQ(torch::matmul(x, router->weight.t()).scalar_type(), torch::kBFloat16);
  }
  EXPECT_EQ(probs.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(probs, expected));
}

TEST(RouterModule, PromotesBf16InputToFloat32) {
  MoeConfig config;
  config.num_experts = 3;
  Router router(4, config);
  torch::Tensor probs = router->forward(torch::randn({1, 2, 4}).to(torch::kBFloat16));
  EXPECT_EQ(probs.scalar_type(), torch::kFloat);
  EXPECT_EQ(probs.sizes(), (std::vector<int64_t>{1, 2, 3}));
}

TEST(RouterModule, InitialisesLikeLinear) {
  torch::manual_seed(0);
  MoeConfig config;
  config.num_experts = 16;
  Router router(64, config);
  // U(-1/8, 1/8) for fan_in 64: every entry inside, and the extremes close
  // to the bounds with 1024 draws.
  EXPECT_LE(router->weight.abs().max().item<double>(), 0.125);
  EXPECT_GT(router->weight.abs().max().item<double>(), 0.12);
}

TEST(RouterModule, RejectsUnknownRouter) {
  MoeConfig config;
  config.num_experts = 2;
  config.router = "random";
  EXPECT_THROW(Router(4, config), c10::Error);
}

}  // namespace
}  // namespace imp
