// Training throughput side by side with the PyTorch reference of the same
// model, in one invocation. Both train image-text NCE on one fixed synthetic
// batch, as the reference times it, at the IMP-Ti shape: d_model 192, 12
// layers, 3 heads, MLP 768, 224x224 images in 16x16 patches, 64 text tokens
// of a 32000-word vocabulary, batch 32, and 4 experts chosen by
// experts-choose routing in every second layer.
//
//   build/bench/bench_peer [--steps N] [--warmup N] [--dtypes fp32,bf16]
//                          [--peer PATH/imp_ref.py] [--no-peer] [--dense] [--remat]
//                          [--cpu-cache-mb MB] [--remat-cost ROUNDS]
//   build/bench/bench_peer --child fp32|bf16 --profile ROWS [--steps N] ...
//
// For each dtype it runs imp in a child process with the thread settings
// `imp train` uses, then the reference (Debian's /usr/bin/python3) with
// OMP_WAIT_POLICY=PASSIVE, with imp's thread settings for the dtype (the
// faster of these two is its best setting) and, for fp32, with the
// default environment (what a user gets). The reference runs on Debian's
// python3-torch (apt-get install python3-torch). It prints each run's steps/s,
// tokens/s, model FLOP/s, and the matmul rate measured in the same process,
// then the ratios. The last line is `ratio_vs_peer=<x>`: imp's tokens/s over
// the reference's in its best setting, fp32, MoE. The second form runs imp
// alone and prints its ROWS most expensive operators.
//
// With --remat-cost ROUNDS it measures instead what recomputing the blocks
// costs: for each dtype, ROUNDS pairs of imp runs without and with it, then
// as many pairs of the reference (OMP_WAIT_POLICY=PASSIVE, torch.utils
// checkpoint), each pair's step times and peak memory, and the medians.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include "source_commit.h"
#include "imp/config/config.h"
#include "imp/core/autocast.h"
#include "imp/core/cpu_cache.h"
#include "imp/core/threads.h"
#include "imp/core/version.h"
#include "imp/model/imp_model.h"
#include "imp/model/onednn_attention.h"
#include "imp/objectives/losses.h"
#include "imp/train/adamw.h"


namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kBatch = 32, kImage = 224, kPatch = 16, kTextLen = 64, kVocab = 32000;
constexpr int64_t kDModel = 192, kLayers = 12, kHeads = 3, kMlp = 768, kExperts = 4;

struct Options {
  int steps = 8;
  int warmup = 1;
  std::vector<std::string> dtypes{"fp32", "bf16"};
  std::string peer = std::string(IMP_SOURCE_DIR) + "/../shared/peer/imp_ref.py";
  bool run_peer = true;
  bool moe = true;
  bool remat = false;  // imp recomputes its blocks in the backward pass
  int remat_rounds = 0;  // > 0: measure what rematerialisation costs, in this many pairs
  int profile_rows = 0;  // > 0: print imp's slowest operators instead of timing
  int cpu_cache_mb = -1;  // imp's train.cpu_cache_mb: -1 = its default, 0 = no cache
};

imp::ModelConfig ti_config(bool moe) {
  imp::ModelConfig model;
  model.preset = "imp-ti";
  model.d_model = kDModel;
  model.num_layers = kLayers;
  model.num_heads = kHeads;
  model.mlp_dim = kMlp;
  model.embed_dim = kDModel;
  model.temperature_init = 0.07;
  model.moe.num_experts = moe ? kExperts : 0;
  model.moe.moe_every = 2;
  model.moe.router = "experts_choose";
  model.moe.capacity_factor = 1.0;
  model.moe.group_size = (kImage / kPatch) * (kImage / kPatch);  // one image per routing group
  model.vision.channels = 3;
  model.vision.patch = {1, kPatch, kPatch};
  model.vision.grid = {1, kImage / kPatch, kImage / kPatch};
  model.text.max_len = kTextLen;
  model.text.label_max_len = kTextLen;
  return model;
}

// Model FLOPs of one training step, counted as the reference counts them:
// 6 x matmul parameters x tokens per encoder pass, plus the attention
// matmuls, the projections and the NCE logits.
double step_flops(bool moe) {
  const double d = kDModel, m = kMlp, B = kBatch;
  const double moe_layers = moe ? kLayers / 2 : 0, dense_layers = kLayers - moe_layers;
  const auto pass = [&](double n, double embed_params) {
    const double params = embed_params + kLayers * 4 * d * d + dense_layers * 2 * d * m +
                          moe_layers * d * kExperts;
    const double expert_slots = B * n;  // experts-choose, capacity 1: every token once
    return 6 * params * B * n + 6 * moe_layers * 2 * d * m * expert_slots +
           12 * kLayers * d * B * n * n + 6 * B * d * d;
  };
  const double image_tokens = (kImage / kPatch) * (kImage / kPatch);
  return pass(image_tokens, 3.0 * kPatch * kPatch * d) + pass(kTextLen, 0) + 6 * B * B * d;
}

// GFLOP/s of a 2048^3 matmul in `dtype`: the median of 7 calls.
double matmul_gflops(const std::string& dtype) {
  const auto type = dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  at::Tensor a = at::randn({2048, 2048}).to(type), b = at::randn({2048, 2048}).to(type);
  at::matmul(a, b);
  std::vector<double> rates;
  for (int i = 0; i < 7; ++i) {
    const auto start = Clock::now();
    at::matmul(a, b);
    rates.push_back(2.0 * 2048 * 2048 * 2048 / std::chrono::duration<double>(Clock::now() - start).count() / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// Peak resident set (VmHWM) of this process in MiB.
double peak_rss_mib() {
  FILE* status = std::fopen("/proc/self/status", "r");
  if (status == nullptr) return 0;
  char line[256];
  double kib = 0;
  while (std::fgets(line, sizeof line, status) != nullptr) {
    if (std::sscanf(line, "VmHWM: %lf kB", &kib) == 1) break;
  }
  std::fclose(status);
  return kib / 1024.0;
}

// Operator profile of `run`: prints the `rows` operators with the most self
// time (time not spent in operators they call), summed over all calls and
// grouped by input shapes and dtypes.
void print_operator_profile(const std::function<void()>& run, int rows) {
  namespace profiler = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  using torch::profiler::impl::ProfilerState;
  const profiler::ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
  const std::set<ActivityType> activities{ActivityType::CPU};
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
  const auto start = Clock::now();
  run();
  const double wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  const std::unique_ptr<profiler::ProfilerResult> result = profiler::disableProfiler();

  struct Span {
    uint64_t start, end, thread;
    std::string key;
  };
  std::vector<Span> spans;
  for (const auto& event : result->events()) {
    std::string key = event.name(), separator = " ";
    const auto shapes = event.shapes();
    const auto dtypes = event.dtypes();
    for (size_t input = 0; input < shapes.size(); ++input) {
      const auto& shape = shapes[input];
      key += separator + "[";
      for (size_t i = 0; i < shape.size(); ++i) key += (i ? "x" : "") + std::to_string(shape[i]);
      key += "]";
      // Tensor inputs carry their dtype, e.g. "[32x196x576] c10::BFloat16".
      if (!shape.empty() && input < dtypes.size()) key += " " + dtypes[input];
      separator = ", ";
    }
    spans.push_back({event.startUs(), event.startUs() + event.durationUs(), event.startThreadId(), key});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return std::tie(a.thread, a.start, b.end) < std::tie(b.thread, b.start, a.end);
  });
  std::map<std::string, std::pair<double, int>> self;  // key -> (microseconds, calls)
  std::vector<const Span*> open;
  double total = 0;
  for (Span& span : spans) {
    while (!open.empty() && (open.back()->thread != span.thread || open.back()->end <= span.start)) open.pop_back();
    // Copies are listed under the operator that made them.
    if (!open.empty() && span.key.rfind("aten::copy_", 0) == 0) {
      span.key = open.back()->key.substr(0, open.back()->key.find(" > ")) + " > " + span.key;
    }
    const double length = double(span.end - span.start);
    if (!open.empty()) self[open.back()->key].first -= length;
    else total += length;
    self[span.key].first += length;
    self[span.key].second += 1;
    open.push_back(&span);
  }
  std::vector<std::pair<std::string, std::pair<double, int>>> sorted(self.begin(), self.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::printf("bench_peer: operator self time over the timed steps: %.0f ms in operators, %.0f ms wall\n",
              total / 1e3, wall_ms);
  for (int i = 0; i < rows && i < int(sorted.size()); ++i) {
    std::printf("%9.1f ms %5.1f%% %6d calls  %s\n", sorted[i].second.first / 1e3,
                100.0 * sorted[i].second.first / total, sorted[i].second.second, sorted[i].first.c_str());
  }
}

// One imp run in this process: prints one JSON line.
int run_imp(const std::string& dtype, const Options& options) {
  imp::set_intra_op_threads(0);
  // As `imp train` does, with --cpu-cache-mb for train.cpu_cache_mb.
  imp::use_caching_cpu_allocator(imp::cpu_cache_limit_bytes(options.cpu_cache_mb));
  torch::manual_seed(0);
  const imp::ModelConfig config = ti_config(options.moe);
  imp::ImpModel model(config, kVocab, std::map<std::string, int64_t>{});
  model->train();
  imp::FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-4).weight_decay(0.05));
  const at::Tensor images = torch::randn({kBatch, 3, 1, kImage, kImage});
  const at::Tensor ids = torch::randint(3, kVocab, {kBatch, kTextLen}, torch::kLong);
  const at::Tensor mask = torch::ones({kBatch, kTextLen}, torch::kBool);
  const bool bf16 = dtype == "bf16";

  const auto step = [&] {
    // Gradients are released, not zeroed, as in the trainer and the
    // reference. The next backward pass then writes them without adding.
    for (torch::Tensor& parameter : model->parameters()) parameter.mutable_grad().reset();
    torch::Tensor loss;
    {
      imp::AutocastScope autocast(c10::DeviceType::CPU, bf16);
      imp::EncodeOptions encode;
      encode.rematerialize = options.remat;
      imp::Encoded image = model->encode("image", images, {}, encode);
      imp::Encoded text = model->encode("text", ids, mask, encode);
      loss = imp::nce_loss(model->project("image", image.pooled), model->project("text", text.pooled),
                           model->logit_scale(), torch::Tensor(), torch::Tensor());
    }
    loss.backward();
    optimizer.step();
    return loss.item<double>();
  };
  for (int i = 0; i < options.warmup; ++i) step();
  if (options.profile_rows > 0) {
    print_operator_profile([&] { for (int i = 0; i < options.steps; ++i) step(); }, options.profile_rows);
    return 0;
  }
  const auto start = Clock::now();
  double loss = 0;
  for (int i = 0; i < options.steps; ++i) loss = step();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double steps_per_s = options.steps / seconds;
  const double tokens = kBatch * ((kImage / kPatch) * (kImage / kPatch) + kTextLen);
  const imp::CpuCacheStats cache = imp::cpu_cache_stats();
  nlohmann::json out = {{"dtype", dtype},
                        {"steps_per_s", steps_per_s},
                        {"tokens_per_s", steps_per_s * tokens},
                        {"achieved_gflops", steps_per_s * step_flops(options.moe) / 1e9},
                        {"matmul_gflops", matmul_gflops(dtype)},
                        {"peak_rss_mib", peak_rss_mib()},
                        {"cpu_cache_peak_mib", cache.peak_kept_bytes / 1048576.0},
                        {"peak_tensor_mib", cache.peak_in_use_bytes / 1048576.0},
                        {"last_loss", loss},
                        {"threads", imp::thread_settings()}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// Runs `command` through the shell and returns the last line of its output
// that parses as a JSON object with steps_per_s. Throws naming the command
// and quoting the end of its output when there is none.
nlohmann::json run_json(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return nullptr;
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  pclose(pipe);
  nlohmann::json last = nullptr;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] != '{') continue;
    try {
      nlohmann::json row = nlohmann::json::parse(line);
      if (row.is_object() && row.contains("steps_per_s")) last = row;
    } catch (const nlohmann::json::exception&) {
    }
  }
  if (last.is_null()) {
    const std::string tail = output.size() > 600 ? output.substr(output.size() - 600) : output;
    throw std::runtime_error("no result from: " + command + "\n" + tail +
                             "\n(the reference needs Debian's python3-torch: apt-get install python3-torch)");
  }
  return last;
}

double number(const nlohmann::json& row, const char* key) {
  return row.is_object() && row.contains(key) && row[key].is_number() ? row[key].get<double>() : 0.0;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  if (n == 0) return 0.0;
  if (n % 2 == 1) return values[n / 2];
  return 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Measures what rematerialisation costs one side (imp or the reference) in
// one dtype: `rounds` pairs of runs without and with it, in alternating
// order so that a drift in the machine's speed favours neither. `run(true)`
// runs with recomputation. Prints each pair and the medians.
void remat_pairs(const std::string& label, int rounds, const std::function<nlohmann::json(bool)>& run) {
  std::vector<double> longer, tensor_cut, rss_cut;
  for (int round = 0; round < rounds; ++round) {
    nlohmann::json plain, recomputed;
    if (round % 2 == 0) {
      plain = run(false);
      recomputed = run(true);
    } else {
      recomputed = run(true);
      plain = run(false);
    }
    const double step_ratio = number(plain, "steps_per_s") / std::max(1e-9, number(recomputed, "steps_per_s"));
    longer.push_back(step_ratio - 1.0);
    rss_cut.push_back(1.0 - number(recomputed, "peak_rss_mib") / std::max(1e-9, number(plain, "peak_rss_mib")));
    std::printf("bench_peer: %s, pair %d: %.3f -> %.3f steps/s (steps %+.1f%%), peak RSS %.0f -> %.0f MiB",
                label.c_str(), round + 1, number(plain, "steps_per_s"), number(recomputed, "steps_per_s"),
                100.0 * (step_ratio - 1.0), number(plain, "peak_rss_mib"), number(recomputed, "peak_rss_mib"));
    if (plain.contains("peak_tensor_mib")) {
      tensor_cut.push_back(1.0 - number(recomputed, "peak_tensor_mib") /
                                     std::max(1e-9, number(plain, "peak_tensor_mib")));
      std::printf(", peak tensor memory %.0f -> %.0f MiB", number(plain, "peak_tensor_mib"),
                  number(recomputed, "peak_tensor_mib"));
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  std::printf("bench_peer: %s, median of %d pair%s: steps %+.1f%% longer, peak RSS %.1f%% lower",
              label.c_str(), rounds, rounds == 1 ? "" : "s", 100.0 * median(longer), 100.0 * median(rss_cut));
  if (!tensor_cut.empty()) std::printf(", peak tensor memory %.1f%% lower", 100.0 * median(tensor_cut));
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  std::string child_dtype;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--steps") options.steps = std::atoi(value().c_str());
    else if (arg == "--warmup") options.warmup = std::atoi(value().c_str());
    else if (arg == "--peer") options.peer = value();
    else if (arg == "--no-peer") options.run_peer = false;
    else if (arg == "--dense") options.moe = false;
    else if (arg == "--remat") options.remat = true;
    else if (arg == "--remat-cost") options.remat_rounds = std::atoi(value().c_str());
    else if (arg == "--cpu-cache-mb") options.cpu_cache_mb = std::atoi(value().c_str());
    else if (arg == "--child") child_dtype = value();
    else if (arg == "--profile") options.profile_rows = std::atoi(value().c_str());
    else if (arg == "--dtypes") {
      options.dtypes.clear();
      std::istringstream list(value());
      for (std::string dtype; std::getline(list, dtype, ',');) options.dtypes.push_back(dtype);
    } else {
      std::fprintf(stderr, "bench_peer: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  try {
    if (!child_dtype.empty()) {
      imp::reexec_with_thread_environment(child_dtype, argv);
      return run_imp(child_dtype, options);
    }

    const std::string self = "/proc/" + std::to_string(getpid()) + "/exe";
    char exe[4096];
    const ssize_t length = readlink(self.c_str(), exe, sizeof exe - 1);
    if (length <= 0) throw std::runtime_error("cannot find this executable");
    exe[length] = '\0';
    // Flags shared by plain and recomputing runs, then the full sets.
    const std::string imp_base_flags = " --steps " + std::to_string(options.steps) + " --warmup " +
                                       std::to_string(options.warmup) + (options.moe ? "" : " --dense") +
                                       " --cpu-cache-mb " + std::to_string(options.cpu_cache_mb);
    const std::string peer_base_flags =
        "--d-model 192 --layers 12 --heads 3 --mlp-dim 768 --image-size 224 --patch 16 --threads 2 "
        "--batch 32 --tasks image_text_nce --steps " + std::to_string(options.steps) + " --warmup " +
        std::to_string(options.warmup) +
        (options.moe ? " --experts 4 --routing experts_choose --moe-every 2" : "");
    const std::string common = imp_base_flags + (options.remat ? " --remat" : "");
    const std::string peer_flags = peer_base_flags + (options.remat ? " --checkpoint" : "");
    // imp's child picks its own thread settings, as `imp train` does.
    const std::string imp_child =
        "env -u OMP_WAIT_POLICY -u OPENBLAS_NUM_THREADS -u OPENBLAS_THREAD_TIMEOUT '" + std::string(exe) + "' --child ";
    const std::string passive_environment = "env -u OPENBLAS_NUM_THREADS -u OPENBLAS_THREAD_TIMEOUT OMP_WAIT_POLICY=PASSIVE ";

    std::string recompute_note;
    if (options.remat_rounds > 0) {
      recompute_note = ", with and without recomputing the blocks in the backward pass";
    } else if (options.remat) {
      recompute_note = ", blocks recomputed in the backward pass";
    }
    std::printf("bench_peer: image_text_nce, IMP-Ti (d_model 192, 12 layers, 3 heads, MLP 768, "
                "224x224 / 16, text 64), batch 32, %s%s, %d timed steps after %d\n",
                options.moe ? "MoE 4 experts experts-choose every 2nd layer" : "dense", recompute_note.c_str(),
                options.steps, options.warmup);
    std::printf("bench_peer: libtorch %s, commit %s, %u cores, imp attention and float32 linear layers on %s\n",
                imp::torch_version().c_str(), source_commit().c_str(), std::thread::hardware_concurrency(),
                imp::onednn_attention_applies(torch::zeros({1, 1, 3})) ? "oneDNN" : "LibTorch's operators");

    if (options.remat_rounds > 0) {
      for (const std::string& dtype : options.dtypes) {
        remat_pairs("imp " + dtype, options.remat_rounds, [&](bool remat) {
          return run_json(imp_child + dtype + imp_base_flags + (remat ? " --remat" : ""));
        });
        if (!options.run_peer) continue;
        remat_pairs("reference " + dtype + " (OMP_WAIT_POLICY=PASSIVE)", options.remat_rounds, [&](bool remat) {
          return run_json(passive_environment + "/usr/bin/python3 '" + options.peer + "' " + peer_base_flags +
                          " --dtype " + dtype + (remat ? " --checkpoint" : ""));
        });
      }
      return 0;
    }

    double fp32_ratio = 0;
    for (const std::string& dtype : options.dtypes) {
      const nlohmann::json ours = run_json(imp_child + dtype + common);
      std::printf("bench_peer: imp %s: %.3f steps/s, %.0f tokens/s, %.1f model GFLOP/s = %.0f%% of "
                  "the %.1f GFLOP/s matmul rate, peak RSS %.0f MiB, peak tensor memory %.0f MiB (CPU cache "
                  "at most %.0f MiB) [%s]\n",
                  dtype.c_str(), number(ours, "steps_per_s"), number(ours, "tokens_per_s"),
                  number(ours, "achieved_gflops"),
                  100.0 * number(ours, "achieved_gflops") / std::max(1e-9, number(ours, "matmul_gflops")),
                  number(ours, "matmul_gflops"), number(ours, "peak_rss_mib"), number(ours, "peak_tensor_mib"),
                  number(ours, "cpu_cache_peak_mib"), ours.is_object() ? ours.value("threads", "").c_str() : "run failed");
      if (!options.run_peer) continue;
      const std::string python = "/usr/bin/python3 '" + options.peer + "' " + peer_flags + " --dtype " + dtype;
      nlohmann::json best = run_json(passive_environment + python);
      std::printf("bench_peer: reference %s, OMP_WAIT_POLICY=PASSIVE: %.3f steps/s, %.0f tokens/s, "
                  "%.1f GFLOP/s; imp / reference = %.2fx\n",
                  dtype.c_str(), number(best, "steps_per_s"), number(best, "tokens_per_s"),
                  number(best, "achieved_gflops"),
                  number(ours, "tokens_per_s") / std::max(1e-9, number(best, "tokens_per_s")));
      // imp's own thread settings for this dtype may suit the reference
      // better than PASSIVE alone, so the better of the two counts as its best.
      // In bf16 the matmuls run on the OpenMP pool, and imp gives OpenBLAS one
      // thread. In fp32 imp also puts OpenBLAS's idle threads to sleep at once.
      const std::string alike_environment = dtype == "bf16"
                                                ? "env -u OMP_WAIT_POLICY OPENBLAS_NUM_THREADS=1 "
                                                : "env -u OPENBLAS_NUM_THREADS OMP_WAIT_POLICY=PASSIVE "
                                                  "OPENBLAS_THREAD_TIMEOUT=4 ";
      const nlohmann::json alike = run_json(alike_environment + python);
      std::printf("bench_peer: reference %s, %s: %.3f steps/s, %.0f tokens/s, %.1f GFLOP/s; "
                  "imp / reference = %.2fx\n",
                  dtype.c_str(),
                  dtype == "bf16" ? "OPENBLAS_NUM_THREADS=1" : "PASSIVE and OPENBLAS_THREAD_TIMEOUT=4",
                  number(alike, "steps_per_s"), number(alike, "tokens_per_s"), number(alike, "achieved_gflops"),
                  number(ours, "tokens_per_s") / std::max(1e-9, number(alike, "tokens_per_s")));
      if (number(alike, "tokens_per_s") > number(best, "tokens_per_s")) best = alike;
      const double ratio_best = number(ours, "tokens_per_s") / std::max(1e-9, number(best, "tokens_per_s"));
      if (dtype == "fp32") {
        fp32_ratio = ratio_best;
        const nlohmann::json plain = run_json("env -u OPENBLAS_NUM_THREADS -u OPENBLAS_THREAD_TIMEOUT -u OMP_WAIT_POLICY " + python);
        std::printf("bench_peer: reference fp32, default environment: %.3f steps/s, %.0f tokens/s; "
                    "imp / reference = %.2fx\n",
                    number(plain, "steps_per_s"), number(plain, "tokens_per_s"),
                    number(ours, "tokens_per_s") / std::max(1e-9, number(plain, "tokens_per_s")));
      }
    }
    if (options.run_peer && fp32_ratio > 0) std::printf("ratio_vs_peer=%.3f\n", fp32_ratio);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_peer: %s\n", e.what());
    return 1;
  }
  return 0;
}
