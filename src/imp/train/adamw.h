// AdamW with the whole update of a parameter in one pass over its memory.
//
// LibTorch's AdamW runs about ten tensor operations per parameter (decay,
// two moment updates, square root, division, ...), each a full pass over
// memory, and allocates two temporaries as large as the parameter. This
// optimizer reads each parameter, gradient and moment once and writes them
// once. On the IMP-Ti benchmark (bench_peer, 2 cores), whose largest tensor
// is the token embedding, that made a bf16 step 5-7% faster.
//
// It is a torch::optim::AdamW: same options, same per-parameter state
// (AdamWParamState under the same keys), so checkpoints and code that
// reads the moments work unchanged. The values agree with LibTorch's to
// float rounding. Parameters that the fused pass does not cover (not on
// the CPU, not float32, sparse gradients, amsgrad) take LibTorch's step.
#pragma once

#include <torch/optim/adamw.h>

#include <string>
#include <vector>

namespace imp {

// Returns the key under which torch::optim optimizers keep `parameter`'s state.
std::string optimizer_state_key(const torch::Tensor& parameter);

class FusedAdamW : public torch::optim::AdamW {
 public:
  FusedAdamW(std::vector<torch::Tensor> parameters, torch::optim::AdamWOptions options)
      : torch::optim::AdamW(std::move(parameters), std::move(options)) {}

  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace imp
