// Checkpoints: everything a run needs to continue exactly where it stopped,
// in files other tools can read.
//
// A checkpoint is a folder <workdir>/checkpoints/step-<8-digit step>/ with
//   model.safetensors           the model's parameters, under the names of
//                               ImpModel's named_parameters() (docs/checkpoints.md
//                               lists them), fp32
//   training_state.safetensors  AdamW's moments ("optimizer/<parameter>/exp_avg",
//                               ".../exp_avg_sq", ".../step"), the random
//                               generators' states ("rng/cpu", "rng/cuda") and,
//                               in the metadata key "training_state", a JSON
//                               object with the step, each task's batch
//                               position and the routing counts
//   config.yaml                 the run's config
//   tokenizer.model             the SentencePiece model
// The folder is written under a temporary name, every file is flushed to disk,
// and only then is it renamed into place: a process killed while writing leaves
// the previous checkpoints as they were.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>

#include "imp/io/safetensors.h"
#include "imp/model/imp_model.h"

namespace imp {

// The training progress after `step` steps, besides weights and optimizer.
struct TrainingState {
  int64_t step = 0;                              // steps completed
  int64_t total_steps = 0;                       // train.steps of the run that wrote it
  std::map<std::string, int64_t> task_batches;   // task name -> batches consumed
  double train_seconds = 0.0;                    // training time so far, over all resumes
  nlohmann::json routing;                        // RoutingStats::to_json()
  at::Tensor cpu_rng;                            // the default CPU generator's state
  at::Tensor cuda_rng;                           // the default CUDA generator's, if any
};

struct CheckpointInfo {
  int64_t step = 0;
  std::string path;  // the checkpoint folder
};

// The complete checkpoints under <workdir>/checkpoints, oldest first.
// Folders still being written (temporary names) are not listed.
std::vector<CheckpointInfo> list_checkpoints(const std::string& workdir);

// The model's parameters by name, as they are stored in model.safetensors.
NamedTensors model_tensors(ImpModel& model);

// Writes a checkpoint of `state.step` steps, then deletes all but the newest
// `keep` checkpoints and any temporary folder a killed run left behind.
// Returns the checkpoint folder. Throws DataError when a file cannot be written.
std::string save_checkpoint(const std::string& workdir, ImpModel& model,
                            const torch::optim::AdamW& optimizer, const TrainingState& state,
                            const std::string& config_yaml, const std::string& tokenizer_path,
                            int keep);

// Reads a checkpoint folder written by save_checkpoint into `model` and
// `optimizer` (which must be built from the same config) and returns the
// rest of the state. Every file is checked before anything changes (see
// io/safetensors.h). Damage, a missing or extra tensor or a shape mismatch
// is a DataError that names the file and tensor.
TrainingState load_checkpoint(const std::string& checkpoint, ImpModel& model,
                              torch::optim::AdamW& optimizer);

// Sets the default random generators to the states in `state`.
void restore_rng(const TrainingState& state);
// The default random generators' states now.
void capture_rng(TrainingState& state);

enum class WeightMatch {
  kExact,     // every parameter of the model, and nothing else, must be in the file
  kFineTune,  // classifier heads that are missing or differ in shape keep their
              // fresh values and tensors the model lacks are ignored. Every
              // other parameter must be present with its shape.
};

// Loads weights into `model` from a .safetensors file, a checkpoint folder or
// a run directory (its model.safetensors, else its newest checkpoint).
// Returns one line per tensor left at its initial value or ignored (kFineTune).
std::vector<std::string> load_weights(const std::string& path, ImpModel& model, WeightMatch match);

// The weights file `path` names: itself when it is a file, else the
// model.safetensors of the run directory or checkpoint folder, else that of
// the run directory's newest checkpoint. Throws DataError saying what is
// missing.
std::string resolve_weights_file(const std::string& path);

}  // namespace imp
