// One training or evaluation batch, as a task's data pipeline produces it.
#pragma once

#include <map>
#include <string>

#include <ATen/ATen.h>

namespace imp {

struct Batch {
  // Model inputs by modality name: "image"/"video" [B, C, T, H, W] float,
  // "audio" [B, M, F] float, "text" [B, L] int64 token ids.
  std::map<std::string, at::Tensor> inputs;
  at::Tensor text_mask;  // [B, L] bool, true = real token; with "text" only
  at::Tensor labels;     // [B] int64 class indices, when the task has labels
  at::Tensor targets;    // [B, K] float multi-hot, for a multi-label set only
  at::Tensor positive_groups;  // [B] int64: NCE positives share a value; may be undefined

  int64_t size() const { return labels.defined() ? labels.size(0) : inputs.begin()->second.size(0); }
};

}  // namespace imp
