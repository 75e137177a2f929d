#include "imp/core/version.h"

#include <torch/version.h>

namespace imp {

std::string torch_version() { return TORCH_VERSION; }

}  // namespace imp
