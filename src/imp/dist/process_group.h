// A process group for data- and expert-parallel training: rendezvous through a
// c10d TCPStore hosted by rank 0, collectives through c10d's Gloo backend (or
// NCCL in CUDA builds that define USE_C10D_NCCL), and fault reporting that
// names the rank that stopped. Every collective waits at most the group's
// timeout. When one fails, a heartbeat that each rank writes to the store
// once a second shows which rank stopped, and the imp::TrainingError thrown
// names that rank.
//
// Every rank must call the same collectives in the same order, as with any
// c10d process group. On Gloo, which has no bfloat16, bfloat16 tensors
// travel as float32 and come back as bfloat16.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceType.h>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/version.h>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "imp/dist/environment.h"

namespace c10d {
class ProcessGroup;
class Store;
}  // namespace c10d

namespace imp::dist {

// The c10d object that runs the collectives. Since LibTorch 2.0 the Gloo
// and NCCL process groups derive from c10d::Backend; in 1.13 they derive
// from c10d::ProcessGroup. Both offer the collectives used here.
#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

// Whether this build can form NCCL process groups (CMake option
// IMP_WITH_NCCL, for CUDA builds of LibTorch).
bool nccl_available();

struct ProcessGroupOptions {
  // Upper bound for the rendezvous and for each collective. c10d's default
  // (kProcessGroupDefaultTimeout in LibTorch 1.13) is 30 minutes.
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
  // Period of each rank's heartbeat. A rank is reported as stopped when its
  // heartbeat does not advance during 2.5 periods after a collective failed.
  std::chrono::milliseconds heartbeat_interval{std::chrono::seconds(1)};
  // kCPU selects Gloo; kCUDA selects NCCL and needs a build with
  // USE_C10D_NCCL defined.
  c10::DeviceType device_type = c10::kCPU;
  // Network interface for Gloo, such as "eth0". Empty means the
  // GLOO_SOCKET_IFNAME environment variable when it is set, else the loopback
  // address when MASTER_ADDR is a loopback address, else the address this
  // machine's host name resolves to.
  std::string gloo_interface;
};

// A collective launched asynchronously; ProcessGroup::wait completes it.
struct PendingCollective {
  c10::intrusive_ptr<c10d::Work> work;
  const char* name = "";
  uint64_t sequence = 0;  // 1-based index among this rank's collectives
  std::chrono::steady_clock::time_point started;
};

class Heartbeat;

class ProcessGroup {
 public:
  // Performs the rendezvous: rank 0 hosts a TCPStore at
  // env.master_addr:env.master_port and waits for every rank to connect,
  // then the backend connects all pairs of ranks. Throws imp::TrainingError
  // when that does not finish within options.timeout, and imp::ConfigError
  // for a CUDA group in a build without NCCL.
  explicit ProcessGroup(const LaunchEnvironment& env, ProcessGroupOptions options = {});
  // Stops the heartbeat. Rank 0 then waits (at most 10 s, and not at all
  // after a failed collective) until the other ranks have shut down too,
  // because they still use the store it hosts.
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }
  const LaunchEnvironment& environment() const { return env_; }
  // The c10d backend, for collectives this class does not wrap.
  Backend& backend() { return *backend_; }

  // Sums each tensor elementwise over all ranks, in place. Tensors may
  // differ in shape and dtype from each other but each must have the same
  // shape and dtype on every rank.
  void all_reduce_sum(std::vector<at::Tensor>& tensors);
  // Copies `tensor` from rank `root` into `tensor` on every other rank.
  void broadcast(at::Tensor& tensor, int root);
  // Returns once every rank has entered the barrier.
  void barrier();
  // Returns the concatenation along dim 0 of every rank's `tensor`, in rank
  // order. The first dimension may differ between ranks; the other
  // dimensions and the dtype must match, or every rank throws
  // imp::TrainingError naming the rank that differs. Stores each rank's row
  // count in `gathered_counts` when it is not null.
  at::Tensor all_gather(const at::Tensor& tensor, std::vector<int64_t>* gathered_counts = nullptr);
  // Sends rows [sum(send_counts[0..d)), sum(send_counts[0..d])) of `tensor`
  // to rank d and returns the rows received, ordered by source rank. Stores
  // the number of rows from each source rank in `received_counts` when it is
  // not null. Shapes beyond dim 0 and the dtype must match on every rank.
  at::Tensor all_to_all(const at::Tensor& tensor, const std::vector<int64_t>& send_counts,
                        std::vector<int64_t>* received_counts = nullptr);

  // Starts an in-place sum of one contiguous tensor over all ranks; wait()
  // completes it. For overlapping communication with computation.
  PendingCollective all_reduce_sum_async(at::Tensor& tensor);
  // Waits until `pending` completes, at most the timeout counted from its
  // launch. Throws imp::TrainingError naming the rank that stopped, or the
  // rank that has not reached this collective, when it fails or times out.
  void wait(PendingCollective& pending);

 private:
  using Launch = std::function<c10::intrusive_ptr<c10d::Work>()>;
  // Starts a collective through `launch`, counting it for the heartbeat.
  PendingCollective start(const char* name, const Launch& launch);
  // Starts a collective and waits for it.
  void run(const char* name, const Launch& launch);
  [[noreturn]] void throw_collective_failure(const PendingCollective& pending,
                                             const std::string& backend_error, bool timed_out);
  std::string diagnose_lost_ranks(uint64_t sequence);
  // Throws ConfigError when this rank and rank 0 were started with
  // different world sizes.
  void check_world_size();
  void create_backend(const c10::intrusive_ptr<c10d::Store>& store);

  LaunchEnvironment env_;
  ProcessGroupOptions options_;
  std::string rendezvous_stage_;  // what the rendezvous waits for, for its error message
  c10::intrusive_ptr<c10d::Store> tcp_store_;   // rank 0: also the server
  c10::intrusive_ptr<c10d::Store> imp_store_;   // prefix "imp" for heartbeats
  c10::intrusive_ptr<Backend> backend_;
  std::unique_ptr<Heartbeat> heartbeat_;
  // Collectives started by this rank, published with every heartbeat.
  std::shared_ptr<std::atomic<uint64_t>> collectives_started_;
  // The first failure's message. Later collectives rethrow it, because the
  // backend is in an unknown state once a collective failed.
  std::mutex failure_mutex_;
  std::string failure_;
};

}  // namespace imp::dist
