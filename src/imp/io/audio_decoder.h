// Audio decoding for training data. It reads wav, flac, ogg (vorbis, opus),
// mp3 and the other containers that libsndfile supports, from a memory buffer
// (a member of a WebDataset tar shard) or from a path. It mixes the channels
// to mono and resamples with libsoxr to the model's sample rate. It does not
// use LibTorch.
//
// Input that cannot be decoded throws DecodeError with one of these reasons:
//   "audio: empty"              no bytes;
//   "audio: unknown format"     libsndfile recognises no container (text,
//                               random bytes, video files);
//   "audio: unsupported format" a known container with an encoding that
//                               libsndfile cannot decode;
//   "audio: corrupt"            an invalid header, or a cut ogg file;
//   "audio: no samples"         a valid header with 0 frames;
//   "audio: start past end"     start_seconds is at or past the end;
//   "audio: too long"           the requested part exceeds max_frames;
//   "audio: truncated"          the stream ends before its first frame;
//   "audio: non-finite sample"  a float file contains NaN or infinity;
//   "audio: resample failed"    libsoxr returned an error;
//   "audio: cannot open"        decode_audio_file could not open the path.
// Invalid options throw std::invalid_argument.
//
// All functions are safe to call from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "imp/io/decode_error.h"

namespace imp {

// Output rate and the part of a file to decode. Invalid values (a sample
// rate <= 0, negative or non-finite seconds, a negative max_frames) throw
// std::invalid_argument because they are a caller error, not bad data.
struct AudioDecodeOptions {
  // Output sample rate in Hz.
  int sample_rate = 16000;
  // Maximum length to decode in seconds, counted from `start_seconds`.
  // 0 decodes to the end of the file.
  double max_seconds = 0.0;
  // Start of the decoded part in seconds. A start at or past the end of the
  // file throws DecodeError "audio: start past end".
  double start_seconds = 0.0;
  // Maximum number of source frames that one call may decode, as protection
  // against huge files. 0 means one hour at the source rate. A file whose
  // requested part is longer throws DecodeError "audio: too long".
  int64_t max_frames = 0;
};

// A decoded clip together with facts about its source.
struct DecodedAudio {
  // Sample rate of `samples`, equal to AudioDecodeOptions::sample_rate.
  int sample_rate = 0;
  // Mono samples: for each frame, the mean over the channels. Integer PCM is
  // scaled to [-1, 1) like libsndfile's sf_readf_float with SFC_SET_NORM_FLOAT
  // on (a 16-bit value v becomes v / 32768). Float sources keep their values,
  // which may lie outside [-1, 1].
  std::vector<float> samples;
  int source_rate = 0;
  int source_channels = 0;
  // Container and encoding, such as "wav pcm_24", "flac pcm_16",
  // "ogg vorbis" or "wav float".
  std::string source_format;
  // Length of the whole source in seconds, from its header. 0 when the
  // container does not store the length.
  double duration = 0.0;
  // True when the source ended before the length its header states (a cut or
  // damaged file). `samples` then hold the frames decoded before the end.
  // With libsndfile 1.2 a cut flac file decodes this way, up to its last
  // complete block, while a cut ogg file fails to open ("audio: corrupt")
  // and a cut wav file reads as a shorter file with truncated = false.
  bool truncated = false;
};

// Header facts of an audio file, read without decoding the samples.
struct AudioInfo {
  int sample_rate = 0;
  int channels = 0;
  // Number of frames from the header, or -1 when the container does not
  // store it.
  int64_t frames = 0;
  // Length in seconds, or 0 when `frames` is -1.
  double duration = 0;
  // Container and encoding, as in DecodedAudio::source_format.
  std::string format;
};

// Decodes `size` bytes of an audio file held in memory. `what` names the
// file or sample in error messages.
DecodedAudio decode_audio(const uint8_t* data, size_t size, const AudioDecodeOptions& options,
                          const std::string& what);

// Decodes the audio file at `path`, reading only the part that `options`
// selects.
DecodedAudio decode_audio_file(const std::string& path, const AudioDecodeOptions& options);

// Reads the header of an audio file held in memory. Throws DecodeError only
// for "audio: empty", "unknown format", "unsupported format" and "corrupt".
AudioInfo probe_audio(const uint8_t* data, size_t size, const std::string& what);

// Resamples mono float samples from `from_rate` to `to_rate` (both positive)
// with libsoxr at high quality (SOXR_HQ: a linear-phase anti-aliasing filter,
// 20-bit precision). Returns the input when the rates are equal. Throws
// DecodeError "audio: resample failed", naming `what`, when libsoxr fails.
std::vector<float> resample_mono(const std::vector<float>& samples, int from_rate, int to_rate,
                                 const std::string& what);

}  // namespace imp
