#include "imp/core/cpu_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace imp {
namespace {

constexpr size_t kMinCachedBytes = size_t{64} << 10;

// Rounds `bytes` (at least kMinCachedBytes) up to its size class: sixteen
// classes per power of two, so at most a sixteenth of a block is slack.
size_t size_class(size_t bytes) {
  size_t power = kMinCachedBytes;
  while (power <= bytes / 2) power *= 2;
  const size_t step = power / 16;
  return (bytes + step - 1) / step * step;
}

// c10::Allocator's interface differs between LibTorch versions: 1.x
// declares allocate() const and has no copy_data(), while later 2.x releases
// declare allocate() non-const and copy_data() pure virtual. The class
// declares both forms of allocate() and a copy_data() without `override`, so
// whichever the base declares is overridden and the others are plain
// members. NOTE: built and tested against LibTorch 1.13 only.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) { return static_cast<const CachingCpuAllocator*>(this)->allocate(bytes); }

  c10::DataPtr allocate(size_t bytes) const {
    const c10::Device device(c10::DeviceType::CPU);
    if (bytes < kMinCachedBytes) {
      void* data = c10::alloc_cpu(bytes);
      return {data, data, &c10::free_cpu, device};
    }
    void* data = take(size_class(bytes));
    // The context is the data pointer itself, as raw_allocate requires.
    return {data, data, &release, device};
  }

  // raw_allocate hands out blocks of either size. release finds cached ones
  // in sizes_ and frees the others directly.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* destination, const void* source, std::size_t count) const {
    std::memcpy(destination, source, count);
  }

  void set_limit(size_t limit_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.limit_bytes = limit_bytes;
    trim(0);
  }

  void release_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t limit = stats_.limit_bytes;
    stats_.limit_bytes = 0;
    trim(0);
    stats_.limit_bytes = limit;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_in_use_bytes = stats_.in_use_bytes;
  }

  CpuCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  static CachingCpuAllocator& instance() {
    // Never destroyed: tensors freed during static destruction still call
    // release.
    static CachingCpuAllocator* allocator = new CachingCpuAllocator();
    return *allocator;
  }

 private:
  // Returns a block of at least `size` bytes: the smallest kept block of up
  // to twice that, else new memory. Larger blocks are taken too because
  // their pages are resident already: a step's backward pass then reuses
  // what its forward pass freed instead of growing the process.
  void* take(size_t size) const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto bin = free_.lower_bound(size);
      if (bin != free_.end() && bin->first <= 2 * size) {
        const size_t bin_size = bin->first;
        void* data = bin->second.back();
        sizes_[data] = bin_size;
        stats_.kept_bytes -= bin_size;
        bin->second.pop_back();
        if (bin->second.empty()) free_.erase(bin);
        ++stats_.reused;
        count_in_use(bin_size);
        return data;
      }
      ++stats_.allocated;
    }
    void* data = c10::alloc_cpu(size);
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[data] = size;
    count_in_use(size);
    return data;
  }

  // Adds a block of `size` bytes to the memory in use. Called with mutex_
  // held.
  void count_in_use(size_t size) const {
    stats_.in_use_bytes += size;
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  }

  static void release(void* data) {
    if (data == nullptr) return;
    CachingCpuAllocator& self = instance();
    std::unique_lock<std::mutex> lock(self.mutex_);
    auto found = self.sizes_.find(data);
    if (found == self.sizes_.end()) {
      // A small block from raw_allocate: it was never cached.
      lock.unlock();
      c10::free_cpu(data);
      return;
    }
    const size_t size = found->second;
    self.sizes_.erase(found);
    self.stats_.in_use_bytes -= size;
    if (size > self.stats_.limit_bytes) {
      lock.unlock();
      c10::free_cpu(data);
      return;
    }
    self.trim(size);
    self.free_[size].push_back(data);
    self.stats_.kept_bytes += size;
    self.stats_.peak_kept_bytes = std::max(self.stats_.peak_kept_bytes, self.stats_.kept_bytes);
  }

  // Frees kept blocks, largest first, until `incoming` more bytes fit under
  // the limit. Called with mutex_ held.
  void trim(size_t incoming) const {
    while (!free_.empty() && stats_.kept_bytes + incoming > stats_.limit_bytes) {
      auto largest = std::prev(free_.end());
      c10::free_cpu(largest->second.back());
      stats_.kept_bytes -= largest->first;
      largest->second.pop_back();
      if (largest->second.empty()) free_.erase(largest);
    }
  }

  mutable std::mutex mutex_;
  mutable std::map<size_t, std::vector<void*>> free_;  // size class -> kept blocks, never empty
  mutable std::unordered_map<void*, size_t> sizes_;    // block in use -> size class
  mutable CpuCacheStats stats_;
};

}  // namespace

size_t cpu_cache_limit_bytes(int64_t megabytes) {
  if (megabytes >= 0) return static_cast<size_t>(megabytes) << 20;
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return size_t{1} << 30;  // unknown: 1 GiB
  return static_cast<size_t>(pages) * static_cast<size_t>(page_size) / 4;
}

void use_caching_cpu_allocator(size_t limit_bytes) {
  static std::once_flag installed;
  CachingCpuAllocator& allocator = CachingCpuAllocator::instance();
  allocator.set_limit(limit_bytes);
  std::call_once(installed, [&allocator] { c10::SetCPUAllocator(&allocator, /*priority=*/1); });
}

CpuCacheStats cpu_cache_stats() {
  CpuCacheStats stats = CachingCpuAllocator::instance().stats();
  stats.installed = c10::GetCPUAllocator() == &CachingCpuAllocator::instance();
  return stats;
}

void release_cpu_cache() { CachingCpuAllocator::instance().release_all(); }

void reset_cpu_cache_peak() { CachingCpuAllocator::instance().reset_peak(); }

}  // namespace imp
