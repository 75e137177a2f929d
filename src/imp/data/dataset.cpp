#include "imp/data/dataset.h"

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/file_dataset.h"
#include "imp/data/image_text_dataset.h"
#include "imp/data/moving_fashion_mnist.h"
#include "imp/data/spoken_fashion_mnist.h"

namespace imp {

int Dataset::label_set_index(const std::string& set_name) const {
  const std::vector<LabelSet>& sets = label_sets();
  if (set_name.empty()) return 0;
  std::string known;
  for (size_t i = 0; i < sets.size(); ++i) {
    if (sets[i].name == set_name) return static_cast<int>(i);
    known += (i == 0 ? "" : ", ") + sets[i].name;
  }
  throw ConfigError(str_cat("dataset '", name(), "' has no label set '", set_name,
                            "'; its label sets are ", known));
}

at::Tensor Dataset::labels(const std::vector<int64_t>& indices, int set) const {
  at::Tensor out = at::empty({static_cast<int64_t>(indices.size())}, at::kLong);
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t index : indices) *dst++ = label(index, set);
  return out;
}

std::vector<int64_t> Dataset::label_list(int64_t index, int set) const {
  const int64_t only = label(index, set);
  if (only < 0) return {};
  return {only};
}

at::Tensor Dataset::targets(const std::vector<int64_t>& indices, int set) const {
  const auto classes = static_cast<int64_t>(label_sets().at(set).class_names.size());
  at::Tensor out = at::zeros({static_cast<int64_t>(indices.size()), classes}, at::kFloat);
  float* row = out.data_ptr<float>();
  for (int64_t index : indices) {
    for (int64_t label : label_list(index, set)) row[label] = 1.0f;
    row += classes;
  }
  return out;
}

bool Dataset::has_modality(const std::string& modality) const {
  const std::vector<std::string> own = modalities();
  return std::find(own.begin(), own.end(), modality) != own.end();
}

std::vector<int64_t> Dataset::epoch_order(uint64_t epoch_seed) const {
  // Fisher-Yates with counter-based draws: the same order on every platform.
  std::vector<int64_t> order(size());
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = size() - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(below(mix64(epoch_seed, i), i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::map<std::string, at::Tensor> Dataset::example_inputs(const std::vector<std::string>& modalities,
                                                          int64_t index, uint64_t draw) const {
  std::map<std::string, at::Tensor> out;
  for (const std::string& modality : modalities) out[modality] = input(modality, {index}, {draw})[0];
  return out;
}

std::string Dataset::example_name(int64_t index) const {
  return str_cat("dataset '", name(), "' example ", index);
}

uint64_t Dataset::eval_draw(int64_t index) {
  return mix64(hash_name("evaluation"), static_cast<uint64_t>(index));
}

std::string classifier_name(const Dataset& dataset, int label_set) {
  if (label_set == 0) return dataset.name();
  return dataset.name() + "_" + dataset.label_sets()[label_set].name;
}

SpeechBankOptions speech_options(const DatasetConfig& config, bool train,
                                 const std::string& cache_dir) {
  SpeechBankOptions speech;
  speech.voices = train ? config.voices : config.eval_voices;
  speech.rates = config.speech_rates;
  speech.pitches = config.speech_pitches;
  speech.renditions = config.renditions;
  speech.cache_dir = (std::filesystem::path(cache_dir) / "speech").string();
  return speech;
}

namespace {

std::shared_ptr<const Dataset> load_speech_dataset(const DatasetConfig& config,
                                                   const ModelConfig& model, bool train,
                                                   const std::string& cache_dir);

}  // namespace

std::shared_ptr<const Dataset> load_dataset(const DatasetConfig& config, const ModelConfig& model,
                                            bool train, const std::string& cache_dir) {
  if (config.type == "fashion_mnist") return ImageTextDataset::load(config, train);
  if (config.type == "webdataset" || config.type == "manifest") {
    return FileDataset::load(config, model, train, cache_dir);
  }
  try {
    return load_speech_dataset(config, model, train, cache_dir);
  } catch (const DataError& e) {
    // Speech fails on a voice eSpeak NG lacks or on an unwritable cache, so
    // the message names the keys that set both.
    throw DataError(str_cat("dataset '", config.name, "', ", train ? "train" : "test",
                            " split: ", e.what(), " (voices come from datasets.", config.name,
                            train ? ".voices" : ".eval_voices", "; audio is cached under "
                            "cache_dir = ", cache_dir, ")"));
  }
}

namespace {

std::shared_ptr<const Dataset> load_speech_dataset(const DatasetConfig& config,
                                                   const ModelConfig& model, bool train,
                                                   const std::string& cache_dir) {

  // The other types are made from the Fashion-MNIST images, unflipped.
  DatasetConfig images_config = config;
  images_config.type = "fashion_mnist";
  images_config.hflip = false;
  auto items = ImageTextDataset::load(images_config, train);

  const SpeechBankOptions speech = speech_options(config, train, cache_dir);
  const std::string label = config.name + (train ? " (train)" : " (test)");

  if (config.type == "moving_fashion_mnist") {
    auto bank = std::make_shared<const SpeechBank>(
        MovingFashionMnist::caption_texts(items->class_names(), config.motions), speech,
        model.audio, label);
    const uint64_t seed = mix64(hash_name("moving_fashion_mnist"), train ? 1 : 2);
    return std::make_shared<const MovingFashionMnist>(config.name, items, config, seed, bank);
  }
  IMP_REQUIRE(ConfigError, config.type == "spoken_fashion_mnist", "dataset '", config.name,
              "' has type '", config.type,
              "'; expected fashion_mnist, moving_fashion_mnist or spoken_fashion_mnist");
  auto bank = std::make_shared<const SpeechBank>(
      SpokenFashionMnist::caption_texts(items->class_names()), speech, model.audio, label);
  return std::make_shared<const SpokenFashionMnist>(config.name, items, bank);
}

}  // namespace

}  // namespace imp
