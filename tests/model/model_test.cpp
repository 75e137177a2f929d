#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/config/config.h"
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

}  // namespace
}  // namespace imp
