// Data-parallel training through the imp executable: two real processes on
// 127.0.0.1, started with the variables torchrun sets, against one process
// on the same batches.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
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

// Classification of the colour shards, with a batch of 7 rows, which two
// processes split 3 + 4. Routing groups of one image (4 tokens) make the
// experts' choices the same whichever process an image is in.
fs::path write_config(const fs::path& dir, const std::string& name, const std::string& train_extra = "") {
  const fs::path path = dir / (name + ".yaml");
  std::ofstream(path) << "workdir: " << (dir / name).string() << "\n"
      << "cache_dir: " << (dir / "cache").string() << "\n"
      << "model: {preset: tiny, num_layers: 2, moe: {group_size: 4},"
      << " vision: {channels: 3, patch: [1, 8, 8], grid: [1, 2, 2]}}\n"
      << "datasets:\n"
      << "  - {name: colours, type: webdataset, train: [\"" << (dir / "train-{000000..000001}.tar").string()
      << "\"], test: [\"" << (dir / "test-000000.tar").string() << "\"], max_bad_fraction: 0.3}\n"
      << "tasks:\n"
      << "  - {name: colours_cls, dataset: colours, modalities: [image], objective: softmax_ce, batch_size: 7}\n"
      << "train: {steps: 6, log_every: 3, workers: 1, dtype: fp32, progress: lines, tensorboard: false,"
      << train_extra
      << " optimizer: {lr: 0.003, warmup_steps: 2}}\n"
      << "eval: {linear_probe_examples: 20, linear_probe_steps: 5}\n";
  return path;
}

TEST(DataParallel, TwoProcessesEqualOneOnTheWholeBatch) {
  ScratchDir scratch("imp_data_parallel");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  Result one = run_imp("train " + write_config(dir, "one").string());
  ASSERT_EQ(one.status, 0) << one.output;

  const fs::path config = write_config(dir, "two");
  const int port = free_port();
  ASSERT_GT(port, 0);
  std::vector<pid_t> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.push_back(spawn_imp(
        {"train", config.string()},
        {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank), "WORLD_SIZE=2",
         "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"},
        dir / ("rank" + std::to_string(rank) + ".log")));
    ASSERT_GT(ranks.back(), 0);
  }
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(wait_for(ranks[rank], std::chrono::seconds(180)), 0)
        << read_text(dir / ("rank" + std::to_string(rank) + ".log"));
  }
  EXPECT_NE(read_text(dir / "rank1.log").find("rank 1 of 2: done"), std::string::npos)
      << read_text(dir / "rank1.log");

  // The same weights, to float rounding: the ranks' gradient sums run in
  // another order than one process's.
  const imp::SafetensorsContents a = imp::load_safetensors((dir / "one" / "model.safetensors").string());
  const imp::SafetensorsContents b = imp::load_safetensors((dir / "two" / "model.safetensors").string());
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    ASSERT_EQ(a.tensors[i].first, b.tensors[i].first);
    const double difference = (a.tensors[i].second - b.tensors[i].second).abs().max().item<double>();
    EXPECT_LT(difference, 1e-5) << a.tensors[i].first;
  }
  // The logged loss is the whole batch's mean on both.
  const std::vector<nlohmann::json> single = read_jsonl(dir / "one" / "train_log.jsonl");
  const std::vector<nlohmann::json> pair = read_jsonl(dir / "two" / "train_log.jsonl");
  ASSERT_EQ(single.size(), 6u);
  ASSERT_EQ(pair.size(), 6u);
  for (size_t i = 0; i < single.size(); ++i) {
    EXPECT_NEAR(pair[i]["loss"].get<double>(), single[i]["loss"].get<double>(), 1e-5) << "step " << i + 1;
  }
}

TEST(DataParallel, LostRankStopsTheOtherNamingIt) {
  ScratchDir scratch("imp_data_parallel_lost");
  const fs::path dir(scratch.path());
  write_colour_shards(dir);
  // Long enough to be killed in the middle; a short collective timeout.
  const fs::path config =
      write_config(dir, "run", " collective_timeout: 5, checkpoint_every: 0,");
  const int port = free_port();
  ASSERT_GT(port, 0);
  std::vector<pid_t> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.push_back(spawn_imp(
        {"train", config.string(), "--set", "train.steps=100000"},
        {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank), "WORLD_SIZE=2",
         "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"},
        dir / ("rank" + std::to_string(rank) + ".log")));
    ASSERT_GT(ranks.back(), 0);
  }
  // Kill rank 1 once rank 0 has logged training steps.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (read_text(dir / "rank0.log").find("step ") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(ranks[1], SIGKILL);
  int status = 0;
  waitpid(ranks[1], &status, 0);
  const auto killed = std::chrono::steady_clock::now();
  const int exit_status = wait_for(ranks[0], std::chrono::seconds(60));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  const std::string log = read_text(dir / "rank0.log");
  EXPECT_NE(exit_status, 0) << log;
  EXPECT_NE(exit_status, -1) << "rank 0 did not stop within 60 s\n" << log;
  EXPECT_LT(seconds, 30.0) << log;
  EXPECT_NE(log.find("rank 1 of 2"), std::string::npos) << log;
}

}  // namespace
