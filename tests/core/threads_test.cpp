#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <ATen/Parallel.h>

#include "imp/core/heap.h"
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

// Heap settings the user chose through the environment are left alone.
// Other glibc tunables are not heap settings.
TEST(HeapSettings, UserChoiceWins) {
  EXPECT_FALSE(imp::user_sets_heap(nullptr, nullptr, nullptr));
  EXPECT_FALSE(imp::user_sets_heap("glibc.cpu.x86_ibt=on", nullptr, nullptr));
  EXPECT_TRUE(imp::user_sets_heap("glibc.malloc.arena_max=2", nullptr, nullptr));
  EXPECT_TRUE(imp::user_sets_heap("glibc.cpu.x86_ibt=on:glibc.malloc.trim_threshold=0", nullptr, nullptr));
  EXPECT_TRUE(imp::user_sets_heap(nullptr, "65536", nullptr));
  EXPECT_TRUE(imp::user_sets_heap(nullptr, nullptr, "0"));
}

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
// A freed 20 MiB block, the size of a large activation, stays in the heap
// for the next allocation instead of going back to the system.
TEST(HeapSettings, FreedBlockStaysInHeap) {
  if (imp::user_sets_heap(std::getenv("GLIBC_TUNABLES"), std::getenv("MALLOC_MMAP_THRESHOLD_"),
                          std::getenv("MALLOC_TRIM_THRESHOLD_"))) {
    GTEST_SKIP() << "the environment sets glibc heap settings";
  }
  imp::keep_freed_memory_in_heap();
  EXPECT_STREQ(imp::heap_settings(), "heap kept: no trimming, mmap threshold 32 MiB");
  const size_t size = 20u << 20;
  const size_t free_before = mallinfo2().fordblks;
  const size_t mappings_before = mallinfo2().hblks;
  char* block = static_cast<char*>(std::malloc(size));
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, size);
  EXPECT_EQ(mallinfo2().hblks, mappings_before) << "the block got a mapping of its own";
  std::free(block);
  EXPECT_GE(mallinfo2().fordblks, free_before + size);
}
#endif

}  // namespace
