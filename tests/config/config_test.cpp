#include "imp/config/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "imp/config/presets.h"
#include "imp/core/error.h"

namespace {

namespace fs = std::filesystem;

// Messages name this file; parse_config never opens it.
constexpr const char* kSource = "configs/x.yaml";

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (std::size_t at = text.find(from); at != std::string::npos;
       at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected \"" << part << "\" in message:\n  " << text;
}

// Every key set to a value other than its default.
constexpr const char* kFullYaml = R"(workdir: runs/test
cache_dir: cache/test
model:
  preset: tiny
  d_model: 96
  num_layers: 2
  num_heads: 3
  mlp_dim: 256
  embed_dim: 64
  temperature_init: 0.07
  max_logit_scale: 50
  moe:
    num_experts: 8
    moe_every: 1
    max_moe_layers: 2
    router: token_choice
    capacity_factor: 1.25
    top_k: 2
    group_size: 512
    aux_loss_weight: 0.01
  vision:
    channels: 3
    patch: [2, 4, 4]
    grid: [2, 7, 7]
  audio:
    patch: [8, 8]
    grid: [4, 4]
  text:
    max_len: 12
tokenizer:
  model: @DIR@/spm.model
  vocab_size: 300
datasets:
  - name: fmnist
    type: fashion_mnist
    root: @DIR@/fmnist
    hflip: false
tasks:
  - name: fmnist_cls
    dataset: fmnist
    modalities: [image]
    objective: softmax_ce
    batch_size: 64
    weight: 2.0
  - name: fmnist_nce
    dataset: fmnist
    modalities: [image, text]
    objective: nce
    text: label
    batch_size: 32
train:
  steps: 200
  seed: 7
  sampler: round_robin
  log_every: 10
  threads: 2
  workers: 1
  prefetch: 3
  dtype: bf16
  optimizer:
    lr: 0.0005
    end_lr: 1e-5
    warmup_steps: 20
    weight_decay: 0.05
    beta1: 0.8
    beta2: 0.95
    eps: 1e-8
    clip_grad_norm: 0.5
eval:
  batch_size: 250
  prompts: ["a photo of a {}", "a {}"]
  recall_at: [1, 10]
  linear_probe_examples: 2000
  linear_probe_steps: 50
)";

// Only what has no default: a dataset and two tasks on it.
constexpr const char* kMinimalYaml = R"(datasets:
  - name: fmnist
    root: @DIR@/fmnist
tasks:
  - name: fmnist_cls
    dataset: fmnist
    modalities: [image]
    objective: softmax_ce
  - name: fmnist_nce
    dataset: fmnist
    modalities: [image, text]
    objective: nce
)";

// A temporary folder holding a dataset root and a tokenizer file, so that
// configs validate without the Fashion-MNIST package installed.
class ConfigFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "imp_config_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    fs::create_directory(dir_ / "fmnist");
    write_file("spm.model", "not a real model; only its existence is checked\n");
  }

  void TearDown() override { fs::remove_all(dir_); }

  std::string write_file(const std::string& name, const std::string& text) const {
    const fs::path path = dir_ / name;
    std::ofstream(path) << text;
    return path.string();
  }

  std::string with_dir(const char* yaml) const { return replace_all(yaml, "@DIR@", dir_.string()); }
  std::string full_yaml() const { return with_dir(kFullYaml); }
  std::string minimal_yaml() const { return with_dir(kMinimalYaml); }

  imp::Config parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) const {
    return imp::parse_config(yaml, kSource, overrides);
  }

  // The ConfigError message of parsing `yaml`, or "" when it parses.
  std::string parse_error(const std::string& yaml,
                          const std::vector<std::string>& overrides = {}) const {
    try {
      imp::parse_config(yaml, kSource, overrides);
    } catch (const imp::ConfigError& error) {
      return error.what();
    }
    return "";
  }

  fs::path dir_;
};

using ConfigParse = ConfigFixture;
using ConfigErrors = ConfigFixture;
using ConfigOverrides = ConfigFixture;
using ConfigRoundTrip = ConfigFixture;

// ---------------------------------------------------------------------------
// Parsing valid files.

TEST_F(ConfigParse, FullConfigValues) {
  const imp::Config config = parse(full_yaml());
  EXPECT_EQ(config.source, kSource);
  EXPECT_EQ(config.workdir, "runs/test");
  EXPECT_EQ(config.cache_dir, "cache/test");

  const imp::ModelConfig& model = config.model;
  EXPECT_EQ(model.preset, "tiny");
  EXPECT_EQ(model.d_model, 96);
  EXPECT_EQ(model.num_layers, 2);
  EXPECT_EQ(model.num_heads, 3);
  EXPECT_EQ(model.mlp_dim, 256);
  EXPECT_EQ(model.embed_dim, 64);
  EXPECT_DOUBLE_EQ(model.temperature_init, 0.07);
  EXPECT_DOUBLE_EQ(model.max_logit_scale, 50.0);
  EXPECT_EQ(model.moe.num_experts, 8);
  EXPECT_EQ(model.moe.moe_every, 1);
  EXPECT_EQ(model.moe.max_moe_layers, 2);
  EXPECT_EQ(model.moe.router, "token_choice");
  EXPECT_DOUBLE_EQ(model.moe.capacity_factor, 1.25);
  EXPECT_EQ(model.moe.top_k, 2);
  EXPECT_EQ(model.moe.group_size, 512);
  EXPECT_DOUBLE_EQ(model.moe.aux_loss_weight, 0.01);
  EXPECT_EQ(model.vision.channels, 3);
  EXPECT_EQ(model.vision.patch, (std::array<int, 3>{2, 4, 4}));
  EXPECT_EQ(model.vision.grid, (std::array<int, 3>{2, 7, 7}));
  EXPECT_EQ(model.audio.patch, (std::array<int, 2>{8, 8}));
  EXPECT_EQ(model.audio.grid, (std::array<int, 2>{4, 4}));
  EXPECT_EQ(model.text.max_len, 12);

  EXPECT_EQ(config.tokenizer.model, (dir_ / "spm.model").string());
  EXPECT_EQ(config.tokenizer.vocab_size, 300);

  ASSERT_EQ(config.datasets.size(), 1u);
  EXPECT_EQ(config.datasets[0].name, "fmnist");
  EXPECT_EQ(config.datasets[0].type, "fashion_mnist");
  EXPECT_EQ(config.datasets[0].root, (dir_ / "fmnist").string());
  EXPECT_FALSE(config.datasets[0].hflip);

  ASSERT_EQ(config.tasks.size(), 2u);
  EXPECT_EQ(config.tasks[0].name, "fmnist_cls");
  EXPECT_EQ(config.tasks[0].dataset, "fmnist");
  EXPECT_EQ(config.tasks[0].modalities, std::vector<std::string>{"image"});
  EXPECT_EQ(config.tasks[0].objective, "softmax_ce");
  EXPECT_EQ(config.tasks[0].batch_size, 64);
  EXPECT_DOUBLE_EQ(config.tasks[0].weight, 2.0);
  EXPECT_EQ(config.tasks[1].modalities, (std::vector<std::string>{"image", "text"}));
  EXPECT_EQ(config.tasks[1].objective, "nce");
  EXPECT_EQ(config.tasks[1].text, "label");
  EXPECT_EQ(config.tasks[1].batch_size, 32);

  EXPECT_EQ(config.train.steps, 200);
  EXPECT_EQ(config.train.seed, 7u);
  EXPECT_EQ(config.train.sampler, "round_robin");
  EXPECT_EQ(config.train.log_every, 10);
  EXPECT_EQ(config.train.threads, 2);
  EXPECT_EQ(config.train.workers, 1);
  EXPECT_EQ(config.train.prefetch, 3);
  EXPECT_EQ(config.train.dtype, "bf16");
  EXPECT_DOUBLE_EQ(config.train.optimizer.lr, 0.0005);
  EXPECT_DOUBLE_EQ(config.train.optimizer.end_lr, 1e-5);
  EXPECT_EQ(config.train.optimizer.warmup_steps, 20);
  EXPECT_DOUBLE_EQ(config.train.optimizer.weight_decay, 0.05);
  EXPECT_DOUBLE_EQ(config.train.optimizer.beta1, 0.8);
  EXPECT_DOUBLE_EQ(config.train.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(config.train.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(config.train.optimizer.clip_grad_norm, 0.5);

  EXPECT_EQ(config.eval.batch_size, 250);
  EXPECT_EQ(config.eval.prompts, (std::vector<std::string>{"a photo of a {}", "a {}"}));
  EXPECT_EQ(config.eval.recall_at, (std::vector<int>{1, 10}));
  EXPECT_EQ(config.eval.linear_probe_examples, 2000);
  EXPECT_EQ(config.eval.linear_probe_steps, 50);
}

TEST_F(ConfigParse, DefaultsWhenKeysAbsent) {
  const imp::Config config = parse(minimal_yaml());
  const imp::Config defaults;
  EXPECT_EQ(config.workdir, defaults.workdir);
  EXPECT_EQ(config.cache_dir, defaults.cache_dir);
  EXPECT_EQ(config.tokenizer.model, "");
  EXPECT_EQ(config.tokenizer.vocab_size, 256);
  EXPECT_EQ(config.datasets[0].type, "fashion_mnist");
  EXPECT_TRUE(config.datasets[0].hflip);
  EXPECT_EQ(config.tasks[1].text, "caption");
  EXPECT_EQ(config.tasks[1].batch_size, 128);
  EXPECT_DOUBLE_EQ(config.tasks[1].weight, -1.0);
  EXPECT_EQ(config.train.steps, 1000);
  EXPECT_EQ(config.train.sampler, "multinomial");
  EXPECT_EQ(config.train.dtype, "fp32");
  EXPECT_DOUBLE_EQ(config.train.optimizer.lr, 1e-3);
  EXPECT_EQ(config.train.optimizer.warmup_steps, 100);
  EXPECT_EQ(config.eval.batch_size, 500);
  EXPECT_TRUE(config.eval.prompts.empty());
  EXPECT_EQ(config.eval.recall_at, (std::vector<int>{1, 5}));
}

TEST_F(ConfigParse, AbsentModelIsTinyPreset) {
  const imp::Config config = parse(minimal_yaml());
  const imp::ModelConfig& tiny = imp::model_preset("tiny");
  EXPECT_EQ(config.model.preset, "tiny");
  EXPECT_EQ(config.model.d_model, tiny.d_model);
  EXPECT_EQ(config.model.mlp_dim, tiny.mlp_dim);
  EXPECT_EQ(config.model.moe.num_experts, tiny.moe.num_experts);
  EXPECT_EQ(config.model.vision.channels, tiny.vision.channels);
  EXPECT_EQ(config.model.vision.patch, tiny.vision.patch);
  EXPECT_EQ(config.model.vision.grid, tiny.vision.grid);
}

TEST_F(ConfigParse, EmptySectionKeepsDefaults) {
  const imp::Config config = parse(minimal_yaml() + "eval:\ntrain:\n");
  EXPECT_EQ(config.eval.batch_size, 500);
  EXPECT_EQ(config.train.steps, 1000);
}

TEST_F(ConfigParse, PresetThenKeys) {
  // d_model comes before preset in the file and still wins.
  const imp::Config config = parse(minimal_yaml() + "model:\n  d_model: 64\n  preset: tiny\n");
  EXPECT_EQ(config.model.preset, "tiny");
  EXPECT_EQ(config.model.d_model, 64);
  EXPECT_EQ(config.model.num_layers, 4);
  EXPECT_EQ(config.model.mlp_dim, 384);
  EXPECT_EQ(config.model.vision.channels, 1);
}

TEST_F(ConfigParse, LargePresetWithNestedKey) {
  const imp::Config config =
      parse(minimal_yaml() + "model:\n  preset: base-moe\n  moe:\n    num_experts: 8\n");
  EXPECT_EQ(config.model.d_model, 768);
  EXPECT_EQ(config.model.moe.num_experts, 8);
  EXPECT_EQ(config.model.moe.max_moe_layers, 6);
}

TEST_F(ConfigParse, LoadsFromFile) {
  const std::string path = write_file("run.yaml", minimal_yaml());
  const imp::Config config = imp::load_config(path, {"train.steps=3"});
  EXPECT_EQ(config.source, path);
  EXPECT_EQ(config.train.steps, 3);
  EXPECT_EQ(config.tasks.size(), 2u);
}

// The demo config shipped in the repository, with its dataset root pointed at
// the fixture so that the test does not need the Fashion-MNIST package.
TEST_F(ConfigParse, RepositoryDefaultYaml) {
  const fs::path path = fs::path(IMP_SOURCE_DIR) / "configs" / "default.yaml";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is not in this checkout";
  const imp::Config config =
      imp::load_config(path.string(), {"datasets.fmnist.root=" + (dir_ / "fmnist").string()});
  EXPECT_EQ(config.model.preset, "tiny");
  EXPECT_FALSE(config.tasks.empty());
}

TEST_F(ConfigParse, BooleanWords) {
  const imp::Config config =
      parse(replace_all(minimal_yaml(), "    root:", "    hflip: no\n    root:"));
  EXPECT_FALSE(config.datasets[0].hflip);
}

// ---------------------------------------------------------------------------
// Errors in the file.

TEST_F(ConfigErrors, UnknownKeySuggestsNearest) {
  const std::string message = parse_error(minimal_yaml() + "model:\n  d_modle: 64\n");
  EXPECT_TRUE(
      Contains(message, "unknown key 'model.d_modle' in configs/x.yaml; did you mean 'd_model'?"));
}

TEST_F(ConfigErrors, UnknownKeyInListEntry) {
  const std::string yaml =
      replace_all(minimal_yaml(), "    objective: nce", "    objective: nce\n    batch_sise: 8");
  const std::string message = parse_error(yaml);
  EXPECT_TRUE(Contains(message, "unknown key 'tasks[1].batch_sise' in configs/x.yaml"));
  EXPECT_TRUE(Contains(message, "did you mean 'batch_size'?"));
}

TEST_F(ConfigErrors, UnknownTopLevelKey) {
  const std::string message = parse_error(minimal_yaml() + "trian:\n  steps: 5\n");
  EXPECT_TRUE(Contains(message, "unknown key 'trian' in configs/x.yaml; did you mean 'train'?"));
}

TEST_F(ConfigErrors, UnknownKeyFarFromAllListsValidKeys) {
  const std::string message = parse_error(minimal_yaml() + "model:\n  moe:\n    shuffle: true\n");
  EXPECT_TRUE(Contains(message, "unknown key 'model.moe.shuffle' in configs/x.yaml"));
  EXPECT_TRUE(
      Contains(message, "valid keys here are num_experts, moe_every, max_moe_layers, router"));
  EXPECT_FALSE(Contains(message, "did you mean"));
}

TEST_F(ConfigErrors, RepeatedKey) {
  const std::string message = parse_error(minimal_yaml() + "train:\n  steps: 5\n  steps: 6\n");
  EXPECT_TRUE(Contains(message, "'train.steps' in configs/x.yaml is given twice"));
}

TEST_F(ConfigErrors, StringForInteger) {
  const std::string yaml = replace_all(minimal_yaml(), "    objective: nce",
                                       "    objective: nce\n    batch_size: sixty");
  const std::string message = parse_error(yaml);
  EXPECT_TRUE(Contains(
      message, "'tasks[1].batch_size' in configs/x.yaml must be an integer, found 'sixty'"));
}

TEST_F(ConfigErrors, FloatForInteger) {
  const std::string message = parse_error(minimal_yaml() + "train:\n  steps: 2.5\n");
  EXPECT_TRUE(Contains(message, "'train.steps' in configs/x.yaml must be an integer, found '2.5'"));
}

TEST_F(ConfigErrors, QuotedNumberIsString) {
  const std::string message = parse_error(minimal_yaml() + "train:\n  steps: \"64\"\n");
  EXPECT_TRUE(Contains(
      message, "'train.steps' in configs/x.yaml must be an integer, found the string '64'"));
}

TEST_F(ConfigErrors, NonNumberForDouble) {
  const std::string message = parse_error(minimal_yaml() + "train:\n  optimizer:\n    lr: fast\n");
  EXPECT_TRUE(Contains(
      message, "'train.optimizer.lr' in configs/x.yaml must be a finite number, found 'fast'"));
}

TEST_F(ConfigErrors, MapForList) {
  const std::string yaml = with_dir("datasets:\n  - name: fmnist\n    root: @DIR@/fmnist\n");
  const std::string message = parse_error(yaml + "tasks:\n  name: fmnist_cls\n");
  EXPECT_TRUE(Contains(message, "'tasks' in configs/x.yaml must be a list of maps, found a map"));
}

TEST_F(ConfigErrors, ListForSection) {
  const std::string message = parse_error(minimal_yaml() + "model: [1, 2]\n");
  EXPECT_TRUE(Contains(
      message, "'model' in configs/x.yaml must be a map of keys, found a list of 2 entries"));
}

TEST_F(ConfigErrors, ArrayOfWrongLength) {
  const std::string message =
      parse_error(minimal_yaml() + "model:\n  vision:\n    patch: [4, 4]\n");
  EXPECT_TRUE(Contains(message,
                       "'model.vision.patch' in configs/x.yaml must be a list of 3 integers, found "
                       "a list of 2 entries"));
}

TEST_F(ConfigErrors, ArrayEntryType) {
  const std::string message = parse_error(minimal_yaml() + "model:\n  audio:\n    grid: [8, x]\n");
  EXPECT_TRUE(
      Contains(message, "'model.audio.grid[1]' in configs/x.yaml must be an integer, found 'x'"));
}

TEST_F(ConfigErrors, NoValueForLeaf) {
  const std::string message = parse_error(minimal_yaml() + "workdir:\n");
  EXPECT_TRUE(Contains(message, "'workdir' in configs/x.yaml must be a string, found no value"));
}

TEST_F(ConfigErrors, HeadsMustDivideWidth) {
  const std::string message =
      parse_error(minimal_yaml() + "model:\n  d_model: 100\n  num_heads: 3\n");
  EXPECT_TRUE(Contains(
      message,
      "'model.d_model' in configs/x.yaml must be divisible by model.num_heads (3), found 100"));
}

TEST_F(ConfigErrors, RouterFromFile) {
  const std::string message = parse_error(minimal_yaml() + "model:\n  moe:\n    router: topk\n");
  EXPECT_TRUE(Contains(
      message,
      "'model.moe.router' in configs/x.yaml must be experts_choose or token_choice, found 'topk'"));
}

TEST_F(ConfigErrors, UnknownPresetListsValidOnes) {
  const std::string message = parse_error(minimal_yaml() + "model:\n  preset: huge\n");
  EXPECT_TRUE(Contains(message,
                       "'model.preset' in configs/x.yaml must be tiny, small, base, large, "
                       "small-moe, base-moe or large-moe, found 'huge'"));
}

TEST_F(ConfigErrors, NoTasks) {
  const std::string yaml = with_dir("datasets:\n  - name: fmnist\n    root: @DIR@/fmnist\n");
  EXPECT_TRUE(Contains(parse_error(yaml),
                       "configs/x.yaml defines no tasks; add at least one entry under 'tasks'"));
  EXPECT_TRUE(Contains(parse_error(yaml + "tasks: []\n"), "configs/x.yaml defines no tasks"));
}

TEST_F(ConfigErrors, EmptyFileHasNoTasks) {
  EXPECT_TRUE(Contains(parse_error(""), "configs/x.yaml defines no tasks"));
}

TEST_F(ConfigErrors, RepeatedDatasetName) {
  const std::string yaml = replace_all(
      minimal_yaml(), "tasks:\n", "  - name: fmnist\n    root: " + dir_.string() + "\ntasks:\n");
  EXPECT_TRUE(
      Contains(parse_error(yaml),
               "'datasets[1].name' in configs/x.yaml repeats the name 'fmnist' of datasets[0]"));
}

TEST_F(ConfigErrors, DatasetRootMissing) {
  const std::string yaml = replace_all(minimal_yaml(), "/fmnist\n", "/absent\n");
  const std::string message = parse_error(yaml);
  EXPECT_TRUE(
      Contains(message, "'datasets[0].root' in configs/x.yaml is not an existing directory: " +
                            (dir_ / "absent").string()));
  EXPECT_FALSE(Contains(message, "dataset-fashion-mnist"));
}

TEST_F(ConfigErrors, DefaultRootNamesPackage) {
  const std::string default_root = imp::DatasetConfig{}.root;
  if (fs::is_directory(default_root)) {
    GTEST_SKIP() << default_root << " exists, so it cannot be reported missing";
  }
  const std::string yaml =
      replace_all(minimal_yaml(), "    root: " + dir_.string() + "/fmnist\n", "");
  const std::string message = parse_error(yaml);
  EXPECT_TRUE(Contains(
      message,
      "'datasets[0].root' in configs/x.yaml is not an existing directory: " + default_root));
  EXPECT_TRUE(Contains(message, "Install Debian's dataset-fashion-mnist package"));
}

TEST_F(ConfigErrors, TokenizerFileMissing) {
  const std::string message =
      parse_error(minimal_yaml() + "tokenizer:\n  model: " + dir_.string() + "/none.model\n");
  EXPECT_TRUE(
      Contains(message, "'tokenizer.model' in configs/x.yaml names a file that does not exist: " +
                            (dir_ / "none.model").string()));
}

TEST_F(ConfigErrors, TopLevelList) {
  EXPECT_TRUE(Contains(parse_error("- a\n- b\n"), "configs/x.yaml must contain a map of sections"));
}

TEST_F(ConfigErrors, MalformedYamlGivesLine) {
  const std::string message = parse_error("train:\n  steps: 5\nmodel: [1, 2\ntasks: []\n");
  EXPECT_TRUE(Contains(message, "configs/x.yaml is not valid YAML"));
  EXPECT_TRUE(Contains(message, "at line 4"));
}

TEST_F(ConfigErrors, MissingFile) {
  const std::string path = (dir_ / "absent.yaml").string();
  try {
    imp::load_config(path);
    FAIL() << "expected ConfigError";
  } catch (const imp::ConfigError& error) {
    EXPECT_TRUE(Contains(error.what(), "config file not found: " + path));
  }
}

// Out-of-range values, set through overrides on a valid file. Each message
// names the key path and the file.
struct RangeCase {
  const char* override_text;
  const char* key_path;  // reported key, not always the one the override sets
  const char* problem;
};

TEST_F(ConfigErrors, ValuesOutOfRange) {
  const RangeCase cases[] = {
      {"model.d_model=0", "model.d_model", "must be positive, found 0"},
      {"model.num_heads=5", "model.d_model", "must be divisible by model.num_heads (5), found 128"},
      {"model.mlp_dim=-1", "model.mlp_dim", "must be positive, found -1"},
      {"model.moe.capacity_factor=0", "model.moe.capacity_factor", "must be positive, found 0"},
      {"model.moe.top_k=5", "model.moe.top_k",
       "must be between 1 and model.moe.num_experts (4), found 5"},
      {"model.moe.top_k=0", "model.moe.top_k", "must be positive, found 0"},
      {"model.moe.num_experts=-2", "model.moe.num_experts", "must be zero or positive, found -2"},
      {"model.vision.patch=[1, 0, 4]", "model.vision.patch[1]", "must be positive, found 0"},
      {"model.text.max_len=0", "model.text.max_len", "must be positive, found 0"},
      {"model.preset=huge", "model.preset",
       "must be tiny, small, base, large, small-moe, base-moe or large-moe, found 'huge'"},
      {"tasks.0.objective=mse", "tasks[0].objective",
       "must be softmax_ce, sigmoid_bce or nce, found 'mse'"},
      {"tasks.0.modalities=[smell]", "tasks[0].modalities[0]",
       "must be image, video, audio or text, found 'smell'"},
      {"tasks.1.modalities=[image]", "tasks[1].modalities",
       "must name exactly two modalities for objective nce, found 1"},
      {"tasks.1.modalities=[text, text]", "tasks[1].modalities[1]", "repeats 'text'"},
      {"tasks.1.modalities=[text, image]", "tasks[1].modalities[0]",
       "is text, which goes second in an nce pair, as in [video, text]"},
      {"tasks.0.modalities=[text]", "tasks[0].modalities[0]",
       "is text, which objective softmax_ce cannot classify"},
      {"tasks.0.modalities=[image, text]", "tasks[0].modalities",
       "must name exactly one modality for objective softmax_ce, found 2"},
      {"tasks.1.text=title", "tasks[1].text", "must be caption or label, found 'title'"},
      {"tasks.0.dataset=mnist", "tasks[0].dataset",
       "names dataset 'mnist', which is not defined under 'datasets'; defined datasets are fmnist"},
      {"tasks.1.name=fmnist_cls", "tasks[1].name", "repeats the name 'fmnist_cls' of tasks[0]"},
      {"tasks.0.batch_size=0", "tasks[0].batch_size", "must be positive, found 0"},
      {"datasets.0.type=cifar", "datasets[0].type",
       "must be fashion_mnist, moving_fashion_mnist, spoken_fashion_mnist, webdataset or manifest, found 'cifar'"},
      {"datasets.0.eval_examples=-1", "datasets[0].eval_examples",
       "must be zero or positive, found -1"},
      {"datasets.0.max_shift=-1", "datasets[0].max_shift", "must be zero or positive, found -1"},
      {"datasets.0.max_shift=14", "datasets[0].max_shift",
       "must be below 14, half the side of a Fashion-MNIST image, found 14"},
      {"model.audio.patch=[5, 8]", "model.audio.patch",
       "patch[0] = 5 does not divide model.audio.mel_bands = 32"},
      {"model.audio.f_max=9000", "model.audio.f_max", "is above half the sample rate (8000 Hz)"},
      {"model.audio.hop=0", "model.audio.hop", "must be positive, found 0"},
      {"train.steps=0", "train.steps", "must be positive, found 0"},
      {"train.sampler=random", "train.sampler",
       "must be multinomial or round_robin, found 'random'"},
      {"train.dtype=fp16", "train.dtype", "must be fp32 or bf16, found 'fp16'"},
      {"train.cpu_cache_mb=-2", "train.cpu_cache_mb", "must be -1 (a quarter of this machine's memory), 0"},
      {"train.optimizer.lr=0", "train.optimizer.lr", "must be positive, found 0"},
      {"train.optimizer.warmup_steps=-1", "train.optimizer.warmup_steps",
       "must be zero or positive, found -1"},
      {"train.optimizer.beta2=1", "train.optimizer.beta2", "must be in [0, 1), found 1"},
      {"eval.prompts=[\"no slot\"]", "eval.prompts[0]",
       "must contain {} where the class name goes"},
      {"eval.recall_at=[1, 0]", "eval.recall_at[1]", "must be positive, found 0"},
  };
  for (const RangeCase& range_case : cases) {
    SCOPED_TRACE(range_case.override_text);
    const std::string message = parse_error(minimal_yaml(), {range_case.override_text});
    EXPECT_TRUE(Contains(message, imp::str_cat("'", range_case.key_path, "' in configs/x.yaml")));
    EXPECT_TRUE(Contains(message, range_case.problem));
  }
}

// Video and speech settings are checked for the dataset types that use them.
TEST_F(ConfigErrors, VideoAndSpeechDatasets) {
  struct Case {
    std::vector<std::string> overrides;
    std::string key_path;
    std::string problem;
  };
  const Case cases[] = {
      {{"datasets.0.type=spoken_fashion_mnist", "datasets.0.eval_voices=[en+m6, en-us+m1]"},
       "datasets[0].eval_voices[1]",
       "'en-us+m1' is also a training voice in datasets[0].voices; test audio must come from "
       "voices never heard in training"},
      {{"datasets.0.type=spoken_fashion_mnist", "datasets.0.voices=[]"}, "datasets[0].voices",
       "must list at least one voice"},
      {{"datasets.0.type=spoken_fashion_mnist", "datasets.0.speech_pitches=[50, 120]"},
       "datasets[0].speech_pitches[1]", "must be in [0, 100], found 120"},
      {{"datasets.0.type=moving_fashion_mnist", "datasets.0.motions=[left, spin]"},
       "datasets[0].motions[1]", "found 'spin'"},
      {{"datasets.0.type=moving_fashion_mnist", "datasets.0.frames=20"}, "datasets[0].frames",
       "must not exceed video_frames (12), found 20"},
      {{"datasets.0.type=moving_fashion_mnist", "datasets.0.canvas=20"}, "datasets[0].canvas",
       "must be at least 28"},
      {{"datasets.0.type=moving_fashion_mnist", "datasets.0.max_shift=2"}, "datasets[0].max_shift",
       "applies only to fashion_mnist datasets, and this one is moving_fashion_mnist"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.overrides.back());
    const std::string message = parse_error(minimal_yaml(), c.overrides);
    EXPECT_TRUE(Contains(message, imp::str_cat("'", c.key_path, "' in configs/x.yaml"))) << message;
    EXPECT_TRUE(Contains(message, c.problem)) << message;
  }
  // The same voices for a plain image dataset are not checked: it has no audio.
  EXPECT_EQ(parse_error(minimal_yaml(), {"datasets.0.eval_voices=[en-us+m1]"}), "");
}

// ---------------------------------------------------------------------------
// Overrides.

TEST_F(ConfigOverrides, SetsScalar) {
  EXPECT_EQ(parse(minimal_yaml(), {"train.steps=200"}).train.steps, 200);
}

TEST_F(ConfigOverrides, SetsKeyAbsentFromFile) {
  const imp::Config config =
      parse(minimal_yaml(), {"model.moe.num_experts=0", "train.optimizer.lr=0.01"});
  EXPECT_EQ(config.model.moe.num_experts, 0);
  EXPECT_DOUBLE_EQ(config.train.optimizer.lr, 0.01);
}

TEST_F(ConfigOverrides, SetsArray) {
  const imp::Config config =
      parse(minimal_yaml(), {"model.vision.patch=[1,4,4]", "model.vision.grid=[1, 7, 7]"});
  EXPECT_EQ(config.model.vision.patch, (std::array<int, 3>{1, 4, 4}));
  EXPECT_EQ(config.model.vision.grid, (std::array<int, 3>{1, 7, 7}));
}

TEST_F(ConfigOverrides, SetsListOfStrings) {
  const imp::Config config = parse(full_yaml(), {"eval.prompts=[\"a {}\"]"});
  EXPECT_EQ(config.eval.prompts, std::vector<std::string>{"a {}"});
}

TEST_F(ConfigOverrides, TaskByName) {
  const imp::Config config = parse(minimal_yaml(), {"tasks.fmnist_nce.batch_size=64"});
  EXPECT_EQ(config.tasks[0].batch_size, 128);
  EXPECT_EQ(config.tasks[1].batch_size, 64);
}

TEST_F(ConfigOverrides, TaskByIndex) {
  const imp::Config config = parse(minimal_yaml(), {"tasks.0.batch_size=16"});
  EXPECT_EQ(config.tasks[0].batch_size, 16);
  EXPECT_EQ(config.tasks[1].batch_size, 128);
}

TEST_F(ConfigOverrides, DatasetRootByName) {
  fs::create_directory(dir_ / "other");
  const std::string root = (dir_ / "other").string();
  const imp::Config config = parse(minimal_yaml(), {"datasets.fmnist.root=" + root});
  EXPECT_EQ(config.datasets[0].root, root);
}

TEST_F(ConfigOverrides, LaterOverrideWins) {
  EXPECT_EQ(parse(minimal_yaml(), {"train.steps=5", "train.steps=6"}).train.steps, 6);
}

TEST_F(ConfigOverrides, PresetThenFileKeys) {
  const imp::Config config =
      parse(minimal_yaml() + "model:\n  d_model: 96\n", {"model.preset=small"});
  EXPECT_EQ(config.model.preset, "small");
  EXPECT_EQ(config.model.d_model, 96);
  EXPECT_EQ(config.model.num_layers, 12);
}

TEST_F(ConfigOverrides, EmptyValueIsEmptyString) {
  EXPECT_EQ(parse(full_yaml(), {"tokenizer.model="}).tokenizer.model, "");
}

TEST_F(ConfigOverrides, ValueWithEquals) {
  const imp::Config config = parse(minimal_yaml(), {"workdir=runs/a=b"});
  EXPECT_EQ(config.workdir, "runs/a=b");
}

TEST_F(ConfigOverrides, MissingEquals) {
  EXPECT_TRUE(
      Contains(parse_error(minimal_yaml(), {"train.steps"}),
               "override 'train.steps' for configs/x.yaml has no '='; write it as key=value"));
}

TEST_F(ConfigOverrides, UnknownKeySuggestsNearest) {
  EXPECT_TRUE(Contains(parse_error(minimal_yaml(), {"train.stepz=5"}),
                       "unknown key 'train.stepz' in override 'train.stepz=5' for configs/x.yaml; "
                       "did you mean 'steps'?"));
}

TEST_F(ConfigOverrides, UnknownKeyInTask) {
  const std::string message = parse_error(minimal_yaml(), {"tasks.fmnist_cls.batch_sise=64"});
  EXPECT_TRUE(
      Contains(message,
               "unknown key 'tasks.fmnist_cls.batch_sise' in override "
               "'tasks.fmnist_cls.batch_sise=64' for configs/x.yaml; did you mean 'batch_size'?"));
}

TEST_F(ConfigOverrides, UnknownTaskListsNames) {
  const std::string message = parse_error(minimal_yaml(), {"tasks.nope.batch_size=64"});
  EXPECT_TRUE(
      Contains(message,
               "override 'tasks.nope.batch_size=64' for configs/x.yaml names task 'nope', which "
               "is not defined; defined tasks are fmnist_cls, fmnist_nce"));
}

TEST_F(ConfigOverrides, TaskIndexOutOfRange) {
  EXPECT_TRUE(Contains(parse_error(minimal_yaml(), {"tasks.2.batch_size=64"}),
                       "names task '2', which is not defined"));
}

TEST_F(ConfigOverrides, KeyBelowValue) {
  const std::string message = parse_error(minimal_yaml(), {"model.d_model.width=5"});
  EXPECT_TRUE(Contains(message,
                       "override 'model.d_model.width=5' for configs/x.yaml sets a key below "
                       "'model.d_model', which takes a whole value"));
}

TEST_F(ConfigOverrides, EmptyKeySegment) {
  EXPECT_TRUE(Contains(parse_error(minimal_yaml(), {"train..steps=5"}),
                       "override 'train..steps=5' for configs/x.yaml has an invalid key"));
}

TEST_F(ConfigOverrides, InvalidYamlValue) {
  EXPECT_TRUE(
      Contains(parse_error(minimal_yaml(), {"eval.prompts=[a"}),
               "override 'eval.prompts=[a' for configs/x.yaml has a value that is not valid YAML"));
}

TEST_F(ConfigOverrides, WrongTypeNamesOverride) {
  const std::string message = parse_error(minimal_yaml(), {"train.steps=many"});
  EXPECT_TRUE(Contains(message,
                       "'train.steps' in configs/x.yaml (set by override 'train.steps=many') "
                       "must be an integer, found 'many'"));
}

TEST_F(ConfigOverrides, RangeErrorNamesOverrideByTaskName) {
  const std::string message = parse_error(minimal_yaml(), {"tasks.fmnist_nce.batch_size=-4"});
  EXPECT_TRUE(Contains(message,
                       "'tasks[1].batch_size' in configs/x.yaml (set by override "
                       "'tasks.fmnist_nce.batch_size=-4') must be positive, found -4"));
}

TEST_F(ConfigOverrides, WholeSectionValueIsChecked) {
  const std::string message = parse_error(minimal_yaml(), {"model.moe={num_expertz: 2}"});
  EXPECT_TRUE(Contains(message,
                       "unknown key 'model.moe.num_expertz' in configs/x.yaml (set by override "
                       "'model.moe={num_expertz: 2}'); did you mean 'num_experts'?"));
}

// ---------------------------------------------------------------------------
// Writing.

TEST_F(ConfigRoundTrip, FullConfig) {
  const imp::Config config = parse(full_yaml());
  const std::string yaml = imp::to_yaml(config);
  const imp::Config again = parse(yaml);
  EXPECT_EQ(imp::to_yaml(again), yaml);
  EXPECT_DOUBLE_EQ(again.train.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(again.model.temperature_init, 0.07);
  EXPECT_EQ(again.train.seed, 7u);
  EXPECT_EQ(again.eval.prompts, config.eval.prompts);
  EXPECT_EQ(again.model.vision.grid, config.model.vision.grid);
}

TEST_F(ConfigRoundTrip, AfterOverrides) {
  const imp::Config config =
      parse(minimal_yaml(), {"model.preset=base-moe", "tasks.0.batch_size=8"});
  const std::string yaml = imp::to_yaml(config);
  EXPECT_EQ(imp::to_yaml(parse(yaml)), yaml);
}

TEST_F(ConfigRoundTrip, EveryPresetValidates) {
  for (const std::string& name : imp::preset_names()) {
    SCOPED_TRACE(name);
    const imp::Config config = parse(minimal_yaml(), {"model.preset=" + name});
    const std::string yaml = imp::to_yaml(config);
    EXPECT_EQ(imp::to_yaml(parse(yaml)), yaml);
  }
}

TEST_F(ConfigRoundTrip, WritesEveryKey) {
  const std::string yaml = imp::to_yaml(parse(minimal_yaml()));
  for (const char* key :
       {"workdir:", "cache_dir:", "preset: tiny",
        "max_logit_scale:", "aux_loss_weight:", "channels:", "patch: [4, 7, 7]", "grid: [2, 4, 4]",
        "sample_rate: 16000", "mel_bands: 32", "patch: [16, 8]", "label: \"\"", "eval_clips: 8", "video_frames: 12",
        "eval_voices:", "renditions: 10", "motions:",
        "max_len:", "vocab_size:", "hflip: true", "text: caption", "weight: -1.0", "seed: 0",
        "clip_grad_norm:", "prompts: []", "recall_at: [1, 5]", "linear_probe_steps:"}) {
    EXPECT_TRUE(Contains(yaml, key));
  }
}

TEST_F(ConfigRoundTrip, ShortestDoubles) {
  const std::string yaml = imp::to_yaml(parse(minimal_yaml(), {"train.optimizer.lr=0.1"}));
  EXPECT_TRUE(Contains(yaml, "lr: 0.1\n"));
}

TEST_F(ConfigRoundTrip, StringsThatLookLikeOtherTypes) {
  const imp::Config config = parse(minimal_yaml() + "workdir: \"null\"\ncache_dir: \"~\"\n");
  const std::string yaml = imp::to_yaml(config);
  const imp::Config again = parse(yaml);
  EXPECT_EQ(again.workdir, "null");
  EXPECT_EQ(again.cache_dir, "~");
}



// User data: a webdataset and a manifest dataset with their own keys; they
// need no Fashion-MNIST root.
constexpr const char* kUserDataYaml = R"(datasets:
  - name: photos
    type: webdataset
    train: ["shards/train-{000000..000003}.tar"]
    test: [shards/test.tar]
    image_size: [32, 48]
    crop_min_scale: 0.5
    max_bad_fraction: 0.2
  - name: clips
    type: manifest
    train: [clips/train.csv]
    modalities: [video, audio]
    video_fps: 4
tasks:
  - {name: photos_cls, dataset: photos, modalities: [image], objective: softmax_ce}
  - {name: clips_av, dataset: clips, modalities: [video, audio], objective: nce}
)";

TEST_F(ConfigParse, UserDataKeys) {
  const imp::Config config = parse(kUserDataYaml);
  const imp::DatasetConfig& photos = config.datasets.at(0);
  EXPECT_EQ(photos.train, std::vector<std::string>{"shards/train-{000000..000003}.tar"});
  EXPECT_EQ(photos.image_size, (std::array<int, 2>{32, 48}));
  EXPECT_DOUBLE_EQ(photos.crop_min_scale, 0.5);
  EXPECT_EQ(photos.image_ext, (std::vector<std::string>{"jpg", "jpeg", "png", "webp"}));
  const imp::DatasetConfig& clips = config.datasets.at(1);
  EXPECT_EQ(clips.modalities, (std::vector<std::string>{"video", "audio"}));
  EXPECT_DOUBLE_EQ(clips.video_fps, 4.0);
  EXPECT_EQ(imp::to_yaml(parse(imp::to_yaml(config))), imp::to_yaml(config));
}

TEST_F(ConfigErrors, UserDataKeysChecked) {
  EXPECT_TRUE(Contains(parse_error(kUserDataYaml, {"datasets.photos.train=[]"}), "datasets[0].train"));
  EXPECT_TRUE(Contains(parse_error(kUserDataYaml, {"datasets.clips.train=[a.csv, b.csv]"}),
                       "exactly one manifest"));
  EXPECT_TRUE(Contains(parse_error(kUserDataYaml, {"datasets.clips.modalities=[text]"}),
                       "datasets[1].modalities[0]"));
  EXPECT_TRUE(Contains(parse_error(kUserDataYaml, {"datasets.photos.crop_min_scale=0"}),
                       "crop_min_scale"));
  EXPECT_TRUE(Contains(parse_error(kUserDataYaml, {"datasets.photos.max_bad_fraction=2"}),
                       "max_bad_fraction"));
}

TEST_F(ConfigParse, LabelTextLengthCappedByMaxLen) {
  imp::Config config = parse(minimal_yaml(), {"model.text.max_len=64"});
  EXPECT_EQ(config.model.text.label_max_len, 16);
  EXPECT_EQ(imp::label_text_length(config.model.text), 16);
  config = parse(minimal_yaml(), {"model.text.max_len=8"});
  EXPECT_EQ(imp::label_text_length(config.model.text), 8);
  EXPECT_EQ(imp::model_preset("base").text.max_len, 256);
  EXPECT_EQ(imp::model_preset("base").text.label_max_len, 16);
}

}  // namespace
