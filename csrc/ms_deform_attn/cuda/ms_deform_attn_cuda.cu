// CUDA forward and backward of multi-scale deformable attention.
//
// Forward: one thread per output element (n, q, m, d), grid-stride, fp32 (fp64 for double) accumulation.
// Backward: one group of G = min(32, next_pow2(D)) lanes per (n, q, m). Lanes stride over D, scatter
// grad_value with atomicAdd (into an fp32 buffer for half/bfloat16, so low-precision atomics never
// accumulate rounding) and reduce the location/weight gradients over D with group-local shuffles. One code
// path serves every D (odd, < 32, > 1024); no batch-divisibility constraint, no im2col buffer.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace vfm::msda {
namespace {

constexpr int kThreads = 256;

struct Dims {
  int64_t batch, spatial, heads, channels, queries, levels, points;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
          sampling_locations.size(3), sampling_locations.size(4)};
}

// Levels whose [start, start + H * W) does not fit in S are skipped, so bad metadata cannot read out of bounds.
__device__ inline bool load_level(const int64_t* shapes, const int64_t* starts, int64_t level, int64_t spatial,
                                  int64_t& height, int64_t& width, int64_t& start) {
  height = shapes[2 * level];
  width = shapes[2 * level + 1];
  start = starts[level];
  return height > 0 && width > 0 && start >= 0 && start + height * width <= spatial;
}

int64_t grid_size(int64_t threads_needed) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t blocks = (threads_needed + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sms) * 32));  // grid-stride covers the rest
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                   const int64_t* __restrict__ starts, const at::opmath_type<scalar_t>* __restrict__ locations,
                   const at::opmath_type<scalar_t>* __restrict__ weights, scalar_t* __restrict__ output, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = d.batch * d.queries * d.heads * d.channels;
  const int64_t samples = d.levels * d.points;
  const int64_t row_stride = d.heads * d.channels;
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; index < total; index += stride) {
    const int64_t ch = index % d.channels;
    const int64_t row = index / d.channels;  // (n, q, m)
    const int64_t m = row % d.heads;
    const int64_t n = row / (d.queries * d.heads);
    const acc_t* loc = locations + row * samples * 2;
    const acc_t* attn = weights + row * samples;
    acc_t acc = 0;
    for (int64_t l = 0; l < d.levels; ++l) {
      int64_t height, width, start;
      if (!load_level(shapes, starts, l, d.spatial, height, width, start)) continue;
      const scalar_t* base = value + ((n * d.spatial + start) * d.heads + m) * d.channels + ch;
      for (int64_t p = 0; p < d.points; ++p) {
        const int64_t s = l * d.points + p;
        Corners<acc_t> c;
        if (!bilinear_corners<acc_t>(loc[2 * s], loc[2 * s + 1], height, width, c)) continue;
        acc_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.valid[k]) sample += c.weight[k] * static_cast<acc_t>(base[c.offset[k] * row_stride]);
        }
        acc += attn[s] * sample;
      }
    }
    output[index] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, int GROUP>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
                    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                    const at::opmath_type<scalar_t>* __restrict__ locations,
                    const at::opmath_type<scalar_t>* __restrict__ weights, at::opmath_type<scalar_t>* grad_value,
                    at::opmath_type<scalar_t>* __restrict__ grad_locations,
                    at::opmath_type<scalar_t>* __restrict__ grad_weights, Dims d) {
  using acc_t = at::opmath_type<scalar_t>;
  static_assert(GROUP >= 1 && GROUP <= 32 && (GROUP & (GROUP - 1)) == 0, "GROUP must be a power of two <= 32");
  const int lane = threadIdx.x % GROUP;
  const unsigned warp_lane = threadIdx.x % 32;
  // Shuffles involve only this group's lanes: groups of one warp may take different branches.
  const unsigned group_mask =
      GROUP == 32 ? 0xffffffffu : (((1u << (GROUP % 32)) - 1u) << (warp_lane / GROUP * GROUP));
  const int64_t rows = d.batch * d.queries * d.heads;
  const int64_t samples = d.levels * d.points;
  const int64_t row_stride = d.heads * d.channels;
  const int64_t groups_in_grid = int64_t(blockDim.x) * gridDim.x / GROUP;
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / GROUP; row < rows; row += groups_in_grid) {
    const int64_t m = row % d.heads;
    const int64_t n = row / (d.queries * d.heads);
    const scalar_t* grad = grad_output + row * d.channels;
    const acc_t* loc = locations + row * samples * 2;
    const acc_t* attn = weights + row * samples;
    for (int64_t l = 0; l < d.levels; ++l) {
      int64_t height, width, start;
      if (!load_level(shapes, starts, l, d.spatial, height, width, start)) continue;
      const int64_t base = ((n * d.spatial + start) * d.heads + m) * d.channels;
      for (int64_t p = 0; p < d.points; ++p) {
        const int64_t s = l * d.points + p;
        Corners<acc_t> c;
        if (!bilinear_corners<acc_t>(loc[2 * s], loc[2 * s + 1], height, width, c)) continue;
        const acc_t a = attn[s];
        acc_t dot[4] = {0, 0, 0, 0};
        for (int64_t ch = lane; ch < d.channels; ch += GROUP) {
          const acc_t g = static_cast<acc_t>(grad[ch]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (!c.valid[k]) continue;
            const int64_t index = base + c.offset[k] * row_stride + ch;
            dot[k] += g * static_cast<acc_t>(value[index]);
            atomicAdd(grad_value + index, a * c.weight[k] * g);
          }
        }
        // The three gradients are linear in the dots, so reduce them instead of the four dots.
        acc_t grad_attn = c.weight[0] * dot[0] + c.weight[1] * dot[1] + c.weight[2] * dot[2] + c.weight[3] * dot[3];
        acc_t grad_w_im, grad_h_im;
        bilinear_location_grad<acc_t>(c, dot, grad_w_im, grad_h_im);
#pragma unroll
        for (int offset = GROUP / 2; offset > 0; offset /= 2) {
          grad_attn += __shfl_down_sync(group_mask, grad_attn, offset, GROUP);
          grad_w_im += __shfl_down_sync(group_mask, grad_w_im, offset, GROUP);
          grad_h_im += __shfl_down_sync(group_mask, grad_h_im, offset, GROUP);
        }
        if (lane == 0) {
          grad_weights[row * samples + s] = grad_attn;
          grad_locations[(row * samples + s) * 2] = a * grad_w_im * static_cast<acc_t>(width);
          grad_locations[(row * samples + s) * 2 + 1] = a * grad_h_im * static_cast<acc_t>(height);
        }
      }
    }
  }
}

template <typename scalar_t, int GROUP>
void launch_backward(const at::Tensor& grad, const at::Tensor& value, const at::Tensor& shapes,
                     const at::Tensor& starts, const at::Tensor& loc, const at::Tensor& attn, at::Tensor& grad_value_acc,
                     at::Tensor& grad_loc, at::Tensor& grad_attn, const Dims& d, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = d.batch * d.queries * d.heads;
  backward_kernel<scalar_t, GROUP><<<grid_size(rows * GROUP), kThreads, 0, stream>>>(
      grad.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
      starts.const_data_ptr<int64_t>(), loc.const_data_ptr<acc_t>(), attn.const_data_ptr<acc_t>(),
      grad_value_acc.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<acc_t>(), grad_attn.mutable_data_ptr<acc_t>(),
      d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(value.is_cuda(), "forward_cuda needs CUDA tensors, got ", value.device());
  const c10::cuda::CUDAGuard guard(value.device());
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const Dims d = dims_of(value_c, loc_c);
  auto output = at::empty({d.batch, d.queries, d.heads * d.channels}, value_c.options());
  if (output.numel() == 0) return output;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value_c.scalar_type(), "vfm_ms_deform_attn_forward_cuda",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    forward_kernel<scalar_t><<<grid_size(output.numel()), kThreads, 0, stream>>>(
                                        value_c.const_data_ptr<scalar_t>(), shapes_c.const_data_ptr<int64_t>(),
                                        starts_c.const_data_ptr<int64_t>(), loc_c.const_data_ptr<acc_t>(),
                                        attn_c.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(), d);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_output, const at::Tensor& value,
                                                             const at::Tensor& spatial_shapes,
                                                             const at::Tensor& level_start_index,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(value.is_cuda(), "backward_cuda needs CUDA tensors, got ", value.device());
  const c10::cuda::CUDAGuard guard(value.device());
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const Dims d = dims_of(value_c, loc_c);
  TORCH_CHECK(grad_output.numel() == d.batch * d.queries * d.heads * d.channels &&
                  grad_output.scalar_type() == value.scalar_type() && grad_output.device() == value.device(),
              "grad_output must be (N, Lq, M * D) of dtype ", value.scalar_type(), " on ", value.device(), ", got ",
              grad_output.sizes(), " ", grad_output.scalar_type(), " on ", grad_output.device());
  const auto grad_c = grad_output.contiguous();
  auto grad_loc = at::zeros_like(loc_c);
  auto grad_attn = at::zeros_like(attn_c);
  // Low-precision values are scattered into an fp32 buffer; float/double scatter straight into grad_value.
  const auto acc_dtype = at::toOpMathType(value_c.scalar_type());
  auto grad_value_acc = at::zeros(value_c.sizes(), value_c.options().dtype(acc_dtype));
  if (grad_c.numel() == 0) return {grad_value_acc.to(value_c.scalar_type()), grad_loc, grad_attn};
  at::globalContext().alertNotDeterministic("vfm::ms_deform_attn_backward (CUDA: atomicAdd into grad_value)");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t channels = d.channels;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value_c.scalar_type(), "vfm_ms_deform_attn_backward_cuda", [&] {
        if (channels >= 32) {
          launch_backward<scalar_t, 32>(grad_c, value_c, shapes_c, starts_c, loc_c, attn_c, grad_value_acc, grad_loc,
                                        grad_attn, d, stream);
        } else if (channels > 8) {
          launch_backward<scalar_t, 16>(grad_c, value_c, shapes_c, starts_c, loc_c, attn_c, grad_value_acc, grad_loc,
                                        grad_attn, d, stream);
        } else if (channels > 4) {
          launch_backward<scalar_t, 8>(grad_c, value_c, shapes_c, starts_c, loc_c, attn_c, grad_value_acc, grad_loc,
                                       grad_attn, d, stream);
        } else if (channels > 2) {
          launch_backward<scalar_t, 4>(grad_c, value_c, shapes_c, starts_c, loc_c, attn_c, grad_value_acc, grad_loc,
                                       grad_attn, d, stream);
        } else if (channels == 2) {
          launch_backward<scalar_t, 2>(grad_c, value_c, shapes_c, starts_c, loc_c, attn_c, grad_value_acc, grad_loc,
                                       grad_attn, d, stream);
        } else {
          launch_backward<scalar_t, 1>(grad_c, value_c, shapes_c, starts_c, loc_c, attn_c, grad_value_acc, grad_loc,
                                       grad_attn, d, stream);
        }
      });
  auto grad_value = acc_dtype == value_c.scalar_type() ? grad_value_acc : grad_value_acc.to(value_c.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace vfm::msda
