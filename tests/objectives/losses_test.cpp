#include <gtest/gtest.h>

#include <cmath>

#include <torch/torch.h>

#include "imp/core/autocast.h"
#include "imp/objectives/losses.h"

namespace imp {
namespace {

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor flat = t.to(torch::kLong).contiguous().view(-1);
  return std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
}

// ---------------------------------------------------------------------------
// Classification losses

TEST(LossSoftmaxCrossEntropy, MatchesHandValue) {
  // Row 0: logits (0, 0), label 0: -log(1/2) = ln 2.
  // Row 1: logits (ln 3, 0), label 1: p = 1 / (3 + 1), -log p = ln 4.
  // Mean: (ln 2 + 2 ln 2) / 2 = 1.5 ln 2 = 1.0397208.
  torch::Tensor logits = torch::tensor({{0.0, 0.0}, {std::log(3.0), 0.0}});
  torch::Tensor labels = torch::tensor({0, 1}, torch::kLong);
  torch::Tensor loss = softmax_cross_entropy(logits, labels);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_NEAR(loss.item<double>(), 1.5 * std::log(2.0), 1e-6);
}

TEST(LossSoftmaxCrossEntropy, ReturnsFloat32ForBf16Logits) {
  torch::Tensor logits = torch::tensor({{2.0, -1.0, 0.5}}).to(torch::kBFloat16);
  torch::Tensor loss = softmax_cross_entropy(logits, torch::tensor({2}, torch::kLong));
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  // 2, -1 and 0.5 are exact in bf16: -log(e^0.5 / (e^2 + e^-1 + e^0.5)).
  const double expected = std::log(std::exp(2.0) + std::exp(-1.0) + std::exp(0.5)) - 0.5;
  EXPECT_NEAR(loss.item<double>(), expected, 1e-6);
}

TEST(LossSoftmaxCrossEntropy, RejectsMismatchedLabels) {
  EXPECT_THROW(softmax_cross_entropy(torch::zeros({2, 3}), torch::zeros({3}, torch::kLong)),
               c10::Error);
  EXPECT_THROW(softmax_cross_entropy(torch::zeros({6}), torch::zeros({6}, torch::kLong)),
               c10::Error);
}

TEST(LossSigmoidBinaryCrossEntropy, MatchesHandValue) {
  // Row 0: x = 0, t = 1: -log sigmoid(0) = ln 2.
  //        x = ln 3, t = 0: sigmoid = 3/4, -log(1/4) = ln 4.      Sum 3 ln 2.
  // Row 1: x = -ln 3, t = 0: sigmoid = 1/4, -log(3/4) = ln(4/3).
  //        x = 100, t = 1: log(1 + e^-100), about 4e-44.         Sum ln(4/3).
  // Mean over rows: (3 ln 2 + ln(4/3)) / 2 = 1.1835618.
  torch::Tensor logits = torch::tensor({{0.0, std::log(3.0)}, {-std::log(3.0), 100.0}});
  torch::Tensor targets = torch::tensor({{1.0, 0.0}, {0.0, 1.0}});
  torch::Tensor loss = sigmoid_binary_cross_entropy(logits, targets);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), (3 * std::log(2.0) + std::log(4.0 / 3.0)) / 2, 1e-6);
}

TEST(LossSigmoidBinaryCrossEntropy, StaysFiniteForLargeLogits) {
  // -log sigmoid(-1000) = 1000 + log(1 + e^-1000) = 1000; a naive
  // log(sigmoid(x)) gives log(0) = -inf.
  torch::Tensor loss =
      sigmoid_binary_cross_entropy(torch::tensor({{-1000.0, 1000.0}}), torch::tensor({{1.0, 0.0}}));
  EXPECT_NEAR(loss.item<double>(), 2000.0, 1e-3);
}

TEST(LossSigmoidBinaryCrossEntropy, AcceptsIntegerTargets) {
  torch::Tensor loss =
      sigmoid_binary_cross_entropy(torch::zeros({3, 4}), torch::ones({3, 4}, torch::kLong));
  // Four labels of ln 2 per row.
  EXPECT_NEAR(loss.item<double>(), 4 * std::log(2.0), 1e-6);
}

TEST(LossDuplicateGroups, LabelsIdenticalRowsAlike) {
  torch::Tensor ids =
      torch::tensor({{1, 2, 3}, {4, 5, 6}, {1, 2, 3}, {1, 2, 4}, {4, 5, 6}}, torch::kInt);
  EXPECT_EQ(to_vector(duplicate_groups(ids)), (std::vector<int64_t>{0, 1, 0, 3, 1}));
  EXPECT_EQ(duplicate_groups(ids).scalar_type(), torch::kLong);

  torch::Tensor labels = torch::tensor({7, 3, 7, 7, 2}, torch::kLong);
  EXPECT_EQ(to_vector(duplicate_groups(labels)), (std::vector<int64_t>{0, 1, 0, 0, 4}));

  torch::Tensor distinct = torch::tensor({{1, 0}, {0, 1}}, torch::kLong);
  EXPECT_EQ(to_vector(duplicate_groups(distinct)), (std::vector<int64_t>{0, 1}));
}

// ---------------------------------------------------------------------------
// NCE

// The standard CLIP loss written with softmax_cross_entropy, diagonal
// targets and explicit normalisation.
torch::Tensor clip_loss(const torch::Tensor& za, const torch::Tensor& zb, double scale) {
  torch::Tensor za_n = za / za.norm(2, 1, true);
  torch::Tensor zb_n = zb / zb.norm(2, 1, true);
  torch::Tensor logits = scale * za_n.matmul(zb_n.t());
  torch::Tensor labels = torch::arange(za.size(0), torch::kLong);
  return (softmax_cross_entropy(logits, labels) + softmax_cross_entropy(logits.t(), labels)) / 2;
}

TEST(NceLoss, MatchesHandValueOnTwoPairs) {
  // Orthonormal pairs with logit scale 1: logits = I. Each row and column
  // has softmax (e, 1) / (e + 1) on its positive, so the loss is
  // -log(e / (e + 1)) = log(1 + e^-1) = 0.3132617.
  torch::Tensor z = torch::tensor({{1.0, 0.0}, {0.0, 1.0}});
  EXPECT_NEAR(nce_loss(z, z, torch::tensor(1.0)).item<double>(), std::log(1 + std::exp(-1.0)),
              1e-6);
  // Logit scale 2: log(1 + e^-2) = 0.1269280.
  EXPECT_NEAR(nce_loss(z, z, torch::tensor(2.0)).item<double>(), std::log(1 + std::exp(-2.0)),
              1e-6);
}

// Three image/caption pairs where captions 0 and 2 are identical, so
// zb0 = zb2 and groups_b = (0, 1, 0).
struct DuplicateBatch {
  torch::Tensor za = torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {0.6, 0.8}});
  torch::Tensor zb = torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {1.0, 0.0}});
  torch::Tensor groups_b = torch::tensor({0, 1, 0}, torch::kLong);
};

TEST(NceLoss, MatchesHandValueWithDuplicates) {
  // logits (scale 1) = [[1, 0, 1], [0, 1, 0], [0.6, 0.8, 0.6]].
  // Positives: the diagonal plus (0, 2) and (2, 0), from groups_b.
  //
  // a -> b, row by row, lse = log-sum-exp of the row:
  //   row 0: lse = log(2e + 1) = 1.8619948; positives 0, 2 (logit 1 each):
  //          loss = lse - 1 = 0.8619948
  //   row 1: lse = log(2 + e) = 1.5514447; positive 1: lse - 1 = 0.5514447
  //   row 2: lse = log(2e^0.6 + e^0.8) = 1.7698169; positives 0, 2 (0.6 each):
  //          lse - 0.6 = 1.1698169
  //   L_ab = (0.8619948 + 0.5514447 + 1.1698169) / 3 = 0.8610855
  // b -> a, column by column:
  //   col 0: (1, 0, 0.6), lse = log(e + 1 + e^0.6) = 1.7120668; positives
  //          rows 0, 2: lse - (1 + 0.6) / 2 = 0.9120668
  //   col 1: (0, 1, 0.8), lse = log(1 + e + e^0.8) = 1.7823525; positive
  //          row 1: lse - 1 = 0.7823525
  //   col 2: same as col 0: 0.9120668
  //   L_ba = (0.9120668 + 0.7823525 + 0.9120668) / 3 = 0.8688287
  // loss = (0.8610855 + 0.8688287) / 2 = 0.8649571.
  DuplicateBatch batch;
  torch::Tensor loss =
      nce_loss(batch.za, batch.zb, torch::tensor(1.0), torch::Tensor(), batch.groups_b);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), 0.8649571, 1e-6);

  // The same positives from duplicate_groups of the caption token ids.
  torch::Tensor caption_ids = torch::tensor({{5, 9, 2}, {7, 7, 2}, {5, 9, 2}}, torch::kLong);
  EXPECT_NEAR(nce_loss(batch.za, batch.zb, torch::tensor(1.0), torch::Tensor(),
                       duplicate_groups(caption_ids))
                  .item<double>(),
              0.8649571, 1e-6);

  // groups_a with the same pairs gives the same positives.
  EXPECT_NEAR(nce_loss(batch.za, batch.zb, torch::tensor(1.0), batch.groups_b).item<double>(),
              0.8649571, 1e-6);
}

TEST(NceLoss, WithoutGroupsEqualsClip) {
  torch::manual_seed(0);
  torch::Tensor za = torch::randn({6, 5});
  torch::Tensor zb = torch::randn({6, 5});
  EXPECT_NEAR(nce_loss(za, zb, torch::tensor(7.5)).item<double>(),
              clip_loss(za, zb, 7.5).item<double>(), 1e-5);

  // Groups with no repeats change nothing.
  torch::Tensor distinct = torch::arange(6, torch::kLong);
  EXPECT_NEAR(nce_loss(za, zb, torch::tensor(7.5), distinct, distinct).item<double>(),
              clip_loss(za, zb, 7.5).item<double>(), 1e-5);
}

TEST(NceLoss, IsSymmetric) {
  torch::manual_seed(1);
  torch::Tensor za = torch::randn({5, 4});
  torch::Tensor zb = torch::randn({5, 4});
  torch::Tensor groups_a = torch::tensor({0, 1, 0, 3, 4}, torch::kLong);
  torch::Tensor groups_b = torch::tensor({0, 1, 2, 1, 4}, torch::kLong);
  const double forward = nce_loss(za, zb, torch::tensor(3.0), groups_a, groups_b).item<double>();
  const double swapped = nce_loss(zb, za, torch::tensor(3.0), groups_b, groups_a).item<double>();
  EXPECT_NEAR(forward, swapped, 1e-6);
}

TEST(NceLoss, IgnoresEmbeddingScale) {
  torch::manual_seed(2);
  torch::Tensor za = torch::randn({4, 3});
  torch::Tensor zb = torch::randn({4, 3});
  torch::Tensor row_scale = torch::tensor({{3.0}, {0.1}, {20.0}, {1.0}});
  EXPECT_NEAR(nce_loss(za, zb, torch::tensor(10.0)).item<double>(),
              nce_loss(za * row_scale, zb * 0.5, torch::tensor(10.0)).item<double>(), 1e-5);
}

TEST(NceLoss, GradientReachesScaleAndEmbeddings) {
  torch::manual_seed(3);
  torch::Tensor za = torch::randn({4, 3}, torch::requires_grad());
  torch::Tensor zb = torch::randn({4, 3}, torch::requires_grad());
  torch::Tensor scale = torch::tensor(5.0, torch::requires_grad());
  nce_loss(za, zb, scale).backward();
  for (const torch::Tensor& t : {za, zb, scale}) {
    ASSERT_TRUE(t.grad().defined());
    EXPECT_TRUE(torch::isfinite(t.grad()).all().item<bool>());
    EXPECT_GT(t.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(NceLoss, RunsInFloat32UnderAutocast) {
  torch::manual_seed(4);
  torch::Tensor za = torch::randn({8, 16});
  torch::Tensor zb = torch::randn({8, 16});
  const double expected = nce_loss(za, zb, torch::tensor(100.0)).item<double>();
  AutocastScope autocast(torch::kCPU, true);
  torch::Tensor loss = nce_loss(za, zb, torch::tensor(100.0));
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), expected, 1e-6);
}

TEST(NceLoss, RejectsMismatchedShapes) {
  EXPECT_THROW(nce_loss(torch::randn({3, 4}), torch::randn({2, 4}), torch::tensor(1.0)),
               c10::Error);
  EXPECT_THROW(nce_loss(torch::randn({3, 4}), torch::randn({3, 4}), torch::tensor({1.0, 2.0})),
               c10::Error);
  EXPECT_THROW(nce_loss(torch::randn({3, 4}), torch::randn({3, 4}), torch::tensor(1.0),
                        torch::zeros({2}, torch::kLong)),
               c10::Error);
}

TEST(NceAccuracy, CountsAnyPositiveAsCorrect) {
  // Similarities are the logits of MatchesHandValueWithDuplicates. Row 0's
  // best match is column 0 or 2, both positive; row 1 finds column 1; row 2
  // prefers column 1 (0.8), a negative. Accuracy 2/3.
  DuplicateBatch batch;
  EXPECT_NEAR(nce_accuracy(batch.za, batch.zb, torch::Tensor(), batch.groups_b).item<double>(),
              2.0 / 3.0, 1e-6);
}

TEST(NcePositives, CombinesDiagonalAndGroups) {
  torch::Tensor groups_a = torch::tensor({0, 0, 2}, torch::kLong);
  torch::Tensor groups_b = torch::tensor({0, 1, 1}, torch::kLong);
  torch::Tensor positives = nce_positives(groups_a, groups_b, 3, torch::TensorOptions());
  // (0, 1) from groups_a, (1, 2) from groups_b, and their transposes.
  EXPECT_EQ(to_vector(positives), (std::vector<int64_t>{1, 1, 0, 1, 1, 1, 0, 1, 1}));
  EXPECT_EQ(to_vector(nce_positives({}, {}, 2, torch::TensorOptions())),
            (std::vector<int64_t>{1, 0, 0, 1}));
}

}  // namespace
}  // namespace imp
