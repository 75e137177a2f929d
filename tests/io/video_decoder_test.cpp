// Tests for the FFmpeg video decoder. The clips are made at run time with the
// ffmpeg command-line tool: most are 64x48 and flat grey, and frame n has the
// luma 16 + 10 n, so the RGB value of any pixel identifies the frame that an
// output frame came from.
#include "imp/io/video_decoder.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "imp/io/decode_error.h"
#include "../scratch_dir.h"

namespace {

using imp::DecodedVideo;
using imp::VideoDecodeOptions;

// Every clip of this file lives here until the test program exits.
const imp::testing::ScratchDir& scratch() {
  static const imp::testing::ScratchDir directory("video_decoder");
  return directory;
}

// Runs a shell command and returns its exit status.
int run_command(const std::string& command) { return std::system(command.c_str()); }

// Makes scratch file `name` with `ffmpeg -v error -y ARGS FILE` once and
// returns its path, or an empty string when ffmpeg fails.
std::string make_clip(const std::string& name, const std::string& args) {
  static std::map<std::string, std::string> made;
  const auto found = made.find(name);
  if (found != made.end()) return found->second;
  const std::string path = scratch().file(name);
  if (run_command("ffmpeg -nostdin -v error -y " + args + " '" + path + "'") != 0) return "";
  made[name] = path;
  return path;
}

// 2 s at 10 frames/s, frame n flat grey with luma 16 + 10 n. The filter
// must follow every input of the ffmpeg command.
const std::string kGreySource = "-f lavfi -i color=black:s=64x48:r=10:d=2";
const std::string kGreyFilter = "-vf \"format=yuv420p,geq=lum='16+10*N':cb=128:cr=128\"";
const std::string kGreyInput = kGreySource + " " + kGreyFilter;

std::string grey_mp4() { return make_clip("grey.mp4", kGreyInput + " -c:v mpeg4 -q:v 2 -g 10"); }

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

DecodedVideo decode_bytes(const std::vector<uint8_t>& bytes, const VideoDecodeOptions& options) {
  return imp::decode_video(bytes.data(), bytes.size(), options, "test clip");
}

// RGB of pixel (row, column) of output frame `index`.
const uint8_t* pixel(const DecodedVideo& video, int index, int row, int column) {
  const size_t offset = ((static_cast<size_t>(index) * video.height + row) * video.width + column) * 3;
  return video.pixels.data() + offset;
}

// Number of the grey source frame that output frame `index` shows, read from
// its centre pixel: luma 16 + 10 n is RGB 10 n * 255 / 219.
int grey_frame_number(const DecodedVideo& video, int index) {
  const uint8_t* centre = pixel(video, index, video.height / 2, video.width / 2);
  return static_cast<int>(std::lround(centre[1] / (10.0 * 255.0 / 219.0)));
}

std::vector<int> grey_frame_numbers(const DecodedVideo& video) {
  std::vector<int> numbers;
  for (int i = 0; i < video.frames; ++i) numbers.push_back(grey_frame_number(video, i));
  return numbers;
}

// Reason of the DecodeError that `decode` throws, or "" when it throws none.
template <typename Function>
std::string decode_error_reason(Function decode) {
  try {
    decode();
  } catch (const imp::DecodeError& error) {
    return error.reason();
  }
  return "";
}

// Frequency of a tone from its zero crossings going upward.
double zero_crossing_frequency(const std::vector<float>& samples, int sample_rate) {
  int crossings = 0;
  for (size_t i = 1; i < samples.size(); ++i) {
    if (samples[i - 1] < 0 && samples[i] >= 0) ++crossings;
  }
  return crossings * static_cast<double>(sample_rate) / static_cast<double>(samples.size());
}

TEST(VideoDecoder, Mp4SpreadsFramesOverClip) {
  const std::string path = grey_mp4();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 5;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);

  EXPECT_EQ(video.frames, 5);
  EXPECT_EQ(video.width, 64);
  EXPECT_EQ(video.height, 48);
  EXPECT_EQ(video.pixels.size(), 5u * 48 * 64 * 3);
  EXPECT_NEAR(video.duration, 2.0, 1e-6);
  EXPECT_EQ(video.window_start, 0.0);
  EXPECT_EQ(video.rotation, 0);
  EXPECT_EQ(video.padded_frames, 0);
  EXPECT_FALSE(video.truncated);
  EXPECT_FALSE(video.has_audio);
  EXPECT_TRUE(video.audio.empty());
  // Targets 0, 0.4, 0.8, 1.2 and 1.6 s.
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 4, 8, 12, 16}));
  ASSERT_EQ(video.frame_times.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(video.frame_times[i], 0.4 * i, 1e-6) << "frame " << i;
  // A flat grey frame is grey in every pixel.
  const uint8_t* corner = pixel(video, 2, 0, 0);
  EXPECT_NEAR(corner[0], corner[1], 2);
  EXPECT_NEAR(corner[2], corner[1], 2);
  EXPECT_NEAR(corner[1], 80 * 255.0 / 219.0, 3);
}

TEST(VideoDecoder, TargetRateWindowStart) {
  const std::string path = grey_mp4();
  ASSERT_FALSE(path.empty());
  const std::vector<uint8_t> bytes = read_bytes(path);
  VideoDecodeOptions options;
  options.frames = 4;
  options.fps = 5;  // a 0.8 s window in a 2 s clip leaves 1.2 s of slack

  options.start_fraction = 0.0;
  DecodedVideo video = decode_bytes(bytes, options);
  EXPECT_EQ(video.window_start, 0.0);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 2, 4, 6}));

  options.start_fraction = 0.5;
  video = decode_bytes(bytes, options);
  EXPECT_NEAR(video.window_start, 0.6, 1e-9);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{6, 8, 10, 12}));

  // Starts after the keyframe at 1.0 s, reached by seeking.
  options.start_fraction = 1.0;
  video = decode_bytes(bytes, options);
  EXPECT_NEAR(video.window_start, 1.2, 1e-9);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{12, 14, 16, 18}));
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(video.frame_times[i], 1.2 + 0.2 * i, 1e-6) << "frame " << i;
  EXPECT_EQ(video.padded_frames, 0);
}

bool ffmpeg_has_encoder(const std::string& name) {
  return run_command("ffmpeg -hide_banner -encoders 2>/dev/null | grep -qw " + name) == 0;
}

TEST(VideoDecoder, H264WithBFrames) {
  if (!ffmpeg_has_encoder("libx264")) GTEST_SKIP() << "this ffmpeg has no libx264 encoder";
  // B-frames make the decode order differ from the presentation order.
  const std::string path =
      make_clip("grey_h264.mp4", kGreyInput + " -c:v libx264 -crf 10 -bf 2 -g 10 -sc_threshold 0");
  ASSERT_FALSE(path.empty());
  const std::vector<uint8_t> bytes = read_bytes(path);
  VideoDecodeOptions options;
  options.frames = 5;
  DecodedVideo video = decode_bytes(bytes, options);
  EXPECT_NEAR(video.duration, 2.0, 1e-6);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 4, 8, 12, 16}));

  options.frames = 4;
  options.fps = 5;
  options.start_fraction = 0.35;  // window start 0.42 s, between frames 4 and 5
  video = decode_bytes(bytes, options);
  EXPECT_NEAR(video.window_start, 0.42, 1e-9);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{4, 6, 8, 10}));
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(video.frame_times[i], 0.4 + 0.2 * i, 1e-6) << "frame " << i;
}

TEST(VideoDecoder, WebmVp9) {
  const std::string path =
      make_clip("grey.webm", kGreyInput + " -c:v libvpx-vp9 -crf 10 -b:v 0 -g 10 -deadline realtime");
  ASSERT_FALSE(path.empty());
  const std::vector<uint8_t> bytes = read_bytes(path);
  VideoDecodeOptions options;
  options.frames = 5;
  DecodedVideo video = decode_bytes(bytes, options);
  EXPECT_NEAR(video.duration, 2.0, 1e-3);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 4, 8, 12, 16}));

  options.frames = 3;
  options.fps = 10;
  options.start_fraction = 1.0;
  video = decode_bytes(bytes, options);
  EXPECT_NEAR(video.window_start, 1.7, 1e-3);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{17, 18, 19}));
}

TEST(VideoDecoder, MkvFromPath) {
  const std::string path = make_clip("grey.mkv", kGreyInput + " -c:v ffv1");
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 4;
  options.fps = 2;
  const DecodedVideo video = imp::decode_video_file(path, options);
  EXPECT_NEAR(video.duration, 2.0, 1e-3);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 5, 10, 15}));
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(video.frame_times[i], 0.5 * i, 1e-6) << "frame " << i;
}

TEST(VideoDecoder, VariableFrameRate) {
  // 12 frames at 0, 0.02, 0.08, 0.18, 0.32, 0.5, 0.72, 0.98, 1.28, 1.62, 2.0
  // and 2.42 s: frame n is shown at 0.02 n^2.
  const std::string path = make_clip(
      "vfr.mp4",
      "-f lavfi -i color=black:s=64x48:r=10:d=1.2 -vf \"format=yuv420p,geq=lum='16+10*N':cb=128:cr=128,"
      "settb=1/1000,setpts='N*N*20'\" -fps_mode vfr -enc_time_base 1/1000 -c:v mpeg4 -q:v 2");
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 8;
  options.fps = 4;  // targets every 0.25 s from 0
  const DecodedVideo video = decode_bytes(read_bytes(path), options);

  // The expected frame is the one on screen at each target. Sampling by
  // frame index at a constant rate would pick other frames.
  const std::vector<int> expected_frames{0, 3, 5, 6, 7, 7, 8, 9};
  EXPECT_EQ(grey_frame_numbers(video), expected_frames);
  ASSERT_EQ(video.frame_times.size(), expected_frames.size());
  for (size_t i = 0; i < expected_frames.size(); ++i) {
    const double shown_at = 0.02 * expected_frames[i] * expected_frames[i];
    EXPECT_NEAR(video.frame_times[i], shown_at, 1e-6) << "output frame " << i;
  }
  EXPECT_EQ(video.padded_frames, 0);
}

// A blue 64x48 clip with a red 16x16 square in the top-left corner, whose
// mp4 carries a `rotate` tag. Returns the rotated clip's path.
std::string corner_clip_rotated(int degrees) {
  const std::string plain = make_clip(
      "corner.mp4",
      "-f lavfi -i color=blue:s=64x48:r=10:d=0.3 -vf drawbox=x=0:y=0:w=16:h=16:color=red:t=fill -c:v mpeg4 -q:v 2");
  if (plain.empty()) return "";
  const std::string tag = std::to_string(degrees);
  return make_clip("corner_" + tag + ".mp4", "-i '" + plain + "' -c copy -metadata:s:v:0 rotate=" + tag);
}

bool is_red(const uint8_t* rgb) { return rgb[0] > 200 && rgb[1] < 60 && rgb[2] < 60; }

// Which corner of output frame 0 is red: "top-left", "top-right", ... or "".
std::string red_corner(const DecodedVideo& video) {
  const int bottom = video.height - 3, right = video.width - 3;
  std::string corner;
  if (is_red(pixel(video, 0, 2, 2))) corner += "top-left";
  if (is_red(pixel(video, 0, 2, right))) corner += "top-right";
  if (is_red(pixel(video, 0, bottom, 2))) corner += "bottom-left";
  if (is_red(pixel(video, 0, bottom, right))) corner += "bottom-right";
  return corner;
}

// Where the top-left corner goes when an image turns `degrees` clockwise.
std::string corner_after_rotation(int degrees) {
  switch (degrees) {
    case 0: return "top-left";
    case 90: return "top-right";
    case 180: return "bottom-right";
    case 270: return "bottom-left";
  }
  return "invalid rotation";
}

TEST(VideoDecoder, RotationMetadata) {
  for (int tag : {90, 270}) {
    SCOPED_TRACE("rotate=" + std::to_string(tag));
    const std::string path = corner_clip_rotated(tag);
    ASSERT_FALSE(path.empty());
    VideoDecodeOptions options;
    options.frames = 1;
    const DecodedVideo video = decode_bytes(read_bytes(path), options);

    // FFmpeg 5.1's mp4 muxer turns the tag into a display matrix. The
    // decoder must follow that matrix, whichever way it turns, as the ffmpeg
    // tool does when it displays the clip.
    EXPECT_TRUE(video.rotation == 90 || video.rotation == 270) << video.rotation;
    EXPECT_EQ(video.width, 48);
    EXPECT_EQ(video.height, 64);
    EXPECT_EQ(red_corner(video), corner_after_rotation(video.rotation));

    // The ffmpeg tool rotates by the display matrix by default.
    const std::string reference = scratch().file("reference_" + std::to_string(tag) + ".rgb");
    ASSERT_EQ(run_command("ffmpeg -nostdin -v error -y -i '" + path + "' -frames:v 1 -f rawvideo -pix_fmt rgb24 '" +
                          reference + "'"),
              0);
    const std::vector<uint8_t> expected = read_bytes(reference);
    ASSERT_EQ(expected.size(), static_cast<size_t>(video.width) * video.height * 3);
    const int probe_points[4][2] = {{2, 2}, {2, video.width - 3}, {video.height - 3, 2},
                                    {video.height - 3, video.width - 3}};
    for (const auto& point : probe_points) {
      const size_t offset = (static_cast<size_t>(point[0]) * video.width + point[1]) * 3;
      for (int channel = 0; channel < 3; ++channel) {
        EXPECT_NEAR(pixel(video, 0, point[0], point[1])[channel], expected[offset + channel], 12)
            << "row " << point[0] << " column " << point[1] << " channel " << channel;
      }
    }
  }
  // The two tags turn opposite ways.
  VideoDecodeOptions options;
  options.frames = 1;
  const DecodedVideo turned_90 = decode_bytes(read_bytes(corner_clip_rotated(90)), options);
  const DecodedVideo turned_270 = decode_bytes(read_bytes(corner_clip_rotated(270)), options);
  EXPECT_EQ(turned_90.rotation + turned_270.rotation, 360);
}

TEST(VideoDecoder, UnrotatedCornerStaysTopLeft) {
  const std::string path = corner_clip_rotated(90);  // also makes corner.mp4
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 1;
  const DecodedVideo video = imp::decode_video_file(scratch().file("corner.mp4"), options);
  EXPECT_EQ(video.rotation, 0);
  EXPECT_EQ(video.width, 64);
  EXPECT_EQ(video.height, 48);
  EXPECT_EQ(red_corner(video), "top-left");
}

TEST(VideoDecoder, OneFrameClipPads) {
  const std::string path = make_clip(
      "one_frame.mp4", kGreyInput + " -frames:v 1 -c:v mpeg4 -q:v 2");
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 4;
  options.fps = 4;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_NEAR(video.duration, 0.1, 1e-6);
  EXPECT_EQ(video.padded_frames, 3);
  EXPECT_FALSE(video.truncated);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 0, 0, 0}));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(video.frame_times[i], 0.0) << "frame " << i;
  const size_t frame_bytes = video.pixels.size() / 4;
  for (int i = 1; i < 4; ++i) {
    EXPECT_TRUE(std::equal(video.pixels.begin(), video.pixels.begin() + frame_bytes,
                           video.pixels.begin() + i * frame_bytes))
        << "frame " << i;
  }
}

TEST(VideoDecoder, ClipShorterThanWindowPads) {
  const std::string path = grey_mp4();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 6;
  options.fps = 2;  // a 3 s window over a 2 s clip: targets 0 to 2.5 s
  options.start_fraction = 0.7;  // no slack, so the window starts at 0 anyway
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_EQ(video.window_start, 0.0);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 5, 10, 15, 19, 19}));
  EXPECT_EQ(video.padded_frames, 2);  // targets 2.0 and 2.5 s are past the end
  EXPECT_NEAR(video.frame_times[5], 1.9, 1e-6);
}

TEST(VideoDecoder, EmptyInputFailsAtOpen) {
  VideoDecodeOptions options;
  const std::vector<uint8_t> empty;
  EXPECT_EQ(decode_error_reason([&] { imp::decode_video(empty.data(), 0, options, "empty sample"); }),
            "video: cannot open");
  const std::string path = scratch().file("empty.mp4");
  write_bytes(path, {});
  EXPECT_EQ(decode_error_reason([&] { imp::decode_video_file(path, options); }), "video: cannot open");
  EXPECT_EQ(decode_error_reason([&] { imp::decode_video_file(scratch().file("missing.mp4"), options); }),
            "video: cannot open");
}

TEST(VideoDecoder, ErrorNamesClip) {
  const std::vector<uint8_t> garbage(1000, 0x42);
  try {
    imp::decode_video(garbage.data(), garbage.size(), VideoDecodeOptions(), "shard-0001.tar:clip7.mp4");
    FAIL() << "no DecodeError for 1000 bytes of 'B'";
  } catch (const imp::DecodeError& error) {
    EXPECT_EQ(error.reason(), "video: cannot open");
    EXPECT_NE(std::string(error.what()).find("shard-0001.tar:clip7.mp4"), std::string::npos) << error.what();
  }
}

TEST(VideoDecoder, Mp4WithoutMoovFailsAtOpen) {
  const std::string path = grey_mp4();  // not faststart: moov follows mdat
  ASSERT_FALSE(path.empty());
  const std::vector<uint8_t> bytes = read_bytes(path);
  const std::string text(bytes.begin(), bytes.end());
  const size_t moov = text.find("moov");
  ASSERT_NE(moov, std::string::npos);
  ASSERT_GT(moov, text.find("mdat"));
  // Everything before the moov box's size field.
  const std::vector<uint8_t> head(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(moov - 4));
  EXPECT_EQ(decode_error_reason([&] { decode_bytes(head, VideoDecodeOptions()); }), "video: cannot open");
}

TEST(VideoDecoder, TruncatedFileUsesFramesDecoded) {
  const std::string path =
      make_clip("faststart.mp4", kGreyInput + " -c:v mpeg4 -q:v 2 -g 10 -movflags +faststart");
  ASSERT_FALSE(path.empty());
  std::vector<uint8_t> bytes = read_bytes(path);
  // Keep the moov index, which faststart puts first, and half of the frame
  // data after it.
  const std::string text(bytes.begin(), bytes.end());
  const size_t mdat = text.find("mdat");
  ASSERT_NE(mdat, std::string::npos);
  ASSERT_GT(mdat, text.find("moov"));
  bytes.resize(mdat + (bytes.size() - mdat) / 2);
  VideoDecodeOptions options;
  options.frames = 5;
  options.time_limit_seconds = 5;
  const DecodedVideo video = decode_bytes(bytes, options);

  // The index still lists 2 s of frames but half of them are gone: the
  // decoder reports the cut and repeats the last whole frame it got.
  EXPECT_TRUE(video.truncated);
  EXPECT_GE(video.padded_frames, 1);
  EXPECT_LE(video.padded_frames, 3);
  const std::vector<int> numbers = grey_frame_numbers(video);
  const int last_real = 4 - video.padded_frames;
  for (int i = 0; i <= last_real; ++i) EXPECT_EQ(numbers[i], 4 * i) << "frame " << i;
  for (int i = last_real + 1; i < 5; ++i) {
    EXPECT_EQ(numbers[i], numbers[last_real]) << "frame " << i;
    EXPECT_EQ(video.frame_times[i], video.frame_times[last_real]) << "frame " << i;
    EXPECT_LT(video.frame_times[i], 0.4 * i) << "frame " << i;
  }
}

TEST(VideoDecoder, TruncatedWebmDoesNotHang) {
  const std::string path =
      make_clip("grey.webm", kGreyInput + " -c:v libvpx-vp9 -crf 10 -b:v 0 -g 10 -deadline realtime");
  ASSERT_FALSE(path.empty());
  std::vector<uint8_t> bytes = read_bytes(path);
  bytes.resize(bytes.size() / 2);
  VideoDecodeOptions options;
  options.frames = 5;
  options.time_limit_seconds = 5;
  const DecodedVideo video = decode_bytes(bytes, options);
  // Matroska reports a cut file as a plain end of file, so only the padding
  // shows it.
  EXPECT_GT(video.padded_frames, 0);
  EXPECT_EQ(grey_frame_number(video, 0), 0);
}

// A 2 s clip of the grey frames with a 440 Hz sine, its audio stream stored
// before the video stream.
std::string audio_first_mp4() {
  return make_clip("audio_first.mp4", kGreySource +
                                          " -f lavfi -i sine=frequency=440:sample_rate=44100:duration=2 " +
                                          kGreyFilter + " -map 1:a -map 0:v -c:v mpeg4 -q:v 2 -c:a aac -ac 2");
}

TEST(VideoDecoder, AudioStreamBeforeVideo) {
  const std::string path = audio_first_mp4();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 5;
  options.want_audio = true;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 4, 8, 12, 16}));
  EXPECT_TRUE(video.has_audio);
  EXPECT_EQ(video.audio.size(), static_cast<size_t>(std::lround(video.duration * 16000)));
  EXPECT_NEAR(zero_crossing_frequency(video.audio, 16000), 440.0, 5.0);
}

TEST(VideoDecoder, NoAudioStreamWhileWanted) {
  const std::string path = grey_mp4();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 2;
  options.want_audio = true;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_FALSE(video.has_audio);
  EXPECT_TRUE(video.audio.empty());
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 10}));
}

std::string tone_mkv();

TEST(VideoDecoder, StereoToneToMonoWindow) {
  // A 440 Hz sine of amplitude 0.3 on the left and 0.1 on the right, as
  // 16-bit PCM so that the amplitudes survive.
  const std::string path = tone_mkv();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 5;
  options.fps = 5;  // a 1 s window
  options.start_fraction = 0.5;
  options.want_audio = true;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_NEAR(video.window_start, 0.5, 1e-9);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{5, 7, 9, 11, 13}));
  ASSERT_TRUE(video.has_audio);
  ASSERT_EQ(video.audio.size(), 16000u);
  EXPECT_NEAR(zero_crossing_frequency(video.audio, 16000), 440.0, 2.0);
  float peak = 0;
  for (float sample : video.audio) peak = std::max(peak, std::abs(sample));
  // The mix is the channels' mean, 0.2 sin; a sum would peak at 0.4.
  EXPECT_NEAR(peak, 0.2, 0.01);
  // The sine starts at 0 s, so the window's first sample, at 0.5 s, has the
  // phase 2 pi 440 * 0.5 = 0 mod 2 pi.
  for (int i : {0, 5, 9, 100}) {
    EXPECT_NEAR(video.audio[i], 0.2 * std::sin(2 * M_PI * 440 * i / 16000.0), 0.01) << "sample " << i;
  }
}

// The tone clip of StereoToneToMonoWindow.
std::string tone_mkv() {
  return make_clip("tone.mkv", kGreySource +
                                   " -f lavfi -i \"aevalsrc=0.3*sin(2*PI*440*t)|0.1*sin(2*PI*440*t):s=44100:d=2\" " +
                                   kGreyFilter + " -c:v mpeg4 -q:v 2 -c:a pcm_s16le");
}

TEST(VideoDecoder, AudioWindowAfterSeek) {
  const std::string path = tone_mkv();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 5;
  options.fps = 10;
  options.start_fraction = 1.0;  // the window is [1.5, 2.0) s
  options.want_audio = true;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_NEAR(video.window_start, 1.5, 1e-9);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{15, 16, 17, 18, 19}));
  ASSERT_EQ(video.audio.size(), 8000u);
  EXPECT_NEAR(zero_crossing_frequency(video.audio, 16000), 440.0, 4.0);
  float first_peak = 0;
  for (size_t i = 0; i < 40; ++i) first_peak = std::max(first_peak, std::abs(video.audio[i]));
  EXPECT_NEAR(first_peak, 0.2, 0.01);  // no silence at the start
  // At 1.5 s the sine has made 660 whole turns, so it rises through 0 at
  // the start of the window and every 16000 / 440 samples after it. The
  // Matroska timestamps place the audio only to the nearest millisecond.
  size_t crossing = 1;
  while (crossing < video.audio.size() && !(video.audio[crossing - 1] < 0 && video.audio[crossing] >= 0)) ++crossing;
  const double period = 16000.0 / 440.0;
  const double phase_error = std::remainder(static_cast<double>(crossing), period);
  EXPECT_LE(std::abs(phase_error), 0.5e-3 * 16000 + 1) << "first rising zero crossing at sample " << crossing;
}

TEST(VideoDecoder, AudioStartingLateLeavesSilence) {
  // The tone starts 1.8 s into the 2 s video, after the window start.
  const std::string path = make_clip(
      "late_audio.mkv", kGreySource + " -itsoffset 1.8 -f lavfi -i \"aevalsrc=0.2*sin(2*PI*440*t):s=44100:d=2\" " +
                            kGreyFilter + " -c:v mpeg4 -q:v 2 -c:a pcm_s16le");
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 4;
  options.fps = 10;
  options.start_fraction = 1.0;  // the window is [1.6, 2.0) s
  options.want_audio = true;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  EXPECT_NEAR(video.duration, 2.0, 1e-6);  // of the video, not the 3.8 s container
  EXPECT_NEAR(video.window_start, 1.6, 1e-9);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{16, 17, 18, 19}));
  ASSERT_EQ(video.audio.size(), 6400u);
  float silent_peak = 0, tone_peak = 0;
  for (size_t i = 0; i < 3150; ++i) silent_peak = std::max(silent_peak, std::abs(video.audio[i]));
  for (size_t i = 3250; i < 6400; ++i) tone_peak = std::max(tone_peak, std::abs(video.audio[i]));
  EXPECT_EQ(silent_peak, 0.0f);
  EXPECT_NEAR(tone_peak, 0.2, 0.01);
}

TEST(VideoDecoder, AudioPastClipEndIsSilent) {
  const std::string path = audio_first_mp4();
  ASSERT_FALSE(path.empty());
  VideoDecodeOptions options;
  options.frames = 3;
  options.fps = 1;  // a 3 s window over a 2 s clip
  options.want_audio = true;
  const DecodedVideo video = decode_bytes(read_bytes(path), options);
  ASSERT_EQ(video.audio.size(), 48000u);
  EXPECT_EQ(video.padded_frames, 1);
  float early_peak = 0, late_peak = 0;
  for (size_t i = 0; i < 16000; ++i) early_peak = std::max(early_peak, std::abs(video.audio[i]));
  for (size_t i = 40000; i < 48000; ++i) late_peak = std::max(late_peak, std::abs(video.audio[i]));
  EXPECT_GT(early_peak, 0.05f);
  EXPECT_EQ(late_peak, 0.0f);
}

TEST(VideoDecoder, TimeLimitEnforced) {
  const std::string path = grey_mp4();
  ASSERT_FALSE(path.empty());
  const std::vector<uint8_t> bytes = read_bytes(path);
  VideoDecodeOptions options;
  options.time_limit_seconds = 1e-6;
  EXPECT_EQ(decode_error_reason([&] { decode_bytes(bytes, options); }), "video: time limit");
  options.time_limit_seconds = 0;  // no limit
  EXPECT_EQ(decode_bytes(bytes, options).frames, 8);
}

TEST(VideoDecoder, ShortSideScaling) {
  VideoDecodeOptions options;
  options.frames = 2;
  options.short_side = 24;
  const DecodedVideo video = decode_bytes(read_bytes(grey_mp4()), options);
  EXPECT_EQ(video.width, 32);
  EXPECT_EQ(video.height, 24);
  EXPECT_EQ(video.pixels.size(), 2u * 32 * 24 * 3);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 10}));

  options.short_side = 96;  // enlarging
  const DecodedVideo large = decode_bytes(read_bytes(grey_mp4()), options);
  EXPECT_EQ(large.width, 128);
  EXPECT_EQ(large.height, 96);
  EXPECT_EQ(grey_frame_numbers(large), (std::vector<int>{0, 10}));

  // The short side of a portrait result is its width.
  options.short_side = 24;
  const DecodedVideo rotated = decode_bytes(read_bytes(corner_clip_rotated(90)), options);
  EXPECT_EQ(rotated.width, 24);
  EXPECT_EQ(rotated.height, 32);
  EXPECT_EQ(red_corner(rotated), corner_after_rotation(rotated.rotation));
}

TEST(VideoDecoder, MaxPixelsRejectsAtOpen) {
  const std::vector<uint8_t> bytes = read_bytes(grey_mp4());
  VideoDecodeOptions options;
  options.max_pixels = 64 * 48 - 1;
  EXPECT_EQ(decode_error_reason([&] { decode_bytes(bytes, options); }), "video: too large");
  options.max_pixels = 64 * 48;
  EXPECT_EQ(decode_bytes(bytes, options).width, 64);
}

TEST(VideoDecoder, NoVideoStream) {
  const std::string path = make_clip("tone_only.m4a", "-f lavfi -i sine=frequency=440:duration=1 -c:a aac");
  ASSERT_FALSE(path.empty());
  EXPECT_EQ(decode_error_reason([&] { imp::decode_video_file(path, VideoDecodeOptions()); }),
            "video: no video stream");
}

TEST(VideoDecoder, UnknownDurationScansPackets) {
  // Written to a pipe, the webm muxer cannot go back to store the duration
  // or a seek index.
  const std::string path = scratch().file("live.webm");
  ASSERT_EQ(run_command("ffmpeg -nostdin -v error -y " + kGreyInput +
                        " -c:v libvpx -b:v 1M -g 10 -deadline realtime -f webm pipe:1 > '" + path + "'"),
            0);
  ASSERT_EQ(imp::probe_video_file(path).frame_count, 0);
  VideoDecodeOptions options;
  options.frames = 5;
  DecodedVideo video = imp::decode_video_file(path, options);
  EXPECT_NEAR(video.duration, 2.0, 1e-3);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{0, 4, 8, 12, 16}));

  options.frames = 2;
  options.fps = 5;
  options.start_fraction = 1.0;
  video = imp::decode_video_file(path, options);
  EXPECT_NEAR(video.window_start, 1.6, 1e-3);
  EXPECT_EQ(grey_frame_numbers(video), (std::vector<int>{16, 18}));
}

TEST(VideoDecoder, ProbeFacts) {
  const std::vector<uint8_t> grey = read_bytes(grey_mp4());
  imp::VideoInfo info = imp::probe_video(grey.data(), grey.size(), "grey.mp4");
  EXPECT_NEAR(info.duration, 2.0, 1e-6);
  EXPECT_EQ(info.width, 64);
  EXPECT_EQ(info.height, 48);
  EXPECT_NEAR(info.nominal_fps, 10.0, 1e-6);
  EXPECT_EQ(info.frame_count, 20);
  EXPECT_EQ(info.rotation, 0);
  EXPECT_FALSE(info.has_audio);
  EXPECT_EQ(info.video_codec, "mpeg4");
  EXPECT_EQ(info.audio_codec, "");

  info = imp::probe_video_file(audio_first_mp4());
  EXPECT_TRUE(info.has_audio);
  EXPECT_EQ(info.audio_codec, "aac");
  EXPECT_EQ(info.video_codec, "mpeg4");

  info = imp::probe_video_file(corner_clip_rotated(90));
  EXPECT_TRUE(info.rotation == 90 || info.rotation == 270) << info.rotation;
  EXPECT_EQ(info.width, 48);
  EXPECT_EQ(info.height, 64);
}

TEST(VideoDecoder, ConcurrentDecodesAgree) {
  const std::vector<uint8_t> bytes = read_bytes(audio_first_mp4());
  VideoDecodeOptions options;
  options.frames = 4;
  options.fps = 5;
  options.start_fraction = 0.5;
  options.want_audio = true;
  const DecodedVideo reference = decode_bytes(bytes, options);
  std::vector<DecodedVideo> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) threads.emplace_back([&] { result = decode_bytes(bytes, options); });
  for (auto& thread : threads) thread.join();
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].pixels, reference.pixels) << "thread " << i;
    EXPECT_EQ(results[i].frame_times, reference.frame_times) << "thread " << i;
    EXPECT_EQ(results[i].audio, reference.audio) << "thread " << i;
  }
}

TEST(VideoDecoder, InvalidOptionsRejected) {
  const std::vector<uint8_t> bytes = read_bytes(grey_mp4());
  VideoDecodeOptions options;
  options.frames = 0;
  EXPECT_THROW(decode_bytes(bytes, options), std::invalid_argument);
  options = VideoDecodeOptions();
  options.fps = -1;
  EXPECT_THROW(decode_bytes(bytes, options), std::invalid_argument);
  options = VideoDecodeOptions();
  options.start_fraction = 1.5;
  EXPECT_THROW(decode_bytes(bytes, options), std::invalid_argument);
  options = VideoDecodeOptions();
  options.short_side = -2;
  EXPECT_THROW(decode_bytes(bytes, options), std::invalid_argument);
  options = VideoDecodeOptions();
  options.audio_rate = 0;
  EXPECT_THROW(decode_bytes(bytes, options), std::invalid_argument);
}

}  // namespace
