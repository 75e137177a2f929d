#include "imp/eval/metrics.h"

#include <algorithm>

#include <c10/util/Exception.h>

namespace imp {

double top1_accuracy(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
              "top1_accuracy needs logits [Q, K] and labels [Q], got ", logits.sizes(), " and ",
              labels.sizes());
  return logits.argmax(1).eq(labels).to(at::kDouble).mean().item<double>();
}

double top1_hit_rate(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && logits.sizes() == targets.sizes(),
              "top1_hit_rate needs logits and targets of one shape [Q, K], got ", logits.sizes(),
              " and ", targets.sizes());
  const at::Tensor top = logits.argmax(1, /*keepdim=*/true);
  return targets.to(at::kDouble).gather(1, top).gt(0.5).to(at::kDouble).mean().item<double>();
}

double mean_average_precision(const at::Tensor& scores, const at::Tensor& targets) {
  TORCH_CHECK(scores.dim() == 2 && scores.sizes() == targets.sizes(),
              "mean_average_precision needs scores and targets of one shape [Q, K], got ",
              scores.sizes(), " and ", targets.sizes());
  const at::Tensor order = scores.to(at::kDouble).argsort(0, /*descending=*/true);  // [Q, K]
  const at::Tensor hits = targets.to(at::kDouble).gather(0, order);                // ranked
  const at::Tensor positives = hits.sum(0);                                        // [K]
  const at::Tensor ranks = at::arange(1, scores.size(0) + 1, at::kDouble).unsqueeze(1);
  // Average precision: the precision at each positive's rank, averaged.
  const at::Tensor precision = hits.cumsum(0) / ranks;
  const at::Tensor per_class = (precision * hits).sum(0) / positives.clamp_min(1.0);
  const at::Tensor present = positives.gt(0);
  if (!present.any().item<bool>()) return 0.0;
  return per_class.masked_select(present).mean().item<double>();
}

double recall_at_k(const at::Tensor& scores, const at::Tensor& query_groups,
                   const at::Tensor& gallery_groups, int64_t k) {
  TORCH_CHECK(scores.dim() == 2 && query_groups.size(0) == scores.size(0) &&
                  gallery_groups.size(0) == scores.size(1),
              "recall_at_k needs scores [Q, G], query groups [Q] and gallery groups [G], got ",
              scores.sizes(), ", ", query_groups.sizes(), " and ", gallery_groups.sizes());
  const int64_t Q = scores.size(0), G = scores.size(1);
  k = std::min(k, G);
  constexpr int64_t kChunk = 1024;
  int64_t hits = 0;
  for (int64_t start = 0; start < Q; start += kChunk) {
    const int64_t rows = std::min(kChunk, Q - start);
    at::Tensor top = std::get<1>(scores.narrow(0, start, rows).topk(k, 1));      // [rows, k]
    at::Tensor retrieved = gallery_groups.index_select(0, top.reshape(-1)).reshape({rows, k});
    at::Tensor expected = query_groups.narrow(0, start, rows).unsqueeze(1);        // [rows, 1]
    hits += retrieved.eq(expected).any(1).sum().item<int64_t>();
  }
  return static_cast<double>(hits) / static_cast<double>(Q);
}

}  // namespace imp
