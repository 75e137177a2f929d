// Data- and expert-parallel training through the imp executable: two real
// processes on 127.0.0.1, started with the variables torchrun sets, against
// one process on the same batches.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_support.h"
#include "imp/io/safetensors.h"

namespace {

namespace fs = std::filesystem;
using imp::testing::Result;
using imp::testing::read_jsonl;
using imp::testing::read_text;
using imp::testing::run_imp;
using imp::testing::spawn_imp;
using imp::testing::ScratchDir;
using imp::testing::write_colour_shards;

// A TCP port that was free a moment ago, for the rendezvous.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return ntohs(address.sin_port);
}

// Waits for `pid` up to `limit`; kills it past that. Returns its exit status, or -1.
int wait_for(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

// A run on the colour shards with batches of 7 rows, which two processes
// split 3 + 4. Routing groups of 4 tokens, one image or a quarter of a text,
// make the experts' choices the same whichever process an example is in.
// AdamW's eps is 1e-6 rather than 1e-7, because the images are solid
// colours. Every patch of one is the same token, so attention is uniform
// whatever the queries and keys, and their exact gradients are zero (the
// key bias's is zero for any input). Their computed gradients are rounding
// noise that differs between one process and two. AdamW divides by
// sqrt(v) + eps, so with eps 1e-7 noise of about 1e-10 (an estimate)
// becomes steps of about lr * 1e-3, enough to pass 1e-5 in six steps. With
// 1e-6 such steps stay ten times smaller, while every real gradient moves
// its weights as before.
// `tasks` defaults to classification alone; `train_extra` and `model_extra`
// add keys to train and model.
struct RunConfig {
  std::string tasks =
      "  - {name: colours_cls, dataset: colours, modalities: [image], objective: softmax_ce, batch_size: 7}\n";
  std::string train_extra;
  std::string model_extra;
  int group_size = 4;
  // Train shards: both, or only the first (fewer shards than processes).
  std::string train_shards = "train-{000000..000001}.tar";
};

fs::path write_config(const fs::path& dir, const std::string& name, const RunConfig& run = {}) {
  const fs::path path = dir / (name + ".yaml");
  std::ofstream(path) << "workdir: " << (dir / name).string() << "\n"
      << "cache_dir: " << (dir / "cache").string() << "\n"
      << "model: {preset: tiny, num_layers: 2, moe: {group_size: " << run.group_size << run.model_extra << "},"
      << " vision: {channels: 3, patch: [1, 8, 8], grid: [1, 2, 2]}}\n"
      << "datasets:\n"
      << "  - {name: colours, type: webdataset, train: [\"" << (dir / run.train_shards).string()
      << "\"], test: [\"" << (dir / "test-000000.tar").string() << "\"], max_bad_fraction: 0.3}\n"
      << "tasks:\n" << run.tasks
      << "train: {steps: 6, log_every: 3, workers: 1, dtype: fp32, progress: lines, tensorboard: false,"
      << " sampler: round_robin," << run.train_extra
      << " optimizer: {lr: 0.003, warmup_steps: 2, eps: 1.0e-6}}\n"
      << "eval: {linear_probe_examples: 20, linear_probe_steps: 5}\n";
  return path;
}

// Starts `imp ARGUMENTS` once per entry of `world_sizes`, as rank r with
// WORLD_SIZE world_sizes[r] and the other variables torchrun sets, one
// thread each, logging to DIR/<tag>-rank<R>.log. Returns the process ids.
std::vector<pid_t> spawn_ranks(const fs::path& dir, const std::string& tag, const std::vector<int>& world_sizes,
                               const std::vector<std::string>& arguments) {
  const int port = free_port();
  EXPECT_GT(port, 0);
  std::vector<pid_t> ranks;
  for (size_t rank = 0; rank < world_sizes.size(); ++rank) {
    ranks.push_back(spawn_imp(
        arguments,
        {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
         "WORLD_SIZE=" + std::to_string(world_sizes[rank]), "MASTER_ADDR=127.0.0.1",
         "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"},
        dir / (tag + "-rank" + std::to_string(rank) + ".log")));
    EXPECT_GT(ranks.back(), 0);
  }
  return ranks;
}

// Runs `imp ARGUMENTS` as `world` processes (spawn_ranks) and expects each
// to finish with status 0 within 180 s.
void run_ranks(const fs::path& dir, const std::string& tag, int world, const std::vector<std::string>& arguments) {
  const std::vector<pid_t> ranks = spawn_ranks(dir, tag, std::vector<int>(world, world), arguments);
  for (pid_t pid : ranks) ASSERT_GT(pid, 0);
  for (int rank = 0; rank < world; ++rank) {
    const fs::path log = dir / (tag + "-rank" + std::to_string(rank) + ".log");
    EXPECT_EQ(wait_for(ranks[rank], std::chrono::seconds(180)), 0) << read_text(log);
  }
  for (int rank = 1; rank < world; ++rank) {
    const std::string log = read_text(dir / (tag + "-rank" + std::to_string(rank) + ".log"));
    EXPECT_NE(log.find("rank " + std::to_string(rank) + " of " + std::to_string(world) + ": done"),
              std::string::npos) << log;
  }
}

// Expects the same tensors, under the same names and shapes, to 1e-5: the
// processes' gradient sums run in another order than one process's.
void expect_same_weights(const fs::path& a_file, const fs::path& b_file) {
  const imp::SafetensorsContents a = imp::load_safetensors(a_file.string());
  const imp::SafetensorsContents b = imp::load_safetensors(b_file.string());
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    ASSERT_EQ(a.tensors[i].first, b.tensors[i].first);
    ASSERT_EQ(a.tensors[i].second.sizes(), b.tensors[i].second.sizes()) << a.tensors[i].first;
    const double difference = (a.tensors[i].second - b.tensors[i].second).abs().max().item<double>();
    EXPECT_LT(difference, 1e-5) << a.tensors[i].first;
  }
}

// Expects the same loss at every step of two train_log.jsonl files.
void expect_same_losses(const fs::path& a_log, const fs::path& b_log, size_t steps) {
  const std::vector<nlohmann::json> a = read_jsonl(a_log);
  const std::vector<nlohmann::json> b = read_jsonl(b_log);
  ASSERT_EQ(a.size(), steps);
  ASSERT_EQ(b.size(), steps);
  for (size_t i = 0; i < steps; ++i) {
    EXPECT_EQ(a[i]["task"], b[i]["task"]) << "step " << i + 1;
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 1e-5) << "step " << i + 1;
  }
}

// Classification and image-text NCE in turn, so that both objectives train
// the shared encoder.
const char* kBothObjectives =
    "  - {name: colours_cls, dataset: colours, modalities: [image], objective: softmax_ce, batch_size: 7}\n"
    "  - {name: colours_nce, dataset: colours, modalities: [image, text], objective: nce, batch_size: 7}\n";

TEST(DataParallel, TwoProcessesEqualOneOnTheWholeBatch) {
  ScratchDir scratch("imp_data_parallel");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  Result one = run_imp("train " + write_config(dir, "one").string());
  ASSERT_EQ(one.status, 0) << one.output;
  run_ranks(dir, "two", 2, {"train", write_config(dir, "two").string()});

  expect_same_weights(dir / "one" / "model.safetensors", dir / "two" / "model.safetensors");
  // The logged loss is the whole batch's mean on both.
  expect_same_losses(dir / "one" / "train_log.jsonl", dir / "two" / "train_log.jsonl", 6);
  // The routing counts are those of both processes' tokens.
  const nlohmann::json a = nlohmann::json::parse(read_text(dir / "one" / "routing.json"));
  const nlohmann::json b = nlohmann::json::parse(read_text(dir / "two" / "routing.json"));
  const nlohmann::json& image_a = a["layers"][0]["modalities"]["image"];
  const nlohmann::json& image_b = b["layers"][0]["modalities"]["image"];
  EXPECT_EQ(image_b["num_tokens"], image_a["num_tokens"]);
  EXPECT_EQ(image_b["tokens_per_expert"], image_a["tokens_per_expert"]);
  EXPECT_EQ(image_b["top_choice_per_expert"], image_a["top_choice_per_expert"]);
}

// Contrastive steps gather both embeddings, so each row meets the negatives
// of the whole batch, and the positives (identical captions) of the other
// process. One train shard for two processes: they share its samples.
TEST(DataParallel, ContrastiveMatchesOneProcess) {
  ScratchDir scratch("imp_data_parallel_nce");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  RunConfig run;
  run.tasks = kBothObjectives;
  run.train_shards = "train-000000.tar";
  Result one = run_imp("train " + write_config(dir, "one", run).string());
  ASSERT_EQ(one.status, 0) << one.output;
  run_ranks(dir, "two", 2, {"train", write_config(dir, "two", run).string()});

  expect_same_weights(dir / "one" / "model.safetensors", dir / "two" / "model.safetensors");
  expect_same_losses(dir / "one" / "train_log.jsonl", dir / "two" / "train_log.jsonl", 6);
  // Every step's accuracy is the whole batch's too.
  const std::vector<nlohmann::json> a = read_jsonl(dir / "one" / "train_log.jsonl");
  const std::vector<nlohmann::json> b = read_jsonl(dir / "two" / "train_log.jsonl");
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i]["accuracy"].get<double>(), b[i]["accuracy"].get<double>(), 1e-9) << "step " << i + 1;
  }
}

// Under bf16 autocast the embeddings the processes gather are bfloat16,
// which Gloo cannot carry; they travel as float32. The first step of each
// task (before its own updates compound bfloat16 rounding through AdamW)
// gives one process's loss to 1%, the rest stay finite.
TEST(DataParallel, ContrastiveRunsInBf16) {
  ScratchDir scratch("imp_data_parallel_bf16");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  RunConfig run;
  run.tasks = kBothObjectives;
  run.train_extra = " expert_parallel: true,";
  Result one = run_imp("train " + write_config(dir, "one", run).string() + " --set train.dtype=bf16");
  ASSERT_EQ(one.status, 0) << one.output;
  run_ranks(dir, "two", 2, {"train", write_config(dir, "two", run).string(), "--set", "train.dtype=bf16"});
  const std::vector<nlohmann::json> a = read_jsonl(dir / "one" / "train_log.jsonl");
  const std::vector<nlohmann::json> b = read_jsonl(dir / "two" / "train_log.jsonl");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 0.01 * std::abs(a[i]["loss"].get<double>()))
        << "step " << i + 1;
  }
  for (size_t i = 0; i < b.size(); ++i) EXPECT_TRUE(std::isfinite(b[i]["loss"].get<double>())) << "step " << i + 1;
}

// Expert parallel: each process has two of the four experts of each MoE
// layer. The run equals one process. Its checkpoints contain every expert,
// so one process resumes from the middle and ends where it did. The
// evaluation, shared by the two processes, gives one process's results.
// Classification drops half of each image's tokens: the processes draw
// DropToken for the whole batch and keep their rows, as one process would.
// Routing groups of 2 tokens then hold one image, or an eighth of a text.
// The contrastive task recomputes its blocks in the backward pass, which
// runs sharded MoE layers in full and local ones only up to their experts'
// last linear map.
TEST(ExpertParallel, MatchesOneProcessAndResumes) {
  ScratchDir scratch("imp_expert_parallel");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  RunConfig run;
  run.tasks =
      "  - {name: colours_cls, dataset: colours, modalities: [image], objective: softmax_ce, batch_size: 7,"
      " drop_tokens: 0.5}\n"
      "  - {name: colours_nce, dataset: colours, modalities: [image, text], objective: nce, batch_size: 7,"
      " rematerialize: true}\n";
  run.group_size = 2;
  run.train_extra = " checkpoint_every: 3,";
  Result one = run_imp("train " + write_config(dir, "one", run).string());
  ASSERT_EQ(one.status, 0) << one.output;
  run.train_extra += " expert_parallel: true,";
  run_ranks(dir, "ep", 2, {"train", write_config(dir, "ep", run).string()});

  expect_same_weights(dir / "one" / "model.safetensors", dir / "ep" / "model.safetensors");
  expect_same_losses(dir / "one" / "train_log.jsonl", dir / "ep" / "train_log.jsonl", 6);
  expect_same_weights(dir / "one" / "checkpoints" / "step-00000003" / "model.safetensors",
                      dir / "ep" / "checkpoints" / "step-00000003" / "model.safetensors");

  // Shared evaluation: with one image per routing group, each example's
  // outputs do not depend on the batch it is in.
  const nlohmann::json one_eval = nlohmann::json::parse(read_text(dir / "one" / "eval.json"));
  const nlohmann::json ep_eval = nlohmann::json::parse(read_text(dir / "ep" / "eval.json"));
  for (const char* metric : {"colours/head_top1", "colours/zeroshot_top1", "colours/i2t_r1",
                             "colours/t2i_r1", "colours/linear_probe_top1"}) {
    ASSERT_TRUE(one_eval.contains(metric)) << one_eval.dump();
    ASSERT_TRUE(ep_eval.contains(metric)) << ep_eval.dump();
    EXPECT_NEAR(one_eval[metric].get<double>(), ep_eval[metric].get<double>(), 1e-9) << metric;
  }

  // One process resumes the two processes' run at step 3.
  fs::copy(dir / "ep", dir / "resumed", fs::copy_options::recursive);
  Result resumed = run_imp("train --workdir " + (dir / "resumed").string() + " --resume step-00000003");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  expect_same_weights(dir / "one" / "model.safetensors", dir / "resumed" / "model.safetensors");
  expect_same_losses(dir / "one" / "train_log.jsonl", dir / "resumed" / "train_log.jsonl", 6);
}

// Processes started with different WORLD_SIZE values both stop at the
// rendezvous, each naming the two sizes, instead of failing inside Gloo or
// waiting for a process that never comes.
TEST(DataParallel, MismatchedWorldSizeIsNamed) {
  ScratchDir scratch("imp_data_parallel_world");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  RunConfig run;
  run.train_extra = " collective_timeout: 60,";
  const fs::path config = write_config(dir, "run", run);
  const std::vector<pid_t> ranks = spawn_ranks(dir, "run", {2, 3}, {"train", config.string()});
  for (pid_t pid : ranks) ASSERT_GT(pid, 0);
  const auto start = std::chrono::steady_clock::now();
  for (int rank = 0; rank < 2; ++rank) {
    const int status = wait_for(ranks[rank], std::chrono::seconds(50));
    const std::string log = read_text(dir / ("run-rank" + std::to_string(rank) + ".log"));
    EXPECT_EQ(status, 2) << log;
    EXPECT_NE(log.find("config error"), std::string::npos) << log;
    EXPECT_NE(log.find("WORLD_SIZE=3"), std::string::npos) << log;
    EXPECT_NE(log.find("WORLD_SIZE=2"), std::string::npos) << log;
  }
  // Well before the 60 s timeout.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
}

TEST(DataParallel, LostRankStopsTheOtherNamingIt) {
  ScratchDir scratch("imp_data_parallel_lost");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  // Long enough to be killed in the middle; a short collective timeout.
  RunConfig run;
  run.train_extra = " collective_timeout: 5, checkpoint_every: 0,";
  const fs::path config = write_config(dir, "run", run);
  const std::vector<pid_t> ranks =
      spawn_ranks(dir, "run", {2, 2}, {"train", config.string(), "--set", "train.steps=100000"});
  for (pid_t pid : ranks) ASSERT_GT(pid, 0);
  // Kill rank 1 once rank 0 has logged training steps.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_text(dir / "run-rank0.log").find("step ") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(ranks[1], SIGKILL);
  int status = 0;
  waitpid(ranks[1], &status, 0);
  const auto killed = std::chrono::steady_clock::now();
  const int exit_status = wait_for(ranks[0], std::chrono::seconds(60));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  const std::string log = read_text(dir / "run-rank0.log");
  EXPECT_NE(exit_status, 0) << log;
  EXPECT_NE(exit_status, -1) << "rank 0 did not stop within 60 s\n" << log;
  EXPECT_LT(seconds, 30.0) << log;
  EXPECT_NE(log.find("rank 1 of 2"), std::string::npos) << log;
}

}  // namespace
