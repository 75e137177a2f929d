// Tests for the safetensors reader and writer. They cover bit-exact round
// trips of every dtype, shared storage and files laid out by hand as other
// tools write them. Each reading error has a test that checks the message
// names the tensor or byte offset.
#include "imp/io/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "imp/core/crc32c.h"
#include "imp/core/error.h"
#include "../scratch_dir.h"

namespace imp {
namespace {

using Json = nlohmann::json;
using Metadata = std::map<std::string, std::string>;

const char kFileName[] = "model.safetensors";

// The raw bytes of `tensor` in row-major order.
std::string raw_bytes(const at::Tensor& tensor) {
  const at::Tensor contiguous = tensor.contiguous();
  return std::string(static_cast<const char*>(contiguous.data_ptr()), contiguous.nbytes());
}

// A tensor of `shape` whose bytes are `bytes`, which must have the right size.
at::Tensor tensor_from_bytes(const std::string& bytes, at::IntArrayRef shape, at::ScalarType dtype) {
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(dtype));
  EXPECT_EQ(bytes.size(), tensor.nbytes());
  if (!bytes.empty()) std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
  return tensor;
}

std::string little_endian_u64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xffu);
  return bytes;
}

// A file in the layout of the specification, with the header exactly as
// given (no padding) and then `data`.
std::string make_file(const std::string& header, const std::string& data) {
  return little_endian_u64(header.size()) + header + data;
}

uint64_t header_length_of(const std::string& file) {
  uint64_t length = 0;
  std::memcpy(&length, file.data(), 8);
  return length;
}

Json header_of(const std::string& file) {
  return Json::parse(file.substr(8, header_length_of(file)));
}

std::string data_section_of(const std::string& file) {
  return file.substr(8 + header_length_of(file));
}

std::string floats_bytes(std::initializer_list<float> values) {
  std::string bytes(values.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), values.begin(), bytes.size());
  return bytes;
}

// Runs `action` and returns the message of the DataError it throws; fails
// the test when it throws nothing.
std::string data_error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const DataError& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a DataError";
  return "";
}

std::string parse_error_of(const std::string& file, SafetensorsReadOptions options = {}) {
  return data_error_of([&] { parse_safetensors(file, kFileName, options); });
}

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not found in: " << text;
}

// Random bytes, so that every bit of every element is checked.
std::string random_bytes(size_t size, uint32_t seed) {
  std::string bytes(size, '\0');
  uint32_t state = seed;
  for (char& byte : bytes) {
    state = state * 1664525u + 1013904223u;
    byte = static_cast<char>(state >> 24);
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Round trips

struct DtypeCase {
  at::ScalarType type;
  const char* header_name;
};

class SafetensorsRoundTrip : public ::testing::TestWithParam<DtypeCase> {};

TEST_P(SafetensorsRoundTrip, BitExact) {
  const DtypeCase dtype = GetParam();
  const int64_t element_size = at::elementSize(dtype.type);
  std::string bytes = random_bytes(3 * 5 * element_size, 17);
  // BOOL bytes must be 0 or 1.
  if (dtype.type == at::kBool) {
    for (char& byte : bytes) byte = static_cast<char>(byte & 1);
  }
  const at::Tensor original = tensor_from_bytes(bytes, {3, 5}, dtype.type);

  const std::string file = serialize_safetensors({{"weight", original}}, {{"step", "12"}});
  EXPECT_EQ(header_of(file)["weight"]["dtype"], dtype.header_name);
  const SafetensorsContents contents = parse_safetensors(file, kFileName);

  ASSERT_EQ(contents.tensors.size(), 1u);
  EXPECT_EQ(contents.tensors[0].first, "weight");
  const at::Tensor& loaded = contents.tensors[0].second;
  EXPECT_EQ(loaded.scalar_type(), dtype.type);
  EXPECT_EQ(loaded.sizes().vec(), (std::vector<int64_t>{3, 5}));
  EXPECT_TRUE(loaded.device().is_cpu());
  EXPECT_EQ(raw_bytes(loaded), bytes);
  EXPECT_EQ(contents.metadata, (Metadata{{"step", "12"}}));
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, SafetensorsRoundTrip,
    ::testing::Values(DtypeCase{at::kFloat, "F32"}, DtypeCase{at::kDouble, "F64"},
                      DtypeCase{at::kHalf, "F16"}, DtypeCase{at::kBFloat16, "BF16"},
                      DtypeCase{at::kLong, "I64"}, DtypeCase{at::kInt, "I32"},
                      DtypeCase{at::kShort, "I16"}, DtypeCase{at::kChar, "I8"},
                      DtypeCase{at::kByte, "U8"}, DtypeCase{at::kBool, "BOOL"}),
    [](const ::testing::TestParamInfo<DtypeCase>& info) { return info.param.header_name; });

TEST(SafetensorsRoundTripValues, NanPayloadsKept) {
  // Quiet and signaling NaNs with payloads, negative zero and infinity.
  const uint32_t f32_bits[] = {0x7fc00001u, 0xffa00000u, 0x80000000u, 0x7f800000u};
  const uint16_t f16_bits[] = {0x7e01u, 0xfd00u, 0x8000u, 0x7c00u};
  const uint16_t bf16_bits[] = {0x7fc1u, 0xff81u, 0x8000u, 0x7f80u};
  const std::string f32(reinterpret_cast<const char*>(f32_bits), sizeof(f32_bits));
  const std::string f16(reinterpret_cast<const char*>(f16_bits), sizeof(f16_bits));
  const std::string bf16(reinterpret_cast<const char*>(bf16_bits), sizeof(bf16_bits));

  const std::string file = serialize_safetensors({{"f32", tensor_from_bytes(f32, {4}, at::kFloat)},
                                                  {"f16", tensor_from_bytes(f16, {4}, at::kHalf)},
                                                  {"bf16", tensor_from_bytes(bf16, {4}, at::kBFloat16)}},
                                                 {});
  const SafetensorsContents contents = parse_safetensors(file, kFileName);

  ASSERT_EQ(contents.tensors.size(), 3u);
  EXPECT_EQ(raw_bytes(contents.tensors[0].second), f32);
  EXPECT_EQ(raw_bytes(contents.tensors[1].second), f16);
  EXPECT_EQ(raw_bytes(contents.tensors[2].second), bf16);
}

TEST(SafetensorsRoundTripValues, TensorsKeepWriteOrder) {
  const std::string file = serialize_safetensors(
      {{"z", at::full({2}, 1.0f)}, {"a", at::full({3}, 2.0f)}, {"m", at::full({1}, 3.0f)}}, {});
  const Json header = header_of(file);
  EXPECT_EQ(header["z"]["data_offsets"], Json::parse("[0, 8]"));
  EXPECT_EQ(header["a"]["data_offsets"], Json::parse("[8, 20]"));
  EXPECT_EQ(header["m"]["data_offsets"], Json::parse("[20, 24]"));

  const SafetensorsContents contents = parse_safetensors(file, kFileName);
  ASSERT_EQ(contents.tensors.size(), 3u);
  EXPECT_EQ(contents.tensors[0].first, "z");
  EXPECT_EQ(contents.tensors[1].first, "a");
  EXPECT_EQ(contents.tensors[2].first, "m");
  EXPECT_EQ(contents.tensors[1].second[2].item<float>(), 2.0f);
}

TEST(SafetensorsRoundTripValues, MetadataOnlyFile) {
  const std::string file = serialize_safetensors({}, {{"format", "pt"}, {"epoch", "3"}});
  EXPECT_EQ(file.size(), 8 + header_length_of(file));

  const SafetensorsContents contents = parse_safetensors(file, kFileName);
  EXPECT_TRUE(contents.tensors.empty());
  EXPECT_EQ(contents.metadata, (Metadata{{"format", "pt"}, {"epoch", "3"}}));
}

TEST(SafetensorsRoundTripValues, ZeroDimensionTensor) {
  const std::string file = serialize_safetensors({{"before", at::full({2}, 5.0f)},
                                                  {"empty", at::empty({3, 0, 2})},
                                                  {"after", at::full({1}, 6.0f)}},
                                                 {});
  EXPECT_EQ(header_of(file)["empty"]["data_offsets"], Json::parse("[8, 8]"));
  EXPECT_EQ(header_of(file)["empty"]["shape"], Json::parse("[3, 0, 2]"));

  const SafetensorsContents contents = parse_safetensors(file, kFileName);
  ASSERT_EQ(contents.tensors.size(), 3u);
  EXPECT_EQ(contents.tensors[1].first, "empty");
  EXPECT_EQ(contents.tensors[1].second.sizes().vec(), (std::vector<int64_t>{3, 0, 2}));
  EXPECT_EQ(contents.tensors[2].first, "after");
  EXPECT_EQ(contents.tensors[2].second.item<float>(), 6.0f);
}

TEST(SafetensorsRoundTripValues, ScalarTensor) {
  const std::string file = serialize_safetensors({{"scale", at::scalar_tensor(3.5, at::kDouble)}}, {});
  EXPECT_EQ(header_of(file)["scale"]["shape"], Json::array());

  const SafetensorsContents contents = parse_safetensors(file, kFileName);
  ASSERT_EQ(contents.tensors.size(), 1u);
  EXPECT_EQ(contents.tensors[0].second.dim(), 0);
  EXPECT_EQ(contents.tensors[0].second.item<double>(), 3.5);
}

TEST(SafetensorsRoundTripValues, TransposeStoredContiguously) {
  const at::Tensor matrix = at::arange(6, at::kFloat).reshape({2, 3});
  const at::Tensor transposed = matrix.t();
  ASSERT_FALSE(transposed.is_contiguous());

  const std::string file = serialize_safetensors({{"t", transposed}}, {});
  EXPECT_EQ(data_section_of(file), raw_bytes(transposed.contiguous()));

  const at::Tensor loaded = parse_safetensors(file, kFileName).tensors.at(0).second;
  EXPECT_TRUE(loaded.is_contiguous());
  EXPECT_EQ(loaded.sizes().vec(), (std::vector<int64_t>{3, 2}));
  EXPECT_TRUE(at::equal(loaded, transposed));
}

// ---------------------------------------------------------------------------
// The header as written

TEST(SafetensorsWrite, HeaderPaddedAndChecksummed) {
  const std::string file = serialize_safetensors({{"w", at::arange(5, at::kFloat)}}, {});
  const uint64_t header_length = header_length_of(file);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(file.size(), 8 + header_length + 20);

  const std::string header = file.substr(8, header_length);
  // Only spaces may follow the JSON object.
  EXPECT_EQ(header.find_first_not_of(' ', header.rfind('}') + 1), std::string::npos);
  const std::string data = data_section_of(file);
  char expected[9];
  std::snprintf(expected, sizeof(expected), "%08x", crc32c(data.data(), data.size()));
  EXPECT_EQ(header_of(file)["__metadata__"]["imp.crc32c"], expected);
}

TEST(SafetensorsWrite, RejectsReservedMetadataKey) {
  const std::string message =
      data_error_of([] { serialize_safetensors({}, {{"imp.crc32c", "00000000"}}); });
  EXPECT_TRUE(contains(message, "'imp.crc32c'"));
  EXPECT_TRUE(contains(message, "reserved"));
}

TEST(SafetensorsWrite, RejectsBadNames) {
  const at::Tensor x = at::ones({2});
  EXPECT_TRUE(contains(data_error_of([&] { serialize_safetensors({{"", x}}, {}); }), "empty name"));
  EXPECT_TRUE(contains(data_error_of([&] { serialize_safetensors({{"a", x}, {"a", x * 2}}, {}); }),
                       "'a' appears twice"));
  EXPECT_TRUE(contains(data_error_of([&] { serialize_safetensors({{"__metadata__", x}}, {}); }),
                       "reserved"));
  EXPECT_TRUE(contains(data_error_of([&] { serialize_safetensors({{"u", at::Tensor()}}, {}); }),
                       "'u' is undefined"));
  EXPECT_TRUE(contains(data_error_of([&] { serialize_safetensors({{"bad\xff", x}}, {}); }),
                       "UTF-8"));
}

TEST(SafetensorsWrite, RejectsUnsupportedDtype) {
  const at::Tensor complex = at::zeros({2}, at::kComplexFloat);
  const std::string message = data_error_of([&] { serialize_safetensors({{"phase", complex}}, {}); });
  EXPECT_TRUE(contains(message, "'phase'"));
  EXPECT_TRUE(contains(message, "ComplexFloat"));
}

TEST(SafetensorsWrite, RejectsSparseTensor) {
  const at::Tensor sparse = at::eye(3).to_sparse();
  const std::string message = data_error_of([&] { serialize_safetensors({{"adjacency", sparse}}, {}); });
  EXPECT_TRUE(contains(message, "'adjacency'"));
  EXPECT_TRUE(contains(message, "to_dense()"));
}

// ---------------------------------------------------------------------------
// Shared storage

TEST(SafetensorsAliases, TiedTensorsStoredOnce) {
  const at::Tensor embedding = at::arange(12, at::kFloat).reshape({4, 3});
  const std::string file = serialize_safetensors(
      {{"embed.weight", embedding}, {"lm_head.weight", embedding}, {"bias", at::ones({2})}}, {});

  // One copy of the 48 embedding bytes plus the 8 bias bytes.
  EXPECT_EQ(data_section_of(file).size(), 48u + 8u);
  EXPECT_FALSE(header_of(file).contains("lm_head.weight"));

  const SafetensorsContents contents = parse_safetensors(file, kFileName);
  ASSERT_EQ(contents.tensors.size(), 3u);
  EXPECT_EQ(contents.tensors[0].first, "embed.weight");
  EXPECT_EQ(contents.tensors[1].first, "lm_head.weight");
  EXPECT_EQ(contents.tensors[2].first, "bias");
  EXPECT_TRUE(contents.metadata.empty());

  const at::Tensor embed = contents.tensors[0].second;
  const at::Tensor head = contents.tensors[1].second;
  EXPECT_TRUE(at::equal(head, embedding));
  EXPECT_EQ(embed.unsafeGetTensorImpl(), head.unsafeGetTensorImpl());
  embed.fill_(7.0f);
  EXPECT_EQ(head[3][2].item<float>(), 7.0f);
}

TEST(SafetensorsAliases, OverlappingViewsStoredAsCopies) {
  const at::Tensor base = at::arange(10, at::kFloat);
  const std::string file = serialize_safetensors({{"front", base.slice(0, 0, 6)},
                                                  {"back", base.slice(0, 4, 10)},
                                                  {"whole", base},
                                                  {"matrix", base.view({2, 5})}},
                                                 {});
  // Same start as "front" or "whole" but another view: all stored.
  EXPECT_EQ(data_section_of(file).size(), (6u + 6u + 10u + 10u) * 4u);

  const SafetensorsContents contents = parse_safetensors(file, kFileName);
  ASSERT_EQ(contents.tensors.size(), 4u);
  const at::Tensor front = contents.tensors[0].second;
  const at::Tensor back = contents.tensors[1].second;
  front.fill_(-1.0f);
  EXPECT_EQ(back[0].item<float>(), 4.0f);
  EXPECT_EQ(contents.tensors[3].second[1][4].item<float>(), 9.0f);
}

TEST(SafetensorsAliases, EmptyTensorsNeverAliased) {
  const std::string file =
      serialize_safetensors({{"a", at::empty({0}, at::kFloat)}, {"b", at::empty({0}, at::kFloat)}}, {});
  EXPECT_TRUE(header_of(file).contains("a"));
  EXPECT_TRUE(header_of(file).contains("b"));
  EXPECT_EQ(parse_safetensors(file, kFileName).tensors.size(), 2u);
}

TEST(SafetensorsAliases, AliasToMissingTensorRejected) {
  const std::string header =
      R"({"__metadata__":{"imp.aliases":"{\"head\":\"embed\"}"},)"
      R"("other":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string message = parse_error_of(make_file(header, floats_bytes({1})));
  EXPECT_TRUE(contains(message, "alias 'head'"));
  EXPECT_TRUE(contains(message, "'embed', which is not in the file"));
}

TEST(SafetensorsAliases, MalformedAliasesRejected) {
  const std::string tensor = R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string not_json = R"({"__metadata__":{"imp.aliases":"{oops"},)" + tensor + "}";
  const std::string not_object = R"({"__metadata__":{"imp.aliases":"[1]"},)" + tensor + "}";
  const std::string not_string = R"({"__metadata__":{"imp.aliases":"{\"v\":5}"},)" + tensor + "}";
  const std::string shadows = R"({"__metadata__":{"imp.aliases":"{\"w\":\"w\"}"},)" + tensor + "}";

  EXPECT_TRUE(contains(parse_error_of(make_file(not_json, floats_bytes({1}))), "not valid JSON"));
  EXPECT_TRUE(contains(parse_error_of(make_file(not_object, floats_bytes({1}))), "type array"));
  EXPECT_TRUE(contains(parse_error_of(make_file(not_string, floats_bytes({1}))), "alias 'v'"));
  EXPECT_TRUE(contains(parse_error_of(make_file(shadows, floats_bytes({1}))),
                       "also the name of a stored tensor"));
}

// ---------------------------------------------------------------------------
// Files written by other tools

TEST(SafetensorsInterop, HandWrittenFileLoads) {
  // Unpadded header, entries not in offset order, the {"format": "pt"}
  // metadata common in Hugging Face model files and no imp.* keys.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("ids":{"dtype":"I32","shape":[2],"data_offsets":[12,20]},)"
      R"("scores":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  ASSERT_NE(header.size() % 8, 0u);
  const int32_t ids[] = {-7, 70000};
  const std::string data =
      floats_bytes({0.5f, -2.0f, 8.25f}) + std::string(reinterpret_cast<const char*>(ids), 8);

  const SafetensorsContents contents = parse_safetensors(make_file(header, data), kFileName);
  ASSERT_EQ(contents.tensors.size(), 2u);
  EXPECT_EQ(contents.tensors[0].first, "scores");
  EXPECT_EQ(contents.tensors[0].second[2].item<float>(), 8.25f);
  EXPECT_EQ(contents.tensors[1].first, "ids");
  EXPECT_EQ(contents.tensors[1].second.scalar_type(), at::kInt);
  EXPECT_EQ(contents.tensors[1].second[1].item<int32_t>(), 70000);
  EXPECT_EQ(contents.metadata, (Metadata{{"format", "pt"}}));
}

TEST(SafetensorsInterop, SpacePaddedHeaderWithoutMetadataLoads) {
  const std::string header = R"({"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})" +
                             std::string(11, ' ');
  const SafetensorsContents contents = parse_safetensors(make_file(header, "\x01\x02\xff"), kFileName);
  ASSERT_EQ(contents.tensors.size(), 1u);
  EXPECT_EQ(contents.tensors[0].second[2].item<uint8_t>(), 255);
  EXPECT_TRUE(contents.metadata.empty());
}

TEST(SafetensorsInterop, UnknownReservedKeysDropped) {
  const std::string header =
      R"({"__metadata__":{"imp.future":"x","note":"kept"},)"
      R"("x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  EXPECT_EQ(parse_safetensors(make_file(header, "\x05"), kFileName).metadata,
            (Metadata{{"note", "kept"}}));
}

// ---------------------------------------------------------------------------
// Reading errors

TEST(SafetensorsReadErrors, FileShorterThanLengthField) {
  const std::string message = parse_error_of(std::string("\x10\x00\x00", 3));
  EXPECT_TRUE(contains(message, kFileName));
  EXPECT_TRUE(contains(message, "3 bytes long"));
}

TEST(SafetensorsReadErrors, HeaderLongerThanFile) {
  const std::string file = little_endian_u64(1000) + "{}";
  const std::string message = parse_error_of(file);
  EXPECT_TRUE(contains(message, "truncated"));
  EXPECT_TRUE(contains(message, "at least 1008 bytes"));
  EXPECT_TRUE(contains(message, "it has 10 bytes"));
}

TEST(SafetensorsReadErrors, HeaderAtCapLoadsOneByteOverFails) {
  const std::string file = serialize_safetensors({{"w", at::ones({3})}}, {});
  const uint64_t header_length = header_length_of(file);

  SafetensorsReadOptions at_cap;
  at_cap.max_header_bytes = header_length;
  EXPECT_EQ(parse_safetensors(file, kFileName, at_cap).tensors.size(), 1u);

  SafetensorsReadOptions below;
  below.max_header_bytes = header_length - 1;
  const std::string message = parse_error_of(file, below);
  EXPECT_TRUE(contains(message, std::to_string(header_length) + " bytes"));
  EXPECT_TRUE(contains(message, "maximum of " + std::to_string(header_length - 1)));
}

TEST(SafetensorsReadErrors, HugeHeaderLengthNamesDefaultCap) {
  const std::string file = little_endian_u64(uint64_t{1} << 40) + std::string(64, '\0');
  const std::string message = parse_error_of(file);
  EXPECT_TRUE(contains(message, "maximum of 100000000 bytes"));
  EXPECT_TRUE(contains(message, "more than the file's 72 bytes"));
}

TEST(SafetensorsReadErrors, GitLfsPointer) {
  testing::ScratchDir dir;
  const std::string path = dir.file(kFileName);
  std::ofstream(path) << "version https://git-lfs.github.com/spec/v1\n"
                         "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
                         "size 12345\n";
  const std::string message = data_error_of([&] { load_safetensors(path); });
  EXPECT_TRUE(contains(message, path));
  EXPECT_TRUE(contains(message, "Git LFS pointer"));
  EXPECT_TRUE(contains(message, "git lfs pull"));
}

TEST(SafetensorsReadErrors, TextFile) {
  const std::string message = parse_error_of("<html><body>404 Not Found</body></html>\n");
  EXPECT_TRUE(contains(message, "contains text"));
  EXPECT_TRUE(contains(message, "\"<html><body>404"));
}

TEST(SafetensorsReadErrors, HeaderNotJson) {
  const std::string message = parse_error_of(make_file(R"({"w": {"dtype": "F32",)", ""));
  EXPECT_TRUE(contains(message, "not valid JSON"));
  EXPECT_TRUE(contains(message, "byte offset"));
}

TEST(SafetensorsReadErrors, HeaderNotObject) {
  EXPECT_TRUE(contains(parse_error_of(make_file("[1, 2]", "")), "JSON of type array"));
}

TEST(SafetensorsReadErrors, DuplicateTensorName) {
  const std::string header =
      R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  EXPECT_TRUE(contains(parse_error_of(make_file(header, "ab")), "tensor name 'w' twice"));
}

TEST(SafetensorsReadErrors, EntryMissingField) {
  const std::string no_dtype = R"({"w":{"shape":[1],"data_offsets":[0,1]}})";
  const std::string no_shape = R"({"w":{"dtype":"U8","data_offsets":[0,1]}})";
  const std::string no_offsets = R"({"w":{"dtype":"U8","shape":[1]}})";
  EXPECT_TRUE(contains(parse_error_of(make_file(no_dtype, "a")), "tensor 'w' has no \"dtype\""));
  EXPECT_TRUE(contains(parse_error_of(make_file(no_shape, "a")), "tensor 'w' has no \"shape\""));
  EXPECT_TRUE(
      contains(parse_error_of(make_file(no_offsets, "a")), "tensor 'w' has no \"data_offsets\""));
}

TEST(SafetensorsReadErrors, EntryWrongTypes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"w":5})", "entry of tensor 'w' is of type number"},
      {R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,1]}})", "tensor 'w' has dtype 3"},
      {R"({"w":{"dtype":"U8","shape":"1","data_offsets":[0,1]}})", "tensor 'w' has shape \"1\""},
      {R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "tensor 'w' has 1.5 in shape"},
      {R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "tensor 'w' has data_offsets [0]"},
      {R"({"w":{"dtype":"U8","shape":[1],"data_offsets":["0",1]}})",
       "tensor 'w' has \"0\" in data_offsets"},
      {R"({"__metadata__":[1],"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
       "\"__metadata__\" entry is of type array"},
      {R"({"__metadata__":{"epoch":3},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
       "metadata key 'epoch' is of type number"},
  };
  for (const auto& [header, expected] : cases) {
    EXPECT_TRUE(contains(parse_error_of(make_file(header, "a")), expected)) << header;
  }
}

TEST(SafetensorsReadErrors, UnknownDtype) {
  const std::string header = R"({"fp8":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})";
  const std::string message = parse_error_of(make_file(header, "a"));
  EXPECT_TRUE(contains(message, "tensor 'fp8' has dtype \"F8_E4M3\""));
  EXPECT_TRUE(contains(message, "BF16"));
}

TEST(SafetensorsReadErrors, NegativeDimension) {
  const std::string header = R"({"w":{"dtype":"U8","shape":[2,-1],"data_offsets":[0,0]}})";
  EXPECT_TRUE(contains(parse_error_of(make_file(header, "")), "tensor 'w' has a negative value -1"));
}

TEST(SafetensorsReadErrors, OffsetsDisagreeWithShape) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  const std::string message = parse_error_of(make_file(header, std::string(8, '\0')));
  EXPECT_TRUE(contains(message, "tensor 'w' has data_offsets [0, 8] covering 8 bytes"));
  EXPECT_TRUE(contains(message, "need 12 bytes"));
}

TEST(SafetensorsReadErrors, BeginAfterEnd) {
  const std::string header = R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}})";
  EXPECT_TRUE(contains(parse_error_of(make_file(header, std::string(8, '\0'))),
                       "tensor 'w' has data_offsets [8, 4] whose begin is after its end"));
}

TEST(SafetensorsReadErrors, OverlappingTensors) {
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})";
  const std::string message = parse_error_of(make_file(header, std::string(12, '\0')));
  EXPECT_TRUE(contains(message, "tensor 'b' (data_offsets [4, 12]) overlaps"));
  EXPECT_TRUE(contains(message, "tensor 'a'"));
}

TEST(SafetensorsReadErrors, HoleBetweenTensors) {
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[8],"data_offsets":[12,20]}})";
  const std::string message = parse_error_of(make_file(header, std::string(20, '\0')));
  EXPECT_TRUE(contains(message, "gap of 4 bytes"));
  EXPECT_TRUE(contains(message, "right before tensor 'b'"));
  EXPECT_TRUE(contains(message, "file byte offset " + std::to_string(8 + header.size() + 8)));
}

TEST(SafetensorsReadErrors, TrailingBytes) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  const std::string message = parse_error_of(make_file(header, "ab" + std::string(3, 'x')));
  EXPECT_TRUE(contains(message, "3 bytes after the last tensor's data"));
  EXPECT_TRUE(contains(message, "from file byte offset " + std::to_string(8 + header.size() + 2)));
}

TEST(SafetensorsReadErrors, TruncatedAtSeveralPoints) {
  const std::string file = serialize_safetensors(
      {{"first", at::ones({16})}, {"second", at::ones({16}, at::kDouble)}}, {});
  const uint64_t data_start = 8 + header_length_of(file);
  const std::vector<size_t> cuts = {0, 5, 8, data_start / 2, data_start};
  for (size_t cut : cuts) {
    const std::string message = parse_error_of(file.substr(0, cut));
    EXPECT_TRUE(contains(message, kFileName)) << "cut at " << cut;
  }

  // Cuts inside the data section name the first tensor with missing bytes.
  const std::vector<std::pair<size_t, std::string>> data_cuts = {
      {data_start + 10, "'first'"}, {data_start + 64, "'second'"}, {file.size() - 1, "'second'"}};
  for (const auto& [cut, tensor] : data_cuts) {
    const std::string message = parse_error_of(file.substr(0, cut));
    EXPECT_TRUE(contains(message, "truncated")) << "cut at " << cut;
    EXPECT_TRUE(contains(message, "should be " + std::to_string(file.size()) + " bytes long"));
    EXPECT_TRUE(contains(message, "it has " + std::to_string(cut) + " bytes"));
    EXPECT_TRUE(contains(message, "tensor " + tensor));
  }
}

TEST(SafetensorsReadErrors, FlippedDataByteFailsChecksum) {
  std::string file = serialize_safetensors({{"w", at::arange(32, at::kFloat)}}, {});
  const uint64_t data_start = 8 + header_length_of(file);
  file[data_start + 37] ^= 0x10;
  const std::string message = parse_error_of(file);
  EXPECT_TRUE(contains(message, "damaged"));
  EXPECT_TRUE(contains(message, "CRC-32C"));
  EXPECT_TRUE(contains(message, "byte offsets " + std::to_string(data_start)));
}

TEST(SafetensorsReadErrors, MalformedChecksum) {
  const std::string tensor = R"("w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
  for (const std::string value : {"1234", "0000000G", "DEADBEEF", "123456789"}) {
    const std::string header = R"({"__metadata__":{"imp.crc32c":")" + value + R"("},)" + tensor + "}";
    const std::string message = parse_error_of(make_file(header, "a"));
    EXPECT_TRUE(contains(message, "'imp.crc32c' is \"" + value + "\"")) << value;
  }
}

TEST(SafetensorsReadErrors, BoolByteOutOfRange) {
  const std::string header = R"({"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})";
  const std::string message = parse_error_of(make_file(header, std::string("\x01\x00\x02", 3)));
  EXPECT_TRUE(contains(message, "BOOL tensor 'mask' has the byte value 2"));
  EXPECT_TRUE(contains(message, "file byte offset " + std::to_string(8 + header.size() + 2)));
}

// ---------------------------------------------------------------------------
// Files on disk

TEST(SafetensorsFile, SaveLoadRoundTrip) {
  testing::ScratchDir dir;
  const std::string path = dir.file(kFileName);
  const at::Tensor weight = at::arange(6, at::kBFloat16).reshape({2, 3});
  save_safetensors(path, {{"weight", weight}, {"tied", weight}}, {{"epoch", "4"}});

  const SafetensorsContents contents = load_safetensors(path);
  ASSERT_EQ(contents.tensors.size(), 2u);
  EXPECT_EQ(raw_bytes(contents.tensors[0].second), raw_bytes(weight));
  EXPECT_EQ(contents.tensors[0].second.unsafeGetTensorImpl(),
            contents.tensors[1].second.unsafeGetTensorImpl());
  EXPECT_EQ(contents.metadata, (Metadata{{"epoch", "4"}}));
}

TEST(SafetensorsFile, SaveReplacesOlderFileWithoutTemporaries) {
  testing::ScratchDir dir;
  const std::string path = dir.file(kFileName);
  save_safetensors(path, {{"old", at::zeros({100})}});
  save_safetensors(path, {{"new", at::full({2}, 9.0f)}});

  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{kFileName});

  const SafetensorsContents contents = load_safetensors(path);
  ASSERT_EQ(contents.tensors.size(), 1u);
  EXPECT_EQ(contents.tensors[0].first, "new");
  EXPECT_EQ(contents.tensors[0].second[1].item<float>(), 9.0f);
}

TEST(SafetensorsFile, InvalidInputLeavesOldFile) {
  testing::ScratchDir dir;
  const std::string path = dir.file(kFileName);
  save_safetensors(path, {{"old", at::ones({2})}});
  EXPECT_THROW(save_safetensors(path, {{"old", at::zeros({2}, at::kComplexDouble)}}), DataError);
  EXPECT_EQ(load_safetensors(path).tensors.at(0).second[0].item<float>(), 1.0f);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);
}

TEST(SafetensorsFile, FileReadMatchesStringParse) {
  testing::ScratchDir dir;
  const std::string path = dir.file(kFileName);
  const std::string file = serialize_safetensors({{"a", at::arange(7, at::kLong)}}, {{"k", "v"}});
  std::ofstream(path, std::ios::binary) << file;

  const SafetensorsContents contents = load_safetensors(path);
  EXPECT_EQ(raw_bytes(contents.tensors.at(0).second), data_section_of(file));
  EXPECT_EQ(contents.metadata, (Metadata{{"k", "v"}}));
}

TEST(SafetensorsFile, TruncatedFileOnDisk) {
  testing::ScratchDir dir;
  const std::string path = dir.file(kFileName);
  const std::string file = serialize_safetensors({{"a", at::ones({64})}}, {});
  std::ofstream(path, std::ios::binary) << file.substr(0, file.size() - 100);

  const std::string message = data_error_of([&] { load_safetensors(path); });
  EXPECT_TRUE(contains(message, path));
  EXPECT_TRUE(contains(message, "truncated"));
  EXPECT_TRUE(contains(message, "tensor 'a'"));
}

TEST(SafetensorsFile, MissingFile) {
  testing::ScratchDir dir;
  const std::string path = dir.file("absent.safetensors");
  const std::string message = data_error_of([&] { load_safetensors(path); });
  EXPECT_TRUE(contains(message, path));
  EXPECT_TRUE(contains(message, "No such file"));
}

}  // namespace
}  // namespace imp
