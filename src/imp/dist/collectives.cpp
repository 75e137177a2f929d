// Differentiable all-gather and all-to-all, and the bucketed gradient
// averaging of GradientReducer (see collectives.h).
#include "imp/dist/collectives.h"

#include <torch/autograd.h>

#include <algorithm>
#include <utility>

#include "imp/core/error.h"

namespace imp::dist {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Carries the process group through AutogradContext::saved_data, which holds
// only IValues, to the backward pass.
struct GroupHandle : torch::CustomClassHolder {
  explicit GroupHandle(ProcessGroup* group) : group(group) {}
  ProcessGroup* group;
};

void save_group(AutogradContext* context, ProcessGroup* group) {
  context->saved_data["group"] = at::IValue::make_capsule(c10::make_intrusive<GroupHandle>(group));
}

ProcessGroup& saved_group(AutogradContext* context) {
  auto handle = c10::static_intrusive_pointer_cast<GroupHandle>(context->saved_data["group"].toCapsule());
  return *handle->group;
}

class AllGatherFunction : public torch::autograd::Function<AllGatherFunction> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& tensor, ProcessGroup* group) {
    std::vector<int64_t> counts;
    at::Tensor gathered = group->all_gather(tensor, &counts);
    int64_t offset = 0;
    for (int r = 0; r < group->rank(); ++r) offset += counts[r];
    save_group(context, group);
    context->saved_data["offset"] = offset;
    context->saved_data["rows"] = tensor.size(0);
    return gathered;
  }

  static variable_list backward(AutogradContext* context, variable_list gradients) {
    ProcessGroup& group = saved_group(context);
    // Cloned because the incoming gradient may be shared with other nodes
    // and the sum is computed in place.
    std::vector<at::Tensor> summed{gradients[0].contiguous().clone()};
    group.all_reduce_sum(summed);
    at::Tensor own_rows =
        summed[0].narrow(0, context->saved_data["offset"].toInt(), context->saved_data["rows"].toInt());
    return {own_rows, at::Tensor()};
  }
};

class AllToAllFunction : public torch::autograd::Function<AllToAllFunction> {
 public:
  static at::Tensor forward(AutogradContext* context, const at::Tensor& tensor, ProcessGroup* group,
                            const std::vector<int64_t>& send_counts, std::vector<int64_t>* received_counts) {
    std::vector<int64_t> counts;
    at::Tensor received = group->all_to_all(tensor, send_counts, &counts);
    save_group(context, group);
    context->saved_data["received_counts"] = counts;
    if (received_counts != nullptr) *received_counts = counts;
    return received;
  }

  static variable_list backward(AutogradContext* context, variable_list gradients) {
    ProcessGroup& group = saved_group(context);
    // Each output row came from one source rank. Sending the received counts
    // back as send counts returns every row's gradient to that source, in the
    // row's original order.
    std::vector<int64_t> return_counts = context->saved_data["received_counts"].toIntVector();
    at::Tensor gradient = group.all_to_all(gradients[0], return_counts);
    return {gradient, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor all_gather_with_grad(ProcessGroup& group, const at::Tensor& tensor) {
  return AllGatherFunction::apply(tensor, &group);
}

at::Tensor all_to_all_with_grad(ProcessGroup& group, const at::Tensor& tensor,
                                const std::vector<int64_t>& send_counts,
                                std::vector<int64_t>* received_counts) {
  return AllToAllFunction::apply(tensor, &group, send_counts, received_counts);
}

// ---------------------------------------------------------------------------
// GradientReducer

GradientReducer::GradientReducer(ProcessGroup& group, std::vector<at::Tensor> parameters,
                                 int64_t bucket_bytes)
    : group_(group) {
  IMP_REQUIRE(ConfigError, bucket_bytes > 0, "GradientReducer: the bucket size is ", bucket_bytes,
              " bytes; it must be positive");
  for (size_t i = 0; i < parameters.size(); ++i) {
    const at::Tensor& parameter = parameters[i];
    IMP_REQUIRE(ConfigError, parameter.defined(), "GradientReducer: parameter #", i, " is undefined");
    if (!parameter.requires_grad()) continue;
    IMP_REQUIRE(ConfigError, !parameter.is_sparse(), "GradientReducer: parameter #", i,
                " is sparse; only dense parameters can be averaged");
    IMP_REQUIRE(ConfigError, parameter.is_leaf(), "GradientReducer: parameter #", i, " of shape ",
                parameter.sizes(), " is not a leaf tensor; pass the model's parameters themselves");
    parameters_.push_back(parameter);
  }

  // Parameters are bucketed from last to first because backward produces the
  // gradients of the last layers first. Each bucket has one dtype and device.
  struct OpenBucket {
    at::ScalarType dtype;
    at::Device device;
    size_t index;
  };
  std::vector<OpenBucket> open;
  std::vector<int64_t> bucket_elements;
  std::vector<at::TensorOptions> bucket_options;
  for (size_t i = parameters_.size(); i-- > 0;) {
    const at::Tensor& parameter = parameters_[i];
    auto same_kind = [&](const OpenBucket& bucket) {
      return bucket.dtype == parameter.scalar_type() && bucket.device == parameter.device();
    };
    auto found = std::find_if(open.begin(), open.end(), same_kind);
    if (found != open.end()) {
      int64_t bytes_after = (bucket_elements[found->index] + parameter.numel()) * parameter.element_size();
      if (bytes_after > bucket_bytes) {
        open.erase(found);
        found = open.end();
      }
    }
    if (found == open.end()) {
      open.push_back({parameter.scalar_type(), parameter.device(), buckets_.size()});
      buckets_.emplace_back();
      bucket_elements.push_back(0);
      bucket_options.push_back(parameter.options().requires_grad(false));
      found = open.end() - 1;
    }
    Slot slot;
    slot.parameter = i;
    slot.offset = bucket_elements[found->index];
    buckets_[found->index].slots.push_back(slot);
    bucket_elements[found->index] += parameter.numel();
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b].buffer = at::zeros({bucket_elements[b]}, bucket_options[b]);
    buckets_[b].slots_pending = buckets_[b].slots.size();
  }
}

GradientReducer::~GradientReducer() {
  for (const auto& [parameter, handle] : hook_handles_) parameters_[parameter].remove_hook(handle);
}

at::Tensor GradientReducer::slot_view(const Bucket& bucket, const Slot& slot) const {
  const at::Tensor& parameter = parameters_[slot.parameter];
  return bucket.buffer.narrow(0, slot.offset, parameter.numel()).view(parameter.sizes());
}

void GradientReducer::fill_slot(Bucket& bucket, Slot& slot) {
  at::Tensor view = slot_view(bucket, slot);
  const at::Tensor& gradient = parameters_[slot.parameter].grad();
  if (gradient.defined()) {
    view.copy_(gradient.is_sparse() ? gradient.to_dense() : gradient);
  } else {
    view.zero_();
  }
  slot.ready = true;
}

void GradientReducer::launch(Bucket& bucket) {
  bucket.pending = group_.all_reduce_sum_async(bucket.buffer);
}

void GradientReducer::launch_ready_buckets() {
  while (next_bucket_to_launch_ < buckets_.size() && buckets_[next_bucket_to_launch_].slots_pending == 0) {
    launch(buckets_[next_bucket_to_launch_]);
    ++next_bucket_to_launch_;
  }
}

void GradientReducer::register_backward_hooks() {
  std::lock_guard<std::mutex> lock(mutex_);
  IMP_REQUIRE(ConfigError, hook_handles_.empty(),
              "GradientReducer: register_backward_hooks() was called twice; call it once");
  for (size_t b = 0; b < buckets_.size(); ++b) {
    for (size_t s = 0; s < buckets_[b].slots.size(); ++s) {
      size_t parameter = buckets_[b].slots[s].parameter;
      unsigned handle = parameters_[parameter].register_hook(
          [this, b, s](const at::Tensor& gradient) { on_gradient(b, s, gradient); });
      hook_handles_.emplace_back(parameter, handle);
    }
  }
}

void GradientReducer::prepare_for_backward() {
  std::lock_guard<std::mutex> lock(mutex_);
  IMP_REQUIRE(ConfigError, !hook_handles_.empty(),
              "GradientReducer: prepare_for_backward() needs register_backward_hooks() first");
  IMP_REQUIRE(TrainingError, next_bucket_to_launch_ == 0,
              "GradientReducer: prepare_for_backward() was called again before reduce() completed the "
              "previous backward pass; call reduce() after every prepared backward pass");
  for (auto& bucket : buckets_) {
    for (auto& slot : bucket.slots) slot.ready = false;
    bucket.slots_pending = bucket.slots.size();
  }
  armed_ = true;
}

// Runs on the autograd engine's thread, before the gradient is added to
// .grad(), so the slot receives the old .grad() plus the new gradient.
void GradientReducer::on_gradient(size_t bucket_index, size_t slot_index, const at::Tensor& gradient) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;
  Bucket& bucket = buckets_[bucket_index];
  Slot& slot = bucket.slots[slot_index];
  IMP_REQUIRE(TrainingError, !slot.ready, "GradientReducer: parameter #", slot.parameter,
              " received a second gradient in one backward pass, after its bucket may have been sent; "
              "call prepare_for_backward() only before a backward pass that reaches each parameter once");

  at::Tensor view = slot_view(bucket, slot);
  if (gradient.defined()) {
    view.copy_(gradient.is_sparse() ? gradient.to_dense() : gradient);
  } else {
    view.zero_();
  }
  const at::Tensor& accumulated = parameters_[slot.parameter].grad();
  if (accumulated.defined()) view.add_(accumulated.is_sparse() ? accumulated.to_dense() : accumulated);
  slot.ready = true;
  --bucket.slots_pending;
  launch_ready_buckets();
}

void GradientReducer::reduce() {
  std::lock_guard<std::mutex> lock(mutex_);
  // Buckets the hooks did not launch, or all of them without hooks, take the
  // current .grad() of each parameter not yet copied, or zeros.
  for (size_t b = next_bucket_to_launch_; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    for (auto& slot : bucket.slots) {
      if (!armed_ || !slot.ready) fill_slot(bucket, slot);
    }
    bucket.slots_pending = 0;
  }
  armed_ = false;
  launch_ready_buckets();
  next_bucket_to_launch_ = 0;

  for (auto& bucket : buckets_) {
    group_.wait(bucket.pending);
  }

  const double world_size = group_.world_size();
  for (auto& bucket : buckets_) {
    bucket.buffer.div_(world_size);
    for (auto& slot : bucket.slots) {
      at::Tensor& gradient = parameters_[slot.parameter].mutable_grad();
      at::Tensor mean = slot_view(bucket, slot);
      if (gradient.defined() && !gradient.is_sparse()) {
        gradient.copy_(mean);
      } else {
        gradient = mean.clone();
      }
      slot.ready = false;
    }
    bucket.slots_pending = bucket.slots.size();
  }
}

}  // namespace imp::dist
