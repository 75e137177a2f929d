// Video decoding with FFmpeg 5.1 (libavformat, libavcodec, libswscale,
// libswresample). It returns N RGB frames sampled at a target frame rate from
// a clip in memory (for example a WebDataset tar member) or on disk. It can
// also return the clip's audio track for the same time span, as mono float
// samples.
//
// Sampling rule. Every time below is in seconds from the start of the video
// stream, and each frame's time is its best_effort_timestamp minus the
// stream's start_time, in the stream's time base. The decoder never derives a
// time from a frame's index and the nominal frame rate, so variable frame
// rate clips are sampled at their real timestamps.
//   - fps > 0: the window lasts frames / fps seconds and starts at
//     window_start = start_fraction * max(0, duration - frames / fps).
//     Output frame i targets t_i = window_start + i / fps.
//   - fps == 0: t_i = i * duration / frames, spread evenly over
//     [0, duration), and window_start is 0.
// Output frame i is the last decoded frame whose time is <= t_i (the frame on
// screen at t_i), or the first decoded frame when none is that early. Times
// within 1 microsecond count as equal. When t_i lies at or past the end of the
// last decoded frame (its time plus its length), output frame i repeats that
// frame and counts in padded_frames. A window that
// starts after 0 is reached by seeking backward to the keyframe before
// window_start (1 s earlier when audio is requested). Decoding starts again
// at the beginning of the file when the seek fails, or when it lands after
// the first target or after the start of the audio window.
//
// Every FFmpeg object is owned by a RAII wrapper. The functions keep no shared
// mutable state, so several threads may decode at once. On first use they
// install an FFmpeg log callback. Messages that FFmpeg logs on a thread while
// one of these functions runs on it are not printed. The last error among
// them goes into the message of a DecodeError that follows an FFmpeg failure.
// Messages from other FFmpeg users in the process still go to FFmpeg's
// default callback.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace imp {

struct VideoDecodeOptions {
  int frames = 8;               // N frames returned, >= 1
  double fps = 0.0;             // target rate: frame i is shown at window_start + i / fps;
                                // 0 spreads the N frames evenly over the whole clip
  double start_fraction = 0.0;  // window start as a fraction of the slack
                                // (duration - frames / fps), in [0, 1]; the caller draws it
  int short_side = 0;           // scale frames so that the shorter side has this many
                                // pixels (area filter when shrinking, bilinear when
                                // enlarging); 0 keeps the coded size
  int64_t max_pixels = 89'478'485;   // maximum width * height of the coded frames
  double time_limit_seconds = 20.0;  // wall-clock limit for the whole call; 0 or less
                                     // means no limit
  bool want_audio = false;           // also decode the audio track for the window
  int audio_rate = 16000;            // Hz of the mono float audio output
};

struct DecodedVideo {
  int frames = 0, height = 0, width = 0;  // after rotation and scaling
  std::vector<uint8_t> pixels;            // frames * height * width * 3 bytes, RGB, interleaved
  std::vector<double> frame_times;        // presentation time (s) of the decoded frame used
                                          // for each output frame
  double duration = 0.0;                  // seconds, of the video stream
  double window_start = 0.0;              // seconds
  int rotation = 0;        // degrees clockwise applied from the display matrix: 0, 90, 180 or 270
  bool has_audio = false;  // the file has an audio stream and want_audio was set
  // Mono samples at audio_rate for [window_start, window_start + frames / fps),
  // or for [0, duration) when fps == 0: exactly round(span * audio_rate)
  // samples. Stretches that the audio track does not cover (before its first
  // sample or after its last) are zeros. Empty when !has_audio.
  std::vector<float> audio;
  int padded_frames = 0;   // output frames that repeat the last decoded frame because
                           // the clip (or the readable part of it) ended before their time
  // The data ended early: the demuxer failed to read a packet or marked one
  // corrupt, as for a file cut short. The frames decoded before that point
  // were used and the rest padded. A Matroska or WebM file cut short reads as
  // a plain end of file, so for those only padded_frames shows the cut.
  bool truncated = false;
};

// Decodes `frames` RGB frames (and the audio, when requested) from an mp4,
// webm, mkv or other FFmpeg-readable clip held in memory. `what` names the
// clip (a path or a shard and key) in error messages. The bytes are read in
// place and must stay valid during the call.
//
// Throws std::invalid_argument for options out of range, and DecodeError with
// one of these reasons for input that cannot be decoded:
//   "video: cannot open"         empty data, unknown format, or an mp4 without
//                                its moov index;
//   "video: no video stream"     the container has no video stream;
//   "video: unsupported codec"   no decoder for the video (or requested audio)
//                                codec in this FFmpeg build;
//   "video: too large"           width * height of the coded frames exceeds
//                                max_pixels;
//   "video: unknown duration"    neither the container nor the packets give a
//                                duration;
//   "video: no frames"           no frame could be decoded;
//   "video: audio conversion failed"  the audio cannot be resampled to mono;
//   "video: time limit"          the call ran longer than time_limit_seconds.
// A read error after at least one decoded frame (a file cut short) is not
// thrown: the result is marked `truncated` and the missing frames are padded.
// Frames that the decoder reports damaged or concealed are skipped, so the
// frame before them stays on screen.
DecodedVideo decode_video(const uint8_t* data, size_t size, const VideoDecodeOptions& options,
                          const std::string& what);

// Same as decode_video for a file, read in pieces through stdio rather than
// loaded whole. A file that cannot be opened fails with "video: cannot open".
DecodedVideo decode_video_file(const std::string& path, const VideoDecodeOptions& options);

// Stream facts read without decoding any frame, for `imp data inspect`.
struct VideoInfo {
  double duration = 0;     // seconds, of the video stream
  int width = 0, height = 0;  // as displayed: after the rotation, before any scaling
  double nominal_fps = 0;  // average frame rate the container states, 0 if it states none
  int64_t frame_count = 0;  // frames the container states for the video stream, 0 if unknown
  int rotation = 0;         // degrees clockwise from the display matrix: 0, 90, 180 or 270
  bool has_audio = false;
  std::string video_codec, audio_codec;  // FFmpeg codec names, e.g. "h264", "aac";
                                         // audio_codec is empty without audio
};

// Reads the stream facts of a clip in memory. Throws DecodeError with the
// reasons "video: cannot open", "video: no video stream", "video: unknown
// duration" or "video: time limit" (a fixed limit of 20 s).
VideoInfo probe_video(const uint8_t* data, size_t size, const std::string& what);
VideoInfo probe_video_file(const std::string& path);

}  // namespace imp
