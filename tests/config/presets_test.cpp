#include "imp/config/presets.h"

#include <gtest/gtest.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "imp/core/error.h"

namespace {

TEST(Presets, NamesSmallestFirst) {
  const std::vector<std::string> expected{"tiny",      "small",    "base",     "large",
                                          "small-moe", "base-moe", "large-moe"};
  EXPECT_EQ(imp::preset_names(), expected);
}

TEST(Presets, EachRecordsItsOwnName) {
  for (const std::string& name : imp::preset_names()) {
    EXPECT_EQ(imp::model_preset(name).preset, name);
  }
}

TEST(Presets, TinyFitsFashionMnist) {
  const imp::ModelConfig& tiny = imp::model_preset("tiny");
  EXPECT_EQ(tiny.d_model, 128);
  EXPECT_EQ(tiny.num_layers, 4);
  EXPECT_EQ(tiny.num_heads, 4);
  EXPECT_EQ(tiny.mlp_dim, 384);
  EXPECT_EQ(tiny.embed_dim, 128);
  EXPECT_DOUBLE_EQ(tiny.temperature_init, 0.1);
  EXPECT_EQ(tiny.moe.num_experts, 4);
  EXPECT_EQ(tiny.moe.moe_every, 2);
  EXPECT_EQ(tiny.vision.channels, 1);
  EXPECT_EQ(tiny.text.max_len, 16);

  // A 28x28 image (one frame, repeated to fill the 4-frame patch) gives
  // 4x4 = 16 tokens; an 8-frame clip fills the two temporal grid rows.
  const std::array<int, 3> patch{4, 7, 7};
  const std::array<int, 3> grid{2, 4, 4};
  EXPECT_EQ(tiny.vision.patch, patch);
  EXPECT_EQ(tiny.vision.grid, grid);
}

struct DenseSize {
  const char* name;
  int d_model;
  int num_layers;
  int num_heads;
  int mlp_dim;
};

TEST(Presets, DenseSizesMatchVit) {
  const DenseSize sizes[] = {
      {"small", 384, 12, 6, 1536},
      {"base", 768, 12, 12, 3072},
      {"large", 1024, 24, 16, 4096},
  };
  for (const DenseSize& size : sizes) {
    SCOPED_TRACE(size.name);
    for (const std::string suffix : {"", "-moe"}) {
      const imp::ModelConfig& model = imp::model_preset(size.name + suffix);
      EXPECT_EQ(model.d_model, size.d_model);
      EXPECT_EQ(model.num_layers, size.num_layers);
      EXPECT_EQ(model.num_heads, size.num_heads);
      EXPECT_EQ(model.mlp_dim, size.mlp_dim);
      EXPECT_EQ(model.embed_dim, 1024);
      EXPECT_EQ(model.text.max_len, 256);
      EXPECT_EQ(model.vision.channels, 3);
    }
  }
}

TEST(Presets, LargeScaleTokenGrids) {
  for (const std::string& name : imp::preset_names()) {
    if (name == "tiny") continue;
    SCOPED_TRACE(name);
    const imp::ModelConfig& model = imp::model_preset(name);

    // A 4x256x256 clip in 4x16x16 patches gives 1x16x16 = 256 tokens.
    const std::array<int, 3> clip{4, 256, 256};
    for (int axis = 0; axis < 3; ++axis) {
      EXPECT_EQ(model.vision.patch[axis] * model.vision.grid[axis], clip[axis]);
    }
    EXPECT_EQ(model.vision.grid[0] * model.vision.grid[1] * model.vision.grid[2], 256);

    // A 128x128 spectrogram in 16x16 patches gives 8x8 = 64 tokens.
    for (int axis = 0; axis < 2; ++axis) {
      EXPECT_EQ(model.audio.patch[axis], 16);
      EXPECT_EQ(model.audio.patch[axis] * model.audio.grid[axis], 128);
    }
  }
}

TEST(Presets, DenseHaveNoExperts) {
  for (const char* name : {"small", "base", "large"}) {
    SCOPED_TRACE(name);
    const imp::ModelConfig& model = imp::model_preset(name);
    EXPECT_EQ(model.moe.num_experts, 0);
    EXPECT_DOUBLE_EQ(model.temperature_init, 0.2);
  }
}

TEST(Presets, MoeVariantsRouteLastLayers) {
  const std::pair<const char*, int> variants[] = {
      {"small-moe", 4}, {"base-moe", 16}, {"large-moe", 16}};
  for (const auto& [name, num_experts] : variants) {
    SCOPED_TRACE(name);
    const imp::ModelConfig& model = imp::model_preset(name);
    EXPECT_EQ(model.moe.num_experts, num_experts);
    EXPECT_EQ(model.moe.moe_every, 2);
    EXPECT_EQ(model.moe.max_moe_layers, 6);
    EXPECT_EQ(model.moe.router, "experts_choose");
    EXPECT_DOUBLE_EQ(model.moe.capacity_factor, 1.0);
    EXPECT_EQ(model.moe.group_size, 2048);
    EXPECT_DOUBLE_EQ(model.temperature_init, 1.0);
  }
}

TEST(Presets, HeadsDivideWidth) {
  for (const std::string& name : imp::preset_names()) {
    const imp::ModelConfig& model = imp::model_preset(name);
    EXPECT_EQ(model.d_model % model.num_heads, 0) << name;
  }
}

TEST(Presets, UnknownNameListsValidOnes) {
  try {
    imp::model_preset("huge");
    FAIL() << "expected ConfigError";
  } catch (const imp::ConfigError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("unknown model preset 'huge'"), std::string::npos) << message;
    EXPECT_NE(message.find("tiny, small, base, large, small-moe, base-moe, large-moe"),
              std::string::npos)
        << message;
  }
}

}  // namespace
