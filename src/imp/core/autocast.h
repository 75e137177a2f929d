// bf16 autocast scope. Matmuls inside run in bfloat16 while weights, the
// residual stream and LayerNorm stay in float32.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace imp {

// Whether bf16 autocast is on for `device` in this thread.
bool autocast_is_enabled(c10::DeviceType device);

// Enables autocast to bfloat16 for `device` while alive, when `enabled`;
// restores the previous state on destruction. Nestable.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  bool was_enabled_ = false;
};

// Runs the enclosed operations in their inputs' own precision even inside an
// AutocastScope, without touching the caller's autocast state. For numerics
// that bf16 would ruin: routers, contrastive logits, optimisation in eval.
class AutocastOff {
 public:
  AutocastOff() : guard_(c10::autocast_dispatch_keyset) {}

 private:
  c10::impl::ExcludeDispatchKeyGuard guard_;
};

}  // namespace imp
