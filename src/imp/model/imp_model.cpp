#include "imp/model/imp_model.h"

#include <cmath>

#include "imp/core/error.h"

namespace imp {

ImpModelImpl::ImpModelImpl(const ModelConfig& config, int64_t vocab_size,
                           const std::map<std::string, int64_t>& classifiers)
    : config_(config) {
  const int64_t D = config.d_model;
  // Video and images share one embedder: an image is a clip of one frame.
  vision_ = register_module("vision", VisionEmbedder(config.vision, D));
  audio_ = register_module("audio", AudioEmbedder(config.audio, D));
  text_ = register_module("text", TextEmbedder(config.text, vocab_size, D));
  encoder_ = register_module("encoder", Encoder(config));

  projections_ = register_module("projections", torch::nn::ModuleDict());
  for (const char* modality : {kImage, kVideo, kAudio, kText}) {
    projections_->update({{modality, std::make_shared<torch::nn::LinearImpl>(
                                         torch::nn::LinearOptions(D, config.embed_dim).bias(false))}});
  }
  classifiers_ = register_module("classifiers", torch::nn::ModuleDict());
  for (const auto& [dataset, num_classes] : classifiers) {
    classifiers_->update({{dataset, std::make_shared<torch::nn::LinearImpl>(D, num_classes)}});
  }
  log_logit_scale_ = register_parameter(
      "log_logit_scale", torch::full({}, std::log(1.0 / config.temperature_init)));
}

torch::Tensor droptoken_keep_indices(int64_t batch, int64_t tokens, double rate,
                                     const torch::Device& device) {
  TORCH_CHECK(rate >= 0.0 && rate < 1.0, "DropToken rate must be in [0, 1), got ", rate);
  const int64_t dropped = static_cast<int64_t>(std::llround(static_cast<double>(tokens) * rate));
  const int64_t kept = std::max<int64_t>(1, tokens - dropped);
  // The kept tokens of each example: the positions of its `kept` smallest
  // uniform draws, a uniformly random subset, put back in token order.
  torch::Tensor scores = torch::rand({batch, tokens}, torch::TensorOptions().device(device));
  return std::get<0>(std::get<1>(scores.topk(kept, /*dim=*/1, /*largest=*/false)).sort(1));
}

Encoded ImpModelImpl::encode(const std::string& modality, const torch::Tensor& input,
                             const torch::Tensor& mask, const EncodeOptions& options) {
  torch::Tensor tokens;  // [B, N, D]
  if (modality == kImage || modality == kVideo) {
    tokens = vision_(input);
  } else if (modality == kAudio) {
    tokens = audio_(input);
  } else if (modality == kText) {
    tokens = text_(input);
  } else {
    TORCH_CHECK(false, "unknown modality '", modality, "'; expected image, video, audio or text");
  }

  if (options.drop_tokens > 0.0 && modality != kText && !mask.defined()) {
    const int64_t rows = tokens.size(0);
    const int64_t whole = options.batch_rows > 0 ? options.batch_rows : rows;
    TORCH_CHECK(options.first_row >= 0 && options.first_row + rows <= whole, "rows [",
                options.first_row, ", ", options.first_row + rows, ") are outside a batch of ", whole);
    const torch::Tensor keep =
        droptoken_keep_indices(whole, tokens.size(1), options.drop_tokens, tokens.device())
            .narrow(0, options.first_row, rows);
    tokens = tokens.gather(1, keep.unsqueeze(-1).expand({-1, -1, tokens.size(2)}));
  }

  RoutingStats* stats = collect_routing_ ? &routing_stats_ : nullptr;
  EncoderOutput out = encoder_(tokens, mask, modality, stats, options.rematerialize);

  // Mean over the real tokens only: padding must not dilute short texts.
  torch::Tensor pooled;
  if (mask.defined()) {
    torch::Tensor weights = mask.to(out.hidden.scalar_type()).unsqueeze(-1);  // [B, N, 1]
    pooled = (out.hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0);
  } else {
    pooled = out.hidden.mean(1);
  }
  return {pooled, out.aux_loss};
}

torch::Tensor ImpModelImpl::project(const std::string& modality, const torch::Tensor& pooled) {
  TORCH_CHECK(projections_->contains(modality), "no projection head for modality '", modality, "'");
  return projections_[modality]->as<torch::nn::Linear>()->forward(pooled);
}

torch::Tensor ImpModelImpl::classify(const std::string& dataset, const torch::Tensor& pooled) {
  TORCH_CHECK(classifiers_->contains(dataset), "no classifier head for dataset '", dataset,
              "'; the model was built with heads for the datasets of classification tasks");
  return classifiers_[dataset]->as<torch::nn::Linear>()->forward(pooled);
}

torch::Tensor ImpModelImpl::logit_scale() const {
  return log_logit_scale_.clamp_max(std::log(config_.max_logit_scale)).exp();
}

}  // namespace imp
