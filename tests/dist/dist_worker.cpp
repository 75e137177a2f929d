// One rank of a multi-process test in dist_test.cpp. The test starts one such
// process per rank with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set and
// runs
//   dist_worker SCENARIO OUTPUT_DIR TIMEOUT_MS
// Each rank writes its results into OUTPUT_DIR as rank<R>_<name>.txt files
// that the test reads: a tensor as its shape on the first line and its values
// on the second, or a message as plain text. On imp::TrainingError a rank
// writes rank<R>_error.txt and exits with status 3.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/utils.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "imp/core/error.h"
#include "imp/dist/collectives.h"
#include "imp/dist/environment.h"
#include "imp/dist/process_group.h"
#include "imp/moe/moe_layer.h"

namespace {

using imp::dist::ProcessGroup;

std::string output_dir;
int rank = -1;

std::string output_path(const std::string& name) {
  return output_dir + "/rank" + std::to_string(rank) + "_" + name + ".txt";
}

void write_text(const std::string& name, const std::string& text) {
  std::ofstream out(output_path(name));
  out << text;
}

void write_tensor(const std::string& name, const at::Tensor& tensor) {
  at::Tensor values = tensor.detach().to(at::kDouble).contiguous();
  std::ofstream out(output_path(name));
  out.precision(17);
  for (int64_t size : values.sizes()) out << size << ' ';
  out << '\n';
  const double* data = values.data_ptr<double>();
  for (int64_t i = 0; i < values.numel(); ++i) out << data[i] << ' ';
  out << '\n';
}

void write_counts(const std::string& name, const std::vector<int64_t>& counts) {
  write_tensor(name, at::tensor(counts, at::kLong));
}

// Sums known values and broadcasts from rank 1; non-contiguous tensors check
// the copy back.
void run_all_reduce(ProcessGroup& group) {
  at::Tensor floats = at::full({2, 3}, static_cast<double>(rank + 1), at::kFloat);
  at::Tensor longs = at::arange(4, at::kLong) * (rank + 1);
  at::Tensor transposed = (at::arange(6, at::kDouble).view({2, 3}) + 10 * rank).t();
  std::vector<at::Tensor> tensors{floats, longs, transposed};
  group.all_reduce_sum(tensors);
  write_tensor("all_reduce_floats", floats);
  write_tensor("all_reduce_longs", longs);
  write_tensor("all_reduce_transposed", transposed);

  at::Tensor broadcast = rank == 1 ? at::tensor({10.0, 20.0, 30.0}) : at::zeros({3}, at::kDouble);
  group.broadcast(broadcast, 1);
  write_tensor("broadcast", broadcast);
  group.barrier();
}

// Rank r passes 2r+1 rows of 2 columns, valued 100r + 2i + j. Then rank 1
// passes 3 columns against rank 0's 2, which both ranks must reject.
void run_all_gather(ProcessGroup& group) {
  int64_t rows = 2 * rank + 1;
  at::Tensor mine = at::arange(rows * 2, at::kFloat).view({rows, 2}) + 100 * rank;
  std::vector<int64_t> counts;
  write_tensor("all_gather", group.all_gather(mine, &counts));
  write_counts("all_gather_counts", counts);

  at::Tensor mismatched = at::zeros({1, rank == 1 ? 3 : 2}, at::kFloat);
  try {
    group.all_gather(mismatched);
    write_text("all_gather_mismatch", "no error");
  } catch (const imp::TrainingError& error) {
    write_text("all_gather_mismatch", error.what());
  }
  // The group must stay usable after a rejected layout.
  group.barrier();
}

// Rank s sends kCounts[s][d] rows to rank d; row k of that block holds
// (100s + 10d + k, -(100s + 10d + k)).
const int64_t kCounts[3][3] = {{1, 2, 0}, {3, 0, 1}, {2, 2, 2}};

void run_all_to_all(ProcessGroup& group) {
  std::vector<int64_t> send_counts(kCounts[rank], kCounts[rank] + 3);
  std::vector<at::Tensor> blocks;
  for (int d = 0; d < 3; ++d) {
    for (int64_t k = 0; k < send_counts[d]; ++k) {
      double value = 100 * rank + 10 * d + k;
      blocks.push_back(at::tensor({value, -value}, at::kFloat).view({1, 2}));
    }
  }
  std::vector<int64_t> received_counts;
  write_tensor("all_to_all", group.all_to_all(at::cat(blocks, 0), send_counts, &received_counts));
  write_counts("all_to_all_counts", received_counts);
}

// Two ranks. all_gather_with_grad: rank 0 passes 2 rows, rank 1 one row, and
// rank r's loss is sum(gathered * (r + 1) * arange(6).view(3, 2)).
// all_to_all_with_grad: 3 rows of one column per rank, send counts [1, 2] on
// rank 0 and [2, 1] on rank 1, and rank d's loss weights received row p by
// (d + 1) * (p + 1).
void run_gradients(ProcessGroup& group) {
  int64_t rows = rank == 0 ? 2 : 1;
  at::Tensor gather_input = at::ones({rows, 2}, at::kDouble).requires_grad_(true);
  at::Tensor gathered = imp::dist::all_gather_with_grad(group, gather_input);
  at::Tensor weights = at::arange(6, at::kDouble).view({3, 2}) * (rank + 1);
  (gathered * weights).sum().backward();
  write_tensor("all_gather_grad", gather_input.grad());

  at::Tensor exchange_input = at::ones({3, 1}, at::kDouble).requires_grad_(true);
  std::vector<int64_t> send_counts = rank == 0 ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{2, 1};
  at::Tensor received = imp::dist::all_to_all_with_grad(group, exchange_input, send_counts);
  at::Tensor position_weights = (at::arange(received.size(0), at::kDouble) + 1).view({-1, 1}) * (rank + 1);
  (received * position_weights).sum().backward();
  write_tensor("all_to_all_grad", exchange_input.grad());
}

// Parameters: w1 (3 doubles), w2 (2x2 floats), w3 (4 floats, an expert
// that only rank 0 uses) and a frozen one. Rank r's loss is
// sum(w1 * (r+1)) + sum(w2 * (r+1) * arange(4)) + [rank 0] sum(w3 * [2,4,6,8]).
struct ReducerModel {
  at::Tensor w1 = at::zeros({3}, at::kDouble).requires_grad_(true);
  at::Tensor w2 = at::zeros({2, 2}, at::kFloat).requires_grad_(true);
  at::Tensor w3 = at::zeros({4}, at::kFloat).requires_grad_(true);
  at::Tensor frozen = at::zeros({2}, at::kFloat);

  std::vector<at::Tensor> parameters() const { return {w1, w2, w3, frozen}; }

  at::Tensor loss() const {
    double scale = rank + 1;
    at::Tensor loss = (w1 * scale).sum() + (w2 * (at::arange(4, at::kFloat).view({2, 2}) * scale)).sum();
    if (rank == 0) loss = loss + (w3 * at::tensor({2.0F, 4.0F, 6.0F, 8.0F})).sum();
    return loss;
  }

  void clear_gradients() {
    for (at::Tensor* parameter : {&w1, &w2, &w3}) parameter->mutable_grad() = at::Tensor();
  }

  void write(const std::string& prefix) const {
    write_tensor(prefix + "_w1", w1.grad());
    write_tensor(prefix + "_w2", w2.grad());
    write_tensor(prefix + "_w3", w3.grad());
    write_text(prefix + "_frozen_defined", frozen.grad().defined() ? "defined" : "undefined");
  }
};

void run_reducer(ProcessGroup& group) {
  ReducerModel model;
  // 16 bytes fit one of w2 or w3 but not both: w3, w2, then w1 (doubles).
  imp::dist::GradientReducer reducer(group, model.parameters(), 16);
  write_text("reducer_buckets", std::to_string(reducer.bucket_count()));

  // Without hooks: gradients set directly, w3's left undefined on rank 1.
  model.loss().backward();
  reducer.reduce();
  model.write("reducer_plain");

  // With hooks, and two micro-batches of which only the second is prepared.
  model.clear_gradients();
  reducer.register_backward_hooks();
  model.loss().backward();
  reducer.prepare_for_backward();
  model.loss().backward();
  reducer.reduce();
  model.write("reducer_hooks");
}

// A MoE layer of 4 experts with its experts sharded over the 2 ranks
// against the whole layer on every rank, for each router. The batch has 8
// examples of 3 tokens, one routing group each; rank 0 runs examples 0-2 and
// rank 1 examples 3-7. Feature 0 is +3 on rank 0's examples and -3 on rank
// 1's, and the router's weights for that feature send rank 0's tokens to
// experts 0 and 1 and rank 1's to experts 2 and 3: under token choice the
// ranks' tokens reach disjoint experts. Writes, per router, the largest
// differences of the outputs and of every gradient, and the tokens each
// expert took on this rank.
void run_moe_expert_parallel(ProcessGroup& group) {
  const int64_t examples = 8, tokens = 3, d_model = 8, mlp_dim = 16;
  const int64_t first = rank == 0 ? 0 : 3, count = rank == 0 ? 3 : 5;
  for (const std::string router : {"experts_choose", "token_choice"}) {
    imp::MoeConfig config;
    config.num_experts = 4;
    config.router = router;
    config.group_size = tokens;
    auto make_layer = [&] {
      torch::manual_seed(11);
      imp::MoeLayer layer(d_model, mlp_dim, config);
      torch::NoGradGuard no_grad;
      layer->router->weight.select(1, 0).copy_(at::tensor({2.0f, 1.5f, -1.5f, -2.0f}));
      return layer;
    };
    torch::manual_seed(12);
    at::Tensor x = at::randn({examples, tokens, d_model});
    x.select(2, 0).narrow(0, 0, 3).fill_(3.0);
    x.select(2, 0).narrow(0, 3, 5).fill_(-3.0);
    const at::Tensor weights = at::randn({examples, tokens, d_model});

    // The whole layer on the whole batch.
    imp::MoeLayer whole = make_layer();
    at::Tensor x_whole = x.clone().requires_grad_(true);
    at::Tensor y_whole = whole->forward(x_whole).y;
    (y_whole * weights).sum().backward();

    // The sharded layer on this rank's examples.
    imp::MoeLayer sharded = make_layer();
    sharded->shard_experts(group);
    at::Tensor x_mine = x.narrow(0, first, count).clone().requires_grad_(true);
    imp::MoeOutput out = sharded->forward(x_mine);
    (out.y * weights.narrow(0, first, count)).sum().backward();

    auto largest = [](const at::Tensor& a, const at::Tensor& b) {
      return (a - b).abs().max().item<double>();
    };
    const int64_t local = sharded->num_local_experts();
    double experts = 0.0;
    for (size_t i = 0; i < 4; ++i) {
      const at::Tensor mine = sharded->expert_parameters()[i];
      const at::Tensor all = whole->expert_parameters()[i];
      experts = std::max(experts, largest(mine.grad(), all.grad().narrow(0, rank * local, local)));
    }
    // The router is replicated: its gradient is the sum of the ranks'.
    std::vector<at::Tensor> router_grad{sharded->router->weight.grad().clone()};
    group.all_reduce_sum(router_grad);
    write_text(router + "_local_experts", std::to_string(local) + " from " +
                                              std::to_string(sharded->first_local_expert()));
    write_tensor(router + "_differences",
                 at::tensor({largest(out.y, y_whole.narrow(0, first, count)),
                             largest(x_mine.grad(), x_whole.grad().narrow(0, first, count)), experts,
                             largest(router_grad[0], whole->router->weight.grad())},
                            at::kDouble));
    write_tensor(router + "_tokens_per_expert", out.metrics.tokens_per_expert);

    // Gathered again, every rank holds the whole layer's experts.
    sharded->unshard_experts();
    double gathered = 0.0;
    for (size_t i = 0; i < 4; ++i) {
      gathered = std::max(gathered, largest(sharded->expert_parameters()[i], whole->expert_parameters()[i]));
    }
    write_text(router + "_gathered", std::to_string(gathered) + " " +
                                         std::to_string(sharded->num_local_experts()));
  }
}

// One rank leaves after the rendezvous: it exits ("fault_exit" for rank 1,
// "fault_exit_rank0" for rank 0, which hosts the store), sleeps until the
// test kills it ("fault_hang"), or reports ready so that the test can stop it
// with SIGSTOP ("fault_stop"). The other rank enters an all-reduce.
void run_fault(ProcessGroup& group, const std::string& scenario) {
  int leaving_rank = scenario == "fault_exit_rank0" ? 0 : 1;
  if (rank == leaving_rank) {
    write_text("ready", "ready");
    if (scenario.rfind("fault_exit", 0) == 0) std::_Exit(0);
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  std::vector<at::Tensor> tensors{at::ones({4})};
  group.all_reduce_sum(tensors);
  write_text("unexpected_success", "all_reduce_sum returned");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: dist_worker SCENARIO OUTPUT_DIR TIMEOUT_MS\n";
    return 2;
  }
  const std::string scenario = argv[1];
  output_dir = argv[2];
  try {
    imp::dist::LaunchEnvironment env = imp::dist::detect_launch_environment();
    rank = env.rank;
    imp::dist::ProcessGroupOptions options;
    options.timeout = std::chrono::milliseconds(std::stol(argv[3]));
    options.heartbeat_interval = std::chrono::milliseconds(500);
    ProcessGroup group(env, options);
    write_text("environment", env.describe());

    try {
      if (scenario == "all_reduce") {
        run_all_reduce(group);
      } else if (scenario == "all_gather") {
        run_all_gather(group);
      } else if (scenario == "all_to_all") {
        run_all_to_all(group);
      } else if (scenario == "gradients") {
        run_gradients(group);
      } else if (scenario == "reducer") {
        run_reducer(group);
      } else if (scenario == "moe_expert_parallel") {
        run_moe_expert_parallel(group);
      } else if (scenario.rfind("fault_", 0) == 0) {
        run_fault(group, scenario);
      } else {
        std::cerr << "dist_worker: unknown scenario " << scenario << '\n';
        return 2;
      }
    } catch (const imp::TrainingError& error) {
      write_text("error", error.what());
      std::cerr << "rank " << rank << ": " << error.what() << '\n';
      return 3;
    }
    write_text("done", "done");
  } catch (const std::exception& error) {
    if (rank >= 0) write_text("error", error.what());
    std::cerr << "dist_worker: " << error.what() << '\n';
    return 4;
  }
  return 0;
}
