#include "imp/train/run.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "imp/core/cpu_cache.h"
#include "imp/core/error.h"
#include "imp/core/threads.h"
#include "imp/eval/evaluator.h"
#include "imp/dist/environment.h"
#include "imp/dist/process_group.h"
#include "imp/infer/inference.h"
#include "imp/io/safetensors.h"
#include "imp/train/checkpoint.h"
#include "imp/train/tensorboard.h"
#include "imp/train/trainer.h"

namespace imp {
namespace {

namespace fs = std::filesystem;

// Writes `text` to `path` through a temporary file and a rename, so that a
// crash never leaves a half-written file in place of a good one.
void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    IMP_REQUIRE(TrainingError, out.good(), "failed to open ", temporary.string(),
                " for writing; check that the run directory is writable");
    out << text;
    out.flush();
    IMP_REQUIRE(TrainingError, out.good(), "writing ", temporary.string(), " failed (disk full?)");
  }
  fs::rename(temporary, path);
}

void write_metrics(const fs::path& path, const std::map<std::string, double>& metrics) {
  nlohmann::json object(metrics);
  write_file_atomically(path, object.dump(2) + "\n");
}

std::map<std::string, double> read_metrics(const fs::path& path) {
  std::map<std::string, double> metrics;
  std::ifstream in(path);
  if (!in) return metrics;
  nlohmann::json object = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!object.is_object()) return metrics;
  for (const auto& [key, value] : object.items()) {
    if (value.is_number()) metrics[key] = value.get<double>();
  }
  return metrics;
}

int64_t count_parameters(ImpModel& model) {
  int64_t total = 0;
  for (const auto& parameter : model->parameters()) total += parameter.numel();
  return total;
}

// One line on how many task signatures the run had and what the first step
// of a new one cost beyond the later steps of the same signature.
void print_signatures(const std::vector<SignatureCost>& signatures) {
  double extra_ms = 0.0;
  int measured = 0;
  for (const SignatureCost& cost : signatures) {
    if (cost.steps < 2) continue;
    extra_ms += cost.first_step_ms - cost.median_later_ms;
    measured += 1;
  }
  std::printf("signatures: %zu distinct (shapes, modalities, objective)", signatures.size());
  if (measured > 0) {
    std::printf("; a new one's first step took %.0f ms longer than its later steps' median, on average",
                extra_ms / measured);
  }
  std::printf("\n");
}

// One line on how much of the run's large CPU memory the caching allocator
// served from freed blocks.
void print_cpu_cache() {
  const CpuCacheStats cache = cpu_cache_stats();
  if (!cache.installed || cache.reused + cache.allocated == 0) return;
  std::printf("cpu cache: %lld of %lld large allocations reused freed memory; at most %.0f MiB kept "
              "(limit %.0f MiB, train.cpu_cache_mb); at most %.0f MiB in large tensors\n",
              static_cast<long long>(cache.reused), static_cast<long long>(cache.reused + cache.allocated),
              cache.peak_kept_bytes / 1048576.0, cache.limit_bytes / 1048576.0,
              cache.peak_in_use_bytes / 1048576.0);
}

void write_signatures(const fs::path& path, const std::vector<SignatureCost>& signatures) {
  nlohmann::json list = nlohmann::json::array();
  for (const SignatureCost& cost : signatures) {
    list.push_back({{"signature", cost.signature},
                    {"task", cost.task},
                    {"steps", cost.steps},
                    {"first_step_ms", cost.first_step_ms},
                    {"median_later_ms", cost.median_later_ms}});
  }
  write_file_atomically(path, list.dump(2) + "\n");
}

void append_eval_record(const fs::path& path, int64_t step, const std::map<std::string, double>& metrics) {
  std::ofstream out(path, std::ios::app);
  out << nlohmann::json({{"step", step}, {"metrics", metrics}}).dump() << '\n';
}

}  // namespace

std::map<std::string, double> run_train(const Config& config, const TrainOptions& options) {
  const fs::path workdir(config.workdir);
  IMP_REQUIRE(ConfigError, !fs::exists(workdir) || fs::is_directory(workdir), "workdir ",
              config.workdir, " is a file, not a directory; pass --workdir a new or existing directory");
  IMP_REQUIRE(ConfigError, options.resume.empty() || options.init_from.empty(),
              "--resume and --init-from exclude each other: a resumed run already has its weights");
  std::string checkpoint;
  bool overwrite_checkpoints = false;
  if (options.resume == "latest") {
    const std::vector<CheckpointInfo> checkpoints = list_checkpoints(config.workdir);
    IMP_REQUIRE(ConfigError, !checkpoints.empty(), "--resume: no checkpoint in ",
                (workdir / "checkpoints").string(), "; start without --resume, or pass a checkpoint folder");
    checkpoint = checkpoints.back().path;
  } else if (!options.resume.empty()) {
    checkpoint = options.resume;
    // A bare folder name is looked up under the workdir's checkpoints.
    const fs::path under_workdir = workdir / "checkpoints" / options.resume;
    if (!fs::exists(checkpoint) && fs::is_directory(under_workdir)) checkpoint = under_workdir.string();
    IMP_REQUIRE(ConfigError, fs::is_directory(checkpoint), "--resume: checkpoint folder ", options.resume,
                " not found; pass a folder under ", (workdir / "checkpoints").string(),
                " or --resume alone for the newest");
  } else if (!list_checkpoints(config.workdir).empty()) {
    IMP_REQUIRE(ConfigError, options.overwrite, "workdir ", config.workdir,
                " holds checkpoints of an earlier run; pass --resume to continue it, --overwrite to ",
                "start again there (deleting them), or choose another --workdir");
    overwrite_checkpoints = true;
  }
  // Check the files named on the command line before anything is loaded or
  // written: a typo should fail at once and leave the workdir as it was.
  if (!checkpoint.empty()) {
    for (const char* file : {"model.safetensors", "training_state.safetensors"}) {
      const fs::path path = fs::path(checkpoint) / file;
      IMP_REQUIRE(DataError, fs::exists(path), "checkpoint ", checkpoint, " has no ", file,
                  "; it is incomplete, resume from an older one");
      load_safetensors(path.string());
    }
  }
  if (!options.init_from.empty()) load_safetensors(resolve_weights_file(options.init_from));

  // Several processes (torchrun, srun, mpirun): one process group, and
  // rank 0 writes the run's files.
  const dist::LaunchEnvironment launch = dist::detect_launch_environment();
  std::shared_ptr<dist::ProcessGroup> group;
  if (launch.world_size > 1) {
    dist::ProcessGroupOptions group_options;
    group_options.timeout = std::chrono::seconds(config.train.collective_timeout);
    // NCCL for CUDA tensors where this build has it; Gloo otherwise.
    if (default_device().is_cuda() && dist::nccl_available()) group_options.device_type = c10::kCUDA;
    group = std::make_shared<dist::ProcessGroup>(launch, group_options);
    std::printf("distributed: %s\n", launch.describe().c_str());
  }
  const bool primary = group == nullptr || group->rank() == 0;

  if (primary) {
    fs::create_directories(workdir);
    if (overwrite_checkpoints) fs::remove_all(workdir / "checkpoints");
  }
  Config run_config = config;
  if (!checkpoint.empty() && run_config.tokenizer.model.empty() &&
      fs::exists(fs::path(checkpoint) / "tokenizer.model")) {
    // The tokenizer the checkpoint was trained with, read from the
    // checkpoint (rank 0 keeps a copy beside config.yaml, since a later
    // checkpoint may replace this one).
    run_config.tokenizer.model = (fs::path(checkpoint) / "tokenizer.model").string();
    if (primary) {
      fs::copy_file(fs::path(checkpoint) / "tokenizer.model", workdir / "tokenizer.model",
                    fs::copy_options::overwrite_existing);
      run_config.tokenizer.model = (workdir / "tokenizer.model").string();
    }
  }
  if (primary) write_file_atomically(workdir / "config.yaml", to_yaml(run_config));

  // Read the test splits now: a broken file should stop the run before
  // training, not after it.
  for (const DatasetConfig& dataset : run_config.datasets) {
    load_dataset(dataset, run_config.model, /*train=*/false, run_config.cache_dir);
  }

  Trainer trainer(run_config);
  // Processes started together on one machine share its cores.
  if (group) set_intra_op_threads(run_config.train.threads, launch.local_world_size.value_or(1));
  std::printf("model: preset %s, %lld parameters, %zu MoE layers, device %s, %s\n",
              run_config.model.preset.c_str(), static_cast<long long>(count_parameters(trainer.model())),
              trainer.model()->encoder()->moe_layers().size(), trainer.device().str().c_str(),
              run_config.train.dtype.c_str());
  std::printf("threads: %s\n", thread_settings().c_str());
  if (!checkpoint.empty()) trainer.resume(checkpoint);
  if (!options.init_from.empty()) trainer.init_from(options.init_from);
  if (group) {
    trainer.set_process_group(group);
  } else if (run_config.train.expert_parallel) {
    std::printf("note: train.expert_parallel shards experts across processes; this run has one, "
                "which holds them all\n");
  }
  trainer.set_eval_hook([&](int64_t step) {
    if (primary) std::printf("evaluating at step %lld\n", static_cast<long long>(step));
    std::map<std::string, double> metrics =
        evaluate(trainer.model(), run_config, trainer.tokenizer(), trainer.device(), group.get());
    if (primary) print_results(metrics);
    return metrics;
  });
  TrainSummary summary = trainer.train();
  std::printf("trained %lld step%s in %.1f s (%.1f%% waiting for data)", static_cast<long long>(summary.steps),
              summary.steps == 1 ? "" : "s", summary.session_seconds,
              100.0 * summary.data_wait_seconds / std::max(1e-9, summary.session_seconds));
  if (trainer.start_step() > 0) {
    std::printf("; %.1f s of training since step 0, over all sessions", summary.train_seconds);
  }
  std::printf("\n");
  if (!primary) {
    // Rank 0 saves the weights; every rank evaluates its part of the test
    // sets, and rank 0 writes the results.
    evaluate(trainer.model(), run_config, trainer.tokenizer(), trainer.device(), group.get());
    std::printf("rank %d of %d: done\n", group->rank(), group->world_size());
    return {};
  }
  print_signatures(summary.signatures);
  print_cpu_cache();
  write_signatures(workdir / "signatures.json", summary.signatures);
  for (const auto& [name, data] : trainer.datasets()) {
    if (data->failures() != nullptr && data->failures()->failures() > 0) {
      std::printf("data: %s\n", data->failures()->summary().c_str());
    }
  }

  save_safetensors((workdir / "model.safetensors").string(), model_tensors(trainer.model()),
                   {{"format", "pt"}});
  // The run directory carries its own tokenizer, so evaluation never depends
  // on the cache.
  const fs::path tokenizer_copy = workdir / "tokenizer.model";
  if (!fs::exists(tokenizer_copy) || !fs::equivalent(trainer.tokenizer_path(), tokenizer_copy)) {
    fs::copy_file(trainer.tokenizer_path(), tokenizer_copy, fs::copy_options::overwrite_existing);
  }
  const RoutingStats& routing = trainer.model()->routing_stats();
  write_file_atomically(workdir / "routing.json", routing.to_json().dump(2) + "\n");
  std::printf("%s", routing.report().c_str());

  std::map<std::string, double> metrics =
      evaluate(trainer.model(), run_config, trainer.tokenizer(), trainer.device(), group.get());
  append_eval_record(workdir / "evals.jsonl", run_config.train.steps, metrics);
  if (run_config.train.tensorboard) {
    EventWriter events((workdir / "tensorboard").string());
    for (const auto& [name, value] : metrics) events.add_scalar("eval/" + name, value, run_config.train.steps);
  }
  metrics["train_seconds"] = summary.train_seconds;
  write_metrics(workdir / "eval.json", metrics);
  print_results(metrics);
  std::printf("wrote %s\n", (workdir / "eval.json").c_str());
  return metrics;
}

Config load_run_config(const std::string& dir_name, const std::vector<std::string>& overrides) {
  const fs::path dir(dir_name);
  const fs::path config_path = dir / "config.yaml";
  IMP_REQUIRE(ConfigError, !fs::exists(dir) || fs::is_directory(dir), dir_name,
              " is a file, not a run directory; pass the --workdir of an `imp train` run");
  IMP_REQUIRE(ConfigError, fs::exists(dir), dir_name, " not found; pass the --workdir of an `imp train` run");
  IMP_REQUIRE(ConfigError, fs::exists(config_path), "no config.yaml in ", dir_name,
              "; pass the --workdir of an `imp train` run or a checkpoint folder");
  std::vector<std::string> all_overrides = overrides;
  if (fs::exists(dir / "tokenizer.model")) {
    all_overrides.push_back(string_override("tokenizer.model", (dir / "tokenizer.model").string()));
  }
  return load_config(config_path.string(), all_overrides);
}

Config config_for_weights(const std::string& weights, const std::string& config_path,
                          const std::vector<std::string>& overrides) {
  if (!config_path.empty()) return load_config(config_path, overrides);
  IMP_REQUIRE(ConfigError, fs::exists(weights), "no file or folder ", weights,
              "; pass a run directory, a checkpoint folder or a .safetensors file");
  const fs::path dir = fs::is_directory(weights) ? fs::path(weights) : fs::path(weights).parent_path();
  if (fs::exists(dir / "config.yaml")) {
    Config config = load_run_config(dir.string(), overrides);
    // A run directory's config names the run's workdir; keep it.
    return config;
  }
  throw ConfigError(str_cat("no config.yaml beside ", weights, "; pass the config it was trained with: ",
                            "imp eval CONFIG --weights ", weights, ", or --config CONFIG for imp embed ",
                            "and imp classify"));
}

std::map<std::string, double> run_eval(const std::string& weights, const Config& config) {
  set_intra_op_threads(config.train.threads);
  use_caching_cpu_allocator(cpu_cache_limit_bytes(config.train.cpu_cache_mb));
  std::printf("threads: %s\n", thread_settings().c_str());
  InferenceModel loaded = load_for_inference(weights, config);

  const bool folder = fs::is_directory(weights);
  const fs::path eval_path = fs::path(weights) / "eval.json";
  std::map<std::string, double> metrics = folder ? read_metrics(eval_path) : std::map<std::string, double>{};
  for (const auto& [name, value] : evaluate(loaded.model, config, loaded.tokenizer, loaded.device)) {
    metrics[name] = value;
  }
  print_results(metrics);
  if (folder) {
    write_metrics(eval_path, metrics);
    std::printf("wrote %s\n", eval_path.c_str());
  } else {
    std::printf("(no eval.json written: the results are kept only for a run directory or "
                "checkpoint folder)\n");
  }
  return metrics;
}

}  // namespace imp
