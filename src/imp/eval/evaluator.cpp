#include "imp/eval/evaluator.h"

#include <cstdio>
#include <numeric>
#include <set>

#include <torch/nn/functional/normalization.h>

#include "imp/core/autocast.h"
#include "imp/core/random.h"
#include "imp/data/captions.h"
#include "imp/data/image_text_dataset.h"
#include "imp/eval/linear_probe.h"
#include "imp/eval/metrics.h"

namespace imp {
namespace {

namespace F = torch::nn::functional;

struct ImageFeatures {
  at::Tensor pooled;     // [N, D]
  at::Tensor embedding;  // [N, P], L2-normalised
  at::Tensor logits;     // [N, K], undefined without a classifier head
};

std::vector<int64_t> index_range(int64_t begin, int64_t end) {
  std::vector<int64_t> out(end - begin);
  std::iota(out.begin(), out.end(), begin);
  return out;
}

ImageFeatures embed_images(ImpModel& model, const ImageTextDataset& data,
                           const std::vector<int64_t>& indices, bool with_head,
                           const Config& config, c10::Device device) {
  AutocastScope autocast(device.type(), config.train.dtype == "bf16");
  std::vector<at::Tensor> pooled, embedding, logits;
  const int64_t batch = config.eval.batch_size;
  for (size_t start = 0; start < indices.size(); start += batch) {
    const size_t end = std::min(indices.size(), start + batch);
    std::vector<int64_t> chunk(indices.begin() + start, indices.begin() + end);
    at::Tensor images = data.images(chunk, {}).to(device);
    Encoded encoded = model->encode(kImage, images);
    pooled.push_back(encoded.pooled.to(at::kFloat).cpu());
    embedding.push_back(F::normalize(model->project(kImage, encoded.pooled).to(at::kFloat)).cpu());
    if (with_head) logits.push_back(model->classify(data.name(), encoded.pooled).to(at::kFloat).cpu());
  }
  ImageFeatures out{torch::cat(pooled), torch::cat(embedding), {}};
  if (with_head) out.logits = torch::cat(logits);
  return out;
}

// L2-normalised text embeddings [M, P] of `texts`.
at::Tensor embed_texts(ImpModel& model, const Tokenizer& tokenizer,
                       const std::vector<std::string>& texts, const Config& config,
                       c10::Device device) {
  AutocastScope autocast(device.type(), config.train.dtype == "bf16");
  std::vector<at::Tensor> out;
  const size_t batch = config.eval.batch_size;
  for (size_t start = 0; start < texts.size(); start += batch) {
    std::vector<std::string> chunk(texts.begin() + start,
                                   texts.begin() + std::min(texts.size(), start + batch));
    TextBatch text = tokenizer.encode_batch(chunk, config.model.text.max_len);
    Encoded encoded = model->encode(kText, text.ids.to(device), text.mask.to(device));
    out.push_back(F::normalize(model->project(kText, encoded.pooled).to(at::kFloat)).cpu());
  }
  return torch::cat(out);
}

// Class embeddings [K, P]: each class's prompts embedded, averaged, renormalised.
at::Tensor class_embeddings(ImpModel& model, const Tokenizer& tokenizer,
                            const std::vector<std::string>& class_names, const Config& config,
                            c10::Device device) {
  const std::vector<std::string> prompts =
      config.eval.prompts.empty() ? default_prompts() : config.eval.prompts;
  std::vector<std::string> texts;
  for (const std::string& name : class_names) {
    for (const std::string& prompt : prompts) texts.push_back(fill_prompt(prompt, name));
  }
  at::Tensor embedded = embed_texts(model, tokenizer, texts, config, device);  // [K * prompts, P]
  at::Tensor per_class = embedded.reshape(
      {static_cast<int64_t>(class_names.size()), static_cast<int64_t>(prompts.size()), -1});
  return F::normalize(per_class.mean(1));
}

// Caption of each test image, and the index of its distinct text.
struct TestCaptions {
  std::vector<std::string> distinct;
  at::Tensor text_of_image;  // [N] int64 index into `distinct`
};

TestCaptions test_captions(const ImageTextDataset& data, uint64_t seed) {
  TestCaptions out;
  std::map<std::string, int64_t> seen;
  out.text_of_image = at::empty({data.size()}, at::kLong);
  for (int64_t i = 0; i < data.size(); ++i) {
    const std::string caption = data.caption(i, mix64(seed, static_cast<uint64_t>(i)));
    auto [it, inserted] = seen.emplace(caption, static_cast<int64_t>(out.distinct.size()));
    if (inserted) out.distinct.push_back(caption);
    out.text_of_image[i] = it->second;
  }
  return out;
}

struct DatasetUse {
  bool head = false;      // a classification task trained this dataset's head
  bool contrast = false;  // an image-text task trained the projections
};

std::map<std::string, DatasetUse> dataset_uses(const Config& config) {
  std::map<std::string, DatasetUse> uses;
  for (const TaskConfig& task : config.tasks) {
    DatasetUse& use = uses[task.dataset];
    if (task.objective == "nce") {
      use.contrast = true;
    } else {
      use.head = true;
    }
  }
  return uses;
}

// Evenly spaced example indices, `count` of `size` (all when count >= size).
std::vector<int64_t> strided_indices(int64_t size, int64_t count) {
  if (count >= size) return index_range(0, size);
  std::vector<int64_t> out(count);
  for (int64_t i = 0; i < count; ++i) out[i] = i * size / count;
  return out;
}

void evaluate_dataset(ImpModel& model, const Config& config, const DatasetConfig& dataset,
                      const DatasetUse& use, const Tokenizer& tokenizer, c10::Device device,
                      std::map<std::string, double>& metrics) {
  const std::string prefix = dataset.name + "/";
  auto test = ImageTextDataset::load(dataset, /*train=*/false);
  const at::Tensor labels = test->labels(index_range(0, test->size()));
  ImageFeatures features =
      embed_images(model, *test, index_range(0, test->size()), use.head, config, device);

  if (use.head) metrics[prefix + "head_top1"] = top1_accuracy(features.logits, labels);

  if (use.contrast) {
    at::Tensor classes = class_embeddings(model, tokenizer, test->class_names(), config, device);
    metrics[prefix + "zeroshot_top1"] = top1_accuracy(features.embedding.matmul(classes.t()), labels);

    TestCaptions captions = test_captions(*test, config.train.seed);
    at::Tensor texts = embed_texts(model, tokenizer, captions.distinct, config, device);
    at::Tensor text_ids = torch::arange(static_cast<int64_t>(captions.distinct.size()));
    for (int k : config.eval.recall_at) {
      const std::string at_k = std::to_string(k);
      // Images query the distinct captions; each image's caption queries the images.
      metrics[prefix + "i2t_r" + at_k] = recall_at_k(features.embedding.matmul(texts.t()),
                                                     captions.text_of_image, text_ids, k);
      at::Tensor queries = texts.index_select(0, captions.text_of_image);  // [N, P]
      metrics[prefix + "t2i_r" + at_k] = recall_at_k(queries.matmul(features.embedding.t()),
                                                     captions.text_of_image,
                                                     captions.text_of_image, k);
    }
  }

  auto train = ImageTextDataset::load(dataset, /*train=*/true);
  std::vector<int64_t> probe = strided_indices(train->size(), config.eval.linear_probe_examples);
  ImageFeatures train_features = embed_images(model, *train, probe, false, config, device);
  LinearProbeOptions probe_options;
  probe_options.steps = config.eval.linear_probe_steps;
  metrics[prefix + "linear_probe_top1"] =
      linear_probe_accuracy(train_features.pooled, train->labels(probe), features.pooled, labels,
                            train->num_classes(), probe_options);
}

}  // namespace

std::map<std::string, double> evaluate(ImpModel& model, const Config& config,
                                       const Tokenizer& tokenizer, c10::Device device) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  model->set_collect_routing(false);
  // Only the model's passes run under autocast (see embed_images and
  // embed_texts): the linear probe's L-BFGS needs fp32 to make progress.

  std::map<std::string, double> metrics;
  const auto uses = dataset_uses(config);
  for (const DatasetConfig& dataset : config.datasets) {
    auto use = uses.find(dataset.name);
    if (use == uses.end()) continue;
    evaluate_dataset(model, config, dataset, use->second, tokenizer, device, metrics);
  }

  model->set_collect_routing(true);
  model->train(was_training);
  return metrics;
}

void print_results(const std::map<std::string, double>& metrics) {
  std::printf("\n%-16s %-20s %8s\n", "dataset", "metric", "value");
  for (const auto& [name, value] : metrics) {
    const size_t slash = name.find('/');
    const std::string dataset = slash == std::string::npos ? "" : name.substr(0, slash);
    const std::string metric = slash == std::string::npos ? name : name.substr(slash + 1);
    std::printf("%-16s %-20s %8.4f\n", dataset.c_str(), metric.c_str(), value);
  }
  std::fflush(stdout);
}

}  // namespace imp
