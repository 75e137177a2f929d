#include "imp/data/speech_bank.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "imp/audio/log_mel.h"
#include "imp/core/error.h"
#include "imp/core/random.h"

namespace imp {

SpeechParams rendition_params(const std::string& text, int rendition,
                              const SpeechBankOptions& options) {
  IMP_REQUIRE(ConfigError, !options.voices.empty() && !options.rates.empty() &&
                               !options.pitches.empty(),
              "speech needs at least one voice, rate and pitch");
  const uint64_t h = hash_name(text);
  const uint64_t r = static_cast<uint64_t>(rendition);
  SpeechParams params;
  const uint64_t voices = options.voices.size();
  params.voice = options.voices[(below(h, voices) + r) % voices];
  params.rate = options.rates[below(mix64(h, 2 * r + 1), options.rates.size())];
  params.pitch = options.pitches[below(mix64(h, 2 * r + 2), options.pitches.size())];
  return params;
}

at::Tensor normalize_spectrogram(const at::Tensor& log_mel) {
  constexpr double kDynamicRange = 18.420680743952367;  // ln(1e8): 80 dB of power
  at::Tensor floored = at::clamp_min(log_mel, log_mel.max().item<double>() - kDynamicRange);
  return (floored - floored.mean()) / (floored.std() + 1e-5);
}

SpeechBank::SpeechBank(std::vector<std::string> texts, const SpeechBankOptions& options,
                       const AudioConfig& audio, const std::string& label)
    : texts_(std::move(texts)), renditions_(options.renditions) {
  IMP_REQUIRE(ConfigError, renditions_ > 0, "speech for ", label, " needs at least one rendition");
  const auto start = std::chrono::steady_clock::now();
  SpeechCache cache(options.cache_dir);
  const int64_t count = num_texts() * renditions_;
  const int64_t samples = clip_samples(audio);

  // Waveforms are cut or padded to one clip, then turned into spectrograms in
  // chunks so that the STFT runs batched without holding every waveform.
  constexpr int64_t kChunk = 256;
  std::vector<at::Tensor> chunks;
  at::Tensor waves = at::zeros({std::min(kChunk, count), samples}, at::kFloat);
  int64_t filled = 0;
  auto flush = [&]() {
    if (filled == 0) return;
    at::Tensor log_mel = log_mel_spectrogram(waves.narrow(0, 0, filled), audio);  // [n, M, F]
    for (int64_t i = 0; i < filled; ++i) chunks.push_back(normalize_spectrogram(log_mel[i]));
    waves.zero_();
    filled = 0;
  };
  for (int64_t t = 0; t < num_texts(); ++t) {
    for (int r = 0; r < renditions_; ++r) {
      const SpeechParams params = rendition_params(texts_[t], r, options);
      Waveform wave = cache.get(texts_[t], params);
      std::vector<float> resampled = resample(wave.samples, wave.sample_rate, audio.sample_rate);
      const int64_t n = std::min<int64_t>(samples, static_cast<int64_t>(resampled.size()));
      std::memcpy(waves[filled].data_ptr<float>(), resampled.data(), n * sizeof(float));
      if (++filled == waves.size(0)) flush();
    }
  }
  flush();
  spectrograms_ = at::stack(chunks);
  synthesized_ = cache.synthesized();
  std::printf("speech: %lld utterances for %s (%lld synthesised, %lld from the cache) in %.1f s\n",
              static_cast<long long>(count), label.c_str(),
              static_cast<long long>(cache.synthesized()),
              static_cast<long long>(cache.cache_hits()),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  std::fflush(stdout);
}

at::Tensor SpeechBank::gather(const std::vector<int64_t>& texts,
                              const std::vector<int>& renditions) const {
  const int64_t B = static_cast<int64_t>(texts.size());
  const int64_t M = spectrograms_.size(1), F = spectrograms_.size(2);
  at::Tensor out = at::empty({B, M, F}, at::kFloat);
  // Plain copies: batch workers must not start LibTorch's thread pools.
  const float* src = spectrograms_.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(texts[b] >= 0 && texts[b] < num_texts() && renditions[b] >= 0 &&
                    renditions[b] < renditions_,
                "speech bank has no text ", texts[b], " version ", renditions[b]);
    const int64_t row = texts[b] * renditions_ + renditions[b];
    std::memcpy(dst + b * M * F, src + row * M * F, M * F * sizeof(float));
  }
  return out;
}

}  // namespace imp
