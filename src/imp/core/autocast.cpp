#include "imp/core/autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace imp {

// LibTorch 2.4 replaced the per-device autocast switches with calls that take
// the device type; 1.13 has only the CPU and CUDA variants.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define IMP_AUTOCAST_BY_DEVICE 1
#else
#define IMP_AUTOCAST_BY_DEVICE 0
#endif

namespace {

bool autocast_enabled(c10::DeviceType device) {
#if IMP_AUTOCAST_BY_DEVICE
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void set_autocast(c10::DeviceType device, bool enabled) {
#if IMP_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_dtype(device, at::kBFloat16);
  at::autocast::set_autocast_enabled(device, enabled);
#else
  if (device == c10::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

}  // namespace

bool autocast_is_enabled(c10::DeviceType device) { return autocast_enabled(device); }

AutocastScope::AutocastScope(c10::DeviceType device, bool enabled)
    : device_(device), enabled_(enabled) {
  if (!enabled_) return;
  was_enabled_ = autocast_enabled(device_);
  set_autocast(device_, true);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  // Cached bf16 copies of the weights are only valid within one step.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast(device_, was_enabled_);
}

}  // namespace imp
