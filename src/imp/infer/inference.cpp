#include "imp/infer/inference.h"

#include <cstdio>
#include <filesystem>

#include "imp/core/error.h"
#include "imp/io/safetensors.h"
#include "imp/train/checkpoint.h"
#include "imp/train/trainer.h"

namespace imp {
namespace {
namespace fs = std::filesystem;
}  // namespace

std::map<std::string, int64_t> heads_in_weights(const std::string& weights_file) {
  const std::string prefix = "classifiers.";
  const std::string suffix = ".weight";
  std::map<std::string, int64_t> heads;
  for (const auto& [name, tensor] : load_safetensors(weights_file).tensors) {
    if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    IMP_REQUIRE(DataError, tensor.dim() == 2, "tensor '", name, "' in ", weights_file,
                " should be a [classes, width] matrix; the file is damaged or not from imp");
    heads[name.substr(prefix.size(), name.size() - prefix.size() - suffix.size())] = tensor.size(0);
  }
  return heads;
}

InferenceModel load_for_inference(const std::string& weights, const Config& config) {
  const std::string file = resolve_weights_file(weights);
  InferenceModel loaded;
  std::string tokenizer_path = config.tokenizer.model;
  if (tokenizer_path.empty()) {
    const fs::path beside = fs::path(file).parent_path() / "tokenizer.model";
    if (fs::exists(beside)) tokenizer_path = beside.string();
  }
  if (tokenizer_path.empty()) {
    // The same corpus as in training gives the same tokenizer (and the
    // cache usually has it already).
    std::printf("note: no tokenizer.model beside %s and no tokenizer.model in the config: using the "
                "tokenizer trained on the config's captions, as training does. If the weights come "
                "from another config, pass --set tokenizer.model=PATH with the run's own\n",
                file.c_str());
    std::vector<std::shared_ptr<const Dataset>> datasets;
    for (const DatasetConfig& dataset : config.datasets) {
      datasets.push_back(load_dataset(dataset, config.model, /*train=*/true, config.cache_dir));
    }
    tokenizer_path = prepare_tokenizer(config, text_corpus(datasets));
  }
  loaded.tokenizer = Tokenizer::load(tokenizer_path);
  loaded.model = ImpModel(config.model, loaded.tokenizer.vocab_size(), heads_in_weights(file));
  load_weights(file, loaded.model, WeightMatch::kExact);
  loaded.device = default_device();
  loaded.model->to(loaded.device);
  loaded.model->eval();
  return loaded;
}

}  // namespace imp
