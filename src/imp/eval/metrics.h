// Retrieval and classification metrics on precomputed scores.
//
// Dimension letters: Q queries, G gallery items, K classes.
#pragma once

#include <ATen/ATen.h>

namespace imp {

// Share of rows of `logits` [Q, K] whose argmax equals `labels` [Q].
double top1_accuracy(const at::Tensor& logits, const at::Tensor& labels);

// Share of rows of `logits` [Q, K] whose argmax is one of the row's labels in
// the multi-hot `targets` [Q, K]; equals top1_accuracy for one label per row.
double top1_hit_rate(const at::Tensor& logits, const at::Tensor& targets);

// Mean over classes of the average precision of ranking the Q rows by
// `scores` [Q, K] against multi-hot `targets` [Q, K]. Classes without a
// positive row are left out; 0 when no class has one.
double mean_average_precision(const at::Tensor& scores, const at::Tensor& targets);

// Recall@k for retrieval with duplicates: the share of queries for which at
// least one of the k highest-scoring gallery items is a match, where query q
// and gallery item g match when query_groups[q] == gallery_groups[g] (e.g.
// the same caption text). scores: [Q, G]; processed in row chunks so that
// large galleries stay within memory.
double recall_at_k(const at::Tensor& scores, const at::Tensor& query_groups,
                   const at::Tensor& gallery_groups, int64_t k);

}  // namespace imp
