#ifdef IMP_WITH_ONEDNN

#include "imp/model/onednn.h"

#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

namespace imp::onednn {
namespace {

using dnnl::memory;

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::desc describe(const Operand& operand) { return memory::desc(operand.dims, operand.type, operand.strides); }

// Creating a matmul primitive JIT-compiles its kernels, so each distinct
// product is created once and kept. Shapes that keep
// changing (evaluation batches of every size) would grow the set without
// end, so it starts afresh past a bound.
const dnnl::matmul& matmul_for(const Operand& a, const Operand& b, const Operand& c, float scale,
                               const Operand* bias) {
  constexpr size_t kMaxPrimitives = 512;
  static std::mutex mutex;
  static std::map<std::string, dnnl::matmul> primitives;
  std::ostringstream key;
  for (const Operand* operand : {&a, &b, &c, bias}) {
    if (operand == nullptr) continue;
    for (auto v : operand->dims) key << v << ',';
    key << '/';
    for (auto v : operand->strides) key << v << ',';
    key << static_cast<int>(operand->type) << ';';
  }
  key << std::hexfloat << scale;  // exact, unlike the default 6 digits
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = primitives.find(key.str());
  if (found != primitives.end()) return found->second;
  if (primitives.size() >= kMaxPrimitives) primitives.clear();
  dnnl::primitive_attr attributes;
  if (scale != 1.0f) attributes.set_output_scales(0, {scale});
  const dnnl::matmul::desc description =
      bias != nullptr ? dnnl::matmul::desc(describe(a), describe(b), describe(*bias), describe(c))
                      : dnnl::matmul::desc(describe(a), describe(b), describe(c));
  return primitives.emplace(key.str(), dnnl::matmul({description, attributes, cpu_engine()})).first->second;
}

}  // namespace

memory::data_type type_of(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return memory::data_type::f32;
    case at::kBFloat16: return memory::data_type::bf16;
    default: TORCH_CHECK(false, "oneDNN matmul: unsupported dtype ", type);
  }
}

bool supports(at::ScalarType type) {
  const auto probe = [](memory::data_type data_type) {
    try {
      const memory::desc matrix({2, 2}, data_type, memory::format_tag::ab);
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(matrix, matrix, matrix), cpu_engine());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  };
  static const bool float32 = probe(memory::data_type::f32);
  static const bool bfloat16 = probe(memory::data_type::bf16);
  if (type == at::kFloat) return float32;
  if (type == at::kBFloat16) return bfloat16;
  return false;
}

Operand operand(const at::Tensor& tensor) {
  return {memory::dims(tensor.sizes().begin(), tensor.sizes().end()),
          memory::dims(tensor.strides().begin(), tensor.strides().end()), type_of(tensor.scalar_type())};
}

void multiply(const Operand& a, const void* a_data, const Operand& b, const void* b_data, const Operand& c,
              void* c_data, float scale, const Operand* bias, const void* bias_data) {
  const dnnl::matmul& primitive = matmul_for(a, b, c, scale, bias);
  // oneDNN takes non-const handles, but it only reads the inputs.
  std::unordered_map<int, memory> arguments{
      {DNNL_ARG_SRC, memory(describe(a), cpu_engine(), const_cast<void*>(a_data))},
      {DNNL_ARG_WEIGHTS, memory(describe(b), cpu_engine(), const_cast<void*>(b_data))},
      {DNNL_ARG_DST, memory(describe(c), cpu_engine(), c_data)}};
  if (bias != nullptr) {
    arguments.emplace(DNNL_ARG_BIAS, memory(describe(*bias), cpu_engine(), const_cast<void*>(bias_data)));
  }
  dnnl::stream stream(cpu_engine());
  primitive.execute(stream, arguments);
  stream.wait();
}

void multiply(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, const at::Tensor& bias) {
  if (!bias.defined()) {
    multiply(operand(a), a.data_ptr(), operand(b), b.data_ptr(), operand(c), c.data_ptr());
    return;
  }
  const Operand bias_operand = operand(bias);
  multiply(operand(a), a.data_ptr(), operand(b), b.data_ptr(), operand(c), c.data_ptr(), 1.0f, &bias_operand,
           bias.data_ptr());
}

}  // namespace imp::onednn

#endif  // IMP_WITH_ONEDNN
