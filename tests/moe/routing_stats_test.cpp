#include <gtest/gtest.h>

#include <torch/torch.h>

#include "imp/moe/routing_stats.h"

namespace imp {
namespace {

RoutingMetrics make_metrics(std::vector<int64_t> tokens_per_expert, int64_t num_tokens,
                            int64_t dropped_tokens) {
  RoutingMetrics metrics;
  metrics.tokens_per_expert = torch::tensor(tokens_per_expert, torch::kLong);
  metrics.num_tokens = num_tokens;
  metrics.dropped_tokens = dropped_tokens;
  metrics.capacity = 2;
  metrics.num_groups = 1;
  return metrics;
}

TEST(RoutingStats, SumsPassesPerLayerAndModality) {
  RoutingStats stats;
  EXPECT_TRUE(stats.empty());
  stats.add(3, "image", make_metrics({2, 2, 0, 0}, 4, 1));
  stats.add(3, "image", make_metrics({1, 3, 0, 4}, 8, 0));
  stats.add(3, "text", make_metrics({0, 0, 5, 3}, 6, 2));
  stats.add(1, "image", make_metrics({4, 4, 4, 4}, 16, 0));

  EXPECT_FALSE(stats.empty());
  EXPECT_EQ(stats.layers(), (std::vector<int>{1, 3}));
  EXPECT_EQ(stats.modalities(3), (std::vector<std::string>{"image", "text"}));
  EXPECT_TRUE(stats.modalities(2).empty());
  EXPECT_EQ(stats.find(2, "image"), nullptr);
  EXPECT_EQ(stats.find(1, "text"), nullptr);

  const RoutingCounts* image = stats.find(3, "image");
  ASSERT_NE(image, nullptr);
  EXPECT_EQ(image->tokens_per_expert, (std::vector<int64_t>{3, 5, 0, 4}));
  EXPECT_EQ(image->num_tokens, 12);
  EXPECT_EQ(image->dropped_tokens, 1);
  EXPECT_EQ(image->num_passes, 2);
  // 12 expert slots in all: 3/12, 5/12, 0, 4/12.
  std::vector<double> share = image->expert_share();
  ASSERT_EQ(share.size(), 4u);
  EXPECT_DOUBLE_EQ(share[0], 0.25);
  EXPECT_DOUBLE_EQ(share[1], 5.0 / 12.0);
  EXPECT_DOUBLE_EQ(share[2], 0.0);
  EXPECT_DOUBLE_EQ(share[3], 1.0 / 3.0);
}

TEST(RoutingStats, WritesJson) {
  RoutingStats stats;
  stats.add(5, "text", make_metrics({0, 0, 5, 3}, 6, 2));
  stats.add(1, "image", make_metrics({1, 3}, 4, 0));

  nlohmann::json json = stats.to_json();
  ASSERT_TRUE(json.contains("layers"));
  ASSERT_EQ(json["layers"].size(), 2u);
  EXPECT_EQ(json["layers"][0]["layer"], 1);
  EXPECT_EQ(json["layers"][1]["layer"], 5);

  const nlohmann::json& text = json["layers"][1]["modalities"]["text"];
  EXPECT_EQ(text["tokens_per_expert"], nlohmann::json({0, 0, 5, 3}));
  EXPECT_EQ(text["num_tokens"], 6);
  EXPECT_EQ(text["dropped_tokens"], 2);
  EXPECT_EQ(text["num_passes"], 1);
  EXPECT_DOUBLE_EQ(text["dropped_fraction"].get<double>(), 2.0 / 6.0);
  // 8 slots: 5/8 and 3/8.
  EXPECT_DOUBLE_EQ(text["expert_share"][2].get<double>(), 0.625);
  EXPECT_DOUBLE_EQ(text["expert_share"][3].get<double>(), 0.375);

  const nlohmann::json& image = json["layers"][0]["modalities"]["image"];
  EXPECT_DOUBLE_EQ(image["expert_share"][1].get<double>(), 0.75);
}

TEST(RoutingStats, FirstChoiceShareAndReport) {
  RoutingStats stats;
  RoutingMetrics video = make_metrics({4, 4}, 8, 0);
  video.top_choice_per_expert = torch::tensor(std::vector<int64_t>{6, 2}, torch::kLong);
  stats.add(1, "video", video);
  stats.add(1, "video", video);
  const RoutingCounts* counts = stats.find(1, "video");
  ASSERT_NE(counts, nullptr);
  EXPECT_EQ(counts->top_choice_per_expert, (std::vector<int64_t>{12, 4}));
  EXPECT_EQ(counts->top_choice_share(), (std::vector<double>{0.75, 0.25}));
  EXPECT_EQ(stats.to_json()["layers"][0]["modalities"]["video"]["top_choice_share"],
            nlohmann::json({0.75, 0.25}));
  const std::string report = stats.report();
  EXPECT_NE(report.find("MoE layer 1"), std::string::npos) << report;
  EXPECT_NE(report.find("video   e0  50.0% /  75.0%  e1  50.0% /  25.0%"), std::string::npos)
      << report;
}

TEST(RoutingStats, ResetClearsCounts) {
  RoutingStats stats;
  stats.add(0, "audio", make_metrics({1, 1}, 2, 0));
  stats.reset();
  EXPECT_TRUE(stats.empty());
  EXPECT_EQ(stats.find(0, "audio"), nullptr);
  EXPECT_EQ(stats.to_json()["layers"].size(), 0u);
}

TEST(RoutingStats, EmptyCountsHaveZeroShare) {
  RoutingStats stats;
  stats.add(0, "text", make_metrics({0, 0, 0}, 0, 0));
  EXPECT_EQ(stats.find(0, "text")->expert_share(), (std::vector<double>{0.0, 0.0, 0.0}));
  EXPECT_DOUBLE_EQ(
      stats.to_json()["layers"][0]["modalities"]["text"]["dropped_fraction"].get<double>(), 0.0);
}

TEST(RoutingStats, RejectsChangedExpertCount) {
  RoutingStats stats;
  stats.add(0, "image", make_metrics({1, 1}, 2, 0));
  EXPECT_THROW(stats.add(0, "image", make_metrics({1, 1, 1}, 3, 0)), c10::Error);
  // Another modality of the same layer starts its own counts.
  EXPECT_NO_THROW(stats.add(0, "text", make_metrics({1, 1}, 2, 0)));
  EXPECT_THROW(stats.add(1, "image", RoutingMetrics{}), c10::Error);
}

}  // namespace
}  // namespace imp
