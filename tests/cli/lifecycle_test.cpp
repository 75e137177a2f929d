// A run's life after training, through the imp executable: checkpoints,
// resuming (also after SIGKILL), fine-tuning, evaluation of a checkpoint,
// embeddings, zero-shot classification, the metrics files and the report.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_support.h"
#include "imp/io/safetensors.h"
#include "imp/train/tensorboard.h"

namespace {

namespace fs = std::filesystem;
using imp::testing::Result;
using imp::testing::read_jsonl;
using imp::testing::read_text;
using imp::testing::run_imp;
using imp::testing::spawn_imp;
using imp::testing::ScratchDir;
using imp::testing::write_colour_shards;

// A config over the colour shards in `dir`, training into `workdir`.
fs::path write_colour_config(const fs::path& dir, const fs::path& workdir, const std::string& train) {
  const fs::path path = workdir.string() + ".yaml";
  std::ofstream(path) << "workdir: " << workdir.string() << "\n"
      << "cache_dir: " << (dir / "cache").string() << "\n"
      << "model: {preset: tiny, num_layers: 2, vision: {channels: 3, patch: [1, 8, 8], grid: [1, 2, 2]}}\n"
      << "datasets:\n"
      << "  - {name: colours, type: webdataset, train: [\"" << (dir / "train-{000000..000001}.tar").string()
      << "\"], test: [\"" << (dir / "test-000000.tar").string() << "\"], max_bad_fraction: 0.3}\n"
      << "tasks:\n"
      << "  - {name: colours_cls, dataset: colours, modalities: [image], objective: softmax_ce, batch_size: 8}\n"
      << "  - {name: colours_text, dataset: colours, modalities: [image, text], objective: nce, batch_size: 8}\n"
      << "train: {" << train << ", workers: 1, dtype: fp32, progress: lines, "
      << "optimizer: {lr: 0.003, warmup_steps: 2}}\n"
      << "eval: {linear_probe_examples: 20, linear_probe_steps: 5}\n";
  return path;
}

// The shards and one finished 30-step run, shared by the tests below that
// only read a run.
class FinishedRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("imp_lifecycle_run");
    dir_ = scratch_->path();
    write_colour_shards(dir_);
    const fs::path config = write_colour_config(dir_, dir_ / "run", "steps: 30, log_every: 10, checkpoint_every: 10");
    Result train = run_imp("train " + config.string());
    ASSERT_EQ(train.status, 0) << train.output;
    train_output_ = new std::string(train.output);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    delete train_output_;
  }
  static ScratchDir* scratch_;
  static fs::path dir_;
  static std::string* train_output_;
};
ScratchDir* FinishedRun::scratch_ = nullptr;
fs::path FinishedRun::dir_;
std::string* FinishedRun::train_output_ = nullptr;

TEST_F(FinishedRun, WritesCheckpointsMetricsAndTensorBoardFiles) {
  const fs::path run = dir_ / "run";
  for (const char* step : {"step-00000010", "step-00000020", "step-00000030"}) {
    EXPECT_TRUE(fs::exists(run / "checkpoints" / step / "model.safetensors")) << step;
  }
  EXPECT_TRUE(fs::exists(run / "model.safetensors"));
  // The final weights equal the last checkpoint's.
  EXPECT_EQ(read_text(run / "model.safetensors"),
            read_text(run / "checkpoints" / "step-00000030" / "model.safetensors"));

  const std::vector<nlohmann::json> metrics = read_jsonl(run / "metrics.jsonl");
  ASSERT_EQ(metrics.size(), 3u);
  EXPECT_EQ(metrics[2]["step"], 30);
  int steps = 0;
  for (const auto& record : metrics) {
    for (const auto& [task, count] : record["steps"].items()) steps += count.get<int>();
    EXPECT_GT(record["tokens_per_s"].get<double>(), 0.0);
    EXPECT_TRUE(record["loss"].contains("colours_cls") || record["loss"].contains("colours_text"));
  }
  EXPECT_EQ(steps, 30);
  // Expert load: each modality's first choices over the interval sum to one.
  const nlohmann::json& load = metrics[0]["expert_load"];
  ASSERT_FALSE(load.empty()) << metrics[0].dump();
  for (const auto& [layer, by_modality] : load.items()) {
    for (const auto& [modality, shares] : by_modality.items()) {
      double sum = 0;
      for (const auto& share : shares) sum += share.get<double>();
      EXPECT_NEAR(sum, 1.0, 1e-9) << layer << " " << modality;
    }
  }
  // Two task signatures: the classifier and the image-text pairs.
  const nlohmann::json signatures = nlohmann::json::parse(read_text(run / "signatures.json"));
  ASSERT_EQ(signatures.size(), 2u) << signatures.dump();
  int64_t signature_steps = 0;
  for (const auto& signature : signatures) signature_steps += signature["steps"].get<int64_t>();
  EXPECT_EQ(signature_steps, 30);
  EXPECT_NE(train_output_->find("signatures: 2 distinct"), std::string::npos) << *train_output_;

  const std::vector<nlohmann::json> evals = read_jsonl(run / "evals.jsonl");
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0]["step"], 30);
  EXPECT_TRUE(evals[0]["metrics"].contains("colours/head_top1"));

  // TensorBoard: the loss of every logged interval and the final evaluation.
  std::vector<imp::ScalarEvent> events;
  for (const auto& entry : fs::directory_iterator(run / "tensorboard")) {
    for (const auto& event : imp::read_scalar_events(entry.path().string())) events.push_back(event);
  }
  int lr_points = 0;
  bool head_at_30 = false;
  for (const auto& event : events) {
    lr_points += event.tag == "train/lr";
    head_at_30 = head_at_30 || (event.tag == "eval/colours/head_top1" && event.step == 30);
  }
  EXPECT_EQ(lr_points, 3);
  EXPECT_TRUE(head_at_30);
}

TEST_F(FinishedRun, ReportIsSelfContained) {
  Result report = run_imp("report " + (dir_ / "run").string());
  ASSERT_EQ(report.status, 0) << report.output;
  const std::string html = read_text(dir_ / "run" / "report.html");
  EXPECT_NE(html.find("colours_cls"), std::string::npos);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  fs::create_directories(dir_ / "not_a_run");
  Result missing = run_imp("report " + (dir_ / "not_a_run").string());
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.output.find("metrics.jsonl"), std::string::npos) << missing.output;
  EXPECT_EQ(missing.output.find("report.html"), std::string::npos) << missing.output;
}

TEST_F(FinishedRun, EvaluatesACheckpointFolder) {
  const fs::path checkpoint = dir_ / "run" / "checkpoints" / "step-00000020";
  Result eval = run_imp("eval --weights " + checkpoint.string());
  ASSERT_EQ(eval.status, 0) << eval.output;
  const nlohmann::json metrics = nlohmann::json::parse(read_text(checkpoint / "eval.json"));
  EXPECT_TRUE(metrics.contains("colours/head_top1")) << metrics.dump();
}

TEST_F(FinishedRun, EmbedsFilesAndTexts) {
  const fs::path out = dir_ / "embeddings.npy";
  Result embed = run_imp("embed --workdir " + (dir_ / "run").string() + " --out " + out.string() + " " +
                         (dir_ / "red.png").string() + " " + (dir_ / "blue.png").string() +
                         " --text 'a red square'");
  ASSERT_EQ(embed.status, 0) << embed.output;
  const std::string npy = read_text(out);
  ASSERT_GT(npy.size(), 10u);
  EXPECT_EQ(npy.substr(0, 6), "\x93NUMPY");
  const size_t header = static_cast<uint8_t>(npy[8]) | (static_cast<uint8_t>(npy[9]) << 8);
  EXPECT_EQ((10 + header) % 64, 0u);
  const std::string dict = npy.substr(10, header);
  EXPECT_NE(dict.find("'descr': '<f4'"), std::string::npos) << dict;
  const size_t shape_at = dict.find("'shape': (3, ");
  ASSERT_NE(shape_at, std::string::npos) << dict;
  const int64_t width = std::stoll(dict.substr(shape_at + 13));
  ASSERT_EQ(npy.size(), 10 + header + 3 * width * sizeof(float));
  // Every row is a unit vector in the shared space.
  const float* values = reinterpret_cast<const float*>(npy.data() + 10 + header);
  for (int row = 0; row < 3; ++row) {
    double norm = 0;
    for (int64_t j = 0; j < width; ++j) norm += values[row * width + j] * values[row * width + j];
    EXPECT_NEAR(std::sqrt(norm), 1.0, 1e-4) << "row " << row;
  }

  // The same inputs through safetensors, with their names in the metadata.
  // (The same batch: under experts-choose routing an example's tokens
  // compete with the other examples' for expert slots.)
  const fs::path tensors = dir_ / "embeddings.safetensors";
  Result again = run_imp("embed --workdir " + (dir_ / "run").string() + " --out " + tensors.string() +
                         " " + (dir_ / "red.png").string() + " " + (dir_ / "blue.png").string() +
                         " --text 'a red square'");
  ASSERT_EQ(again.status, 0) << again.output;
  const imp::SafetensorsContents contents = imp::load_safetensors(tensors.string());
  ASSERT_EQ(contents.tensors.size(), 2u);
  EXPECT_EQ(contents.tensors[0].first, "embedding");
  EXPECT_EQ(contents.tensors[1].first, "pooled");
  const at::Tensor same = contents.tensors[0].second;
  ASSERT_EQ(same.size(0), 3);
  ASSERT_EQ(same.size(1), width);
  EXPECT_EQ(std::memcmp(same.data_ptr(), values, 3 * width * sizeof(float)), 0);
  const nlohmann::json inputs = nlohmann::json::parse(contents.metadata.at("inputs"));
  EXPECT_EQ(inputs[2], "a red square");
  EXPECT_EQ(nlohmann::json::parse(contents.metadata.at("modalities")),
            nlohmann::json({"image", "image", "text"}));

  // A file that is no image is named, and nothing is written.
  std::ofstream(dir_ / "broken.png") << "not a picture";
  const fs::path never = dir_ / "never.npy";
  Result broken = run_imp("embed --workdir " + (dir_ / "run").string() + " --out " + never.string() + " " +
                          (dir_ / "red.png").string() + " " + (dir_ / "broken.png").string());
  EXPECT_NE(broken.status, 0);
  EXPECT_NE(broken.output.find("broken.png"), std::string::npos) << broken.output;
  EXPECT_NE(broken.output.find("not a JPEG, PNG or WebP image"), std::string::npos) << broken.output;
  EXPECT_EQ(broken.output.find("imp-embed-"), std::string::npos) << broken.output;  // no temporary paths
  EXPECT_FALSE(fs::exists(never));
}

TEST_F(FinishedRun, ClassifiesZeroShot) {
  std::ofstream(dir_ / "labels.txt") << "# colours\nred\ngreen\n\nblue\n";
  Result classify = run_imp("classify --workdir " + (dir_ / "run").string() + " --labels " +
                            (dir_ / "labels.txt").string() + " --top 3 " + (dir_ / "red.png").string() +
                            " " + (dir_ / "blue.png").string());
  ASSERT_EQ(classify.status, 0) << classify.output;
  // Each file is followed by its classes, best first, with percentages
  // that add up to 100 over all three.
  std::istringstream lines(classify.output);
  std::vector<std::string> red_classes;
  double total = 0;
  bool in_red = false;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("red.png") != std::string::npos) in_red = true;
    else if (line.find("blue.png") != std::string::npos) in_red = false;
    else if (in_red && line.find('%') != std::string::npos) {
      total += std::stod(line);
      red_classes.push_back(line.substr(line.find('%') + 3));
    }
  }
  ASSERT_EQ(red_classes.size(), 3u) << classify.output;
  EXPECT_NEAR(total, 100.0, 0.05) << classify.output;
  EXPECT_EQ(red_classes[0], "red") << classify.output;

  // A template without {} would give every class the same text.
  Result no_slot = run_imp("classify --workdir " + (dir_ / "run").string() + " --labels " +
                           (dir_ / "labels.txt").string() + " --prompt 'a photo' " + (dir_ / "red.png").string());
  EXPECT_EQ(no_slot.status, 2) << no_slot.output;
  EXPECT_NE(no_slot.output.find("--prompt 'a photo' has no {}"), std::string::npos) << no_slot.output;
}

TEST(Lifecycle, ResumeEqualsAnUninterruptedRun) {
  ScratchDir scratch("imp_lifecycle_resume");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  const std::string schedule = "steps: 8, log_every: 2, checkpoint_every: 4";
  Result whole = run_imp("train " + write_colour_config(dir, dir / "whole", schedule).string());
  ASSERT_EQ(whole.status, 0) << whole.output;

  // The same run, rolled back to its step-4 checkpoint and resumed from it
  // without a config: the run's own config.yaml is used.
  Result first = run_imp("train " + write_colour_config(dir, dir / "halves", schedule).string());
  ASSERT_EQ(first.status, 0) << first.output;
  fs::remove_all(dir / "halves" / "checkpoints" / "step-00000008");
  fs::remove(dir / "halves" / "model.safetensors");
  Result refused = run_imp("train " + (dir / "halves.yaml").string());
  EXPECT_EQ(refused.status, 2) << refused.output;
  EXPECT_NE(refused.output.find("--resume"), std::string::npos) << refused.output;
  // A mistyped checkpoint fails at once and leaves the run as it was.
  const std::string config_before = read_text(dir / "halves" / "config.yaml");
  Result typo = run_imp("train --workdir " + (dir / "halves").string() + " --resume step-00000044");
  EXPECT_EQ(typo.status, 2) << typo.output;
  EXPECT_NE(typo.output.find("step-00000044 not found"), std::string::npos) << typo.output;
  EXPECT_EQ(read_text(dir / "halves" / "config.yaml"), config_before);

  Result second = run_imp("train --workdir " + (dir / "halves").string() + " --resume step-00000004");
  ASSERT_EQ(second.status, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find("step-00000004 at step 4 of 8"), std::string::npos) << second.output;

  EXPECT_EQ(read_text(dir / "halves" / "model.safetensors"), read_text(dir / "whole" / "model.safetensors"));
  const std::vector<nlohmann::json> a = read_jsonl(dir / "whole" / "train_log.jsonl");
  const std::vector<nlohmann::json> b = read_jsonl(dir / "halves" / "train_log.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(b[i]["step"], a[i]["step"]);
    EXPECT_EQ(b[i]["task"], a[i]["task"]);
    EXPECT_EQ(b[i]["loss"].get<double>(), a[i]["loss"].get<double>()) << "step " << i + 1;
  }
  const std::vector<nlohmann::json> intervals = read_jsonl(dir / "halves" / "metrics.jsonl");
  ASSERT_EQ(intervals.size(), 4u);
  // Training time goes on from the checkpoint's instead of starting again.
  for (size_t i = 1; i < intervals.size(); ++i) {
    EXPECT_GT(intervals[i]["wall_s"].get<double>(), intervals[i - 1]["wall_s"].get<double>()) << i;
  }

  // Fine-tuning from the finished run: the weights load, the optimizer starts fresh.
  Result tune = run_imp("train " + write_colour_config(dir, dir / "tuned", "steps: 2, log_every: 1").string() +
                        " --init-from " + (dir / "whole").string());
  ASSERT_EQ(tune.status, 0) << tune.output;
  EXPECT_NE(tune.output.find("initialised the weights from"), std::string::npos) << tune.output;
  Result both = run_imp("train " + (dir / "tuned.yaml").string() + " --resume --init-from " +
                        (dir / "whole").string() + " --overwrite");
  EXPECT_EQ(both.status, 2) << both.output;
}

bool writing_checkpoint(const fs::path& checkpoints) {
  std::error_code error;
  for (fs::directory_iterator it(checkpoints, error), end; !error && it != end; it.increment(error)) {
    if (it->path().filename().string().rfind(".step-", 0) == 0) return true;
  }
  return false;
}

bool has_complete_checkpoint(const fs::path& checkpoints) {
  std::error_code error;
  for (fs::directory_iterator it(checkpoints, error), end; !error && it != end; it.increment(error)) {
    if (it->path().filename().string().rfind("step-", 0) == 0) return true;
  }
  return false;
}

TEST(Lifecycle, SigkillWhileCheckpointingLeavesThePreviousOneLoadable) {
  ScratchDir scratch("imp_lifecycle_kill");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  const fs::path config =
      write_colour_config(dir, dir / "run", "steps: 400, log_every: 50, checkpoint_every: 1, keep_checkpoints: 2");
  const fs::path checkpoints = dir / "run" / "checkpoints";
  bool caught = false;
  for (int attempt = 0; attempt < 5 && !caught; ++attempt) {
    std::vector<std::string> arguments{"train", config.string()};
    if (attempt > 0) arguments.push_back("--resume");
    const pid_t pid = spawn_imp(arguments, {}, dir / "train.log");
    ASSERT_GT(pid, 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    int status = 0;
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      if (writing_checkpoint(checkpoints) && has_complete_checkpoint(checkpoints)) {
        kill(pid, SIGKILL);
        break;
      }
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!exited) {
      kill(pid, SIGKILL);  // also past the deadline
      waitpid(pid, &status, 0);
    }
    // Only a kill that left a half-written folder behind counts.
    caught = !exited && writing_checkpoint(checkpoints);
  }
  ASSERT_TRUE(caught) << "never caught the run while it wrote a checkpoint";

  Result resumed = run_imp("train " + config.string() + " --resume --set train.checkpoint_every=100");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  EXPECT_FALSE(writing_checkpoint(checkpoints));
  EXPECT_TRUE(fs::exists(dir / "run" / "model.safetensors"));
}

}  // namespace
