#include "imp/train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>

#include "imp/core/autocast.h"
#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/core/threads.h"
#include "imp/data/captions.h"
#include "imp/tasks/variants.h"
#include "imp/train/lr_schedule.h"
#include "imp/train/prefetcher.h"

namespace imp {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

c10::Device default_device() {
  return torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
}

std::vector<std::string> text_corpus(const std::vector<std::shared_ptr<const Dataset>>& datasets) {
  std::vector<std::string> corpus;
  std::set<std::string> seen;
  for (const auto& data : datasets) {
    for (std::string& text : data->text_corpus()) {
      if (seen.insert(text).second) corpus.push_back(std::move(text));
    }
  }
  return corpus;
}

std::map<std::string, int64_t> classifier_heads(
    const Config& config, const std::map<std::string, std::shared_ptr<const Dataset>>& datasets) {
  std::map<std::string, int64_t> heads;
  for (const TaskConfig& task : config.tasks) {
    if (task.objective == "nce") continue;
    const Dataset& data = *datasets.at(task.dataset);
    int set = 0;
    try {
      set = data.label_set_index(task.label);
    } catch (const ConfigError& e) {
      throw ConfigError(str_cat("tasks.", task.name, ".label: ", e.what()));
    }
    heads[classifier_name(data, set)] =
        static_cast<int64_t>(data.label_sets()[set].class_names.size());
  }
  return heads;
}

std::string prepare_tokenizer(const Config& config, const std::vector<std::string>& corpus) {
  if (!config.tokenizer.model.empty()) return config.tokenizer.model;

  // The cache key covers everything the trained model depends on: the corpus,
  // the vocabulary size and the shim's training recipe (bump the version when
  // the recipe in src/spm_shim changes).
  constexpr uint64_t kTrainingRecipe = 2;
  uint64_t key = mix64(mix64(hash_name("sentencepiece-unigram"), kTrainingRecipe),
                       config.tokenizer.vocab_size);
  for (const std::string& line : corpus) key = mix64(key, hash_name(line));
  char name[64];
  std::snprintf(name, sizeof(name), "tokenizer-%016llx.model", static_cast<unsigned long long>(key));
  const fs::path path = fs::path(config.cache_dir) / name;
  if (!fs::exists(path)) {
    fs::create_directories(path.parent_path());
    const auto start = Clock::now();
    Tokenizer::train(corpus, path.string(), config.tokenizer.vocab_size);
    std::printf("tokenizer: trained on %zu captions in %.1f s, cached at %s\n", corpus.size(),
                std::chrono::duration<double>(Clock::now() - start).count(), path.c_str());
  }
  return path.string();
}

std::vector<TaskConfig> with_variants(const TaskConfig& task, const Dataset& data,
                                      const VisionConfig& vision) {
  std::vector<TaskConfig> family{task};
  if (task.variants != "method") return family;
  // The input size comes from the first example that decodes.
  const std::string& modality = task.modalities.at(0);
  at::Tensor input;
  for (int64_t index = 0; index < std::min<int64_t>(data.size(), 100) && !input.defined(); ++index) {
    try {
      input = data.eval_input(modality, {index}, 0);
    } catch (const DataError&) {
    }
  }
  IMP_REQUIRE(DataError, input.defined(), "task '", task.name, "': none of the first examples of dataset '",
              data.name(), "' decodes, so its multi-resolution variants cannot be sized");
  std::vector<std::string> skipped;
  for (TaskVariant& variant : method_variants(task, vision, input.size(2), input.size(3), input.size(4),
                                              &skipped)) {
    family.push_back(std::move(variant.config));
  }
  for (const std::string& note : skipped) std::printf("note: %s\n", note.c_str());
  return family;
}

double task_weight(const Task& task) {
  const double weight = task.config().weight;
  return weight >= 0.0 ? weight : static_cast<double>(task.dataset_size());
}

std::vector<double> task_weights(const std::vector<std::unique_ptr<Task>>& tasks) {
  std::vector<double> weights;
  for (const auto& task : tasks) weights.push_back(task_weight(*task));
  return weights;
}

Trainer::Trainer(Config config) : config_(std::move(config)), device_(default_device()) {
  set_intra_op_threads(config_.train.threads);

  // Stage 1: data and tokenizer.
  std::vector<std::shared_ptr<const Dataset>> in_order;
  for (const DatasetConfig& dataset : config_.datasets) {
    auto data = load_dataset(dataset, config_.model, /*train=*/true, config_.cache_dir);
    data->check_model_fits(config_.model);
    datasets_[dataset.name] = data;
    in_order.push_back(data);
  }
  tokenizer_path_ = prepare_tokenizer(config_, text_corpus(in_order));
  tokenizer_ = Tokenizer::load(tokenizer_path_);

  // Stage 2: model, with a classifier head for each dataset and label set a
  // task classifies.
  torch::manual_seed(config_.train.seed);
  model_ = ImpModel(config_.model, tokenizer_.vocab_size(), classifier_heads(config_, datasets_));
  model_->to(device_);

  // Stage 3: tasks, sampler and optimizer.
  const std::vector<std::string> prompts =
      config_.eval.prompts.empty() ? default_prompts() : config_.eval.prompts;
  std::vector<double> weights;
  for (const TaskConfig& task : config_.tasks) {
    // A task and its multi-resolution variants share the task's weight.
    std::vector<TaskConfig> family = with_variants(task, *datasets_.at(task.dataset), config_.model.vision);
    for (const TaskConfig& member : family) {
      const int max_len = member.text == "label" ? label_text_length(config_.model.text)
                                                 : config_.model.text.max_len;
      tasks_.push_back(make_task(member, datasets_.at(member.dataset), config_.train.seed, tokenizer_,
                                 max_len, prompts));
      tasks_.back()->set_vision_patch(config_.model.vision.patch);
      weights.push_back(task_weight(*tasks_.back()) / static_cast<double>(family.size()));
    }
  }
  sampler_ = std::make_unique<TaskSampler>(weights, config_.train.sampler,
                                           mix64(config_.train.seed, hash_name("task sampler")));
  const OptimizerConfig& opt = config_.train.optimizer;
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      model_->parameters(), torch::optim::AdamWOptions(opt.lr)
                                .betas({opt.beta1, opt.beta2})
                                .eps(opt.eps)
                                .weight_decay(opt.weight_decay));
}

namespace {

Batch to_device(const Batch& batch, c10::Device device) {
  if (device.is_cpu()) return batch;
  Batch out;
  for (const auto& [modality, input] : batch.inputs) out.inputs[modality] = input.to(device);
  if (batch.text_mask.defined()) out.text_mask = batch.text_mask.to(device);
  if (batch.labels.defined()) out.labels = batch.labels.to(device);
  if (batch.positive_groups.defined()) out.positive_groups = batch.positive_groups.to(device);
  return out;
}

// Running sums between two log lines.
struct Interval {
  Clock::time_point start = Clock::now();
  int64_t steps = 0;
  int64_t tokens = 0;
  int64_t examples = 0;
  double data_wait = 0.0;
  std::map<std::string, std::pair<double, int>> loss;  // task -> (sum, count)
};

void print_log_line(int64_t step, int64_t total, const Interval& interval, double lr) {
  const double seconds = std::chrono::duration<double>(Clock::now() - interval.start).count();
  std::string losses;
  for (const auto& [task, sum_count] : interval.loss) {
    char part[128];
    std::snprintf(part, sizeof(part), " %s %.4f", task.c_str(), sum_count.first / sum_count.second);
    losses += part;
  }
  std::printf("step %6lld/%lld | loss%s | lr %.2e | %.0f ms/step | %.0f tokens/s | %.0f examples/s"
              " | data wait %.1f%%\n",
              static_cast<long long>(step), static_cast<long long>(total), losses.c_str(), lr,
              1000.0 * seconds / std::max<int64_t>(1, interval.steps), interval.tokens / seconds,
              interval.examples / seconds, 100.0 * interval.data_wait / seconds);
  std::fflush(stdout);
}

}  // namespace

struct Trainer::StepResult {
  double loss = 0.0;
  double grad_norm = 0.0;
  double lr = 0.0;
  TaskOutput output;
};

Trainer::StepResult Trainer::step(int64_t step_index, size_t task_index, const Batch& batch) {
  const Task& task = *tasks_[task_index];
  StepResult result;
  result.lr = learning_rate(config_.train.optimizer, step_index, config_.train.steps);
  for (auto& group : optimizer_->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(result.lr);
  }

  // Parameters this task does not touch keep no gradient, so AdamW leaves
  // them and their moment estimates alone: only the task's own parts move.
  for (torch::Tensor& parameter : model_->parameters()) parameter.mutable_grad().reset();

  {
    AutocastScope autocast(device_.type(), config_.train.dtype == "bf16");
    result.output = task.compute_loss(model_, to_device(batch, device_));
  }
  result.loss = result.output.loss.item<double>();
  if (!std::isfinite(result.loss)) {
    throw TrainingError(str_cat("step ", step_index, ", task '", task.name(), "': the loss is ",
                                result.loss, "; training stopped. Lower train.optimizer.lr, raise "
                                "train.optimizer.warmup_steps or set "
                                "train.optimizer.clip_grad_norm"));
  }
  result.output.loss.backward();

  const double max_norm = config_.train.optimizer.clip_grad_norm;
  result.grad_norm = torch::nn::utils::clip_grad_norm_(
      model_->parameters(), max_norm > 0 ? max_norm : std::numeric_limits<double>::infinity());
  optimizer_->step();
  return result;
}

TrainSummary Trainer::train() {
  const TrainConfig& train = config_.train;
  fs::create_directories(config_.workdir);
  std::ofstream log_file(fs::path(config_.workdir) / "train_log.jsonl");

  std::vector<const Task*> task_list;
  for (const auto& task : tasks_) task_list.push_back(task.get());
  BatchPrefetcher prefetcher(task_list, train.workers, train.prefetch);

  const auto& probabilities = sampler_->probabilities();
  for (size_t t = 0; t < tasks_.size(); ++t) {
    std::printf("task %-24s p=%.3f batch %d\n", tasks_[t]->name().c_str(), probabilities[t],
                tasks_[t]->config().batch_size);
  }
  model_->train();

  TrainSummary summary;
  Interval interval;
  const auto start = Clock::now();
  for (int64_t s = 0; s < train.steps; ++s) {
    const size_t task_index = sampler_->next(s);
    const std::string& task_name = tasks_[task_index]->name();

    double waited = 0.0;
    Batch batch = prefetcher.next(task_index, &waited);
    StepResult result = step(s, task_index, batch);
    sampler_->observe(task_index, result.loss);

    summary.steps_per_task[task_name] += 1;
    summary.tokens += result.output.tokens;
    summary.data_wait_seconds += waited;
    interval.steps += 1;
    interval.tokens += result.output.tokens;
    interval.examples += batch.size();
    interval.data_wait += waited;
    auto& [loss_sum, loss_count] = interval.loss[task_name];
    loss_sum += result.loss;
    loss_count += 1;

    nlohmann::json record = {{"step", s + 1},           {"task", task_name},
                             {"loss", result.loss},     {"lr", result.lr},
                             {"grad_norm", result.grad_norm}, {"tokens", result.output.tokens},
                             {"data_wait_s", waited}};
    for (const auto& [metric, value] : result.output.metrics) record[metric] = value;
    log_file << record.dump() << '\n';

    if ((s + 1) % train.log_every == 0 || s + 1 == train.steps) {
      print_log_line(s + 1, train.steps, interval, result.lr);
      interval = Interval();
    }
  }
  summary.steps = train.steps;
  summary.train_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return summary;
}

}  // namespace imp
