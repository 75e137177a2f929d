// The AGD trainer: every step draws one task, runs forward and backward for
// that task alone, and takes an optimizer step.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <torch/optim/adamw.h>

#include "imp/config/config.h"
#include "imp/data/dataset.h"
#include "imp/data/tokenizer.h"
#include "imp/model/imp_model.h"
#include "imp/tasks/task.h"
#include "imp/train/sampler.h"

namespace imp {

namespace dist {
class ProcessGroup;
class GradientReducer;
}  // namespace dist

// The cost of one task signature: everything that fixes a step's shapes and
// code path (the objective and classifier head, each modality's input
// shape, DropToken and rematerialisation). Its first step pays for one-time
// work (allocations, kernel selection and, on CUDA, graph capture); later
// steps reuse it.
struct SignatureCost {
  std::string signature;
  std::string task;               // the task that first produced it
  int64_t steps = 0;
  double first_step_ms = 0.0;
  double median_later_ms = 0.0;   // of the steps after the first; 0 when there are none
};

// The signature of a batch of `task`, e.g. "image[128,1,1,28,28] text[128,16] nce"
// or "video[32,1,8,35,35] softmax_ce head=fmnist_video:motion".
std::string task_signature(const TaskConfig& task, const Batch& batch);

struct TrainSummary {
  int64_t steps = 0;
  std::vector<SignatureCost> signatures;  // in order of first appearance
  double train_seconds = 0.0;       // training time since step 0, over resumes; evaluations excluded
  double session_seconds = 0.0;     // the part of it this process spent
  double data_wait_seconds = 0.0;   // part of it spent waiting for batches
  int64_t tokens = 0;               // encoder tokens processed
  std::map<std::string, int64_t> steps_per_task;
};

// Path of the SentencePiece model to use: config.tokenizer.model when set,
// else one trained on `corpus` (every text the datasets can produce) and
// cached under config.cache_dir (a second run reuses it).
std::string prepare_tokenizer(const Config& config, const std::vector<std::string>& corpus);

// The training texts of all `datasets`, in order, without duplicates.
std::vector<std::string> text_corpus(const std::vector<std::shared_ptr<const Dataset>>& datasets);

// Classifier heads the model needs: name (see classifier_name) -> classes,
// for every classification task of `config` over `datasets` (by name).
std::map<std::string, int64_t> classifier_heads(
    const Config& config, const std::map<std::string, std::shared_ptr<const Dataset>>& datasets);

// The device runs use: the first CUDA device when LibTorch has one, else the CPU.
c10::Device default_device();

class Trainer {
 public:
  // Loads data, prepares the tokenizer and builds the model, tasks and optimizer.
  explicit Trainer(Config config);
  ~Trainer();

  // Sets up data-parallel training with the other processes of `group`.
  // Routing counts in the logs, checkpoints and after train() are those of
  // all ranks.
  // Every task builds only this rank's rows of each batch, and the weights
  // start as rank 0's. Gradients are averaged over the ranks in buckets
  // while the backward pass runs (after it, for tasks that rematerialise).
  // Only rank 0 writes logs and checkpoints; every rank calls the eval hook,
  // which must therefore evaluate with the group.
  // With train.expert_parallel, each MoE layer's experts and their AdamW
  // moments are sharded across the ranks (MoeLayerImpl::shard_experts).
  // Checkpoints and evaluations gather them first, and after train() every
  // rank has all experts again.
  // Throws ConfigError when the config cannot run on this many processes.
  void set_process_group(std::shared_ptr<dist::ProcessGroup> group);
  // Whether this process writes the run's files: rank 0, or the only one.
  bool is_primary() const;

  // Continues from a checkpoint folder (train/checkpoint.h): weights,
  // optimizer moments, random generators, the step and every task's batch
  // position, so that the rest of the run equals an uninterrupted one.
  // Throws DataError when the checkpoint does not fit this config.
  void resume(const std::string& checkpoint);

  // Starts from the weights of another run (a .safetensors file, checkpoint
  // or run directory) with a fresh optimizer, for fine-tuning: classifier
  // heads it lacks or sizes differently start fresh. Returns what was skipped.
  std::vector<std::string> init_from(const std::string& path);

  // Called every eval.every steps (not after the last one; the caller
  // evaluates then) with the step; returns metrics for evals.jsonl.
  using EvalHook = std::function<std::map<std::string, double>(int64_t step)>;
  void set_eval_hook(EvalHook hook) { eval_hook_ = std::move(hook); }

  // Runs AGD steps up to config.train.steps, from step 0 or the resumed
  // step. Writes into the workdir:
  //   train_log.jsonl  one record per step
  //   metrics.jsonl    one record per log interval: mean loss per task, lr,
  //                    tokens/s, data wait and each MoE layer's expert
  //                    load per modality
  //   evals.jsonl      one record per evaluation of the eval hook
  //   tensorboard/     the same as TensorBoard scalars (train.tensorboard)
  //   checkpoints/     every train.checkpoint_every steps and after the last
  // Throws TrainingError on a non-finite loss.
  TrainSummary train();

  int64_t start_step() const { return start_step_; }

  ImpModel& model() { return model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The train split of each dataset, by name.
  const std::map<std::string, std::shared_ptr<const Dataset>>& datasets() const { return datasets_; }
  const std::string& tokenizer_path() const { return tokenizer_path_; }
  const Config& config() const { return config_; }
  c10::Device device() const { return device_; }

 private:
  struct StepResult;
  StepResult step(int64_t step_index, size_t task_index, const Batch& batch);
  // The routing counts of every rank summed (a collective in a
  // multi-process run), or this process's.
  RoutingStats routing_over_ranks();
  // The MoE layers' expert parameters, in model order.
  std::vector<torch::Tensor> expert_parameters();
  // Expert parallelism: keep this rank's experts and their moments, or
  // gather every rank's (a collective).
  void shard_experts();
  void unshard_experts();
  // The gradient norm over all ranks' parameters, clipped to max_norm (no
  // clipping when max_norm <= 0); like torch::nn::utils::clip_grad_norm_,
  // with the sharded experts' squares summed over the ranks.
  double clip_gradients(double max_norm);

  Config config_;
  c10::Device device_;
  std::map<std::string, std::shared_ptr<const Dataset>> datasets_;
  std::string tokenizer_path_;
  Tokenizer tokenizer_;
  ImpModel model_{nullptr};
  std::vector<std::unique_ptr<Task>> tasks_;
  std::unique_ptr<TaskSampler> sampler_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t start_step_ = 0;
  double resumed_seconds_ = 0.0;  // training time before the resumed checkpoint
  std::vector<int64_t> first_batches_;  // per task: the batch index to train on next
  EvalHook eval_hook_;
  std::shared_ptr<dist::ProcessGroup> group_;
  std::unique_ptr<dist::GradientReducer> reducer_;
  // In a multi-process run: the parameters every rank has a copy of, and
  // the expert parameters sharded across the ranks (empty unless
  // train.expert_parallel).
  std::vector<torch::Tensor> replicated_parameters_;
  std::vector<torch::Tensor> sharded_parameters_;
  bool experts_sharded_ = false;
};

// Drops the records of a JSON Lines log whose "step" is above `step`, so that
// a resumed run's records follow on from its checkpoint.
void truncate_log_after(const std::string& path, int64_t step);

// Sampling weight of a task: its explicit weight, or else its dataset's
// number of training examples.
double task_weight(const Task& task);
std::vector<double> task_weights(const std::vector<std::unique_ptr<Task>>& tasks);

// `task`, followed by its multi-resolution variants when it sets `variants:
// method` (tasks/variants.h), sized from the first example of `data` that
// decodes. Variants that miss their token budget are left out with a note
// on stdout.
std::vector<TaskConfig> with_variants(const TaskConfig& task, const Dataset& data,
                                      const VisionConfig& vision);

}  // namespace imp
