#include "imp/tasks/task.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/captions.h"
#include "imp/dist/collectives.h"
#include "imp/dist/process_group.h"
#include "imp/eval/metrics.h"
#include "imp/io/decode_error.h"
#include "imp/objectives/losses.h"
#include "imp/tasks/variants.h"

namespace imp {
namespace {

// Tokens the encoder gets from `input` of `modality`: the embedder's tokens,
// less those DropToken removes at `drop_tokens`; text counts its real tokens
// through `mask`.
int64_t count_tokens(const ModelConfig& model, const std::string& modality,
                     const torch::Tensor& input, const torch::Tensor& mask = {},
                     double drop_tokens = 0.0) {
  if (modality == kText) return mask.defined() ? mask.sum().item<int64_t>() : input.numel();
  int64_t per_example = 0;
  if (modality == kAudio) {
    const auto& p = model.audio.patch;
    per_example = (input.size(1) / p[0]) * (input.size(2) / p[1]);
  } else {
    const auto& p = model.vision.patch;
    const int64_t frames = std::max<int64_t>(input.size(2), p[0]);  // short clips are repeated
    per_example = (frames / p[0]) * (input.size(3) / p[1]) * (input.size(4) / p[2]);
  }
  const auto dropped = static_cast<int64_t>(std::llround(static_cast<double>(per_example) * drop_tokens));
  return input.size(0) * std::max<int64_t>(1, per_example - dropped);
}

}  // namespace

Task::Task(TaskConfig config, std::shared_ptr<const Dataset> data, uint64_t seed)
    : config_(std::move(config)), data_(std::move(data)), seed_(mix64(seed, hash_name(config_.name))) {
  for (const std::string& modality : config_.modalities) {
    if (modality == kText) continue;
    if (!data_->has_modality(modality)) {
      std::string offered;
      for (const std::string& own : data_->modalities()) offered += own + ", ";
      throw ConfigError(str_cat("task '", config_.name, "': dataset '", data_->name(),
                                "' has no ", modality, "; it offers ", offered,
                                "text. Change tasks.", config_.name, ".modalities or its dataset"));
    }
  }
  try {
    label_set_ = data_->label_set_index(config_.label);
  } catch (const ConfigError& e) {
    throw ConfigError(str_cat("tasks.", config_.name, ".label: ", e.what()));
  }
  const LabelSet& set = data_->label_sets()[label_set_];
  if (needs_label()) {
    IMP_REQUIRE(ConfigError, !set.class_names.empty(), "task '", config_.name, "' needs labels but dataset '",
                data_->name(), "' has no classes; give its samples labels (or a label_map), or use "
                "objective nce with text: caption");
  }
  IMP_REQUIRE(ConfigError, !set.multi_label || config_.objective == "sigmoid_bce" ||
                               (config_.objective == "nce" && config_.text != "label"),
              "task '", config_.name, "': dataset '", data_->name(), "' has several labels per sample, "
              "which only objective sigmoid_bce can learn; set tasks.", config_.name,
              ".objective to sigmoid_bce", config_.objective == "nce" ? " or text to caption" : "");
}

std::shared_ptr<const std::vector<int64_t>> Task::epoch_order(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(order_mutex_);
  auto found = orders_.find(epoch);
  if (found != orders_.end()) return found->second;
  auto order = std::make_shared<const std::vector<int64_t>>(
      data_->epoch_order(mix64(seed_, static_cast<uint64_t>(epoch))));
  // Workers run at most a few batches apart, so two epochs cover them all.
  while (orders_.size() >= 2) orders_.erase(orders_.begin());
  orders_.emplace(epoch, order);
  return order;
}

int64_t Task::example_at(int64_t position) const {
  const int64_t N = data_->size();
  return (*epoch_order(position / N))[position % N];
}

uint64_t Task::draw_at(int64_t position) const {
  return mix64(seed_ ^ 0x5bd1e995ULL, static_cast<uint64_t>(position));
}

void Task::set_vision_patch(std::array<int, 3> patch) { patch_ = patch; }

at::Tensor Task::rescale_vision(const at::Tensor& input) const {
  // [B, C, T, H, W] -> [B * T, C, H, W] frames, resized, and back.
  const int64_t B = input.size(0), C = input.size(1), T = input.size(2);
  const int64_t height = scaled_side(input.size(3), config_.resolution_scale, patch_[1]);
  const int64_t width = scaled_side(input.size(4), config_.resolution_scale, patch_[2]);
  at::Tensor frames = input.permute({0, 2, 1, 3, 4}).reshape({B * T, C, input.size(3), input.size(4)});
  namespace F = torch::nn::functional;
  // Antialiasing when shrinking, so that the smaller image is a fair one.
  frames = F::interpolate(frames, F::InterpolateFuncOptions()
                                      .size(std::vector<int64_t>{height, width})
                                      .mode(torch::kBilinear)
                                      .align_corners(false)
                                      .antialias(config_.resolution_scale < 1.0));
  return frames.reshape({B, T, C, height, width}).permute({0, 2, 1, 3, 4}).contiguous();
}

EncodeOptions Task::encode_options() const {
  EncodeOptions options;
  options.drop_tokens = config_.drop_tokens;
  options.rematerialize = config_.rematerialize;
  if (shard_world_ > 1) {
    options.first_row = shard_rows().first;
    options.batch_rows = config_.batch_size;
  }
  return options;
}

bool Task::needs_label() const {
  return config_.objective != "nce" || config_.text == "label";
}

bool Task::needs_caption() const {
  return config_.objective == "nce" && config_.text == "caption" &&
         std::find(config_.modalities.begin(), config_.modalities.end(), kText) !=
             config_.modalities.end();
}

void Task::set_shard(int rank, int world_size) {
  IMP_REQUIRE(ConfigError, world_size >= 1 && rank >= 0 && rank < world_size, "rank ", rank,
              " is outside a world of ", world_size, " processes");
  IMP_REQUIRE(ConfigError, config_.batch_size >= world_size, "tasks.", config_.name, ".batch_size (",
              config_.batch_size, ") is smaller than the ", world_size,
              " processes that share each batch; raise it to at least ", world_size);
  shard_rank_ = rank;
  shard_world_ = world_size;
}

void Task::set_process_group(dist::ProcessGroup* group) {
  group_ = group;
  if (group != nullptr) {
    set_shard(group->rank(), group->world_size());
  } else {
    set_shard(0, 1);
  }
}

torch::Tensor Task::rank_share(const torch::Tensor& loss_of_rows, const Batch& batch) const {
  if (group_ == nullptr) return loss_of_rows;
  return loss_of_rows * (static_cast<double>(group_->world_size()) * static_cast<double>(batch.size()) /
                         static_cast<double>(config_.batch_size));
}

double Task::whole_batch_mean(double mean_of_rows, const Batch& batch) const {
  if (group_ == nullptr) return mean_of_rows;
  const double rows = static_cast<double>(batch.size());
  std::vector<at::Tensor> sums{at::tensor({mean_of_rows * rows, rows}, at::kDouble)};
  group_->all_reduce_sum(sums);
  return sums[0][0].item<double>() / sums[0][1].item<double>();
}

std::pair<int64_t, int64_t> Task::shard_rows() const {
  const int64_t B = config_.batch_size;
  return {shard_rank_ * B / shard_world_, (shard_rank_ + 1) * B / shard_world_};
}

Batch Task::make_batch(int64_t batch_index) const {
  // Positions stay those of the whole batch: only the rows this rank owns
  // are built.
  const int64_t whole = config_.batch_size;
  const auto [first_row, end_row] = shard_rows();
  const int64_t B = end_row - first_row;
  std::vector<int64_t> indices(B);
  std::vector<uint64_t> draws(B);
  Batch batch;
  std::vector<std::string> modalities;
  for (const std::string& modality : config_.modalities) {
    if (modality != kText) modalities.push_back(modality);
  }

  SampleFailures* failures = data_->failures();
  if (failures == nullptr) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t position = batch_index * whole + first_row + b;  // in the endless stream of epochs
      indices[b] = example_at(position);
      draws[b] = draw_at(position);
    }
    for (const std::string& modality : modalities) {
      batch.inputs[modality] = data_->input(modality, indices, draws);
    }
  } else {
    // One example at a time: an example that fails is skipped, and its slot
    // goes to a replacement drawn from the position's own random stream, so
    // that the batch stays a function of batch_index alone.
    std::map<std::string, std::vector<at::Tensor>> rows;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t position = batch_index * whole + first_row + b;
      for (int64_t attempt = 0;; ++attempt) {
        IMP_REQUIRE(TrainingError, attempt < kMaxAttempts, "task '", name(), "': ", kMaxAttempts,
                    " examples in a row failed for one batch slot; ", failures->summary());
        const int64_t index =
            attempt == 0 ? example_at(position)
                         : example_at(static_cast<int64_t>(below(
                               mix64(draw_at(position), static_cast<uint64_t>(attempt)),
                               static_cast<uint64_t>(data_->size()))));
        const uint64_t draw =
            attempt == 0 ? draw_at(position)
                         : mix64(draw_at(position), static_cast<uint64_t>(attempt) << 32);
        // A sample that failed to decode before is skipped without a retry.
        const std::string known = failures->undecodable_reason(index, modalities);
        if (!known.empty()) {
          failures->record_failure(known, "", index);
          continue;
        }
        try {
          IMP_REQUIRE_DECODE(!needs_label() || data_->label(index, label_set_) >= 0,
                             "label: missing", data_->example_name(index),
                             " has no label; a task that classifies or contrasts label text "
                             "needs one");
          if (needs_caption()) data_->caption(index, draw);  // throws when it has none
          std::map<std::string, at::Tensor> inputs;
          try {
            inputs = data_->example_inputs(modalities, index, draw);
          } catch (const DecodeError& e) {
            failures->mark_undecodable(index, e.reason());
            throw;
          }
          for (auto& [modality, input] : inputs) rows[modality].push_back(std::move(input));
          indices[b] = index;
          draws[b] = draw;
          failures->record_success();
          break;
        } catch (const DecodeError& e) {
          failures->record_failure(e.reason(), e.what(), index);
        }
      }
    }
    for (auto& [modality, list] : rows) batch.inputs[modality] = at::stack(list);
  }
  if (config_.resolution_scale != 1.0) {
    for (auto& [modality, input] : batch.inputs) {
      if (modality == kImage || modality == kVideo) input = rescale_vision(input);
    }
  }
  batch.labels = data_->labels(indices, label_set_);
  if (data_->label_sets()[label_set_].multi_label) batch.targets = data_->targets(indices, label_set_);
  add_inputs(batch, indices, draws);
  return batch;
}

TaskOutput ClassificationTask::compute_loss(ImpModel& model, const Batch& batch) const {
  const std::string& modality = config_.modalities.at(0);
  const torch::Tensor& input = batch.inputs.at(modality);
  Encoded encoded = model->encode(modality, input, {}, encode_options());
  torch::Tensor logits =
      model->classify(classifier_name(*data_, label_set_), encoded.pooled).to(at::kFloat);  // [B, K]

  TaskOutput out;
  if (config_.objective == "sigmoid_bce") {
    torch::Tensor targets = batch.targets.defined()
                                ? batch.targets.to(logits.device())
                                : torch::one_hot(batch.labels, logits.size(1)).to(at::kFloat);
    out.loss = sigmoid_binary_cross_entropy(logits, targets);
  } else {
    out.loss = softmax_cross_entropy(logits, batch.labels);
  }
  out.loss = rank_share(out.loss + model->config().moe.aux_loss_weight * encoded.aux_loss, batch);

  // With several labels per example, a hit is a top class among them.
  out.metrics["accuracy"] = whole_batch_mean(
      batch.targets.defined() ? top1_hit_rate(logits.detach(), batch.targets.to(logits.device()))
                              : top1_accuracy(logits.detach(), batch.labels),
      batch);
  out.tokens = count_tokens(model->config(), modality, input, {}, config_.drop_tokens);
  return out;
}

ContrastiveTask::ContrastiveTask(TaskConfig config, std::shared_ptr<const Dataset> data,
                                 uint64_t seed, Tokenizer tokenizer, int max_len,
                                 std::vector<std::string> prompts)
    : Task(std::move(config), std::move(data), seed),
      tokenizer_(std::move(tokenizer)),
      max_len_(max_len),
      prompts_(std::move(prompts)) {
  const std::vector<std::string>& own = data_->label_sets()[label_set_].prompts;
  if (!own.empty()) prompts_ = own;
  TORCH_CHECK(!prompts_.empty(), "label-text contrast needs at least one prompt template");
}

void ContrastiveTask::add_inputs(Batch& batch, const std::vector<int64_t>& indices,
                                 const std::vector<uint64_t>& draws) const {
  const bool with_text = config_.modalities[1] == kText;
  if (with_text && config_.text == "label") {
    // Every example of a class is a positive of the class name, whichever
    // prompt worded it.
    batch.positive_groups = batch.labels;
  } else {
    // Captions that mean the same are positives (with_text: identical texts
    // are found again in compute_loss).
    std::vector<int64_t> groups(indices.size());
    bool grouped = true;
    for (size_t b = 0; b < indices.size(); ++b) {
      groups[b] = data_->caption_group(indices[b]);
      grouped = grouped && groups[b] >= 0;
    }
    if (grouped) batch.positive_groups = torch::tensor(groups, at::kLong);
  }
  if (!with_text) return;

  const std::vector<std::string>& class_names = data_->label_sets()[label_set_].class_names;
  std::vector<std::string> texts;
  texts.reserve(indices.size());
  for (size_t b = 0; b < indices.size(); ++b) {
    if (config_.text == "label") {
      const uint64_t wording = mix64(draws[b], 0x1abe1ULL);
      const std::string& name = class_names[data_->label(indices[b], label_set_)];
      texts.push_back(fill_prompt(prompts_[below(wording, prompts_.size())], name));
    } else {
      texts.push_back(data_->caption(indices[b], draws[b]));
    }
  }
  TextBatch text = tokenizer_.encode_batch(texts, max_len_);
  batch.inputs[kText] = text.ids;
  batch.text_mask = text.mask;
}

TaskOutput ContrastiveTask::compute_loss(ImpModel& model, const Batch& batch) const {
  const std::string& first = config_.modalities[0];
  const std::string& second = config_.modalities[1];
  const torch::Tensor& input = batch.inputs.at(first);
  Encoded a = model->encode(first, input, {}, encode_options());
  torch::Tensor z_a = model->project(first, a.pooled);  // [B, P]

  TaskOutput out;
  out.tokens = count_tokens(model->config(), first, input, {}, config_.drop_tokens);
  torch::Tensor z_b, aux_b, groups = batch.positive_groups;
  torch::Tensor text_keys;  // [B, 2L] token ids and mask, to find identical texts
  if (second == kText) {
    const torch::Tensor& ids = batch.inputs.at(kText);  // [B, L]
    const int64_t L = ids.size(1);
    // Encode each distinct text once and copy its embedding to the rows that
    // share it: the same loss and gradients as encoding every row, for less work.
    text_keys = torch::cat({ids, batch.text_mask.to(at::kLong)}, 1);  // [B, 2L]
    auto unique = at::unique_dim(text_keys, 0, /*sorted=*/true, /*return_inverse=*/true);
    torch::Tensor distinct = std::get<0>(unique);  // [U, 2L]
    torch::Tensor inverse = std::get<1>(unique);   // [B], row of each text in `distinct`
    torch::Tensor distinct_mask = distinct.narrow(1, L, L).to(at::kBool);
    Encoded text = model->encode(kText, distinct.narrow(1, 0, L), distinct_mask, encode_options());
    z_b = model->project(kText, text.pooled).index_select(0, inverse);  // [B, P]
    aux_b = text.aux_loss;
    out.tokens += distinct_mask.sum().item<int64_t>();
    // Identical texts are positives whatever else groups the examples.
    if (!groups.defined()) groups = inverse;
  } else {
    const torch::Tensor& other = batch.inputs.at(second);
    Encoded b = model->encode(second, other, {}, encode_options());
    z_b = model->project(second, b.pooled);
    aux_b = b.aux_loss;
    out.tokens += count_tokens(model->config(), second, other, {}, config_.drop_tokens);
  }
  const torch::Tensor aux = model->config().moe.aux_loss_weight * (a.aux_loss + aux_b);

  if (group_ != nullptr) {
    // Every process contrasts the whole batch: the embeddings of all
    // processes, gathered with their gradients, and positive groups that
    // hold across processes. Each process's loss is the whole batch's NCE
    // loss. all_gather_with_grad sums the processes' gradients for each
    // process's own rows, so the processes' mean gradient is the whole
    // batch's gradient (see TaskOutput::loss).
    z_a = dist::all_gather_with_grad(*group_, z_a);
    z_b = dist::all_gather_with_grad(*group_, z_b);
    // Caption groups, when every process has them, else identical texts.
    at::Tensor has_groups = at::full({1}, batch.positive_groups.defined() ? 1 : 0, at::kLong);
    std::vector<at::Tensor> count{has_groups};
    group_->all_reduce_sum(count);
    if (count[0].item<int64_t>() == group_->world_size()) {
      groups = group_->all_gather(batch.positive_groups.to(at::kCPU, at::kLong));
    } else if (text_keys.defined()) {
      groups = duplicate_groups(group_->all_gather(text_keys.to(at::kCPU)));
    } else {
      groups = torch::Tensor();
    }
  }
  out.loss = nce_loss(z_a, z_b, model->logit_scale(), torch::Tensor(), groups) + rank_share(aux, batch);
  out.metrics["accuracy"] =
      nce_accuracy(z_a.detach(), z_b.detach(), torch::Tensor(), groups).item<double>();
  return out;
}

std::unique_ptr<Task> make_task(const TaskConfig& config, std::shared_ptr<const Dataset> data,
                                uint64_t seed, const Tokenizer& tokenizer, int max_len,
                                const std::vector<std::string>& prompts) {
  const std::vector<std::string>& modalities = config.modalities;
  if (config.objective == "nce") {
    IMP_REQUIRE(ConfigError, modalities.size() == 2 && modalities[0] != kText, "task '",
                config.name, "': nce contrasts two modalities, text (if any) second, as in "
                "modalities: [image, text] or [video, audio]");
    return std::make_unique<ContrastiveTask>(config, std::move(data), seed, tokenizer, max_len,
                                             prompts);
  }
  IMP_REQUIRE(ConfigError, modalities.size() == 1 && modalities[0] != kText, "task '",
              config.name, "': objective ", config.objective,
              " classifies one of image, video or audio, as in modalities: [image]");
  return std::make_unique<ClassificationTask>(config, std::move(data), seed);
}

}  // namespace imp
