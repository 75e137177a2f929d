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
