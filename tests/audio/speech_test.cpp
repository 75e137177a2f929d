#include "imp/audio/speech.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <clocale>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "../scratch_dir.h"
#include "imp/core/error.h"

namespace {

using imp::testing::ScratchDir;

constexpr const char* kSentence = "a sandal moving to the left";

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

imp::SpeechParams voice(const std::string& name, int rate = 175, int pitch = 50) {
  imp::SpeechParams params;
  params.voice = name;
  params.rate = rate;
  params.pitch = pitch;
  return params;
}

double seconds(const imp::Waveform& waveform) {
  return static_cast<double>(waveform.samples.size()) / waveform.sample_rate;
}

double rms(const std::vector<float>& samples) {
  double sum = 0.0;
  for (float sample : samples) sum += static_cast<double>(sample) * sample;
  return samples.empty() ? 0.0 : std::sqrt(sum / samples.size());
}

// Success when both contain the same samples. A failure names the sizes and
// the first sample that differs instead of printing thousands of values.
::testing::AssertionResult same_samples(const std::vector<float>& expected,
                                        const std::vector<float>& actual) {
  if (expected == actual) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
  return ::testing::AssertionFailure()
         << "sizes " << expected.size() << " and " << actual.size() << ", first difference at sample " << i;
}

// Expects synthesize_speech to throw DataError whose message contains every
// string in `parts`.
void expect_data_error(const std::string& text, const imp::SpeechParams& params,
                       const std::vector<std::string>& parts) {
  try {
    imp::synthesize_speech(text, params);
    ADD_FAILURE() << "synthesize_speech accepted voice '" << params.voice << "', rate " << params.rate
                  << ", pitch " << params.pitch;
  } catch (const imp::DataError& error) {
    for (const std::string& part : parts) EXPECT_TRUE(contains(error.what(), part)) << error.what();
  }
}

std::vector<std::string> files_in(const std::string& directory) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

TEST(Speech, SentenceHasPlausibleDuration) {
  const imp::Waveform waveform = imp::synthesize_speech(kSentence, voice("en-us+m3"));
  EXPECT_EQ(waveform.sample_rate, 22050);
  EXPECT_GT(seconds(waveform), 1.0);
  EXPECT_LT(seconds(waveform), 4.0);
  EXPECT_GT(rms(waveform.samples), 0.01) << "the waveform is nearly silent";
  for (float sample : waveform.samples) {
    ASSERT_GE(sample, -1.0f);
    ASSERT_LT(sample, 1.0f);
  }
}

// eSpeak NG's globals (pitch flutter, breath noise) would make a repeat
// differ, and other utterances in between must not matter either.
TEST(Speech, SynthesisIsDeterministic) {
  for (const char* name : {"en-us+m3", "en-us+f2", "en-gb+whisper"}) {
    const imp::Waveform first = imp::synthesize_speech(kSentence, voice(name));
    imp::synthesize_speech("an ankle boot turning clockwise", voice("en-gb+f4", 300, 90));
    const imp::Waveform second = imp::synthesize_speech(kSentence, voice(name));
    EXPECT_EQ(first.sample_rate, second.sample_rate) << name;
    EXPECT_TRUE(same_samples(first.samples, second.samples)) << name;
  }
}

TEST(Speech, FasterRateIsShorter) {
  const imp::Waveform normal = imp::synthesize_speech(kSentence, voice("en-us+m3", 175));
  const imp::Waveform fast = imp::synthesize_speech(kSentence, voice("en-us+m3", 300));
  EXPECT_LT(seconds(fast), 0.8 * seconds(normal));
}

TEST(Speech, VoicesAndPitchesDiffer) {
  const imp::Waveform male = imp::synthesize_speech(kSentence, voice("en-us+m3"));
  const imp::Waveform female = imp::synthesize_speech(kSentence, voice("en-us+f2"));
  const imp::Waveform british = imp::synthesize_speech(kSentence, voice("en-gb+m3"));
  const imp::Waveform high = imp::synthesize_speech(kSentence, voice("en-us+m3", 175, 80));
  EXPECT_FALSE(same_samples(male.samples, female.samples));
  EXPECT_FALSE(same_samples(male.samples, british.samples));
  EXPECT_FALSE(same_samples(male.samples, high.samples));
}

// eSpeak NG 1.51 does not find "en-gb" by file name, and its own fallback
// drops the variant, so every en-gb variant would sound the same.
TEST(Speech, VariantsApplyToEveryLanguage) {
  const std::vector<std::string> languages = {"en-gb", "en-us", "en-029"};
  for (const std::string& language : languages) {
    const imp::Waveform plain = imp::synthesize_speech(kSentence, voice(language));
    const imp::Waveform male = imp::synthesize_speech(kSentence, voice(language + "+m3"));
    const imp::Waveform female = imp::synthesize_speech(kSentence, voice(language + "+f3"));
    EXPECT_FALSE(same_samples(plain.samples, male.samples)) << language;
    EXPECT_FALSE(same_samples(plain.samples, female.samples)) << language;
    EXPECT_FALSE(same_samples(male.samples, female.samples)) << language;
  }
}

TEST(Speech, LanguageNameIgnoresCase) {
  EXPECT_TRUE(same_samples(imp::synthesize_speech("a coat", voice("en-gb+m3")).samples,
                           imp::synthesize_speech("a coat", voice("EN-GB+m3")).samples));
}

// "+3" is eSpeak NG's number for the male variant m3, and "+13" for f3.
TEST(Speech, NumberedVariantMatchesName) {
  EXPECT_TRUE(same_samples(imp::synthesize_speech("a coat", voice("en-us+m3")).samples,
                           imp::synthesize_speech("a coat", voice("en-us+3")).samples));
  EXPECT_TRUE(same_samples(imp::synthesize_speech("a coat", voice("en-us+f3")).samples,
                           imp::synthesize_speech("a coat", voice("en-us+13")).samples));
}

TEST(Speech, VoiceWithoutVariant) {
  const imp::Waveform waveform = imp::synthesize_speech("a coat", voice("en-us"));
  EXPECT_GT(rms(waveform.samples), 0.01);
}

TEST(Speech, UnknownLanguageNamed) {
  expect_data_error(kSentence, voice("xx-nowhere+m3"), {"xx-nowhere+m3", "espeak-ng --voices"});
  expect_data_error(kSentence, voice("en-zz"), {"en-zz", "espeak-ng --voices"});
}

// eSpeak NG itself ignores an unknown variant and speaks with the plain voice.
TEST(Speech, UnknownVariantNamed) {
  expect_data_error(kSentence, voice("en-us+nobody"),
                    {"en-us+nobody", "nobody", "espeak-ng --voices=variant"});
  expect_data_error(kSentence, voice("en-us+M3"), {"en-us+M3"});
}

TEST(Speech, EmptyVoiceRejected) { expect_data_error(kSentence, voice(""), {"empty"}); }

TEST(Speech, RateAndPitchOutOfRangeRejected) {
  expect_data_error(kSentence, voice("en-us+m3", 79), {"rate 79"});
  expect_data_error(kSentence, voice("en-us+m3", 451), {"rate 451"});
  expect_data_error(kSentence, voice("en-us+m3", 175, -1), {"pitch -1"});
  expect_data_error(kSentence, voice("en-us+m3", 175, 101), {"pitch 101"});
}

TEST(Speech, ConcurrentCallsMatchSerial) {
  const std::vector<std::string> texts = {"a coat", "a dress", "an ankle boot", "a bag"};
  std::vector<std::vector<float>> serial;
  for (const std::string& text : texts)
    serial.push_back(imp::synthesize_speech(text, voice("en-us+m5")).samples);

  constexpr int kThreads = 2;
  std::vector<std::vector<std::vector<float>>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (const std::string& text : texts) {
        results[t].push_back(imp::synthesize_speech(text, voice("en-us+m5")).samples);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t)
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_TRUE(same_samples(serial[i], results[t][i])) << "thread " << t << ", " << texts[i];
    }
}

// Synthesis borrows the locale and rand() and must give both back.
TEST(Speech, RestoresLocaleAndRand) {
  const std::string locale_before = std::setlocale(LC_CTYPE, nullptr);
  srand(7);
  const int first = rand();
  const int expected_second = rand();

  srand(7);
  EXPECT_EQ(rand(), first);
  imp::synthesize_speech("a shirt", voice("en-us+f2"));
  EXPECT_EQ(rand(), expected_second);
  EXPECT_EQ(std::setlocale(LC_CTYPE, nullptr), locale_before);
}

TEST(Speech, VersionIsKnown) {
  const std::string version = imp::espeak_ng_version();
  EXPECT_FALSE(version.empty());
  EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(version[0]))) << version;
}

// --- SpeechCache --------------------------------------------------------------

const std::vector<std::string> kTexts = {"a coat", "a sandal moving to the left", "a bag turning clockwise"};

TEST(SpeechCache, SecondCacheReadsFiles) {
  ScratchDir dir("speech_cache");
  const imp::SpeechParams params = voice("en-us+m3");

  std::vector<imp::Waveform> first;
  imp::SpeechCache cache(dir.path());
  for (const std::string& text : kTexts) first.push_back(cache.get(text, params));
  EXPECT_EQ(cache.synthesized(), 3);
  EXPECT_EQ(cache.cache_hits(), 0);

  imp::SpeechCache again(dir.path());
  for (size_t i = 0; i < kTexts.size(); ++i) {
    const imp::Waveform cached = again.get(kTexts[i], params);
    EXPECT_EQ(cached.sample_rate, first[i].sample_rate) << kTexts[i];
    EXPECT_TRUE(same_samples(cached.samples, first[i].samples)) << kTexts[i];
  }
  EXPECT_EQ(again.synthesized(), 0);
  EXPECT_EQ(again.cache_hits(), 3);

  // The same cache also hits on a repeat.
  cache.get(kTexts[0], params);
  EXPECT_EQ(cache.synthesized(), 3);
  EXPECT_EQ(cache.cache_hits(), 1);
}

TEST(SpeechCache, CachedEqualsDirectSynthesis) {
  ScratchDir dir("speech_cache");
  const imp::SpeechParams params = voice("en-gb+f3", 150, 65);
  const imp::Waveform direct = imp::synthesize_speech(kSentence, params);
  imp::SpeechCache(dir.path()).get(kSentence, params);
  imp::SpeechCache cache(dir.path());
  const imp::Waveform cached = cache.get(kSentence, params);
  EXPECT_EQ(cache.cache_hits(), 1);
  EXPECT_EQ(cached.sample_rate, direct.sample_rate);
  EXPECT_TRUE(same_samples(cached.samples, direct.samples));
}

TEST(SpeechCache, EachParameterChangesKey) {
  ScratchDir dir("speech_cache");
  imp::SpeechCache cache(dir.path());
  const imp::SpeechParams base = voice("en-us+m3", 175, 50);
  cache.get(kSentence, base);

  struct Variation {
    std::string changed;
    std::string text;
    imp::SpeechParams params;
  };
  const std::vector<Variation> variations = {
      {"rate", kSentence, voice("en-us+m3", 200, 50)},
      {"pitch", kSentence, voice("en-us+m3", 175, 65)},
      {"voice", kSentence, voice("en-us+m1", 175, 50)},
      {"text", "a sandal moving to the right", base},
  };
  int64_t expected_synthesized = 1;
  for (const Variation& variation : variations) {
    EXPECT_NE(cache.path_for(variation.text, variation.params), cache.path_for(kSentence, base))
        << variation.changed;
    cache.get(variation.text, variation.params);
    EXPECT_EQ(cache.synthesized(), ++expected_synthesized) << variation.changed;
    EXPECT_EQ(cache.cache_hits(), 0) << variation.changed;
  }
  EXPECT_EQ(files_in(dir.path()).size(), variations.size() + 1);
}

TEST(SpeechCache, FilesNamedByHexKey) {
  ScratchDir dir("speech_cache");
  imp::SpeechCache cache(dir.path() + "/nested/speech");
  const std::string path = cache.path_for(kSentence, voice("en-us+m3"));
  EXPECT_EQ(std::filesystem::path(path).parent_path(), std::filesystem::path(dir.path() + "/nested/speech"));
  EXPECT_TRUE(
      std::regex_match(std::filesystem::path(path).filename().string(), std::regex("[0-9a-f]{16}\\.wav")))
      << path;
  // The name depends on the utterance only, not on the folder.
  EXPECT_EQ(
      std::filesystem::path(path).filename(),
      std::filesystem::path(imp::SpeechCache("elsewhere").path_for(kSentence, voice("en-us+m3"))).filename());

  // The folder is created on demand, and only the final file is left in it.
  cache.get(kSentence, voice("en-us+m3"));
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_EQ(files_in(dir.path() + "/nested/speech"),
            std::vector<std::string>{std::filesystem::path(path).filename().string()});
}

TEST(SpeechCache, GarbageFileSynthesisedAgain) {
  ScratchDir dir("speech_cache");
  const imp::SpeechParams params = voice("en-us+m3");
  const imp::Waveform original = imp::SpeechCache(dir.path()).get(kSentence, params);

  imp::SpeechCache cache(dir.path());
  const std::string path = cache.path_for(kSentence, params);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "not a wav";

  ::testing::internal::CaptureStderr();
  const imp::Waveform repaired = cache.get(kSentence, params);
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(same_samples(repaired.samples, original.samples));
  EXPECT_EQ(cache.synthesized(), 1);
  EXPECT_EQ(cache.cache_hits(), 0);
  EXPECT_TRUE(contains(warning, path)) << warning;

  // The file was replaced by a valid one.
  imp::SpeechCache after(dir.path());
  EXPECT_TRUE(same_samples(after.get(kSentence, params).samples, original.samples));
  EXPECT_EQ(after.cache_hits(), 1);
}

// libsndfile reads a truncated WAV without complaint, but the stored length
// and checksum catch it.
TEST(SpeechCache, TruncatedFileSynthesisedAgain) {
  ScratchDir dir("speech_cache");
  const imp::SpeechParams params = voice("en-us+f2");
  const imp::Waveform original = imp::SpeechCache(dir.path()).get(kSentence, params);

  imp::SpeechCache cache(dir.path());
  const std::string path = cache.path_for(kSentence, params);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);

  ::testing::internal::CaptureStderr();
  const imp::Waveform repaired = cache.get(kSentence, params);
  ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(same_samples(repaired.samples, original.samples));
  EXPECT_EQ(cache.synthesized(), 1);
}

// A damaged sample keeps the file readable, but the checksum catches it.
TEST(SpeechCache, DamagedSamplesSynthesisedAgain) {
  ScratchDir dir("speech_cache");
  const imp::SpeechParams params = voice("en-us+m3");
  const imp::Waveform original = imp::SpeechCache(dir.path()).get(kSentence, params);

  imp::SpeechCache cache(dir.path());
  const std::string path = cache.path_for(kSentence, params);
  {
    std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
    file.seekp(2000);
    file.put('\x55');
    file.put('\x55');
  }
  ::testing::internal::CaptureStderr();
  const imp::Waveform repaired = cache.get(kSentence, params);
  ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(same_samples(repaired.samples, original.samples));
  EXPECT_EQ(cache.synthesized(), 1);
}

TEST(SpeechCache, WarnsOncePerCache) {
  ScratchDir dir("speech_cache");
  const imp::SpeechParams params = voice("en-us+m3");
  imp::SpeechCache writer(dir.path());
  for (const std::string& text : kTexts) writer.get(text, params);

  imp::SpeechCache cache(dir.path());
  for (const std::string& text : kTexts) {
    std::ofstream(cache.path_for(text, params), std::ios::binary | std::ios::trunc) << "garbage";
  }
  ::testing::internal::CaptureStderr();
  for (const std::string& text : kTexts) cache.get(text, params);
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(cache.synthesized(), 3);
  EXPECT_TRUE(contains(warnings, cache.path_for(kTexts[0], params))) << warnings;
  EXPECT_FALSE(contains(warnings, cache.path_for(kTexts[1], params))) << warnings;
  EXPECT_FALSE(contains(warnings, cache.path_for(kTexts[2], params))) << warnings;
}

TEST(SpeechCache, UnwritableFolderNamed) {
  ScratchDir dir("speech_cache");
  const std::string blocker = dir.file("file");
  std::ofstream(blocker) << "a file where the cache folder should be";
  imp::SpeechCache cache(blocker + "/speech");
  try {
    cache.get("a coat", voice("en-us+m3"));
    FAIL() << "get wrote into a folder under a regular file";
  } catch (const imp::DataError& error) {
    EXPECT_TRUE(contains(error.what(), blocker + "/speech")) << error.what();
  }
}

TEST(SpeechCache, ConcurrentGetsAgree) {
  ScratchDir dir("speech_cache");
  imp::SpeechCache cache(dir.path());
  const imp::SpeechParams params = voice("en-us+f1");
  std::vector<std::vector<float>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { results[t] = cache.get(kTexts[t % 2], params).samples; });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(same_samples(results[0], results[2]));
  EXPECT_TRUE(same_samples(results[1], results[3]));
  EXPECT_EQ(cache.synthesized() + cache.cache_hits(), 4);
  EXPECT_EQ(files_in(dir.path()).size(), 2u);
}

}  // namespace
