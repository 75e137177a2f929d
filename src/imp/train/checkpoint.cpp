#include "imp/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <ATen/Context.h>

#include "imp/core/error.h"
#include "imp/train/adamw.h"

namespace imp {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kStateFile = "training_state.safetensors";
constexpr const char* kStateKey = "training_state";
constexpr const char* kStepPrefix = "step-";

std::string folder_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kStepPrefix, static_cast<long long>(step));
  return name;
}

// Flushes a file or folder to disk. A rename is only durable once the
// folder that contains it is flushed too.
void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  IMP_REQUIRE(DataError, fd >= 0, "cannot open ", path.string(), " to flush it to disk");
  const int status = ::fsync(fd);
  ::close(fd);
  IMP_REQUIRE(DataError, status == 0, "flushing ", path.string(), " to disk failed (disk full?)");
}

void copy_and_sync(const fs::path& from, const fs::path& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  sync_path(to);
}

void write_text_and_sync(const fs::path& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    IMP_REQUIRE(DataError, out.good(), "writing ", path.string(), " failed (disk full?)");
  }
  sync_path(path);
}

// A step number from a folder name "step-00000400"; -1 for any other name.
int64_t parse_step(const std::string& name) {
  const std::string prefix = kStepPrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || step > (INT64_MAX - 9) / 10) return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

std::string describe_shape(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

bool is_classifier_head(const std::string& name) { return name.rfind("classifiers.", 0) == 0; }

// Checks `file`'s tensors against the model and returns, per model
// parameter name, the tensor to copy in (absent where kFineTune keeps the
// fresh value). Changes nothing.
std::map<std::string, at::Tensor> match_weights(const std::string& file, const NamedTensors& stored,
                                                const NamedTensors& expected, WeightMatch match,
                                                std::vector<std::string>* notes) {
  std::map<std::string, at::Tensor> by_name(stored.begin(), stored.end());
  std::map<std::string, at::Tensor> result;
  std::set<std::string> used;
  for (const auto& [name, parameter] : expected) {
    auto it = by_name.find(name);
    const bool head = is_classifier_head(name);
    if (it == by_name.end()) {
      if (match == WeightMatch::kFineTune && head) {
        notes->push_back("kept the new classifier " + name + " (not in " + file + ")");
        continue;
      }
      throw DataError(str_cat(file, " has no tensor '", name, "', which the model needs; the file ",
                              "is from a different model config (check model.* and the tasks)",
                              match == WeightMatch::kExact ? ", or use --init-from to fine-tune" : ""));
    }
    used.insert(name);
    const at::Tensor& value = it->second;
    if (value.sizes() != parameter.sizes()) {
      if (match == WeightMatch::kFineTune && head) {
        notes->push_back(str_cat("kept the new classifier ", name, " ", describe_shape(parameter.sizes()),
                                 " (", file, " has ", describe_shape(value.sizes()), ")"));
        continue;
      }
      throw DataError(str_cat("tensor '", name, "' in ", file, " has shape ", describe_shape(value.sizes()),
                              " but the model's is ", describe_shape(parameter.sizes()),
                              "; the file is from a different model config"));
    }
    IMP_REQUIRE(DataError, value.is_floating_point(), "tensor '", name, "' in ", file, " contains ",
                value.scalar_type(), " values; model weights are floating point");
    result[name] = value;
  }
  for (const auto& [name, value] : stored) {
    if (used.count(name)) continue;
    if (match == WeightMatch::kFineTune) {
      notes->push_back("ignored " + name + " from " + file + " (the model has no such tensor)");
    } else {
      throw DataError(str_cat(file, " has a tensor '", name, "' the model lacks; the file is from a ",
                              "different model config (check model.* and the tasks), or use ",
                              "--init-from to fine-tune"));
    }
  }
  return result;
}

void copy_weights(const std::map<std::string, at::Tensor>& values, const NamedTensors& expected) {
  at::NoGradGuard no_grad;
  for (const auto& [name, parameter] : expected) {
    auto it = values.find(name);
    if (it != values.end()) const_cast<at::Tensor&>(parameter).copy_(it->second);
  }
}

}  // namespace

std::vector<CheckpointInfo> list_checkpoints(const std::string& workdir) {
  std::vector<CheckpointInfo> result;
  const fs::path dir = fs::path(workdir) / "checkpoints";
  std::error_code error;
  if (!fs::is_directory(dir, error)) return result;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    const int64_t step = parse_step(entry.path().filename().string());
    if (step < 0 || !entry.is_directory()) continue;
    if (!fs::exists(entry.path() / kModelFile) || !fs::exists(entry.path() / kStateFile)) continue;
    result.push_back({step, entry.path().string()});
  }
  std::sort(result.begin(), result.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  return result;
}

NamedTensors model_tensors(ImpModel& model) {
  NamedTensors tensors;
  for (const auto& item : model->named_parameters()) tensors.emplace_back(item.key(), item.value());
  for (const auto& item : model->named_buffers()) tensors.emplace_back(item.key(), item.value());
  return tensors;
}

void capture_rng(TrainingState& state) {
  {
    at::Generator generator = at::globalContext().defaultGenerator(at::kCPU);
    std::lock_guard<std::mutex> lock(generator.mutex());
    state.cpu_rng = generator.get_state();
  }
  if (at::globalContext().hasCUDA()) {
    at::Generator generator = at::globalContext().defaultGenerator(at::kCUDA);
    std::lock_guard<std::mutex> lock(generator.mutex());
    state.cuda_rng = generator.get_state();
  }
}

void restore_rng(const TrainingState& state) {
  if (state.cpu_rng.defined()) {
    at::Generator generator = at::globalContext().defaultGenerator(at::kCPU);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.cpu_rng);
  }
  if (state.cuda_rng.defined() && at::globalContext().hasCUDA()) {
    at::Generator generator = at::globalContext().defaultGenerator(at::kCUDA);
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.cuda_rng);
  }
}

std::string save_checkpoint(const std::string& workdir, ImpModel& model,
                            const torch::optim::AdamW& optimizer, const TrainingState& state,
                            const std::string& config_yaml, const std::string& tokenizer_path,
                            int keep) {
  const fs::path root = fs::path(workdir) / "checkpoints";
  fs::create_directories(root);
  const fs::path final_dir = root / folder_name(state.step);
  const fs::path temporary = root / ("." + folder_name(state.step) + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(temporary);
  fs::create_directories(temporary);

  // Weights: fp32 master copies, on the CPU.
  const NamedTensors weights = model_tensors(model);
  save_safetensors((temporary / kModelFile).string(), weights, {{"format", "pt"}});

  // Optimizer moments under the parameter's name; parameters no task has
  // touched yet have no state and are left out.
  NamedTensors training;
  const auto& optimizer_state = optimizer.state();
  for (const auto& [name, parameter] : model->named_parameters().pairs()) {
    auto it = optimizer_state.find(optimizer_state_key(parameter));
    if (it == optimizer_state.end()) continue;
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    training.emplace_back("optimizer/" + name + "/exp_avg", adam.exp_avg());
    training.emplace_back("optimizer/" + name + "/exp_avg_sq", adam.exp_avg_sq());
    if (adam.max_exp_avg_sq().defined()) {
      training.emplace_back("optimizer/" + name + "/max_exp_avg_sq", adam.max_exp_avg_sq());
    }
    training.emplace_back("optimizer/" + name + "/step", at::scalar_tensor(adam.step(), at::kLong));
  }
  if (state.cpu_rng.defined()) training.emplace_back("rng/cpu", state.cpu_rng);
  if (state.cuda_rng.defined()) training.emplace_back("rng/cuda", state.cuda_rng);
  const nlohmann::json meta = {{"step", state.step},
                               {"total_steps", state.total_steps},
                               {"task_batches", state.task_batches},
                               {"train_seconds", state.train_seconds},
                               {"routing", state.routing}};
  save_safetensors((temporary / kStateFile).string(), training, {{kStateKey, meta.dump()}});

  write_text_and_sync(temporary / "config.yaml", config_yaml);
  if (!tokenizer_path.empty()) copy_and_sync(tokenizer_path, temporary / "tokenizer.model");
  sync_path(temporary);

  // A checkpoint of the same step (a rerun after a crash) is replaced.
  fs::remove_all(final_dir);
  fs::rename(temporary, final_dir);
  sync_path(root);

  // Keep the newest `keep`; remove leftovers of killed runs.
  std::vector<CheckpointInfo> all = list_checkpoints(workdir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove_all(all[i].path);
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 1 && name[0] == '.' && name.find(".tmp-") != std::string::npos &&
        entry.path() != temporary) {
      fs::remove_all(entry.path());
    }
  }
  return final_dir.string();
}

TrainingState load_checkpoint(const std::string& checkpoint, ImpModel& model,
                              torch::optim::AdamW& optimizer) {
  const fs::path dir(checkpoint);
  const std::string model_file = (dir / kModelFile).string();
  const std::string state_file = (dir / kStateFile).string();
  IMP_REQUIRE(DataError, fs::is_directory(dir), "checkpoint ", checkpoint,
              " is not a folder; pass a folder under <workdir>/checkpoints");
  for (const std::string& file : {model_file, state_file}) {
    IMP_REQUIRE(DataError, fs::exists(file), "checkpoint ", checkpoint, " has no ",
                fs::path(file).filename().string(), "; it is incomplete, resume from an older one");
  }

  // Read and check everything before touching the model.
  const SafetensorsContents weights = load_safetensors(model_file);
  const NamedTensors expected = model_tensors(model);
  std::vector<std::string> notes;
  const std::map<std::string, at::Tensor> values =
      match_weights(model_file, weights.tensors, expected, WeightMatch::kExact, &notes);

  const SafetensorsContents training = load_safetensors(state_file);
  auto meta_it = training.metadata.find(kStateKey);
  IMP_REQUIRE(DataError, meta_it != training.metadata.end(), state_file, " has no '", kStateKey,
              "' metadata; it was not written by imp, resume from another checkpoint");
  const nlohmann::json meta = nlohmann::json::parse(meta_it->second, nullptr, false);
  TrainingState state;
  try {
    state.step = meta.at("step").get<int64_t>();
    state.total_steps = meta.at("total_steps").get<int64_t>();
    state.task_batches = meta.at("task_batches").get<std::map<std::string, int64_t>>();
    state.routing = meta.at("routing");
    state.train_seconds = meta.value("train_seconds", 0.0);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(str_cat("the '", kStateKey, "' metadata of ", state_file, " is malformed (",
                            e.what(), "); resume from another checkpoint"));
  }

  std::map<std::string, at::Tensor> stored(training.tensors.begin(), training.tensors.end());
  std::map<std::string, at::Tensor> parameters;
  for (const auto& [name, parameter] : model->named_parameters().pairs()) parameters[name] = parameter;
  // Moments per parameter, checked against its shape.
  std::map<std::string, std::unique_ptr<torch::optim::AdamWParamState>> moments;
  for (const auto& [key, tensor] : stored) {
    if (key.rfind("rng/", 0) == 0) continue;
    const size_t last = key.rfind('/');
    IMP_REQUIRE(DataError, key.rfind("optimizer/", 0) == 0 && last > 10, "unexpected tensor '", key,
                "' in ", state_file, "; the file was not written by this version of imp");
    const std::string name = key.substr(10, last - 10);
    const std::string field = key.substr(last + 1);
    auto parameter = parameters.find(name);
    IMP_REQUIRE(DataError, parameter != parameters.end(), "tensor '", key, "' in ", state_file,
                " belongs to a parameter the model lacks; the checkpoint is from a different config");
    auto& slot = moments[name];
    if (!slot) slot = std::make_unique<torch::optim::AdamWParamState>();
    if (field == "step") {
      IMP_REQUIRE(DataError, tensor.numel() == 1, "tensor '", key, "' in ", state_file,
                  " should hold one step count");
      slot->step(tensor.item<int64_t>());
      continue;
    }
    IMP_REQUIRE(DataError, tensor.sizes() == parameter->second.sizes(), "tensor '", key, "' in ",
                state_file, " has shape ", describe_shape(tensor.sizes()), " but parameter '", name,
                "' has ", describe_shape(parameter->second.sizes()));
    const at::Tensor value = tensor.to(parameter->second.options());
    if (field == "exp_avg") {
      slot->exp_avg(value);
    } else if (field == "exp_avg_sq") {
      slot->exp_avg_sq(value);
    } else if (field == "max_exp_avg_sq") {
      slot->max_exp_avg_sq(value);
    } else {
      throw DataError(str_cat("unexpected tensor '", key, "' in ", state_file));
    }
  }
  for (const auto& [name, slot] : moments) {
    IMP_REQUIRE(DataError, slot->exp_avg().defined() && slot->exp_avg_sq().defined(), state_file,
                " lacks the moments of parameter '", name, "'; the file is damaged");
  }
  if (stored.count("rng/cpu")) state.cpu_rng = stored.at("rng/cpu");
  if (stored.count("rng/cuda")) state.cuda_rng = stored.at("rng/cuda");

  // Everything checked: now change the model and the optimizer.
  copy_weights(values, expected);
  auto& optimizer_state = optimizer.state();
  optimizer_state.clear();
  for (auto& [name, slot] : moments) optimizer_state[optimizer_state_key(parameters.at(name))] = std::move(slot);
  return state;
}

std::string resolve_weights_file(const std::string& path) {
  const fs::path given(path);
  IMP_REQUIRE(DataError, fs::exists(given), "no file or folder ", path,
              "; pass a .safetensors file, a checkpoint folder or a run directory");
  if (!fs::is_directory(given)) return path;
  if (fs::exists(given / kModelFile)) return (given / kModelFile).string();
  const std::vector<CheckpointInfo> checkpoints = list_checkpoints(path);
  IMP_REQUIRE(DataError, !checkpoints.empty(), path, " contains neither ", kModelFile,
              " nor a checkpoint under checkpoints/; pass the run directory of an `imp train` run");
  return (fs::path(checkpoints.back().path) / kModelFile).string();
}

std::vector<std::string> load_weights(const std::string& path, ImpModel& model, WeightMatch match) {
  const std::string file = resolve_weights_file(path);
  const SafetensorsContents contents = load_safetensors(file);
  const NamedTensors expected = model_tensors(model);
  std::vector<std::string> notes;
  copy_weights(match_weights(file, contents.tensors, expected, match, &notes), expected);
  return notes;
}

}  // namespace imp
