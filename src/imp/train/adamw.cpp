#include "imp/train/adamw.h"

#include <ATen/Parallel.h>
#include <c10/util/string_utils.h>
#include <torch/autograd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace imp {
namespace {

using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;

// The scalars of one parameter's update, in float as LibTorch applies them
// to float tensors.
struct Update {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float decay;              // 1 - lr * weight_decay
  float step_size;          // lr / (1 - beta1^t)
  float correction2_sqrt;   // sqrt(1 - beta2^t)
  float eps;
};

// One element, in the order of LibTorch's AdamW: decay the weight, update
// both moments, then subtract step_size * m / (sqrt(v) / sqrt(c2) + eps).
inline void update_one(const Update& u, float* p, const float* g, float* m, float* v) {
  const float grad = *g;
  const float mean = *m * u.beta1 + grad * u.one_minus_beta1;
  const float square = *v * u.beta2 + u.one_minus_beta2 * grad * grad;
  *m = mean;
  *v = square;
  const float denom = std::sqrt(square) / u.correction2_sqrt + u.eps;
  *p = *p * u.decay - u.step_size * (mean / denom);
}

// Updates elements [begin, end): four lanes at a time with SSE2, which every
// x86-64 CPU has, then one at a time. Wider lanes were not tried, because the
// pass is bound by memory. The lanes round every operation as update_one does.
void update_range(const Update& u, float* __restrict p, const float* __restrict g, float* __restrict m,
                  float* __restrict v, int64_t begin, int64_t end) {
  int64_t i = begin;
#ifdef __SSE2__
  const __m128 beta1 = _mm_set1_ps(u.beta1), one_minus_beta1 = _mm_set1_ps(u.one_minus_beta1);
  const __m128 beta2 = _mm_set1_ps(u.beta2), one_minus_beta2 = _mm_set1_ps(u.one_minus_beta2);
  const __m128 decay = _mm_set1_ps(u.decay), step_size = _mm_set1_ps(u.step_size);
  const __m128 correction2_sqrt = _mm_set1_ps(u.correction2_sqrt), eps = _mm_set1_ps(u.eps);
  for (; i + 4 <= end; i += 4) {
    const __m128 grad = _mm_loadu_ps(g + i);
    const __m128 mean = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), beta1), _mm_mul_ps(grad, one_minus_beta1));
    const __m128 square =
        _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), beta2), _mm_mul_ps(_mm_mul_ps(one_minus_beta2, grad), grad));
    _mm_storeu_ps(m + i, mean);
    _mm_storeu_ps(v + i, square);
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(square), correction2_sqrt), eps);
    const __m128 weight = _mm_mul_ps(_mm_loadu_ps(p + i), decay);
    _mm_storeu_ps(p + i, _mm_sub_ps(weight, _mm_mul_ps(step_size, _mm_div_ps(mean, denom))));
  }
#endif
  for (; i < end; ++i) update_one(u, p + i, g + i, m + i, v + i);
}

// A run of one parameter's elements to update. `grad` keeps a contiguous
// copy of the gradient alive where the gradient itself was not contiguous.
struct Slice {
  Update u;
  torch::Tensor grad;
  float* p;
  const float* g;
  float* m;
  float* v;
  int64_t begin, end;
};

// Elements per slice: 1 MiB of each array.
constexpr int64_t kSliceElements = 1 << 18;
// Below this many elements in all, one thread updates everything: starting
// threads would cost more than they save.
constexpr int64_t kParallelElements = 1 << 20;

// Updates every slice, on as many threads as LibTorch's intra-op setting
// (this thread and the rest started here), each taking the next slice from a
// shared counter. at::parallel_for would not do: its OpenMP loop is compiled
// into the caller, and imp is built without OpenMP, so it ran on one thread.
void update_slices(const std::vector<Slice>& slices) {
  int64_t elements = 0;
  for (const Slice& slice : slices) elements += slice.end - slice.begin;
  std::atomic<size_t> next{0};
  auto work = [&]() {
    for (size_t i = next++; i < slices.size(); i = next++) {
      const Slice& slice = slices[i];
      update_range(slice.u, slice.p, slice.g, slice.m, slice.v, slice.begin, slice.end);
    }
  };
  const int threads = elements < kParallelElements ? 1 : std::max(1, at::get_num_threads());
  std::vector<std::thread> helpers;
  for (int t = 1; t < threads && static_cast<size_t>(t) < slices.size(); ++t) helpers.emplace_back(work);
  work();
  for (std::thread& helper : helpers) helper.join();
}

bool fusable(const torch::Tensor& parameter, const AdamWOptions& options) {
  const torch::Tensor& grad = parameter.grad();
  return !options.amsgrad() && parameter.device().is_cpu() && parameter.scalar_type() == at::kFloat &&
         parameter.is_contiguous() && grad.layout() == at::kStrided && grad.device().is_cpu() &&
         grad.scalar_type() == at::kFloat;
}

// The parameter's state, created as LibTorch's AdamW creates it on a first
// step, with moments that are contiguous float tensors.
AdamWParamState& state_of(torch::optim::Optimizer& optimizer, const torch::Tensor& parameter) {
  auto& states = optimizer.state();
  const std::string key = optimizer_state_key(parameter);
  auto found = states.find(key);
  if (found == states.end()) {
    auto fresh = std::make_unique<AdamWParamState>();
    fresh->exp_avg(torch::zeros_like(parameter, at::MemoryFormat::Contiguous));
    fresh->exp_avg_sq(torch::zeros_like(parameter, at::MemoryFormat::Contiguous));
    found = states.emplace(key, std::move(fresh)).first;
  }
  auto& state = static_cast<AdamWParamState&>(*found->second);
  // Moments restored from a checkpoint may arrive in another layout.
  if (!state.exp_avg().is_contiguous()) state.exp_avg(state.exp_avg().contiguous());
  if (!state.exp_avg_sq().is_contiguous()) state.exp_avg_sq(state.exp_avg_sq().contiguous());
  return state;
}

}  // namespace

std::string optimizer_state_key(const torch::Tensor& parameter) {
  return c10::guts::to_string(parameter.unsafeGetTensorImpl());
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  for (const auto& group : param_groups()) {
    const auto& options = static_cast<const AdamWOptions&>(group.options());
    for (const torch::Tensor& parameter : group.params()) {
      if (parameter.grad().defined() && !fusable(parameter, options)) return torch::optim::AdamW::step(closure);
    }
  }
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode grad_mode(true);
    loss = closure();
  }
  torch::NoGradGuard no_grad;
  std::vector<Slice> slices;
  for (auto& group : param_groups()) {
    const auto& options = static_cast<const AdamWOptions&>(group.options());
    const double beta1 = std::get<0>(options.betas()), beta2 = std::get<1>(options.betas());
    for (torch::Tensor& parameter : group.params()) {
      if (!parameter.grad().defined()) continue;
      AdamWParamState& state = state_of(*this, parameter);
      state.step(state.step() + 1);
      const double t = static_cast<double>(state.step());
      Update u;
      u.beta1 = static_cast<float>(beta1);
      u.one_minus_beta1 = static_cast<float>(1.0 - beta1);
      u.beta2 = static_cast<float>(beta2);
      u.one_minus_beta2 = static_cast<float>(1.0 - beta2);
      u.decay = static_cast<float>(1.0 - options.lr() * options.weight_decay());
      u.step_size = static_cast<float>(options.lr() / (1.0 - std::pow(beta1, t)));
      u.correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
      u.eps = static_cast<float>(options.eps());

      Slice slice;
      slice.u = u;
      slice.grad = parameter.grad().contiguous();
      slice.p = parameter.data_ptr<float>();
      slice.g = slice.grad.data_ptr<float>();
      slice.m = state.exp_avg().data_ptr<float>();
      slice.v = state.exp_avg_sq().data_ptr<float>();
      for (int64_t begin = 0; begin < parameter.numel(); begin += kSliceElements) {
        slice.begin = begin;
        slice.end = std::min<int64_t>(parameter.numel(), begin + kSliceElements);
        slices.push_back(slice);
      }
    }
  }
  update_slices(slices);
  return loss;
}

}  // namespace imp
