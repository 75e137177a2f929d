#include "imp/tasks/task.h"

#include <numeric>

#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/captions.h"
#include "imp/eval/metrics.h"
#include "imp/objectives/losses.h"

namespace imp {
namespace {

// Tokens the vision embedder makes from `images` [B, C, T, H, W].
int64_t vision_tokens(const ModelConfig& model, const torch::Tensor& images) {
  const auto& p = model.vision.patch;
  const int64_t frames = std::max<int64_t>(images.size(2), p[0]);  // short clips are repeated
  return images.size(0) * (frames / p[0]) * (images.size(3) / p[1]) * (images.size(4) / p[2]);
}

}  // namespace

Task::Task(TaskConfig config, std::shared_ptr<const ImageTextDataset> data, uint64_t seed)
    : config_(std::move(config)), data_(std::move(data)), seed_(mix64(seed, hash_name(config_.name))) {}

std::shared_ptr<const std::vector<int64_t>> Task::epoch_order(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(order_mutex_);
  auto found = orders_.find(epoch);
  if (found != orders_.end()) return found->second;

  // Fisher-Yates with counter-based draws: the same order on every platform.
  auto order = std::make_shared<std::vector<int64_t>>(data_->size());
  std::iota(order->begin(), order->end(), 0);
  const uint64_t epoch_seed = mix64(seed_, static_cast<uint64_t>(epoch));
  for (int64_t i = data_->size() - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(below(mix64(epoch_seed, i), i + 1));
    std::swap((*order)[i], (*order)[j]);
  }
  // Workers run at most a few batches apart, so two epochs cover them all.
  while (orders_.size() >= 2) orders_.erase(orders_.begin());
  orders_.emplace(epoch, order);
  return order;
}

Batch Task::make_batch(int64_t batch_index) const {
  const int64_t B = config_.batch_size, N = data_->size();
  std::vector<int64_t> indices(B);
  std::vector<uint64_t> draws(B);
  std::vector<bool> flip(B, false);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t position = batch_index * B + b;  // in the endless stream of epochs
    indices[b] = (*epoch_order(position / N))[position % N];
    draws[b] = mix64(seed_ ^ 0x5bd1e995ULL, static_cast<uint64_t>(position));
    flip[b] = data_->hflip() && (draws[b] & 1) != 0;
  }

  Batch batch;
  batch.inputs[kImage] = data_->images(indices, flip);
  batch.labels = data_->labels(indices);
  add_inputs(batch, indices, draws);
  return batch;
}

TaskOutput ClassificationTask::compute_loss(ImpModel& model, const Batch& batch) const {
  const torch::Tensor& images = batch.inputs.at(kImage);
  Encoded encoded = model->encode(kImage, images);
  torch::Tensor logits = model->classify(config_.dataset, encoded.pooled).to(at::kFloat);  // [B, K]

  TaskOutput out;
  if (config_.objective == "sigmoid_bce") {
    torch::Tensor targets = torch::one_hot(batch.labels, logits.size(1)).to(at::kFloat);
    out.loss = sigmoid_binary_cross_entropy(logits, targets);
  } else {
    out.loss = softmax_cross_entropy(logits, batch.labels);
  }
  out.loss = out.loss + model->config().moe.aux_loss_weight * encoded.aux_loss;

  out.metrics["accuracy"] = top1_accuracy(logits.detach(), batch.labels);
  out.tokens = vision_tokens(model->config(), images);
  return out;
}

ContrastiveTask::ContrastiveTask(TaskConfig config, std::shared_ptr<const ImageTextDataset> data,
                                 uint64_t seed, Tokenizer tokenizer, int max_len,
                                 std::vector<std::string> prompts)
    : Task(std::move(config), std::move(data), seed),
      tokenizer_(std::move(tokenizer)),
      max_len_(max_len),
      prompts_(std::move(prompts)) {
  TORCH_CHECK(!prompts_.empty(), "label-text contrast needs at least one prompt template");
}

void ContrastiveTask::add_inputs(Batch& batch, const std::vector<int64_t>& indices,
                                 const std::vector<uint64_t>& draws) const {
  std::vector<std::string> texts;
  texts.reserve(indices.size());
  for (size_t b = 0; b < indices.size(); ++b) {
    const uint64_t wording = draws[b] >> 1;  // bit 0 decides the flip
    if (config_.text == "label") {
      const std::string& name = data_->class_names()[data_->label(indices[b])];
      texts.push_back(fill_prompt(prompts_[below(wording, prompts_.size())], name));
    } else {
      texts.push_back(data_->caption(indices[b], wording));
    }
  }
  TextBatch text = tokenizer_.encode_batch(texts, max_len_);
  batch.inputs[kText] = text.ids;
  batch.text_mask = text.mask;
  // Label text: every example of a class is a positive of the class name,
  // whichever prompt worded it.
  if (config_.text == "label") batch.positive_groups = batch.labels;
}

TaskOutput ContrastiveTask::compute_loss(ImpModel& model, const Batch& batch) const {
  const torch::Tensor& images = batch.inputs.at(kImage);
  const torch::Tensor& ids = batch.inputs.at(kText);  // [B, L]
  const int64_t L = ids.size(1);

  // Encode each distinct text once and copy its embedding to the rows that
  // share it: the same loss and gradients as encoding every row, for less work.
  torch::Tensor keys = torch::cat({ids, batch.text_mask.to(at::kLong)}, 1);  // [B, 2L]
  auto unique = at::unique_dim(keys, 0, /*sorted=*/true, /*return_inverse=*/true);
  torch::Tensor distinct = std::get<0>(unique);  // [U, 2L]
  torch::Tensor inverse = std::get<1>(unique);   // [B], row of each text in `distinct`
  torch::Tensor distinct_mask = distinct.narrow(1, L, L).to(at::kBool);

  Encoded image = model->encode(kImage, images);
  Encoded text = model->encode(kText, distinct.narrow(1, 0, L), distinct_mask);
  torch::Tensor z_image = model->project(kImage, image.pooled);                         // [B, P]
  torch::Tensor z_text = model->project(kText, text.pooled).index_select(0, inverse);  // [B, P]

  // Identical texts are positives; label text also groups by class.
  torch::Tensor groups = batch.positive_groups.defined() ? batch.positive_groups : inverse;
  TaskOutput out;
  out.loss = nce_loss(z_image, z_text, model->logit_scale(), torch::Tensor(), groups);
  out.loss = out.loss + model->config().moe.aux_loss_weight * (image.aux_loss + text.aux_loss);

  out.metrics["accuracy"] =
      nce_accuracy(z_image.detach(), z_text.detach(), torch::Tensor(), groups).item<double>();
  out.tokens = vision_tokens(model->config(), images) + distinct_mask.sum().item<int64_t>();
  return out;
}

std::unique_ptr<Task> make_task(const TaskConfig& config,
                                std::shared_ptr<const ImageTextDataset> data, uint64_t seed,
                                const Tokenizer& tokenizer, int max_len,
                                const std::vector<std::string>& prompts) {
  // Image datasets feed images, and text made from their labels and pixels.
  using Modalities = std::vector<std::string>;
  if (config.objective == "nce") {
    IMP_REQUIRE(ConfigError, config.modalities == Modalities({kImage, kText}), "task '",
                config.name, "': nce on image dataset '", config.dataset,
                "' pairs images with text; set modalities: [image, text]");
    return std::make_unique<ContrastiveTask>(config, std::move(data), seed, tokenizer, max_len,
                                             prompts);
  }
  IMP_REQUIRE(ConfigError, config.modalities == Modalities({kImage}), "task '", config.name,
              "': objective ", config.objective, " on image dataset '", config.dataset,
              "' classifies images; set modalities: [image]");
  return std::make_unique<ClassificationTask>(config, std::move(data), seed);
}

}  // namespace imp
