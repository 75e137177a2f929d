#include "imp/eval/evaluator.h"

#include <chrono>
#include <cstdio>
#include <numeric>
#include <set>

#include <torch/nn/functional/normalization.h>

#include "imp/core/autocast.h"
#include "imp/core/error.h"
#include "imp/core/random.h"
#include "imp/data/captions.h"
#include "imp/data/dataset.h"
#include "imp/dist/process_group.h"
#include "imp/eval/linear_probe.h"
#include "imp/eval/metrics.h"

namespace imp {
namespace {

namespace F = torch::nn::functional;

std::vector<int64_t> index_range(int64_t begin, int64_t end) {
  std::vector<int64_t> out(end - begin);
  std::iota(out.begin(), out.end(), begin);
  return out;
}

// Whether `count` items are shared among the processes of `group`, and this
// process's part [begin, end) of them.
bool shared_part(dist::ProcessGroup* group, size_t count, size_t& begin, size_t& end) {
  if (group == nullptr || group->world_size() < 2 || count < static_cast<size_t>(group->world_size())) {
    return false;
  }
  const size_t world = group->world_size(), rank = group->rank();
  begin = rank * count / world;
  end = (rank + 1) * count / world;
  return true;
}

}  // namespace


Features embed(ImpModel& model, const Dataset& data, const std::string& modality,
               const std::vector<int64_t>& indices, const std::set<int>& heads, bool project,
               const Config& config, c10::Device device, dist::ProcessGroup* group) {
  size_t begin = 0, end = 0;
  if (shared_part(group, indices.size(), begin, end)) {
    const std::vector<int64_t> part(indices.begin() + begin, indices.begin() + end);
    Features mine = embed(model, data, modality, part, heads, project, config, device);
    // Every process gathers the same tensors in the same order.
    Features all;
    all.pooled = group->all_gather(mine.pooled);
    if (project) all.embedding = group->all_gather(mine.embedding);
    for (const auto& [set, logits] : mine.logits) all.logits[set] = group->all_gather(logits);
    return all;
  }
  AutocastScope autocast(device.type(), config.train.dtype == "bf16");
  const int views = data.eval_views(modality);
  std::vector<at::Tensor> pooled, embedding;
  std::map<int, std::vector<at::Tensor>> logits;
  const int64_t batch = config.eval.batch_size;
  for (size_t start = 0; start < indices.size(); start += batch) {
    const size_t end = std::min(indices.size(), start + batch);
    std::vector<int64_t> chunk(indices.begin() + start, indices.begin() + end);
    at::Tensor pooled_sum, embedding_sum;
    std::map<int, at::Tensor> logits_sum;
    for (int view = 0; view < views; ++view) {
      at::Tensor input = data.eval_input(modality, chunk, view).to(device);
      Encoded encoded = model->encode(modality, input);
      at::Tensor p = encoded.pooled.to(at::kFloat);
      pooled_sum = view == 0 ? p : pooled_sum + p;
      if (project) {
        at::Tensor e = F::normalize(model->project(modality, encoded.pooled).to(at::kFloat));
        embedding_sum = view == 0 ? e : embedding_sum + e;
      }
      for (int set : heads) {
        at::Tensor l = model->classify(classifier_name(data, set), encoded.pooled).to(at::kFloat);
        logits_sum[set] = view == 0 ? l : logits_sum[set] + l;
      }
    }
    pooled.push_back((pooled_sum / views).cpu());
    if (project) embedding.push_back(F::normalize(embedding_sum).cpu());
    for (int set : heads) logits[set].push_back((logits_sum[set] / views).cpu());
  }
  Features out;
  out.pooled = torch::cat(pooled);
  if (project) out.embedding = torch::cat(embedding);
  for (auto& [set, parts] : logits) out.logits[set] = torch::cat(parts);
  return out;
}

// L2-normalised text embeddings [M, P] of `texts`, each cut to `max_len`
// tokens.
at::Tensor embed_texts(ImpModel& model, const Tokenizer& tokenizer,
                       const std::vector<std::string>& texts, const Config& config,
                       c10::Device device, int max_len, dist::ProcessGroup* group) {
  size_t begin = 0, end = 0;
  if (shared_part(group, texts.size(), begin, end)) {
    const std::vector<std::string> part(texts.begin() + begin, texts.begin() + end);
    return group->all_gather(embed_texts(model, tokenizer, part, config, device, max_len));
  }
  AutocastScope autocast(device.type(), config.train.dtype == "bf16");
  std::vector<at::Tensor> out;
  const size_t batch = config.eval.batch_size;
  for (size_t start = 0; start < texts.size(); start += batch) {
    std::vector<std::string> chunk(texts.begin() + start,
                                   texts.begin() + std::min(texts.size(), start + batch));
    TextBatch text = tokenizer.encode_batch(chunk, max_len);
    Encoded encoded = model->encode(kText, text.ids.to(device), text.mask.to(device));
    out.push_back(F::normalize(model->project(kText, encoded.pooled).to(at::kFloat)).cpu());
  }
  return torch::cat(out);
}

// Class embeddings [K, P]: each class's prompts embedded, averaged, renormalised.
at::Tensor class_embeddings(ImpModel& model, const Tokenizer& tokenizer, const LabelSet& set,
                            const Config& config, c10::Device device, dist::ProcessGroup* group) {
  const std::vector<std::string> prompts =
      !set.prompts.empty() ? set.prompts
                           : (config.eval.prompts.empty() ? default_prompts() : config.eval.prompts);
  std::vector<std::string> texts;
  for (const std::string& name : set.class_names) {
    for (const std::string& prompt : prompts) texts.push_back(fill_prompt(prompt, name));
  }
  at::Tensor embedded = embed_texts(model, tokenizer, texts, config, device,
                                    label_text_length(config.model.text), group);  // [K * prompts, P]
  at::Tensor per_class = embedded.reshape(
      {static_cast<int64_t>(set.class_names.size()), static_cast<int64_t>(prompts.size()), -1});
  return F::normalize(per_class.mean(1));
}

namespace {

// The caption of each test example, the distinct texts, and the groups that
// decide which matches count in retrieval: examples whose captions mean the
// same share a group (the dataset's caption groups, else identical text).
struct TestCaptions {
  std::vector<std::string> distinct;
  at::Tensor text_of_example;  // [N] int64 index into `distinct`
  at::Tensor example_groups;   // [N] int64
  at::Tensor text_groups;      // [distinct] int64
};

TestCaptions test_captions(const Dataset& data, const std::vector<int64_t>& indices) {
  TestCaptions out;
  std::map<std::string, int64_t> seen;
  const size_t n = indices.size();
  std::vector<int64_t> text_of_example(n), example_groups(n), text_groups;
  for (size_t j = 0; j < n; ++j) {
    const int64_t i = indices[j];
    const std::string caption = data.caption(i, Dataset::eval_draw(i));
    auto [it, inserted] = seen.emplace(caption, static_cast<int64_t>(out.distinct.size()));
    const int64_t group = data.caption_group(i) >= 0 ? data.caption_group(i) : it->second;
    if (inserted) {
      out.distinct.push_back(caption);
      text_groups.push_back(group);
    }
    text_of_example[j] = it->second;
    example_groups[j] = group;
  }
  out.text_of_example = torch::tensor(text_of_example, at::kLong);
  out.example_groups = torch::tensor(example_groups, at::kLong);
  out.text_groups = torch::tensor(text_groups, at::kLong);
  return out;
}

// What the tasks trained on one dataset, and so what can be evaluated.
struct DatasetUse {
  std::map<std::string, std::set<int>> heads;                // modality -> label sets
  std::set<std::string> with_text;                           // modalities contrasted with text
  std::set<std::pair<std::string, std::string>> pairs;       // contrasted non-text modalities

  std::set<std::string> modalities() const {
    std::set<std::string> out = with_text;
    for (const auto& [modality, sets] : heads) out.insert(modality);
    for (const auto& [a, b] : pairs) out.insert({a, b});
    return out;
  }
  bool projected(const std::string& modality) const {
    if (with_text.count(modality)) return true;
    for (const auto& [a, b] : pairs) {
      if (a == modality || b == modality) return true;
    }
    return false;
  }
};

std::map<std::string, DatasetUse> dataset_uses(
    const Config& config, const std::map<std::string, std::shared_ptr<const Dataset>>& tests) {
  std::map<std::string, DatasetUse> uses;
  for (const TaskConfig& task : config.tasks) {
    DatasetUse& use = uses[task.dataset];
    if (task.objective != "nce") {
      use.heads[task.modalities[0]].insert(tests.at(task.dataset)->label_set_index(task.label));
    } else if (task.modalities[1] == kText) {
      use.with_text.insert(task.modalities[0]);
    } else {
      use.pairs.insert({task.modalities[0], task.modalities[1]});
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

// One letter per modality for retrieval metric names, as in "v2t_r1".
std::string letter(const std::string& modality) { return modality.substr(0, 1); }

void evaluate_dataset(ImpModel& model, const Config& config, const DatasetConfig& dataset,
                      const Dataset& test, const DatasetUse& use, const Tokenizer& tokenizer,
                      c10::Device device, dist::ProcessGroup* group,
                      std::map<std::string, double>& metrics) {
  const std::vector<int64_t> all =
      strided_indices(test.size(), dataset.eval_examples > 0 ? dataset.eval_examples : test.size());
  const std::vector<LabelSet>& sets = test.label_sets();
  const bool several_sets = sets.size() > 1;
  const std::string own_modality = test.modalities().front();

  std::map<std::string, Features> features;
  for (const std::string& modality : use.modalities()) {
    auto heads = use.heads.find(modality);
    features[modality] =
        embed(model, test, modality, all, heads == use.heads.end() ? std::set<int>() : heads->second,
              use.projected(modality), config, device, group);
  }

  // A set no test example has a known label of cannot be measured: its
  // accuracy would read 0 (user data whose test labels name unknown classes).
  std::vector<bool> measurable(sets.size());
  for (size_t set = 0; set < sets.size(); ++set) {
    measurable[set] = !sets[set].class_names.empty() &&
                      test.labels(all, static_cast<int>(set)).ge(0).any().item<bool>();
    if (!measurable[set] && !sets[set].class_names.empty()) {
      std::printf("warning: dataset %s: no test example has a known class of label set '%s'; its "
                  "head and zero-shot accuracy are left out\n",
                  dataset.name.c_str(), sets[set].name.c_str());
    }
  }

  for (const auto& [modality, head_sets] : use.heads) {
    const std::string prefix = dataset.name + "/" + (modality == own_modality ? "" : modality + "_");
    for (int set : head_sets) {
      if (!measurable[set]) continue;
      const std::string name = several_sets ? sets[set].name + "_top1" : "head_top1";
      const at::Tensor& logits = features[modality].logits.at(set);
      if (sets[set].multi_label) {
        const at::Tensor targets = test.targets(all, set);
        metrics[prefix + name] = top1_hit_rate(logits, targets);
        metrics[prefix + (several_sets ? sets[set].name + "_map" : "head_map")] =
            mean_average_precision(logits, targets);
      } else {
        metrics[prefix + name] = top1_accuracy(logits, test.labels(all, set));
      }
    }
  }

  if (!use.with_text.empty()) {
    TestCaptions captions = test_captions(test, all);
    at::Tensor texts =
        embed_texts(model, tokenizer, captions.distinct, config, device, config.model.text.max_len, group);
    at::Tensor example_texts = texts.index_select(0, captions.text_of_example);  // [N, P]
    for (const std::string& modality : use.with_text) {
      const at::Tensor& embedding = features[modality].embedding;
      const std::string prefix = dataset.name + "/" + (modality == own_modality ? "" : modality + "_");
      for (size_t set = 0; set < sets.size(); ++set) {
        if (!measurable[set]) continue;
        at::Tensor classes = class_embeddings(model, tokenizer, sets[set], config, device, group);
        const std::string name = (several_sets ? sets[set].name + "_" : "") + "zeroshot_top1";
        const at::Tensor scores = embedding.matmul(classes.t());
        if (sets[set].multi_label) {
          metrics[prefix + name] = top1_hit_rate(scores, test.targets(all, static_cast<int>(set)));
        } else {
          metrics[prefix + name] = top1_accuracy(scores, test.labels(all, static_cast<int>(set)));
        }
      }
      // Examples query the distinct captions; each example's caption queries the examples.
      const std::string x = letter(modality);
      for (int k : config.eval.recall_at) {
        const std::string at_k = std::to_string(k);
        metrics[dataset.name + "/" + x + "2t_r" + at_k] = recall_at_k(
            embedding.matmul(texts.t()), captions.example_groups, captions.text_groups, k);
        metrics[dataset.name + "/t2" + x + "_r" + at_k] = recall_at_k(
            example_texts.matmul(embedding.t()), captions.example_groups, captions.example_groups, k);
      }
    }
  }

  if (!use.pairs.empty()) {
    // Examples that mean the same match each other; without caption groups
    // only the example itself matches.
    std::vector<int64_t> groups(all.size());
    for (size_t j = 0; j < all.size(); ++j) {
      groups[j] = test.caption_group(all[j]) >= 0 ? test.caption_group(all[j]) : all[j];
    }
    const at::Tensor group_tensor = torch::tensor(groups, at::kLong);
    for (const auto& [a, b] : use.pairs) {
      const at::Tensor scores = features[a].embedding.matmul(features[b].embedding.t());
      for (int k : config.eval.recall_at) {
        const std::string at_k = std::to_string(k);
        metrics[dataset.name + "/" + letter(a) + "2" + letter(b) + "_r" + at_k] =
            recall_at_k(scores, group_tensor, group_tensor, k);
        metrics[dataset.name + "/" + letter(b) + "2" + letter(a) + "_r" + at_k] =
            recall_at_k(scores.t(), group_tensor, group_tensor, k);
      }
    }
  }

  // A linear probe on frozen features of the training images (image
  // datasets with one label per example only: video and audio would need a
  // second pass over their training split).
  if (own_modality == kImage && features.count(kImage) && !sets[0].class_names.empty() &&
      !sets[0].multi_label) {
    auto train = load_dataset(dataset, config.model, /*train=*/true, config.cache_dir);
    std::vector<int64_t> probe;
    for (int64_t index : strided_indices(train->size(), config.eval.linear_probe_examples)) {
      if (train->label(index) < 0) continue;
      if (train->failures() != nullptr) {
        // The train split of decoded files is not checked at load: a sample
        // that fails here stays out of the probe.
        try {
          train->eval_input(kImage, {index}, 0);
        } catch (const DataError&) {
          continue;
        }
      }
      probe.push_back(index);
    }
    if (probe.empty()) return;
    Features train_features = embed(model, *train, kImage, probe, {}, false, config, device, group);
    LinearProbeOptions probe_options;
    probe_options.steps = config.eval.linear_probe_steps;
    metrics[dataset.name + "/linear_probe_top1"] = linear_probe_accuracy(
        train_features.pooled, train->labels(probe), features[kImage].pooled, test.labels(all),
        static_cast<int64_t>(sets[0].class_names.size()), probe_options);
  }
}

}  // namespace

std::map<std::string, double> evaluate(ImpModel& model, const Config& config,
                                       const Tokenizer& tokenizer, c10::Device device,
                                       dist::ProcessGroup* group) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  model->set_collect_routing(false);
  // Only the model's passes run under autocast (see embed and embed_texts):
  // the linear probe's L-BFGS needs fp32 to make progress.

  std::map<std::string, std::shared_ptr<const Dataset>> tests;
  for (const DatasetConfig& dataset : config.datasets) {
    tests[dataset.name] = load_dataset(dataset, config.model, /*train=*/false, config.cache_dir);
  }
  std::map<std::string, double> metrics;
  const auto uses = dataset_uses(config, tests);
  for (const DatasetConfig& dataset : config.datasets) {
    auto use = uses.find(dataset.name);
    if (use == uses.end()) continue;
    const auto start = std::chrono::steady_clock::now();
    evaluate_dataset(model, config, dataset, *tests.at(dataset.name), use->second, tokenizer,
                     device, group, metrics);
    std::printf("evaluated %s in %.1f s\n", dataset.name.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    std::fflush(stdout);
  }

  model->set_collect_routing(true);
  model->train(was_training);
  return metrics;
}

void print_results(const std::map<std::string, double>& metrics) {
  std::printf("\n%-16s %-24s %8s\n", "dataset", "metric", "value");
  for (const auto& [name, value] : metrics) {
    const size_t slash = name.find('/');
    const std::string dataset = slash == std::string::npos ? "" : name.substr(0, slash);
    const std::string metric = slash == std::string::npos ? name : name.substr(slash + 1);
    std::printf("%-16s %-24s %8.4f\n", dataset.c_str(), metric.c_str(), value);
  }
  std::fflush(stdout);
}

}  // namespace imp
