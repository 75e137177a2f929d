// CRC-32C (Castagnoli polynomial, reflected, as in iSCSI and ext4), the
// checksum TensorBoard's record format uses and that checkpoints store to
// detect damaged files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace imp {

// CRC-32C of `size` bytes at `data`, continuing from `crc` (0 to start):
// crc32c(b, crc32c(a)) equals the checksum of a followed by b.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

// The masked form TensorBoard stores, so that checksums of data that itself
// contains checksums do not collide: rotate right by 15 bits, add 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace imp
