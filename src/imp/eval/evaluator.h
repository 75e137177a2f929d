// Evaluation of a trained model on the test split of each dataset it was
// trained on: classifier head accuracy, zero-shot accuracy through text
// prompts, cross-modal retrieval and, for images, a linear probe on frozen
// features. Videos are evaluated over several clips, outputs averaged.
#pragma once

#include <map>
#include <set>
#include <string>

#include <c10/core/Device.h>

#include "imp/config/config.h"
#include "imp/data/dataset.h"
#include "imp/data/tokenizer.h"
#include "imp/model/imp_model.h"

namespace imp::dist {
class ProcessGroup;
}  // namespace imp::dist

namespace imp {

// Metrics named "<dataset>/<metric>":
//   head_top1          classifier head, when a classification task trained it
//   zeroshot_top1      nearest class prompt embedding (prompts averaged per class)
//   i2t_r<k>, t2i_r<k> image-text Recall@k on the test examples' captions;
//                      v (video) and a (audio) likewise, e.g. v2t_r1, v2a_r1
//   linear_probe_top1  logistic regression on frozen pooled image features
// A dataset with several label sets (e.g. item and motion) names head and
// zero-shot metrics after the set: item_top1, item_zeroshot_top1. Metrics of
// a modality other than the dataset's own (e.g. the audio of a video
// dataset) start with the modality: audio_zeroshot_top1. Zero-shot and
// retrieval need a task that contrasted the modality with text; a retrieval
// match is any caption of the same meaning (same caption group).
//
// With a process group every process must call evaluate: each encodes its
// part of every test set (see embed), the outputs are gathered, and every
// process returns the same metrics.
std::map<std::string, double> evaluate(ImpModel& model, const Config& config,
                                       const Tokenizer& tokenizer, c10::Device device,
                                       dist::ProcessGroup* group = nullptr);

// Model outputs for every example of a split in one modality, averaged over
// the modality's evaluation views (e.g. the clips of a video).
struct Features {
  at::Tensor pooled;                 // [N, D]
  at::Tensor embedding;              // [N, P], L2-normalised; undefined without projection
  std::map<int, at::Tensor> logits;  // label set -> [N, K], for the heads in `heads`
};

// Encodes data.eval_input(modality, ...) for `indices` in batches of
// eval.batch_size under the run's autocast. `heads` are label sets of `data`
// whose classifier outputs to keep; `project` adds the shared embedding.
// With a process group of W processes (every one calls embed with the same
// indices), process r encodes the r-th of W contiguous parts of `indices`
// and the parts are gathered, unless there are fewer indices than processes.
Features embed(ImpModel& model, const Dataset& data, const std::string& modality,
               const std::vector<int64_t>& indices, const std::set<int>& heads, bool project,
               const Config& config, c10::Device device, dist::ProcessGroup* group = nullptr);

// L2-normalised shared embeddings [N, P] of `texts`, cut to max_len tokens;
// shared among the processes of `group` like embed.
at::Tensor embed_texts(ImpModel& model, const Tokenizer& tokenizer,
                       const std::vector<std::string>& texts, const Config& config,
                       c10::Device device, int max_len, dist::ProcessGroup* group = nullptr);

// Class embeddings [K, P]: each class's prompts (the set's own, else
// eval.prompts, else the built-in templates) embedded, averaged and
// renormalised.
at::Tensor class_embeddings(ImpModel& model, const Tokenizer& tokenizer, const LabelSet& set,
                            const Config& config, c10::Device device,
                            dist::ProcessGroup* group = nullptr);

// Prints `metrics` as an aligned table (dataset, metric, value) to stdout.
void print_results(const std::map<std::string, double>& metrics);

}  // namespace imp
