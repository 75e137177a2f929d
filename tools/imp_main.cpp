// imp: train and evaluate Integrated Multimodal Perception models.
//
//   imp train [CONFIG] [--workdir DIR] [--set key=value ...]
//             [--resume [CHECKPOINT] | --init-from WEIGHTS] [--overwrite]
//   imp eval [CONFIG] (--workdir DIR | --weights PATH) [--set key=value ...]
//   imp report RUN_DIR
//   imp embed (--workdir DIR | --weights PATH) --out FILE [--text TEXT ...] [FILES...]
//   imp classify (--workdir DIR | --weights PATH) --labels FILE [--top K] FILES...
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
#include "imp/infer/embed.h"
#include "imp/infer/inference.h"
#include "imp/report/report.h"
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
               "train_log.jsonl, metrics.jsonl, evals.jsonl, tensorboard/, checkpoints/, "
               "model.safetensors, tokenizer.model, routing.json and eval.json into the run "
               "directory.");
  CLI::Option* train_config = train->add_option("config", config_path, "YAML config file")
                                  ->capture_default_str()
                                  ->check(CLI::ExistingFile);
  train->add_option("--workdir", workdir,
                    "run directory for outputs (default: the config's workdir key)");
  train->add_option("--set", overrides,
                    "override a config value, e.g. --set train.steps=200 or "
                    "--set tasks.fmnist_cls.batch_size=64 (repeatable; applied in order)");
  imp::TrainOptions train_options;
  CLI::Option* resume =
      train->add_option("--resume", train_options.resume,
                        "continue from a checkpoint folder, or from the newest one under "
                        "WORKDIR/checkpoints when none is named. Without CONFIG the run's own "
                        "config.yaml is used; --set may change it, e.g. train.steps")
          ->expected(0, 1)
          ->default_str("latest");
  train->add_option("--init-from", train_options.init_from,
                    "start from these weights (a run directory, checkpoint folder or "
                    ".safetensors file) with a fresh optimizer, to fine-tune; classifier heads "
                    "the weights lack start fresh");
  train->add_flag("--overwrite", train_options.overwrite,
                  "start at step 0 even if WORKDIR holds checkpoints of an earlier run "
                  "(they are deleted)");

  CLI::App* eval = app.add_subcommand(
      "eval", "Evaluate trained weights on the test splits of their config. For a run "
              "directory or checkpoint folder, rewrite its eval.json.");
  std::string eval_config;
  std::string weights;
  eval->add_option("config", eval_config,
                   "YAML config (default: the config.yaml beside the weights)")
      ->check(CLI::ExistingFile);
  CLI::Option* eval_workdir =
      eval->add_option("--workdir", workdir, "run directory written by `imp train`");
  CLI::Option* eval_weights = eval->add_option(
      "--weights", weights, "a checkpoint folder, run directory or .safetensors file");
  eval_workdir->excludes(eval_weights);
  eval->add_option("--set", overrides,
                   "override a value of the config, e.g. --set eval.batch_size=250 "
                   "(repeatable)");

  CLI::App* report = app.add_subcommand(
      "report", "Write RUN_DIR/report.html: loss curves per task, evaluation metrics over "
                "time and the expert-by-modality routing heatmaps, in one page that works "
                "offline.");
  std::string report_dir;
  report->add_option("run_dir", report_dir, "run directory written by `imp train`")->required();

  // embed and classify share how the weights and their config are named.
  std::string infer_config;
  std::vector<std::string> inputs;
  auto add_weights_options = [&](CLI::App* command) {
    CLI::Option* dir = command->add_option("--workdir", workdir, "run directory written by `imp train`");
    CLI::Option* file = command->add_option(
        "--weights", weights, "a checkpoint folder, run directory or .safetensors file");
    dir->excludes(file);
    command->add_option("--config", infer_config,
                        "YAML config of the weights (default: the config.yaml beside them)")
        ->check(CLI::ExistingFile);
    command->add_option("--set", overrides, "override a value of the config (repeatable)");
  };
  CLI::App* embed = app.add_subcommand(
      "embed", "Embed images, videos, audio files and texts into the model's shared space. "
               "The modality comes from each file's extension; files are decoded as the "
               "test split of the data the model learnt them from.");
  add_weights_options(embed);
  std::string embed_out;
  std::vector<std::string> texts;
  embed->add_option("files", inputs, "image, video or audio files")->check(CLI::ExistingFile);
  embed->add_option("--text", texts, "a text to embed (repeatable); rows follow the files");
  embed->add_option("--out", embed_out,
                    "output: .npy (an [N, P] float32 matrix) or .safetensors (\"embedding\", "
                    "\"pooled\", and the inputs in its metadata)")
      ->required();

  CLI::App* classify = app.add_subcommand(
      "classify", "Zero-shot classification: compare each file with text prompts built from "
                  "the class names in --labels, and print the top classes with probabilities.");
  add_weights_options(classify);
  std::string labels_path;
  std::vector<std::string> prompts;
  int top_k = 5;
  classify->add_option("files", inputs, "image, video or audio files")
      ->required()
      ->check(CLI::ExistingFile);
  classify->add_option("--labels", labels_path,
                       "class names, one per line; blank lines and lines starting with # are skipped")
      ->required()
      ->check(CLI::ExistingFile);
  classify->add_option("--prompt", prompts,
                       "a prompt template with {} for the class name, e.g. \"a photo of a {}\" "
                       "(repeatable; default: the config's eval.prompts or the built-in ones)");
  classify->add_option("--top", top_k, "classes printed per file")->capture_default_str()->check(
      CLI::PositiveNumber);

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
    if (report->parsed()) {
      const std::string page = imp::write_report(report_dir);
      std::cout << "wrote " << page << "\n";
      return 0;
    }
    if (embed->parsed() || classify->parsed()) {
      if (workdir.empty() && weights.empty()) {
        return fail("usage error", "pass the model with --workdir DIR or --weights PATH");
      }
      const std::string source = weights.empty() ? workdir : weights;
      const imp::Config config = !workdir.empty() && infer_config.empty()
                                     ? imp::load_run_config(workdir, overrides)
                                     : imp::config_for_weights(source, infer_config, overrides);
      imp::reexec_with_thread_environment(config.train.dtype, argv);
      imp::set_intra_op_threads(config.train.threads);
      imp::InferenceModel loaded = imp::load_for_inference(source, config);
      if (embed->parsed()) {
        const imp::Embeddings embeddings = imp::embed_inputs(loaded, config, inputs, texts);
        imp::write_embeddings(embed_out, embeddings);
        for (size_t i = 0; i < embeddings.inputs.size(); ++i) {
          std::cout << i << "\t" << embeddings.modalities[i] << "\t" << embeddings.inputs[i] << "\n";
        }
        std::cout << "wrote " << embeddings.embedding.size(0) << " x " << embeddings.embedding.size(1)
                  << " embeddings to " << embed_out << "\n";
      } else {
        const std::vector<std::string> classes = imp::read_class_names(labels_path);
        for (const imp::Classification& item :
             imp::classify_files(loaded, config, inputs, classes, prompts, top_k)) {
          std::cout << item.input << "\n";
          for (const auto& [name, probability] : item.top) {
            char line[64];
            std::snprintf(line, sizeof(line), "  %6.2f%%  ", 100.0 * probability);
            std::cout << line << name << "\n";
          }
        }
      }
      return 0;
    }
    if (train->parsed()) {
      imp::Config config;
      if (resume->count() > 0 && train_config->count() == 0) {
        // Resuming without a config: the run's own, from its workdir.
        const std::string dir = workdir.empty() ? imp::load_config(config_path, {}).workdir : workdir;
        config = imp::load_run_config(dir, overrides);
        config.workdir = dir;
      } else {
        if (!workdir.empty()) overrides.push_back(imp::string_override("workdir", workdir));
        config = imp::load_config(config_path, overrides);
      }
      imp::reexec_with_thread_environment(config.train.dtype, argv);
      imp::run_train(config, train_options);
    } else {
      if (workdir.empty() && weights.empty()) {
        return fail("usage error", "imp eval needs --workdir DIR or --weights PATH");
      }
      const std::string source = weights.empty() ? workdir : weights;
      const imp::Config config = !workdir.empty() && eval_config.empty()
                                     ? imp::load_run_config(workdir, overrides)
                                     : imp::config_for_weights(source, eval_config, overrides);
      imp::reexec_with_thread_environment(config.train.dtype, argv);
      imp::run_eval(source, config);
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
