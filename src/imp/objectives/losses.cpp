#include "imp/objectives/losses.h"

#include "imp/core/autocast.h"

#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/nn/functional/normalization.h>

namespace imp {

namespace {

void check_embeddings(const torch::Tensor& za, const torch::Tensor& zb) {
  TORCH_CHECK(za.dim() == 2 && zb.dim() == 2 && za.sizes() == zb.sizes(),
              "NCE embeddings must both be [B, P], got ", za.sizes(), " and ", zb.sizes());
  TORCH_CHECK(za.size(0) >= 1, "NCE needs a batch of at least one pair, got ", za.sizes());
}

// Cosine similarities [B, B] of the L2-normalised rows, in float32.
torch::Tensor cosine_similarities(const torch::Tensor& za, const torch::Tensor& zb) {
  namespace F = torch::nn::functional;
  // Autocast would run the matmul in bf16, whose 8-bit mantissa blurs
  // similarities that the logit scale (up to 100) then magnifies.
  AutocastOff no_autocast;
  torch::Tensor za_n =
      F::normalize(za.to(torch::kFloat), F::NormalizeFuncOptions().dim(1));  // [B, P]
  torch::Tensor zb_n =
      F::normalize(zb.to(torch::kFloat), F::NormalizeFuncOptions().dim(1));  // [B, P]
  return torch::mm(za_n, zb_n.t());                                          // [B, B]
}

// [B, B] bool, groups[i] == groups[j]; checks that groups is [B].
torch::Tensor same_group(const torch::Tensor& groups, int64_t batch, const char* name,
                         const torch::Device& device) {
  TORCH_CHECK(groups.dim() == 1 && groups.size(0) == batch, "NCE ", name, " must be [B] = [", batch,
              "], got ", groups.sizes());
  torch::Tensor g = groups.to(device);
  return g.unsqueeze(1) == g.unsqueeze(0);
}

}  // namespace

torch::Tensor softmax_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 2, "softmax_cross_entropy logits must be [B, K], got ",
              logits.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0),
              "softmax_cross_entropy labels must be [B] = [", logits.size(0), "], got ",
              labels.sizes());
  torch::Tensor log_probs = torch::log_softmax(logits.to(torch::kFloat), /*dim=*/1);  // [B, K]
  torch::Tensor picked = log_probs.gather(1, labels.to(torch::kLong).unsqueeze(1));   // [B, 1]
  return -picked.mean();
}

torch::Tensor sigmoid_binary_cross_entropy(const torch::Tensor& logits,
                                           const torch::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && targets.sizes() == logits.sizes(),
              "sigmoid_binary_cross_entropy needs logits and targets of one shape [B, K], got ",
              logits.sizes(), " and ", targets.sizes());
  torch::Tensor x = logits.to(torch::kFloat);
  torch::Tensor t = targets.to(torch::kFloat);
  torch::Tensor per_label = x.clamp_min(0) - x * t + torch::log1p(torch::exp(-x.abs()));  // [B, K]
  return per_label.sum(1).mean();
}

torch::Tensor duplicate_groups(const torch::Tensor& rows) {
  TORCH_CHECK(rows.dim() == 1 || rows.dim() == 2, "duplicate_groups needs [B] or [B, L] rows, got ",
              rows.sizes());
  const int64_t batch = rows.size(0);
  torch::Tensor r = rows.dim() == 1 ? rows.unsqueeze(1) : rows;             // [B, L]
  torch::Tensor same = (r.unsqueeze(1) == r.unsqueeze(0)).all(/*dim=*/-1);  // [B, B]

  // The smallest column index with an identical row; row i always matches
  // itself, so the minimum is at most i.
  torch::Tensor column =
      torch::arange(batch, rows.options().dtype(torch::kLong)).unsqueeze(0);               // [1, B]
  torch::Tensor candidates = torch::where(same, column, torch::full_like(column, batch));  // [B, B]
  return std::get<0>(candidates.min(/*dim=*/1));                                           // [B]
}

torch::Tensor nce_positives(const torch::Tensor& groups_a, const torch::Tensor& groups_b,
                            int64_t batch, const torch::TensorOptions& options) {
  torch::Tensor positives = torch::eye(batch, options.dtype(torch::kBool));  // [B, B]
  if (groups_a.defined()) {
    positives = positives.logical_or(same_group(groups_a, batch, "groups_a", options.device()));
  }
  if (groups_b.defined()) {
    positives = positives.logical_or(same_group(groups_b, batch, "groups_b", options.device()));
  }
  return positives;
}

torch::Tensor nce_loss(const torch::Tensor& za, const torch::Tensor& zb,
                       const torch::Tensor& logit_scale, const torch::Tensor& groups_a,
                       const torch::Tensor& groups_b) {
  check_embeddings(za, zb);
  TORCH_CHECK(logit_scale.defined() && logit_scale.numel() == 1,
              "NCE logit_scale must have one element, got ",
              logit_scale.defined() ? logit_scale.sizes() : torch::IntArrayRef{});
  const int64_t batch = za.size(0);

  torch::Tensor logits =
      logit_scale.to(torch::kFloat).reshape({}) * cosine_similarities(za, zb);  // [B, B]

  // Soft targets: each row (column) spreads its unit mass evenly over its
  // positives. The diagonal is always positive, so no count is zero.
  torch::Tensor positives =
      nce_positives(groups_a, groups_b, batch, logits.options()).to(torch::kFloat);
  torch::Tensor targets_ab =
      positives / positives.sum(1, /*keepdim=*/true);  // [B, B], rows sum to 1
  torch::Tensor targets_ba =
      positives / positives.sum(0, /*keepdim=*/true);  // [B, B], columns sum to 1

  torch::Tensor loss_ab = -(targets_ab * torch::log_softmax(logits, /*dim=*/1)).sum(1).mean();
  torch::Tensor loss_ba = -(targets_ba * torch::log_softmax(logits, /*dim=*/0)).sum(0).mean();
  return (loss_ab + loss_ba) / 2;
}

torch::Tensor nce_accuracy(const torch::Tensor& za, const torch::Tensor& zb,
                           const torch::Tensor& groups_a, const torch::Tensor& groups_b) {
  check_embeddings(za, zb);
  torch::NoGradGuard no_grad;
  torch::Tensor similarities = cosine_similarities(za, zb);               // [B, B]
  torch::Tensor best = similarities.argmax(/*dim=*/1, /*keepdim=*/true);  // [B, 1]
  torch::Tensor positives = nce_positives(groups_a, groups_b, za.size(0), similarities.options());
  return positives.gather(1, best).to(torch::kFloat).mean();
}

}  // namespace imp
