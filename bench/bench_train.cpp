// Training throughput of the AGD trainer on a fixed config.
//
//   build/bench/bench_train [CONFIG] [--set key=value ...]
//
// Runs the config's tasks for train.steps steps (default here: 60, after 5
// warm-up steps that are not timed) on the real data and prints what ran
// (config, threads, LibTorch version, commit) and the measured numbers. Like
// `imp train`, it re-executes itself with the thread settings of
// imp/core/threads.h unless OMP_WAIT_POLICY or OPENBLAS_NUM_THREADS is set.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "imp/config/config.h"
#include "imp/core/error.h"
#include "imp/core/threads.h"
#include "imp/core/version.h"
#include "imp/train/trainer.h"
#include "source_commit.h"

int main(int argc, char** argv) {
  std::string config_path = std::string(IMP_SOURCE_DIR) + "/configs/default.yaml";
  std::vector<std::string> overrides = {"train.steps=60", "train.log_every=1000000",
                                        "workdir=/tmp/imp-bench-train"};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--set" && i + 1 < argc) {
      overrides.push_back(argv[++i]);
    } else {
      config_path = arg;
    }
  }

  try {
    imp::Config config = imp::load_config(config_path, overrides);
    imp::reexec_with_thread_environment(config.train.dtype, argv);
    const int warmup = 5;
    imp::Config warm = config;
    warm.train.steps = warmup;
    {
      imp::Trainer trainer(warm);
      trainer.train();
    }
    imp::Trainer trainer(config);
    imp::TrainSummary summary = trainer.train();

    int64_t examples = 0;
    for (const auto& task : config.tasks) {
      examples += summary.steps_per_task[task.name] * task.batch_size;
    }
    std::printf("bench_train: config %s, preset %s, d_model %d, layers %d, experts %d, dtype %s\n",
                config_path.c_str(), config.model.preset.c_str(), config.model.d_model,
                config.model.num_layers, config.model.moe.num_experts, config.train.dtype.c_str());
    std::printf("bench_train: %s, libtorch %s, commit %s\n", imp::thread_settings().c_str(),
                imp::torch_version().c_str(), source_commit().c_str());
    std::printf("bench_train: %lld steps in %.2f s: %.3f steps/s, %.0f tokens/s, %.1f examples/s, "
                "data wait %.1f%%\n",
                static_cast<long long>(summary.steps), summary.train_seconds,
                summary.steps / summary.train_seconds, summary.tokens / summary.train_seconds,
                examples / summary.train_seconds,
                100.0 * summary.data_wait_seconds / summary.train_seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
  return 0;
}
