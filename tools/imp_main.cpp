// imp: train and evaluate Integrated Multimodal Perception models.
//
//   imp train [CONFIG] [--workdir DIR] [--set key=value ...]
//   imp eval --workdir DIR [--set key=value ...]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "imp/config/config.h"
#include "imp/core/error.h"
#include "imp/core/threads.h"
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
