// Audio front end: waveform to log-mel spectrogram, and sample-rate
// conversion.
//
// Dimension letters: S samples, B batch, K STFT frequency bins (n_fft / 2 + 1),
// M mel bands, F spectrogram frames.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "imp/config/config.h"

namespace imp {

// Samples in one clip: (frames - 1) * hop + window, the length whose STFT
// without centre padding has exactly `frames` frames.
int64_t clip_samples(const AudioConfig& config);

// Mel filterbank [M, K] float, K = n_fft / 2 + 1, for a one-sided power
// spectrum at `sample_rate`. The filters are triangles on the HTK mel scale,
// mel = 2595 log10(1 + f / 700): M + 2 points evenly spaced in mel from f_min
// to f_max (Hz) give each filter its lower edge, centre and upper edge, so a
// filter's edges are its neighbours' centres. Each triangle is linear in Hz
// and has height 1 at its centre, with no area normalisation, so a tone at a
// filter's centre passes with gain 1 whatever the band width.
//
// NOTE: a filter's value on the bin grid reaches 1 only where its centre
// falls on a bin. A filter narrower than the bin spacing (sample_rate / n_fft)
// can miss every bin and be all zeros: 4 of 128 bands from 0 to 8 kHz at
// 16 kHz with n_fft = 400 are, while 32 or 64 bands have none.
at::Tensor mel_filterbank(int sample_rate, int n_fft, int mel_bands, double f_min, double f_max);

// Natural-log mel power spectrogram of a waveform [S] or [B, S] at
// config.sample_rate: [M, F] or [B, M, F] float, F == config.frames. The
// waveform is cut or zero-padded at the end to clip_samples(config). Frames
// are periodic-Hann windows of config.window samples every config.hop
// samples, without centre padding, and the FFT size is config.window. The
// result is log(mel power + 1e-10), so silence gives log(1e-10) = -23.03.
at::Tensor log_mel_spectrogram(const at::Tensor& waveform, const AudioConfig& config);

// Converts mono float samples from `from_rate` to `to_rate` (Hz) with
// libsoxr's high-quality one-shot resampler. Returns the input unchanged when
// the rates are equal. The output has about size * to_rate / from_rate
// samples. Throws DataError when a rate is not positive or libsoxr fails.
std::vector<float> resample(const std::vector<float>& samples, int from_rate, int to_rate);

}  // namespace imp
