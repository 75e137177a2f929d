#include "imp/core/crc32c.h"

#include <string>

#include <gtest/gtest.h>

namespace imp {
namespace {

TEST(Crc32c, MatchesTheStandardCheckValue) {
  // The check value of CRC-32C over the ASCII digits 1-9 (RFC 3720, B.4).
  const std::string digits = "123456789";
  EXPECT_EQ(crc32c(digits.data(), digits.size()), 0xe3069283u);
  EXPECT_EQ(crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, MatchesIscsiTestVectors) {
  // RFC 3720, B.4: 32 bytes of zeros and 32 bytes of 0xff.
  const std::string zeros(32, '\0');
  const std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62a8ab43u);
}

TEST(Crc32c, ContinuesAcrossPieces) {
  const std::string text = "alternating gradient descent";
  const uint32_t whole = crc32c(text.data(), text.size());
  const uint32_t first = crc32c(text.data(), 10);
  EXPECT_EQ(crc32c(text.data() + 10, text.size() - 10, first), whole);
}

TEST(Crc32c, MasksAsTensorBoardDoes) {
  const std::string digits = "123456789";
  const uint32_t crc = 0xe3069283u;
  EXPECT_EQ(masked_crc32c(digits.data(), digits.size()), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

}  // namespace
}  // namespace imp
