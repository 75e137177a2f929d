#include "imp/core/heap.h"

#include <cstdlib>
#include <cstring>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace imp {
namespace {

constexpr int kMmapThreshold = 32 << 20;

const char* settings = "glibc's default heap settings";

}  // namespace

bool user_sets_heap(const char* glibc_tunables, const char* mmap_threshold, const char* trim_threshold) {
  return (glibc_tunables != nullptr && std::strstr(glibc_tunables, "glibc.malloc.") != nullptr) ||
         mmap_threshold != nullptr || trim_threshold != nullptr;
}

void keep_freed_memory_in_heap() {
#ifdef __GLIBC__
  if (user_sets_heap(std::getenv("GLIBC_TUNABLES"), std::getenv("MALLOC_MMAP_THRESHOLD_"),
                     std::getenv("MALLOC_TRIM_THRESHOLD_"))) {
    settings = "the user's heap settings";
    return;
  }
  // mallopt(3): -1 turns trimming off.
  if (mallopt(M_TRIM_THRESHOLD, -1) == 1 && mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1) {
    settings = "heap kept: no trimming, mmap threshold 32 MiB";
  }
#else
  settings = "the C library's default heap settings";
#endif
}

const char* heap_tunables() {
  // A trim threshold that no heap reaches: never trim.
  return "glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.mmap_threshold=33554432";
}

const char* heap_settings() { return settings; }

}  // namespace imp
