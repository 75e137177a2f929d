// TensorBoard event files: record framing and the small subset of the
// tensorflow.Event protobuf that scalar logging needs, encoded by hand.
//
// Field numbers and types, from tensorflow/core/util/event.proto and
// tensorflow/core/framework/summary.proto:
//   message Event   { double wall_time = 1; int64 step = 2;
//                     oneof what { string file_version = 3; Summary summary = 5; ... } }
//   message Summary { repeated Value value = 1; }
//   message Value   { string tag = 1; oneof value { float simple_value = 2; ... } }
// Protobuf wire types: 0 varint (int64), 1 fixed 64-bit (double), 2
// length-delimited (string, message), 5 fixed 32-bit (float). Every field
// starts with a varint key (field_number << 3 | wire_type); fixed-width
// values are little-endian.
#include "imp/train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>

#include "imp/core/crc32c.h"
#include "imp/core/error.h"

namespace imp {
namespace {

namespace fs = std::filesystem;

constexpr char kFileVersion[] = "brain.Event:2";
constexpr size_t kFlushThresholdBytes = 64 * 1024;

// Protobuf wire types.
constexpr uint32_t kWireVarint = 0;
constexpr uint32_t kWireFixed64 = 1;
constexpr uint32_t kWireLengthDelimited = 2;
constexpr uint32_t kWireFixed32 = 5;

// Field numbers (see the file header).
constexpr uint32_t kEventWallTime = 1;
constexpr uint32_t kEventStep = 2;
constexpr uint32_t kEventFileVersion = 3;
constexpr uint32_t kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1;
constexpr uint32_t kValueSimpleValue = 2;

// ---------------------------------------------------------------------------
// Encoding

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_key(std::string& out, uint32_t field, uint32_t wire_type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type);
}

// Appends the low `count` bytes of `bits`, least significant first.
void put_little_endian(std::string& out, uint64_t bits, int count) {
  for (int i = 0; i < count; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

void put_double(std::string& out, uint32_t field, double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, kWireFixed64);
  put_little_endian(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, kWireFixed32);
  put_little_endian(out, bits, 4);
}

// int64 fields are varints of the two's-complement value, so a negative step
// takes ten bytes.
void put_int64(std::string& out, uint32_t field, int64_t value) {
  put_key(out, field, kWireVarint);
  put_varint(out, static_cast<uint64_t>(value));
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kWireLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

std::string encode_file_version_event(double wall_time) {
  std::string event;
  put_double(event, kEventWallTime, wall_time);
  put_int64(event, kEventStep, 0);
  put_bytes(event, kEventFileVersion, kFileVersion);
  return event;
}

std::string encode_scalar_event(const std::string& tag, float value, int64_t step, double wall_time) {
  std::string summary_value;
  put_bytes(summary_value, kValueTag, tag);
  put_float(summary_value, kValueSimpleValue, value);
  std::string summary;
  put_bytes(summary, kSummaryValue, summary_value);

  std::string event;
  put_double(event, kEventWallTime, wall_time);
  put_int64(event, kEventStep, step);
  put_bytes(event, kEventSummary, summary);
  return event;
}

double seconds_since_epoch() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration<double>(now).count();
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// ---------------------------------------------------------------------------
// Decoding

// Thrown by ProtoReader on a payload that does not parse. read_events turns
// it into a DataError with the file and record offset.
struct MalformedPayload {
  std::string reason;
};

// Reads protobuf fields from a byte range.
class ProtoReader {
 public:
  ProtoReader(const char* data, size_t size) : data_(data), size_(size) {}

  bool done() const { return position_ >= size_; }

  uint64_t read_varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (position_ >= size_) throw MalformedPayload{"a varint runs past the end of the message"};
      const auto byte = static_cast<unsigned char>(data_[position_++]);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return value;
    }
    throw MalformedPayload{"a varint is longer than 10 bytes"};
  }

  uint64_t read_little_endian(int count) {
    require(count, "a fixed-width field");
    uint64_t bits = 0;
    for (int i = 0; i < count; ++i) {
      bits |= static_cast<uint64_t>(static_cast<unsigned char>(data_[position_ + i])) << (8 * i);
    }
    position_ += count;
    return bits;
  }

  double read_double() {
    const uint64_t bits = read_little_endian(8);
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  float read_float() {
    const auto bits = static_cast<uint32_t>(read_little_endian(4));
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }

  // Returns the bytes of a length-delimited field as a sub-reader range.
  std::pair<const char*, size_t> read_length_delimited() {
    const uint64_t length = read_varint();
    require(length, "a length-delimited field");
    const char* start = data_ + position_;
    position_ += length;
    return {start, static_cast<size_t>(length)};
  }

  void skip(uint32_t wire_type) {
    switch (wire_type) {
      case kWireVarint: read_varint(); break;
      case kWireFixed64: read_little_endian(8); break;
      case kWireLengthDelimited: read_length_delimited(); break;
      case kWireFixed32: read_little_endian(4); break;
      default:
        // Wire types 3 and 4 (groups) are obsolete and never appear in event files.
        throw MalformedPayload{str_cat("unsupported protobuf wire type ", wire_type)};
    }
  }

 private:
  void require(uint64_t count, const char* what) {
    if (count > size_ - position_) {
      throw MalformedPayload{str_cat(what, " of ", count, " bytes runs past the end of the message")};
    }
  }

  const char* data_;
  size_t size_;
  size_t position_ = 0;
};

void expect_wire_type(uint32_t actual, uint32_t expected, const char* field) {
  if (actual != expected) {
    throw MalformedPayload{str_cat("field ", field, " has wire type ", actual, ", expected ", expected)};
  }
}

// Decodes one Summary.Value. Returns false when it carries no simple_value
// (images, histograms, tensors).
bool decode_summary_value(const char* data, size_t size, std::pair<std::string, float>& scalar) {
  ProtoReader reader(data, size);
  bool has_value = false;
  while (!reader.done()) {
    const uint64_t key = reader.read_varint();
    const auto field = static_cast<uint32_t>(key >> 3);
    const auto wire_type = static_cast<uint32_t>(key & 7);
    if (field == kValueTag) {
      expect_wire_type(wire_type, kWireLengthDelimited, "Summary.Value.tag");
      const auto [start, length] = reader.read_length_delimited();
      scalar.first.assign(start, length);
    } else if (field == kValueSimpleValue) {
      expect_wire_type(wire_type, kWireFixed32, "Summary.Value.simple_value");
      scalar.second = reader.read_float();
      has_value = true;
    } else {
      reader.skip(wire_type);
    }
  }
  return has_value;
}

void decode_summary(const char* data, size_t size, TensorBoardEvent& event) {
  ProtoReader reader(data, size);
  while (!reader.done()) {
    const uint64_t key = reader.read_varint();
    const auto field = static_cast<uint32_t>(key >> 3);
    const auto wire_type = static_cast<uint32_t>(key & 7);
    if (field == kSummaryValue) {
      expect_wire_type(wire_type, kWireLengthDelimited, "Summary.value");
      const auto [start, length] = reader.read_length_delimited();
      std::pair<std::string, float> scalar{"", 0.0f};
      if (decode_summary_value(start, length, scalar)) event.scalars.push_back(std::move(scalar));
    } else {
      reader.skip(wire_type);
    }
  }
}

TensorBoardEvent decode_event(const char* data, size_t size) {
  TensorBoardEvent event;
  ProtoReader reader(data, size);
  while (!reader.done()) {
    const uint64_t key = reader.read_varint();
    const auto field = static_cast<uint32_t>(key >> 3);
    const auto wire_type = static_cast<uint32_t>(key & 7);
    if (field == kEventWallTime) {
      expect_wire_type(wire_type, kWireFixed64, "Event.wall_time");
      event.wall_time = reader.read_double();
    } else if (field == kEventStep) {
      expect_wire_type(wire_type, kWireVarint, "Event.step");
      event.step = static_cast<int64_t>(reader.read_varint());
    } else if (field == kEventFileVersion) {
      expect_wire_type(wire_type, kWireLengthDelimited, "Event.file_version");
      const auto [start, length] = reader.read_length_delimited();
      event.file_version.assign(start, length);
    } else if (field == kEventSummary) {
      expect_wire_type(wire_type, kWireLengthDelimited, "Event.summary");
      const auto [start, length] = reader.read_length_delimited();
      decode_summary(start, length, event);
    } else {
      reader.skip(wire_type);
    }
  }
  return event;
}

uint32_t read_u32_le(const char* bytes) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return value;
}

uint64_t read_u64_le(const char* bytes) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return value;
}

}  // namespace

// ---------------------------------------------------------------------------
// EventWriter

EventWriter::EventWriter(const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw DataError(str_cat("failed to create the TensorBoard log directory ", dir, ": ", error.message(),
                            "; check that the path is writable"));
  }
  const double now = seconds_since_epoch();
  const std::string name = str_cat("events.out.tfevents.", static_cast<long long>(now), ".", host_name(),
                                   ".", static_cast<long long>(getpid()), ".imp");
  path_ = (fs::path(dir) / name).string();

  // O_APPEND: two writers that get the same name (same directory, process
  // and second) append whole records instead of overwriting each other,
  // because flush() writes whole records in one write() call.
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw DataError(str_cat("failed to create the TensorBoard event file ", path_, ": ", std::strerror(errno),
                            "; check that the directory is writable"));
  }
  append_record(encode_file_version_event(now));
  flush();
}

EventWriter::~EventWriter() {
  try {
    flush();
  } catch (const DataError& e) {
    std::fprintf(stderr, "warning: %s\n", e.what());
  }
  if (fd_ >= 0) ::close(fd_);
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  add_scalar(tag, value, step, seconds_since_epoch());
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  append_record(encode_scalar_event(tag, static_cast<float>(value), step, wall_time));
  if (buffer_.size() >= kFlushThresholdBytes) flush();
}

void EventWriter::flush() {
  size_t written = 0;
  while (written < buffer_.size()) {
    const ssize_t count = ::write(fd_, buffer_.data() + written, buffer_.size() - written);
    if (count < 0 && errno == EINTR) continue;
    if (count < 0) {
      const std::string reason = std::strerror(errno);
      // Drop the rest: the records cannot be written, and a later retry would
      // repeat the part that was.
      buffer_.clear();
      throw DataError(str_cat("failed to write TensorBoard events to ", path_, ": ", reason,
                              "; free disk space or log to another directory"));
    }
    written += static_cast<size_t>(count);
  }
  buffer_.clear();
}

void EventWriter::append_record(const std::string& payload) {
  std::string length;
  put_little_endian(length, payload.size(), 8);
  buffer_ += length;
  put_little_endian(buffer_, masked_crc32c(length.data(), length.size()), 4);
  buffer_ += payload;
  put_little_endian(buffer_, masked_crc32c(payload.data(), payload.size()), 4);
}

// ---------------------------------------------------------------------------
// Reading

std::vector<TensorBoardEvent> read_events(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw DataError(str_cat("failed to open the TensorBoard event file ", path, ": ", std::strerror(errno)));
  }
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw DataError(str_cat("failed to read the TensorBoard event file ", path));

  std::vector<TensorBoardEvent> events;
  size_t offset = 0;
  while (offset < bytes.size()) {
    const auto fail = [&](const std::string& reason) {
      return DataError(str_cat("TensorBoard event file ", path, ": the record at byte offset ", offset, " ",
                               reason, ". The file is damaged or was truncated while being written; "
                               "the records before this offset are intact"));
    };
    const size_t remaining = bytes.size() - offset;
    if (remaining < 12) throw fail(str_cat("is truncated: only ", remaining, " bytes of its 12-byte header"));
    const char* header = bytes.data() + offset;
    if (read_u32_le(header + 8) != masked_crc32c(header, 8)) throw fail("has a wrong length checksum");

    const uint64_t length = read_u64_le(header);
    if (length > remaining - 12 || remaining - 12 - length < 4) {
      throw fail(str_cat("is truncated: its header announces a payload of ", length,
                         " bytes plus a 4-byte checksum, but only ", remaining - 12, " bytes follow"));
    }
    const char* payload = header + 12;
    if (read_u32_le(payload + length) != masked_crc32c(payload, length)) {
      throw fail("has a wrong payload checksum");
    }
    try {
      events.push_back(decode_event(payload, length));
    } catch (const MalformedPayload& error) {
      throw fail(str_cat("is not a valid tensorflow.Event: ", error.reason));
    }
    offset += 12 + length + 4;
  }
  return events;
}

std::vector<ScalarEvent> read_scalar_events(const std::string& path) {
  std::vector<ScalarEvent> scalars;
  for (TensorBoardEvent& event : read_events(path)) {
    for (auto& [tag, value] : event.scalars) {
      scalars.push_back(ScalarEvent{std::move(tag), event.step, event.wall_time, value});
    }
  }
  return scalars;
}

}  // namespace imp
