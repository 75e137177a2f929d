// Process group creation, the heartbeat, collectives with a timeout, and the
// fault report that names the lost rank (see process_group.h).
#include "imp/dist/process_group.h"

#ifndef USE_C10D_GLOO
#error "imp/dist needs LibTorch's Gloo backend: compile with -DUSE_C10D_GLOO and link libgloo"
#endif

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "imp/core/error.h"

namespace imp::dist {

namespace {

using Clock = std::chrono::steady_clock;
using Milliseconds = std::chrono::milliseconds;

// Rank 0 waits at most this long in its destructor for the other ranks to
// leave the store it hosts.
constexpr Milliseconds kShutdownWait{10000};
// Heartbeat reads during a fault report block at most this long each.
constexpr Milliseconds kHeartbeatReadTimeout{2000};

// Returns the message of `error` without LibTorch's C++ backtrace, cut to its
// first line and to 300 characters.
std::string short_message(const std::exception& error) {
  std::string text;
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&error)) {
    text = torch_error->what_without_backtrace();
  } else {
    text = error.what();
  }
  text = text.substr(0, text.find('\n'));
  if (text.size() > 300) text = text.substr(0, 300) + "...";
  return text;
}

// Formats seconds with one decimal, dropping ".0": 3, 2.5, 7.2.
std::string format_seconds(double seconds) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f", seconds);
  std::string text(buffer);
  if (text.size() > 2 && text.compare(text.size() - 2, 2, ".0") == 0) text.resize(text.size() - 2);
  return text;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t unix_milliseconds() {
  return std::chrono::duration_cast<Milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string heartbeat_key(int rank) { return "heartbeat/" + std::to_string(rank); }

// One rank's heartbeat as stored: "<beat> <collectives started> <unix ms>".
struct HeartbeatRecord {
  uint64_t beat = 0;
  uint64_t collectives_started = 0;
  int64_t unix_ms = 0;  // the writer's wall clock
};

std::vector<uint8_t> encode(const HeartbeatRecord& record) {
  std::string text = str_cat(record.beat, ' ', record.collectives_started, ' ', record.unix_ms);
  return std::vector<uint8_t>(text.begin(), text.end());
}

std::optional<HeartbeatRecord> decode(const std::vector<uint8_t>& bytes) {
  std::istringstream text(std::string(bytes.begin(), bytes.end()));
  HeartbeatRecord record;
  if (!(text >> record.beat >> record.collectives_started >> record.unix_ms)) return std::nullopt;
  return record;
}

// Every rank's heartbeat at one moment, or why the store could not be read.
struct HeartbeatSnapshot {
  std::vector<std::optional<HeartbeatRecord>> records;
  std::string store_error;  // empty when every read succeeded
};

HeartbeatSnapshot read_heartbeats(c10d::Store& store, int world_size) {
  HeartbeatSnapshot snapshot;
  snapshot.records.resize(world_size);
  try {
    for (int rank = 0; rank < world_size; ++rank) {
      // check() returns at once, so a rank that never wrote costs no wait.
      if (store.check({heartbeat_key(rank)})) snapshot.records[rank] = decode(store.get(heartbeat_key(rank)));
    }
  } catch (const std::exception& error) {
    snapshot.store_error = short_message(error);
  }
  return snapshot;
}

}  // namespace

// Writes "heartbeat/<rank>" into the store every interval from a background
// thread.
class Heartbeat {
 public:
  Heartbeat(c10::intrusive_ptr<c10d::Store> store, int rank, Milliseconds interval,
            std::shared_ptr<std::atomic<uint64_t>> collectives_started)
      : store_(std::move(store)),
        rank_(rank),
        interval_(interval),
        collectives_started_(std::move(collectives_started)) {
    // The first write happens before the constructor returns, so every rank
    // that finished the rendezvous has a heartbeat in the store.
    publish();
    thread_ = std::thread([this] { loop(); });
  }

  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  void publish() {
    HeartbeatRecord record{++beat_, collectives_started_->load(), unix_milliseconds()};
    try {
      store_->set(heartbeat_key(rank_), encode(record));
    } catch (const std::exception& error) {
      // Logged once: when rank 0 is gone every later write fails the same way.
      if (!write_failed_) {
        std::cerr << "imp: rank " << rank_ << " could not write its heartbeat to the rendezvous store ("
                  << short_message(error) << "); other ranks may report this rank as stopped\n";
      }
      write_failed_ = true;
    }
  }

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, interval_, [this] { return stopping_; })) {
      lock.unlock();
      publish();
      lock.lock();
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_;
  Milliseconds interval_;
  std::shared_ptr<std::atomic<uint64_t>> collectives_started_;
  uint64_t beat_ = 0;
  bool write_failed_ = false;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

ProcessGroup::ProcessGroup(const LaunchEnvironment& env, ProcessGroupOptions options)
    : env_(env),
      options_(std::move(options)),
      collectives_started_(std::make_shared<std::atomic<uint64_t>>(0)) {
  IMP_REQUIRE(ConfigError, options_.timeout.count() > 0, "the process group timeout is ",
              options_.timeout.count(), " ms; it must be positive");
  IMP_REQUIRE(ConfigError, options_.heartbeat_interval.count() > 0, "the heartbeat interval is ",
              options_.heartbeat_interval.count(), " ms; it must be positive");

  const std::string where = str_cat(env_.master_addr, ":", env_.master_port);
  const auto start = Clock::now();
  // The store's connection and the wait for every rank share one timeout.
  auto remaining = [&] {
    const auto left = std::chrono::duration_cast<Milliseconds>(options_.timeout - (Clock::now() - start));
    return std::max(left, Milliseconds(1000));
  };
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(env_.master_port);
    store_options.isServer = env_.rank == 0;
    store_options.numWorkers = static_cast<std::size_t>(env_.world_size);
    // The ranks wait for each other below, where a rank started with
    // another WORLD_SIZE can be named.
    store_options.waitWorkers = false;
    store_options.timeout = options_.timeout;
    auto tcp_store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, store_options);
    tcp_store_ = tcp_store;
    imp_store_ = c10::make_intrusive<c10d::PrefixStore>("imp", tcp_store_);
    tcp_store_->setTimeout(remaining());
    check_world_size();

    rendezvous_stage_ = "connecting the backend";
    tcp_store_->setTimeout(options_.timeout);
    // By now every rank has reached the store, so connecting the backend
    // waits only for ranks still starting it. Its timeout (the collectives'
    // default) stays the full one.
    create_backend(c10::make_intrusive<c10d::PrefixStore>("imp/backend", tcp_store_));

    if (env_.world_size > 1) {
      // The heartbeat shares the store connection: TCPStore serializes
      // requests with a mutex, and each extra TCPStore client would add
      // another LibTorch callback thread (see the NOTE in the destructor).
      heartbeat_ = std::make_unique<Heartbeat>(imp_store_, env_.rank, options_.heartbeat_interval,
                                               collectives_started_);
    }
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& error) {
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    throw TrainingError(str_cat(
        "the rendezvous of rank ", env_.rank, " of ", env_.world_size, " (", launcher_name(env_.launcher),
        ") at ", where, " failed after ", format_seconds(waited), " s (limit ",
        format_seconds(options_.timeout.count() / 1000.0), " s",
        rendezvous_stage_.empty() ? "" : ", " + rendezvous_stage_, "): ", short_message(error),
        ". Check that all ", env_.world_size,
        " processes were started with the same MASTER_ADDR and MASTER_PORT, that rank 0 is running "
        "and can listen on that port, and that the port is reachable from this host"));
  }
}

bool nccl_available() {
#ifdef USE_C10D_NCCL
  return true;
#else
  return false;
#endif
}

void ProcessGroup::check_world_size() {
  // Rank 0 publishes its world size; every other rank compares its own with
  // it and reports its own under its rank, which rank 0 waits for and
  // compares in turn. Both sides of a mismatch thus name it.
  auto as_bytes = [](const std::string& text) { return std::vector<uint8_t>(text.begin(), text.end()); };
  const std::string mine = std::to_string(env_.world_size);
  if (env_.rank == 0) {
    imp_store_->set("world_size", as_bytes(mine));
    for (int rank = 1; rank < env_.world_size; ++rank) {
      rendezvous_stage_ = str_cat("waiting for rank ", rank, " to join");
      const std::vector<uint8_t> theirs = imp_store_->get(str_cat("joined/", rank));
      const std::string text(theirs.begin(), theirs.end());
      IMP_REQUIRE(ConfigError, text == mine, "rank ", rank, " was started with WORLD_SIZE=", text,
                  " but rank 0 with WORLD_SIZE=", mine,
                  "; start every process with the same WORLD_SIZE (the number of processes)");
    }
    return;
  }
  // Read first, then report: rank 0 stops as soon as it reads a report
  // that differs, and the store it hosts goes with it.
  rendezvous_stage_ = "waiting for rank 0";
  const std::vector<uint8_t> rank0 = imp_store_->get("world_size");
  const std::string text(rank0.begin(), rank0.end());
  imp_store_->set(str_cat("joined/", env_.rank), as_bytes(mine));
  IMP_REQUIRE(ConfigError, text == mine, "this process (rank ", env_.rank, ") was started with WORLD_SIZE=",
              mine, " but rank 0 with WORLD_SIZE=", text,
              "; start every process with the same WORLD_SIZE (the number of processes)");
}

void ProcessGroup::create_backend(const c10::intrusive_ptr<c10d::Store>& store) {
  if (options_.device_type == c10::kCUDA) {
#ifdef USE_C10D_NCCL
    auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
    nccl_options->timeout = options_.timeout;
    backend_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env_.rank, env_.world_size, nccl_options);
    return;
#else
    throw ConfigError(
        "a CUDA process group needs NCCL, but this build of imp was compiled without "
        "USE_C10D_NCCL; rebuild against a CUDA LibTorch with NCCL, or train on the CPU");
#endif
  }
  IMP_REQUIRE(ConfigError, options_.device_type == c10::kCPU, "no process group backend for device type ",
              c10::DeviceTypeName(options_.device_type), "; use CPU (Gloo) or CUDA (NCCL)");

  std::string interface = options_.gloo_interface;
  if (interface.empty()) {
    const char* from_environment = std::getenv("GLOO_SOCKET_IFNAME");
    if (from_environment != nullptr) interface = from_environment;
  }
  std::shared_ptr<::gloo::transport::Device> device;
  if (!interface.empty()) {
    device = c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  } else if (is_loopback(env_.master_addr)) {
    // Every rank runs on this host, so the loopback address reaches them all.
    device = c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  } else {
    // Binding to MASTER_ADDR would fail on every host but rank 0's; the
    // address of this host's name is what peers on other hosts can reach.
    device = c10d::ProcessGroupGloo::createDefaultDevice();
  }
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(options_.timeout);
  gloo_options->devices.push_back(device);
  backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env_.rank, env_.world_size, gloo_options);
}

ProcessGroup::~ProcessGroup() {
  heartbeat_.reset();
  if (env_.world_size > 1 && imp_store_) {
    bool failed = false;
    {
      std::lock_guard<std::mutex> lock(failure_mutex_);
      failed = !failure_.empty();
    }
    try {
      int64_t finished = imp_store_->add("shutdown", 1);
      if (env_.rank == 0 && !failed) {
        auto deadline = Clock::now() + kShutdownWait;
        while (finished < env_.world_size && Clock::now() < deadline) {
          std::this_thread::sleep_for(Milliseconds(20));
          finished = imp_store_->add("shutdown", 0);
        }
      }
    } catch (const std::exception&) {
      // The store is gone (rank 0 exited first); nothing is left to wait for.
    }
  }
  // NOTE: after a collective timed out, Gloo's worker thread may still run
  // it, and the backend's destructor waits until Gloo's own timeout (the same
  // value) ends it.
  // NOTE: in LibTorch 1.13 every TCPStore client runs a callback thread that
  // calls std::terminate when the connection to rank 0 is reset, so a crash
  // of rank 0 can abort the other ranks before they report it. A graceful
  // close by rank 0 does not, which is why rank 0 waits above.
  backend_.reset();
  imp_store_.reset();
  tcp_store_.reset();
}

PendingCollective ProcessGroup::start(const char* name, const Launch& launch) {
  {
    std::lock_guard<std::mutex> lock(failure_mutex_);
    if (!failure_.empty()) {
      throw TrainingError(str_cat("the collective ", name, " cannot run because an earlier collective failed: ",
                                  failure_));
    }
  }
  PendingCollective pending;
  pending.name = name;
  pending.started = Clock::now();
  try {
    pending.work = launch();
  } catch (const std::exception& error) {
    throw TrainingError(str_cat("the collective ", name, " could not start on rank ", env_.rank, " of ",
                                env_.world_size, ": ", short_message(error)));
  }
  // Counted after a successful launch, so peers waiting for this rank see
  // that it never started a collective it rejected.
  pending.sequence = ++*collectives_started_;
  return pending;
}

void ProcessGroup::run(const char* name, const Launch& launch) {
  PendingCollective pending = start(name, launch);
  wait(pending);
}

void ProcessGroup::wait(PendingCollective& pending) {
  auto deadline = pending.started + options_.timeout;
  // Work::wait treats 0 ms as "no timeout", so at least 1 ms is passed.
  auto remaining = std::max(Milliseconds(1), std::chrono::duration_cast<Milliseconds>(deadline - Clock::now()));
  bool completed = false;
  try {
    completed = pending.work->wait(remaining);
  } catch (const std::exception& error) {
    bool timed_out = Clock::now() >= deadline - Milliseconds(10);
    throw_collective_failure(pending, short_message(error), timed_out);
  }
  if (!completed) throw_collective_failure(pending, "the collective was aborted", false);
}

std::string ProcessGroup::diagnose_lost_ranks(uint64_t sequence) {
  if (env_.world_size == 1 || !imp_store_) return "";
  imp_store_->setTimeout(kHeartbeatReadTimeout);

  // A rank whose heartbeat counter does not move between two reads 2.5
  // intervals apart has stopped. One read is not enough, because a process
  // that died a moment ago still has a recent heartbeat.
  HeartbeatSnapshot before = read_heartbeats(*imp_store_, env_.world_size);
  std::this_thread::sleep_for(options_.heartbeat_interval * 5 / 2);
  HeartbeatSnapshot after = read_heartbeats(*imp_store_, env_.world_size);

  const std::string of_world = str_cat(" of ", env_.world_size);
  if (!before.store_error.empty() || !after.store_error.empty()) {
    // Only rank 0's death takes the store with it.
    return str_cat("rank 0", of_world, " stopped responding (the rendezvous store it hosts at ",
                   env_.master_addr, ":", env_.master_port, " is unreachable: ",
                   before.store_error.empty() ? after.store_error : before.store_error, ")");
  }

  std::vector<std::string> stopped;
  std::vector<std::string> behind;
  int64_t now_ms = unix_milliseconds();
  for (int peer = 0; peer < env_.world_size; ++peer) {
    if (peer == env_.rank) continue;
    const auto& first = before.records[peer];
    const auto& second = after.records[peer];
    if (!second.has_value()) {
      stopped.push_back(str_cat("rank ", peer, of_world, " stopped responding (no heartbeat found)"));
    } else if (first.has_value() && first->beat == second->beat) {
      // NOTE: the age uses the peer's wall clock, so clock skew between
      // hosts shifts it.
      stopped.push_back(str_cat("rank ", peer, of_world, " stopped responding (last heartbeat ",
                                format_seconds((now_ms - second->unix_ms) / 1000.0), " s ago)"));
    } else if (second->collectives_started < sequence) {
      behind.push_back(str_cat("rank ", peer, of_world, " is alive but has not started collective #",
                               sequence, " (it has started ", second->collectives_started, ")"));
    }
  }
  std::string report;
  for (const auto& line : stopped.empty() ? behind : stopped) report += (report.empty() ? "" : ", ") + line;
  return report;
}

void ProcessGroup::throw_collective_failure(const PendingCollective& pending, const std::string& backend_error,
                                            bool timed_out) {
  double elapsed = seconds_since(pending.started);
  std::string lost = diagnose_lost_ranks(pending.sequence);

  std::string what_happened = str_cat("the collective ", pending.name, " (#", pending.sequence, ") ");
  if (timed_out) {
    what_happened += str_cat("timed out after ", format_seconds(options_.timeout.count() / 1000.0), " s");
  } else {
    what_happened += str_cat("failed after ", format_seconds(elapsed), " s (", backend_error, ")");
  }

  std::string message;
  if (lost.find("stopped responding") != std::string::npos) {
    message = str_cat(lost, "; ", what_happened, " on rank ", env_.rank,
                      ". Check that process's log; restart from the last checkpoint");
  } else if (!lost.empty()) {
    message = str_cat(lost, "; ", what_happened, " on rank ", env_.rank,
                      ". Every rank must run the same collectives in the same order: check that rank's "
                      "log for an error or a code path that skips this collective; restart from the last "
                      "checkpoint");
  } else {
    message = str_cat(what_happened, " on rank ", env_.rank, " of ", env_.world_size,
                      env_.world_size > 1 ? ", although every other rank is alive and has started it" : "",
                      ". Check the logs of all ranks; restart from the last checkpoint");
  }
  {
    std::lock_guard<std::mutex> lock(failure_mutex_);
    if (failure_.empty()) failure_ = message;
  }
  throw TrainingError(message);
}

// ---------------------------------------------------------------------------
// Collectives

namespace {

// Runs `body` on a contiguous version of `tensor` and copies the result back
// when `tensor` itself was not contiguous, because Gloo needs dense buffers.
template <typename Body>
void with_contiguous(at::Tensor& tensor, Body&& body) {
  if (tensor.is_contiguous()) {
    body(tensor);
    return;
  }
  at::Tensor dense = tensor.contiguous();
  body(dense);
  tensor.copy_(dense);
}

// The row layout a rank sends: [rows, dim, dtype, size(1), ..., size(dim-1)],
// padded with -1 to a fixed length so that every rank sends the same number
// of values.
constexpr int64_t kMaxTrailingDims = 8;
constexpr int64_t kLayoutLength = 3 + kMaxTrailingDims;

std::vector<int64_t> row_layout(const at::Tensor& tensor, int64_t rows) {
  std::vector<int64_t> layout(kLayoutLength, -1);
  layout[0] = rows;
  layout[1] = tensor.dim();
  layout[2] = static_cast<int64_t>(tensor.scalar_type());
  for (int64_t d = 1; d < tensor.dim(); ++d) layout[2 + d] = tensor.size(d);
  return layout;
}

std::string describe_layout(const std::vector<int64_t>& layout) {
  std::string shape = "[*";
  for (int64_t d = 1; d < layout[1]; ++d) shape += str_cat(", ", layout[2 + d]);
  shape += "]";
  return str_cat("shape ", shape, " and dtype ", c10::toString(static_cast<c10::ScalarType>(layout[2])));
}

void check_tensor_for_rows(const at::Tensor& tensor, const char* collective) {
  IMP_REQUIRE(TrainingError, tensor.defined(), collective, ": the tensor is undefined");
  IMP_REQUIRE(TrainingError, tensor.dim() >= 1 && tensor.dim() <= kMaxTrailingDims + 1, collective,
              ": the tensor has ", tensor.dim(), " dimensions; it needs 1 to ", kMaxTrailingDims + 1,
              " because rows are split along dim 0");
}

// Checks that every rank's layout matches rank 0's apart from the row count.
// Every rank receives the same layouts, so every rank throws together.
void check_same_layouts(const std::vector<std::vector<int64_t>>& layouts, const char* collective) {
  for (size_t rank = 1; rank < layouts.size(); ++rank) {
    bool same = std::equal(layouts[rank].begin() + 1, layouts[rank].end(), layouts[0].begin() + 1);
    IMP_REQUIRE(TrainingError, same, collective, ": rank ", rank, " passes a tensor of ",
                describe_layout(layouts[rank]), " but rank 0 passes ", describe_layout(layouts[0]),
                "; the tensors of all ranks may differ only in dim 0");
  }
}

at::Tensor layout_tensor(const std::vector<int64_t>& layout, const at::Device& device) {
  return at::tensor(layout, at::TensorOptions().dtype(at::kLong)).to(device);
}

std::vector<int64_t> to_vector(const at::Tensor& tensor) {
  at::Tensor host = tensor.to(at::kCPU).contiguous();
  return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

std::vector<int64_t> trailing_sizes(const at::Tensor& tensor) {
  return std::vector<int64_t>(tensor.sizes().begin() + 1, tensor.sizes().end());
}

}  // namespace

namespace {

// Whether `tensor` must travel as float32: Gloo has no bfloat16 (LibTorch
// 1.13 rejects it with "Invalid scalar type"), and autocast produces it.
bool needs_float_for_gloo(const at::Tensor& tensor, c10::DeviceType backend_device) {
  return backend_device == c10::kCPU && tensor.scalar_type() == at::kBFloat16;
}

}  // namespace

void ProcessGroup::all_reduce_sum(std::vector<at::Tensor>& tensors) {
  // One collective per tensor: c10d treats several tensors in one allreduce
  // call as copies on different devices, not as separate values.
  std::vector<at::Tensor> dense(tensors.size());
  std::vector<PendingCollective> pending;
  for (size_t i = 0; i < tensors.size(); ++i) {
    IMP_REQUIRE(TrainingError, tensors[i].defined(), "all_reduce_sum: tensor #", i, " is undefined");
    if (needs_float_for_gloo(tensors[i], options_.device_type)) {
      dense[i] = tensors[i].to(at::kFloat);
    } else {
      dense[i] = tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous();
    }
    pending.push_back(all_reduce_sum_async(dense[i]));
  }
  for (auto& collective : pending) wait(collective);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!dense[i].is_same(tensors[i])) tensors[i].copy_(dense[i]);
  }
}

PendingCollective ProcessGroup::all_reduce_sum_async(at::Tensor& tensor) {
  IMP_REQUIRE(TrainingError, tensor.is_contiguous(), "all_reduce_sum_async: the tensor of shape ",
              tensor.sizes(), " is not contiguous; call .contiguous() and reduce that");
  return start("all_reduce", [&] {
    std::vector<at::Tensor> one{tensor};
    c10d::AllreduceOptions reduce_options;
    reduce_options.reduceOp = c10d::ReduceOp::SUM;
    return backend_->allreduce(one, reduce_options);
  });
}

void ProcessGroup::broadcast(at::Tensor& tensor, int root) {
  IMP_REQUIRE(TrainingError, root >= 0 && root < env_.world_size, "broadcast: root rank ", root,
              " is out of range for ", env_.world_size, " ranks");
  IMP_REQUIRE(TrainingError, tensor.defined(), "broadcast: the tensor is undefined");
  with_contiguous(tensor, [&](at::Tensor& dense) {
    run("broadcast", [&] {
      std::vector<at::Tensor> one{dense};
      c10d::BroadcastOptions broadcast_options;
      broadcast_options.rootRank = root;
      broadcast_options.rootTensor = 0;
      return backend_->broadcast(one, broadcast_options);
    });
  });
}

void ProcessGroup::barrier() {
  run("barrier", [&] { return backend_->barrier(); });
}

at::Tensor ProcessGroup::all_gather(const at::Tensor& tensor, std::vector<int64_t>* gathered_counts) {
  if (needs_float_for_gloo(tensor, options_.device_type)) {
    return all_gather(tensor.to(at::kFloat), gathered_counts).to(at::kBFloat16);
  }
  check_tensor_for_rows(tensor, "all_gather");
  const int64_t rows = tensor.size(0);

  // Exchange every rank's row count and layout first, so that every rank can
  // pad to the largest count and check that the other dimensions match.
  std::vector<std::vector<at::Tensor>> layout_outputs(1);
  for (int r = 0; r < env_.world_size; ++r) {
    layout_outputs[0].push_back(at::empty({kLayoutLength}, tensor.options().dtype(at::kLong)));
  }
  std::vector<at::Tensor> layout_input{layout_tensor(row_layout(tensor, rows), tensor.device())};
  run("all_gather", [&] { return backend_->allgather(layout_outputs, layout_input); });

  std::vector<std::vector<int64_t>> layouts;
  int64_t max_rows = 0;
  for (const auto& gathered : layout_outputs[0]) {
    layouts.push_back(to_vector(gathered));
    max_rows = std::max(max_rows, layouts.back()[0]);
  }
  check_same_layouts(layouts, "all_gather");

  std::vector<int64_t> padded_shape = trailing_sizes(tensor);
  padded_shape.insert(padded_shape.begin(), max_rows);
  at::Tensor padded = at::zeros(padded_shape, tensor.options());
  padded.narrow(0, 0, rows).copy_(tensor);

  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < env_.world_size; ++r) outputs[0].push_back(at::empty_like(padded));
  std::vector<at::Tensor> inputs{padded};
  run("all_gather", [&] { return backend_->allgather(outputs, inputs); });

  std::vector<at::Tensor> pieces;
  for (int r = 0; r < env_.world_size; ++r) pieces.push_back(outputs[0][r].narrow(0, 0, layouts[r][0]));
  if (gathered_counts != nullptr) {
    gathered_counts->clear();
    for (const auto& layout : layouts) gathered_counts->push_back(layout[0]);
  }
  return at::cat(pieces, 0);
}

at::Tensor ProcessGroup::all_to_all(const at::Tensor& tensor, const std::vector<int64_t>& send_counts,
                                    std::vector<int64_t>* received_counts) {
  if (needs_float_for_gloo(tensor, options_.device_type)) {
    return all_to_all(tensor.to(at::kFloat), send_counts, received_counts).to(at::kBFloat16);
  }
  check_tensor_for_rows(tensor, "all_to_all");
  IMP_REQUIRE(TrainingError, static_cast<int>(send_counts.size()) == env_.world_size, "all_to_all: ",
              send_counts.size(), " send counts for ", env_.world_size, " ranks; pass one count per rank");
  int64_t total = 0;
  for (size_t d = 0; d < send_counts.size(); ++d) {
    IMP_REQUIRE(TrainingError, send_counts[d] >= 0, "all_to_all: the send count for rank ", d, " is ",
                send_counts[d], "; counts must be 0 or more");
    total += send_counts[d];
  }
  IMP_REQUIRE(TrainingError, total == tensor.size(0), "all_to_all: the send counts add up to ", total,
              " rows but the tensor has ", tensor.size(0), "; they must be equal");

  // Each rank sends every peer its layout with the row count meant for that
  // peer. Every rank thus receives every layout, and learns how many rows
  // each source will send it.
  at::Tensor layout_input = at::empty({env_.world_size, kLayoutLength}, at::kLong);
  for (int d = 0; d < env_.world_size; ++d) {
    layout_input[d].copy_(at::tensor(row_layout(tensor, send_counts[d]), at::kLong));
  }
  layout_input = layout_input.to(tensor.device());
  at::Tensor layout_output = at::empty_like(layout_input);
  std::vector<int64_t> equal_output_splits;
  std::vector<int64_t> equal_input_splits;
  run("all_to_all", [&] {
    return backend_->alltoall_base(layout_output, layout_input, equal_output_splits, equal_input_splits);
  });

  std::vector<std::vector<int64_t>> layouts;
  std::vector<int64_t> receive_counts;
  for (int source = 0; source < env_.world_size; ++source) {
    layouts.push_back(to_vector(layout_output[source]));
    receive_counts.push_back(layouts.back()[0]);
  }
  check_same_layouts(layouts, "all_to_all");

  int64_t received_rows = 0;
  for (int64_t count : receive_counts) received_rows += count;
  std::vector<int64_t> output_shape = trailing_sizes(tensor);
  output_shape.insert(output_shape.begin(), received_rows);
  at::Tensor output = at::empty(output_shape, tensor.options());
  at::Tensor input = tensor.contiguous();
  // alltoall_base takes the count vectors by reference and may move from
  // them, so it gets copies.
  std::vector<int64_t> output_splits = receive_counts;
  std::vector<int64_t> input_splits = send_counts;
  run("all_to_all", [&] {
    return backend_->alltoall_base(output, input, output_splits, input_splits);
  });

  if (received_counts != nullptr) *received_counts = receive_counts;
  return output;
}

}  // namespace imp::dist
