#include "imp/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "imp/core/error.h"

namespace imp {
namespace {

struct GzFileCloser {
  void operator()(gzFile file) const { gzclose(file); }
};
using GzFilePtr = std::unique_ptr<gzFile_s, GzFileCloser>;

struct IdxType {
  torch::ScalarType dtype;
  size_t element_size;
};

struct IdxHeader {
  IdxType type;
  std::vector<int64_t> shape;
  size_t size_bytes;  // magic, type, rank and dimensions
};

std::string hex_byte(uint8_t value) {
  char text[8];
  std::snprintf(text, sizeof(text), "0x%02X", static_cast<unsigned>(value));
  return text;
}

GzFilePtr open_idx_file(const std::string& path) {
  errno = 0;
  GzFilePtr file(gzopen(path.c_str(), "rb"));
  if (file) return file;
  IMP_REQUIRE(DataError, errno != ENOENT, "idx file '", path,
              "' not found: check the path, or install the dataset package that provides it");
  throw DataError(str_cat("failed to open idx file '", path, "': ",
                          errno != 0 ? std::strerror(errno) : "out of memory",
                          "; check that it is a readable file"));
}

// Throws when zlib stopped early: a truncated or corrupt gzip stream, or a
// read error of the file itself.
void check_stream_status(gzFile file, const std::string& path) {
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code == Z_OK) return;
  if (code == Z_ERRNO) {
    throw DataError(str_cat("failed to read idx file '", path, "': ", std::strerror(errno),
                            "; check that it is a readable file"));
  }
  throw DataError(str_cat("idx file '", path, "' is a gzip file with a corrupt compressed stream (zlib: ",
                          message, "); download it again or reinstall the package that provides it"));
}

// Reads the whole file, decompressed when it is gzip. zlib passes a file
// without the gzip magic through unchanged, so one path serves both.
std::vector<uint8_t> read_all_bytes(const std::string& path) {
  GzFilePtr file = open_idx_file(path);
  constexpr unsigned kChunkBytes = 1u << 20;
  std::vector<uint8_t> bytes;
  while (true) {
    const size_t filled = bytes.size();
    bytes.resize(filled + kChunkBytes);
    const int count = gzread(file.get(), bytes.data() + filled, kChunkBytes);
    bytes.resize(filled + std::max(count, 0));
    if (count <= 0) break;
  }
  // gzread returns the bytes before a truncation without failing, so the
  // stream status is the only sign of a gzip file that ends early.
  check_stream_status(file.get(), path);
  return bytes;
}

IdxType idx_type(uint8_t code, const std::string& path) {
  switch (code) {
    case 0x08: return {torch::kUInt8, 1};
    case 0x09: return {torch::kInt8, 1};
    case 0x0B: return {torch::kInt16, 2};
    case 0x0C: return {torch::kInt32, 4};
    case 0x0D: return {torch::kFloat32, 4};
    case 0x0E: return {torch::kFloat64, 8};
    default:
      throw DataError(str_cat("idx file '", path, "' has unknown element type ", hex_byte(code),
                              ": expected 0x08 (uint8), 0x09 (int8), 0x0B (int16), 0x0C (int32), ",
                              "0x0D (float32) or 0x0E (float64); the file is corrupt, download it again"));
  }
}

uint32_t read_big_endian_u32(const uint8_t* bytes) {
  return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
         uint32_t{bytes[3]};
}

void check_header_length(size_t needed, size_t available, const std::string& path) {
  IMP_REQUIRE(DataError, available >= needed, "idx file '", path, "' has a truncated header: expected ",
              needed, " header bytes, found ", available,
              "; the file is truncated, download it again or reinstall the package that provides it");
}

IdxHeader parse_header(const std::vector<uint8_t>& bytes, const std::string& path) {
  const bool zero_magic = bytes.size() < 2 || (bytes[0] == 0 && bytes[1] == 0);
  IMP_REQUIRE(DataError, zero_magic, "'", path, "' is not an idx file: it starts with ", hex_byte(bytes[0]),
              " ", hex_byte(bytes[1]), " but an idx file starts with two zero bytes; check the path");
  check_header_length(4, bytes.size(), path);

  IdxHeader header{idx_type(bytes[2], path), {}, 4 + 4 * size_t{bytes[3]}};
  check_header_length(header.size_bytes, bytes.size(), path);
  for (size_t i = 0; i < bytes[3]; ++i) {
    header.shape.push_back(read_big_endian_u32(bytes.data() + 4 + 4 * i));
  }
  return header;
}

// Returns the number of data bytes the dimensions declare, rejecting products
// that do not fit in int64 (only a corrupt header declares that much).
size_t declared_data_bytes(const IdxHeader& header, const std::string& path) {
  uint64_t total = header.type.element_size;
  for (int64_t dim : header.shape) {
    const bool overflow = __builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total);
    IMP_REQUIRE(DataError, !overflow && total <= static_cast<uint64_t>(INT64_MAX), "idx file '", path,
                "' declares dimensions ", c10::IntArrayRef(header.shape),
                " whose size does not fit in memory; the header is corrupt, download the file again");
  }
  return total;
}

void check_data_length(const IdxHeader& header, size_t found, const std::string& path) {
  const size_t expected = declared_data_bytes(header, path);
  const std::string shape = str_cat(c10::IntArrayRef(header.shape));
  IMP_REQUIRE(DataError, found >= expected, "idx file '", path, "' with dimensions ", shape, ": expected ",
              expected, " bytes of data, found ", found,
              ": the file is truncated; reinstall the package that provides it "
              "(dataset-fashion-mnist for Fashion-MNIST) or download it again");
  IMP_REQUIRE(DataError, found == expected, "idx file '", path, "' has the wrong size: dimensions ", shape,
              " declare ", expected, " bytes of data, found ", found, " (", found - expected,
              " trailing bytes); the file is corrupt, download it again");
}

// idx stores elements big-endian, so they are swapped into the host order.
void to_host_order(torch::Tensor& tensor, size_t element_size) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (element_size == 1) return;
  auto* bytes = static_cast<uint8_t*>(tensor.data_ptr());
  const size_t total = tensor.numel() * element_size;
  for (size_t offset = 0; offset < total; offset += element_size) {
    std::reverse(bytes + offset, bytes + offset + element_size);
  }
#endif
}

}  // namespace

torch::Tensor read_idx(const std::string& path) {
  const std::vector<uint8_t> bytes = read_all_bytes(path);
  const IdxHeader header = parse_header(bytes, path);
  check_data_length(header, bytes.size() - header.size_bytes, path);

  torch::Tensor tensor = torch::empty(header.shape, torch::TensorOptions().dtype(header.type.dtype));
  if (tensor.nbytes() > 0) {
    std::memcpy(tensor.data_ptr(), bytes.data() + header.size_bytes, tensor.nbytes());
  }
  to_host_order(tensor, header.type.element_size);
  return tensor;
}

}  // namespace imp
