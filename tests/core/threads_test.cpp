#include <gtest/gtest.h>

#include <thread>

#include <ATen/Parallel.h>

#include "imp/core/threads.h"

namespace {

using imp::EnvironmentVariables;
using imp::preferred_thread_environment;

TEST(ThreadEnvironment, Bf16SetsOneOpenBlasThread) {
  EXPECT_EQ(preferred_thread_environment("bf16", nullptr, nullptr),
            (EnvironmentVariables{{"OPENBLAS_NUM_THREADS", "1"}}));
}

TEST(ThreadEnvironment, Fp32SetsPassiveWait) {
  EXPECT_EQ(preferred_thread_environment("fp32", nullptr, nullptr),
            (EnvironmentVariables{{"OMP_WAIT_POLICY", "PASSIVE"}}));
}

TEST(ThreadEnvironment, UserSettingWins) {
  EXPECT_TRUE(preferred_thread_environment("bf16", "PASSIVE", nullptr).empty());
  EXPECT_TRUE(preferred_thread_environment("fp32", nullptr, "2").empty());
  EXPECT_TRUE(preferred_thread_environment("fp32", "ACTIVE", "4").empty());
}

TEST(IntraOpThreads, ZeroMeansEveryCore) {
  const int before = at::get_num_threads();
  imp::set_intra_op_threads(1);
  EXPECT_EQ(at::get_num_threads(), 1);
  imp::set_intra_op_threads(0);
  EXPECT_EQ(at::get_num_threads(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  at::set_num_threads(before);
}

TEST(ThreadEnvironment, SettingsLineNamesVariables) {
  const std::string line = imp::thread_settings();
  EXPECT_NE(line.find(" threads, OMP_WAIT_POLICY"), std::string::npos) << line;
  EXPECT_NE(line.find(", OPENBLAS_NUM_THREADS"), std::string::npos) << line;
}

}  // namespace
