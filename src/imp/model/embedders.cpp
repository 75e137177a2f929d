#include "imp/model/embedders.h"

#include <torch/nn/init.h>

#include "imp/model/linear.h"
#include "imp/model/position.h"

namespace imp {
namespace {

// ViT and VATT initialise learned position tables with this standard deviation.
constexpr double kPositionInitStd = 0.02;

torch::Tensor new_positions(std::vector<int64_t> shape) {
  return torch::randn(shape) * kPositionInitStd;
}

}  // namespace

VisionEmbedderImpl::VisionEmbedderImpl(const VisionConfig& config, int64_t d_model)
    : config_(config) {
  const auto& p = config.patch;
  const int64_t patch_values = int64_t{config.channels} * p[0] * p[1] * p[2];
  proj_ = register_module("proj", torch::nn::Linear(patch_values, d_model));
  const auto& g = config.grid;
  positions_ = register_parameter("positions", new_positions({1, d_model, g[0], g[1], g[2]}));
}

torch::Tensor VisionEmbedderImpl::forward(const torch::Tensor& video) {
  TORCH_CHECK(video.dim() == 5 && video.size(1) == config_.channels,
              "vision input must be [B, C=", config_.channels, ", T, H, W], got ", video.sizes());
  const int64_t pt = config_.patch[0], ph = config_.patch[1], pw = config_.patch[2];
  torch::Tensor x = video;
  if (x.size(2) < pt) {
    TORCH_CHECK(pt % x.size(2) == 0, "a clip of ", x.size(2),
                " frames cannot be repeated to fill a temporal patch of ", pt);
    x = x.repeat_interleave(pt / x.size(2), /*dim=*/2);
  }
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  TORCH_CHECK(T % pt == 0 && H % ph == 0 && W % pw == 0, "vision input T x H x W = ", T, "x", H,
              "x", W, " is not divisible by the patch ", pt, "x", ph, "x", pw);
  const int64_t t = T / pt, h = H / ph, w = W / pw;

  // [B, C, t, pt, h, ph, w, pw] -> [B, t, h, w, C, pt, ph, pw] -> [B, N, C*pt*ph*pw]
  x = x.reshape({B, C, t, pt, h, ph, w, pw})
          .permute({0, 2, 4, 6, 1, 3, 5, 7})
          .reshape({B, t * h * w, C * pt * ph * pw});
  torch::Tensor tokens = linear(proj_, x);  // [B, N, D]
  return tokens + resize_positions(positions_, {t, h, w}).to(tokens.dtype());
}

AudioEmbedderImpl::AudioEmbedderImpl(const AudioConfig& config, int64_t d_model)
    : config_(config) {
  const int64_t patch_values = int64_t{config.patch[0]} * config.patch[1];
  proj_ = register_module("proj", torch::nn::Linear(patch_values, d_model));
  positions_ = register_parameter(
      "positions", new_positions({1, d_model, config.grid[0], config.grid[1]}));
}

torch::Tensor AudioEmbedderImpl::forward(const torch::Tensor& spectrogram) {
  TORCH_CHECK(spectrogram.dim() == 3, "audio input must be a spectrogram [B, M, F], got ",
              spectrogram.sizes());
  const int64_t pm = config_.patch[0], pf = config_.patch[1];
  const int64_t B = spectrogram.size(0), M = spectrogram.size(1), F = spectrogram.size(2);
  TORCH_CHECK(M % pm == 0 && F % pf == 0, "spectrogram M x F = ", M, "x", F,
              " is not divisible by the patch ", pm, "x", pf);
  const int64_t m = M / pm, f = F / pf;

  // [B, m, pm, f, pf] -> [B, m, f, pm, pf] -> [B, N, pm*pf]
  torch::Tensor x = spectrogram.reshape({B, m, pm, f, pf})
                        .permute({0, 1, 3, 2, 4})
                        .reshape({B, m * f, pm * pf});
  torch::Tensor tokens = linear(proj_, x);  // [B, N, D]
  return tokens + resize_positions(positions_, {m, f}).to(tokens.dtype());
}

TextEmbedderImpl::TextEmbedderImpl(const TextConfig& config, int64_t vocab_size, int64_t d_model)
    : config_(config) {
  tokens_ = register_module("tokens", torch::nn::Embedding(vocab_size, d_model));
  // T5 and ViT-style inits: small normal token and position tables.
  torch::nn::init::normal_(tokens_->weight, 0.0, kPositionInitStd);
  positions_ = register_parameter("positions", new_positions({1, config.max_len, d_model}));
}

torch::Tensor TextEmbedderImpl::forward(const torch::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 2, "text input must be token ids [B, L], got ", ids.sizes());
  const int64_t L = ids.size(1);
  TORCH_CHECK(L <= config_.max_len, "text of ", L, " tokens is longer than model.text.max_len = ",
              config_.max_len, "; truncate it when tokenizing");
  torch::Tensor tokens = tokens_(ids);  // [B, L, D]
  return tokens + positions_.narrow(1, 0, L);
}

}  // namespace imp
