// TensorBoard event files, written and read without a protobuf library.
//
// An event file is a sequence of records. Each record is
//   u64 little-endian payload length
//   u32 masked CRC-32C of those 8 length bytes
//   payload: one serialized tensorflow.Event protobuf message
//   u32 masked CRC-32C of the payload
// (imp::masked_crc32c in imp/core/crc32c.h). The first event of a file carries
// file_version "brain.Event:2"; every later event carries one scalar summary.
// `tensorboard --logdir DIR` finds the files by the "tfevents" in their names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imp {

// Appends scalars to DIR/events.out.tfevents.<unix seconds>.<hostname>.<pid>.imp,
// creating DIR. Records are buffered in memory and written by flush(), when
// the buffer grows past 64 KiB, and by the destructor.
class EventWriter {
 public:
  // Creates DIR and the file and writes the file_version event. Throws
  // DataError naming the path when the directory or file cannot be created.
  explicit EventWriter(const std::string& dir);
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;
  // Flushes. A write error here is printed to stderr, because a destructor
  // cannot throw; call flush() first to get it as a DataError.
  ~EventWriter();

  // Adds one scalar with wall time = now. TensorBoard stores scalars as
  // 32-bit floats, so `value` is rounded to float.
  void add_scalar(const std::string& tag, double value, int64_t step);
  // Adds one scalar with an explicit wall time in seconds since the Unix epoch.
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time);

  // Writes the buffered records to disk. Throws DataError naming the file
  // when the write fails (for example, a full disk).
  void flush();

  const std::string& path() const { return path_; }

 private:
  void append_record(const std::string& payload);

  std::string path_;
  int fd_ = -1;
  std::string buffer_;  // encoded records not yet written
};

// One scalar summary value of an event file.
struct ScalarEvent {
  std::string tag;
  int64_t step;
  double wall_time;
  float value;
};

// One decoded tensorflow.Event: the fields imp writes. file_version is empty
// for events that are not the file header; `scalars` lists the Summary values
// that carry a simple_value, as (tag, value) pairs.
struct TensorBoardEvent {
  double wall_time = 0.0;
  int64_t step = 0;
  std::string file_version;
  std::vector<std::pair<std::string, float>> scalars;
};

// Reads every event of an event file, checking both CRCs of every record.
// A damaged or truncated record is a DataError naming the file and the byte
// offset where the record starts. Fields other than the ones above are
// skipped, so files from other writers read too.
// NOTE: summary values without a simple_value are skipped, and these include
// the tensor-valued scalars that tf.summary.scalar of TensorFlow 2 writes.
std::vector<TensorBoardEvent> read_events(const std::string& path);

// Reads every scalar of an event file, in file order, with the same checks
// as read_events.
std::vector<ScalarEvent> read_scalar_events(const std::string& path);

}  // namespace imp
