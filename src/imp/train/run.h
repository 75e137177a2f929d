// The jobs behind `imp train` and `imp eval`: a training run (fresh,
// resumed or fine-tuned) and the evaluation of trained weights.
#pragma once

#include <map>
#include <string>

#include "imp/config/config.h"

namespace imp {

struct TrainOptions {
  // Empty: start at step 0. "latest": the newest checkpoint under
  // <workdir>/checkpoints. Otherwise a checkpoint folder.
  std::string resume;
  // Weights to start from (fine-tuning): a .safetensors file, a checkpoint
  // folder or a run directory. The optimizer starts fresh.
  std::string init_from;
  // Start at step 0 even though the workdir contains checkpoints of
  // another run, which are deleted. Without it such a start is rejected.
  bool overwrite = false;
};

// Trains with `config`, then evaluates. Writes into config.workdir:
//   config.yaml        the resolved config, written first
//   train_log.jsonl, metrics.jsonl, evals.jsonl, tensorboard/, checkpoints/
//                      (see Trainer::train)
//   model.safetensors  the trained weights (names as in train/checkpoint.h)
//   tokenizer.model    the SentencePiece model
//   routing.json       tokens per expert per modality for every MoE layer
//   eval.json          one flat object of final numbers, "<dataset>/<metric>"
//                      plus train_seconds
// Returns the contents of eval.json.
std::map<std::string, double> run_train(const Config& config, const TrainOptions& options = {});

// Loads the config of a run directory or checkpoint folder: its config.yaml
// with `overrides` applied, pointing at its own tokenizer.model. Throws
// ConfigError when the folder contains no config.yaml.
Config load_run_config(const std::string& dir, const std::vector<std::string>& overrides);

// The config for weights at `weights` (a run directory, checkpoint folder or
// .safetensors file): `config_path` with `overrides` when given, else the
// config.yaml beside the weights (load_run_config).
Config config_for_weights(const std::string& weights, const std::string& config_path,
                          const std::vector<std::string>& overrides);

// Evaluates the weights at `weights` (see config_for_weights) on the test
// splits of `config`. For a run directory or checkpoint folder it rewrites
// the folder's eval.json, keeping keys this evaluation does not produce
// (train_seconds). Returns the new metrics.
std::map<std::string, double> run_eval(const std::string& weights, const Config& config);

}  // namespace imp
