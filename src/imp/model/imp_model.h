// The IMP model: one embedder per modality, the shared encoder, and thin
// heads (a linear classifier per dataset, a projection per modality into the
// shared contrastive space, and a learned temperature).
//
// Dimension letters: B batch, N tokens, D d_model, P embed_dim, K classes.
#pragma once

#include <map>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "imp/config/config.h"
#include "imp/model/embedders.h"
#include "imp/model/encoder.h"
#include "imp/moe/routing_stats.h"

namespace imp {

// Modality names used throughout: in configs, batches, heads and logs.
inline constexpr const char* kImage = "image";
inline constexpr const char* kVideo = "video";
inline constexpr const char* kAudio = "audio";
inline constexpr const char* kText = "text";

struct Encoded {
  torch::Tensor pooled;    // [B, D] mean of the real tokens' final states
  torch::Tensor aux_loss;  // scalar, MoE auxiliary losses of this pass
};

// Options of one encode() call. The defaults suit evaluation.
struct EncodeOptions {
  // DropToken: the share of each example's image, video or audio tokens
  // dropped at random after the position embedding, a different subset per
  // example (torch's global generator draws it). round(N x drop_tokens) of
  // N tokens go and at least one stays. Text is never dropped.
  double drop_tokens = 0.0;
  // Recompute each encoder block in the backward pass instead of keeping
  // its activations (EncoderImpl::forward).
  bool rematerialize = false;
  // The input's rows as rows [first_row, first_row + B) of a batch of
  // batch_rows (0: the input is the whole batch). DropToken then draws for
  // the whole batch and keeps the input's rows, so that processes sharing a
  // batch drop the tokens one process would.
  int64_t first_row = 0;
  int64_t batch_rows = 0;
};

// Indices [B, K] of the tokens each of B examples keeps when DropToken drops
// round(N x rate) of its N tokens (at least one stays), in ascending order.
torch::Tensor droptoken_keep_indices(int64_t batch, int64_t tokens, double rate,
                                     const torch::Device& device);

class ImpModelImpl : public torch::nn::Module {
 public:
  // `classifiers` maps a dataset name to its number of classes; each gets a
  // linear head.
  ImpModelImpl(const ModelConfig& config, int64_t vocab_size,
               const std::map<std::string, int64_t>& classifiers);

  // Embeds and encodes one modality, then mean-pools over real tokens.
  //   image, video: [B, C, T, H, W] float
  //   audio:        [B, M, F] float log-mel spectrogram
  //   text:         [B, L] int64 ids with `mask` [B, L] bool (true = real)
  Encoded encode(const std::string& modality, const torch::Tensor& input,
                 const torch::Tensor& mask = {}, const EncodeOptions& options = {});

  // Projects pooled features [B, D] of `modality` into the shared space [B, P].
  torch::Tensor project(const std::string& modality, const torch::Tensor& pooled);

  // Class logits [B, K] from pooled features, with the head of `dataset`.
  torch::Tensor classify(const std::string& dataset, const torch::Tensor& pooled);

  // 1 / temperature, capped at config.max_logit_scale.
  torch::Tensor logit_scale() const;

  const ModelConfig& config() const { return config_; }
  Encoder& encoder() { return encoder_; }
  VisionEmbedder& vision() { return vision_; }

  // Routing of every MoE layer, accumulated by encode() while collection is on.
  RoutingStats& routing_stats() { return routing_stats_; }
  void set_collect_routing(bool on) { collect_routing_ = on; }

 private:
  ModelConfig config_;
  VisionEmbedder vision_{nullptr};
  AudioEmbedder audio_{nullptr};
  TextEmbedder text_{nullptr};
  Encoder encoder_{nullptr};
  torch::nn::ModuleDict projections_{nullptr};
  torch::nn::ModuleDict classifiers_{nullptr};
  torch::Tensor log_logit_scale_;  // scalar, log(1 / temperature)
  RoutingStats routing_stats_;
  bool collect_routing_ = true;
};
TORCH_MODULE(ImpModel);

}  // namespace imp
