#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "../scratch_dir.h"
#include "imp/audio/log_mel.h"
#include "imp/config/presets.h"
#include "imp/core/error.h"
#include "imp/data/dataset.h"
#include "imp/data/moving_fashion_mnist.h"
#include "imp/data/speech_bank.h"

namespace imp {
namespace {

AudioConfig tiny_audio() { return model_preset("tiny").audio; }

TEST(SpeechBank, RenditionsUseDistinctVoicesFromTheList) {
  SpeechBankOptions options;
  options.voices = {"en-us+m1", "en-us+f1", "en+m4"};
  options.rates = {150, 200};
  options.pitches = {40, 60};
  for (const std::string text : {"a sandal", "a bag moving up"}) {
    std::set<std::string> voices;
    for (int r = 0; r < 3; ++r) {
      const SpeechParams params = rendition_params(text, r, options);
      voices.insert(params.voice);
      EXPECT_TRUE(params.rate == 150 || params.rate == 200);
      EXPECT_TRUE(params.pitch == 40 || params.pitch == 60);
      EXPECT_EQ(params.voice, rendition_params(text, r, options).voice);  // deterministic
    }
    EXPECT_EQ(voices.size(), 3u) << text;
  }
}

TEST(SpeechBank, TestSplitHearsOnlyEvaluationVoices) {
  DatasetConfig config;
  config.type = "spoken_fashion_mnist";
  const SpeechBankOptions train = speech_options(config, /*train=*/true, "cache");
  const SpeechBankOptions test = speech_options(config, /*train=*/false, "cache");
  EXPECT_EQ(train.voices, config.voices);
  EXPECT_EQ(test.voices, config.eval_voices);
  const std::set<std::string> training(config.voices.begin(), config.voices.end());
  for (const std::string& text : MovingFashionMnist::caption_texts({"sandal", "bag"}, config.motions)) {
    for (int r = 0; r < test.renditions; ++r) {
      const std::string voice = rendition_params(text, r, test).voice;
      EXPECT_EQ(training.count(voice), 0u) << voice << " speaks '" << text << "' in the test split";
    }
  }
}

TEST(SpeechBank, SpectrogramsAndCachedSecondRun) {
  testing::ScratchDir dir("speech_bank");
  SpeechBankOptions options;
  options.voices = {"en-us+m1", "en+f1"};
  options.rates = {175};
  options.pitches = {50};
  options.renditions = 2;
  options.cache_dir = dir.path() + "/speech";
  const std::vector<std::string> texts = {"a sandal", "a coat zooming in", "an ankle boot"};
  const AudioConfig audio = tiny_audio();

  SpeechBank bank(texts, options, audio, "test bank");
  EXPECT_EQ(bank.synthesized(), 6);
  torch::Tensor all = bank.gather({0, 0, 1, 1, 2, 2}, {0, 1, 0, 1, 0, 1});
  ASSERT_EQ(all.sizes(), torch::IntArrayRef({6, audio.mel_bands, audio.frames}));
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(all[i].mean().item<double>(), 0.0, 1e-4);  // normalised per clip
    EXPECT_NEAR(all[i].std().item<double>(), 1.0, 1e-3);
  }
  EXPECT_FALSE(torch::allclose(all[0], all[1]));  // two voices
  EXPECT_FALSE(torch::allclose(all[0], all[2]));  // two texts

  SpeechBank again(texts, options, audio, "test bank");
  EXPECT_EQ(again.synthesized(), 0);
  EXPECT_TRUE(torch::equal(again.gather({2, 1}, {1, 0}), bank.gather({2, 1}, {1, 0})));
  EXPECT_THROW(bank.gather({3}, {0}), c10::Error);
}

TEST(SpeechBank, NormalisationIgnoresLoudnessAndFloorsSilence) {
  torch::Tensor log_mel = torch::randn({8, 16}, torch::kDouble).to(torch::kFloat);
  torch::Tensor louder = log_mel + 3.0f;  // x e^3 in power
  EXPECT_TRUE(torch::allclose(normalize_spectrogram(log_mel), normalize_spectrogram(louder), 1e-4,
                              1e-4));
  torch::Tensor with_silence = log_mel.clone();
  with_silence.narrow(1, 8, 8).fill_(std::log(1e-10f));  // silence: far below the 80 dB floor
  torch::Tensor normalised = normalize_spectrogram(with_silence);
  EXPECT_NEAR(normalised.narrow(1, 8, 8).max().item<double>(),
              normalised.narrow(1, 8, 8).min().item<double>(), 1e-5);
}

}  // namespace
}  // namespace imp
