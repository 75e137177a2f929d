#include "imp/train/run.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "imp/core/error.h"
#include "imp/core/threads.h"
#include "imp/eval/evaluator.h"
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

}  // namespace

std::map<std::string, double> run_train(const Config& config) {
  const fs::path workdir(config.workdir);
  IMP_REQUIRE(ConfigError, !fs::exists(workdir) || fs::is_directory(workdir), "workdir ",
              config.workdir, " is a file, not a directory; pass --workdir a new or existing directory");
  fs::create_directories(workdir);
  write_file_atomically(workdir / "config.yaml", to_yaml(config));

  // Read the test splits now: a broken file should stop the run before
  // training, not after it.
  for (const DatasetConfig& dataset : config.datasets) {
    load_dataset(dataset, config.model, /*train=*/false, config.cache_dir);
  }

  Trainer trainer(config);
  std::printf("model: preset %s, %lld parameters, %zu MoE layers, device %s, %s\n",
              config.model.preset.c_str(), static_cast<long long>(count_parameters(trainer.model())),
              trainer.model()->encoder()->moe_layers().size(), trainer.device().str().c_str(),
              config.train.dtype.c_str());
  std::printf("threads: %s\n", thread_settings().c_str());
  TrainSummary summary = trainer.train();
  std::printf("trained %lld steps in %.1f s (%.1f%% waiting for data)\n",
              static_cast<long long>(summary.steps), summary.train_seconds,
              100.0 * summary.data_wait_seconds / std::max(1e-9, summary.train_seconds));
  for (const auto& [name, data] : trainer.datasets()) {
    if (data->failures() != nullptr && data->failures()->failures() > 0) {
      std::printf("data: %s\n", data->failures()->summary().c_str());
    }
  }

  torch::save(trainer.model(), (workdir / "model.pt").string());
  // The run directory carries its own tokenizer, so evaluation never depends
  // on the cache.
  fs::copy_file(trainer.tokenizer_path(), workdir / "tokenizer.model",
                fs::copy_options::overwrite_existing);
  const RoutingStats& routing = trainer.model()->routing_stats();
  write_file_atomically(workdir / "routing.json", routing.to_json().dump(2) + "\n");
  std::printf("%s", routing.report().c_str());

  std::map<std::string, double> metrics =
      evaluate(trainer.model(), config, trainer.tokenizer(), trainer.device());
  metrics["train_seconds"] = summary.train_seconds;
  write_metrics(workdir / "eval.json", metrics);
  print_results(metrics);
  std::printf("wrote %s\n", (workdir / "eval.json").c_str());
  return metrics;
}

Config load_run_config(const std::string& workdir, const std::vector<std::string>& overrides) {
  const fs::path dir(workdir);
  const fs::path config_path = dir / "config.yaml";
  IMP_REQUIRE(ConfigError, !fs::exists(dir) || fs::is_directory(dir), "workdir ", workdir,
              " is a file, not a run directory; pass the --workdir of a finished `imp train` run");
  IMP_REQUIRE(ConfigError, fs::exists(config_path), "no config.yaml in ", workdir,
              "; pass the --workdir of a finished `imp train` run");
  IMP_REQUIRE(ConfigError, fs::exists(dir / "model.pt"), "no model.pt in ", workdir,
              "; the training run did not finish, run `imp train` again");
  std::vector<std::string> all_overrides = overrides;
  all_overrides.push_back(string_override("workdir", workdir));
  if (fs::exists(dir / "tokenizer.model")) {
    all_overrides.push_back(string_override("tokenizer.model", (dir / "tokenizer.model").string()));
  }
  return load_config(config_path.string(), all_overrides);
}

std::map<std::string, double> run_eval(const std::string& workdir,
                                       const std::vector<std::string>& overrides) {
  const fs::path dir(workdir);
  const fs::path weights = dir / "model.pt";
  Config config = load_run_config(workdir, overrides);
  set_intra_op_threads(config.train.threads);
  std::printf("threads: %s\n", thread_settings().c_str());

  std::map<std::string, std::shared_ptr<const Dataset>> tests;
  std::vector<std::shared_ptr<const Dataset>> in_order;
  for (const DatasetConfig& dataset : config.datasets) {
    in_order.push_back(load_dataset(dataset, config.model, /*train=*/false, config.cache_dir));
    tests[dataset.name] = in_order.back();
  }
  const std::map<std::string, int64_t> heads = classifier_heads(config, tests);
  // Without tokenizer.model in the run directory the tokenizer is trained on
  // the same corpus as in training, which gives the same model.
  Tokenizer tokenizer = Tokenizer::load(prepare_tokenizer(config, text_corpus(in_order)));
  ImpModel model(config.model, tokenizer.vocab_size(), heads);
  try {
    torch::load(model, weights.string());
  } catch (const c10::Error& e) {
    throw DataError(str_cat("failed to load the weights in ", weights.string(), ": ",
                            e.what_without_backtrace(),
                            ". The file is damaged or from a different model config; "
                            "train the run again"));
  }
  const c10::Device device = default_device();
  model->to(device);

  std::map<std::string, double> metrics = read_metrics(dir / "eval.json");
  for (const auto& [name, value] : evaluate(model, config, tokenizer, device)) metrics[name] = value;
  write_metrics(dir / "eval.json", metrics);
  print_results(metrics);
  return metrics;
}

}  // namespace imp
