// AGD tasks. A task owns its data pipeline (which examples, which inputs) and
// its loss; the trainer only picks which task runs next.
//
// Dimension letters: B batch, L text length, P embedding width.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "imp/config/config.h"
#include "imp/data/batch.h"
#include "imp/data/dataset.h"
#include "imp/data/tokenizer.h"
#include "imp/model/imp_model.h"

namespace imp::dist {
class ProcessGroup;
}  // namespace imp::dist

namespace imp {

struct TaskOutput {
  // Scalar, what backward() runs on. In a multi-process run (see
  // Task::set_process_group) it is this process's part: the mean over the
  // processes of their gradients is the gradient of the whole batch's loss,
  // and the mean of their losses is that loss.
  torch::Tensor loss;
  std::map<std::string, double> metrics;   // e.g. "accuracy", for logs
  int64_t tokens = 0;                      // tokens the encoder processed, all passes
};

class Task {
 public:
  // Throws ConfigError when `data` lacks a modality or the label set the
  // task names.
  Task(TaskConfig config, std::shared_ptr<const Dataset> data, uint64_t seed);
  virtual ~Task() = default;

  const TaskConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  int64_t dataset_size() const { return data_->size(); }
  const Dataset& data() const { return *data_; }
  int label_set() const { return label_set_; }  // index into data().label_sets()

  // Batch number `batch_index` of this task's stream. Deterministic for the
  // seed and thread-safe, so workers may build batches in any order, and a
  // run resumes its data where it stopped from the batch index alone. On a
  // dataset that may fail (Dataset::failures), an example that fails to
  // decode, or lacks the label or caption this task needs, is skipped and
  // counted, and a replacement takes its slot.
  Batch make_batch(int64_t batch_index) const;

  // Forward pass and loss on `batch` (on the model's device).
  virtual TaskOutput compute_loss(ImpModel& model, const Batch& batch) const = 0;

  // How this task's encoder passes run (DropToken, rematerialisation).
  EncodeOptions encode_options() const;

  // The model's vision patch, which resized inputs (resolution_scale) must
  // stay a whole number of. The default is VisionConfig's.
  void set_vision_patch(std::array<int, 3> patch);

  // Data parallelism: make_batch builds only this rank's rows of each
  // batch of batch_size rows (rows [rank * B / world, (rank + 1) * B /
  // world)), so that the ranks' rows together are the one-process batch.
  void set_shard(int rank, int world_size);
  // Rows [begin, end) of every batch that this rank builds.
  std::pair<int64_t, int64_t> shard_rows() const;
  // Data parallelism over `group` (which must outlive the task): set_shard
  // with its rank and size, and compute_loss returns this process's part of
  // the whole batch's loss (see TaskOutput::loss). Contrastive tasks gather
  // every process's embeddings, so each row meets the whole batch's negatives.
  void set_process_group(dist::ProcessGroup* group);

 protected:
  // Returns this process's share of a whole batch's loss, given the loss of
  // its own rows in `batch`: loss_of_rows * world * rows / batch_size, or
  // loss_of_rows itself in one process.
  torch::Tensor rank_share(const torch::Tensor& loss_of_rows, const Batch& batch) const;
  // The whole batch's mean of a per-row metric whose mean over this
  // process's rows is `mean_of_rows` (a collective), or that mean itself in
  // one process.
  double whole_batch_mean(double mean_of_rows, const Batch& batch) const;

  dist::ProcessGroup* group_ = nullptr;

 protected:
  // Fills task-specific inputs for the examples at `indices` (with their
  // per-example random numbers `draws`) after the other inputs and labels.
  virtual void add_inputs(Batch& batch, const std::vector<int64_t>& indices,
                          const std::vector<uint64_t>& draws) const {}

  TaskConfig config_;
  std::shared_ptr<const Dataset> data_;
  int label_set_ = 0;

 private:
  int shard_rank_ = 0;
  int shard_world_ = 1;
  // Example order of epoch `epoch`, fresh for every epoch (Dataset::epoch_order).
  std::shared_ptr<const std::vector<int64_t>> epoch_order(int64_t epoch) const;
  // The example and the random draw at `position` of the endless stream of
  // epochs.
  int64_t example_at(int64_t position) const;
  uint64_t draw_at(int64_t position) const;
  // Whether examples without a label, or without a caption, cannot serve
  // this task (they are skipped on datasets that may fail).
  bool needs_label() const;
  bool needs_caption() const;

  // Image or video input [B, C, T, H, W] resized by resolution_scale to whole
  // patches.
  at::Tensor rescale_vision(const at::Tensor& input) const;

  // Failed examples tried for one batch slot before the batch fails.
  static constexpr int64_t kMaxAttempts = 1000;

  uint64_t seed_;
  std::array<int, 3> patch_ = VisionConfig{}.patch;
  mutable std::mutex order_mutex_;
  mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> orders_;
};

// Classification of one modality (image, video or audio) with a linear head
// per dataset and label set on the mean-pooled encoder output: softmax
// cross-entropy or sigmoid binary cross-entropy against one-hot targets.
class ClassificationTask : public Task {
 public:
  using Task::Task;
  TaskOutput compute_loss(ImpModel& model, const Batch& batch) const override;
};

// Symmetric NCE between two modalities of the same examples: image, video
// or audio against text (the example's caption, or its class name in a
// prompt: label-text contrast), or two of image, video and audio (e.g. a
// video and its spoken caption). Examples whose captions mean the same, and
// for label text all examples of one class, are positives of each other.
class ContrastiveTask : public Task {
 public:
  // `prompts` word label text when the label set brings no prompts of its own.
  ContrastiveTask(TaskConfig config, std::shared_ptr<const Dataset> data, uint64_t seed,
                  Tokenizer tokenizer, int max_len, std::vector<std::string> prompts);
  TaskOutput compute_loss(ImpModel& model, const Batch& batch) const override;

 protected:
  void add_inputs(Batch& batch, const std::vector<int64_t>& indices,
                  const std::vector<uint64_t>& draws) const override;

 private:
  Tokenizer tokenizer_;
  int max_len_;
  std::vector<std::string> prompts_;  // label-text templates, "{}" = class name
};

// Builds the task `config` describes over `data`. Throws ConfigError when
// the modalities do not fit the objective or the data.
std::unique_ptr<Task> make_task(const TaskConfig& config, std::shared_ptr<const Dataset> data,
                                uint64_t seed,
                                const Tokenizer& tokenizer, int max_len,
                                const std::vector<std::string>& prompts);

}  // namespace imp
