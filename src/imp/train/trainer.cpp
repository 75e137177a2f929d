#include "imp/train/trainer.h"

#include <algorithm>
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
#include "imp/core/cpu_cache.h"
#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/core/threads.h"
#include "imp/data/captions.h"
#include "imp/dist/collectives.h"
#include "imp/dist/process_group.h"
#include "imp/moe/moe_layer.h"
#include "imp/tasks/variants.h"
#include "imp/train/adamw.h"
#include "imp/train/checkpoint.h"
#include "imp/train/lr_schedule.h"
#include "imp/train/prefetcher.h"
#include "imp/train/progress.h"
#include "imp/train/tensorboard.h"

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
  use_caching_cpu_allocator(cpu_cache_limit_bytes(config_.train.cpu_cache_mb));

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
  optimizer_ = std::make_unique<FusedAdamW>(
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

// First-choice counts per (MoE layer, modality) at the start of an interval,
// to report the interval's expert load rather than the run's.
using RoutingSnapshot = std::map<std::pair<int, std::string>, std::pair<std::vector<int64_t>, int64_t>>;

RoutingSnapshot snapshot(const RoutingStats& stats) {
  RoutingSnapshot result;
  for (int layer : stats.layers()) {
    for (const std::string& modality : stats.modalities(layer)) {
      const RoutingCounts* counts = stats.find(layer, modality);
      result[{layer, modality}] = {counts->top_choice_per_expert, counts->num_tokens};
    }
  }
  return result;
}

// {"<layer>": {"<modality>": [share of the interval's tokens whose first
// choice was each expert]}}, for modalities that ran in the interval.
nlohmann::json expert_load(const RoutingSnapshot& before, const RoutingSnapshot& now) {
  nlohmann::json result = nlohmann::json::object();
  for (const auto& [key, counts] : now) {
    std::vector<int64_t> top = counts.first;
    int64_t tokens = counts.second;
    auto it = before.find(key);
    if (it != before.end()) {
      for (size_t e = 0; e < top.size() && e < it->second.first.size(); ++e) top[e] -= it->second.first[e];
      tokens -= it->second.second;
    }
    if (tokens <= 0) continue;
    std::vector<double> share;
    for (int64_t count : top) share.push_back(static_cast<double>(count) / static_cast<double>(tokens));
    result[std::to_string(key.first)][key.second] = share;
  }
  return result;
}

std::string log_line(int64_t step, int64_t total, const Interval& interval, double lr,
                     double seconds_left) {
  const double seconds = std::chrono::duration<double>(Clock::now() - interval.start).count();
  std::string losses;
  for (const auto& [task, sum_count] : interval.loss) {
    char part[128];
    std::snprintf(part, sizeof(part), " %s %.4f", task.c_str(), sum_count.first / sum_count.second);
    losses += part;
  }
  char line[512];
  std::snprintf(line, sizeof(line),
                " | lr %.2e | %.0f ms/step | %.0f tokens/s | %.0f examples/s | data wait %.1f%% | %s left",
                lr, 1000.0 * seconds / std::max<int64_t>(1, interval.steps), interval.tokens / seconds,
                interval.examples / seconds, 100.0 * interval.data_wait / seconds,
                format_duration(std::max(0.0, seconds_left)).c_str());
  char head[64];
  std::snprintf(head, sizeof(head), "step %6lld/%lld | loss", static_cast<long long>(step),
                static_cast<long long>(total));
  return head + losses + line;
}

// Opens a JSON Lines log for appending after `step` (its later records
// dropped), or empty for a run that starts at step 0.
std::ofstream open_log(const fs::path& path, int64_t step) {
  if (step > 0) {
    truncate_log_after(path.string(), step);
    return std::ofstream(path, std::ios::app);
  }
  return std::ofstream(path, std::ios::trunc);
}

}  // namespace

std::string task_signature(const TaskConfig& task, const Batch& batch) {
  std::string key;
  for (const auto& [modality, input] : batch.inputs) {
    key += modality + "[";
    for (int64_t d = 0; d < input.dim(); ++d) key += (d ? "," : "") + std::to_string(input.size(d));
    key += "] ";
  }
  key += task.objective;
  // Classifiers differ in their head (its weights and class count).
  if (task.objective != "nce") key += " head=" + task.dataset + (task.label.empty() ? "" : ":" + task.label);
  if (task.drop_tokens > 0) key += str_cat(" droptoken=", task.drop_tokens);
  if (task.rematerialize) key += " remat";
  return key;
}

void truncate_log_after(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    // A cut last line (the process was killed while writing it) goes too.
    if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) continue;
    if (record["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  in.close();
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << kept;
    IMP_REQUIRE(TrainingError, out.good(), "rewriting ", path, " failed (disk full?)");
  }
  fs::rename(temporary, path);
}

Trainer::~Trainer() = default;

bool Trainer::is_primary() const { return group_ == nullptr || group_->rank() == 0; }

void Trainer::set_process_group(std::shared_ptr<dist::ProcessGroup> group) {
  for (const auto& task : tasks_) task->set_process_group(group.get());
  // Every rank starts from rank 0's weights.
  {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& parameter : model_->parameters()) {
      at::Tensor data = parameter.detach();
      group->broadcast(data, 0);
    }
  }
  group_ = std::move(group);
  // Each rank counts its own tokens' routing and the reports sum the ranks'
  // counts, so counts restored from a checkpoint stay with rank 0 alone.
  if (group_->rank() != 0) model_->routing_stats().reset();
  replicated_parameters_ = model_->parameters();
  if (config_.train.expert_parallel) {
    sharded_parameters_ = expert_parameters();
    IMP_REQUIRE(ConfigError, !sharded_parameters_.empty(), "train.expert_parallel shards the experts of MoE "
                "layers, but the model has none (model.moe.num_experts is ", config_.model.moe.num_experts,
                "); set model.moe.num_experts to a multiple of the number of processes, or turn "
                "expert_parallel off");
    shard_experts();
    if (group_->rank() == 0) {
      std::printf("expert parallel: each of the %d processes holds %lld of the %d experts of each MoE layer\n",
                  group_->world_size(),
                  static_cast<long long>(config_.model.moe.num_experts / group_->world_size()),
                  config_.model.moe.num_experts);
    }
    std::set<const void*> sharded;
    for (const torch::Tensor& parameter : sharded_parameters_) sharded.insert(parameter.unsafeGetTensorImpl());
    replicated_parameters_.erase(
        std::remove_if(replicated_parameters_.begin(), replicated_parameters_.end(),
                       [&](const torch::Tensor& parameter) {
                         return sharded.count(parameter.unsafeGetTensorImpl()) > 0;
                       }),
        replicated_parameters_.end());
  }
  reducer_ = std::make_unique<dist::GradientReducer>(*group_, replicated_parameters_);
  reducer_->register_backward_hooks();
}

std::vector<torch::Tensor> Trainer::expert_parameters() {
  std::vector<torch::Tensor> result;
  for (const auto& module : model_->modules(/*include_self=*/false)) {
    if (auto layer = std::dynamic_pointer_cast<MoeLayerImpl>(module)) {
      for (torch::Tensor& parameter : layer->expert_parameters()) result.push_back(parameter);
    }
  }
  return result;
}

namespace {

// AdamW's state of `parameter`, or null when it has none yet.
torch::optim::AdamWParamState* adam_state(torch::optim::AdamW& optimizer, const torch::Tensor& parameter) {
  auto it = optimizer.state().find(optimizer_state_key(parameter));
  return it == optimizer.state().end() ? nullptr
                                       : static_cast<torch::optim::AdamWParamState*>(it->second.get());
}

}  // namespace

RoutingStats Trainer::routing_over_ranks() {
  if (!group_) return model_->routing_stats();
  // Every rank ran the same tasks, so the counts have the same layout on
  // all of them: the same layers, modalities and experts, in the same order.
  nlohmann::json json = model_->routing_stats().to_json();
  std::vector<int64_t*> fields;
  std::vector<int64_t> values;
  for (nlohmann::json& entry : json["layers"]) {
    for (auto& [modality, counts] : entry["modalities"].items()) {
      for (const char* list : {"tokens_per_expert", "top_choice_per_expert"}) {
        for (nlohmann::json& value : counts[list]) values.push_back(value.get<int64_t>());
      }
      for (const char* count : {"num_tokens", "dropped_tokens", "num_passes"}) {
        values.push_back(counts[count].get<int64_t>());
      }
    }
  }
  // The layout check first, so that ranks that differ get an error rather
  // than a wrong sum.
  std::vector<at::Tensor> size{at::full({1}, static_cast<int64_t>(values.size()), at::kLong)};
  group_->all_reduce_sum(size);
  IMP_REQUIRE(TrainingError, size[0].item<int64_t>() == static_cast<int64_t>(values.size()) * group_->world_size(),
              "the ranks' routing counts differ in layout (rank ", group_->rank(), " has ", values.size(),
              " counts); the ranks did not run the same tasks");
  std::vector<at::Tensor> sums{at::tensor(values, at::kLong)};
  group_->all_reduce_sum(sums);

  const int64_t* summed = sums[0].data_ptr<int64_t>();
  size_t next = 0;
  for (nlohmann::json& entry : json["layers"]) {
    for (auto& [modality, counts] : entry["modalities"].items()) {
      for (const char* list : {"tokens_per_expert", "top_choice_per_expert"}) {
        for (nlohmann::json& value : counts[list]) value = summed[next++];
      }
      for (const char* count : {"num_tokens", "dropped_tokens", "num_passes"}) counts[count] = summed[next++];
    }
  }
  RoutingStats total;
  total.from_json(json);
  return total;
}

void Trainer::shard_experts() {
  if (experts_sharded_) return;
  const int64_t world = group_->world_size();
  // The moments first, while the parameters still have their whole shape.
  for (const torch::Tensor& parameter : expert_parameters()) {
    torch::optim::AdamWParamState* state = adam_state(*optimizer_, parameter);
    if (state == nullptr) continue;
    const int64_t local = parameter.size(0) / world;
    auto slice = [&](const at::Tensor& whole) {
      return whole.defined() ? whole.narrow(0, group_->rank() * local, local).clone() : whole;
    };
    state->exp_avg(slice(state->exp_avg()));
    state->exp_avg_sq(slice(state->exp_avg_sq()));
    state->max_exp_avg_sq(slice(state->max_exp_avg_sq()));
  }
  for (const auto& module : model_->modules(/*include_self=*/false)) {
    if (auto layer = std::dynamic_pointer_cast<MoeLayerImpl>(module)) layer->shard_experts(*group_);
  }
  experts_sharded_ = true;
}

void Trainer::unshard_experts() {
  if (!experts_sharded_) return;
  const std::vector<torch::Tensor> parameters = expert_parameters();
  // A parameter no task has reached yet has no moments on any rank. One
  // that has them on some rank is gathered, with zeros from the others.
  at::Tensor present = at::zeros({static_cast<int64_t>(parameters.size())}, at::kLong);
  at::Tensor steps = at::zeros({static_cast<int64_t>(parameters.size())}, at::kLong);
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (torch::optim::AdamWParamState* state = adam_state(*optimizer_, parameters[i])) {
      present[static_cast<int64_t>(i)] = 1;
      steps[static_cast<int64_t>(i)] = state->step();
    }
  }
  std::vector<at::Tensor> counts{present, steps};
  group_->all_reduce_sum(counts);

  for (size_t i = 0; i < parameters.size(); ++i) {
    const int64_t holders = counts[0][static_cast<int64_t>(i)].item<int64_t>();
    if (holders == 0) continue;
    torch::optim::AdamWParamState* state = adam_state(*optimizer_, parameters[i]);
    if (state == nullptr) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->exp_avg(torch::zeros_like(parameters[i]));
      fresh->exp_avg_sq(torch::zeros_like(parameters[i]));
      state = fresh.get();
      optimizer_->state()[optimizer_state_key(parameters[i])] = std::move(fresh);
    }
    // Every holder took the same steps, so the sum over holders divided by
    // their number is that step.
    state->step(counts[1][static_cast<int64_t>(i)].item<int64_t>() / holders);
    state->exp_avg(group_->all_gather(state->exp_avg()));
    state->exp_avg_sq(group_->all_gather(state->exp_avg_sq()));
  }
  for (const auto& module : model_->modules(/*include_self=*/false)) {
    if (auto layer = std::dynamic_pointer_cast<MoeLayerImpl>(module)) layer->unshard_experts();
  }
  experts_sharded_ = false;
}

double Trainer::clip_gradients(double max_norm) {
  const double limit = max_norm > 0 ? max_norm : std::numeric_limits<double>::infinity();
  if (!experts_sharded_) return torch::nn::utils::clip_grad_norm_(model_->parameters(), limit);
  // Replicated gradients are equal on every rank after the reduction, while
  // each rank has only its own experts' gradients.
  std::vector<torch::Tensor> with_gradient;
  auto sum_of_squares = [&](const std::vector<torch::Tensor>& parameters) {
    double sum = 0.0;
    for (const torch::Tensor& parameter : parameters) {
      if (!parameter.grad().defined()) continue;
      with_gradient.push_back(parameter);
      sum += parameter.grad().to(at::kDouble).pow(2).sum().item<double>();
    }
    return sum;
  };
  const double replicated = sum_of_squares(replicated_parameters_);
  at::Tensor own = at::full({1}, sum_of_squares(sharded_parameters_), at::kDouble);
  std::vector<at::Tensor> total{own};
  group_->all_reduce_sum(total);
  const double norm = std::sqrt(replicated + total[0][0].item<double>());
  // The same coefficient as clip_grad_norm_.
  const double coefficient = limit / (norm + 1e-6);
  if (coefficient < 1.0) {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& parameter : with_gradient) parameter.mutable_grad().mul_(coefficient);
  }
  return norm;
}

void Trainer::resume(const std::string& checkpoint) {
  const TrainingState state = load_checkpoint(checkpoint, model_, *optimizer_);
  IMP_REQUIRE(DataError, state.step <= config_.train.steps, "checkpoint ", checkpoint, " is at step ",
              state.step, ", past train.steps (", config_.train.steps,
              "); raise train.steps to train further");
  try {
    model_->routing_stats().from_json(state.routing);
  } catch (const std::invalid_argument& e) {
    throw DataError(str_cat("checkpoint ", checkpoint, ": ", e.what()));
  }
  restore_rng(state);
  start_step_ = state.step;
  resumed_seconds_ = state.train_seconds;

  // The sampler is replayed up to the checkpoint (round robin keeps state);
  // each task goes on from its saved batch position.
  std::vector<int64_t> drawn(tasks_.size(), 0);
  for (int64_t s = 0; s < start_step_; ++s) drawn[sampler_->next(s)] += 1;
  first_batches_.assign(tasks_.size(), 0);
  for (size_t t = 0; t < tasks_.size(); ++t) {
    auto it = state.task_batches.find(tasks_[t]->name());
    if (it != state.task_batches.end()) first_batches_[t] = it->second;
  }
  if (drawn != first_batches_) {
    std::printf("note: the tasks or their weights differ from those of the run that wrote %s; "
                "each task goes on from its saved batch position\n", checkpoint.c_str());
  }
  std::printf("resumed from %s at step %lld of %d\n", checkpoint.c_str(),
              static_cast<long long>(start_step_), config_.train.steps);
}

std::vector<std::string> Trainer::init_from(const std::string& path) {
  std::vector<std::string> notes = load_weights(path, model_, WeightMatch::kFineTune);
  std::printf("initialised the weights from %s\n", resolve_weights_file(path).c_str());
  for (const std::string& note : notes) std::printf("  %s\n", note.c_str());
  return notes;
}

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
  if (group_) {
    // Each rank's loss is its part of the whole batch's (see
    // TaskOutput::loss): their mean is the loss logged.
    const double world = group_->world_size();
    // One sum for the logs: the loss, and the tokens of all ranks.
    at::Tensor sums = at::zeros({2}, at::kDouble);
    sums[0] = result.output.loss.detach().to(at::kCPU, at::kDouble).reshape({});
    sums[1] = static_cast<double>(result.output.tokens);
    std::vector<at::Tensor> total{sums};
    group_->all_reduce_sum(total);
    result.loss = total[0][0].item<double>() / world;
    result.output.tokens = static_cast<int64_t>(total[0][1].item<double>());
  } else {
    result.loss = result.output.loss.item<double>();
  }
  if (!std::isfinite(result.loss)) {
    throw TrainingError(str_cat("step ", step_index, ", task '", task.name(), "': the loss is ",
                                result.loss, "; training stopped. Lower train.optimizer.lr, raise "
                                "train.optimizer.warmup_steps or set "
                                "train.optimizer.clip_grad_norm"));
  }
  // Gradients are averaged while the backward pass runs, except where
  // rematerialised blocks run backward passes of their own, which add to a
  // parameter's gradient more than once.
  if (reducer_ && !task.config().rematerialize) reducer_->prepare_for_backward();
  result.output.loss.backward();
  if (group_) {
    // A parameter no rank's pass reached keeps no gradient, as in one
    // process, so AdamW leaves it alone; the ranks agree through one sum.
    std::vector<torch::Tensor> parameters = model_->parameters();
    at::Tensor reached = at::zeros({static_cast<int64_t>(parameters.size())}, at::kInt);
    for (size_t i = 0; i < parameters.size(); ++i) {
      reached[static_cast<int64_t>(i)] = parameters[i].grad().defined() ? 1 : 0;
    }
    std::vector<at::Tensor> counts{reached};
    group_->all_reduce_sum(counts);
    reducer_->reduce();
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (counts[0][static_cast<int64_t>(i)].item<int>() == 0) parameters[i].mutable_grad().reset();
    }
    if (experts_sharded_) {
      // A rank's experts received the gradients of every rank's loss
      // through the all-to-all; their mean over ranks is that sum / world.
      torch::NoGradGuard no_grad;
      for (torch::Tensor& parameter : sharded_parameters_) {
        if (parameter.grad().defined()) parameter.mutable_grad().div_(static_cast<double>(group_->world_size()));
      }
    }
  }

  result.grad_norm = clip_gradients(config_.train.optimizer.clip_grad_norm);
  optimizer_->step();
  return result;
}

TrainSummary Trainer::train() {
  const TrainConfig& train = config_.train;
  const fs::path workdir(config_.workdir);
  fs::create_directories(workdir);
  // Only the primary process writes the run's files; the streams of the
  // others stay closed, and writes to them do nothing.
  const bool primary = is_primary();
  std::ofstream log_file, metrics_file, evals_file;
  std::unique_ptr<EventWriter> events;
  if (primary) {
    log_file = open_log(workdir / "train_log.jsonl", start_step_);
    metrics_file = open_log(workdir / "metrics.jsonl", start_step_);
    evals_file = open_log(workdir / "evals.jsonl", start_step_);
    if (train.tensorboard) events = std::make_unique<EventWriter>((workdir / "tensorboard").string());
  }
  const std::string config_yaml = to_yaml(config_);

  std::vector<const Task*> task_list;
  for (const auto& task : tasks_) task_list.push_back(task.get());
  BatchPrefetcher prefetcher(task_list, train.workers, train.prefetch, first_batches_);
  std::vector<int64_t> batches = first_batches_;
  batches.resize(tasks_.size(), 0);

  const auto& probabilities = sampler_->probabilities();
  for (size_t t = 0; t < tasks_.size(); ++t) {
    std::printf("task %-24s p=%.3f batch %d\n", tasks_[t]->name().c_str(), probabilities[t],
                tasks_[t]->config().batch_size);
  }
  std::fflush(stdout);
  model_->train();

  const auto start = Clock::now();
  Clock::duration eval_duration{0};
  // Training time of the whole run: earlier sessions' (when resumed) plus
  // this one's, evaluations left out.
  auto training_seconds = [&] {
    return resumed_seconds_ + std::chrono::duration<double>(Clock::now() - start - eval_duration).count();
  };
  auto write_checkpoint = [&](int64_t step, const nlohmann::json& routing) {
    TrainingState state;
    state.step = step;
    state.total_steps = train.steps;
    for (size_t t = 0; t < tasks_.size(); ++t) state.task_batches[tasks_[t]->name()] = batches[t];
    state.routing = routing;
    state.train_seconds = training_seconds();
    capture_rng(state);
    return save_checkpoint(config_.workdir, model_, *optimizer_, state, config_yaml, tokenizer_path_,
                           train.keep_checkpoints);
  };

  ProgressDisplay progress(primary ? train.progress : "lines", start_step_, train.steps);
  TrainSummary summary;
  Interval interval;
  RoutingSnapshot routing_before = snapshot(routing_over_ranks());
  std::map<std::string, std::vector<double>> signature_times;         // step times in ms
  std::vector<std::pair<std::string, std::string>> signature_order;  // signature, first task
  for (int64_t s = start_step_; s < train.steps; ++s) {
    const size_t task_index = sampler_->next(s);
    const std::string& task_name = tasks_[task_index]->name();

    double waited = 0.0;
    Batch batch = prefetcher.next(task_index, &waited);
    batches[task_index] += 1;
    const auto step_start = Clock::now();
    StepResult result = step(s, task_index, batch);
    const double step_ms = std::chrono::duration<double, std::milli>(Clock::now() - step_start).count();
    sampler_->observe(task_index, result.loss);
    const std::string signature = task_signature(tasks_[task_index]->config(), batch);
    auto [timing, first_time] = signature_times.try_emplace(signature);
    if (first_time) signature_order.emplace_back(signature, task_name);
    timing->second.push_back(step_ms);

    summary.steps_per_task[task_name] += 1;
    summary.tokens += result.output.tokens;
    summary.data_wait_seconds += waited;
    interval.steps += 1;
    interval.tokens += result.output.tokens;
    // Examples of the whole batch, over all ranks.
    interval.examples += group_ ? tasks_[task_index]->config().batch_size : batch.size();
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
    if (primary) progress.step(s + 1, task_name, result.loss, result.output.tokens);

    const int64_t done = s + 1;
    if (done % train.log_every == 0 || done == train.steps) {
      const double seconds = std::chrono::duration<double>(Clock::now() - interval.start).count();
      nlohmann::json losses = nlohmann::json::object();
      nlohmann::json counts = nlohmann::json::object();
      for (const auto& [task, sum_count] : interval.loss) {
        losses[task] = sum_count.first / sum_count.second;
        counts[task] = sum_count.second;
      }
      const RoutingSnapshot routing_now = snapshot(routing_over_ranks());
      const nlohmann::json metrics = {
          {"step", done},
          {"total_steps", train.steps},
          {"wall_s", training_seconds()},
          {"lr", result.lr},
          {"loss", losses},
          {"steps", counts},
          {"tokens_per_s", interval.tokens / seconds},
          {"examples_per_s", interval.examples / seconds},
          {"ms_per_step", 1000.0 * seconds / std::max<int64_t>(1, interval.steps)},
          {"data_wait", interval.data_wait / seconds},
          {"expert_load", expert_load(routing_before, routing_now)}};
      metrics_file << metrics.dump() << '\n';
      metrics_file.flush();
      log_file.flush();
      if (events) {
        for (const auto& [task, value] : losses.items()) events->add_scalar("loss/" + task, value.get<double>(), done);
        events->add_scalar("train/lr", result.lr, done);
        events->add_scalar("train/tokens_per_s", metrics["tokens_per_s"].get<double>(), done);
        events->add_scalar("train/data_wait", metrics["data_wait"].get<double>(), done);
        for (const auto& [layer, by_modality] : metrics["expert_load"].items()) {
          for (const auto& [modality, shares] : by_modality.items()) {
            for (size_t e = 0; e < shares.size(); ++e) {
              events->add_scalar(str_cat("expert_load/layer", layer, "/", modality, "/expert", e),
                                 shares[e].get<double>(), done);
            }
          }
        }
        events->flush();
      }
      if (primary) {
        progress.print_line(log_line(done, train.steps, interval, result.lr, progress.seconds_left(done)));
      }
      routing_before = routing_now;
      interval = Interval();
    }

    const bool evaluate_now =
        eval_hook_ && config_.eval.every > 0 && done % config_.eval.every == 0 && done < train.steps;
    const bool save_now =
        done == train.steps || (train.checkpoint_every > 0 && done % train.checkpoint_every == 0);
    // Evaluations and checkpoints see every expert; after the last step the
    // experts stay gathered for the caller.
    if (evaluate_now || save_now) unshard_experts();
    // In a multi-process run every rank evaluates (its part of the test
    // sets); rank 0 writes the results.
    if (evaluate_now) {
      progress.finish();
      // Evaluation must not move the random generators: a resumed run that
      // evaluates at other steps would otherwise draw other tokens to drop.
      TrainingState rng;
      capture_rng(rng);
      const auto evaluating = Clock::now();
      const std::map<std::string, double> results = eval_hook_(done);
      // Evaluation time counts neither in train_seconds nor in the next
      // interval's tokens/s.
      const auto eval_time = Clock::now() - evaluating;
      eval_duration += eval_time;
      interval.start += std::chrono::duration_cast<Clock::duration>(eval_time);
      restore_rng(rng);
      model_->train();
      evals_file << nlohmann::json({{"step", done}, {"metrics", results}}).dump() << '\n';
      evals_file.flush();
      if (events) {
        for (const auto& [name, value] : results) events->add_scalar("eval/" + name, value, done);
        events->flush();
      }
    }
    // The routing counts of all ranks: a collective, so outside the
    // primary's branch.
    const nlohmann::json routing = save_now ? routing_over_ranks().to_json() : nlohmann::json();
    if (primary && save_now) {
      const auto saving = Clock::now();
      const std::string path = write_checkpoint(done, routing);
      char line[512];
      std::snprintf(line, sizeof(line), "checkpoint: %s (%.1f s)", path.c_str(),
                    std::chrono::duration<double>(Clock::now() - saving).count());
      progress.print_line(line);
    }
    if (group_ && config_.train.expert_parallel && done < train.steps) shard_experts();
  }
  if (group_) {
    unshard_experts();
    // What the caller reports (routing.json): every rank's tokens.
    model_->routing_stats() = routing_over_ranks();
  }
  progress.finish();
  for (const auto& [signature, task] : signature_order) {
    std::vector<double>& times = signature_times.at(signature);
    SignatureCost cost;
    cost.signature = signature;
    cost.task = task;
    cost.steps = static_cast<int64_t>(times.size());
    cost.first_step_ms = times.front();
    if (times.size() > 1) {
      const auto middle = times.begin() + 1 + (times.size() - 1) / 2;
      std::nth_element(times.begin() + 1, middle, times.end());
      cost.median_later_ms = *middle;
    }
    summary.signatures.push_back(cost);
  }
  summary.steps = train.steps - start_step_;
  summary.train_seconds = training_seconds();
  summary.session_seconds = summary.train_seconds - resumed_seconds_;
  return summary;
}

}  // namespace imp
