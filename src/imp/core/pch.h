// Precompiled header for the imp library, its tests and tools. LibTorch's
// umbrella header costs about 20 s per translation unit; compiling it once
// keeps a clean build short on two cores.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
