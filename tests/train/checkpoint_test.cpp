#include "imp/train/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/core/error.h"
#include "imp/train/progress.h"
#include "imp/train/trainer.h"
#include "../scratch_dir.h"

namespace imp {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

ModelConfig small_model() {
  ModelConfig config;
  config.d_model = 32;
  config.num_layers = 2;
  config.num_heads = 4;
  config.mlp_dim = 64;
  config.embed_dim = 16;
  config.moe.num_experts = 4;
  config.moe.moe_every = 2;
  config.vision.channels = 1;
  config.vision.patch = {1, 4, 4};
  config.vision.grid = {1, 4, 4};
  config.text.max_len = 8;
  return config;
}

ImpModel make_model(uint64_t seed, int64_t classes = 10) {
  torch::manual_seed(seed);
  return ImpModel(small_model(), 64, std::map<std::string, int64_t>{{"fmnist", classes}});
}

std::unique_ptr<torch::optim::AdamW> make_optimizer(ImpModel& model) {
  return std::make_unique<torch::optim::AdamW>(model->parameters(), torch::optim::AdamWOptions(1e-3));
}

// One AdamW step on an image classification loss, so that the optimizer
// has moments for the parameters images reach and none for the others.
void train_step(ImpModel& model, torch::optim::AdamW& optimizer) {
  optimizer.zero_grad();
  torch::Tensor images = torch::randn({3, 1, 1, 16, 16});
  Encoded encoded = model->encode("image", images);
  torch::Tensor loss = model->classify("fmnist", encoded.pooled).pow(2).mean();
  loss.backward();
  for (auto& parameter : model->parameters()) {
    // As in training: parameters the task does not reach keep no gradient.
    if (parameter.grad().defined() && parameter.grad().abs().sum().item<double>() == 0.0) {
      parameter.mutable_grad().reset();
    }
  }
  optimizer.step();
}

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

TrainingState sample_state(int64_t step) {
  TrainingState state;
  state.step = step;
  state.total_steps = 100;
  state.task_batches = {{"fmnist_cls", step - 1}, {"video_item", 1}};
  state.routing = {{"layers", nlohmann::json::array()}};
  capture_rng(state);
  return state;
}

int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

TEST(Checkpoint, RoundTripRestoresWeightsMomentsAndState) {
  ScratchDir scratch("imp_checkpoint_round_trip");
  ImpModel model = make_model(1);
  auto optimizer = make_optimizer(model);
  train_step(model, *optimizer);
  train_step(model, *optimizer);
  const TrainingState saved = sample_state(7);
  const std::string path =
      save_checkpoint(scratch.path(), model, *optimizer, saved, "workdir: x\n", "", /*keep=*/3);
  EXPECT_EQ(fs::path(path).filename(), "step-00000007");
  for (const char* file : {"model.safetensors", "training_state.safetensors", "config.yaml"}) {
    EXPECT_TRUE(fs::exists(fs::path(path) / file)) << file;
  }

  ImpModel other = make_model(2);
  auto other_optimizer = make_optimizer(other);
  const TrainingState loaded = load_checkpoint(path, other, *other_optimizer);
  EXPECT_EQ(loaded.step, 7);
  EXPECT_EQ(loaded.total_steps, 100);
  EXPECT_EQ(loaded.task_batches, saved.task_batches);
  EXPECT_TRUE(same_bits(loaded.cpu_rng, saved.cpu_rng));

  auto original = model->named_parameters();
  for (const auto& item : other->named_parameters()) {
    EXPECT_TRUE(same_bits(item.value(), original[item.key()])) << item.key();
  }
  // The same moments, under the new parameters' keys; untouched parameters
  // (the text embedder) have none in either.
  EXPECT_EQ(other_optimizer->state().size(), optimizer->state().size());
  EXPECT_LT(optimizer->state().size(), model->parameters().size());
  for (const auto& item : model->named_parameters()) {
    auto key = [](const torch::Tensor& t) { return c10::guts::to_string(t.unsafeGetTensorImpl()); };
    auto before = optimizer->state().find(key(item.value()));
    auto after = other_optimizer->state().find(key(other->named_parameters()[item.key()]));
    ASSERT_EQ(before == optimizer->state().end(), after == other_optimizer->state().end()) << item.key();
    if (before == optimizer->state().end()) continue;
    const auto& a = static_cast<const torch::optim::AdamWParamState&>(*before->second);
    const auto& b = static_cast<const torch::optim::AdamWParamState&>(*after->second);
    EXPECT_EQ(a.step(), b.step());
    EXPECT_TRUE(same_bits(a.exp_avg(), b.exp_avg())) << item.key();
    EXPECT_TRUE(same_bits(a.exp_avg_sq(), b.exp_avg_sq())) << item.key();
  }

  // The next step from the restored state equals the next step of the original.
  torch::manual_seed(5);
  train_step(model, *optimizer);
  torch::manual_seed(5);
  train_step(other, *other_optimizer);
  for (const auto& item : other->named_parameters()) {
    EXPECT_TRUE(same_bits(item.value(), model->named_parameters()[item.key()])) << item.key();
  }
}

TEST(Checkpoint, RestoresTheRandomGenerator) {
  TrainingState state;
  capture_rng(state);
  const torch::Tensor first = torch::rand({4});
  restore_rng(state);
  EXPECT_TRUE(torch::equal(torch::rand({4}), first));
}

TEST(Checkpoint, KeepsTheNewestAndRemovesLeftovers) {
  ScratchDir scratch("imp_checkpoint_keep");
  ImpModel model = make_model(1);
  auto optimizer = make_optimizer(model);
  // What a run killed while writing leaves behind.
  const fs::path leftover = fs::path(scratch.path()) / "checkpoints" / ".step-00000003.tmp-99999";
  fs::create_directories(leftover);
  std::ofstream(leftover / "model.safetensors") << "partial";
  for (int64_t step : {10, 20, 30, 40}) {
    save_checkpoint(scratch.path(), model, *optimizer, sample_state(step), "", "", /*keep=*/2);
  }
  const std::vector<CheckpointInfo> kept = list_checkpoints(scratch.path());
  ASSERT_EQ(kept.size(), 2u);
  EXPECT_EQ(kept[0].step, 30);
  EXPECT_EQ(kept[1].step, 40);
  EXPECT_FALSE(fs::exists(leftover));
  // A folder still being written is never listed as a checkpoint.
  fs::create_directories(fs::path(scratch.path()) / "checkpoints" / ".step-00000050.tmp-1");
  EXPECT_EQ(list_checkpoints(scratch.path()).back().step, 40);
}

TEST(Checkpoint, MismatchedModelIsRejectedAndLeftUnchanged) {
  ScratchDir scratch("imp_checkpoint_mismatch");
  ImpModel model = make_model(1, /*classes=*/10);
  auto optimizer = make_optimizer(model);
  const std::string path =
      save_checkpoint(scratch.path(), model, *optimizer, sample_state(1), "", "", 1);

  ImpModel other = make_model(2, /*classes=*/7);
  auto other_optimizer = make_optimizer(other);
  const torch::Tensor before = other->named_parameters()["encoder.final_ln.weight"].clone();
  const torch::Tensor head_before = other->named_parameters()["classifiers.fmnist.weight"].clone();
  try {
    load_checkpoint(path, other, *other_optimizer);
    FAIL() << "a checkpoint with a 10-class head loaded into a 7-class model";
  } catch (const DataError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("classifiers.fmnist.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("[10, 32]"), std::string::npos) << message;
    EXPECT_NE(message.find("[7, 32]"), std::string::npos) << message;
  }
  EXPECT_TRUE(torch::equal(other->named_parameters()["classifiers.fmnist.weight"], head_before));
  EXPECT_TRUE(torch::equal(other->named_parameters()["encoder.final_ln.weight"], before));

  // Fine-tuning keeps the new head and takes everything else.
  const std::vector<std::string> notes = load_weights(path, other, WeightMatch::kFineTune);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[0].find("classifiers.fmnist.weight"), std::string::npos) << notes[0];
  EXPECT_TRUE(torch::equal(other->named_parameters()["classifiers.fmnist.weight"], head_before));
  EXPECT_TRUE(torch::equal(other->named_parameters()["encoder.final_ln.weight"],
                           model->named_parameters()["encoder.final_ln.weight"]));
  // Exact loading names what is wrong and suggests fine-tuning.
  try {
    load_weights(path, other, WeightMatch::kExact);
    FAIL() << "exact loading accepted a different head";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("classifiers.fmnist"), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, MissingAndExtraTensorsAreNamed) {
  ScratchDir scratch("imp_checkpoint_names");
  ImpModel model = make_model(1);
  NamedTensors extra = model_tensors(model);
  extra.emplace_back("encoder.block9.ln1.weight", torch::ones({32}));
  NamedTensors missing;
  for (const auto& [name, tensor] : model_tensors(model)) {
    if (name != "encoder.final_ln.bias") missing.emplace_back(name, tensor);
  }
  save_safetensors(scratch.file("extra.safetensors"), extra);
  save_safetensors(scratch.file("missing.safetensors"), missing);

  try {
    load_weights(scratch.file("extra.safetensors"), model, WeightMatch::kExact);
    FAIL() << "a file with an extra tensor loaded exactly";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("'encoder.block9.ln1.weight' the model lacks"), std::string::npos)
        << e.what();
  }
  // Fine-tuning ignores it and reports it in a note.
  const std::vector<std::string> notes =
      load_weights(scratch.file("extra.safetensors"), model, WeightMatch::kFineTune);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("ignored encoder.block9.ln1.weight"), std::string::npos) << notes[0];

  // A missing tensor is an error in both modes: only heads may start fresh.
  for (WeightMatch match : {WeightMatch::kExact, WeightMatch::kFineTune}) {
    try {
      load_weights(scratch.file("missing.safetensors"), model, match);
      FAIL() << "a file without encoder.final_ln.bias loaded";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("has no tensor 'encoder.final_ln.bias'"), std::string::npos)
          << e.what();
    }
  }
}

TEST(Checkpoint, IncompleteFolderNamesTheMissingFile) {
  ScratchDir scratch("imp_checkpoint_incomplete");
  ImpModel model = make_model(1);
  auto optimizer = make_optimizer(model);
  const std::string path = save_checkpoint(scratch.path(), model, *optimizer, sample_state(2), "", "", 1);
  fs::remove(fs::path(path) / "training_state.safetensors");
  try {
    load_checkpoint(path, model, *optimizer);
    FAIL() << "a checkpoint without its training state loaded";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("training_state.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(list_checkpoints(scratch.path()).empty());
}

TEST(Checkpoint, ReloadingTheOptimizerStateKeepsMemoryFlat) {
  ScratchDir scratch("imp_checkpoint_memory");
  ImpModel model = make_model(1);
  auto optimizer = make_optimizer(model);
  train_step(model, *optimizer);
  const std::string path = save_checkpoint(scratch.path(), model, *optimizer, sample_state(1), "", "", 1);
  for (int i = 0; i < 5; ++i) load_checkpoint(path, model, *optimizer);
  const int64_t before = resident_kib();
  for (int i = 0; i < 60; ++i) load_checkpoint(path, model, *optimizer);
  const int64_t growth = resident_kib() - before;
  // One copy of the state is about 0.3 MiB: 60 leaked copies would be 18 MiB.
  EXPECT_LT(growth, 4 * 1024) << "resident memory grew by " << growth << " KiB over 60 reloads";
}

TEST(Checkpoint, ResolvesWeightsFromFoldersAndFiles) {
  ScratchDir scratch("imp_checkpoint_resolve");
  ImpModel model = make_model(1);
  auto optimizer = make_optimizer(model);
  save_checkpoint(scratch.path(), model, *optimizer, sample_state(3), "", "", 2);
  const std::string newest = save_checkpoint(scratch.path(), model, *optimizer, sample_state(4), "", "", 2);
  EXPECT_EQ(resolve_weights_file(scratch.path()), (fs::path(newest) / "model.safetensors").string());
  EXPECT_EQ(resolve_weights_file(newest), (fs::path(newest) / "model.safetensors").string());
  const std::string file = (fs::path(newest) / "model.safetensors").string();
  EXPECT_EQ(resolve_weights_file(file), file);
  EXPECT_THROW(resolve_weights_file(scratch.file("missing")), DataError);
  fs::create_directories(scratch.file("empty"));
  EXPECT_THROW(resolve_weights_file(scratch.file("empty")), DataError);
}

TEST(TruncateLog, KeepsRecordsUpToTheStep) {
  ScratchDir scratch("imp_truncate_log");
  const std::string path = scratch.file("log.jsonl");
  std::ofstream(path) << "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3}\n{\"step\": 4, \"cut";
  truncate_log_after(path, 2);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "{\"step\": 1}\n{\"step\": 2}\n");
}

TEST(Progress, FormatsDurations) {
  EXPECT_EQ(format_duration(12.4), "12s");
  EXPECT_EQ(format_duration(245), "4m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
}

TEST(Progress, LiveLineRewritesInPlace) {
  ScratchDir scratch("imp_progress");
  FILE* out = std::fopen(scratch.file("out.txt").c_str(), "w+");
  ASSERT_NE(out, nullptr);
  {
    ProgressDisplay progress("live", 0, 10, out);
    EXPECT_TRUE(progress.live());
    progress.step(1, "fmnist_cls", 2.5, 100);
    progress.print_line("step 1 summary");
    progress.step(10, "fmnist_cls", 1.25, 100);
    progress.finish();
  }
  std::fflush(out);
  std::rewind(out);
  std::string text;
  for (int c; (c = std::fgetc(out)) != EOF;) text += static_cast<char>(c);
  std::fclose(out);
  EXPECT_NE(text.find("\rstep 1/10 (10%) | fmnist_cls loss 2.5000"), std::string::npos) << text;
  EXPECT_NE(text.find("step 1 summary\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\rstep 10/10 (100%) | fmnist_cls loss 1.2500"), std::string::npos) << text;
  // A file is no terminal: "auto" prints only whole lines.
  FILE* plain = std::fopen(scratch.file("plain.txt").c_str(), "w");
  ProgressDisplay automatic("auto", 0, 10, plain);
  EXPECT_FALSE(automatic.live());
  std::fclose(plain);
}

}  // namespace
}  // namespace imp
