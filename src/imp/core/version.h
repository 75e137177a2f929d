#pragma once

#include <string>

namespace imp {

// Version string of the LibTorch this binary was built against, e.g. "1.13.1".
std::string torch_version();

}  // namespace imp
