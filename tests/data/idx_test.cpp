#include <gtest/gtest.h>
#include <stdlib.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../scratch_dir.h"
#include "imp/core/error.h"
#include "imp/data/idx.h"

namespace {

using Bytes = std::vector<uint8_t>;

using imp::testing::ScratchDir;

void write_plain(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const std::string& path, const Bytes& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

Bytes read_plain(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Header of an idx file: magic, type byte, rank and big-endian dimensions.
Bytes idx_header(uint8_t type, const std::vector<uint32_t>& dims) {
  Bytes bytes = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<uint8_t>(dim >> shift));
  }
  return bytes;
}

Bytes concat(Bytes first, const Bytes& second) {
  first.insert(first.end(), second.begin(), second.end());
  return first;
}

// Returns the DataError message read_idx raises for `path`, or "" after
// recording a failure when it raises none.
std::string read_error(const std::string& path) {
  try {
    imp::read_idx(path);
  } catch (const imp::DataError& error) {
    return error.what();
  }
  ADD_FAILURE() << "read_idx accepted " << path;
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A 2x3 uint8 file: values 0, 10, ..., 50 in row-major order.
const Bytes kSmallUint8 = concat(idx_header(0x08, {2, 3}), {0, 10, 20, 30, 40, 50});

TEST(IdxRead, PlainUint8RoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("small-idx2-ubyte");
  write_plain(path, kSmallUint8);

  const torch::Tensor tensor = imp::read_idx(path);
  EXPECT_EQ(tensor.scalar_type(), torch::kUInt8);
  EXPECT_EQ(tensor.sizes(), torch::IntArrayRef({2, 3}));
  EXPECT_TRUE(tensor.equal(torch::arange(0, 60, 10, torch::kUInt8).reshape({2, 3})));
}

TEST(IdxRead, GzippedRoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("small-idx2-ubyte.gz");
  write_gzip(path, kSmallUint8);
  ASSERT_EQ(read_plain(path)[0], 0x1f) << "the test file should start with the gzip magic";

  const torch::Tensor tensor = imp::read_idx(path);
  EXPECT_EQ(tensor.scalar_type(), torch::kUInt8);
  EXPECT_TRUE(tensor.equal(torch::arange(0, 60, 10, torch::kUInt8).reshape({2, 3})));
}

TEST(IdxRead, BigEndianTypesConverted) {
  ScratchDir dir;
  struct Case {
    uint8_t type;
    Bytes data;  // big-endian encoding of `expected`
    torch::Tensor expected;
  };
  const std::vector<Case> cases = {
      {0x09, {0xFF, 0x02}, torch::tensor({-1, 2}, torch::kInt8)},
      {0x0B, {0x01, 0x02, 0xFF, 0xFE}, torch::tensor({258, -2}, torch::kInt16)},
      {0x0C, {0x00, 0x01, 0x11, 0x70, 0xFF, 0xFF, 0xFF, 0xFF}, torch::tensor({70000, -1}, torch::kInt32)},
      // 1.5f is 0x3FC00000 and -2.0f is 0xC0000000.
      {0x0D, {0x3F, 0xC0, 0, 0, 0xC0, 0, 0, 0}, torch::tensor({1.5f, -2.0f}, torch::kFloat32)},
      // 0.25 is 0x3FD0000000000000 and 3.0 is 0x4008000000000000.
      {0x0E, {0x3F, 0xD0, 0, 0, 0, 0, 0, 0, 0x40, 0x08, 0, 0, 0, 0, 0, 0},
       torch::tensor({0.25, 3.0}, torch::kFloat64)},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file("type-" + std::to_string(c.type));
    write_gzip(path, concat(idx_header(c.type, {2}), c.data));
    const torch::Tensor tensor = imp::read_idx(path);
    EXPECT_EQ(tensor.scalar_type(), c.expected.scalar_type()) << "type byte " << int{c.type};
    EXPECT_TRUE(tensor.equal(c.expected)) << "type byte " << int{c.type} << ": " << tensor;
  }
}

TEST(IdxRead, TruncatedDataNamesSizes) {
  ScratchDir dir;
  const std::string path = dir.file("truncated-idx2-ubyte.gz");
  write_gzip(path, concat(idx_header(0x08, {2, 3}), {1, 2, 3, 4}));

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "expected 6 bytes of data, found 4")) << message;
  EXPECT_TRUE(contains(message, "truncated")) << message;
  EXPECT_TRUE(contains(message, "download it again")) << message;
}

TEST(IdxRead, TrailingBytesWrongSize) {
  ScratchDir dir;
  const std::string path = dir.file("long-idx2-ubyte");
  write_plain(path, concat(kSmallUint8, {7, 7}));

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "wrong size")) << message;
  EXPECT_TRUE(contains(message, "declare 6 bytes of data, found 8")) << message;
}

TEST(IdxRead, WrongMagicNotIdx) {
  ScratchDir dir;
  const std::string path = dir.file("notes.txt");
  write_plain(path, {'h', 'e', 'l', 'l', 'o', '\n'});

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "is not an idx file")) << message;
  EXPECT_TRUE(contains(message, "0x68 0x65")) << message;
}

TEST(IdxRead, TruncatedHeader) {
  ScratchDir dir;
  const std::string path = dir.file("header-idx3-ubyte");
  // Rank 3 needs 4 + 12 header bytes; the file stops after the first dimension.
  write_plain(path, {0, 0, 0x08, 3, 0, 0, 0, 2});

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "truncated header: expected 16 header bytes, found 8")) << message;
}

TEST(IdxRead, EmptyFileTruncatedHeader) {
  ScratchDir dir;
  const std::string path = dir.file("empty-idx1-ubyte");
  write_plain(path, {});

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "truncated header")) << message;
}

TEST(IdxRead, UnknownTypeByte) {
  ScratchDir dir;
  const std::string path = dir.file("type-idx1-ubyte");
  write_plain(path, concat(idx_header(0x0A, {1}), {0}));

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "unknown element type 0x0A")) << message;
}

TEST(IdxRead, MissingFile) {
  ScratchDir dir;
  const std::string path = dir.file("absent-idx1-ubyte.gz");

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "not found")) << message;
}

TEST(IdxRead, CorruptGzipStream) {
  ScratchDir dir;
  const std::string path = dir.file("corrupt-idx1-ubyte.gz");
  write_gzip(path, concat(idx_header(0x08, {4096}), Bytes(4096, 3)));
  Bytes compressed = read_plain(path);
  // Past the 10-byte gzip header: damage the deflate data, which then fails
  // to decode or fails the CRC-32 check at the end.
  for (size_t i = 12; i < compressed.size() - 8; ++i) compressed[i] ^= 0x5A;
  write_plain(path, compressed);

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "corrupt compressed stream")) << message;
}

TEST(IdxRead, CutGzipStream) {
  ScratchDir dir;
  const std::string path = dir.file("cut-idx1-ubyte.gz");
  write_gzip(path, concat(idx_header(0x08, {4096}), Bytes(4096, 3)));
  Bytes compressed = read_plain(path);
  compressed.resize(compressed.size() / 2);
  write_plain(path, compressed);

  const std::string message = read_error(path);
  EXPECT_TRUE(contains(message, path)) << message;
  EXPECT_TRUE(contains(message, "corrupt compressed stream")) << message;
}

}  // namespace
