// Bilinear sampling geometry shared by the CPU and CUDA kernels, so both follow one convention:
// location (x, y) in [0, 1] maps to pixel (x * W - 0.5, y * H - 0.5), exactly what
// grid_sample(align_corners=False, padding_mode="zeros") does with grid = 2 * loc - 1.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace vfm::msda {

// The four corners of one bilinear sample; corners outside the map carry weight 0.
template <typename acc_t>
struct Corners {
  int64_t offset[4];  // spatial index (row * W + col) inside the level, valid only where weight != 0
  acc_t weight[4];    // (top-left, top-right, bottom-left, bottom-right)
  acc_t frac_h, frac_w;  // fractional parts, needed for the location gradient
  bool valid[4];
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t floor_value(acc_t v) {
#ifdef __CUDA_ARCH__
  return floor(v);
#else
  return std::floor(v);
#endif
}

// Returns false when the sample lies entirely outside the map (all four corners are zero padding).
// NaN locations fail every comparison and are treated as outside.
template <typename acc_t>
C10_HOST_DEVICE inline bool bilinear_corners(acc_t x, acc_t y, int64_t height, int64_t width, Corners<acc_t>& c) {
  const acc_t h_im = y * static_cast<acc_t>(height) - acc_t(0.5);
  const acc_t w_im = x * static_cast<acc_t>(width) - acc_t(0.5);
  if (!(h_im > acc_t(-1) && w_im > acc_t(-1) && h_im < static_cast<acc_t>(height) &&
        w_im < static_cast<acc_t>(width))) {
    return false;
  }
  // The range check above keeps the floor in [-1, size - 1], so the int conversion cannot overflow.
  const int64_t h_floor = static_cast<int64_t>(floor_value(h_im));
  const int64_t w_floor = static_cast<int64_t>(floor_value(w_im));
  const acc_t lh = h_im - static_cast<acc_t>(h_floor);
  const acc_t lw = w_im - static_cast<acc_t>(w_floor);
  const acc_t hh = acc_t(1) - lh;
  const acc_t hw = acc_t(1) - lw;
  c.frac_h = lh;
  c.frac_w = lw;
  const bool top = h_floor >= 0;
  const bool bottom = h_floor + 1 <= height - 1;
  const bool left = w_floor >= 0;
  const bool right = w_floor + 1 <= width - 1;
  c.valid[0] = top && left;
  c.valid[1] = top && right;
  c.valid[2] = bottom && left;
  c.valid[3] = bottom && right;
  c.offset[0] = h_floor * width + w_floor;
  c.offset[1] = c.offset[0] + 1;
  c.offset[2] = c.offset[0] + width;
  c.offset[3] = c.offset[2] + 1;
  c.weight[0] = c.valid[0] ? hh * hw : acc_t(0);
  c.weight[1] = c.valid[1] ? hh * lw : acc_t(0);
  c.weight[2] = c.valid[2] ? lh * hw : acc_t(0);
  c.weight[3] = c.valid[3] ? lh * lw : acc_t(0);
  return true;
}

// d(sample)/d(w_im) and d(sample)/d(h_im) from the per-corner dot products <grad, value_corner>.
// Invalid corners have dot == 0, which is the zero-padding value's contribution.
template <typename acc_t>
C10_HOST_DEVICE inline void bilinear_location_grad(const Corners<acc_t>& c, const acc_t dot[4], acc_t& grad_w_im,
                                                   acc_t& grad_h_im) {
  const acc_t lh = c.frac_h, lw = c.frac_w;
  const acc_t hh = acc_t(1) - lh, hw = acc_t(1) - lw;
  grad_w_im = hh * (dot[1] - dot[0]) + lh * (dot[3] - dot[2]);
  grad_h_im = hw * (dot[2] - dot[0]) + lw * (dot[3] - dot[1]);
}

}  // namespace vfm::msda
