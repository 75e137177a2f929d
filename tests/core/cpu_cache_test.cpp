#include "imp/core/cpu_cache.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <vector>

namespace imp {
namespace {

constexpr int64_t kMiB = 1 << 20;

// A float tensor of `bytes` bytes.
at::Tensor tensor_of(int64_t bytes) { return at::empty({bytes / 4}, at::kFloat); }

class CpuCache : public ::testing::Test {
 protected:
  void SetUp() override {
    use_caching_cpu_allocator(64 * kMiB);
    release_cpu_cache();
  }
  void TearDown() override { use_caching_cpu_allocator(cpu_cache_limit_bytes(-1)); }
};

TEST_F(CpuCache, IsLibTorchsCpuAllocator) {
  EXPECT_TRUE(cpu_cache_stats().installed);
  EXPECT_EQ(cpu_cache_stats().limit_bytes, size_t(64 * kMiB));
}

TEST_F(CpuCache, ReusesFreedBlockOfSameSize) {
  at::Tensor first = tensor_of(kMiB);
  const void* data = first.data_ptr();
  first.reset();
  EXPECT_EQ(cpu_cache_stats().kept_bytes, size_t(kMiB));
  const int64_t reused = cpu_cache_stats().reused;
  const at::Tensor second = tensor_of(kMiB);
  EXPECT_EQ(second.data_ptr(), data);
  EXPECT_EQ(cpu_cache_stats().reused, reused + 1);
  EXPECT_EQ(cpu_cache_stats().kept_bytes, 0u);
}

TEST_F(CpuCache, CountsLargeTensorsInUse) {
  const size_t before = cpu_cache_stats().in_use_bytes;
  at::Tensor first = tensor_of(kMiB);
  at::Tensor second = tensor_of(2 * kMiB);
  const at::Tensor small = tensor_of(4096);  // under 64 KiB: not counted
  EXPECT_EQ(cpu_cache_stats().in_use_bytes, before + 3 * kMiB);
  EXPECT_GE(cpu_cache_stats().peak_in_use_bytes, before + 3 * kMiB);

  second.reset();
  EXPECT_EQ(cpu_cache_stats().in_use_bytes, before + kMiB);
  reset_cpu_cache_peak();
  EXPECT_EQ(cpu_cache_stats().peak_in_use_bytes, before + kMiB);

  // A reused block counts at its size class, here the 2 MiB block.
  const at::Tensor reused = tensor_of(kMiB + kMiB / 2);
  EXPECT_EQ(cpu_cache_stats().in_use_bytes, before + 3 * kMiB);
  EXPECT_EQ(cpu_cache_stats().peak_in_use_bytes, before + 3 * kMiB);
}

TEST_F(CpuCache, ReusedBlockIsZeroedByZeros) {
  at::Tensor sevens = at::full({kMiB / 4}, 7.0f);
  const void* data = sevens.data_ptr();
  sevens.reset();
  const at::Tensor zeros = at::zeros({kMiB / 4});
  EXPECT_EQ(zeros.data_ptr(), data);
  EXPECT_EQ(zeros.abs().max().item<float>(), 0.0f);
}

TEST_F(CpuCache, TakesBlocksUpToTwiceTheRequest) {
  at::Tensor two = tensor_of(2 * kMiB);
  const void* data = two.data_ptr();
  two.reset();
  // 2 MiB serves a request of 1.25 MiB ...
  at::Tensor smaller = tensor_of(kMiB + kMiB / 4);
  EXPECT_EQ(smaller.data_ptr(), data);
  smaller.reset();
  // ... but not one of 0.75 MiB, for which it is more than twice as large.
  const int64_t allocated = cpu_cache_stats().allocated;
  const at::Tensor small = tensor_of(3 * kMiB / 4);
  EXPECT_NE(small.data_ptr(), data);
  EXPECT_EQ(cpu_cache_stats().allocated, allocated + 1);
}

TEST_F(CpuCache, SmallAllocationsBypassTheCache) {
  const CpuCacheStats before = cpu_cache_stats();
  at::Tensor small = tensor_of(4096);
  small.reset();
  const CpuCacheStats after = cpu_cache_stats();
  EXPECT_EQ(after.reused, before.reused);
  EXPECT_EQ(after.allocated, before.allocated);
  EXPECT_EQ(after.kept_bytes, 0u);
}

TEST_F(CpuCache, LimitCapsKeptMemory) {
  use_caching_cpu_allocator(5 * kMiB);
  std::vector<at::Tensor> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(tensor_of(2 * kMiB));
  blocks.clear();
  // Two of the four 2 MiB blocks fit under 5 MiB.
  EXPECT_EQ(cpu_cache_stats().kept_bytes, size_t(4 * kMiB));
  use_caching_cpu_allocator(kMiB);
  EXPECT_EQ(cpu_cache_stats().kept_bytes, 0u);
  use_caching_cpu_allocator(0);
  at::Tensor block = tensor_of(2 * kMiB);
  block.reset();
  EXPECT_EQ(cpu_cache_stats().kept_bytes, 0u);
}

TEST_F(CpuCache, LargestBlocksLeaveFirst) {
  use_caching_cpu_allocator(6 * kMiB);
  at::Tensor large = tensor_of(4 * kMiB);
  at::Tensor small = tensor_of(2 * kMiB);
  const void* small_data = small.data_ptr();
  small.reset();
  large.reset();  // 6 MiB kept: at the limit
  at::Tensor other = tensor_of(kMiB / 2);  // both kept blocks are over twice as large
  other.reset();                           // over the limit: the 4 MiB block goes
  EXPECT_EQ(cpu_cache_stats().kept_bytes, size_t(2 * kMiB + kMiB / 2));
  EXPECT_EQ(tensor_of(2 * kMiB).data_ptr(), small_data);
}

// oneDNN inside LibTorch allocates through raw_allocate.
TEST_F(CpuCache, RawAllocationsRoundTrip) {
  c10::Allocator* allocator = c10::GetCPUAllocator();
  void* large = allocator->raw_allocate(kMiB);
  void* small = allocator->raw_allocate(100);
  ASSERT_NE(large, nullptr);
  ASSERT_NE(small, nullptr);
  allocator->raw_deallocate(small);
  allocator->raw_deallocate(large);
  EXPECT_EQ(cpu_cache_stats().kept_bytes, size_t(kMiB));
  EXPECT_EQ(tensor_of(kMiB).data_ptr(), large);
}

TEST(CpuCacheLimit, MinusOneIsAQuarterOfMemory) {
  EXPECT_EQ(cpu_cache_limit_bytes(0), 0u);
  EXPECT_EQ(cpu_cache_limit_bytes(3), size_t(3 * kMiB));
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  EXPECT_EQ(cpu_cache_limit_bytes(-1), size_t(pages) * size_t(page_size) / 4);
}

}  // namespace
}  // namespace imp
