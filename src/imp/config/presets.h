// Named model sizes for the `model.preset` key. A preset is a complete
// ModelConfig; the parser starts from it and lets every other key under
// `model` replace single values.
//
//   tiny                   the Fashion-MNIST demo model, trainable on 2 CPU cores
//   small, base, large     dense encoders with ViT-S, ViT-B and ViT-L widths and depths
//   small-moe, base-moe,   the same encoders with experts-choose MoE layers in
//   large-moe              the last part of the encoder
#pragma once

#include <string>
#include <vector>

#include "imp/config/config.h"

namespace imp {

// Returns the preset called `name`. Throws ConfigError naming the valid
// presets when there is none of that name.
const ModelConfig& model_preset(const std::string& name);

// Names of all presets, smallest first.
std::vector<std::string> preset_names();

}  // namespace imp
