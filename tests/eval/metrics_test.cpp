#include <gtest/gtest.h>
#include <torch/torch.h>

#include "imp/eval/metrics.h"

namespace imp {
namespace {

TEST(Top1Accuracy, CountsArgmaxMatches) {
  torch::Tensor logits = torch::tensor({{0.1f, 0.9f}, {0.8f, 0.2f}, {0.3f, 0.7f}});
  torch::Tensor labels = torch::tensor({1, 1, 1}, torch::kLong);
  EXPECT_DOUBLE_EQ(top1_accuracy(logits, labels), 2.0 / 3.0);
}

TEST(Top1HitRate, TopClassAmongLabels) {
  at::Tensor logits = at::tensor({0.9f, 0.1f, 0.0f, 0.2f, 0.7f, 0.1f, 0.3f, 0.3f, 0.9f}).reshape({3, 3});
  at::Tensor targets = at::tensor({1.0f, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f}).reshape({3, 3});
  // Row 0 picks class 0 (a label), row 1 class 1 (not), row 2 class 2 (a label).
  EXPECT_DOUBLE_EQ(top1_hit_rate(logits, targets), 2.0 / 3.0);
}

TEST(MeanAveragePrecision, HandComputedRanking) {
  // Class 0: positives at ranks 1 and 3 of 4, so AP = (1/1 + 2/3) / 2.
  // Class 1: its only positive ranks 2nd, so AP = 1/2. Class 2 has no positive.
  at::Tensor scores = at::tensor({0.9f, 0.1f, 0.5f, 0.8f, 0.9f, 0.4f, 0.7f, 0.2f, 0.3f, 0.1f, 0.3f, 0.2f})
                          .reshape({4, 3});
  at::Tensor targets = at::tensor({1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f})
                           .reshape({4, 3});
  const double class0 = (1.0 + 2.0 / 3.0) / 2.0;
  const double class1 = 0.5;
  EXPECT_NEAR(mean_average_precision(scores, targets), (class0 + class1) / 2.0, 1e-12);
  EXPECT_DOUBLE_EQ(mean_average_precision(scores, at::zeros({4, 3})), 0.0);
}

TEST(RecallAtK, DuplicateGroupsCountAsHits) {
  // Query 0 wants group 7: its best item (col 1) has group 7 -> hit at 1.
  // Query 1 wants group 8: ranking cols 0 (7), 2 (9), 1 (7) -> miss at 1 and 2.
  // Query 2 wants group 9: best col 0 (7), second col 2 (9) -> miss at 1, hit at 2.
  torch::Tensor scores = torch::tensor({{0.1f, 0.9f, 0.5f}, {0.9f, 0.1f, 0.5f}, {0.9f, 0.1f, 0.5f}});
  torch::Tensor query = torch::tensor({7, 8, 9}, torch::kLong);
  torch::Tensor gallery = torch::tensor({7, 7, 9}, torch::kLong);
  EXPECT_DOUBLE_EQ(recall_at_k(scores, query, gallery, 1), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(recall_at_k(scores, query, gallery, 2), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(recall_at_k(scores, query, gallery, 10), 2.0 / 3.0);  // k capped at G
}

TEST(RecallAtK, ChunkedRowsMatchDirectCount) {
  torch::manual_seed(0);
  const int64_t Q = 2500, G = 40;
  torch::Tensor scores = torch::randn({Q, G});
  torch::Tensor query = torch::randint(0, 10, {Q}, torch::kLong);
  torch::Tensor gallery = torch::randint(0, 10, {G}, torch::kLong);
  torch::Tensor top = std::get<1>(scores.topk(3, 1));
  torch::Tensor hits = gallery.index_select(0, top.reshape(-1)).reshape({Q, 3}).eq(query.unsqueeze(1)).any(1);
  EXPECT_DOUBLE_EQ(recall_at_k(scores, query, gallery, 3), hits.to(torch::kDouble).mean().item<double>());
}

}  // namespace
}  // namespace imp
