// AGD tasks. A task owns its data pipeline (which examples, which inputs) and
// its loss; the trainer only picks which task runs next.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "imp/config/config.h"
#include "imp/data/batch.h"
#include "imp/data/image_text_dataset.h"
#include "imp/data/tokenizer.h"
#include "imp/model/imp_model.h"

namespace imp {

struct TaskOutput {
  torch::Tensor loss;                      // scalar, what backward() runs on
  std::map<std::string, double> metrics;   // e.g. "accuracy", for logs
  int64_t tokens = 0;                      // tokens the encoder processed, all passes
};

class Task {
 public:
  Task(TaskConfig config, std::shared_ptr<const ImageTextDataset> data, uint64_t seed);
  virtual ~Task() = default;

  const TaskConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  int64_t dataset_size() const { return data_->size(); }

  // Batch number `batch_index` of this task's stream. Deterministic for the
  // seed and thread-safe, so workers may build batches in any order.
  Batch make_batch(int64_t batch_index) const;

  // Forward pass and loss on `batch` (on the model's device).
  virtual TaskOutput compute_loss(ImpModel& model, const Batch& batch) const = 0;

 protected:
  // Fills task-specific inputs for the examples at `indices` (with their
  // per-example random numbers `draws`) after the images and labels.
  virtual void add_inputs(Batch& batch, const std::vector<int64_t>& indices,
                          const std::vector<uint64_t>& draws) const {}

  TaskConfig config_;
  std::shared_ptr<const ImageTextDataset> data_;

 private:
  // Example order of epoch `epoch`: a fresh permutation for every epoch.
  std::shared_ptr<const std::vector<int64_t>> epoch_order(int64_t epoch) const;

  uint64_t seed_;
  mutable std::mutex order_mutex_;
  mutable std::map<int64_t, std::shared_ptr<const std::vector<int64_t>>> orders_;
};

// Image (or video) classification with a per-dataset linear head on the
// mean-pooled encoder output: softmax cross-entropy or sigmoid binary
// cross-entropy against one-hot targets.
class ClassificationTask : public Task {
 public:
  using Task::Task;
  TaskOutput compute_loss(ImpModel& model, const Batch& batch) const override;
};

// Symmetric NCE between images and text: the image's caption, or its class
// name in a prompt (label-text contrast). Identical texts, and for label text
// all examples of one class, are positives of each other.
class ContrastiveTask : public Task {
 public:
  ContrastiveTask(TaskConfig config, std::shared_ptr<const ImageTextDataset> data, uint64_t seed,
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

// Builds the task `config` describes over `data`.
std::unique_ptr<Task> make_task(const TaskConfig& config,
                                std::shared_ptr<const ImageTextDataset> data, uint64_t seed,
                                const Tokenizer& tokenizer, int max_len,
                                const std::vector<std::string>& prompts);

}  // namespace imp
