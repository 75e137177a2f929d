// Batched matrix products through oneDNN's matmul primitive, on LibTorch's
// CPU tensors in place. Internal to the model's oneDNN paths
// (onednn_attention.cpp, linear.cpp); only compiled with IMP_WITH_ONEDNN.
#pragma once

#include <ATen/core/Tensor.h>

#include <dnnl.hpp>

namespace imp::onednn {

// One operand: a tensor of 2 to 4 dimensions (batch dimensions first, then
// rows and columns), read or written in place at the given element strides.
struct Operand {
  dnnl::memory::dims dims;
  dnnl::memory::dims strides;
  dnnl::memory::data_type type;
};

// Returns oneDNN's data type for float or bfloat16, and throws for others.
dnnl::memory::data_type type_of(at::ScalarType type);

// Returns whether oneDNN has matmul kernels for `type` on this CPU, checked
// once per type. bfloat16 kernels were missing where AVX-512 was hidden (under
// valgrind).
bool supports(at::ScalarType type);

// Returns the operand that views `tensor` with its own sizes and strides.
Operand operand(const at::Tensor& tensor);

// Computes c = scale * a @ b (+ bias) for every batch index, on the OpenMP pool that
// LibTorch uses. `bias`, when given, broadcasts over the rows of c: its dims
// equal c's with 1 rows. The pointers are the operands' first elements.
void multiply(const Operand& a, const void* a_data, const Operand& b, const void* b_data, const Operand& c,
              void* c_data, float scale = 1.0f, const Operand* bias = nullptr, const void* bias_data = nullptr);

// Computes c = a @ b (+ bias) on tensors viewed with their own sizes and strides.
void multiply(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, const at::Tensor& bias = at::Tensor());

}  // namespace imp::onednn
