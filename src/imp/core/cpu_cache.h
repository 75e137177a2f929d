// A caching allocator for LibTorch's CPU tensors.
//
// A training step allocates the same tensors every time it runs a task
// signature: activations, their gradients, optimizer temporaries. glibc
// serves large blocks with fresh mmap calls and returns them to the system
// when they are freed, so the kernel maps and zeroes every page again on
// each step. In perf profiles of the IMP-Ti benchmark (bench_peer) on 2
// cores, the kernel's page clearing took 8-11% of the CPU time.
//
// The caching allocator keeps freed blocks of 64 KiB and more in size
// classes (sixteen per power of two) and hands them out again, the CPU
// counterpart of the CUDA caching allocator. Blocks of a signature seen
// before are reused, and a new signature allocates what it needs once. The
// freed memory it keeps is capped. Past the cap, the largest kept blocks go
// back to the system first.
#pragma once

#include <cstddef>
#include <cstdint>

namespace imp {

// Returns the cache limit in bytes for a size in MiB: -1 means a quarter of
// this machine's physical memory, 0 means none.
size_t cpu_cache_limit_bytes(int64_t megabytes);

// Makes the caching allocator LibTorch's CPU allocator for the rest of the
// process, keeping at most `limit_bytes` of freed memory. Later calls only
// change the limit (0 keeps nothing). Tensors allocated before the first
// call keep their own allocator.
void use_caching_cpu_allocator(size_t limit_bytes);

// Counters of the caching allocator since the process started.
struct CpuCacheStats {
  int64_t reused = 0;        // allocations served from kept blocks
  int64_t allocated = 0;     // allocations that took new memory
  size_t kept_bytes = 0;     // freed memory kept now
  size_t peak_kept_bytes = 0;
  // Memory in use in blocks of 64 KiB and more, counted by size class, and
  // its peak. The peak is the CPU counterpart of a GPU's peak allocated
  // memory. Unlike peak RSS, it leaves out code, libraries and small tensors.
  size_t in_use_bytes = 0;
  size_t peak_in_use_bytes = 0;
  size_t limit_bytes = 0;
  bool installed = false;
};
CpuCacheStats cpu_cache_stats();

// Returns all kept blocks to the system.
void release_cpu_cache();

// Restarts peak_in_use_bytes from the memory in use now.
void reset_cpu_cache_peak();

}  // namespace imp
