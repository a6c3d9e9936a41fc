// Declarations of the multi-scale deformable attention kernels and their shared argument checks.
//
// Tensors (contiguous after the checks below):
//   value               (N, S, M, D)        scalar_t
//   spatial_shapes      (L, 2) int64         rows (H, W)
//   level_start_index   (L,) int64
//   sampling_locations  (N, Lq, M, L, P, 2)  opmath_t = float for float/half/bfloat16 value, double for double
//   attention_weights   (N, Lq, M, L, P)     opmath_t
//   output              (N, Lq, M * D)       scalar_t
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <tuple>

namespace vfm::msda {

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& spatial_shapes,
                                                            const at::Tensor& level_start_index,
                                                            const at::Tensor& sampling_locations,
                                                            const at::Tensor& attention_weights);

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights);

// Defensive checks for direct callers; the Python API gives the user-facing ValueError messages.
// Values of spatial_shapes/level_start_index are not read here (they may live on the GPU); the kernels
// skip any level whose [start, start + H * W) range does not fit in S, so bad values cannot read out of bounds.
inline void check_args(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, "spatial_shapes must be (L, 2), got ",
              spatial_shapes.sizes());
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == levels,
              "level_start_index must be (L,) with L = ", levels, ", got ", level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == value.size(0) &&
                  sampling_locations.size(2) == value.size(2) && sampling_locations.size(3) == levels &&
                  sampling_locations.size(5) == 2,
              "sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes().equals(sampling_locations.sizes().slice(0, 5)),
              "attention_weights must be (N, Lq, M, L, P), got ", attention_weights.sizes());
  const auto opmath = at::toOpMathType(value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == opmath && attention_weights.scalar_type() == opmath,
              "sampling_locations and attention_weights must be ", opmath, " for value of dtype ",
              value.scalar_type());
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device() == value.device(), "all tensors must be on ", value.device(), ", got ", t->device());
  }
}

}  // namespace vfm::msda
