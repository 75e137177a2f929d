#include <gtest/gtest.h>

#include "imp/core/version.h"

TEST(Version, NamesTorchRelease) {
  EXPECT_FALSE(imp::torch_version().empty());
}
