// Video decoding with FFmpeg: demuxing through a custom AVIOContext, frame
// selection by timestamp, RGB conversion with rotation, and the audio track
// mixed to mono. See video_decoder.h for the sampling rule.
#include "imp/io/video_decoder.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <libavutil/channel_layout.h>
#include <libavutil/display.h>
#include <libavutil/opt.h>
#include <libavutil/parseutils.h>
#include <libavutil/pixdesc.h>
#include <libswresample/swresample.h>
#include <libswscale/swscale.h>
}

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>

#include "imp/core/error.h"
#include "imp/io/decode_error.h"

namespace imp {
namespace {

// Frame and target times closer than this count as equal, so that rounding in
// window_start + i / fps does not move a target before the frame shown at it.
constexpr double kTimeEpsilon = 1e-6;
constexpr int kIoBufferSize = 64 * 1024;
constexpr double kProbeTimeLimitSeconds = 20.0;
// How far before the window a seek aims when audio is wanted. After a seek,
// the Matroska demuxer of FFmpeg 5.1 drops audio blocks that start before
// the seek time, so the block that contains window_start would be lost.
// Audio frames are far shorter than this (AAC: 1024 samples).
constexpr double kAudioSeekMarginSeconds = 1.0;
// An audio track that starts this much after the window start, after a
// seek, makes the decoder start again from the beginning of the file.
constexpr double kAudioStartToleranceSeconds = 1e-3;

// ---------------------------------------------------------------------------
// FFmpeg log capture

// The last error that FFmpeg logged on this thread during one call.
struct LogCapture {
  std::string last_error;
};

thread_local LogCapture* t_log_capture = nullptr;

void log_callback(void* context, int level, const char* format, va_list args) {
  LogCapture* capture = t_log_capture;
  if (capture == nullptr) {
    av_log_default_callback(context, level, format, args);
    return;
  }
  if (level > AV_LOG_ERROR) return;
  char line[1024];
  std::vsnprintf(line, sizeof line, format, args);
  std::string text = line;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (!text.empty()) capture->last_error = text;
}

// Keeps FFmpeg's messages on this thread out of stderr while it exists.
class ScopedLogCapture {
 public:
  ScopedLogCapture() : previous_(t_log_capture) {
    static std::once_flag installed;
    std::call_once(installed, [] { av_log_set_callback(log_callback); });
    t_log_capture = &capture_;
  }
  ~ScopedLogCapture() { t_log_capture = previous_; }
  ScopedLogCapture(const ScopedLogCapture&) = delete;
  ScopedLogCapture& operator=(const ScopedLogCapture&) = delete;

 private:
  LogCapture capture_;
  LogCapture* previous_;
};

// FFmpeg's text for an error code, preceded by the last error it logged.
std::string ffmpeg_error_text(int code) {
  char buffer[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, buffer, sizeof buffer);
  std::string text = buffer;
  if (t_log_capture != nullptr && !t_log_capture->last_error.empty())
    text = t_log_capture->last_error + " (" + text + ")";
  return text;
}

// ---------------------------------------------------------------------------
// Time limit and errors

class Deadline {
 public:
  explicit Deadline(double seconds) : limited_(seconds > 0), seconds_(seconds) {
    if (limited_) {
      end_ = Clock::now() +
             std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    }
  }
  bool expired() const { return limited_ && Clock::now() >= end_; }
  double seconds() const { return seconds_; }

 private:
  using Clock = std::chrono::steady_clock;
  bool limited_;
  double seconds_;
  Clock::time_point end_;
};

[[noreturn]] void fail(const std::string& reason, const std::string& what, const std::string& problem,
                       const std::string& advice) {
  throw DecodeError(reason, what + ": " + problem + ". " + advice);
}

void check_deadline(const Deadline& deadline, const std::string& what) {
  if (!deadline.expired()) return;
  fail("video: time limit", what,
       str_cat("decoding took longer than the time limit of ", deadline.seconds(), " s"),
       "Skip the clip, or raise time_limit_seconds if clips this long are expected");
}

// ---------------------------------------------------------------------------
// Byte sources behind the custom AVIOContext

// Resolves an FFmpeg seek request to an absolute position. Positions past the
// end are rejected, so that a demuxer that looks for data beyond the end of a
// file cut short gets an error rather than an empty read.
int64_t resolve_seek(int64_t offset, int whence, int64_t position, int64_t size) {
  whence &= ~AVSEEK_FORCE;
  if (whence == AVSEEK_SIZE) return size;
  int64_t target = 0;
  switch (whence) {
    case SEEK_SET: target = offset; break;
    case SEEK_CUR: target = position + offset; break;
    case SEEK_END: target = size + offset; break;
    default: return AVERROR(EINVAL);
  }
  if (target < 0 || target > size) return AVERROR(EINVAL);
  return target;
}

class ByteReader {
 public:
  explicit ByteReader(const Deadline& deadline) : deadline_(deadline) {}
  virtual ~ByteReader() = default;
  // Copies up to `size` bytes: returns their count, AVERROR_EOF at the end,
  // or another AVERROR code.
  virtual int read(uint8_t* buffer, int size) = 0;
  // Returns the new position, the size for AVSEEK_SIZE, or an AVERROR code.
  virtual int64_t seek(int64_t offset, int whence) = 0;
  const Deadline& deadline() const { return deadline_; }

 private:
  const Deadline& deadline_;
};

class MemoryReader : public ByteReader {
 public:
  MemoryReader(const uint8_t* data, size_t size, const Deadline& deadline)
      : ByteReader(deadline), data_(data), size_(static_cast<int64_t>(size)) {}

  int read(uint8_t* buffer, int size) override {
    const int64_t left = size_ - position_;
    if (left <= 0) return AVERROR_EOF;
    const int count = static_cast<int>(std::min<int64_t>(left, size));
    std::memcpy(buffer, data_ + position_, count);
    position_ += count;
    return count;
  }

  int64_t seek(int64_t offset, int whence) override {
    const int64_t target = resolve_seek(offset, whence, position_, size_);
    if (target >= 0 && (whence & ~AVSEEK_FORCE) != AVSEEK_SIZE) position_ = target;
    return target;
  }

 private:
  const uint8_t* data_;
  int64_t size_;
  int64_t position_ = 0;
};

class FileReader : public ByteReader {
 public:
  // Takes ownership of `file`.
  FileReader(std::FILE* file, int64_t size, const Deadline& deadline)
      : ByteReader(deadline), file_(file), size_(size) {}
  ~FileReader() override { std::fclose(file_); }
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  int read(uint8_t* buffer, int size) override {
    const size_t count = std::fread(buffer, 1, static_cast<size_t>(size), file_);
    if (count == 0) return std::ferror(file_) ? AVERROR(EIO) : AVERROR_EOF;
    position_ += static_cast<int64_t>(count);
    return static_cast<int>(count);
  }

  int64_t seek(int64_t offset, int whence) override {
    const int64_t target = resolve_seek(offset, whence, position_, size_);
    if (target < 0 || (whence & ~AVSEEK_FORCE) == AVSEEK_SIZE) return target;
    if (fseeko(file_, static_cast<off_t>(target), SEEK_SET) != 0) return AVERROR(errno);
    position_ = target;
    return target;
  }

 private:
  std::FILE* file_;
  int64_t size_;
  int64_t position_ = 0;
};

int read_callback(void* opaque, uint8_t* buffer, int size) {
  auto* reader = static_cast<ByteReader*>(opaque);
  if (reader->deadline().expired()) return AVERROR_EXIT;
  return reader->read(buffer, size);
}

int64_t seek_callback(void* opaque, int64_t offset, int whence) {
  return static_cast<ByteReader*>(opaque)->seek(offset, whence);
}

int interrupt_callback(void* opaque) { return static_cast<const Deadline*>(opaque)->expired() ? 1 : 0; }

// Rejects every attempt of a demuxer to open another file or URL, as an HLS
// playlist or a concat list would, so that a clip can only read its own bytes.
int reject_nested_open(AVFormatContext*, AVIOContext**, const char*, int, AVDictionary**) {
  return AVERROR(EPERM);
}

// ---------------------------------------------------------------------------
// Owners of FFmpeg objects

struct AvioDeleter {
  void operator()(AVIOContext* context) const {
    // The AVIOContext may have replaced the buffer it was given.
    av_freep(&context->buffer);
    avio_context_free(&context);
  }
};
struct FormatDeleter {
  void operator()(AVFormatContext* context) const { avformat_close_input(&context); }
};
struct CodecDeleter {
  void operator()(AVCodecContext* context) const { avcodec_free_context(&context); }
};
struct FrameDeleter {
  void operator()(AVFrame* frame) const { av_frame_free(&frame); }
};
struct PacketDeleter {
  void operator()(AVPacket* packet) const { av_packet_free(&packet); }
};
struct SwsDeleter {
  void operator()(SwsContext* context) const { sws_freeContext(context); }
};
struct SwrDeleter {
  void operator()(SwrContext* context) const { swr_free(&context); }
};

using CodecPtr = std::unique_ptr<AVCodecContext, CodecDeleter>;
using FramePtr = std::unique_ptr<AVFrame, FrameDeleter>;
using PacketPtr = std::unique_ptr<AVPacket, PacketDeleter>;
using SwsPtr = std::unique_ptr<SwsContext, SwsDeleter>;
using SwrPtr = std::unique_ptr<SwrContext, SwrDeleter>;

FramePtr allocate_frame() {
  FramePtr frame(av_frame_alloc());
  if (!frame) throw std::bad_alloc();
  return frame;
}

// ---------------------------------------------------------------------------
// Opening

// The origin of a clip's bytes: a buffer, or a file opened again for each pass.
struct Source {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string path;
  bool from_file = false;
  std::string what;  // names the clip in messages
};

// An open demuxer. The members are destroyed in reverse order, so the format
// context closes before the AVIOContext and the reader it uses.
struct Input {
  std::unique_ptr<ByteReader> reader;
  std::unique_ptr<AVIOContext, AvioDeleter> avio;
  std::unique_ptr<AVFormatContext, FormatDeleter> format;
};

const char* kOpenAdvice =
    "Check that it is a complete video file (an mp4 needs its moov index) in a format "
    "this FFmpeg build reads, or remove the sample";

std::unique_ptr<ByteReader> open_reader(const Source& source, const Deadline& deadline) {
  if (!source.from_file) {
    if (source.size == 0) fail("video: cannot open", source.what, "the data is empty (0 bytes)", kOpenAdvice);
    return std::make_unique<MemoryReader>(source.data, source.size, deadline);
  }
  std::FILE* file = std::fopen(source.path.c_str(), "rb");
  if (file == nullptr) {
    fail("video: cannot open", source.what, str_cat("cannot open the file: ", std::strerror(errno)),
         "Check that the path exists and is readable");
  }
  struct stat status {};
  if (fstat(fileno(file), &status) != 0 || !S_ISREG(status.st_mode)) {
    std::fclose(file);
    fail("video: cannot open", source.what, "not a regular file", "Pass the path of a video file");
  }
  if (status.st_size == 0) {
    std::fclose(file);
    fail("video: cannot open", source.what, "the file is empty (0 bytes)", kOpenAdvice);
  }
  return std::make_unique<FileReader>(file, static_cast<int64_t>(status.st_size), deadline);
}

// Opens the demuxer and reads the stream parameters.
Input open_input(const Source& source, const Deadline& deadline) {
  check_deadline(deadline, source.what);
  Input input;
  input.reader = open_reader(source, deadline);

  auto* buffer = static_cast<unsigned char*>(av_malloc(kIoBufferSize));
  if (buffer == nullptr) throw std::bad_alloc();
  AVIOContext* avio = avio_alloc_context(buffer, kIoBufferSize, 0, input.reader.get(), read_callback,
                                         nullptr, seek_callback);
  if (avio == nullptr) {
    av_free(buffer);
    throw std::bad_alloc();
  }
  input.avio.reset(avio);

  AVFormatContext* format = avformat_alloc_context();
  if (format == nullptr) throw std::bad_alloc();
  format->pb = avio;
  format->flags |= AVFMT_FLAG_CUSTOM_IO;
  format->interrupt_callback.callback = interrupt_callback;
  format->interrupt_callback.opaque = const_cast<Deadline*>(&deadline);
  format->io_open = reject_nested_open;
  // avformat_open_input frees `format` when it fails.
  int code = avformat_open_input(&format, nullptr, nullptr, nullptr);
  if (code < 0) {
    check_deadline(deadline, source.what);
    fail("video: cannot open", source.what, "cannot open the video: " + ffmpeg_error_text(code), kOpenAdvice);
  }
  input.format.reset(format);

  code = avformat_find_stream_info(format, nullptr);
  if (code < 0) {
    check_deadline(deadline, source.what);
    fail("video: cannot open", source.what, "cannot read the stream parameters: " + ffmpeg_error_text(code),
         kOpenAdvice);
  }
  return input;
}

// ---------------------------------------------------------------------------
// Stream facts

// Facts about the chosen streams that every pass over the clip shares.
struct StreamFacts {
  int video_index = -1;
  int audio_index = -1;  // -1 when the clip has no audio stream
  int coded_width = 0, coded_height = 0;
  int rotation = 0;       // degrees clockwise
  int64_t start_pts = 0;  // start of the video stream, in its time base
  AVRational time_base{0, 1};
  double origin = 0.0;    // start of the video stream in seconds; audio times are relative to it
  double duration = 0.0;  // of the video stream, in seconds
};

// Picks the best video stream that is not a cover picture.
int find_video_stream(const AVFormatContext* format) {
  const int best = av_find_best_stream(const_cast<AVFormatContext*>(format), AVMEDIA_TYPE_VIDEO, -1, -1,
                                       nullptr, 0);
  auto is_moving_video = [&](unsigned index) {
    const AVStream* stream = format->streams[index];
    return stream->codecpar->codec_type == AVMEDIA_TYPE_VIDEO &&
           !(stream->disposition & AV_DISPOSITION_ATTACHED_PIC);
  };
  if (best >= 0 && is_moving_video(static_cast<unsigned>(best))) return best;
  for (unsigned i = 0; i < format->nb_streams; ++i) {
    if (is_moving_video(i)) return static_cast<int>(i);
  }
  return -1;
}

// Clockwise rotation from the stream's display matrix, rounded to a multiple
// of 90 degrees.
// NOTE: a mirror flip in the matrix is ignored, and other angles are rounded
// to the nearest quarter turn.
int clockwise_rotation(const AVStream* stream) {
  size_t size = 0;
  const uint8_t* data = av_stream_get_side_data(stream, AV_PKT_DATA_DISPLAYMATRIX, &size);
  if (data == nullptr || size < 9 * sizeof(int32_t)) return 0;
  // av_display_rotation_get returns the counterclockwise angle in [-180, 180].
  const double counterclockwise = av_display_rotation_get(reinterpret_cast<const int32_t*>(data));
  if (std::isnan(counterclockwise)) return 0;
  const long quarter_turns = std::lround(-counterclockwise / 90.0);
  return static_cast<int>(((quarter_turns % 4) + 4) % 4) * 90;
}

// Duration of the video stream as the stream or the container states it, or
// 0 when neither does. A container duration estimated from the bit rate is
// too rough to use.
double stated_duration(const AVFormatContext* format, const StreamFacts& facts) {
  const AVStream* stream = format->streams[facts.video_index];
  if (stream->duration != AV_NOPTS_VALUE && stream->duration > 0)
    return static_cast<double>(stream->duration) * av_q2d(facts.time_base);
  // Matroska has no per-track duration field, but FFmpeg's muxer stores one
  // in a DURATION tag such as "00:00:02.000000000".
  const AVDictionaryEntry* tag = av_dict_get(stream->metadata, "DURATION", nullptr, 0);
  int64_t microseconds = 0;
  if (tag != nullptr && av_parse_time(&microseconds, tag->value, 1) >= 0 && microseconds > 0)
    return static_cast<double>(microseconds) / 1e6;
  if (format->duration != AV_NOPTS_VALUE && format->duration > 0 &&
      format->duration_estimation_method != AVFMT_DURATION_FROM_BITRATE) {
    // The container's span runs from its earliest stream start to its latest
    // stream end, and may include an audio track that outlasts the video.
    const int64_t container_start = format->start_time == AV_NOPTS_VALUE ? 0 : format->start_time;
    const double end = static_cast<double>(container_start + format->duration) / AV_TIME_BASE;
    return std::max(0.0, end - facts.origin);
  }
  return 0.0;
}

// Duration from the timestamps of every video packet, for containers that
// state none (a webm recorded live, for one). Reads the whole file once
// without decoding.
double scan_duration(const Source& source, const StreamFacts& facts, const Deadline& deadline) {
  Input input = open_input(source, deadline);
  AVFormatContext* format = input.format.get();
  for (unsigned i = 0; i < format->nb_streams; ++i) {
    if (static_cast<int>(i) != facts.video_index) format->streams[i]->discard = AVDISCARD_ALL;
  }
  PacketPtr packet(av_packet_alloc());
  if (!packet) throw std::bad_alloc();
  int64_t last = AV_NOPTS_VALUE, before_last = AV_NOPTS_VALUE, last_length = 0;
  while (true) {
    check_deadline(deadline, source.what);
    if (av_read_frame(format, packet.get()) < 0) break;
    const int64_t pts = packet->pts != AV_NOPTS_VALUE ? packet->pts : packet->dts;
    if (packet->stream_index == facts.video_index && pts != AV_NOPTS_VALUE) {
      if (last == AV_NOPTS_VALUE || pts > last) {
        before_last = last;
        last = pts;
        last_length = packet->duration;
      } else if (before_last == AV_NOPTS_VALUE || pts > before_last) {
        before_last = pts;
      }
    }
    av_packet_unref(packet.get());
  }
  check_deadline(deadline, source.what);
  if (last == AV_NOPTS_VALUE) return 0.0;
  // Without a stated length, the last frame lasts as long as the gap before it.
  if (last_length <= 0 && before_last != AV_NOPTS_VALUE) last_length = last - before_last;
  return static_cast<double>(last + last_length - facts.start_pts) * av_q2d(facts.time_base);
}

StreamFacts read_stream_facts(const Input& input, const Source& source, const Deadline& deadline) {
  const AVFormatContext* format = input.format.get();
  StreamFacts facts;
  facts.video_index = find_video_stream(format);
  if (facts.video_index < 0) {
    fail("video: no video stream", source.what,
         str_cat("the file has no video stream among its ", format->nb_streams, " streams"),
         "Remove the sample, or store it as audio");
  }
  const int audio = av_find_best_stream(const_cast<AVFormatContext*>(format), AVMEDIA_TYPE_AUDIO, -1,
                                        facts.video_index, nullptr, 0);
  facts.audio_index = audio >= 0 ? audio : -1;

  const AVStream* stream = format->streams[facts.video_index];
  facts.coded_width = stream->codecpar->width;
  facts.coded_height = stream->codecpar->height;
  facts.rotation = clockwise_rotation(stream);
  facts.time_base = stream->time_base;
  facts.start_pts = stream->start_time == AV_NOPTS_VALUE ? 0 : stream->start_time;
  facts.origin = static_cast<double>(facts.start_pts) * av_q2d(facts.time_base);
  facts.duration = stated_duration(format, facts);
  if (facts.duration <= 0) facts.duration = scan_duration(source, facts, deadline);
  if (!(facts.duration > 0)) {
    fail("video: unknown duration", source.what,
         "neither the container nor the packet timestamps give the duration of the video stream",
         "Remux the clip, e.g. with `ffmpeg -i IN -c copy OUT.mkv`, or remove it");
  }
  return facts;
}

// ---------------------------------------------------------------------------
// RGB conversion

// Output size before rotation when the shorter side becomes `short_side`.
void scaled_size(int width, int height, int short_side, int& scaled_width, int& scaled_height) {
  scaled_width = width;
  scaled_height = height;
  if (short_side <= 0) return;
  if (width <= height) {
    scaled_width = short_side;
    scaled_height = std::max(1, static_cast<int>(std::lround(static_cast<double>(height) * short_side / width)));
  } else {
    scaled_height = short_side;
    scaled_width = std::max(1, static_cast<int>(std::lround(static_cast<double>(width) * short_side / height)));
  }
}

bool is_full_range_format(int format) {
  return format == AV_PIX_FMT_YUVJ420P || format == AV_PIX_FMT_YUVJ422P || format == AV_PIX_FMT_YUVJ444P ||
         format == AV_PIX_FMT_YUVJ440P || format == AV_PIX_FMT_YUVJ411P;
}

// Copies an RGB image, turning it `rotation` degrees clockwise. `destination`
// has tight rows of the rotated width.
void copy_rotated(const uint8_t* source, int source_stride, int width, int height, int rotation,
                  uint8_t* destination) {
  if (rotation == 0) {
    for (int row = 0; row < height; ++row)
      std::memcpy(destination + static_cast<size_t>(row) * width * 3, source + static_cast<size_t>(row) * source_stride,
                  static_cast<size_t>(width) * 3);
    return;
  }
  const bool swapped = rotation == 90 || rotation == 270;
  const int out_width = swapped ? height : width;
  const int out_height = swapped ? width : height;
  for (int row = 0; row < out_height; ++row) {
    for (int column = 0; column < out_width; ++column) {
      int source_row = 0, source_column = 0;
      if (rotation == 90) {
        source_row = height - 1 - column;
        source_column = row;
      } else if (rotation == 180) {
        source_row = height - 1 - row;
        source_column = width - 1 - column;
      } else {  // 270
        source_row = column;
        source_column = width - 1 - row;
      }
      const uint8_t* pixel = source + static_cast<size_t>(source_row) * source_stride + source_column * 3;
      uint8_t* target = destination + (static_cast<size_t>(row) * out_width + column) * 3;
      target[0] = pixel[0];
      target[1] = pixel[1];
      target[2] = pixel[2];
    }
  }
}

// Converts decoded frames of any pixel format and size to RGB24 at one scaled
// size, then rotates them.
class FrameConverter {
 public:
  FrameConverter(int scaled_width, int scaled_height, int rotation)
      : width_(scaled_width), height_(scaled_height), rotation_(rotation),
        // Rows 64-byte aligned, so that swscale's SIMD code never writes past a row end.
        stride_((scaled_width * 3 + 63) / 64 * 64),
        buffer_(static_cast<size_t>(stride_) * scaled_height + 64) {}

  // Writes `frame` into `destination`: tight RGB rows of the rotated size.
  void convert(const AVFrame* frame, uint8_t* destination, const std::string& what) {
    prepare(frame, what);
    uint8_t* planes[4] = {buffer_.data(), nullptr, nullptr, nullptr};
    int strides[4] = {stride_, 0, 0, 0};
    sws_scale(context_.get(), frame->data, frame->linesize, 0, frame->height, planes, strides);
    copy_rotated(buffer_.data(), stride_, width_, height_, rotation_, destination);
  }

 private:
  void prepare(const AVFrame* frame, const std::string& what) {
    const auto format = static_cast<AVPixelFormat>(frame->format);
    // Area averaging when shrinking, and bilinear when enlarging, where area
    // gives blocky results. Accurate rounding and full chroma interpolation
    // keep flat colours exact to within the YUV rounding.
    const bool shrinking = width_ <= frame->width && height_ <= frame->height;
    const int flags = (shrinking ? SWS_AREA : SWS_BILINEAR) | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT;
    SwsContext* context = sws_getCachedContext(context_.release(), frame->width, frame->height, format, width_,
                                               height_, AV_PIX_FMT_RGB24, flags, nullptr, nullptr, nullptr);
    context_.reset(context);
    if (context == nullptr) {
      const char* name = av_get_pix_fmt_name(format);
      fail("video: unsupported codec", what,
           str_cat("cannot convert frames of pixel format ", name ? name : "unknown", " to RGB"),
           "Re-encode the clip to a common pixel format such as yuv420p");
    }
    set_colour_details(frame, format);
  }

  // Tells swscale the frame's YUV matrix and range, which it does not read
  // from the frame itself. The output is full-range RGB.
  void set_colour_details(const AVFrame* frame, AVPixelFormat format) {
    const AVPixFmtDescriptor* descriptor = av_pix_fmt_desc_get(format);
    if (descriptor == nullptr || (descriptor->flags & AV_PIX_FMT_FLAG_RGB) || descriptor->nb_components < 3) return;
    int space = frame->colorspace;
    if (space == AVCOL_SPC_UNSPECIFIED || space == AVCOL_SPC_RGB || space == AVCOL_SPC_RESERVED ||
        space > AVCOL_SPC_BT2020_CL)
      space = SWS_CS_DEFAULT;
    const int full_range = frame->color_range == AVCOL_RANGE_JPEG || is_full_range_format(format) ? 1 : 0;
    sws_setColorspaceDetails(context_.get(), sws_getCoefficients(space), full_range,
                             sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
  }

  int width_, height_, rotation_, stride_;
  std::vector<uint8_t> buffer_;
  SwsPtr context_;
};

// ---------------------------------------------------------------------------
// Decoders

CodecPtr open_decoder(const AVStream* stream, const char* kind, const std::string& what) {
  const AVCodec* codec = avcodec_find_decoder(stream->codecpar->codec_id);
  if (codec == nullptr) {
    fail("video: unsupported codec", what,
         str_cat("no decoder for the ", kind, " codec ", avcodec_get_name(stream->codecpar->codec_id),
                 " in this FFmpeg build"),
         "Re-encode the clip, e.g. to H.264 or VP9 video and AAC or Opus audio");
  }
  CodecPtr context(avcodec_alloc_context3(codec));
  if (!context) throw std::bad_alloc();
  int code = avcodec_parameters_to_context(context.get(), stream->codecpar);
  if (code >= 0) {
    context->pkt_timebase = stream->time_base;
    // One thread per clip: data loaders decode many clips at once on their
    // own worker threads.
    context->thread_count = 1;
    code = avcodec_open2(context.get(), codec, nullptr);
  }
  if (code < 0) {
    fail("video: unsupported codec", what,
         str_cat("cannot open the ", kind, " decoder ", codec->name, ": ", ffmpeg_error_text(code)),
         "Re-encode the clip, e.g. to H.264 or VP9 video and AAC or Opus audio");
  }
  return context;
}

// The audio track decoded and resampled to mono float, with the time of its
// first sample.
class AudioTrack {
 public:
  AudioTrack(const AVStream* stream, int output_rate, double origin, const std::string& what)
      : decoder_(open_decoder(stream, "audio", what)), frame_(allocate_frame()), time_base_(stream->time_base),
        output_rate_(output_rate), origin_(origin), what_(what) {}
  ~AudioTrack() { av_channel_layout_uninit(&input_layout_); }
  AudioTrack(const AudioTrack&) = delete;
  AudioTrack& operator=(const AudioTrack&) = delete;

  // Decodes one packet, or drains the decoder and the resampler for nullptr.
  // A damaged packet is skipped.
  void decode(const AVPacket* packet) {
    const int code = avcodec_send_packet(decoder_.get(), packet);
    if (code < 0 && code != AVERROR(EAGAIN) && packet != nullptr) return;
    while (avcodec_receive_frame(decoder_.get(), frame_.get()) >= 0) {
      resample(frame_.get());
      av_frame_unref(frame_.get());
    }
    if (packet == nullptr) drain_resampler();
  }

  // Whether the decoded audio reaches `time` (seconds from the video start).
  bool reaches(double time) const { return end_time_ >= time; }
  // Whether the first decoded audio sample lies after `time`.
  bool starts_after(double time) const { return !std::isnan(first_time_) && first_time_ > time; }

  // `count` samples from `start` seconds on, zeros where the track has none.
  // NOTE: the track is taken as one run of samples placed by the timestamp
  // of its first frame. A gap in the audio timestamps shifts the samples
  // after it, and the placement is only as exact as the container's
  // timestamps: Matroska and WebM store milliseconds.
  std::vector<float> samples_from(double start, size_t count) const {
    std::vector<float> output(count, 0.0f);
    if (std::isnan(first_time_)) return output;
    const int64_t offset = std::llround((start - first_time_) * output_rate_);
    for (size_t i = 0; i < count; ++i) {
      const int64_t index = offset + static_cast<int64_t>(i);
      if (index >= 0 && index < static_cast<int64_t>(samples_.size())) output[i] = samples_[index];
    }
    return output;
  }

 private:
  void resample(const AVFrame* frame) {
    if (frame->nb_samples <= 0 || frame->sample_rate <= 0) return;
    double time = std::numeric_limits<double>::quiet_NaN();
    if (frame->best_effort_timestamp != AV_NOPTS_VALUE)
      time = static_cast<double>(frame->best_effort_timestamp) * av_q2d(time_base_) - origin_;
    if (std::isnan(first_time_)) first_time_ = std::isnan(time) ? 0.0 : time;
    const double length = static_cast<double>(frame->nb_samples) / frame->sample_rate;
    end_time_ = std::isnan(time) ? end_time_ + length : std::max(end_time_, time + length);

    ensure_resampler(frame);
    const int capacity = swr_get_out_samples(resampler_.get(), frame->nb_samples);
    if (capacity <= 0) return;
    const size_t old_size = samples_.size();
    samples_.resize(old_size + static_cast<size_t>(capacity));
    auto* output = reinterpret_cast<uint8_t*>(samples_.data() + old_size);
    const int produced = swr_convert(resampler_.get(), &output, capacity,
                                     const_cast<const uint8_t**>(frame->extended_data), frame->nb_samples);
    samples_.resize(old_size + static_cast<size_t>(std::max(produced, 0)));
    if (produced < 0) fail_conversion(produced);
  }

  // (Re)creates the resampler when the input format, rate or layout changes.
  void ensure_resampler(const AVFrame* frame) {
    AVChannelLayout layout{};
    if (frame->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC)
      av_channel_layout_default(&layout, frame->ch_layout.nb_channels);
    else
      av_channel_layout_copy(&layout, &frame->ch_layout);
    const bool same = resampler_ && frame->format == input_format_ && frame->sample_rate == input_rate_ &&
                      av_channel_layout_compare(&layout, &input_layout_) == 0;
    if (same) {
      av_channel_layout_uninit(&layout);
      return;
    }
    if (resampler_) drain_resampler();
    av_channel_layout_uninit(&input_layout_);
    input_layout_ = layout;
    input_format_ = frame->format;
    input_rate_ = frame->sample_rate;

    AVChannelLayout mono{};
    av_channel_layout_default(&mono, 1);
    SwrContext* raw = nullptr;
    int code = swr_alloc_set_opts2(&raw, &mono, AV_SAMPLE_FMT_FLT, output_rate_, &input_layout_,
                                   static_cast<AVSampleFormat>(input_format_), input_rate_, 0, nullptr);
    resampler_.reset(raw);
    // A mix matrix normalised to a gain of at most 1, so that two equal
    // channels mix to their average instead of being summed.
    if (code >= 0) code = av_opt_set_double(raw, "rematrix_maxval", 1.0, 0);
    if (code >= 0) code = swr_init(raw);
    if (code < 0) fail_conversion(code);
  }

  void drain_resampler() {
    if (!resampler_) return;
    while (true) {
      const int capacity = swr_get_out_samples(resampler_.get(), 0);
      if (capacity <= 0) return;
      const size_t old_size = samples_.size();
      samples_.resize(old_size + static_cast<size_t>(capacity));
      auto* output = reinterpret_cast<uint8_t*>(samples_.data() + old_size);
      const int produced = swr_convert(resampler_.get(), &output, capacity, nullptr, 0);
      samples_.resize(old_size + static_cast<size_t>(std::max(produced, 0)));
      if (produced <= 0) return;
    }
  }

  [[noreturn]] void fail_conversion(int code) const {
    fail("video: audio conversion failed", what_,
         str_cat("cannot convert the audio to mono at ", output_rate_, " Hz: ", ffmpeg_error_text(code)),
         "Re-encode the audio track, e.g. to AAC, or decode without audio");
  }

  CodecPtr decoder_;
  FramePtr frame_;
  SwrPtr resampler_;
  AVRational time_base_;
  int output_rate_;
  double origin_;
  std::string what_;
  int input_format_ = -1, input_rate_ = 0;
  AVChannelLayout input_layout_{};
  std::vector<float> samples_;
  double first_time_ = std::numeric_limits<double>::quiet_NaN();
  double end_time_ = -std::numeric_limits<double>::infinity();
};

// ---------------------------------------------------------------------------
// Frame selection

// Stream facts, output size and target times for one decode of a clip.
struct Plan {
  const Source* source = nullptr;
  const VideoDecodeOptions* options = nullptr;
  StreamFacts facts;
  int scaled_width = 0, scaled_height = 0;  // before rotation
  int width = 0, height = 0;                // after rotation
  double window_start = 0.0, window_end = 0.0;
  std::vector<double> targets;
  bool with_audio = false;
};

// One pass over the clip: reads packets from the current position, assigns
// decoded frames to the targets, and collects the audio.
class ClipDecoder {
 public:
  ClipDecoder(Input& input, const Plan& plan, DecodedVideo& result, const Deadline& deadline)
      : format_(input.format.get()), plan_(plan), result_(result), deadline_(deadline),
        what_(plan.source->what), converter_(plan.scaled_width, plan.scaled_height, plan.facts.rotation),
        frame_(allocate_frame()), previous_(allocate_frame()),
        frame_bytes_(static_cast<size_t>(plan.width) * plan.height * 3) {
    for (unsigned i = 0; i < format_->nb_streams; ++i) {
      const int index = static_cast<int>(i);
      const bool used = index == plan.facts.video_index || (plan.with_audio && index == plan.facts.audio_index);
      if (!used) format_->streams[i]->discard = AVDISCARD_ALL;
    }
    decoder_ = open_decoder(format_->streams[plan.facts.video_index], "video", what_);
    if (plan.with_audio) {
      audio_ = std::make_unique<AudioTrack>(format_->streams[plan.facts.audio_index], plan.options->audio_rate,
                                            plan.facts.origin, what_);
    }
  }

  // Decodes the window into `result`, after seeking backward to
  // `seek_time` seconds when it is positive. Returns false, leaving `result`
  // partly written, when the pass must be repeated from the beginning of the
  // file: the seek failed, or it landed after the first target or after the
  // audio window start.
  bool run(double seek_time) {
    seeked_ = seek_time > 0;
    if (seeked_ && !seek_to(seek_time)) return false;

    PacketPtr packet(av_packet_alloc());
    if (!packet) throw std::bad_alloc();
    bool read_error = false;
    int read_code = 0;
    while (!video_done_ || (audio_ && !audio_->reaches(plan_.window_end))) {
      check_deadline(deadline_, what_);
      read_code = av_read_frame(format_, packet.get());
      if (read_code < 0) {
        check_deadline(deadline_, what_);
        read_error = read_code != AVERROR_EOF;
        break;
      }
      if (packet->stream_index == plan_.facts.video_index && !video_done_) {
        // Demuxers mark a packet corrupt when its data ends early, as in a
        // file cut short.
        if (packet->flags & AV_PKT_FLAG_CORRUPT) saw_corrupt_packet_ = true;
        decode_video_packet(packet.get());
      } else if (audio_ && packet->stream_index == plan_.facts.audio_index) {
        audio_->decode(packet.get());
      }
      av_packet_unref(packet.get());
      if (overshot_) return false;
      if (seeked_ && audio_ && audio_->starts_after(plan_.window_start + kAudioStartToleranceSeconds)) return false;
    }

    if (!video_done_) decode_video_packet(nullptr);
    if (overshot_) return false;
    if (audio_) audio_->decode(nullptr);
    check_deadline(deadline_, what_);
    finish(read_error, read_code);
    return true;
  }

 private:
  bool seek_to(double seconds) {
    const int64_t target =
        plan_.facts.start_pts + static_cast<int64_t>(std::floor(seconds / av_q2d(plan_.facts.time_base)));
    return av_seek_frame(format_, plan_.facts.video_index, target, AVSEEK_FLAG_BACKWARD) >= 0;
  }

  // Sends one packet (nullptr drains the decoder) and takes the frames it
  // returns. A damaged packet is skipped, and the frames after the next
  // keyframe decode again.
  void decode_video_packet(const AVPacket* packet) {
    const int code = avcodec_send_packet(decoder_.get(), packet);
    if (code < 0 && code != AVERROR(EAGAIN)) {
      last_decode_error_ = code;
      if (packet != nullptr) return;
    }
    while (!video_done_ && !overshot_) {
      const int received = avcodec_receive_frame(decoder_.get(), frame_.get());
      if (received == AVERROR(EAGAIN) || received == AVERROR_EOF) break;
      if (received < 0) {
        last_decode_error_ = received;
        break;
      }
      take_frame(frame_.get());
      av_frame_unref(frame_.get());
    }
  }

  // Time of a frame in seconds from the start of the video stream.
  // NOTE: a frame without any timestamp is placed right after the previous
  // frame, using that frame's length.
  double frame_time(const AVFrame* frame) const {
    int64_t timestamp = frame->best_effort_timestamp;
    if (timestamp == AV_NOPTS_VALUE) timestamp = frame->pts;
    if (timestamp == AV_NOPTS_VALUE) return have_previous_ ? previous_end_ : 0.0;
    return static_cast<double>(timestamp - plan_.facts.start_pts) * av_q2d(plan_.facts.time_base);
  }

  void take_frame(AVFrame* frame) {
    const int64_t pixels = static_cast<int64_t>(frame->width) * frame->height;
    if (pixels > plan_.options->max_pixels) {
      fail("video: too large", what_,
           str_cat("a decoded frame is ", frame->width, "x", frame->height, " = ", pixels,
                   " pixels, more than max_pixels = ", plan_.options->max_pixels),
           "Downscale the clip or raise max_pixels");
    }
    // A frame that the decoder reports damaged or patched up (concealment)
    // is skipped, and the previous one stays on screen.
    if ((frame->flags & AV_FRAME_FLAG_CORRUPT) || frame->decode_error_flags != 0) {
      ++damaged_frames_;
      return;
    }
    const double time = frame_time(frame);
    if (!have_previous_ && seeked_ && time > plan_.targets[0] + kTimeEpsilon) {
      overshot_ = true;
      return;
    }
    double length = 0.0;
    if (frame->pkt_duration > 0)
      length = static_cast<double>(frame->pkt_duration) * av_q2d(plan_.facts.time_base);
    else if (have_previous_)
      length = std::max(0.0, time - previous_time_);

    // This frame replaces the previous one on screen at `time`, so every
    // target before it shows the previous frame. Targets before the first
    // frame show the first frame.
    int slot = -1;
    const int count = static_cast<int>(plan_.targets.size());
    while (next_target_ < count && time > plan_.targets[next_target_] + kTimeEpsilon) {
      if (have_previous_)
        assign(next_target_, previous_.get(), previous_time_, previous_slot_);
      else
        assign(next_target_, frame, time, slot);
      ++next_target_;
    }
    if (next_target_ == count) {
      video_done_ = true;
      return;
    }
    av_frame_unref(previous_.get());
    av_frame_move_ref(previous_.get(), frame);
    have_previous_ = true;
    previous_time_ = time;
    previous_end_ = time + length;
    previous_slot_ = slot;
  }

  // Writes `frame` as output frame `index`. A frame already converted into
  // output `slot` is copied from there; otherwise `slot` becomes `index`.
  void assign(int index, const AVFrame* frame, double time, int& slot) {
    uint8_t* destination = result_.pixels.data() + static_cast<size_t>(index) * frame_bytes_;
    if (slot >= 0) {
      std::memcpy(destination, result_.pixels.data() + static_cast<size_t>(slot) * frame_bytes_, frame_bytes_);
    } else {
      converter_.convert(frame, destination, what_);
      slot = index;
    }
    result_.frame_times[index] = time;
  }

  // Fills the targets after the last decoded frame with that frame.
  void finish(bool read_error, int read_code) {
    if (!have_previous_ && next_target_ == 0) {
      const int code = read_error ? read_code : last_decode_error_;
      std::string detail = code < 0 ? ": " + ffmpeg_error_text(code) : "";
      if (damaged_frames_ > 0) detail += str_cat(" (", damaged_frames_, " damaged frames skipped)");
      fail("video: no frames", what_, "no video frame could be decoded" + detail,
           "The file is damaged or cut short; re-encode or remove it");
    }
    const int count = static_cast<int>(plan_.targets.size());
    for (; next_target_ < count; ++next_target_) {
      const double target = plan_.targets[next_target_];
      if (target > previous_time_ + kTimeEpsilon && target >= previous_end_ - kTimeEpsilon)
        ++result_.padded_frames;
      assign(next_target_, previous_.get(), previous_time_, previous_slot_);
    }
    result_.truncated = read_error || saw_corrupt_packet_;
    if (audio_) {
      const double span = plan_.window_end - plan_.window_start;
      const auto samples = static_cast<size_t>(std::llround(span * plan_.options->audio_rate));
      result_.audio = audio_->samples_from(plan_.window_start, samples);
    }
  }

  AVFormatContext* format_;
  const Plan& plan_;
  DecodedVideo& result_;
  const Deadline& deadline_;
  const std::string& what_;
  FrameConverter converter_;
  CodecPtr decoder_;
  std::unique_ptr<AudioTrack> audio_;
  FramePtr frame_;
  FramePtr previous_;  // the last decoded frame not yet passed by a target
  size_t frame_bytes_;

  bool seeked_ = false;
  bool overshot_ = false;
  bool video_done_ = false;
  bool have_previous_ = false;
  double previous_time_ = 0.0, previous_end_ = 0.0;
  int previous_slot_ = -1;
  int next_target_ = 0;
  int last_decode_error_ = 0;
  int damaged_frames_ = 0;
  bool saw_corrupt_packet_ = false;
};

void validate(const VideoDecodeOptions& options) {
  if (options.frames < 1)
    throw std::invalid_argument(str_cat("VideoDecodeOptions::frames must be at least 1, got ", options.frames));
  if (!(options.fps >= 0) || !std::isfinite(options.fps))
    throw std::invalid_argument(str_cat("VideoDecodeOptions::fps must be 0 or a positive rate, got ", options.fps));
  if (!(options.start_fraction >= 0 && options.start_fraction <= 1)) {
    throw std::invalid_argument(
        str_cat("VideoDecodeOptions::start_fraction must be in [0, 1], got ", options.start_fraction));
  }
  if (options.short_side < 0) {
    throw std::invalid_argument(
        str_cat("VideoDecodeOptions::short_side must be 0 or positive, got ", options.short_side));
  }
  if (options.max_pixels < 1) {
    throw std::invalid_argument(
        str_cat("VideoDecodeOptions::max_pixels must be positive, got ", options.max_pixels));
  }
  if (options.audio_rate < 1) {
    throw std::invalid_argument(
        str_cat("VideoDecodeOptions::audio_rate must be positive, got ", options.audio_rate));
  }
}

Plan make_plan(const Source& source, const VideoDecodeOptions& options, const StreamFacts& facts) {
  Plan plan;
  plan.source = &source;
  plan.options = &options;
  plan.facts = facts;
  scaled_size(facts.coded_width, facts.coded_height, options.short_side, plan.scaled_width, plan.scaled_height);
  const bool swapped = facts.rotation == 90 || facts.rotation == 270;
  plan.width = swapped ? plan.scaled_height : plan.scaled_width;
  plan.height = swapped ? plan.scaled_width : plan.scaled_height;

  const int count = options.frames;
  plan.targets.resize(count);
  if (options.fps > 0) {
    const double window = count / options.fps;
    plan.window_start = options.start_fraction * std::max(0.0, facts.duration - window);
    plan.window_end = plan.window_start + window;
    for (int i = 0; i < count; ++i) plan.targets[i] = plan.window_start + i / options.fps;
  } else {
    plan.window_start = 0.0;
    plan.window_end = facts.duration;
    for (int i = 0; i < count; ++i) plan.targets[i] = i * facts.duration / count;
  }
  plan.with_audio = options.want_audio && facts.audio_index >= 0;
  return plan;
}

DecodedVideo empty_result(const Plan& plan) {
  DecodedVideo result;
  result.frames = plan.options->frames;
  result.width = plan.width;
  result.height = plan.height;
  result.pixels.assign(static_cast<size_t>(result.frames) * plan.width * plan.height * 3, 0);
  result.frame_times.assign(result.frames, 0.0);
  result.duration = plan.facts.duration;
  result.window_start = plan.window_start;
  result.rotation = plan.facts.rotation;
  result.has_audio = plan.with_audio;
  return result;
}

DecodedVideo decode_clip(const Source& source, const VideoDecodeOptions& options) {
  validate(options);
  // Declared first so that it is destroyed last, after every FFmpeg object
  // whose cleanup may log.
  ScopedLogCapture log_capture;
  const Deadline deadline(options.time_limit_seconds);

  // Held by pointer so that reset() closes it in member order: the format
  // context before the AVIOContext and the reader.
  auto input = std::make_unique<Input>(open_input(source, deadline));
  const StreamFacts facts = read_stream_facts(*input, source, deadline);
  const int64_t pixels = static_cast<int64_t>(facts.coded_width) * facts.coded_height;
  if (facts.coded_width <= 0 || facts.coded_height <= 0) {
    fail("video: cannot open", source.what, "the video stream states no frame size", kOpenAdvice);
  }
  if (pixels > options.max_pixels) {
    fail("video: too large", source.what,
         str_cat("the frames are ", facts.coded_width, "x", facts.coded_height, " = ", pixels,
                 " pixels, more than max_pixels = ", options.max_pixels),
         "Downscale the clip or raise max_pixels");
  }
  const Plan plan = make_plan(source, options, facts);

  DecodedVideo result = empty_result(plan);
  double seek_time = options.fps > 0 ? plan.window_start : 0.0;
  if (plan.with_audio) seek_time -= kAudioSeekMarginSeconds;
  {
    ClipDecoder decoder(*input, plan, result, deadline);
    if (decoder.run(seek_time)) return result;
  }
  // The seek failed or landed too late: decode from the beginning with a
  // fresh demuxer, whose state no seek has touched.
  input.reset();
  input = std::make_unique<Input>(open_input(source, deadline));
  result = empty_result(plan);
  ClipDecoder decoder(*input, plan, result, deadline);
  decoder.run(0.0);
  return result;
}

VideoInfo probe_clip(const Source& source) {
  ScopedLogCapture log_capture;
  const Deadline deadline(kProbeTimeLimitSeconds);
  Input input = open_input(source, deadline);
  const StreamFacts facts = read_stream_facts(input, source, deadline);
  const AVStream* video = input.format->streams[facts.video_index];

  VideoInfo info;
  info.duration = facts.duration;
  const bool swapped = facts.rotation == 90 || facts.rotation == 270;
  info.width = swapped ? facts.coded_height : facts.coded_width;
  info.height = swapped ? facts.coded_width : facts.coded_height;
  AVRational rate = video->avg_frame_rate;
  if (rate.num <= 0 || rate.den <= 0) rate = video->r_frame_rate;
  if (rate.num > 0 && rate.den > 0) info.nominal_fps = av_q2d(rate);
  info.frame_count = std::max<int64_t>(0, video->nb_frames);
  info.rotation = facts.rotation;
  info.video_codec = avcodec_get_name(video->codecpar->codec_id);
  if (facts.audio_index >= 0) {
    info.has_audio = true;
    info.audio_codec = avcodec_get_name(input.format->streams[facts.audio_index]->codecpar->codec_id);
  }
  return info;
}

Source memory_source(const uint8_t* data, size_t size, const std::string& what) {
  Source source;
  source.data = data;
  source.size = size;
  source.what = what;
  return source;
}

Source file_source(const std::string& path) {
  Source source;
  source.path = path;
  source.from_file = true;
  source.what = path;
  return source;
}

}  // namespace

DecodedVideo decode_video(const uint8_t* data, size_t size, const VideoDecodeOptions& options,
                          const std::string& what) {
  return decode_clip(memory_source(data, size, what), options);
}

DecodedVideo decode_video_file(const std::string& path, const VideoDecodeOptions& options) {
  return decode_clip(file_source(path), options);
}

VideoInfo probe_video(const uint8_t* data, size_t size, const std::string& what) {
  return probe_clip(memory_source(data, size, what));
}

VideoInfo probe_video_file(const std::string& path) { return probe_clip(file_source(path)); }

}  // namespace imp
