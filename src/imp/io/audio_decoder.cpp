// Audio decoding with libsndfile (containers and codecs) and libsoxr
// (resampling). See audio_decoder.h for the contract.
#include "imp/io/audio_decoder.h"

#include <fcntl.h>
#include <sndfile.h>
#include <soxr.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "imp/core/error.h"

namespace imp {
namespace {

// Size of the interleaved buffer that each sf_readf_float call fills: 256 KiB
// of floats, whatever the length of the file and the number of channels.
constexpr sf_count_t kChunkSamples = 65536;

// At most this many mono frames (16 MiB) are reserved from the header's
// length before decoding, so that a damaged header cannot cause a huge
// allocation. Longer clips grow the vector as they are decoded.
constexpr sf_count_t kMaxReservedFrames = sf_count_t{1} << 22;

// Default for AudioDecodeOptions::max_frames: one hour at the source rate.
constexpr int64_t kDefaultMaxSeconds = 3600;

// ---------------------------------------------------------------------------
// Virtual I/O over a memory buffer, for sf_open_virtual.

struct MemoryFile {
  const uint8_t* data = nullptr;
  sf_count_t size = 0;
  sf_count_t position = 0;
};

sf_count_t memory_length(void* user_data) { return static_cast<MemoryFile*>(user_data)->size; }

sf_count_t memory_seek(sf_count_t offset, int whence, void* user_data) {
  auto* file = static_cast<MemoryFile*>(user_data);
  sf_count_t base = 0;
  if (whence == SEEK_CUR) base = file->position;
  if (whence == SEEK_END) base = file->size;
  const sf_count_t target = base + offset;
  // libsndfile treats a negative return as a failed seek. A position past
  // the end is allowed, as with lseek, and later reads return 0 bytes.
  if (target < 0) return -1;
  file->position = target;
  return file->position;
}

sf_count_t memory_read(void* destination, sf_count_t count, void* user_data) {
  auto* file = static_cast<MemoryFile*>(user_data);
  if (count <= 0 || file->position >= file->size) return 0;
  const sf_count_t available = std::min(count, file->size - file->position);
  std::memcpy(destination, file->data + file->position, static_cast<size_t>(available));
  file->position += available;
  return available;
}

// The buffer is read only. libsndfile calls this only for files opened for
// writing, which never happens here.
sf_count_t memory_write(const void*, sf_count_t, void*) { return 0; }

sf_count_t memory_tell(void* user_data) { return static_cast<MemoryFile*>(user_data)->position; }

// ---------------------------------------------------------------------------
// Opening.

// libsndfile 1.2 reports a failed open through process-wide state: sf_errno
// and a shared log buffer that sf_error(nullptr) and sf_strerror(nullptr)
// read. Opens therefore hold this mutex until that state has been copied,
// so that concurrent opens neither race on it nor report each other's errors.
// Reading and closing an open handle touch only that handle.
std::mutex& open_mutex() {
  static std::mutex mutex;
  return mutex;
}

// An open SNDFILE, closed at scope exit.
class SoundFile {
 public:
  SoundFile(SNDFILE* handle, const SF_INFO& info) : handle_(handle), info_(info) {}
  ~SoundFile() { sf_close(handle_); }
  SoundFile(const SoundFile&) = delete;
  SoundFile& operator=(const SoundFile&) = delete;

  SNDFILE* handle() const { return handle_; }
  const SF_INFO& info() const { return info_; }

 private:
  SNDFILE* handle_;
  SF_INFO info_;
};

std::string major_format_name(int format) {
  switch (format & SF_FORMAT_TYPEMASK) {
    case SF_FORMAT_WAV:
    case SF_FORMAT_WAVEX: return "wav";
    case SF_FORMAT_RF64: return "rf64";
    case SF_FORMAT_W64: return "w64";
    case SF_FORMAT_FLAC: return "flac";
    case SF_FORMAT_OGG: return "ogg";
    case SF_FORMAT_MPEG: return "mpeg";
    case SF_FORMAT_AIFF: return "aiff";
    case SF_FORMAT_AU: return "au";
    case SF_FORMAT_CAF: return "caf";
    case SF_FORMAT_RAW: return "raw";
    case SF_FORMAT_PAF: return "paf";
    case SF_FORMAT_SVX: return "svx";
    case SF_FORMAT_NIST: return "nist";
    case SF_FORMAT_VOC: return "voc";
    case SF_FORMAT_IRCAM: return "ircam";
    case SF_FORMAT_MAT4: return "mat4";
    case SF_FORMAT_MAT5: return "mat5";
    case SF_FORMAT_PVF: return "pvf";
    case SF_FORMAT_XI: return "xi";
    case SF_FORMAT_HTK: return "htk";
    case SF_FORMAT_SDS: return "sds";
    case SF_FORMAT_AVR: return "avr";
    case SF_FORMAT_SD2: return "sd2";
    case SF_FORMAT_WVE: return "wve";
    case SF_FORMAT_MPC2K: return "mpc2k";
    default: return str_cat("container 0x", std::hex, format & SF_FORMAT_TYPEMASK);
  }
}

std::string encoding_name(int format) {
  switch (format & SF_FORMAT_SUBMASK) {
    case SF_FORMAT_PCM_S8: return "pcm_s8";
    case SF_FORMAT_PCM_U8: return "pcm_u8";
    case SF_FORMAT_PCM_16: return "pcm_16";
    case SF_FORMAT_PCM_24: return "pcm_24";
    case SF_FORMAT_PCM_32: return "pcm_32";
    case SF_FORMAT_FLOAT: return "float";
    case SF_FORMAT_DOUBLE: return "double";
    case SF_FORMAT_ULAW: return "ulaw";
    case SF_FORMAT_ALAW: return "alaw";
    case SF_FORMAT_IMA_ADPCM: return "ima_adpcm";
    case SF_FORMAT_MS_ADPCM: return "ms_adpcm";
    case SF_FORMAT_GSM610: return "gsm610";
    case SF_FORMAT_VOX_ADPCM: return "vox_adpcm";
    case SF_FORMAT_NMS_ADPCM_16: return "nms_adpcm_16";
    case SF_FORMAT_NMS_ADPCM_24: return "nms_adpcm_24";
    case SF_FORMAT_NMS_ADPCM_32: return "nms_adpcm_32";
    case SF_FORMAT_G721_32: return "g721_32";
    case SF_FORMAT_G723_24: return "g723_24";
    case SF_FORMAT_G723_40: return "g723_40";
    case SF_FORMAT_DWVW_12: return "dwvw_12";
    case SF_FORMAT_DWVW_16: return "dwvw_16";
    case SF_FORMAT_DWVW_24: return "dwvw_24";
    case SF_FORMAT_DWVW_N: return "dwvw_n";
    case SF_FORMAT_DPCM_8: return "dpcm_8";
    case SF_FORMAT_DPCM_16: return "dpcm_16";
    case SF_FORMAT_VORBIS: return "vorbis";
    case SF_FORMAT_OPUS: return "opus";
    case SF_FORMAT_ALAC_16: return "alac_16";
    case SF_FORMAT_ALAC_20: return "alac_20";
    case SF_FORMAT_ALAC_24: return "alac_24";
    case SF_FORMAT_ALAC_32: return "alac_32";
    case SF_FORMAT_MPEG_LAYER_I: return "mp1";
    case SF_FORMAT_MPEG_LAYER_II: return "mp2";
    case SF_FORMAT_MPEG_LAYER_III: return "mp3";
    default: return str_cat("encoding 0x", std::hex, format & SF_FORMAT_SUBMASK);
  }
}

std::string format_name(int format) { return major_format_name(format) + " " + encoding_name(format); }

// Throws the DecodeError for a failed sf_open_* call. `error` is the code
// from sf_error(nullptr) and `library_message` the text from
// sf_strerror(nullptr).
[[noreturn]] void throw_open_error(int error, const std::string& library_message, const std::string& what) {
  if (error == SF_ERR_UNRECOGNISED_FORMAT) {
    throw DecodeError("audio: unknown format",
                      str_cat(what, ": not an audio file that libsndfile can read (", library_message,
                              "). Supported containers include wav, flac, ogg (vorbis, opus), mp3, aiff "
                              "and caf. Convert the file, for example with ffmpeg, or remove it from the "
                              "data set."));
  }
  if (error == SF_ERR_UNSUPPORTED_ENCODING) {
    throw DecodeError(
        "audio: unsupported format",
        str_cat(what, ": the container is known but libsndfile cannot decode its encoding (", library_message,
                "). Convert the file to wav or flac, for example with "
                "ffmpeg, or remove it from the data set."));
  }
  // The remaining codes, SF_ERR_MALFORMED_FILE and libsndfile's internal
  // ones, mean that the header was recognised but is invalid.
  throw DecodeError("audio: corrupt",
                    str_cat(what, ": invalid audio file header (libsndfile: ", library_message,
                            "). The file is damaged. Replace it or remove it from the data set."));
}

// Opens a file with `open`, which calls one of the sf_open_* functions, and
// throws DecodeError when that fails.
std::unique_ptr<SoundFile> open_sound_file(const std::function<SNDFILE*(SF_INFO*)>& open,
                                           const std::string& what) {
  SF_INFO info;
  std::memset(&info, 0, sizeof(info));  // format 0: detect the container from the bytes.
  SNDFILE* handle = nullptr;
  int error = 0;
  std::string library_message;
  {
    std::lock_guard<std::mutex> lock(open_mutex());
    handle = open(&info);
    if (handle == nullptr) {
      error = sf_error(nullptr);
      library_message = sf_strerror(nullptr);
    }
  }
  if (handle == nullptr) throw_open_error(error, library_message, what);
  auto file = std::make_unique<SoundFile>(handle, info);

  // libsndfile validates these on open. The check guards the divisions
  // and the buffer sizes below against a library that does not.
  if (info.samplerate <= 0 || info.channels <= 0) {
    throw DecodeError(
        "audio: corrupt",
        str_cat(what, ": invalid audio file header with sample rate ", info.samplerate, " Hz and ",
                info.channels, " channels. Replace the file or remove it from the data set."));
  }
  return file;
}

std::unique_ptr<SoundFile> open_memory(MemoryFile& memory, const std::string& what) {
  if (memory.size == 0) {
    throw DecodeError("audio: empty",
                      str_cat(what,
                              ": the audio file is empty (0 bytes). Replace it or remove it from "
                              "the data set."));
  }
  SF_VIRTUAL_IO io;
  io.get_filelen = memory_length;
  io.seek = memory_seek;
  io.read = memory_read;
  io.write = memory_write;
  io.tell = memory_tell;
  return open_sound_file([&](SF_INFO* info) { return sf_open_virtual(&io, SFM_READ, info, &memory); }, what);
}

// True when the header states the number of frames. libsndfile sets
// SF_COUNT_MAX when it does not know the length.
bool length_known(const SF_INFO& info) { return info.frames >= 0 && info.frames < SF_COUNT_MAX; }

double duration_seconds(const SF_INFO& info) {
  return length_known(info) ? static_cast<double>(info.frames) / info.samplerate : 0.0;
}

// ---------------------------------------------------------------------------
// Decoding.

// Converts seconds (finite, >= 0) to a frame count, rounded to the nearest
// frame. Values beyond any real file are clamped, so that llround cannot
// overflow.
sf_count_t seconds_to_frames(double seconds, int rate) {
  const double frames = seconds * rate;
  constexpr double kMaxFrames = 1e15;  // about 700 years at 44.1 kHz
  if (frames >= kMaxFrames) return static_cast<sf_count_t>(kMaxFrames);
  return std::llround(frames);
}

void check_options(const AudioDecodeOptions& options) {
  if (options.sample_rate <= 0) {
    throw std::invalid_argument(
        str_cat("AudioDecodeOptions::sample_rate must be positive, got ", options.sample_rate));
  }
  if (!std::isfinite(options.max_seconds) || options.max_seconds < 0) {
    throw std::invalid_argument(str_cat(
        "AudioDecodeOptions::max_seconds must be 0 (whole file) or positive, got ", options.max_seconds));
  }
  if (!std::isfinite(options.start_seconds) || options.start_seconds < 0) {
    throw std::invalid_argument(
        str_cat("AudioDecodeOptions::start_seconds must be 0 or positive, got ", options.start_seconds));
  }
  if (options.max_frames < 0) {
    throw std::invalid_argument(
        str_cat("AudioDecodeOptions::max_frames must be 0 (one hour) or positive, got ", options.max_frames));
  }
}

[[noreturn]] void throw_too_long(const std::string& what, int64_t frames, int64_t limit, int rate) {
  throw DecodeError(
      "audio: too long",
      str_cat(what, ": the requested part has ", frames, " frames (", static_cast<double>(frames) / rate,
              " s), more than the limit of ", limit, " frames (", static_cast<double>(limit) / rate,
              " s). Set max_seconds to decode a part, raise max_frames, or split the file."));
}

// Moves the read position of `file` to frame `start`. Returns false when the
// file ends before it.
bool seek_to(const SoundFile& file, sf_count_t start) {
  const sf_count_t chunk_frames = std::max<sf_count_t>(1, kChunkSamples / file.info().channels);
  if (start == 0) return true;
  if (file.info().seekable && sf_seek(file.handle(), start, SEEK_SET) == start) return true;

  // Fallback for streams that cannot seek: decode and drop the frames.
  // A failed sf_seek may have moved the position, so start over when possible.
  if (file.info().seekable && sf_seek(file.handle(), 0, SEEK_SET) != 0) return false;
  std::vector<float> discard(static_cast<size_t>(chunk_frames) * file.info().channels);
  sf_count_t skipped = 0;
  while (skipped < start) {
    const sf_count_t read =
        sf_readf_float(file.handle(), discard.data(), std::min(chunk_frames, start - skipped));
    if (read <= 0) return false;
    skipped += read;
  }
  return true;
}


DecodedAudio decode_open_file(const SoundFile& file, const AudioDecodeOptions& options,
                              const std::string& what) {
  const SF_INFO& info = file.info();
  const int rate = info.samplerate;
  const int channels = info.channels;

  DecodedAudio result;
  result.sample_rate = options.sample_rate;
  result.source_rate = rate;
  result.source_channels = channels;
  result.source_format = format_name(info.format);
  result.duration = duration_seconds(info);

  // Scale integer PCM to [-1, 1). This is libsndfile's default, set here so
  // that the contract does not depend on it.
  sf_command(file.handle(), SFC_SET_NORM_FLOAT, nullptr, SF_TRUE);

  const bool known = length_known(info);
  if (known && info.frames == 0) {
    throw DecodeError("audio: no samples",
                      str_cat(what,
                              ": the audio file has a valid header but no samples. Remove it from "
                              "the data set."));
  }

  const sf_count_t start = seconds_to_frames(options.start_seconds, rate);
  if (known && start >= info.frames) {
    throw DecodeError("audio: start past end",
                      str_cat(what, ": start_seconds = ", options.start_seconds,
                              " is at or past the end of the ", result.duration,
                              " s file. Pick a start before the end, for example from "
                              "probe_audio's duration."));
  }

  // Frames to decode: the requested length, cut at the end of the file.
  // -1 means "to the end" for a file of unknown length.
  sf_count_t frames_to_decode = -1;
  if (options.max_seconds > 0)
    frames_to_decode = std::max<sf_count_t>(1, seconds_to_frames(options.max_seconds, rate));
  if (known)
    frames_to_decode =
        frames_to_decode < 0 ? info.frames - start : std::min(frames_to_decode, info.frames - start);

  const int64_t limit = options.max_frames > 0 ? options.max_frames : kDefaultMaxSeconds * rate;
  if (frames_to_decode > limit) throw_too_long(what, frames_to_decode, limit, rate);

  if (!seek_to(file, start)) {
    throw DecodeError("audio: start past end",
                      str_cat(what, ": the file ends before start_seconds = ", options.start_seconds,
                              ". Pick a start before the end."));
  }

  // Decode in chunks and mix each frame to the mean of its channels.
  std::vector<float> mono;
  if (frames_to_decode > 0) mono.reserve(static_cast<size_t>(std::min(frames_to_decode, kMaxReservedFrames)));
  const sf_count_t chunk_frames = std::max<sf_count_t>(1, kChunkSamples / channels);
  std::vector<float> interleaved(static_cast<size_t>(chunk_frames) * channels);
  const float channel_weight = 1.0f / channels;
  sf_count_t decoded = 0;
  while (frames_to_decode < 0 || decoded < frames_to_decode) {
    const sf_count_t chunk_request =
        frames_to_decode < 0 ? chunk_frames : std::min(chunk_frames, frames_to_decode - decoded);
    const sf_count_t read = sf_readf_float(file.handle(), interleaved.data(), chunk_request);
    if (read <= 0) break;
    for (sf_count_t frame = 0; frame < read; ++frame) {
      const float* values = interleaved.data() + frame * channels;
      float sum = 0.0f;
      for (int channel = 0; channel < channels; ++channel) sum += values[channel];
      const float mean = channels == 1 ? sum : sum * channel_weight;
      if (!std::isfinite(mean)) {
        throw DecodeError("audio: non-finite sample",
                          str_cat(what, ": frame ", start + decoded + frame,
                                  " contains a NaN or infinite value, which would corrupt training. "
                                  "Replace the file or remove it from the data set."));
      }
      mono.push_back(mean);
    }
    decoded += read;
    if (frames_to_decode < 0 && decoded > limit) throw_too_long(what, decoded, limit, rate);
  }

  // A file that ends before its stated length is kept up to that point, but
  // a file with nothing decodable is rejected.
  if (decoded == 0) {
    throw DecodeError("audio: truncated",
                      str_cat(what, ": no samples could be decoded (libsndfile: ", sf_strerror(file.handle()),
                              "). The file is cut short or damaged. Replace it or remove it from the data "
                              "set."));
  }
  // Without a length in the header, an early end cannot be distinguished
  // from the real end, so `truncated` stays false.
  result.truncated = known && decoded < frames_to_decode;

  result.samples = resample_mono(mono, rate, options.sample_rate, what);
  return result;
}

// Closes a POSIX file descriptor at scope exit.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::vector<float> resample_mono(const std::vector<float>& samples, int from_rate, int to_rate,
                                 const std::string& what) {
  if (from_rate == to_rate || samples.empty()) return samples;

  // soxr_oneshot flushes the filter, so it writes about
  // samples.size() * ratio samples. The spare one covers rounding.
  const double ratio = static_cast<double>(to_rate) / from_rate;
  std::vector<float> output(static_cast<size_t>(std::ceil(samples.size() * ratio)) + 1);
  const soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
  const soxr_quality_spec_t quality = soxr_quality_spec(SOXR_HQ, 0);
  // One thread, so that data-loading threads do not each start an OpenMP team.
  // NOTE: concurrent calls rely on libsoxr being built with OpenMP. libsoxr
  // 0.1.3 guards its process-wide FFT table cache with OpenMP locks, and
  // without OpenMP those locks compile to nothing (src/ccrw2.h). Debian 12's
  // libsoxr0 is built with OpenMP (it links libgomp).
  const soxr_runtime_spec_t runtime = soxr_runtime_spec(1);
  size_t written = 0;
  const soxr_error_t error =
      soxr_oneshot(from_rate, to_rate, /*num_channels=*/1, samples.data(), samples.size(), nullptr,
                   output.data(), output.size(), &written, &io, &quality, &runtime);
  if (error != nullptr) {
    throw DecodeError("audio: resample failed",
                      str_cat(what, ": libsoxr failed to resample ", samples.size(), " samples from ",
                              from_rate, " Hz to ", to_rate, " Hz: ", error));
  }
  output.resize(written);
  return output;
}

DecodedAudio decode_audio(const uint8_t* data, size_t size, const AudioDecodeOptions& options,
                          const std::string& what) {
  check_options(options);
  MemoryFile memory;
  memory.data = data;
  memory.size = static_cast<sf_count_t>(size);
  const std::unique_ptr<SoundFile> file = open_memory(memory, what);
  return decode_open_file(*file, options, what);
}

DecodedAudio decode_audio_file(const std::string& path, const AudioDecodeOptions& options) {
  check_options(options);
  const FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int open_errno = errno;
    if (open_errno == ENOENT) {
      throw DecodeError("audio: cannot open", str_cat(path, ": audio file not found. Check the path."));
    }
    throw DecodeError("audio: cannot open",
                      str_cat(path, ": cannot open the audio file: ", std::strerror(open_errno),
                              ". Check its permissions."));
  }

  struct stat status;
  if (::fstat(fd.get(), &status) != 0 || !S_ISREG(status.st_mode)) {
    throw DecodeError("audio: cannot open",
                      str_cat(path, ": not a regular file. Pass the path of an audio file."));
  }
  if (status.st_size == 0) {
    throw DecodeError("audio: empty",
                      str_cat(path,
                              ": the audio file is empty (0 bytes). Replace it or remove it from "
                              "the data set."));
  }

  // FileDescriptor closes the descriptor after SoundFile has closed the
  // SNDFILE, so libsndfile must not close it (close_desc = SF_FALSE).
  const std::unique_ptr<SoundFile> file =
      open_sound_file([&](SF_INFO* info) { return sf_open_fd(fd.get(), SFM_READ, info, SF_FALSE); }, path);
  return decode_open_file(*file, options, path);
}

AudioInfo probe_audio(const uint8_t* data, size_t size, const std::string& what) {
  MemoryFile memory;
  memory.data = data;
  memory.size = static_cast<sf_count_t>(size);
  const std::unique_ptr<SoundFile> file = open_memory(memory, what);
  const SF_INFO& info = file->info();

  AudioInfo result;
  result.sample_rate = info.samplerate;
  result.channels = info.channels;
  result.frames = length_known(info) ? info.frames : -1;
  result.duration = duration_seconds(info);
  result.format = format_name(info.format);
  return result;
}

}  // namespace imp
