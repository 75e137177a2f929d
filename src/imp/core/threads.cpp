#include "imp/core/threads.h"

#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>

#include <unistd.h>

namespace imp {

EnvironmentVariables preferred_thread_environment(const std::string& dtype,
                                                  const char* omp_wait_policy,
                                                  const char* openblas_num_threads,
                                                  const char* openblas_thread_timeout) {
  if (omp_wait_policy != nullptr || openblas_num_threads != nullptr) return {};
  // In bf16 the OpenMP pool does most of the work and should stay awake
  // between operations. One OpenBLAS thread for the remaining fp32 matmuls
  // measured fastest.
  if (dtype == "bf16") return {{"OPENBLAS_NUM_THREADS", "1"}};
  // In fp32 the matmuls run on OpenBLAS's pool, so idle OpenMP threads
  // should sleep and leave it the cores. OpenBLAS's own idle threads spin
  // for 2^28 cycles by default, calling sched_yield, while OpenMP and oneDNN
  // work between two matmuls; 2^4 puts them to sleep at once.
  EnvironmentVariables settings{{"OMP_WAIT_POLICY", "PASSIVE"}};
  if (openblas_thread_timeout == nullptr) settings.emplace_back("OPENBLAS_THREAD_TIMEOUT", "4");
  return settings;
}

void set_intra_op_threads(int threads, int processes_on_node) {
  if (threads <= 0) {
    const char* from_environment = std::getenv("OMP_NUM_THREADS");
    const int requested = from_environment != nullptr ? std::atoi(from_environment) : 0;
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads = requested > 0 ? requested : std::max(1, cores / std::max(1, processes_on_node));
  }
  at::set_num_threads(threads);
}

std::string thread_settings() {
  std::string line = std::to_string(at::get_num_threads()) + " threads";
  for (const char* name : {"OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT"}) {
    const char* value = std::getenv(name);
    line += std::string(", ") + name + (value != nullptr ? std::string("=") + value : " (unset)");
  }
  return line;
}

void reexec_with_thread_environment(const std::string& dtype, char** argv) {
  const EnvironmentVariables settings = preferred_thread_environment(
      dtype, std::getenv("OMP_WAIT_POLICY"), std::getenv("OPENBLAS_NUM_THREADS"),
      std::getenv("OPENBLAS_THREAD_TIMEOUT"));
  if (settings.empty()) return;
  for (const auto& [name, value] : settings) setenv(name.c_str(), value.c_str(), 1);
  // The executable's own path rather than /proc/self/exe, so that the new
  // process keeps its name (ps and pgrep would show "exe").
  std::vector<char> path(4096);
  const ssize_t length = readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (length > 0) {
    path[static_cast<size_t>(length)] = '\0';
    execv(path.data(), argv);
  }
  execv("/proc/self/exe", argv);
}

}  // namespace imp
