// Tests for the TensorBoard event file writer and reader.
#include "imp/train/tensorboard.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "imp/core/crc32c.h"
#include "imp/core/error.h"
#include "../scratch_dir.h"

namespace imp {
namespace {

namespace fs = std::filesystem;

std::string read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

uint64_t u64_at(const std::string& bytes, size_t offset) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  return value;
}

uint32_t u32_at(const std::string& bytes, size_t offset) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[offset + i])) << (8 * i);
  return value;
}

// Byte offset of the record after the one starting at `offset`.
size_t next_record(const std::string& bytes, size_t offset) { return offset + 12 + u64_at(bytes, offset) + 4; }

// Returns the error message of read_scalar_events, or "" when it succeeds.
std::string read_error(const std::string& path) {
  try {
    read_scalar_events(path);
  } catch (const DataError& error) {
    return error.what();
  }
  return "";
}

TEST(TensorBoard, FileNameFollowsTensorBoardPattern) {
  testing::ScratchDir scratch("tensorboard");
  const std::string dir = scratch.file("logs/run1");
  EventWriter writer(dir);
  const fs::path path(writer.path());
  EXPECT_EQ(path.parent_path(), fs::path(dir));
  EXPECT_EQ(path.filename().string().rfind("events.out.tfevents.", 0), 0u);
  EXPECT_EQ(path.extension().string(), ".imp");
  EXPECT_TRUE(fs::is_regular_file(path));
}

TEST(TensorBoard, WritesAndReadsBackScalars) {
  testing::ScratchDir scratch("tensorboard");
  std::string path;
  {
    EventWriter writer(scratch.path());
    path = writer.path();
    writer.add_scalar("loss/fmnist_cls", 0.91, 400, 1700000000.25);
    writer.add_scalar("loss/video_item", 1.7, 400, 1700000000.5);
    writer.add_scalar("lr", 0.001, 800, 1700000031.0);
  }
  const std::vector<ScalarEvent> scalars = read_scalar_events(path);
  ASSERT_EQ(scalars.size(), 3u);
  EXPECT_EQ(scalars[0].tag, "loss/fmnist_cls");
  EXPECT_EQ(scalars[0].step, 400);
  EXPECT_DOUBLE_EQ(scalars[0].wall_time, 1700000000.25);
  EXPECT_FLOAT_EQ(scalars[0].value, 0.91f);
  EXPECT_EQ(scalars[1].tag, "loss/video_item");
  EXPECT_FLOAT_EQ(scalars[1].value, 1.7f);
  EXPECT_DOUBLE_EQ(scalars[1].wall_time, 1700000000.5);
  EXPECT_EQ(scalars[2].tag, "lr");
  EXPECT_EQ(scalars[2].step, 800);
  EXPECT_FLOAT_EQ(scalars[2].value, 0.001f);
}

TEST(TensorBoard, DefaultWallTimeIsNow) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  const double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  writer.add_scalar("loss", 2.0, 1);
  writer.flush();
  const std::vector<ScalarEvent> scalars = read_scalar_events(writer.path());
  ASSERT_EQ(scalars.size(), 1u);
  EXPECT_GE(scalars[0].wall_time, before - 1.0);
  EXPECT_LE(scalars[0].wall_time, before + 60.0);
}

TEST(TensorBoard, FirstEventIsFileVersion) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  writer.add_scalar("loss", 1.0, 5, 10.0);
  writer.flush();
  const std::vector<TensorBoardEvent> events = read_events(writer.path());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_TRUE(events[0].scalars.empty());
  EXPECT_GT(events[0].wall_time, 1.5e9);  // a real clock reading, after 2017
  EXPECT_EQ(events[1].file_version, "");
  ASSERT_EQ(events[1].scalars.size(), 1u);
  EXPECT_EQ(events[1].scalars[0].first, "loss");
}

TEST(TensorBoard, RecordBytesMatchHandEncoding) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  writer.add_scalar("a", 1.5, 3, 2.0);
  writer.flush();
  const std::string bytes = read_bytes(writer.path());
  const size_t offset = next_record(bytes, 0);

  // Event { wall_time = 2.0 (key 0x09, fixed64), step = 3 (key 0x10, varint),
  //   summary (key 0x2a, 10 bytes) { value (key 0x0a, 8 bytes) {
  //     tag = "a" (key 0x0a, 1 byte), simple_value = 1.5f (key 0x15, fixed32) } } }
  const std::string expected_payload(
      "\x09\x00\x00\x00\x00\x00\x00\x00\x40"  // 2.0 as a little-endian double
      "\x10\x03"
      "\x2a\x0a"
      "\x0a\x08"
      "\x0a\x01"
      "a"
      "\x15\x00\x00\xc0\x3f",  // 1.5f as a little-endian float
      23);
  ASSERT_EQ(bytes.size(), offset + 12 + expected_payload.size() + 4);
  EXPECT_EQ(u64_at(bytes, offset), expected_payload.size());
  EXPECT_EQ(u32_at(bytes, offset + 8), masked_crc32c(bytes.data() + offset, 8));
  EXPECT_EQ(bytes.substr(offset + 12, expected_payload.size()), expected_payload);
  EXPECT_EQ(u32_at(bytes, offset + 12 + expected_payload.size()),
            masked_crc32c(expected_payload.data(), expected_payload.size()));
}

TEST(TensorBoard, FileVersionRecordBytes) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  const std::string bytes = read_bytes(writer.path());
  // 9 bytes wall_time, 2 bytes step 0, then key 0x1a, length 13, "brain.Event:2".
  ASSERT_EQ(bytes.size(), 12u + 26u + 4u);
  EXPECT_EQ(u64_at(bytes, 0), 26u);
  EXPECT_EQ(bytes.substr(12 + 9, 17), std::string("\x10\x00\x1a\x0d" "brain.Event:2", 17));
}

TEST(TensorBoard, NegativeStepRoundTrips) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  writer.add_scalar("x", -4.0, -7, 1.0);
  writer.flush();
  const std::vector<ScalarEvent> scalars = read_scalar_events(writer.path());
  ASSERT_EQ(scalars.size(), 1u);
  EXPECT_EQ(scalars[0].step, -7);
  EXPECT_FLOAT_EQ(scalars[0].value, -4.0f);
}

TEST(TensorBoard, NonFiniteValuesRoundTrip) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  writer.add_scalar("nan", std::nan(""), 1, 1.0);
  writer.add_scalar("inf", INFINITY, 2, 1.0);
  writer.flush();
  const std::vector<ScalarEvent> scalars = read_scalar_events(writer.path());
  ASSERT_EQ(scalars.size(), 2u);
  EXPECT_TRUE(std::isnan(scalars[0].value));
  EXPECT_TRUE(std::isinf(scalars[1].value));
}

TEST(TensorBoard, FlippedPayloadByteNamesOffset) {
  testing::ScratchDir scratch("tensorboard");
  std::string path;
  {
    EventWriter writer(scratch.path());
    path = writer.path();
    writer.add_scalar("loss", 1.0, 1, 1.0);
    writer.add_scalar("loss", 0.5, 2, 2.0);
  }
  std::string bytes = read_bytes(path);
  const size_t second = next_record(bytes, 0);
  const size_t third = next_record(bytes, second);
  bytes[third + 12 + 3] ^= 0x01;
  write_bytes(path, bytes);

  const std::string message = read_error(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("byte offset " + std::to_string(third)), std::string::npos) << message;
  EXPECT_NE(message.find("payload checksum"), std::string::npos) << message;
}

TEST(TensorBoard, FlippedLengthByteNamesOffset) {
  testing::ScratchDir scratch("tensorboard");
  std::string path;
  {
    EventWriter writer(scratch.path());
    path = writer.path();
    writer.add_scalar("loss", 1.0, 1, 1.0);
  }
  std::string bytes = read_bytes(path);
  const size_t second = next_record(bytes, 0);
  bytes[second] ^= 0x40;
  write_bytes(path, bytes);

  const std::string message = read_error(path);
  EXPECT_NE(message.find("byte offset " + std::to_string(second)), std::string::npos) << message;
  EXPECT_NE(message.find("length checksum"), std::string::npos) << message;
}

TEST(TensorBoard, TruncatedFileNamesOffset) {
  testing::ScratchDir scratch("tensorboard");
  std::string path;
  {
    EventWriter writer(scratch.path());
    path = writer.path();
    writer.add_scalar("loss", 1.0, 1, 1.0);
    writer.add_scalar("loss", 0.5, 2, 2.0);
  }
  const std::string bytes = read_bytes(path);
  const size_t third = next_record(bytes, next_record(bytes, 0));

  // Cut inside the payload of the last record.
  write_bytes(path, bytes.substr(0, bytes.size() - 6));
  std::string message = read_error(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("byte offset " + std::to_string(third)), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;

  // Cut inside the 12-byte header of the last record.
  write_bytes(path, bytes.substr(0, third + 5));
  message = read_error(path);
  EXPECT_NE(message.find("byte offset " + std::to_string(third)), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
}

TEST(TensorBoard, EmptyFileHasNoScalars) {
  testing::ScratchDir scratch("tensorboard");
  write_bytes(scratch.file("events.out.tfevents.0.host"), "");
  EXPECT_TRUE(read_scalar_events(scratch.file("events.out.tfevents.0.host")).empty());
}

TEST(TensorBoard, MissingFileIsDataError) {
  testing::ScratchDir scratch("tensorboard");
  const std::string path = scratch.file("no_such_file");
  const std::string message = read_error(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

TEST(TensorBoard, UncreatableDirectoryIsDataError) {
  testing::ScratchDir scratch("tensorboard");
  // A regular file where the directory should go.
  write_bytes(scratch.file("blocker"), "x");
  const std::string dir = scratch.file("blocker/logs");
  try {
    EventWriter writer(dir);
    FAIL() << "expected DataError";
  } catch (const DataError& error) {
    EXPECT_NE(std::string(error.what()).find(dir), std::string::npos) << error.what();
  }
}

TEST(TensorBoard, ManyScalarsRoundTrip) {
  testing::ScratchDir scratch("tensorboard");
  constexpr int kCount = 10000;
  std::string path;
  {
    EventWriter writer(scratch.path());
    path = writer.path();
    for (int i = 0; i < kCount; ++i) {
      writer.add_scalar(i % 2 == 0 ? "loss/even" : "loss/odd", 0.25 * i, i, 1000.0 + i);
    }
  }
  const std::vector<ScalarEvent> scalars = read_scalar_events(path);
  ASSERT_EQ(scalars.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    ASSERT_EQ(scalars[i].step, i);
    ASSERT_EQ(scalars[i].tag, i % 2 == 0 ? "loss/even" : "loss/odd");
    ASSERT_FLOAT_EQ(scalars[i].value, static_cast<float>(0.25 * i));
    ASSERT_DOUBLE_EQ(scalars[i].wall_time, 1000.0 + i);
  }
}

TEST(TensorBoard, FlushWritesBufferedRecords) {
  testing::ScratchDir scratch("tensorboard");
  EventWriter writer(scratch.path());
  writer.add_scalar("loss", 1.0, 1, 1.0);
  EXPECT_EQ(read_scalar_events(writer.path()).size(), 0u);  // still buffered
  writer.flush();
  EXPECT_EQ(read_scalar_events(writer.path()).size(), 1u);
}

}  // namespace
}  // namespace imp
