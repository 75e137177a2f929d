// The imp executable run as a real child process, as a user runs it.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <vector>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_support.h"

namespace {

namespace fs = std::filesystem;
using imp::testing::ScratchDir;
using imp::testing::Result;
using imp::testing::default_config;
using imp::testing::run_imp;
using imp::testing::write_colour_shards;

TEST(Cli, HelpDocumentsFlags) {
  Result result = run_imp("train --help");
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_NE(result.output.find("--workdir"), std::string::npos);
  EXPECT_NE(result.output.find("--set"), std::string::npos);
}

TEST(Cli, UnknownKeySuggestsNearest) {
  ScratchDir scratch("imp_cli_unknown_key");
  fs::path dir(scratch.path());
  std::ifstream in(default_config());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The train.steps key, indented under `train:`; comments elsewhere may mention "steps".
  const size_t key = text.find("\n  steps: ");
  ASSERT_NE(key, std::string::npos);
  text.replace(key, 8, "\n  stesp:");
  std::ofstream((dir / "bad.yaml").string()) << text;

  Result result = run_imp("train " + (dir / "bad.yaml").string());
  EXPECT_EQ(result.status, 2);
  EXPECT_NE(result.output.find("stesp"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("steps"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("Exception raised from"), std::string::npos) << "no stack dump";
}

TEST(Cli, BadOverrideNamesKey) {
  Result result = run_imp("train " + default_config() + " --set train.steps=many");
  EXPECT_EQ(result.status, 2);
  EXPECT_NE(result.output.find("train.steps"), std::string::npos) << result.output;
}

TEST(Cli, MissingConfigFileNamed) {
  Result result = run_imp("train /nonexistent/imp.yaml");
  EXPECT_EQ(result.status, 2);
  EXPECT_NE(result.output.find("/nonexistent/imp.yaml"), std::string::npos) << result.output;
}

TEST(Cli, WorkdirThatIsAFileRejected) {
  ScratchDir scratch("imp_cli_file_workdir");
  const fs::path file = fs::path(scratch.path()) / "run";
  std::ofstream(file) << "not a directory\n";
  for (const std::string& command :
       {"train " + default_config() + " --workdir " + file.string(),
        "eval --workdir " + file.string()}) {
    Result result = run_imp(command);
    EXPECT_EQ(result.status, 2) << command;
    EXPECT_NE(result.output.find("is a file"), std::string::npos) << result.output;
  }
  std::ifstream kept(file);
  std::string line;
  std::getline(kept, line);
  EXPECT_EQ(line, "not a directory");
}

TEST(Cli, EvalWithoutRunExplains) {
  ScratchDir scratch("imp_cli_empty_run");
  fs::path dir(scratch.path());
  Result result = run_imp("eval --workdir " + dir.string());
  EXPECT_EQ(result.status, 2);
  EXPECT_NE(result.output.find("config.yaml"), std::string::npos) << result.output;
}

// A short real run of the default config (images, videos, speech and text),
// made smaller, then `imp eval` on its directory.
TEST(Cli, TrainThenEvalShortRun) {
  ScratchDir scratch("imp_cli_short_run");
  fs::path dir(scratch.path());
  std::string sets =
      " --set train.steps=12 --set train.log_every=4 --set train.optimizer.warmup_steps=2"
      " --set model.num_layers=2 --set eval.linear_probe_examples=300"
      " --set eval.linear_probe_steps=20 --set cache_dir=" + (dir / "cache").string();
  for (const char* dataset : {"fmnist", "fmnist_video", "fmnist_audio"}) {
    sets += std::string(" --set datasets.") + dataset + ".eval_examples=300";
    sets += std::string(" --set datasets.") + dataset + ".renditions=1";
  }
  sets += " --set datasets.fmnist_video.eval_clips=2";
  Result train = run_imp("train " + default_config() + " --workdir " + (dir / "run").string() + sets);
  ASSERT_EQ(train.status, 0) << train.output;

  std::ifstream eval_file(dir / "run" / "eval.json");
  ASSERT_TRUE(eval_file.good());
  nlohmann::json metrics = nlohmann::json::parse(eval_file);
  for (const char* key :
       {"fmnist/head_top1", "fmnist/zeroshot_top1", "fmnist/i2t_r1", "fmnist/t2i_r1",
        "fmnist/i2t_r5", "fmnist/linear_probe_top1", "fmnist_video/item_zeroshot_top1",
        "fmnist_video/motion_top1", "fmnist_video/item_top1", "fmnist_video/v2t_r1",
        "fmnist_video/v2a_r1", "fmnist_audio/zeroshot_top1", "fmnist_audio/a2t_r1",
        "fmnist_audio/head_top1", "train_seconds"}) {
    ASSERT_TRUE(metrics.contains(key)) << key << " missing from " << metrics.dump();
  }
  // Twelve steps already learn something: the head beats chance (0.1).
  EXPECT_GT(metrics["fmnist/head_top1"].get<double>(), 0.2);
  std::ifstream routing_file(dir / "run" / "routing.json");
  ASSERT_TRUE(routing_file.good());
  nlohmann::json routing = nlohmann::json::parse(routing_file);
  ASSERT_FALSE(routing["layers"].empty());
  for (const char* modality : {"image", "video", "audio", "text"}) {
    // Twelve steps may not draw every task; the default mix draws images first.
    if (std::string(modality) != "image" && !routing["layers"][0]["modalities"].contains(modality)) continue;
    EXPECT_EQ(routing["layers"][0]["modalities"][modality]["top_choice_share"].size(), 4u) << modality;
  }
  EXPECT_NE(train.output.find("routing, MoE layer"), std::string::npos) << train.output;
  EXPECT_TRUE(fs::exists(dir / "run" / "config.yaml"));
  EXPECT_TRUE(fs::exists(dir / "run" / "tokenizer.model"));

  std::ifstream log(dir / "run" / "train_log.jsonl");
  int lines = 0;
  for (std::string line; std::getline(log, line);) ++lines;
  EXPECT_EQ(lines, 12);

  // Evaluation of the saved run reproduces the numbers computed in training.
  // Without thread settings in the environment the process re-executes
  // itself with those for the run's dtype (bf16).
  const std::string unset_threads = "env -u OMP_WAIT_POLICY -u OPENBLAS_NUM_THREADS ";
  Result eval = run_imp("eval --workdir " + (dir / "run").string(), unset_threads);
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_NE(eval.output.find("OMP_WAIT_POLICY (unset), OPENBLAS_NUM_THREADS=1"), std::string::npos)
      << eval.output;
  std::ifstream again_file(dir / "run" / "eval.json");
  nlohmann::json again = nlohmann::json::parse(again_file);
  EXPECT_NEAR(again["fmnist/head_top1"].get<double>(), metrics["fmnist/head_top1"].get<double>(),
              1e-9);
  EXPECT_NEAR(again["fmnist/zeroshot_top1"].get<double>(),
              metrics["fmnist/zeroshot_top1"].get<double>(), 1e-9);
  EXPECT_DOUBLE_EQ(again["train_seconds"].get<double>(), metrics["train_seconds"].get<double>());
}

TEST(Cli, TrainsOnWebDatasetShards) {
  ScratchDir scratch("imp_cli_shards");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  std::ofstream(dir / "shards.yaml") << "workdir: " << (dir / "run").string() << "\n"
      << "cache_dir: " << (dir / "cache").string() << "\n"
      << "model: {preset: tiny, num_layers: 2, vision: {channels: 3, patch: [1, 8, 8], grid: [1, 2, 2]}}\n"
      << "datasets:\n"
      << "  - {name: colours, type: webdataset, train: [\"" << (dir / "train-{000000..000001}.tar").string()
      << "\"], test: [\"" << (dir / "test-000000.tar").string() << "\"], max_bad_fraction: 0.3}\n"
      << "tasks:\n"
      << "  - {name: colours_cls, dataset: colours, modalities: [image], objective: softmax_ce, batch_size: 8}\n"
      << "  - {name: colours_text, dataset: colours, modalities: [image, text], objective: nce, batch_size: 8}\n"
      << "train: {steps: 30, log_every: 10, workers: 2, optimizer: {lr: 0.003, warmup_steps: 2}}\n"
      << "eval: {linear_probe_examples: 20, linear_probe_steps: 20}\n";
  Result train = run_imp("train " + (dir / "shards.yaml").string());
  ASSERT_EQ(train.status, 0) << train.output;
  // The broken sample was skipped and reported, not fed as zeros.
  EXPECT_NE(train.output.find("image: unknown format"), std::string::npos) << train.output;
  std::ifstream eval_file(dir / "run" / "eval.json");
  ASSERT_TRUE(eval_file.good());
  nlohmann::json metrics = nlohmann::json::parse(eval_file);
  ASSERT_TRUE(metrics.contains("colours/head_top1")) << metrics.dump();
  ASSERT_TRUE(metrics.contains("colours/i2t_r1")) << metrics.dump();
  // Three solid colours are easy: thirty steps separate them.
  EXPECT_GT(metrics["colours/head_top1"].get<double>(), 0.9) << metrics.dump();

  // The classes were taken from the train split and remembered.
  bool remembered = false;
  for (const auto& entry : fs::directory_iterator(dir / "cache" / "labels")) {
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    remembered = remembered || text == "blue\ngreen\nred\n";
  }
  EXPECT_TRUE(remembered);
}

TEST(Cli, DataInspectReportsFailuresAndExitsNonZero) {
  ScratchDir scratch("imp_cli_inspect");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  Result clean = run_imp("data inspect " + (dir / "test-000000.tar").string());
  EXPECT_EQ(clean.status, 0) << clean.output;
  EXPECT_NE(clean.output.find("12 samples"), std::string::npos) << clean.output;
  EXPECT_NE(clean.output.find("no failures"), std::string::npos) << clean.output;

  Result broken = run_imp("data inspect --json '" + (dir / "train-{000000..000001}.tar").string() + "'");
  EXPECT_EQ(broken.status, 1) << broken.output;
  nlohmann::json report = nlohmann::json::parse(broken.output);
  EXPECT_EQ(report["samples"], 24);
  EXPECT_EQ(report["modalities"]["image"]["failed"], 1);
  EXPECT_EQ(report["failures"]["image: unknown format"], 1);
  EXPECT_EQ(report["classes"], 3);

  // make-shards writes what it can and exits with 1 when a row was skipped.
  std::ofstream(dir / "m.csv") << "image,caption\n" << (dir / "red.png").string() << ",red\nnone.png,gone\n";
  Result packed = run_imp("data make-shards " + (dir / "m.csv").string() + " --out " + (dir / "packed").string());
  EXPECT_EQ(packed.status, 1) << packed.output;
  EXPECT_NE(packed.output.find("wrote 1 sample into 1 shard"), std::string::npos) << packed.output;
  EXPECT_NE(packed.output.find("none.png"), std::string::npos) << packed.output;

  Result missing = run_imp("data inspect " + (dir / "nothing.tar").string());
  EXPECT_EQ(missing.status, 2) << missing.output;
  EXPECT_NE(missing.output.find("nothing.tar"), std::string::npos) << missing.output;
}

}  // namespace
