// CPU forward and backward of multi-scale deformable attention.
//
// Forward parallelises over (batch, query, head): each task owns one D-vector of the output.
// Backward parallelises over (batch, head, query chunk): grad_value[n, :, m, :] is only written by the
// tasks of (n, m), so with one chunk per (n, m) no two threads touch the same element and the result is
// deterministic without atomics. When there are fewer (n, m) pairs than threads, queries are split into
// chunks that scatter into private fp32 buffers, summed in a fixed order afterwards.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace vfm::msda {
namespace {

struct Dims {
  int64_t batch, spatial, heads, channels, queries, levels, points;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), sampling_locations.size(1),
          sampling_locations.size(3), sampling_locations.size(4)};
}

// Level geometry, with levels that do not fit inside S disabled (height 0) so bad indices cannot read out of bounds.
struct Level {
  int64_t height, width, start;
};

std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t spatial) {
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start_index.accessor<int64_t, 1>();
  std::vector<Level> levels(spatial_shapes.size(0));
  for (size_t l = 0; l < levels.size(); ++l) {
    const int64_t h = shapes[l][0], w = shapes[l][1], s = starts[l];
    const bool fits = h > 0 && w > 0 && s >= 0 && s + h * w <= spatial;
    levels[l] = fits ? Level{h, w, s} : Level{0, 0, 0};
  }
  return levels;
}

// Smallest amount of work (samples x channels) worth a task of its own: tiny calls (gradcheck, small maps)
// then run inline instead of paying an OpenMP fork/join, which is slow when other processes hold the cores.
constexpr int64_t kMinTaskWork = 32768;

template <typename scalar_t>
void forward_kernel(const scalar_t* value, const std::vector<Level>& levels,
                    const at::opmath_type<scalar_t>* locations, const at::opmath_type<scalar_t>* weights,
                    scalar_t* output, const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tasks = d.batch * d.queries * d.heads;
  const int64_t samples = d.levels * d.points;
  const int64_t row_stride = d.heads * d.channels;  // distance between neighbouring pixels in value
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, samples * d.channels));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(d.channels);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / (d.queries * d.heads);
      const int64_t m = task % d.heads;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      acc_t* acc_ptr = acc.data();
      const acc_t* loc = locations + task * samples * 2;
      const acc_t* attn = weights + task * samples;
      for (int64_t l = 0; l < d.levels; ++l) {
        const Level& level = levels[l];
        if (level.height == 0) continue;
        const scalar_t* base = value + ((n * d.spatial + level.start) * d.heads + m) * d.channels;
        for (int64_t p = 0; p < d.points; ++p) {
          const int64_t s = l * d.points + p;
          Corners<acc_t> c;
          if (!bilinear_corners<acc_t>(loc[2 * s], loc[2 * s + 1], level.height, level.width, c)) continue;
          for (int k = 0; k < 4; ++k) {
            if (!c.valid[k]) continue;
            const acc_t w = attn[s] * c.weight[k];
            const scalar_t* v = base + c.offset[k] * row_stride;
#pragma omp simd
            for (int64_t ch = 0; ch < d.channels; ++ch) acc_ptr[ch] += w * static_cast<acc_t>(v[ch]);
          }
        }
      }
      scalar_t* out = output + task * d.channels;
      for (int64_t ch = 0; ch < d.channels; ++ch) out[ch] = static_cast<scalar_t>(acc_ptr[ch]);
    }
  });
}

// Number of query chunks per (batch, head) pair: 1 (no buffer) when there are enough pairs to keep every
// thread busy or too little work to share, else enough chunks for ~4 tasks per thread within a 256 MiB buffer.
int64_t query_chunks(const Dims& d, size_t acc_size) {
  const int64_t threads = at::get_num_threads();
  const int64_t pairs = d.batch * d.heads;
  const int64_t work = pairs * d.queries * d.levels * d.points * d.channels;
  if (threads <= 1 || pairs >= 4 * threads || d.queries <= 1 || work < kMinTaskWork * threads) return 1;
  const int64_t wanted = std::min<int64_t>(d.queries, (4 * threads + pairs - 1) / pairs);
  const int64_t slice_bytes = std::max<int64_t>(1, pairs * d.spatial * d.channels * static_cast<int64_t>(acc_size));
  const int64_t affordable = std::max<int64_t>(1, (int64_t(256) << 20) / slice_bytes);
  return std::max<int64_t>(1, std::min(wanted, affordable));
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad_output, const scalar_t* value, const std::vector<Level>& levels,
                     const at::opmath_type<scalar_t>* locations, const at::opmath_type<scalar_t>* weights,
                     at::opmath_type<scalar_t>* grad_value_acc, int64_t chunks, at::opmath_type<scalar_t>* grad_locations,
                     at::opmath_type<scalar_t>* grad_weights, const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t samples = d.levels * d.points;
  const int64_t row_stride = d.heads * d.channels;
  const int64_t value_numel = d.batch * d.spatial * row_stride;
  const int64_t chunk_len = (d.queries + chunks - 1) / chunks;
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, chunk_len * samples * d.channels));
  at::parallel_for(0, d.batch * d.heads * chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad(d.channels);
    acc_t* g = grad.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t n = task / chunks / d.heads;
      const int64_t m = task / chunks % d.heads;
      const int64_t q_end = std::min(d.queries, (chunk + 1) * chunk_len);
      acc_t* grad_value_chunk = grad_value_acc + chunk * value_numel;
      for (int64_t q = chunk * chunk_len; q < q_end; ++q) {
        const int64_t row = (n * d.queries + q) * d.heads + m;  // index of (n, q, m)
        const scalar_t* go = grad_output + row * d.channels;
        for (int64_t ch = 0; ch < d.channels; ++ch) g[ch] = static_cast<acc_t>(go[ch]);
        const acc_t* loc = locations + row * samples * 2;
        const acc_t* attn = weights + row * samples;
        acc_t* grad_loc = grad_locations + row * samples * 2;
        acc_t* grad_attn = grad_weights + row * samples;
        for (int64_t l = 0; l < d.levels; ++l) {
          const Level& level = levels[l];
          if (level.height == 0) continue;
          const int64_t base = ((n * d.spatial + level.start) * d.heads + m) * d.channels;
          for (int64_t p = 0; p < d.points; ++p) {
            const int64_t s = l * d.points + p;
            Corners<acc_t> c;
            if (!bilinear_corners<acc_t>(loc[2 * s], loc[2 * s + 1], level.height, level.width, c)) continue;
            acc_t dot[4] = {0, 0, 0, 0};
            for (int k = 0; k < 4; ++k) {
              if (!c.valid[k]) continue;
              const scalar_t* v = value + base + c.offset[k] * row_stride;
              acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
              for (int64_t ch = 0; ch < d.channels; ++ch) sum += g[ch] * static_cast<acc_t>(v[ch]);
              dot[k] = sum;
              const acc_t w = attn[s] * c.weight[k];
              acc_t* gv = grad_value_chunk + base + c.offset[k] * row_stride;
#pragma omp simd
              for (int64_t ch = 0; ch < d.channels; ++ch) gv[ch] += w * g[ch];
            }
            grad_attn[s] = c.weight[0] * dot[0] + c.weight[1] * dot[1] + c.weight[2] * dot[2] + c.weight[3] * dot[3];
            acc_t grad_w_im, grad_h_im;
            bilinear_location_grad<acc_t>(c, dot, grad_w_im, grad_h_im);
            grad_loc[2 * s] = attn[s] * grad_w_im * static_cast<acc_t>(level.width);
            grad_loc[2 * s + 1] = attn[s] * grad_h_im * static_cast<acc_t>(level.height);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                       const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(value.device().is_cpu(), "forward_cpu needs CPU tensors, got ", value.device());
  const auto value_c = value.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const Dims d = dims_of(value_c, loc_c);
  const auto levels = read_levels(spatial_shapes.contiguous(), level_start_index.contiguous(), d.spatial);
  auto output = at::empty({d.batch, d.queries, d.heads * d.channels}, value_c.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value_c.scalar_type(), "vfm_ms_deform_attn_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t>(value_c.const_data_ptr<scalar_t>(), levels, loc_c.const_data_ptr<acc_t>(),
                             attn_c.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(), d);
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_output, const at::Tensor& value,
                                                            const at::Tensor& spatial_shapes,
                                                            const at::Tensor& level_start_index,
                                                            const at::Tensor& sampling_locations,
                                                            const at::Tensor& attention_weights) {
  check_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(value.device().is_cpu(), "backward_cpu needs CPU tensors, got ", value.device());
  const auto value_c = value.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const Dims d = dims_of(value_c, loc_c);
  TORCH_CHECK(grad_output.numel() == d.batch * d.queries * d.heads * d.channels &&
                  grad_output.scalar_type() == value.scalar_type(),
              "grad_output must be (N, Lq, M * D) of dtype ", value.scalar_type(), ", got ", grad_output.sizes(), " ",
              grad_output.scalar_type());
  const auto grad_c = grad_output.contiguous();
  const auto levels = read_levels(spatial_shapes.contiguous(), level_start_index.contiguous(), d.spatial);
  auto grad_value = at::zeros_like(value_c);
  auto grad_locations = at::zeros_like(loc_c);
  auto grad_weights = at::zeros_like(attn_c);
  if (grad_c.numel() == 0) return {grad_value, grad_locations, grad_weights};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value_c.scalar_type(), "vfm_ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t chunks = query_chunks(d, sizeof(acc_t));
    // Scatter straight into grad_value when it already has the accumulation dtype and one chunk suffices.
    const bool direct = chunks == 1 && std::is_same_v<scalar_t, acc_t>;
    at::Tensor buffer;
    acc_t* target;
    if (direct) {
      target = reinterpret_cast<acc_t*>(grad_value.mutable_data_ptr<scalar_t>());
    } else {
      buffer = at::zeros({chunks, value_c.numel()}, loc_c.options());
      target = buffer.mutable_data_ptr<acc_t>();
    }
    backward_kernel<scalar_t>(grad_c.const_data_ptr<scalar_t>(), value_c.const_data_ptr<scalar_t>(), levels,
                              loc_c.const_data_ptr<acc_t>(), attn_c.const_data_ptr<acc_t>(), target, chunks,
                              grad_locations.mutable_data_ptr<acc_t>(), grad_weights.mutable_data_ptr<acc_t>(), d);
    if (!direct) {
      const int64_t numel = value_c.numel();
      scalar_t* out = grad_value.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, numel, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          acc_t sum = 0;
          for (int64_t c = 0; c < chunks; ++c) sum += target[c * numel + i];  // fixed order: deterministic
          out[i] = static_cast<scalar_t>(sum);
        }
      });
    }
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace vfm::msda
