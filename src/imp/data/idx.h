// Reader for the idx format of the MNIST and Fashion-MNIST releases.
#pragma once

#include <torch/types.h>

#include <string>

namespace imp {

// Reads an idx file into a CPU tensor with the stored shape and dtype.
//
// Layout (big-endian): two zero bytes, a type byte, the number of dimensions,
// one uint32 per dimension, then the elements in row-major order. Type bytes:
// 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.
// A file that starts with the gzip magic bytes is decompressed on the fly, so
// the *.gz files of the releases can be read as they are.
//
// Throws DataError, naming the file, when it is missing, not an idx file, has
// a truncated header, fewer or more data bytes than its dimensions declare, or
// a corrupt gzip stream.
torch::Tensor read_idx(const std::string& path);

}  // namespace imp
