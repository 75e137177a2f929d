// Reading and writing safetensors files, the tensor format that PyTorch, JAX
// and the Hugging Face tools share. imp stores model weights and optimizer
// state in it.
//
// Layout of a file:
//   8 bytes   N, the header length, a little-endian u64
//   N bytes   a UTF-8 JSON object that maps each tensor name to
//             {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
//             and may contain "__metadata__", an object of string -> string.
//             The header may end with spaces so that the data start aligned.
//   the rest  the data section: each tensor's bytes, raw, little-endian and
//             row-major, at [begin, end) counted from the start of this section.
//
// Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8 and BOOL.
//
// imp adds two keys to "__metadata__". Other tools ignore them, and the reader
// removes every key that starts with "imp." from the metadata it returns:
//   "imp.crc32c"   the CRC-32C of the whole data section as 8 lowercase hex
//                  digits. The reader verifies it when it is present, so a
//                  damaged file is an error and not wrong weights.
//   "imp.aliases"  a JSON object, stored as a string, that maps an alias name
//                  to the name of a stored tensor. The writer stores tensors
//                  that are the same view of the same memory (tied embedding
//                  weights) once. The reader returns the alias as the same
//                  at::Tensor as the stored tensor, so both share storage.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace imp {

// Named tensors in file order. Names are unique.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct SafetensorsContents {
  // Tensors in the order of their data offsets. Each alias follows the tensor
  // it aliases.
  NamedTensors tensors;
  // The "__metadata__" object without the reserved "imp." keys.
  std::map<std::string, std::string> metadata;
};

// The largest header the reader accepts by default, in bytes. The reference
// implementation uses the same limit (MAX_HEADER_SIZE in
// huggingface/safetensors, safetensors/src/tensor.rs). It stops a
// damaged length field from making the reader allocate gigabytes.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsReadOptions {
  // Headers longer than this many bytes are rejected. A header of exactly
  // this length is accepted.
  uint64_t max_header_bytes = kMaxSafetensorsHeaderBytes;
};

// Returns the bytes of a safetensors file that contains `tensors` in the order
// given, with `metadata` in "__metadata__". Tensors on any device are copied
// to the CPU and made contiguous. The header is padded with spaces to a
// multiple of 8 bytes. Throws DataError for an empty, duplicate or undefined
// tensor, a name equal to "__metadata__", an unsupported dtype, a metadata
// key starting with "imp." or text that is not valid UTF-8.
std::string serialize_safetensors(const NamedTensors& tensors,
                                  const std::map<std::string, std::string>& metadata);

// Decodes the bytes of a safetensors file. The returned tensors are on the
// CPU and own their memory. `what` names the file in error messages. Throws
// DataError, naming the file and the tensor or byte offset, for anything
// that is not a complete, well-formed file. Examples are a truncated file, a
// Git LFS pointer or other text, and a header that is not valid JSON. So are
// a header that describes overlapping, missing or trailing bytes and data
// whose checksum does not match "imp.crc32c".
SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& what,
                                      const SafetensorsReadOptions& options = {});

// Writes the file that serialize_safetensors describes to `path`, atomically:
// the data go to `path`.tmp-<pid>, which is flushed with fsync and renamed
// over `path`, and then the folder is flushed too. A crash at any point
// leaves either the old file or the new one under `path`. Throws DataError,
// naming the path, when writing fails; the temporary file is removed then.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads the safetensors file at `path` (see parse_safetensors). Tensor data
// are read from the file straight into the tensors, without a copy of the
// whole file in memory.
SafetensorsContents load_safetensors(const std::string& path,
                                     const SafetensorsReadOptions& options = {});

}  // namespace imp
