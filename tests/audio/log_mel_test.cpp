#include "imp/audio/log_mel.h"

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "imp/config/config.h"
#include "imp/core/error.h"

namespace {

constexpr double kPi = 3.14159265358979323846;

// The HTK mel scale, written out here so that the tests do not depend on the
// implementation's helpers.
double mel(double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); }
double mel_hz(double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); }

// Edges and centres of `bands` filters: point i is the lower edge of filter
// i, the centre of filter i - 1 and the upper edge of filter i - 2.
std::vector<double> mel_points(int bands, double f_min, double f_max) {
  std::vector<double> points;
  for (int i = 0; i < bands + 2; ++i)
    points.push_back(mel_hz(mel(f_min) + i * (mel(f_max) - mel(f_min)) / (bands + 1)));
  return points;
}

// The band whose centre is nearest to `hz`.
int nearest_band(double hz, int bands, double f_min, double f_max) {
  const std::vector<double> points = mel_points(bands, f_min, f_max);
  int best = 0;
  for (int m = 1; m < bands; ++m) {
    if (std::abs(points[m + 1] - hz) < std::abs(points[best + 1] - hz)) best = m;
  }
  return best;
}

std::vector<float> tone(double hz, int sample_rate, int64_t samples, double amplitude = 0.5) {
  std::vector<float> wave(samples);
  for (int64_t i = 0; i < samples; ++i)
    wave[i] = static_cast<float>(amplitude * std::sin(2 * kPi * hz * i / sample_rate));
  return wave;
}

at::Tensor to_tensor(const std::vector<float>& samples) {
  return at::from_blob(const_cast<float*>(samples.data()), {static_cast<int64_t>(samples.size())}, at::kFloat)
      .clone();
}

// Frequency (Hz) of the largest magnitude in the spectrum of `samples`.
double peak_frequency(const std::vector<float>& samples, int sample_rate) {
  const at::Tensor magnitude = at::fft_rfft(to_tensor(samples)).abs();
  const int64_t bin = magnitude.argmax().item<int64_t>();
  return static_cast<double>(bin) * sample_rate / static_cast<double>(samples.size());
}

// The tiny preset's front end: 32 bands, 25 ms windows every 20 ms.
imp::AudioConfig small_config() {
  imp::AudioConfig config;
  config.hop = 320;
  config.mel_bands = 32;
  return config;
}

TEST(LogMel, ClipSamplesGivesFrames) {
  const imp::AudioConfig config;
  EXPECT_EQ(imp::clip_samples(config), (128 - 1) * 160 + 400);
  EXPECT_EQ(imp::clip_samples(small_config()), (128 - 1) * 320 + 400);
}

TEST(MelFilterbank, ShapeAndRange) {
  const at::Tensor filters = imp::mel_filterbank(16000, 400, 32, 0.0, 8000.0);
  ASSERT_EQ(filters.sizes(), at::IntArrayRef({32, 201}));
  EXPECT_EQ(filters.scalar_type(), at::kFloat);
  EXPECT_GE(filters.min().item<float>(), 0.0f);
  EXPECT_LE(filters.max().item<float>(), 1.0f);
}

// Every value is the triangle of the HTK definition at that bin's frequency.
TEST(MelFilterbank, MatchesTriangleDefinition) {
  constexpr int kBands = 32;
  constexpr int kFft = 400;
  constexpr double kMin = 50.0;
  constexpr double kMax = 7600.0;
  const at::Tensor filters = imp::mel_filterbank(16000, kFft, kBands, kMin, kMax);
  const std::vector<double> points = mel_points(kBands, kMin, kMax);
  for (int m = 0; m < kBands; ++m) {
    const double lower = points[m], centre = points[m + 1], upper = points[m + 2];
    for (int k = 0; k <= kFft / 2; ++k) {
      const double hz = k * 16000.0 / kFft;
      double expected = 0.0;
      if (hz > lower && hz <= centre) expected = (hz - lower) / (centre - lower);
      if (hz > centre && hz < upper) expected = (upper - hz) / (upper - centre);
      EXPECT_NEAR(filters[m][k].item<float>(), expected, 1e-5) << "band " << m << ", bin " << k;
    }
  }
}

// Each filter is non-zero exactly on the bins strictly between its
// neighbours' centres, which are its own edges.
TEST(MelFilterbank, CoversBinsBetweenNeighbourCentres) {
  constexpr int kBands = 32;
  const at::Tensor filters = imp::mel_filterbank(16000, 400, kBands, 0.0, 8000.0);
  const std::vector<double> points = mel_points(kBands, 0.0, 8000.0);
  for (int m = 0; m < kBands; ++m) {
    int covered = 0;
    for (int k = 0; k <= 200; ++k) {
      const double hz = k * 40.0;
      const bool inside = hz > points[m] + 1e-6 && hz < points[m + 2] - 1e-6;
      const float value = filters[m][k].item<float>();
      if (inside) {
        EXPECT_GT(value, 0.0f) << "band " << m << " misses bin " << k << " (" << hz << " Hz)";
        ++covered;
      } else {
        EXPECT_EQ(value, 0.0f) << "band " << m << " leaks into bin " << k << " (" << hz << " Hz)";
      }
    }
    EXPECT_GE(covered, 2) << "band " << m;
  }
}

// With 32 bands every filter spans several bins. The bin nearest its centre
// is at most 20 Hz away, so the filter's largest value is at least
// 1 - 20 Hz / (its narrower half width), and never above 1.
TEST(MelFilterbank, PeakCloseToOne) {
  constexpr int kBands = 32;
  const at::Tensor filters = imp::mel_filterbank(16000, 400, kBands, 0.0, 8000.0);
  const std::vector<double> points = mel_points(kBands, 0.0, 8000.0);
  for (int m = 0; m < kBands; ++m) {
    const double centre = points[m + 1];
    const double half_width = std::min(centre - points[m], points[m + 2] - centre);
    EXPECT_GE(filters[m].max().item<float>(), 1.0 - 20.0 / half_width - 1e-5) << "band " << m;
    EXPECT_LE(filters[m].max().item<float>(), 1.0f) << "band " << m;
  }
}

// A filter whose centre falls on a bin has exactly 1 there: one band from
// 500 Hz to the frequency that puts its centre at 1000 Hz, which is bin 25.
TEST(MelFilterbank, PeakIsOneOnCentreBin) {
  const double f_max = mel_hz(2 * mel(1000.0) - mel(500.0));
  const at::Tensor filter = imp::mel_filterbank(16000, 400, 1, 500.0, f_max)[0];
  EXPECT_EQ(filter.argmax().item<int64_t>(), 25);
  EXPECT_NEAR(filter[25].item<float>(), 1.0f, 1e-5);
}

TEST(MelFilterbank, RejectsInvalidRange) {
  EXPECT_THROW(imp::mel_filterbank(16000, 400, 32, 0.0, 9000.0), c10::Error);
  EXPECT_THROW(imp::mel_filterbank(16000, 400, 32, 4000.0, 4000.0), c10::Error);
  EXPECT_THROW(imp::mel_filterbank(16000, 400, 0, 0.0, 8000.0), c10::Error);
}

// A pure tone's energy peaks in the band whose centre is nearest to it, for
// both the default front end (128 bands) and the tiny preset's (32 bands).
TEST(LogMel, ToneLandsInNearestBand) {
  for (const imp::AudioConfig& config : {imp::AudioConfig{}, small_config()}) {
    for (double hz : {1000.0, 3000.0}) {
      const at::Tensor spectrogram =
          imp::log_mel_spectrogram(to_tensor(tone(hz, 16000, imp::clip_samples(config))), config);
      const at::Tensor band_energy = spectrogram.mean(1);
      const int expected = nearest_band(hz, config.mel_bands, 0.0, 8000.0);
      EXPECT_EQ(band_energy.argmax().item<int64_t>(), expected)
          << hz << " Hz with " << config.mel_bands << " bands";
      // The tone is steady, so every frame peaks in the same band.
      EXPECT_EQ(spectrogram.argmax(0).min().item<int64_t>(), expected) << hz << " Hz";
      EXPECT_EQ(spectrogram.argmax(0).max().item<int64_t>(), expected) << hz << " Hz";
    }
  }
}

// A tone of amplitude a at a bin frequency has power (a * window sum / 2)^2
// in that bin, and the band centred on that bin passes it with gain 1.
TEST(LogMel, TonePowerInCentreBand) {
  imp::AudioConfig config;
  config.mel_bands = 1;
  config.f_min = 500.0;
  config.f_max = mel_hz(2 * mel(1000.0) - mel(500.0));
  const double amplitude = 0.5;
  const at::Tensor spectrogram =
      imp::log_mel_spectrogram(to_tensor(tone(1000.0, 16000, imp::clip_samples(config), amplitude)), config);
  // The periodic Hann window of 400 samples sums to 200. The bins either side
  // of the tone (960 and 1040 Hz) get a quarter of its power each, and the
  // band weights them (960 - 500) / 500 and (f_max - 1040) / (f_max - 1000).
  const double bin_power = std::pow(amplitude * 200.0 / 2.0, 2);
  const double upper_weight = (config.f_max - 1040.0) / (config.f_max - 1000.0);
  const double expected = bin_power * (1.0 + 0.25 * (460.0 / 500.0) + 0.25 * upper_weight);
  EXPECT_NEAR(spectrogram.mean().item<float>(), std::log(expected), 1e-3);
}

TEST(LogMel, ShapeForShortAndLongInputs) {
  const imp::AudioConfig config = small_config();
  const int64_t length = imp::clip_samples(config);
  for (int64_t samples : {int64_t{1}, int64_t{1000}, length - 1, length, length + 1, 3 * length}) {
    const at::Tensor spectrogram = imp::log_mel_spectrogram(at::randn({samples}), config);
    EXPECT_EQ(spectrogram.sizes(), at::IntArrayRef({32, 128})) << samples << " samples";
    EXPECT_EQ(spectrogram.scalar_type(), at::kFloat);
  }
}

TEST(LogMel, ShortInputIsZeroPaddedAtEnd) {
  const imp::AudioConfig config = small_config();
  const int64_t length = imp::clip_samples(config);
  const at::Tensor wave = at::randn({5000});
  const at::Tensor padded = at::cat({wave, at::zeros({length - 5000})});
  EXPECT_TRUE(at::allclose(imp::log_mel_spectrogram(wave, config), imp::log_mel_spectrogram(padded, config)));
}

TEST(LogMel, LongInputIsCutAtEnd) {
  const imp::AudioConfig config = small_config();
  const int64_t length = imp::clip_samples(config);
  const at::Tensor wave = at::randn({length + 7000});
  EXPECT_TRUE(at::allclose(imp::log_mel_spectrogram(wave, config),
                           imp::log_mel_spectrogram(wave.narrow(0, 0, length), config)));
}

TEST(LogMel, BatchMatchesSingleClips) {
  const imp::AudioConfig config;
  const at::Tensor batch = at::randn({3, 12345});
  const at::Tensor spectrograms = imp::log_mel_spectrogram(batch, config);
  ASSERT_EQ(spectrograms.sizes(), at::IntArrayRef({3, 128, 128}));
  for (int64_t b = 0; b < 3; ++b) {
    EXPECT_TRUE(at::allclose(spectrograms[b], imp::log_mel_spectrogram(batch[b], config), 1e-4, 1e-4))
        << "clip " << b;
  }
}

TEST(LogMel, SilenceGivesLogFloor) {
  const imp::AudioConfig config;
  const at::Tensor spectrogram = imp::log_mel_spectrogram(at::zeros({2, 8000}), config);
  ASSERT_EQ(spectrogram.sizes(), at::IntArrayRef({2, 128, 128}));
  const float floor = std::log(1e-10f);
  EXPECT_NEAR(spectrogram.min().item<float>(), floor, 1e-5);
  EXPECT_NEAR(spectrogram.max().item<float>(), floor, 1e-5);
}

TEST(LogMel, AcceptsDoubleSamples) {
  const imp::AudioConfig config = small_config();
  const at::Tensor wave = at::randn({20000}, at::kDouble);
  const at::Tensor spectrogram = imp::log_mel_spectrogram(wave, config);
  EXPECT_EQ(spectrogram.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(spectrogram, imp::log_mel_spectrogram(wave.to(at::kFloat), config)));
}

// The filterbank is built once per configuration: a first call in inference
// mode must not leave tensors that autograd cannot use later.
TEST(LogMel, InferenceModeThenAutograd) {
  imp::AudioConfig config = small_config();
  config.mel_bands = 24;  // a configuration no other test builds first
  {
    c10::InferenceMode inference;
    imp::log_mel_spectrogram(at::randn({8000}), config);
  }
  const at::Tensor wave = at::randn({8000}).requires_grad_();
  imp::log_mel_spectrogram(wave, config).sum().backward();
  ASSERT_TRUE(wave.grad().defined());
  EXPECT_TRUE(at::isfinite(wave.grad()).all().item<bool>());
}

TEST(LogMel, ConfigsDoNotShareFilterbank) {
  imp::AudioConfig narrow = small_config();
  narrow.f_max = 4000.0;
  const at::Tensor tone_6k = to_tensor(tone(6000.0, 16000, imp::clip_samples(narrow)));
  const at::Tensor full = imp::log_mel_spectrogram(tone_6k, small_config());
  const at::Tensor limited = imp::log_mel_spectrogram(tone_6k, narrow);
  // No filter of the narrow configuration reaches 6 kHz, so its spectrogram
  // contains almost nothing of the tone.
  EXPECT_GT(full.max().item<float>(), limited.max().item<float>() + 10.0f);
}

TEST(LogMel, RejectsWrongRank) {
  EXPECT_THROW(imp::log_mel_spectrogram(at::zeros({2, 2, 100}), imp::AudioConfig{}), c10::Error);
  EXPECT_THROW(imp::log_mel_spectrogram(at::zeros({100}, at::kLong), imp::AudioConfig{}), c10::Error);
}

TEST(Resample, KeepsToneFrequencyAndScalesLength) {
  const std::vector<float> input = tone(1000.0, 22050, 22050);
  const std::vector<float> output = imp::resample(input, 22050, 16000);
  EXPECT_NEAR(static_cast<double>(output.size()), 16000.0, 3.0);
  EXPECT_NEAR(peak_frequency(output, 16000), 1000.0, 1.0);
  EXPECT_NEAR(peak_frequency(input, 22050), 1000.0, 1.0);
}

// High-quality resampling keeps the amplitude: compare the RMS away from the
// filter's start-up at each end.
TEST(Resample, KeepsAmplitude) {
  const std::vector<float> output = imp::resample(tone(440.0, 22050, 22050, 0.5), 22050, 16000);
  double sum = 0.0;
  const size_t begin = 1000, end = output.size() - 1000;
  for (size_t i = begin; i < end; ++i) sum += output[i] * output[i];
  EXPECT_NEAR(std::sqrt(sum / (end - begin)), 0.5 / std::sqrt(2.0), 0.005);
}

TEST(Resample, UpsamplesToo) {
  const std::vector<float> output = imp::resample(tone(3000.0, 16000, 8000), 16000, 22050);
  EXPECT_NEAR(static_cast<double>(output.size()), 8000.0 * 22050 / 16000, 3.0);
  EXPECT_NEAR(peak_frequency(output, 22050), 3000.0, 3.0);
}

TEST(Resample, EqualRatesReturnInput) {
  const std::vector<float> input = tone(1000.0, 16000, 1234);
  EXPECT_EQ(imp::resample(input, 16000, 16000), input);
  EXPECT_TRUE(imp::resample({}, 22050, 16000).empty());
}

TEST(Resample, RejectsNonPositiveRate) {
  try {
    imp::resample({0.0f, 1.0f}, 0, 16000);
    FAIL() << "resample accepted a sample rate of 0";
  } catch (const imp::DataError& error) {
    EXPECT_NE(std::string(error.what()).find("0 Hz"), std::string::npos) << error.what();
  }
}

}  // namespace
