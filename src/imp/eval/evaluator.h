// Evaluation of a trained model on the test split of each dataset it was
// trained on: classifier head accuracy, zero-shot accuracy through text
// prompts, image-text retrieval and a linear probe on frozen features.
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
//   i2t_r<k>, t2i_r<k> image-text Recall@k on the test images' captions
//   linear_probe_top1  logistic regression on frozen pooled features
// The text metrics need a task that trained the image and text projections.
std::map<std::string, double> evaluate(ImpModel& model, const Config& config,
                                       const Tokenizer& tokenizer, c10::Device device);

// Prints `metrics` as an aligned table (dataset, metric, value) to stdout.
void print_results(const std::map<std::string, double>& metrics);

}  // namespace imp
