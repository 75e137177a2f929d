// Learned position embeddings on a 1D, 2D or 3D patch grid.
#pragma once

#include <ATen/ATen.h>

namespace imp {

// Resizes a position table of shape [1, D, *grid] (grid of 1 to 3 dims) to
// `grid` by linear, bilinear or trilinear interpolation, and returns it as
// [1, prod(grid), D], ready to add to the token sequence. When the grid
// already matches, no interpolation happens (the table is only reshaped).
at::Tensor resize_positions(const at::Tensor& table, at::IntArrayRef grid);

}  // namespace imp
