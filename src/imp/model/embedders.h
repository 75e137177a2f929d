// Modality embedders: each turns raw input into a token sequence [B, N, D]
// of the encoder's width, with learned position embeddings added.
//
// Dimension letters: B batch, C channels, T frames, H height, W width,
// M mel bands, F spectrogram frames, L text length, N tokens, D d_model.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "imp/config/config.h"

namespace imp {

// Video and image embedder: non-overlapping 3D patches (t x h x w) flattened
// and projected to D. An image is a clip of one frame. A clip with fewer
// frames than the patch's t is repeated along time to fill one patch.
class VisionEmbedderImpl : public torch::nn::Module {
 public:
  VisionEmbedderImpl(const VisionConfig& config, int64_t d_model);

  // video: [B, C, T, H, W] float. Returns [B, N, D], N = (T/t)(H/h)(W/w).
  torch::Tensor forward(const torch::Tensor& video);

 private:
  VisionConfig config_;
  torch::nn::Linear proj_{nullptr};
  torch::Tensor positions_;  // [1, D, *grid]
};
TORCH_MODULE(VisionEmbedder);

// Audio embedder: non-overlapping patches of a log-mel spectrogram.
class AudioEmbedderImpl : public torch::nn::Module {
 public:
  AudioEmbedderImpl(const AudioConfig& config, int64_t d_model);

  // spectrogram: [B, M, F] float. Returns [B, N, D], N = (M/m)(F/f).
  torch::Tensor forward(const torch::Tensor& spectrogram);

 private:
  AudioConfig config_;
  torch::nn::Linear proj_{nullptr};
  torch::Tensor positions_;  // [1, D, *grid]
};
TORCH_MODULE(AudioEmbedder);

// Text embedder: a token embedding table plus learned 1D positions. Texts
// shorter than max_len use the first positions.
class TextEmbedderImpl : public torch::nn::Module {
 public:
  TextEmbedderImpl(const TextConfig& config, int64_t vocab_size, int64_t d_model);

  // ids: [B, L] int64, L <= max_len. Returns [B, L, D].
  torch::Tensor forward(const torch::Tensor& ids);

 private:
  TextConfig config_;
  torch::nn::Embedding tokens_{nullptr};
  torch::Tensor positions_;  // [1, max_len, D]
};
TORCH_MODULE(TextEmbedder);

}  // namespace imp
