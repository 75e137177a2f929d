#include "imp/model/position.h"

#include <c10/util/Exception.h>
#include <torch/nn/functional/upsampling.h>

namespace imp {

at::Tensor resize_positions(const at::Tensor& table, at::IntArrayRef grid) {
  const int64_t dims = table.dim() - 2;
  TORCH_CHECK(dims >= 1 && dims <= 3 && table.size(0) == 1,
              "position table must be [1, D, *grid] with a 1 to 3 dim grid, got ", table.sizes());
  TORCH_CHECK(static_cast<int64_t>(grid.size()) == dims, "position grid ", grid,
              " has a different rank than the table ", table.sizes());

  at::Tensor resized = table;
  if (table.sizes().slice(2) != grid) {
    // align_corners=false keeps the patch centres evenly spaced in both grids,
    // as ViT's resolution changes do.
    namespace F = torch::nn::functional;
    std::vector<int64_t> size(grid.begin(), grid.end());
    auto options = F::InterpolateFuncOptions().size(size).align_corners(false);
    if (dims == 1) options.mode(torch::kLinear);
    if (dims == 2) options.mode(torch::kBilinear);
    if (dims == 3) options.mode(torch::kTrilinear);
    resized = F::interpolate(table, options);
  }
  // [1, D, *grid] -> [1, N, D]
  return resized.flatten(2).transpose(1, 2);
}

}  // namespace imp
