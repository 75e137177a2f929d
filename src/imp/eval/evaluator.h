// Evaluation of a trained model on the test split of each dataset it was
// trained on: classifier head accuracy, zero-shot accuracy through text
// prompts, cross-modal retrieval and, for images, a linear probe on frozen
// features. Videos are evaluated over several clips, outputs averaged.
#pragma once

#include <map>
#include <string>

#include <c10/core/Device.h>

#include "imp/config/config.h"
#include "imp/data/tokenizer.h"
#include "imp/model/imp_model.h"

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
std::map<std::string, double> evaluate(ImpModel& model, const Config& config,
                                       const Tokenizer& tokenizer, c10::Device device);

// Prints `metrics` as an aligned table (dataset, metric, value) to stdout.
void print_results(const std::map<std::string, double>& metrics);

}  // namespace imp
