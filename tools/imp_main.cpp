// imp: train and evaluate Integrated Multimodal Perception models.
//
//   imp train [CONFIG] [--workdir DIR] [--set key=value ...]
//   imp eval --workdir DIR [--set key=value ...]
//   imp data inspect PATH... [--json]
//   imp data make-shards MANIFEST --out DIR [--prefix NAME] [--samples-per-shard N]
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "imp/config/config.h"
#include "imp/core/error.h"
#include "imp/core/threads.h"
#include "imp/data/data_tools.h"
#include "imp/train/run.h"

namespace {

int fail(const std::string& kind, const std::string& message) {
  std::fprintf(stderr, "imp: %s: %s\n", kind.c_str(), message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "imp: train and evaluate Integrated Multimodal Perception models (one shared "
      "Mixture-of-Experts Transformer for image, video, audio and text, trained by "
      "alternating gradient descent)."};
  app.require_subcommand(1);

  std::string config_path = "configs/default.yaml";
  std::string workdir;
  std::vector<std::string> overrides;

  CLI::App* train = app.add_subcommand(
      "train", "Train on the tasks of CONFIG, then evaluate. Writes config.yaml, "
               "train_log.jsonl, model.pt, tokenizer.model, routing.json and eval.json "
               "into the run directory.");
  train->add_option("config", config_path, "YAML config file")
      ->capture_default_str()
      ->check(CLI::ExistingFile);
  train->add_option("--workdir", workdir,
                    "run directory for outputs (default: the config's workdir key)");
  train->add_option("--set", overrides,
                    "override a config value, e.g. --set train.steps=200 or "
                    "--set tasks.fmnist_cls.batch_size=64 (repeatable; applied in order)");

  CLI::App* eval = app.add_subcommand(
      "eval", "Evaluate the model of a finished run directory on the test split "
              "and rewrite its eval.json.");
  eval->add_option("--workdir", workdir, "run directory written by `imp train`")->required();
  eval->add_option("--set", overrides,
                   "override a value of the run's config, e.g. --set eval.batch_size=250 "
                   "(repeatable)");

  CLI::App* data = app.add_subcommand("data", "Inspect a data set, or pack files into tar shards.");
  data->require_subcommand(1);
  std::vector<std::string> data_paths;
  bool as_json = false;
  CLI::App* inspect = data->add_subcommand(
      "inspect", "Decode every sample of tar shards (paths or brace patterns) or manifests "
                 "(.csv, .jsonl) and report counts per modality, sizes, durations and failures "
                 "per reason. Exits with 1 when any sample failed.");
  inspect->add_option("paths", data_paths, "shards, brace patterns or manifest files")->required();
  inspect->add_flag("--json", as_json, "print one JSON object instead of text");
  imp::MakeShardsOptions shard_options;
  CLI::App* make_shards = data->add_subcommand(
      "make-shards", "Pack the files a manifest lists into WebDataset tar shards. Exits with 1 "
                     "when a row was skipped (its shards are still written).");
  make_shards->add_option("manifest", shard_options.manifest, "a .csv or .jsonl manifest")
      ->required()
      ->check(CLI::ExistingFile);
  make_shards->add_option("--out", shard_options.out_dir, "folder for the shards")->required();
  make_shards->add_option("--prefix", shard_options.prefix, "shard name prefix")->capture_default_str();
  make_shards->add_option("--samples-per-shard", shard_options.samples_per_shard,
                          "samples in each shard")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help ends here with status 0. Usage errors print CLI11's message and
    // exit with 2, like every other bad input.
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    // The thread settings depend on the config's dtype, so the config is
    // read (and checked) once before the process re-executes itself with
    // them, and once more after.
    if (inspect->parsed()) {
      const nlohmann::json report = imp::inspect_data(data_paths);
      if (as_json) {
        std::cout << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
      } else {
        std::cout << imp::format_inspection(report) << std::flush;
      }
      return report["failures"].empty() ? 0 : 1;
    }
    if (make_shards->parsed()) {
      const imp::MakeShardsResult result = imp::make_shards(shard_options);
      for (const std::string& problem : result.problems) std::cerr << "warning: " << problem << "\n";
      std::cout << "wrote " << result.samples << (result.samples == 1 ? " sample" : " samples")
                << " into " << result.shards.size() << (result.shards.size() == 1 ? " shard: " : " shards: ")
                << result.pattern << "\n";
      if (result.skipped > 0) {
        std::cout << "skipped " << result.skipped << (result.skipped == 1 ? " row" : " rows")
                  << " (see the warnings above)\n";
      }
      return result.samples > 0 && result.skipped == 0 ? 0 : 1;
    }
    if (train->parsed()) {
      if (!workdir.empty()) overrides.push_back(imp::string_override("workdir", workdir));
      const imp::Config config = imp::load_config(config_path, overrides);
      imp::reexec_with_thread_environment(config.train.dtype, argv);
      imp::run_train(config);
    } else {
      imp::reexec_with_thread_environment(imp::load_run_config(workdir, overrides).train.dtype,
                                          argv);
      imp::run_eval(workdir, overrides);
    }
  } catch (const imp::ConfigError& e) {
    return fail("config error", e.what());
  } catch (const imp::DataError& e) {
    return fail("data error", e.what());
  } catch (const imp::TrainingError& e) {
    return fail("training stopped", e.what());
  } catch (const c10::Error& e) {
    return fail("error", e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail("error", e.what());
  }
  return 0;
}
