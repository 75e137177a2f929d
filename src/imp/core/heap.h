// Heap settings for a process that frees and allocates the same large
// tensors every step.
//
// glibc's malloc gives free memory at the top of its heap back to the
// system once that memory passes the trim threshold, and it serves blocks
// above the mmap threshold from mappings of their own. A training step frees
// its activations (each up to tens of MiB) and the next one allocates them
// again, so by default the kernel maps and zeroes those pages anew every
// step. On a 2-core Zen 4 machine, bench_peer's bf16 IMP-Ti step with
// blocks recomputed ran at 0.458 and 0.507 steps/s in two runs with glibc's
// defaults, and at 0.519 and 0.587 with these settings, at the same peak
// memory.
#pragma once

namespace imp {

// Whether the user has chosen glibc heap settings: GLIBC_TUNABLES names a
// glibc.malloc tunable, or MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
// is set. Arguments are the variables' values, nullptr when unset.
bool user_sets_heap(const char* glibc_tunables, const char* mmap_threshold, const char* trim_threshold);

// Keeps freed memory in the heap for reuse: no trimming, and blocks up to
// 32 MiB (glibc's largest mmap threshold on 64-bit systems) from the heap.
// Larger blocks still get mappings of their own. Does nothing when the user
// has chosen heap settings (see user_sets_heap) or the C library is not glibc.
void keep_freed_memory_in_heap();

// The same settings as a GLIBC_TUNABLES value, for child processes such as
// the reference in bench_peer.
const char* heap_tunables();

// One line for logs: what keep_freed_memory_in_heap() did in this process.
const char* heap_settings();

}  // namespace imp
