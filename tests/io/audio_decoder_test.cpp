// Tests of the libsndfile/libsoxr audio decoder. WAV files with exact sample
// values are built in code. Compressed files (flac, ogg vorbis) are made with
// sox at test time in a scratch directory.
#include "imp/io/audio_decoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../scratch_dir.h"

namespace {

using imp::AudioDecodeOptions;
using imp::DecodedAudio;
using imp::DecodeError;
using imp::testing::ScratchDir;

constexpr double kPi = 3.14159265358979323846;

// WAVE format tags. The subformat GUID of a WAVE_FORMAT_EXTENSIBLE file
// starts with the tag of the encoding (kTagPcm or kTagFloat).
constexpr uint16_t kTagPcm = 0x0001;
constexpr uint16_t kTagFloat = 0x0003;
constexpr uint16_t kTagExtensible = 0xFFFE;

// ---------------------------------------------------------------------------
// WAV bytes built in code.

void put_u16(std::vector<uint8_t>& out, uint32_t value) {
  out.push_back(value & 0xFF);
  out.push_back((value >> 8) & 0xFF);
}

void put_u32(std::vector<uint8_t>& out, uint32_t value) {
  put_u16(out, value & 0xFFFF);
  put_u16(out, value >> 16);
}

void put_tag(std::vector<uint8_t>& out, const char* tag) { out.insert(out.end(), tag, tag + 4); }

// Returns a complete RIFF/WAVE file. `tag` is kTagPcm or kTagFloat. With
// `extensible`, the fmt chunk uses WAVE_FORMAT_EXTENSIBLE with `tag` as the
// subformat GUID. `data` contains the interleaved sample bytes.
std::vector<uint8_t> wav_file(uint16_t tag, int channels, int rate, int bits,
                              const std::vector<uint8_t>& data, bool extensible = false) {
  const int block_align = channels * bits / 8;
  std::vector<uint8_t> format;
  put_u16(format, extensible ? kTagExtensible : tag);
  put_u16(format, channels);
  put_u32(format, rate);
  put_u32(format, rate * block_align);
  put_u16(format, block_align);
  put_u16(format, bits);
  if (extensible) {
    put_u16(format, 22);                         // cbSize: bytes of extension that follow.
    put_u16(format, bits);                       // valid bits per sample
    put_u32(format, channels == 1 ? 0x4 : 0x3);  // speaker mask: centre, or left + right
    // KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT: {0000000X-0000-0010-8000-00AA00389B71}.
    const uint8_t guid[16] = {0,    0,    0,    0,    0x00, 0x00, 0x10, 0x00,
                              0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71};
    format.insert(format.end(), guid, guid + 16);
    format[format.size() - 16] = static_cast<uint8_t>(tag);
  }

  std::vector<uint8_t> out;
  put_tag(out, "RIFF");
  put_u32(out, static_cast<uint32_t>(4 + 8 + format.size() + 8 + data.size()));
  put_tag(out, "WAVE");
  put_tag(out, "fmt ");
  put_u32(out, static_cast<uint32_t>(format.size()));
  out.insert(out.end(), format.begin(), format.end());
  put_tag(out, "data");
  put_u32(out, static_cast<uint32_t>(data.size()));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Little-endian sample bytes for each encoding.
std::vector<uint8_t> pcm_bytes(const std::vector<int32_t>& values, int bits) {
  std::vector<uint8_t> out;
  for (int32_t value : values) {
    for (int byte = 0; byte < bits / 8; ++byte)
      out.push_back((static_cast<uint32_t>(value) >> (8 * byte)) & 0xFF);
  }
  return out;
}

std::vector<uint8_t> float_bytes(const std::vector<float>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(float));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::vector<uint8_t> double_bytes(const std::vector<double>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(double));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// A mono 16-bit sine at `frequency` Hz with amplitude 0.5.
std::vector<uint8_t> sine_wav(int rate, double frequency, int frames) {
  std::vector<int32_t> values;
  for (int i = 0; i < frames; ++i)
    values.push_back(std::lround(16384 * std::sin(2 * kPi * frequency * i / rate)));
  return wav_file(kTagPcm, 1, rate, 16, pcm_bytes(values, 16));
}

// A mono 16-bit ramp at 1000 Hz whose sample i has the value i, so that each
// decoded sample gives its frame index: i / 32768.
std::vector<uint8_t> ramp_wav(int frames) {
  std::vector<int32_t> values;
  for (int i = 0; i < frames; ++i) values.push_back(i);
  return wav_file(kTagPcm, 1, 1000, 16, pcm_bytes(values, 16));
}

// ---------------------------------------------------------------------------
// Helpers for files made by command-line tools.

void run(const std::string& command) { ASSERT_EQ(std::system(command.c_str()), 0) << command; }

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

DecodedAudio decode(const std::vector<uint8_t>& bytes, const AudioDecodeOptions& options = {}) {
  return imp::decode_audio(bytes.data(), bytes.size(), options, "test.audio");
}

// Options that keep the source rate, so that sample values are not resampled.
AudioDecodeOptions at_rate(int rate) {
  AudioDecodeOptions options;
  options.sample_rate = rate;
  return options;
}

// Power of `samples` at `frequency` Hz (one DFT bin, by the Goertzel method).
double power_at(const std::vector<float>& samples, int rate, double frequency) {
  const double coefficient = 2 * std::cos(2 * kPi * frequency / rate);
  double previous = 0, before_previous = 0;
  for (float sample : samples) {
    const double current = sample + coefficient * previous - before_previous;
    before_previous = previous;
    previous = current;
  }
  return (previous * previous + before_previous * before_previous -
          coefficient * previous * before_previous) /
         samples.size();
}

// Frequency estimated from the number of sign changes.
double zero_crossing_frequency(const std::vector<float>& samples, int rate) {
  int crossings = 0;
  for (size_t i = 1; i < samples.size(); ++i) {
    if ((samples[i - 1] < 0) != (samples[i] < 0)) ++crossings;
  }
  return crossings / 2.0 / (static_cast<double>(samples.size()) / rate);
}

// Checks that `samples` are a tone at `frequency` Hz: the zero-crossing
// estimate is within 1 % and the DFT power at other frequencies is at least
// 1000 times (30 dB) lower.
void expect_tone(const std::vector<float>& samples, int rate, double frequency) {
  EXPECT_NEAR(zero_crossing_frequency(samples, rate), frequency, frequency * 0.01);
  const double tone = power_at(samples, rate, frequency);
  for (double other : {frequency * 0.5, frequency * 0.8, frequency * 1.25, frequency * 2, frequency * 3}) {
    if (other >= rate / 2.0) continue;
    EXPECT_GT(tone, 1000 * power_at(samples, rate, other)) << "power at " << other << " Hz";
  }
}

std::string reason_of(const std::vector<uint8_t>& bytes, const AudioDecodeOptions& options = {}) {
  try {
    decode(bytes, options);
  } catch (const DecodeError& error) {
    EXPECT_NE(std::string(error.what()).find("test.audio"), std::string::npos) << error.what();
    return error.reason();
  }
  return "no error";
}

void expect_samples(const std::vector<float>& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_FLOAT_EQ(actual[i], expected[i]) << "sample " << i;
}

// ---------------------------------------------------------------------------
// Sample values of each WAV encoding.

TEST(AudioDecoder, WavUnsigned8Bit) {
  // Unsigned 8-bit: 128 is zero and each step is 1 / 128.
  const DecodedAudio audio = decode(wav_file(kTagPcm, 1, 8000, 8, {0, 64, 128, 192, 255}), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav pcm_u8");
  expect_samples(audio.samples, {-1.0f, -0.5f, 0.0f, 0.5f, 127.0f / 128});
}

TEST(AudioDecoder, Wav16Bit) {
  const DecodedAudio audio =
      decode(wav_file(kTagPcm, 1, 8000, 16, pcm_bytes({-32768, -16384, 0, 1, 32767}, 16)), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav pcm_16");
  expect_samples(audio.samples, {-1.0f, -0.5f, 0.0f, 1.0f / 32768, 32767.0f / 32768});
}

TEST(AudioDecoder, Wav24Bit) {
  const DecodedAudio audio = decode(
      wav_file(kTagPcm, 1, 8000, 24, pcm_bytes({-8388608, -4194304, 0, 1, 8388607}, 24)), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav pcm_24");
  expect_samples(audio.samples, {-1.0f, -0.5f, 0.0f, 1.0f / 8388608, 8388607.0f / 8388608});
}

TEST(AudioDecoder, Wav32Bit) {
  const std::vector<int32_t> values = {std::numeric_limits<int32_t>::min(), 1 << 30, 0, -(1 << 29), 256};
  const DecodedAudio audio = decode(wav_file(kTagPcm, 1, 8000, 32, pcm_bytes(values, 32)), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav pcm_32");
  expect_samples(audio.samples, {-1.0f, 0.5f, 0.0f, -0.25f, 1.0f / 8388608});
}

TEST(AudioDecoder, WavFloatKeepsValuesOutsideRange) {
  const std::vector<float> values = {0.25f, -0.75f, 1.5f, -2.0f, 0.0f};
  const DecodedAudio audio = decode(wav_file(kTagFloat, 1, 8000, 32, float_bytes(values)), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav float");
  expect_samples(audio.samples, values);
}

TEST(AudioDecoder, WavDouble) {
  const DecodedAudio audio =
      decode(wav_file(kTagFloat, 1, 8000, 64, double_bytes({0.125, -0.5, 1.25, 0.0})), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav double");
  expect_samples(audio.samples, {0.125f, -0.5f, 1.25f, 0.0f});
}

TEST(AudioDecoder, WavExtensiblePcm24) {
  const std::vector<uint8_t> bytes =
      wav_file(kTagPcm, 1, 8000, 24, pcm_bytes({-4194304, 2097152, 0, 8388607}, 24), /*extensible=*/true);
  const DecodedAudio audio = decode(bytes, at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav pcm_24");
  expect_samples(audio.samples, {-0.5f, 0.25f, 0.0f, 8388607.0f / 8388608});
}

TEST(AudioDecoder, WavExtensibleFloat) {
  const std::vector<float> values = {0.5f, -0.125f, 1.75f};
  const DecodedAudio audio =
      decode(wav_file(kTagFloat, 1, 8000, 32, float_bytes(values), /*extensible=*/true), at_rate(8000));
  EXPECT_EQ(audio.source_format, "wav float");
  expect_samples(audio.samples, values);
}

TEST(AudioDecoder, SourceFieldsAndDuration) {
  const DecodedAudio audio = decode(ramp_wav(2500));
  EXPECT_EQ(audio.sample_rate, 16000);
  EXPECT_EQ(audio.source_rate, 1000);
  EXPECT_EQ(audio.source_channels, 1);
  EXPECT_DOUBLE_EQ(audio.duration, 2.5);
  EXPECT_FALSE(audio.truncated);
}

// ---------------------------------------------------------------------------
// Channel mixing.

TEST(AudioDecoder, StereoMixesToChannelMean) {
  // Left +0.5, right -0.1 in every frame: the mean is 0.2.
  std::vector<float> interleaved;
  for (int frame = 0; frame < 100; ++frame) {
    interleaved.push_back(0.5f);
    interleaved.push_back(-0.1f);
  }
  const DecodedAudio audio =
      decode(wav_file(kTagFloat, 2, 8000, 32, float_bytes(interleaved)), at_rate(8000));
  EXPECT_EQ(audio.source_channels, 2);
  ASSERT_EQ(audio.samples.size(), 100u);
  for (float sample : audio.samples) EXPECT_FLOAT_EQ(sample, 0.2f);
}

TEST(AudioDecoder, ThreeChannelsMixPerFrame) {
  // Frame f contains 100 f, 200 f and 300 f in 16-bit PCM, so its mean is
  // 200 f / 32768.
  std::vector<int32_t> interleaved;
  for (int frame = 0; frame < 50; ++frame) {
    for (int channel = 1; channel <= 3; ++channel) interleaved.push_back(channel * frame * 100);
  }
  const DecodedAudio audio =
      decode(wav_file(kTagPcm, 3, 8000, 16, pcm_bytes(interleaved, 16)), at_rate(8000));
  EXPECT_EQ(audio.source_channels, 3);
  ASSERT_EQ(audio.samples.size(), 50u);
  for (int frame = 0; frame < 50; ++frame)
    EXPECT_FLOAT_EQ(audio.samples[frame], 200.0f * frame / 32768) << frame;
}

// ---------------------------------------------------------------------------
// Compressed formats and files made by sox.

TEST(AudioDecoder, FlacSine) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -b 16 " + dir.file("sine.flac") + " synth 1.0 sine 440 vol 0.5");
  const DecodedAudio audio = decode(read_bytes(dir.file("sine.flac")));
  EXPECT_EQ(audio.source_format, "flac pcm_16");
  EXPECT_EQ(audio.source_rate, 16000);
  EXPECT_DOUBLE_EQ(audio.duration, 1.0);
  EXPECT_EQ(audio.samples.size(), 16000u);
  expect_tone(audio.samples, 16000, 440);
}

TEST(AudioDecoder, OggVorbisSine) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 " + dir.file("sine.ogg") + " synth 1.0 sine 440 vol 0.5");
  const DecodedAudio audio = decode(read_bytes(dir.file("sine.ogg")));
  EXPECT_EQ(audio.source_format, "ogg vorbis");
  EXPECT_EQ(audio.source_rate, 16000);
  EXPECT_EQ(audio.samples.size(), 16000u);
  EXPECT_FALSE(audio.truncated);
  expect_tone(audio.samples, 16000, 440);
}

TEST(AudioDecoder, Mp3Sine) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -C 128 " + dir.file("sine.mp3") + " synth 1.0 sine 440 vol 0.5");
  const DecodedAudio audio = decode(read_bytes(dir.file("sine.mp3")));
  EXPECT_EQ(audio.source_format, "mpeg mp3");
  EXPECT_EQ(audio.source_rate, 16000);
  // The encoder adds padding, so the decoded length exceeds 1 s a little.
  EXPECT_GE(audio.samples.size(), 16000u);
  EXPECT_LT(audio.samples.size(), 16000u + 2048);
  // The near-silent padding adds zero crossings, so check the middle only.
  const std::vector<float> middle(audio.samples.begin() + 4000, audio.samples.begin() + 12000);
  expect_tone(middle, 16000, 440);
}

TEST(AudioDecoder, PathAndMemoryGiveSameSamples) {
  // sox writes 24-bit stereo wav as WAVE_FORMAT_EXTENSIBLE.
  ScratchDir dir("audio");
  const std::string path = dir.file("tones.wav");
  run("sox -n -r 22050 -b 24 -c 2 " + path + " synth 0.5 sine 440 sine 1000 vol 0.5");
  const DecodedAudio from_path = imp::decode_audio_file(path, {});
  const std::vector<uint8_t> bytes = read_bytes(path);
  const DecodedAudio from_memory = decode(bytes);
  EXPECT_EQ(from_path.source_format, "wav pcm_24");
  EXPECT_EQ(from_path.source_channels, 2);
  EXPECT_EQ(from_path.source_rate, 22050);
  ASSERT_EQ(from_path.samples.size(), from_memory.samples.size());
  EXPECT_NEAR(static_cast<double>(from_path.samples.size()), 8000, 2);
  EXPECT_EQ(from_path.samples, from_memory.samples);
}

TEST(AudioDecoder, PathWithStartAndLength) {
  ScratchDir dir("audio");
  const std::string path = dir.file("ramp.wav");
  write_bytes(path, ramp_wav(3000));
  AudioDecodeOptions options = at_rate(1000);
  options.start_seconds = 2.0;
  options.max_seconds = 0.25;
  const DecodedAudio audio = imp::decode_audio_file(path, options);
  ASSERT_EQ(audio.samples.size(), 250u);
  EXPECT_FLOAT_EQ(audio.samples.front(), 2000.0f / 32768);
  EXPECT_FLOAT_EQ(audio.samples.back(), 2249.0f / 32768);
}

// libsndfile 1.2 decodes a cut flac file up to its last complete block, so
// the decoder returns that prefix with truncated = true.
TEST(AudioDecoder, TruncatedFlacReturnsPrefix) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -b 16 " + dir.file("sine.flac") + " synth 1.0 sine 440 vol 0.5");
  const std::vector<uint8_t> whole = read_bytes(dir.file("sine.flac"));
  const std::vector<uint8_t> half(whole.begin(), whole.begin() + whole.size() / 2);
  const DecodedAudio full = decode(whole);
  const DecodedAudio cut = decode(half);
  EXPECT_TRUE(cut.truncated);
  EXPECT_DOUBLE_EQ(cut.duration, 1.0);
  ASSERT_GT(cut.samples.size(), 0u);
  ASSERT_LT(cut.samples.size(), full.samples.size());
  for (size_t i = 0; i < cut.samples.size(); ++i) ASSERT_FLOAT_EQ(cut.samples[i], full.samples[i]) << i;
}

// libsndfile 1.2 shortens a wav data chunk that runs past the end of the
// file, so a cut wav file reads as a complete shorter one.
TEST(AudioDecoder, TruncatedWavReadsAsShorterFile) {
  std::vector<uint8_t> bytes = ramp_wav(1000);
  bytes.resize(44 + 2 * 600);
  const DecodedAudio audio = decode(bytes, at_rate(1000));
  EXPECT_FALSE(audio.truncated);
  EXPECT_DOUBLE_EQ(audio.duration, 0.6);
  ASSERT_EQ(audio.samples.size(), 600u);
  EXPECT_FLOAT_EQ(audio.samples.back(), 599.0f / 32768);
}

// libsndfile 1.2 looks for the last Ogg page when it opens a file, so a cut
// ogg vorbis file is rejected at open.
TEST(AudioDecoder, TruncatedOggVorbisIsCorrupt) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 " + dir.file("sine.ogg") + " synth 1.0 sine 440 vol 0.5");
  std::vector<uint8_t> bytes = read_bytes(dir.file("sine.ogg"));
  bytes.resize(bytes.size() / 2);
  EXPECT_EQ(reason_of(bytes), "audio: corrupt");
}

// Returns the offset of the first audio frame of a flac file: the end of its
// metadata blocks, each a 4-byte header (last-block flag, type, 24-bit length)
// and its body.
size_t flac_audio_offset(const std::vector<uint8_t>& bytes) {
  size_t offset = 4;  // "fLaC"
  bool last = false;
  while (!last && offset + 4 <= bytes.size()) {
    last = (bytes[offset] & 0x80) != 0;
    offset += 4 + ((size_t{bytes[offset + 1]} << 16) | (size_t{bytes[offset + 2]} << 8) | bytes[offset + 3]);
  }
  return offset;
}

TEST(AudioDecoder, FlacCutAfterHeaderIsTruncated) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -b 16 " + dir.file("sine.flac") + " synth 1.0 sine 440 vol 0.5");
  std::vector<uint8_t> bytes = read_bytes(dir.file("sine.flac"));
  const size_t audio_offset = flac_audio_offset(bytes);
  ASSERT_LT(audio_offset + 20, bytes.size());
  bytes.resize(audio_offset + 20);
  EXPECT_EQ(reason_of(bytes), "audio: truncated");
}

TEST(AudioDecoder, FlacCutInHeaderIsCorrupt) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -b 16 " + dir.file("sine.flac") + " synth 1.0 sine 440");
  std::vector<uint8_t> bytes = read_bytes(dir.file("sine.flac"));
  bytes.resize(30);
  EXPECT_EQ(reason_of(bytes), "audio: corrupt");
}

// ---------------------------------------------------------------------------
// Resampling.

TEST(AudioDecoder, Upsample8kTo16kKeepsTone) {
  const DecodedAudio audio = decode(sine_wav(8000, 1000, 8000), at_rate(16000));
  EXPECT_EQ(audio.sample_rate, 16000);
  EXPECT_EQ(audio.source_rate, 8000);
  EXPECT_NEAR(static_cast<double>(audio.samples.size()), 16000, 4);
  expect_tone(audio.samples, 16000, 1000);
  // No image of the tone above the old Nyquist frequency (8 kHz - 1 kHz).
  EXPECT_GT(power_at(audio.samples, 16000, 1000), 1e6 * power_at(audio.samples, 16000, 7000));
}

TEST(AudioDecoder, DownsampleRemovesToneAboveNyquist) {
  // A 6 kHz tone cannot be represented at 8 kHz. The anti-aliasing filter
  // must remove it instead of folding it to 2 kHz. A 1 kHz tone passes.
  const DecodedAudio high = decode(sine_wav(16000, 6000, 16000), at_rate(8000));
  const DecodedAudio low = decode(sine_wav(16000, 1000, 16000), at_rate(8000));
  EXPECT_NEAR(static_cast<double>(high.samples.size()), 8000, 4);
  EXPECT_GT(power_at(low.samples, 8000, 1000), 1e6 * power_at(high.samples, 8000, 2000));
  expect_tone(low.samples, 8000, 1000);
}

// ---------------------------------------------------------------------------
// Parts of a file and limits.

TEST(AudioDecoder, StartAndMaxSecondsPickPart) {
  AudioDecodeOptions options = at_rate(1000);
  options.start_seconds = 1.0;
  options.max_seconds = 0.5;
  const DecodedAudio audio = decode(ramp_wav(3000), options);
  ASSERT_EQ(audio.samples.size(), 500u);
  for (int i = 0; i < 500; ++i) ASSERT_FLOAT_EQ(audio.samples[i], (1000.0f + i) / 32768) << i;
  EXPECT_DOUBLE_EQ(audio.duration, 3.0);
  EXPECT_FALSE(audio.truncated);
}

TEST(AudioDecoder, MaxSecondsStopsAtEnd) {
  AudioDecodeOptions options = at_rate(1000);
  options.start_seconds = 2.5;
  options.max_seconds = 1e300;
  const DecodedAudio audio = decode(ramp_wav(3000), options);
  ASSERT_EQ(audio.samples.size(), 500u);
  EXPECT_FLOAT_EQ(audio.samples.front(), 2500.0f / 32768);
  EXPECT_FLOAT_EQ(audio.samples.back(), 2999.0f / 32768);
  EXPECT_FALSE(audio.truncated);
}

TEST(AudioDecoder, StartInFlacSeeks) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -b 16 " + dir.file("sine.flac") + " synth 1.0 sine 440 vol 0.5");
  const std::vector<uint8_t> bytes = read_bytes(dir.file("sine.flac"));
  const DecodedAudio whole = decode(bytes);
  AudioDecodeOptions options;
  options.start_seconds = 0.5;
  options.max_seconds = 0.25;
  const DecodedAudio part = decode(bytes, options);
  ASSERT_EQ(part.samples.size(), 4000u);
  for (size_t i = 0; i < part.samples.size(); ++i)
    ASSERT_FLOAT_EQ(part.samples[i], whole.samples[8000 + i]) << i;
}

TEST(AudioDecoder, StartInOggVorbisSeeks) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 " + dir.file("sine.ogg") + " synth 1.0 sine 440 vol 0.5");
  const std::vector<uint8_t> bytes = read_bytes(dir.file("sine.ogg"));
  const DecodedAudio whole = decode(bytes);
  AudioDecodeOptions options;
  options.start_seconds = 0.5;
  options.max_seconds = 0.25;
  const DecodedAudio part = decode(bytes, options);
  ASSERT_EQ(part.samples.size(), 4000u);
  for (size_t i = 0; i < part.samples.size(); ++i)
    ASSERT_FLOAT_EQ(part.samples[i], whole.samples[8000 + i]) << i;
}

TEST(AudioDecoder, StartPastEndIsRejected) {
  AudioDecodeOptions options = at_rate(1000);
  options.start_seconds = 3.0;
  EXPECT_EQ(reason_of(ramp_wav(3000), options), "audio: start past end");
  options.start_seconds = 1e300;
  EXPECT_EQ(reason_of(ramp_wav(3000), options), "audio: start past end");
}

TEST(AudioDecoder, MaxFramesLimit) {
  AudioDecodeOptions options = at_rate(1000);
  options.max_frames = 1000;
  EXPECT_EQ(reason_of(ramp_wav(3000), options), "audio: too long");
  // A part within the limit of a longer file is fine.
  options.max_seconds = 1.0;
  EXPECT_EQ(decode(ramp_wav(3000), options).samples.size(), 1000u);
}

TEST(AudioDecoder, DefaultLimitIsOneHour) {
  // A header that claims 2 hours of 1 kHz audio is rejected before reading.
  std::vector<uint8_t> bytes = ramp_wav(10);
  const uint32_t claimed_bytes = 2 * 3600 * 1000 * 2;
  for (int byte = 0; byte < 4; ++byte) bytes[40 + byte] = (claimed_bytes >> (8 * byte)) & 0xFF;
  // libsndfile shortens a data chunk that runs past the end of the file, so
  // the file must really hold that much audio. Pad it with zero samples.
  bytes.resize(44 + claimed_bytes, 0);
  EXPECT_EQ(reason_of(bytes, at_rate(1000)), "audio: too long");
}

TEST(AudioDecoder, InvalidOptionsThrow) {
  const std::vector<uint8_t> bytes = ramp_wav(100);
  AudioDecodeOptions options;
  options.sample_rate = 0;
  EXPECT_THROW(decode(bytes, options), std::invalid_argument);
  options = {};
  options.start_seconds = -1;
  EXPECT_THROW(decode(bytes, options), std::invalid_argument);
  options = {};
  options.max_seconds = std::nan("");
  EXPECT_THROW(decode(bytes, options), std::invalid_argument);
  options = {};
  options.max_frames = -5;
  EXPECT_THROW(decode(bytes, options), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// Bad input.

TEST(AudioDecoder, EmptyInput) { EXPECT_EQ(reason_of({}), "audio: empty"); }

TEST(AudioDecoder, RandomBytesAreUnknownFormat) {
  std::mt19937 generator(7);
  std::vector<uint8_t> bytes(4096);
  for (uint8_t& byte : bytes) byte = static_cast<uint8_t>(generator());
  EXPECT_EQ(reason_of(bytes), "audio: unknown format");
}

TEST(AudioDecoder, TextIsUnknownFormat) {
  const std::string text = "id,transcript\n0001,hello world\n0002,good morning\n";
  EXPECT_EQ(reason_of(std::vector<uint8_t>(text.begin(), text.end())), "audio: unknown format");
}

TEST(AudioDecoder, HeaderWithoutSamples) {
  EXPECT_EQ(reason_of(wav_file(kTagPcm, 1, 8000, 16, {})), "audio: no samples");
}

TEST(AudioDecoder, NanSampleIsRejected) {
  const std::vector<float> values = {0.5f, std::numeric_limits<float>::quiet_NaN(), 0.25f};
  EXPECT_EQ(reason_of(wav_file(kTagFloat, 1, 8000, 32, float_bytes(values))), "audio: non-finite sample");
}

TEST(AudioDecoder, MissingFile) {
  ScratchDir dir("audio");
  try {
    imp::decode_audio_file(dir.file("missing.wav"), {});
    FAIL() << "no DecodeError";
  } catch (const DecodeError& error) {
    EXPECT_EQ(error.reason(), "audio: cannot open");
    EXPECT_NE(std::string(error.what()).find("missing.wav"), std::string::npos);
  }
}

TEST(AudioDecoder, DirectoryIsNotReadable) {
  ScratchDir dir("audio");
  try {
    imp::decode_audio_file(dir.path(), {});
    FAIL() << "no DecodeError";
  } catch (const DecodeError& error) {
    EXPECT_EQ(error.reason(), "audio: cannot open");
  }
}

TEST(AudioDecoder, EmptyFileOnDisk) {
  ScratchDir dir("audio");
  write_bytes(dir.file("empty.wav"), {});
  try {
    imp::decode_audio_file(dir.file("empty.wav"), {});
    FAIL() << "no DecodeError";
  } catch (const DecodeError& error) {
    EXPECT_EQ(error.reason(), "audio: empty");
  }
}

// ---------------------------------------------------------------------------
// Probing and threads.

TEST(AudioDecoder, ProbeReadsHeader) {
  std::vector<int32_t> interleaved(2 * 4410, 0);
  const std::vector<uint8_t> bytes = wav_file(kTagPcm, 2, 44100, 24, pcm_bytes(interleaved, 24));
  const imp::AudioInfo info = imp::probe_audio(bytes.data(), bytes.size(), "probe.wav");
  EXPECT_EQ(info.sample_rate, 44100);
  EXPECT_EQ(info.channels, 2);
  EXPECT_EQ(info.frames, 4410);
  EXPECT_DOUBLE_EQ(info.duration, 0.1);
  EXPECT_EQ(info.format, "wav pcm_24");
}

TEST(AudioDecoder, ProbeRejectsText) {
  const std::string text = "not audio";
  try {
    imp::probe_audio(reinterpret_cast<const uint8_t*>(text.data()), text.size(), "notes.txt");
    FAIL() << "no DecodeError";
  } catch (const DecodeError& error) {
    EXPECT_EQ(error.reason(), "audio: unknown format");
    EXPECT_NE(std::string(error.what()).find("notes.txt"), std::string::npos);
  }
}

TEST(AudioDecoder, ConcurrentDecodesMatchSerial) {
  ScratchDir dir("audio");
  run("sox -n -r 16000 -b 16 " + dir.file("sine.flac") + " synth 0.5 sine 440 vol 0.5");
  const std::vector<uint8_t> flac = read_bytes(dir.file("sine.flac"));
  const std::vector<uint8_t> wav = sine_wav(8000, 1000, 4000);
  const std::string text = "plain text, not audio";
  AudioDecodeOptions options;
  options.sample_rate = 22050;
  const DecodedAudio flac_expected = decode(flac, options);
  const DecodedAudio wav_expected = decode(wav, options);

  // Each thread decodes both files and one failing input, so that opens,
  // failed opens and resampling overlap.
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10; ++round) {
        if (decode(flac, options).samples != flac_expected.samples) ++mismatches[t];
        if (decode(wav, options).samples != wav_expected.samples) ++mismatches[t];
        try {
          imp::decode_audio(reinterpret_cast<const uint8_t*>(text.data()), text.size(), options, "text");
          ++mismatches[t];
        } catch (const DecodeError& error) {
          if (error.reason() != "audio: unknown format") ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

}  // namespace
