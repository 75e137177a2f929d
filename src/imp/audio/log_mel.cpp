#include "imp/audio/log_mel.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "imp/core/error.h"
#include "imp/io/audio_decoder.h"

namespace imp {
namespace {

// Floor added to the mel power before the log, so silence stays finite.
constexpr double kLogFloor = 1e-10;

double hz_to_mel(double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); }
double mel_to_hz(double mel) { return 700.0 * (std::pow(10.0, mel / 2595.0) - 1.0); }

// Mel filterbank [M, K] and STFT window of one front-end configuration.
struct FrontEndTensors {
  at::Tensor filters;
  at::Tensor window;
};

// Returns the tensors for `config`, built on first use. Building the 128-band
// filterbank takes about a sixth of the time of one clip's spectrogram
// (0.08 ms against 0.48 ms on one core of an AMD EPYC VM), so each distinct
// configuration is built once per process. The tensors are never written
// after they are built, so threads can share them.
const FrontEndTensors& front_end_tensors(const AudioConfig& config) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, double, double>, FrontEndTensors> built;

  const double f_max = config.f_max > 0 ? config.f_max : config.sample_rate / 2.0;
  const auto key = std::make_tuple(config.sample_rate, config.window, config.mel_bands, config.f_min, f_max);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = built.find(key);
  if (found == built.end()) {
    // Build normal tensors even when the first call comes from inference
    // mode, so that later calls under autograd can use them.
    const c10::InferenceMode normal_tensors(/*enabled=*/false);
    FrontEndTensors tensors;
    tensors.filters =
        mel_filterbank(config.sample_rate, config.window, config.mel_bands, config.f_min, f_max);
    tensors.window = at::hann_window(config.window, /*periodic=*/true, at::kFloat);
    found = built.emplace(key, std::move(tensors)).first;
  }
  return found->second;
}

}  // namespace

int64_t clip_samples(const AudioConfig& config) {
  return static_cast<int64_t>(config.frames - 1) * config.hop + config.window;
}

at::Tensor mel_filterbank(int sample_rate, int n_fft, int mel_bands, double f_min, double f_max) {
  TORCH_CHECK(sample_rate > 0 && n_fft > 0 && mel_bands > 0, "mel_filterbank needs a positive sample rate, ",
              "FFT size and band count, got ", sample_rate, ", ", n_fft, " and ", mel_bands);
  TORCH_CHECK(f_min >= 0 && f_min < f_max && f_max <= sample_rate / 2.0, "mel_filterbank needs 0 <= f_min < ",
              "f_max <= sample_rate / 2 = ", sample_rate / 2.0, " Hz, got f_min = ", f_min,
              " and f_max = ", f_max);

  // Edges and centres: mel_bands + 2 points evenly spaced in mel.
  const double mel_min = hz_to_mel(f_min);
  const double mel_step = (hz_to_mel(f_max) - mel_min) / (mel_bands + 1);
  std::vector<double> points(mel_bands + 2);
  for (int i = 0; i < mel_bands + 2; ++i) points[i] = mel_to_hz(mel_min + i * mel_step);
  // Exact end points, so that rounding in the mel round trip cannot put a
  // sliver of the outer filters outside [f_min, f_max].
  points.front() = f_min;
  points.back() = f_max;

  const int bins = n_fft / 2 + 1;
  const double bin_hz = static_cast<double>(sample_rate) / n_fft;
  at::Tensor filters = at::zeros({mel_bands, bins}, at::kFloat);
  float* out = filters.data_ptr<float>();
  for (int m = 0; m < mel_bands; ++m) {
    const double lower = points[m];
    const double centre = points[m + 1];
    const double upper = points[m + 2];
    for (int k = 0; k < bins; ++k) {
      const double hz = k * bin_hz;
      const double rising = (hz - lower) / (centre - lower);
      const double falling = (upper - hz) / (upper - centre);
      out[m * bins + k] = static_cast<float>(std::max(0.0, std::min(rising, falling)));
    }
  }
  return filters;
}

at::Tensor log_mel_spectrogram(const at::Tensor& waveform, const AudioConfig& config) {
  TORCH_CHECK(waveform.dim() == 1 || waveform.dim() == 2, "log_mel_spectrogram expects a waveform [S] or ",
              "[B, S], got ", waveform.sizes());
  TORCH_CHECK(at::isFloatingType(waveform.scalar_type()), "log_mel_spectrogram expects float samples, got ",
              waveform.scalar_type());
  TORCH_CHECK(config.window > 0 && config.hop > 0 && config.frames > 0,
              "log_mel_spectrogram needs a positive ", "window, hop and frame count, got ", config.window,
              ", ", config.hop, " and ", config.frames);

  // Cut or zero-pad at the end to exactly `frames` STFT frames.
  const int64_t length = clip_samples(config);
  at::Tensor clip = waveform.to(at::kFloat);
  const int64_t samples = clip.size(-1);
  if (samples > length) {
    clip = clip.narrow(-1, 0, length);
  } else if (samples < length) {
    clip = at::constant_pad_nd(clip, {0, length - samples});
  }

  const FrontEndTensors& tensors = front_end_tensors(config);
  const at::Tensor filters = tensors.filters.to(clip.device());
  const at::Tensor window = tensors.window.to(clip.device());

  const at::Tensor spectrum = at::stft(clip, config.window, config.hop, config.window, window,
                                       /*center=*/false, "reflect", /*normalized=*/false, /*onesided=*/true,
                                       /*return_complex=*/true);
  const at::Tensor power = at::view_as_real(spectrum).square().sum(-1);  // [..., K, F]
  return at::log(at::matmul(filters, power) + kLogFloor);
}

std::vector<float> resample(const std::vector<float>& samples, int from_rate, int to_rate) {
  IMP_REQUIRE(DataError, from_rate > 0 && to_rate > 0, "cannot resample from ", from_rate, " Hz to ", to_rate,
              " Hz: sample rates must be positive");
  // The audio file decoder's libsoxr call; its DecodeError is a DataError.
  return resample_mono(samples, from_rate, to_rate, "resample");
}

}  // namespace imp
