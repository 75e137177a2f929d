// A fixed set of texts, each spoken in several versions (voice, speed and
// pitch), held in memory as normalised log-mel spectrograms ready for the
// audio embedder.
//
// Dimension letters: M mel bands, F spectrogram frames.
#pragma once

#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "imp/audio/speech.h"
#include "imp/config/config.h"

namespace imp {

struct SpeechBankOptions {
  std::vector<std::string> voices;  // eSpeak NG voices, "<language>+<variant>"
  std::vector<int> rates;           // words per minute
  std::vector<int> pitches;         // 0 to 100
  int renditions = 1;               // spoken versions of each text
  std::string cache_dir;            // synthesised waveforms are kept here
};

// The voice, rate and pitch of version `rendition` of `text`. Versions of one
// text take distinct voices while there are enough voices, and the choice
// depends only on the text and the lists, so another run (or another
// dataset) with the same options finds its audio in the cache.
SpeechParams rendition_params(const std::string& text, int rendition,
                              const SpeechBankOptions& options);

class SpeechBank {
 public:
  // Synthesises (or reads from the cache) every version of every text and
  // turns it into a spectrogram for `audio`. `label` names the bank in the
  // progress line printed to stdout.
  SpeechBank(std::vector<std::string> texts, const SpeechBankOptions& options,
             const AudioConfig& audio, const std::string& label);

  int64_t num_texts() const { return static_cast<int64_t>(texts_.size()); }
  int renditions() const { return renditions_; }
  const std::vector<std::string>& texts() const { return texts_; }

  // Spectrograms [B, M, F] of version renditions[b] of text texts[b].
  at::Tensor gather(const std::vector<int64_t>& texts, const std::vector<int>& renditions) const;

  int64_t synthesized() const { return synthesized_; }  // utterances synthesised, not cached

 private:
  std::vector<std::string> texts_;
  int renditions_;
  at::Tensor spectrograms_;  // [texts x renditions, M, F] float
  int64_t synthesized_ = 0;
};

// Log-mel spectrogram [M, F] normalised per clip: values more than 80 dB
// below the loudest are raised to that floor, then the clip is scaled to
// zero mean and unit variance, so loudness and recording level do not matter.
at::Tensor normalize_spectrogram(const at::Tensor& log_mel);

}  // namespace imp
