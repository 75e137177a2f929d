#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/config/config.h"
#include "imp/core/autocast.h"
#include "imp/model/embedders.h"
#include "imp/model/encoder.h"
#include "imp/model/imp_model.h"

namespace imp {
namespace {

using Heads = std::map<std::string, int64_t>;

ModelConfig small_config(int num_experts) {
  ModelConfig config;
  config.d_model = 32;
  config.num_layers = 4;
  config.num_heads = 4;
  config.mlp_dim = 64;
  config.embed_dim = 16;
  config.moe.num_experts = num_experts;
  config.moe.moe_every = 2;
  config.vision.channels = 1;
  config.vision.patch = {1, 4, 4};
  config.vision.grid = {1, 7, 7};
  config.audio.patch = {4, 4};
  config.audio.grid = {4, 4};
  config.text.max_len = 8;
  return config;
}

TEST(VisionEmbedder, PatchGridAndInterpolation) {
  ModelConfig config = small_config(0);
  VisionEmbedder embedder(config.vision, config.d_model);
  EXPECT_EQ(embedder(torch::randn({2, 1, 1, 28, 28})).sizes(), torch::IntArrayRef({2, 49, 32}));
  // A larger image than the configured grid: positions are interpolated to 14x14.
  EXPECT_EQ(embedder(torch::randn({2, 1, 1, 56, 56})).sizes(), torch::IntArrayRef({2, 196, 32}));
  // A clip of three frames with a one-frame patch gives three frame tokens.
  EXPECT_EQ(embedder(torch::randn({2, 1, 3, 28, 28})).sizes(), torch::IntArrayRef({2, 147, 32}));
  EXPECT_THROW(embedder(torch::randn({2, 1, 1, 30, 28})), c10::Error);
}

TEST(VisionEmbedder, ImageRepeatedToTemporalPatch) {
  // With a 2-frame patch, a one-frame image is the clip [frame, frame]: the
  // embedding equals that of the explicit two-frame clip.
  VisionConfig vision;
  vision.channels = 1;
  vision.patch = {2, 4, 4};
  vision.grid = {1, 2, 2};
  VisionEmbedder embedder(vision, 8);
  torch::Tensor image = torch::randn({1, 1, 1, 8, 8});
  torch::Tensor clip = image.repeat({1, 1, 2, 1, 1});
  EXPECT_TRUE(torch::allclose(embedder(image), embedder(clip)));
}

TEST(VisionEmbedder, PatchLayoutMatchesConvolution) {
  // Patch flattening followed by a linear map is a strided convolution with
  // the same weights: compare against conv3d to pin the layout down.
  VisionConfig vision;
  vision.channels = 2;
  vision.patch = {1, 2, 2};
  vision.grid = {1, 2, 2};
  VisionEmbedder embedder(vision, 3);
  torch::NoGradGuard no_grad;
  auto params = embedder->named_parameters();
  params["positions"].zero_();
  torch::Tensor weight = params["proj.weight"].reshape({3, 2, 1, 2, 2});
  torch::Tensor input = torch::randn({1, 2, 1, 4, 4});
  torch::Tensor expected = torch::conv3d(input, weight, params["proj.bias"], {1, 2, 2})
                               .flatten(2)
                               .transpose(1, 2);
  EXPECT_TRUE(torch::allclose(embedder(input), expected, 1e-5, 1e-6));
}

TEST(AudioEmbedder, SpectrogramPatches) {
  ModelConfig config = small_config(0);
  AudioEmbedder embedder(config.audio, config.d_model);
  EXPECT_EQ(embedder(torch::randn({3, 16, 16})).sizes(), torch::IntArrayRef({3, 16, 32}));
  EXPECT_EQ(embedder(torch::randn({3, 16, 32})).sizes(), torch::IntArrayRef({3, 32, 32}));
}

TEST(TextEmbedder, RejectsTooLongText) {
  ModelConfig config = small_config(0);
  TextEmbedder embedder(config.text, 50, config.d_model);
  EXPECT_EQ(embedder(torch::zeros({2, 5}, torch::kLong)).sizes(), torch::IntArrayRef({2, 5, 32}));
  EXPECT_THROW(embedder(torch::zeros({2, 9}, torch::kLong)), c10::Error);
}

TEST(Encoder, MoeLayersSitAtTheEnd) {
  ModelConfig config = small_config(4);
  config.num_layers = 12;
  config.moe.moe_every = 2;
  config.moe.max_moe_layers = 0;
  Encoder all(config);
  EXPECT_EQ(all->moe_layers(), (std::vector<int>{1, 3, 5, 7, 9, 11}));
  config.moe.max_moe_layers = 2;
  Encoder last_two(config);
  EXPECT_EQ(last_two->moe_layers(), (std::vector<int>{9, 11}));
  config.moe.num_experts = 0;
  Encoder dense(config);
  EXPECT_TRUE(dense->moe_layers().empty());
}

TEST(ImpModel, PaddingDoesNotChangeText) {
  // Appending padding tokens (masked) must leave a text's pooled output as it
  // was. Token-choice routing with room for every token keeps the MoE layers
  // exact too; under experts-choose the padded length changes k.
  torch::manual_seed(0);
  ModelConfig config = small_config(4);
  config.moe.router = "token_choice";
  config.moe.capacity_factor = 4.0;
  ImpModel model(config, 50, Heads{});
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({{5, 6, 7}}, torch::kLong);
  torch::Tensor padded = torch::tensor({{5, 6, 7, 0, 0, 0}}, torch::kLong);
  torch::Tensor mask = torch::tensor({{true, true, true, false, false, false}});
  torch::Tensor short_out = model->encode(kText, ids, torch::ones({1, 3}, torch::kBool)).pooled;
  torch::Tensor padded_out = model->encode(kText, padded, mask).pooled;
  EXPECT_TRUE(torch::allclose(short_out, padded_out, 1e-5, 1e-5))
      << short_out << padded_out;
}

TEST(ImpModel, HeadsAndGradients) {
  torch::manual_seed(0);
  ModelConfig config = small_config(4);
  ImpModel model(config, 50, Heads{{"fmnist", 10}});
  Encoded image = model->encode(kImage, torch::randn({4, 1, 1, 28, 28}));
  ASSERT_EQ(image.pooled.sizes(), torch::IntArrayRef({4, 32}));
  torch::Tensor logits = model->classify("fmnist", image.pooled);
  ASSERT_EQ(logits.sizes(), torch::IntArrayRef({4, 10}));
  EXPECT_EQ(model->project(kImage, image.pooled).sizes(), torch::IntArrayRef({4, 16}));
  EXPECT_THROW(model->classify("cifar", image.pooled), c10::Error);

  logits.sum().backward();
  auto params = model->named_parameters();
  EXPECT_TRUE(params["vision.proj.weight"].grad().defined());
  EXPECT_TRUE(params["encoder.block0.attention.qkv.weight"].grad().defined());
  // Parts the image pass does not touch have no gradient at all.
  EXPECT_FALSE(params["text.tokens.weight"].grad().defined());
  EXPECT_FALSE(params["audio.proj.weight"].grad().defined());
}

TEST(ImpModel, TemperatureStartsAtConfigAndIsCapped) {
  ModelConfig config = small_config(0);
  config.temperature_init = 0.2;
  config.max_logit_scale = 100.0;
  ImpModel model(config, 50, Heads{});
  EXPECT_NEAR(model->logit_scale().item<double>(), 5.0, 1e-5);
  torch::NoGradGuard no_grad;
  model->named_parameters()["log_logit_scale"].fill_(10.0);
  EXPECT_NEAR(model->logit_scale().item<double>(), 100.0, 1e-3);
}

TEST(ImpModel, RoutingStatsCollectedPerModality) {
  torch::manual_seed(0);
  ModelConfig config = small_config(4);
  ImpModel model(config, 50, Heads{});
  model->encode(kImage, torch::randn({2, 1, 1, 28, 28}));
  model->encode(kText, torch::randint(0, 50, {2, 8}), torch::ones({2, 8}, torch::kBool));
  nlohmann::json stats = model->routing_stats().to_json();
  EXPECT_NE(stats.dump().find("image"), std::string::npos);
  EXPECT_NE(stats.dump().find("text"), std::string::npos);
}

// Gradients of every parameter after one NCE-like loss over an image and a
// text pass, with or without recomputing the blocks.
std::map<std::string, torch::Tensor> gradients(ImpModel& model, bool rematerialize, bool bf16) {
  torch::manual_seed(3);
  torch::Tensor images = torch::randn({3, 1, 1, 28, 28});
  torch::Tensor ids = torch::randint(3, 50, {3, 8}, torch::kLong);
  torch::Tensor mask = torch::ones({3, 8}, torch::kBool);
  mask[2].slice(0, 5) = false;
  model->zero_grad();
  EncodeOptions options;
  options.rematerialize = rematerialize;
  torch::Tensor loss;
  {
    AutocastScope autocast(torch::kCPU, bf16);
    Encoded image = model->encode("image", images, {}, options);
    Encoded text = model->encode("text", ids, mask, options);
    loss = (model->project("image", image.pooled) * model->project("text", text.pooled)).sum() +
           image.aux_loss + text.aux_loss;
  }
  loss.backward();
  std::map<std::string, torch::Tensor> out;
  for (const auto& item : model->named_parameters()) {
    if (item.value().grad().defined()) out[item.key()] = item.value().grad().clone();
  }
  return out;
}

TEST(Rematerialize, GradientsEqualPlainPath) {
  // Recomputed blocks stop before the feed-forward layer's last linear map,
  // in dense and MoE blocks alike. The dense model checks dense blocks alone.
  for (const std::string router : {"experts_choose", "token_choice", "dense"}) {
    for (bool bf16 : {false, true}) {
      ModelConfig config = small_config(router == "dense" ? 0 : 4);
      if (router != "dense") config.moe.router = router;
      config.moe.aux_loss_weight = 0.01;
      torch::manual_seed(0);
      ImpModel model(config, 50, Heads{});
      // Recomputed first, so that its gradients are the parameters' first.
      const auto recomputed = gradients(model, true, bf16);
      // Optimizers detach gradients in place, which views do not allow.
      for (const auto& item : model->named_parameters()) {
        const torch::Tensor& grad = item.value().grad();
        EXPECT_FALSE(grad.defined() && grad.is_view()) << item.key();
      }
      const auto plain = gradients(model, false, bf16);
      ASSERT_EQ(plain.size(), recomputed.size()) << router;
      ASSERT_GT(plain.size(), 20u);
      for (const auto& [name, grad] : plain) {
        ASSERT_TRUE(recomputed.count(name)) << name;
        // The recomputed pass runs the same operations on the same inputs,
        // so fp32 gradients agree to rounding. Under bf16 autocast the plain
        // path casts a weight once for both passes and sums the two passes'
        // gradients in bf16 before casting them back, while each recomputed
        // block casts afresh: they agree to bf16 precision (8 bits).
        const float difference = (grad - recomputed.at(name)).abs().max().item<float>();
        const float scale = grad.abs().max().item<float>();
        EXPECT_LE(difference, (bf16 ? 1e-2f : 1e-5f) * scale + 1e-7f)
            << router << (bf16 ? " bf16 " : " fp32 ") << name << " gradient scale " << scale;
      }
    }
  }
}

// Autograd nodes reachable from `root` whose name contains `part`.
int count_nodes(const torch::Tensor& root, const std::string& part) {
  std::vector<torch::autograd::Node*> stack{root.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  int count = 0;
  while (!stack.empty()) {
    torch::autograd::Node* node = stack.back();
    stack.pop_back();
    if (node == nullptr || !seen.insert(node).second) continue;
    if (node->name().find(part) != std::string::npos) ++count;
    for (const torch::autograd::Edge& edge : node->next_edges()) stack.push_back(edge.function.get());
  }
  return count;
}

TEST(Rematerialize, RecomputesEveryBlockButTheLast) {
  // The backward pass starts with the last block, so it keeps its
  // activations: recomputing it would rebuild them at once.
  ModelConfig config = small_config(4);
  torch::manual_seed(0);
  ImpModel model(config, 50, Heads{});
  EncodeOptions options;
  options.rematerialize = true;
  Encoded recomputed = model->encode("image", torch::randn({2, 1, 1, 28, 28}), {}, options);
  EXPECT_EQ(count_nodes(recomputed.pooled, "RecomputedBlock"), config.num_layers - 1);
  Encoded plain = model->encode("image", torch::randn({2, 1, 1, 28, 28}));
  EXPECT_EQ(count_nodes(plain.pooled, "RecomputedBlock"), 0);
}

TEST(Rematerialize, NoRecomputationWithoutGradients) {
  ModelConfig config = small_config(4);
  torch::manual_seed(0);
  ImpModel model(config, 50, Heads{});
  torch::Tensor images = torch::randn({2, 1, 1, 28, 28});
  EncodeOptions options;
  options.rematerialize = true;
  torch::NoGradGuard no_grad;
  Encoded recomputed = model->encode("image", images, {}, options);
  Encoded plain = model->encode("image", images);
  EXPECT_TRUE(torch::equal(recomputed.pooled, plain.pooled));
}

TEST(DropToken, KeepsExactlyTheStatedCount) {
  for (const auto& [tokens, rate, kept] :
       std::vector<std::tuple<int64_t, double, int64_t>>{{196, 0.75, 49}, {49, 0.5, 24}, {10, 0.0, 10},
                                                         {4, 0.9, 1}, {1, 0.5, 1}}) {
    torch::manual_seed(1);
    torch::Tensor keep = droptoken_keep_indices(6, tokens, rate, torch::kCPU);
    ASSERT_EQ(keep.sizes(), torch::IntArrayRef({6, kept})) << tokens << " " << rate;
    for (int64_t b = 0; b < 6; ++b) {
      torch::Tensor row = keep[b];
      EXPECT_EQ(std::get<0>(at::_unique(row)).numel(), kept);  // no token twice
      EXPECT_TRUE(torch::equal(row, std::get<0>(row.sort())));  // token order kept
      EXPECT_GE(row.min().item<int64_t>(), 0);
      EXPECT_LT(row.max().item<int64_t>(), tokens);
    }
  }
  // Examples get different subsets.
  torch::Tensor keep = droptoken_keep_indices(8, 196, 0.75, torch::kCPU);
  int distinct_rows = 0;
  for (int64_t b = 1; b < 8; ++b) distinct_rows += torch::equal(keep[b], keep[0]) ? 0 : 1;
  EXPECT_EQ(distinct_rows, 7);
}

TEST(DropToken, EncodesOnlyTheKeptTokens) {
  ModelConfig config = small_config(0);
  torch::manual_seed(0);
  ImpModel model(config, 50, Heads{});
  torch::Tensor images = torch::randn({2, 1, 1, 28, 28});
  EncodeOptions options;
  options.drop_tokens = 0.5;
  torch::manual_seed(5);
  Encoded dropped = model->encode("image", images, {}, options);
  // The same draw, done by hand: the encoder sees the kept 24 of 49 tokens
  // (24.5 rounds away from zero, so 25 go).
  torch::manual_seed(5);
  torch::Tensor keep = droptoken_keep_indices(2, 49, 0.5, torch::kCPU);
  EXPECT_EQ(keep.size(1), 24);
  torch::Tensor tokens = model->vision()->forward(images);
  tokens = tokens.gather(1, keep.unsqueeze(-1).expand({-1, -1, tokens.size(2)}));
  torch::Tensor expected = model->encoder()->forward(tokens, {}, "image", nullptr).hidden.mean(1);
  EXPECT_TRUE(torch::allclose(dropped.pooled, expected, 1e-5, 1e-6));
  // Text is never dropped.
  torch::Tensor ids = torch::randint(3, 50, {2, 8}, torch::kLong);
  torch::Tensor mask = torch::ones({2, 8}, torch::kBool);
  EXPECT_TRUE(torch::allclose(model->encode("text", ids, mask, options).pooled,
                              model->encode("text", ids, mask).pooled));
}

}  // namespace
}  // namespace imp
