#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include <thread>

#include <ATen/Parallel.h>

#include "imp/core/threads.h"

namespace {

using imp::EnvironmentVariables;
using imp::preferred_thread_environment;

TEST(ThreadEnvironment, Bf16SetsOneOpenBlasThread) {
  EXPECT_EQ(preferred_thread_environment("bf16", nullptr, nullptr, nullptr),
            (EnvironmentVariables{{"OPENBLAS_NUM_THREADS", "1"}}));
}

TEST(ThreadEnvironment, Fp32SetsPassiveAndTimeout) {
  EXPECT_EQ(preferred_thread_environment("fp32", nullptr, nullptr, nullptr),
            (EnvironmentVariables{{"OMP_WAIT_POLICY", "PASSIVE"}, {"OPENBLAS_THREAD_TIMEOUT", "4"}}));
  // A timeout of the user's own is kept.
  EXPECT_EQ(preferred_thread_environment("fp32", nullptr, nullptr, "20"),
            (EnvironmentVariables{{"OMP_WAIT_POLICY", "PASSIVE"}}));
}

TEST(ThreadEnvironment, UserSettingWins) {
  EXPECT_TRUE(preferred_thread_environment("bf16", "PASSIVE", nullptr, nullptr).empty());
  EXPECT_TRUE(preferred_thread_environment("fp32", nullptr, "2", nullptr).empty());
  EXPECT_TRUE(preferred_thread_environment("fp32", "ACTIVE", "4", nullptr).empty());
}

TEST(IntraOpThreads, ZeroFollowsEnvironmentOrCores) {
  const int before = at::get_num_threads();
  const char* saved = std::getenv("OMP_NUM_THREADS");
  const std::string saved_value = saved != nullptr ? saved : "";
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  imp::set_intra_op_threads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  unsetenv("OMP_NUM_THREADS");
  imp::set_intra_op_threads(0);
  EXPECT_EQ(at::get_num_threads(), cores);
  // Processes launched together on one machine share its cores.
  imp::set_intra_op_threads(0, 2);
  EXPECT_EQ(at::get_num_threads(), std::max(1, cores / 2));
  imp::set_intra_op_threads(0, 4 * cores);
  EXPECT_EQ(at::get_num_threads(), 1);
  // OMP_NUM_THREADS wins over the share, as in PyTorch; nonsense is ignored.
  setenv("OMP_NUM_THREADS", "3", 1);
  imp::set_intra_op_threads(0, 2);
  EXPECT_EQ(at::get_num_threads(), 3);
  setenv("OMP_NUM_THREADS", "many", 1);
  imp::set_intra_op_threads(0);
  EXPECT_EQ(at::get_num_threads(), cores);
  // An explicit count wins over both.
  setenv("OMP_NUM_THREADS", "3", 1);
  imp::set_intra_op_threads(2);
  EXPECT_EQ(at::get_num_threads(), 2);

  if (saved != nullptr) {
    setenv("OMP_NUM_THREADS", saved_value.c_str(), 1);
  } else {
    unsetenv("OMP_NUM_THREADS");
  }
  at::set_num_threads(before);
}

TEST(ThreadEnvironment, SettingsLineNamesVariables) {
  const std::string line = imp::thread_settings();
  EXPECT_NE(line.find(" threads, OMP_WAIT_POLICY"), std::string::npos) << line;
  EXPECT_NE(line.find(", OPENBLAS_NUM_THREADS"), std::string::npos) << line;
}

}  // namespace
