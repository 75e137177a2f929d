// The two jobs behind the CLI: a full training run and an evaluation of a
// finished run directory.
#pragma once

#include <map>
#include <string>

#include "imp/config/config.h"

namespace imp {

// Trains with `config`, then evaluates. Writes into config.workdir:
//   config.yaml       the resolved config, written first
//   train_log.jsonl   one JSON object per step
//   model.pt          the trained weights
//   routing.json      tokens per expert per modality for every MoE layer
//   eval.json         one flat object of final numbers, "<dataset>/<metric>"
//                     plus train_seconds
// Returns the contents of eval.json.
std::map<std::string, double> run_train(const Config& config);

// Loads the config of a finished run: <workdir>/config.yaml with `overrides`
// applied, pointing at the run's own tokenizer.model. Throws ConfigError when
// the directory contains no config.yaml or no model.pt.
Config load_run_config(const std::string& workdir, const std::vector<std::string>& overrides);

// Evaluates the weights in <workdir>/model.pt with the run's own config
// (load_run_config), rewrites eval.json and
// returns its contents. Keys of the earlier eval.json that this evaluation
// does not produce (train_seconds) are kept.
std::map<std::string, double> run_eval(const std::string& workdir,
                                       const std::vector<std::string>& overrides);

}  // namespace imp
