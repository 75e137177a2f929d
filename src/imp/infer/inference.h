// Trained weights ready to use outside training: for `imp eval`, `imp embed`
// and `imp classify`.
#pragma once

#include <map>
#include <string>

#include <c10/core/Device.h>

#include "imp/config/config.h"
#include "imp/data/tokenizer.h"
#include "imp/model/imp_model.h"

namespace imp {

struct InferenceModel {
  ImpModel model{nullptr};
  Tokenizer tokenizer;
  c10::Device device{c10::kCPU};
};

// Classifier heads stored in a weights file: head name -> classes, read from
// the shapes of its "classifiers.<name>.weight" tensors.
std::map<std::string, int64_t> heads_in_weights(const std::string& weights_file);

// Builds the model of `config` with the heads the weights hold, loads the
// weights at `weights` (a run directory, checkpoint folder or .safetensors
// file; see train/checkpoint.h) exactly, in evaluation mode on the default
// device. The tokenizer is config.tokenizer.model, else the tokenizer.model
// beside the weights, else one trained on the config's datasets as in training.
InferenceModel load_for_inference(const std::string& weights, const Config& config);

}  // namespace imp
