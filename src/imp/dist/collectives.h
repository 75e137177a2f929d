// Differentiable collectives and gradient averaging for data-parallel
// training on an imp::dist::ProcessGroup.
//
// The C++ collectives of c10d record no autograd history, so
// all_gather_with_grad and all_to_all_with_grad wrap them in
// torch::autograd::Function. Their backward passes run collectives too, so
// every rank must run backward through them, in the same order.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "imp/dist/process_group.h"

namespace imp::dist {

// Returns group.all_gather(tensor) with a gradient. The loss is taken to be
// the sum of every rank's loss, as in torch.distributed.nn.all_gather: the
// backward pass sums the gradient of the gathered tensor over all ranks and
// returns this rank's rows of that sum. `group` must outlive the backward pass.
at::Tensor all_gather_with_grad(ProcessGroup& group, const at::Tensor& tensor);

// Returns group.all_to_all(tensor, send_counts, received_counts) with a
// gradient. The backward pass sends each received row's gradient back to the
// rank it came from (the reverse all-to-all), so the gradient of `tensor` has
// its rows in their original order. `group` must outlive the backward pass.
at::Tensor all_to_all_with_grad(ProcessGroup& group, const at::Tensor& tensor,
                                const std::vector<int64_t>& send_counts,
                                std::vector<int64_t>* received_counts = nullptr);

// Averages parameter gradients over all ranks, in flat buckets of about
// `bucket_bytes` each: one all-reduce per bucket, all launched before the
// first is waited for.
//
// After reduce(), every parameter that requires a gradient has a defined
// gradient equal to the mean over ranks. A rank on which a parameter's
// gradient is undefined (such as an expert that no token reached)
// contributes zeros, so every rank joins every bucket's all-reduce. Parameters
// that do not require a gradient are ignored. Every rank must pass the same
// parameter shapes and dtypes in the same order.
//
// Overlap with the backward pass is optional: after register_backward_hooks(),
// call prepare_for_backward() before a backward pass and reduce() after it.
// During that backward pass a hook on each parameter copies its gradient
// into the bucket, and a bucket's all-reduce starts once all of its gradients
// are in. Buckets start in a fixed order on every rank, which c10d requires,
// so a bucket waits for the ones before it. A parameter that receives no
// gradient delays its bucket, and every later one, until reduce(). Without prepare_for_backward()
// the hooks do nothing, which suits micro-batches whose gradients are only
// accumulated locally.
//
// The hooks use Tensor::register_hook, the public API in LibTorch 1.13, which
// sees a leaf's new gradient just before it is added to .grad(); the hook adds
// the existing .grad() itself. LibTorch's AccumulateGrad post hooks (which
// DDP uses to see the accumulated .grad()) are reachable only through
// torch::autograd::impl, an internal API whose node the tensor holds weakly,
// so they are not used here.
class GradientReducer {
 public:
  // PyTorch DDP's default bucket_cap_mb is 25.
  static constexpr int64_t kDefaultBucketBytes = 25 * 1024 * 1024;

  // Throws imp::ConfigError when bucket_bytes is not positive or a parameter
  // that requires a gradient is undefined, sparse or not a leaf. `group`
  // must outlive the reducer.
  GradientReducer(ProcessGroup& group, std::vector<at::Tensor> parameters,
                  int64_t bucket_bytes = kDefaultBucketBytes);
  // Removes the hooks.
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Averages every gradient over all ranks (see the class comment). Throws
  // imp::TrainingError naming the lost rank when a collective fails.
  void reduce();

  // Registers a gradient hook on every parameter; call once.
  void register_backward_hooks();
  // Makes the hooks launch bucket all-reduces during the next backward pass,
  // which reduce() then completes.
  void prepare_for_backward();

  size_t bucket_count() const { return buckets_.size(); }

 private:
  struct Slot {
    size_t parameter = 0;  // index into parameters_
    int64_t offset = 0;    // in elements, into the bucket's buffer
    bool ready = false;    // gradient copied in during this backward pass
  };
  struct Bucket {
    at::Tensor buffer;  // flat, the parameters' dtype and device
    std::vector<Slot> slots;
    size_t slots_pending = 0;
    PendingCollective pending;
  };

  at::Tensor slot_view(const Bucket& bucket, const Slot& slot) const;
  void on_gradient(size_t bucket_index, size_t slot_index, const at::Tensor& gradient);
  void fill_slot(Bucket& bucket, Slot& slot);
  void launch_ready_buckets();
  void launch(Bucket& bucket);

  ProcessGroup& group_;
  std::vector<at::Tensor> parameters_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<size_t, unsigned>> hook_handles_;  // parameter index, handle
  std::mutex mutex_;
  bool armed_ = false;
  size_t next_bucket_to_launch_ = 0;
};

}  // namespace imp::dist
