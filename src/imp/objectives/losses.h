// Losses of the training objectives. Every loss is computed in float32 from
// inputs of any floating dtype (bf16 logits from autocast included) and
// returns a float32 scalar.
//
// Dimension letters: B batch, K classes, L tokens per row, P embedding width.
#pragma once

#include <torch/types.h>

namespace imp {

// Single-label classification: mean over B of -log softmax(logits)[label].
// logits: [B, K]; labels: [B] int64 in [0, K).
torch::Tensor softmax_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels);

// Multi-label classification: every class is an independent binary decision.
// Returns the mean over B of the sum over K of the binary cross-entropy
// -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x)). Summing over K keeps each
// label's gradient, sigmoid(x) - t, independent of the number of classes.
// Evaluated as max(x, 0) - x t + log1p(exp(-|x|)), which neither overflows
// nor loses the tail for large |x|.
// logits: [B, K]; targets: [B, K] in {0, 1} (soft targets in [0, 1] work too).
torch::Tensor sigmoid_binary_cross_entropy(const torch::Tensor& logits,
                                           const torch::Tensor& targets);

// Labels rows by content: returns [B] int64 holding, for each row, the index
// of the first row identical to it, so two entries are equal exactly when
// their rows are. rows: [B, L] (e.g. token ids) or [B] (e.g. class labels),
// any dtype that supports ==.
torch::Tensor duplicate_groups(const torch::Tensor& rows);

// [B, B] bool: pair (i, j) is positive when i == j, groups_a[i] == groups_a[j]
// or groups_b[i] == groups_b[j]. Either group tensor ([B], any integer dtype)
// may be undefined. Symmetric by construction.
torch::Tensor nce_positives(const torch::Tensor& groups_a, const torch::Tensor& groups_b,
                            int64_t batch, const torch::TensorOptions& options);

// Symmetric InfoNCE (the CLIP loss) between two views of the same B examples.
// Both embeddings are L2-normalised here, in float32, and
//   logits = logit_scale * za_n zb_n^T                       [B, B]
//   L_ab   = mean_i -(1/|P_i|) sum_{j in P_i} log softmax_j(logits[i, :])
//   L_ba   = the same over the columns of logits
//   loss   = (L_ab + L_ba) / 2
// with P_i the positives of row i from nce_positives(groups_a, groups_b).
// Duplicates in a batch (identical captions, or two images of one class
// paired with its class name) are thus positives rather than negatives.
// Without groups this is the standard CLIP loss, positives on the diagonal.
// za, zb: [B, P]; logit_scale: one-element tensor, 1 / temperature, which
// receives a gradient; groups_a, groups_b: [B] or undefined, e.g. from
// duplicate_groups.
torch::Tensor nce_loss(const torch::Tensor& za, const torch::Tensor& zb,
                       const torch::Tensor& logit_scale, const torch::Tensor& groups_a = {},
                       const torch::Tensor& groups_b = {});

// Top-1 retrieval accuracy a -> b for logging: the fraction of rows i whose
// most similar zb row is any positive of i. Float32 scalar, no gradient.
torch::Tensor nce_accuracy(const torch::Tensor& za, const torch::Tensor& zb,
                           const torch::Tensor& groups_a = {}, const torch::Tensor& groups_b = {});

}  // namespace imp
