// Thread settings that the OpenMP and OpenBLAS runtimes read once, when they
// are loaded, and that therefore have to be in the environment before the
// process starts.
//
// LibTorch runs its own kernels (and, in bf16, oneDNN's matmuls) on an
// OpenMP pool, while fp32 matmuls go to OpenBLAS, whose pthread build keeps
// a second pool beside it. On few cores the two pools fight over them. What
// helps depends on which pool does the work; bench_train on a 2-core Zen 4
// machine, 600 steps of the default config:
//   bf16  libgomp's default wait policy, OPENBLAS_NUM_THREADS=1   41.5 s
//         OMP_WAIT_POLICY=PASSIVE                                 59.3 s
//   fp32  OMP_WAIT_POLICY=PASSIVE                                 90.2 s
//         libgomp's default wait policy, OPENBLAS_NUM_THREADS=1   97.8 s
//         OMP_WAIT_POLICY=ACTIVE, OpenBLAS's default threads     264.4 s
// and bench_peer's fp32 IMP-Ti step, 3 alternating pairs of runs:
//   fp32  OMP_WAIT_POLICY=PASSIVE                       0.316-0.378 steps/s
//         the same and OPENBLAS_THREAD_TIMEOUT=4        0.418-0.423 steps/s
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace imp {

using EnvironmentVariables = std::vector<std::pair<std::string, std::string>>;

// The variables to set for training or evaluating in `dtype` ("bf16" or
// "fp32"), given the current values of OMP_WAIT_POLICY,
// OPENBLAS_NUM_THREADS and OPENBLAS_THREAD_TIMEOUT (nullptr when unset).
// Empty when the user has set either of the first two: then all are left as
// they are. A timeout the user has set is kept.
EnvironmentVariables preferred_thread_environment(const std::string& dtype,
                                                  const char* omp_wait_policy,
                                                  const char* openblas_num_threads,
                                                  const char* openblas_thread_timeout);

// Sets LibTorch's intra-op thread count to `threads` (the train.threads
// key). When `threads` is 0: OMP_NUM_THREADS when it is set to a positive
// number, as PyTorch does, else the cores shared evenly among the
// `processes_on_node` processes a launcher started on this machine (at
// least one thread each).
void set_intra_op_threads(int threads, int processes_on_node = 1);

// One line for logs: LibTorch's thread count and the three variables, e.g.
// "2 threads, OMP_WAIT_POLICY (unset), OPENBLAS_NUM_THREADS=1,
// OPENBLAS_THREAD_TIMEOUT (unset)".
std::string thread_settings();

// Sets the preferred variables for `dtype` and re-executes this program with
// the same arguments, so that the runtimes see them. Returns without doing
// anything when there is nothing to set, and carries on with the environment
// as it is when the exec fails (no /proc).
void reexec_with_thread_environment(const std::string& dtype, char** argv);

}  // namespace imp
