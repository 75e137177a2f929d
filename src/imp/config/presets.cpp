#include "imp/config/presets.h"

#include <utility>

#include "imp/core/error.h"

namespace imp {
namespace {

// Sized for the built-in Fashion-MNIST demo, to train in minutes on 2 CPU cores.
ModelConfig tiny_preset() {
  ModelConfig model;
  model.preset = "tiny";
  model.d_model = 128;
  model.num_layers = 4;
  model.num_heads = 4;
  model.mlp_dim = 384;
  model.embed_dim = 128;
  model.temperature_init = 0.1;
  model.moe.num_experts = 4;
  model.moe.moe_every = 2;
  model.vision.channels = 1;
  // 28x28 images in 7x7 patches: 16 tokens each. Measured on 2 cores with
  // the default tasks at a 2e-3 learning rate, 4x4 patches (49 tokens) get
  // through under 3 epochs in 5 minutes and reach 0.848 head accuracy;
  // 7x7 patches get through about 5 epochs and reach 0.875.
  // Patches span 4 frames: an image (one frame, repeated) gives one
  // temporal patch, and an 8-frame video clip gives two. A 35x35 video frame
  // has a 5x5 patch grid; its positions are interpolated from the 4x4 ones.
  model.vision.patch = {4, 7, 7};
  model.vision.grid = {2, 4, 4};
  // Speech at 16 kHz, 25 ms windows every 20 ms, 32 mel bands: 128 frames
  // hold 2.56 s, and 16x8 patches give 32 tokens.
  model.audio.sample_rate = 16000;
  model.audio.window = 400;
  model.audio.hop = 320;
  model.audio.mel_bands = 32;
  model.audio.frames = 128;
  model.audio.patch = {16, 8};
  model.audio.grid = {2, 16};
  model.text.max_len = 16;
  model.text.label_max_len = 16;
  return model;
}

// A dense encoder at full scale. A 4x256x256 clip in 4x16x16 patches gives
// 256 tokens, and a 128x128 spectrogram in 16x16 patches gives 64.
ModelConfig dense_preset(const std::string& name, int d_model, int num_layers, int num_heads,
                         int mlp_dim) {
  ModelConfig model;
  model.preset = name;
  model.d_model = d_model;
  model.num_layers = num_layers;
  model.num_heads = num_heads;
  model.mlp_dim = mlp_dim;
  model.embed_dim = 1024;
  model.temperature_init = 0.2;
  model.moe.num_experts = 0;
  model.vision.channels = 3;
  model.vision.patch = {4, 16, 16};
  model.vision.grid = {1, 16, 16};
  // 128 mel bands x 128 frames of 64 ms: 8.192 s of 16 kHz audio.
  model.audio.sample_rate = 16000;
  model.audio.window = 2048;
  model.audio.hop = 1024;
  model.audio.mel_bands = 128;
  model.audio.frames = 128;
  model.audio.patch = {16, 16};
  model.audio.grid = {8, 8};
  model.text.max_len = 256;       // captions
  model.text.label_max_len = 16;  // class names in prompts, as in the IMP paper
  return model;
}

// The dense encoder with every second layer from the end made MoE, six MoE
// layers at most. The MoE runs train with a higher initial temperature (1.0)
// than the dense ones (0.2).
ModelConfig moe_preset(const std::string& name, ModelConfig model, int num_experts) {
  model.preset = name;
  model.temperature_init = 1.0;
  model.moe.num_experts = num_experts;
  model.moe.moe_every = 2;
  model.moe.max_moe_layers = 6;
  model.moe.router = "experts_choose";
  model.moe.capacity_factor = 1.0;
  model.moe.group_size = 2048;
  return model;
}

using PresetTable = std::vector<std::pair<std::string, ModelConfig>>;

// Dense sizes are the width, depth, heads and MLP width of ViT-S, ViT-B and
// ViT-L.
PresetTable make_presets() {
  const ModelConfig small = dense_preset("small", 384, 12, 6, 1536);
  const ModelConfig base = dense_preset("base", 768, 12, 12, 3072);
  const ModelConfig large = dense_preset("large", 1024, 24, 16, 4096);
  return {
      {"tiny", tiny_preset()},
      {"small", small},
      {"base", base},
      {"large", large},
      {"small-moe", moe_preset("small-moe", small, 4)},
      {"base-moe", moe_preset("base-moe", base, 16)},
      {"large-moe", moe_preset("large-moe", large, 16)},
  };
}

const PresetTable& presets() {
  static const PresetTable table = make_presets();
  return table;
}

}  // namespace

const ModelConfig& model_preset(const std::string& name) {
  for (const auto& [preset_name, model] : presets()) {
    if (preset_name == name) return model;
  }
  std::string valid;
  for (const std::string& preset_name : preset_names()) {
    valid += (valid.empty() ? "" : ", ") + preset_name;
  }
  throw ConfigError(str_cat("unknown model preset '", name, "'; valid presets are ", valid));
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& entry : presets()) names.push_back(entry.first);
  return names;
}

}  // namespace imp
