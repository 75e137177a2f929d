// Tests of imp/dist: launch detection from environment maps, and real
// multi-process runs on 127.0.0.1. Each rank of a multi-process test is a
// dist_worker process (dist_worker.cpp) started with posix_spawn, because
// fork() is unsafe once LibTorch's threads run. The worker's path comes from
// the IMP_DIST_WORKER environment variable, else from the IMP_DIST_WORKER_PATH
// compile definition.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../scratch_dir.h"
#include "imp/core/error.h"
#include "imp/dist/collectives.h"
#include "imp/dist/environment.h"
#include "imp/dist/process_group.h"

extern char** environ;

namespace imp::dist {
namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Launch detection

// Returns the ConfigError message detection throws, or "" when it succeeds.
std::string detection_error(const EnvironmentMap& variables) {
  try {
    detect_launch_environment(variables);
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "";
}

TEST(DistEnvironment, NoLauncherIsSingleProcess) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{{"HOME", "/root"}});
  EXPECT_EQ(env.launcher, Launcher::kSingleProcess);
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  EXPECT_EQ(env.master_port, 0);
  EXPECT_EQ(env.describe(), "single process: rank 0 of 1 (local rank 0), rendezvous at 127.0.0.1:any free port");
}

TEST(DistEnvironment, Torchrun) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{
      {"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"},
      {"MASTER_ADDR", "node01"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(env.launcher, Launcher::kTorchrun);
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  ASSERT_TRUE(env.local_world_size.has_value());
  EXPECT_EQ(*env.local_world_size, 4);
  EXPECT_EQ(env.master_addr, "node01");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_EQ(env.describe(), "torchrun: rank 5 of 8 (local rank 1 of 4), rendezvous at node01:29500");
}

TEST(DistEnvironment, TorchrunWithoutLocalRankUsesRank) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{
      {"RANK", "2"}, {"WORLD_SIZE", "3"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(env.local_rank, 2);
  EXPECT_FALSE(env.local_world_size.has_value());
}

TEST(DistEnvironment, TorchrunSingleProcessNeedsNoMaster) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(env.launcher, Launcher::kTorchrun);
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  EXPECT_EQ(env.master_port, 0);
}

TEST(DistEnvironment, Slurm) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{
      {"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS_PER_NODE", "2"},
      {"SLURM_JOB_NODELIST", "node[07-08]"}, {"SLURM_JOB_ID", "123456"}});
  EXPECT_EQ(env.launcher, Launcher::kSlurm);
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  ASSERT_TRUE(env.local_world_size.has_value());
  EXPECT_EQ(*env.local_world_size, 2);
  EXPECT_EQ(env.master_addr, "node07");
  EXPECT_EQ(env.master_port, kSlurmBasePort + 123456 % kSlurmPortRange);
  EXPECT_EQ(env.master_port, 23456);
}

TEST(DistEnvironment, SlurmPrefersMasterVariables) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{
      {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "0"}, {"SLURM_JOB_NODELIST", "a,b"},
      {"SLURM_JOB_ID", "7"}, {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "4000"}});
  EXPECT_EQ(env.master_addr, "10.0.0.1");
  EXPECT_EQ(env.master_port, 4000);
}

TEST(DistEnvironment, SlurmFallsBackToSlurmNodelist) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{
      {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "gpu-[1-2]"}, {"SLURM_JOB_ID", "20001"}});
  EXPECT_EQ(env.master_addr, "gpu-1");
  EXPECT_EQ(env.master_port, 20001);
  EXPECT_FALSE(env.local_world_size.has_value());
}

TEST(DistEnvironment, SlurmNodelistForms) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"node[01-04,07]", "node01"}, {"a,b", "a"},           {"gpu-[1-2]", "gpu-1"},
      {"single", "single"},         {"n[3,1-2]", "n3"},     {"rack[1-2]-n[3-4]", "rack1-n3"},
      {"x[5]", "x5"},               {"n[01-02],m[1-3]", "n01"}, {"a.example.org,b", "a.example.org"}};
  for (const auto& [nodelist, first_host] : cases) {
    EXPECT_EQ(first_host_in_slurm_nodelist(nodelist, "SLURM_JOB_NODELIST"), first_host) << nodelist;
  }
}

TEST(DistEnvironment, SlurmNodelistErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "SLURM_JOB_NODELIST is empty"},
      {"node[01-04", "'node[01-04' has '[' without ']'"},
      {"node01]", "'node01]' has ']' without '['"},
      {"node[[1]]", "'node[[1]]' has nested '['"},
      {"node[]", "invalid host range []"},
      {"node[a-b]", "invalid host range [a-b]"},
      {",b", "starts with an empty host name"}};
  for (const auto& [nodelist, expected] : cases) {
    try {
      first_host_in_slurm_nodelist(nodelist, "SLURM_JOB_NODELIST");
      ADD_FAILURE() << "no error for " << nodelist;
    } catch (const ConfigError& error) {
      EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
      EXPECT_NE(std::string(error.what()).find("MASTER_ADDR"), std::string::npos) << error.what();
    }
  }
}

TEST(DistEnvironment, OpenMpi) {
  LaunchEnvironment env = detect_launch_environment(EnvironmentMap{
      {"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
      {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"MASTER_ADDR", "host0"}, {"MASTER_PORT", "29400"}});
  EXPECT_EQ(env.launcher, Launcher::kOpenMpi);
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "host0");
  EXPECT_EQ(env.master_port, 29400);
  EXPECT_EQ(std::string(launcher_name(env.launcher)), "openmpi");
}

TEST(DistEnvironment, OpenMpiRequiresMaster) {
  std::string no_addr = detection_error(
      {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"MASTER_PORT", "29400"}});
  EXPECT_NE(no_addr.find("MASTER_ADDR is not set (mpirun does not set it"), std::string::npos) << no_addr;
  std::string no_port = detection_error(
      {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"MASTER_ADDR", "host0"}});
  EXPECT_NE(no_port.find("MASTER_PORT is not set (mpirun does not set it"), std::string::npos) << no_port;
}

TEST(DistEnvironment, Precedence) {
  EnvironmentMap all = {{"RANK", "1"},
                        {"WORLD_SIZE", "2"},
                        {"MASTER_ADDR", "127.0.0.1"},
                        {"MASTER_PORT", "1000"},
                        {"SLURM_PROCID", "0"},
                        {"SLURM_NTASKS", "4"},
                        {"SLURM_JOB_ID", "5"},
                        {"OMPI_COMM_WORLD_RANK", "2"},
                        {"OMPI_COMM_WORLD_SIZE", "3"}};
  LaunchEnvironment torchrun = detect_launch_environment(all);
  EXPECT_EQ(torchrun.launcher, Launcher::kTorchrun);
  EXPECT_EQ(torchrun.rank, 1);

  all.erase("RANK");
  all.erase("WORLD_SIZE");
  LaunchEnvironment slurm = detect_launch_environment(all);
  EXPECT_EQ(slurm.launcher, Launcher::kSlurm);
  EXPECT_EQ(slurm.world_size, 4);

  all.erase("SLURM_PROCID");
  LaunchEnvironment open_mpi = detect_launch_environment(all);
  EXPECT_EQ(open_mpi.launcher, Launcher::kOpenMpi);
  EXPECT_EQ(open_mpi.rank, 2);
}

TEST(DistEnvironment, BadValuesNameVariableAndValue) {
  const EnvironmentMap torchrun = {
      {"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}};
  struct Case {
    std::string variable;
    std::string value;
    std::string expected;
  };
  const std::vector<Case> torchrun_cases = {
      {"RANK", "x", "RANK='x' is not an integer"},
      {"RANK", "1x", "RANK='1x' is not an integer"},
      {"RANK", " 1", "RANK=' 1' is not an integer"},
      {"RANK", "", "RANK='' is not an integer"},
      {"RANK", "2", "RANK='2' is out of range: a rank must be in [0, 2)"},
      {"RANK", "-1", "RANK='-1' is out of range"},
      {"WORLD_SIZE", "0", "WORLD_SIZE='0' is invalid"},
      {"WORLD_SIZE", "two", "WORLD_SIZE='two' is not an integer"},
      {"WORLD_SIZE", "99999999999", "WORLD_SIZE='99999999999' is invalid"},
      {"LOCAL_RANK", "-2", "LOCAL_RANK='-2' is invalid"},
      {"LOCAL_WORLD_SIZE", "0", "LOCAL_WORLD_SIZE='0' is invalid"},
      {"MASTER_PORT", "0", "MASTER_PORT='0' is out of range: a TCP port must be in 1..65535"},
      {"MASTER_PORT", "65536", "MASTER_PORT='65536' is out of range"},
      {"MASTER_PORT", "80a", "MASTER_PORT='80a' is not an integer"},
      {"MASTER_ADDR", "", "MASTER_ADDR is empty"}};
  for (const Case& c : torchrun_cases) {
    EnvironmentMap variables = torchrun;
    variables[c.variable] = c.value;
    std::string message = detection_error(variables);
    EXPECT_NE(message.find(c.expected), std::string::npos) << c.variable << "='" << c.value << "': " << message;
  }

  EnvironmentMap local = torchrun;
  local["LOCAL_RANK"] = "2";
  local["LOCAL_WORLD_SIZE"] = "2";
  EXPECT_NE(detection_error(local).find("LOCAL_RANK='2' is out of range"), std::string::npos);

  EXPECT_NE(detection_error({{"RANK", "0"}}).find("RANK is set but WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(detection_error({{"WORLD_SIZE", "2"}}).find("WORLD_SIZE is set but RANK is not"),
            std::string::npos);
  EXPECT_NE(detection_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}})
                .find("MASTER_ADDR is not set (torchrun sets it)"),
            std::string::npos);

  const EnvironmentMap slurm = {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n1"},
                                {"SLURM_JOB_ID", "42"}};
  const std::vector<Case> slurm_cases = {
      {"SLURM_PROCID", "2", "SLURM_PROCID='2' is out of range"},
      {"SLURM_NTASKS", "0", "SLURM_NTASKS='0' is invalid"},
      {"SLURM_LOCALID", "x", "SLURM_LOCALID='x' is not an integer"},
      {"SLURM_JOB_ID", "12ab", "SLURM_JOB_ID='12ab' is not an integer"},
      {"SLURM_JOB_ID", "-5", "SLURM_JOB_ID='-5' is negative"},
      {"SLURM_JOB_NODELIST", "n[1", "SLURM_JOB_NODELIST='n[1' has '[' without ']'"}};
  for (const Case& c : slurm_cases) {
    EnvironmentMap variables = slurm;
    variables[c.variable] = c.value;
    std::string message = detection_error(variables);
    EXPECT_NE(message.find(c.expected), std::string::npos) << c.variable << "='" << c.value << "': " << message;
  }
  EnvironmentMap no_port = slurm;
  no_port.erase("SLURM_JOB_ID");
  EXPECT_NE(detection_error(no_port).find("neither MASTER_PORT nor SLURM_JOB_ID"), std::string::npos);
  EnvironmentMap no_host = slurm;
  no_host.erase("SLURM_JOB_NODELIST");
  EXPECT_NE(detection_error(no_host).find("neither MASTER_ADDR nor SLURM_JOB_NODELIST"), std::string::npos);

  std::string mpi = detection_error({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "3"}});
  EXPECT_NE(mpi.find("OMPI_COMM_WORLD_RANK='3' is out of range"), std::string::npos) << mpi;
}

TEST(DistEnvironment, ReadsProcessEnvironment) {
  // Only checks that the real environment is read: this test process is not
  // started by a launcher unless RANK or a launcher's variables are set.
  if (std::getenv("RANK") != nullptr || std::getenv("SLURM_PROCID") != nullptr ||
      std::getenv("OMPI_COMM_WORLD_RANK") != nullptr) {
    GTEST_SKIP() << "a launcher's variables are set";
  }
  EXPECT_EQ(detect_launch_environment().launcher, Launcher::kSingleProcess);
}

// ---------------------------------------------------------------------------
// Multi-process tests

std::string worker_path() {
  if (const char* path = std::getenv("IMP_DIST_WORKER")) return path;
#ifdef IMP_DIST_WORKER_PATH
  return IMP_DIST_WORKER_PATH;
#else
  return "";
#endif
}

// Returns a TCP port that was free on 127.0.0.1 a moment ago.
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket failed: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    close(fd);
    throw std::runtime_error(std::string("bind to 127.0.0.1:0 failed: ") + std::strerror(errno));
  }
  close(fd);
  return ntohs(address.sin_port);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// A tensor as a worker wrote it: shape line, then values.
struct WrittenTensor {
  std::vector<int64_t> shape;
  std::vector<double> values;
};

WrittenTensor read_tensor(const std::string& path) {
  std::ifstream in(path);
  WrittenTensor tensor;
  std::string line;
  std::getline(in, line);
  std::istringstream shape(line);
  for (int64_t size; shape >> size;) tensor.shape.push_back(size);
  std::getline(in, line);
  std::istringstream values(line);
  for (double value; values >> value;) tensor.values.push_back(value);
  return tensor;
}

// The ranks of one multi-process run. The destructor kills (SIGKILL) and
// reaps every rank still running, so no test leaves a process behind.
class WorkerRun {
 public:
  WorkerRun(const std::string& scenario, int world_size, int timeout_ms = 3000)
      : world_size_(world_size), pids_(world_size, -1), statuses_(world_size, -1) {
    const std::string worker = worker_path();
    if (worker.empty()) {
      throw std::runtime_error("the dist_worker path is unknown: set IMP_DIST_WORKER or compile with "
                               "-DIMP_DIST_WORKER_PATH=\"...\"");
    }
    const int port = free_port();
    for (int rank = 0; rank < world_size; ++rank) {
      // The parent's environment minus any launcher variables, plus this rank's.
      std::vector<std::string> variables;
      for (char** entry = environ; *entry != nullptr; ++entry) {
        std::string text(*entry);
        bool launcher = text.rfind("RANK=", 0) == 0 || text.rfind("WORLD_SIZE=", 0) == 0 ||
                        text.rfind("LOCAL_", 0) == 0 || text.rfind("MASTER_", 0) == 0 ||
                        text.rfind("SLURM_", 0) == 0 || text.rfind("OMPI_", 0) == 0;
        if (!launcher) variables.push_back(text);
      }
      variables.push_back("RANK=" + std::to_string(rank));
      variables.push_back("WORLD_SIZE=" + std::to_string(world_size));
      variables.push_back("MASTER_ADDR=127.0.0.1");
      variables.push_back("MASTER_PORT=" + std::to_string(port));
      variables.push_back("OMP_NUM_THREADS=1");
      std::vector<char*> envp;
      for (auto& variable : variables) envp.push_back(variable.data());
      envp.push_back(nullptr);

      std::vector<std::string> arguments = {worker, scenario, dir_.path(), std::to_string(timeout_ms)};
      std::vector<char*> argv;
      for (auto& argument : arguments) argv.push_back(argument.data());
      argv.push_back(nullptr);

      // Each rank's stdout and stderr go to a log file the failure messages show.
      posix_spawn_file_actions_t actions;
      posix_spawn_file_actions_init(&actions);
      std::string log = log_path(rank);
      posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
      pid_t pid = -1;
      int error = posix_spawn(&pid, worker.c_str(), &actions, nullptr, argv.data(), envp.data());
      posix_spawn_file_actions_destroy(&actions);
      if (error != 0) {
        throw std::runtime_error("posix_spawn of " + worker + " failed: " + std::strerror(error));
      }
      pids_[rank] = pid;
    }
  }

  ~WorkerRun() {
    for (int rank = 0; rank < world_size_; ++rank) {
      if (pids_[rank] > 0) {
        kill(pids_[rank], SIGKILL);
        waitpid(pids_[rank], nullptr, 0);
      }
    }
  }

  WorkerRun(const WorkerRun&) = delete;
  WorkerRun& operator=(const WorkerRun&) = delete;

  // Waits until `rank` exits or `limit` passes; returns false on the limit.
  bool wait_rank(int rank, std::chrono::milliseconds limit) {
    auto deadline = Clock::now() + limit;
    while (pids_[rank] > 0) {
      int status = 0;
      pid_t done = waitpid(pids_[rank], &status, WNOHANG);
      if (done == pids_[rank]) {
        statuses_[rank] = status;
        pids_[rank] = -1;
        return true;
      }
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }

  // Waits for every rank; returns false when one is still running at `limit`.
  bool wait_all(std::chrono::milliseconds limit) {
    auto deadline = Clock::now() + limit;
    for (int rank = 0; rank < world_size_; ++rank) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (!wait_rank(rank, std::max(left, std::chrono::milliseconds(0)))) return false;
    }
    return true;
  }

  // Exit status of a finished rank, or -1 when it ended by a signal.
  int exit_code(int rank) const {
    return WIFEXITED(statuses_[rank]) ? WEXITSTATUS(statuses_[rank]) : -1;
  }

  void signal(int rank, int signal_number) const { kill(pids_[rank], signal_number); }

  std::string file(int rank, const std::string& name) const {
    return dir_.file("rank" + std::to_string(rank) + "_" + name + ".txt");
  }
  std::string log(int rank) const { return read_file(log_path(rank)); }
  std::string logs() const {
    std::string all;
    for (int rank = 0; rank < world_size_; ++rank) all += "--- rank " + std::to_string(rank) + ":\n" + log(rank);
    return all;
  }

 private:
  std::string log_path(int rank) const { return dir_.file("rank" + std::to_string(rank) + ".log"); }

  testing::ScratchDir dir_{"imp_dist"};
  int world_size_;
  std::vector<pid_t> pids_;
  std::vector<int> statuses_;
};

// A group of one runs in the test process itself: the store binds a free
// port on 127.0.0.1 and every collective returns its input.
TEST(Distributed, SingleProcessGroup) {
  ProcessGroup group(LaunchEnvironment{});
  EXPECT_EQ(group.rank(), 0);
  EXPECT_EQ(group.world_size(), 1);

  std::vector<at::Tensor> tensors{at::arange(3, at::kFloat)};
  group.all_reduce_sum(tensors);
  EXPECT_TRUE(tensors[0].equal(at::arange(3, at::kFloat)));

  at::Tensor rows = at::arange(6, at::kFloat).view({3, 2});
  EXPECT_TRUE(group.all_gather(rows).equal(rows));
  std::vector<int64_t> received_counts;
  EXPECT_TRUE(group.all_to_all(rows, {3}, &received_counts).equal(rows));
  EXPECT_EQ(received_counts, std::vector<int64_t>{3});

  at::Tensor weight = at::zeros({2}, at::kFloat).requires_grad_(true);
  at::Tensor unused = at::zeros({2}, at::kFloat).requires_grad_(true);
  GradientReducer reducer(group, {weight, unused});
  (weight * at::tensor({3.0F, 4.0F})).sum().backward();
  reducer.reduce();
  EXPECT_TRUE(weight.grad().equal(at::tensor({3.0F, 4.0F})));
  ASSERT_TRUE(unused.grad().defined());
  EXPECT_TRUE(unused.grad().equal(at::zeros({2})));
}

TEST(Distributed, InvalidArgumentsAreRejected) {
  ProcessGroup group(LaunchEnvironment{});
  at::Tensor rows = at::zeros({3, 2});
  auto message_of = [](const auto& call) -> std::string {
    try {
      call();
    } catch (const std::exception& error) {
      return error.what();
    }
    return "";
  };
  EXPECT_NE(message_of([&] { group.all_to_all(rows, {2}); })
                .find("all_to_all: the send counts add up to 2 rows but the tensor has 3"),
            std::string::npos);
  EXPECT_NE(message_of([&] { group.all_to_all(rows, {3, 0}); }).find("2 send counts for 1 ranks"),
            std::string::npos);
  EXPECT_NE(message_of([&] { group.broadcast(rows, 1); }).find("broadcast: root rank 1 is out of range"),
            std::string::npos);
  EXPECT_NE(message_of([&] { group.all_gather(at::zeros({})); }).find("the tensor has 0 dimensions"),
            std::string::npos);
  at::Tensor weight = at::zeros({2}).requires_grad_(true);
  EXPECT_NE(message_of([&] { GradientReducer(group, {weight}, 0); }).find("the bucket size is 0 bytes"),
            std::string::npos);
  EXPECT_NE(message_of([&] { GradientReducer(group, {weight * 2}); }).find("is not a leaf tensor"),
            std::string::npos);
}

// Runs `scenario` on `world_size` ranks and expects every rank to succeed.
#define RUN_SCENARIO(run, scenario, world_size)                                   \
  WorkerRun run(scenario, world_size);                                            \
  ASSERT_TRUE(run.wait_all(std::chrono::seconds(20))) << "timed out\n" << run.logs(); \
  for (int rank = 0; rank < (world_size); ++rank) {                               \
    ASSERT_EQ(run.exit_code(rank), 0) << "rank " << rank << "\n" << run.logs();  \
  }

void expect_tensor(const WrittenTensor& actual, const std::vector<int64_t>& shape,
                   const std::vector<double>& values, const std::string& what) {
  EXPECT_EQ(actual.shape, shape) << what;
  ASSERT_EQ(actual.values.size(), values.size()) << what;
  for (size_t i = 0; i < values.size(); ++i) EXPECT_DOUBLE_EQ(actual.values[i], values[i]) << what << " [" << i << "]";
}

TEST(Distributed, AllReduceBroadcastBarrier) {
  RUN_SCENARIO(run, "all_reduce", 2);
  for (int rank = 0; rank < 2; ++rank) {
    std::string at_rank = " on rank " + std::to_string(rank);
    // Rank r passes (r + 1) everywhere, arange(4) * (r + 1), and
    // (arange(6).view(2, 3) + 10 r) transposed.
    expect_tensor(read_tensor(run.file(rank, "all_reduce_floats")), {2, 3}, {3, 3, 3, 3, 3, 3},
                  "floats" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "all_reduce_longs")), {4}, {0, 3, 6, 9}, "longs" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "all_reduce_transposed")), {3, 2}, {10, 16, 12, 18, 14, 20},
                  "transposed" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "broadcast")), {3}, {10, 20, 30}, "broadcast" + at_rank);
    std::string expected_start = "torchrun: rank " + std::to_string(rank) + " of 2 (local rank " +
                                 std::to_string(rank) + "), rendezvous at 127.0.0.1:";
    EXPECT_EQ(read_file(run.file(rank, "environment")).rfind(expected_start, 0), 0u)
        << read_file(run.file(rank, "environment"));
  }
}

TEST(Distributed, AllGatherUnevenRows) {
  RUN_SCENARIO(run, "all_gather", 2);
  for (int rank = 0; rank < 2; ++rank) {
    std::string at_rank = " on rank " + std::to_string(rank);
    // Rank 0: one row [0, 1]; rank 1: three rows 100 + [0..5].
    expect_tensor(read_tensor(run.file(rank, "all_gather")), {4, 2}, {0, 1, 100, 101, 102, 103, 104, 105},
                  "gathered" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "all_gather_counts")), {2}, {1, 3}, "counts" + at_rank);
    std::string mismatch = read_file(run.file(rank, "all_gather_mismatch"));
    EXPECT_NE(mismatch.find("rank 1 passes a tensor of shape [*, 3] and dtype Float but rank 0 passes shape "
                            "[*, 2]"),
              std::string::npos)
        << mismatch;
  }
}

TEST(Distributed, AllToAllUnevenSplits) {
  RUN_SCENARIO(run, "all_to_all", 3);
  // Rank s sends counts[s][d] rows to rank d; row k of that block is
  // (100s + 10d + k, -(100s + 10d + k)).
  const int64_t counts[3][3] = {{1, 2, 0}, {3, 0, 1}, {2, 2, 2}};
  for (int destination = 0; destination < 3; ++destination) {
    std::vector<double> expected;
    std::vector<double> expected_counts;
    for (int source = 0; source < 3; ++source) {
      expected_counts.push_back(static_cast<double>(counts[source][destination]));
      for (int64_t k = 0; k < counts[source][destination]; ++k) {
        double value = 100 * source + 10 * destination + k;
        expected.push_back(value);
        expected.push_back(-value);
      }
    }
    std::string at_rank = " on rank " + std::to_string(destination);
    expect_tensor(read_tensor(run.file(destination, "all_to_all")),
                  {static_cast<int64_t>(expected.size() / 2), 2}, expected, "rows" + at_rank);
    expect_tensor(read_tensor(run.file(destination, "all_to_all_counts")), {3}, expected_counts,
                  "counts" + at_rank);
  }
}

TEST(Distributed, CollectiveGradients) {
  RUN_SCENARIO(run, "gradients", 2);
  // all_gather_with_grad: the summed weights are 3 * arange(6).view(3, 2);
  // rank 0 owns rows 0-1 and rank 1 owns row 2.
  expect_tensor(read_tensor(run.file(0, "all_gather_grad")), {2, 2}, {0, 3, 6, 9}, "all_gather rank 0");
  expect_tensor(read_tensor(run.file(1, "all_gather_grad")), {1, 2}, {12, 15}, "all_gather rank 1");
  // all_to_all_with_grad: a row sent to rank d at position p gets (d+1)(p+1).
  // Rank 0 sends row 0 to rank 0 (p 0) and rows 1-2 to rank 1 (p 0, 1);
  // rank 1 sends rows 0-1 to rank 0 (p 1, 2) and row 2 to rank 1 (p 2).
  expect_tensor(read_tensor(run.file(0, "all_to_all_grad")), {3, 1}, {1, 2, 4}, "all_to_all rank 0");
  expect_tensor(read_tensor(run.file(1, "all_to_all_grad")), {3, 1}, {2, 3, 6}, "all_to_all rank 1");
}

TEST(Distributed, GradientReducerAveragesAndFillsUndefined) {
  RUN_SCENARIO(run, "reducer", 2);
  for (int rank = 0; rank < 2; ++rank) {
    std::string at_rank = " on rank " + std::to_string(rank);
    EXPECT_EQ(read_file(run.file(rank, "reducer_buckets")), "3") << at_rank;
    // Rank r's gradients: w1 = r + 1, w2 = (r + 1) * arange(4), w3 = [2, 4, 6, 8]
    // on rank 0 only. The means: 1.5, 1.5 * arange(4), [1, 2, 3, 4].
    expect_tensor(read_tensor(run.file(rank, "reducer_plain_w1")), {3}, {1.5, 1.5, 1.5}, "plain w1" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "reducer_plain_w2")), {2, 2}, {0, 1.5, 3, 4.5},
                  "plain w2" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "reducer_plain_w3")), {4}, {1, 2, 3, 4}, "plain w3" + at_rank);
    EXPECT_EQ(read_file(run.file(rank, "reducer_plain_frozen_defined")), "undefined") << at_rank;
    // Two accumulated micro-batches, reduced through the hooks: twice the means.
    expect_tensor(read_tensor(run.file(rank, "reducer_hooks_w1")), {3}, {3, 3, 3}, "hooks w1" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "reducer_hooks_w2")), {2, 2}, {0, 3, 6, 9}, "hooks w2" + at_rank);
    expect_tensor(read_tensor(run.file(rank, "reducer_hooks_w3")), {4}, {2, 4, 6, 8}, "hooks w3" + at_rank);
  }
}

// Expert parallelism in one MoE layer: outputs and every gradient equal
// the whole layer's, with uneven batches (3 and 5 examples), and under token
// choice with each rank's tokens reaching only its own two experts.
TEST(Distributed, ShardedExpertsMatchWholeLayer) {
  RUN_SCENARIO(run, "moe_expert_parallel", 2);
  for (const std::string router : {"experts_choose", "token_choice"}) {
    for (int rank = 0; rank < 2; ++rank) {
      const std::string at_rank = router + " on rank " + std::to_string(rank);
      EXPECT_EQ(read_file(run.file(rank, router + "_local_experts")), rank == 0 ? "2 from 0" : "2 from 2")
          << at_rank;
      const WrittenTensor differences = read_tensor(run.file(rank, router + "_differences"));
      ASSERT_EQ(differences.values.size(), 4u) << at_rank;
      const char* names[] = {"output", "input gradient", "expert gradients", "router gradient"};
      for (int i = 0; i < 4; ++i) EXPECT_LT(differences.values[i], 1e-5) << names[i] << ", " << at_rank;
      EXPECT_EQ(read_file(run.file(rank, router + "_gathered")), "0.000000 4") << at_rank;
    }
  }
  // Token choice: the router's margins (9 and more between the two sides)
  // keep each rank's tokens on its own side, whatever the random features.
  for (int rank = 0; rank < 2; ++rank) {
    const WrittenTensor taken = read_tensor(run.file(rank, "token_choice_tokens_per_expert"));
    ASSERT_EQ(taken.values.size(), 4u);
    const double own = rank == 0 ? taken.values[0] + taken.values[1] : taken.values[2] + taken.values[3];
    const double other = rank == 0 ? taken.values[2] + taken.values[3] : taken.values[0] + taken.values[1];
    EXPECT_GT(own, 0) << "rank " << rank;
    EXPECT_EQ(other, 0) << "rank " << rank;
  }
}

// Expects the surviving rank to exit with status 3 within `limit` and
// returns its error message.
std::string survivor_error(WorkerRun& run, int survivor, std::chrono::milliseconds limit) {
  auto started = Clock::now();
  bool exited = run.wait_rank(survivor, limit);
  EXPECT_TRUE(exited) << "rank " << survivor << " still runs after " << limit.count() << " ms\n" << run.logs();
  if (!exited) return "";
  EXPECT_EQ(run.exit_code(survivor), 3) << run.logs();
  EXPECT_LT(Clock::now() - started, limit);
  return read_file(run.file(survivor, "error"));
}

// With a 3 s timeout and 0.5 s heartbeats, a survivor needs up to 3 s for the
// collective, 1.25 s to compare heartbeats, plus start-up; 12 s is generous.
constexpr std::chrono::milliseconds kFaultLimit{12000};

TEST(Distributed, PeerExitIsNamed) {
  WorkerRun run("fault_exit", 2);
  std::string error = survivor_error(run, 0, kFaultLimit);
  EXPECT_NE(error.find("rank 1 of 2 stopped responding (last heartbeat"), std::string::npos) << error;
  EXPECT_NE(error.find("the collective all_reduce (#1) failed after"), std::string::npos) << error;
  EXPECT_NE(error.find("restart from the last checkpoint"), std::string::npos) << error;
  EXPECT_FALSE(file_exists(run.file(0, "unexpected_success")));
}

TEST(Distributed, StoreHostExitIsNamed) {
  WorkerRun run("fault_exit_rank0", 2);
  auto started = Clock::now();
  ASSERT_TRUE(run.wait_rank(1, kFaultLimit)) << "rank 1 still runs\n" << run.logs();
  EXPECT_LT(Clock::now() - started, kFaultLimit);
  // NOTE: LibTorch 1.13's TCPStore callback thread calls std::terminate when
  // rank 0's connection is reset, which sometimes happens before rank 1
  // reports the loss. Either way rank 1 must stop; the message is checked
  // when it got to write one.
  if (run.exit_code(1) == -1) {
    EXPECT_NE(run.log(1).find("Connection reset by peer"), std::string::npos) << run.logs();
    return;
  }
  EXPECT_EQ(run.exit_code(1), 3) << run.logs();
  std::string error = read_file(run.file(1, "error"));
  EXPECT_NE(error.find("rank 0 of 2 stopped responding (the rendezvous store it hosts at 127.0.0.1:"),
            std::string::npos)
      << error;
}

TEST(Distributed, StoppedPeerTimesOut) {
  WorkerRun run("fault_stop", 2);
  // Rank 1 writes "ready" after the rendezvous; stopping it then freezes its
  // heartbeat while rank 0 waits in all_reduce.
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!file_exists(run.file(1, "ready")) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(file_exists(run.file(1, "ready"))) << run.logs();
  run.signal(1, SIGSTOP);
  std::string error = survivor_error(run, 0, kFaultLimit);
  EXPECT_NE(error.find("rank 1 of 2 stopped responding (last heartbeat"), std::string::npos) << error;
  EXPECT_NE(error.find("the collective all_reduce (#1) timed out after 3 s on rank 0"), std::string::npos)
      << error;
}

TEST(Distributed, HangingPeerIsNamed) {
  // Rank 1 sleeps with its heartbeat running; the destructor of `run` kills it.
  WorkerRun run("fault_hang", 2);
  std::string error = survivor_error(run, 0, kFaultLimit);
  EXPECT_NE(error.find("rank 1 of 2 is alive but has not started collective #1 (it has started 0)"),
            std::string::npos)
      << error;
  EXPECT_NE(error.find("timed out after 3 s"), std::string::npos) << error;
}

}  // namespace
}  // namespace imp::dist
