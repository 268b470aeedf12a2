// The element-wise halves of one forward and one reverse step, for one batch row of H values.
//
// The time loops in leaky_rnn.cpp call these for every row, in batch order (every row runs every
// step) or through a row order (rows sorted by length, so that the rows still running are a
// prefix). Both loops therefore compute with the same arithmetic, value for value.
#pragma once

#include <algorithm>
#include <cstdint>

#include "activations.h"

namespace timescale_kernels {

// drive = u + product (product = h_{t-1} W^T, or f(v_{t-1}) W^T for "voltage"), stored to drive;
// then h_t from drive and h_prev. keep = 1 - alpha; alpha and keep (H,). rate: "voltage" only, where
// f(v_t) is written, the next step's matmul operand (nullptr for the other placements).
template <typename T, int64_t NL, int64_t PL>
inline void forward_row(const T* __restrict u, const T* __restrict product, T* __restrict drive,
                        const T* __restrict h_prev, T* __restrict h, const T* __restrict alpha,
                        const T* __restrict keep, int64_t hidden, T* __restrict rate = nullptr) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T dv = product[j] + u[j];
    drive[j] = dv;
    T y;
    if constexpr (PL == kOutside) {
      y = activate<NL>(keep[j] * h_prev[j] + alpha[j] * dv);
    } else if constexpr (PL == kVoltage) {
      y = flush(keep[j] * h_prev[j] + alpha[j] * dv);
      rate[j] = activate<NL>(y);
    } else {
      y = keep[j] * h_prev[j] + alpha[j] * activate<NL>(dv);
    }
    h[j] = flush(y);
  }
}

// backward_row's loop, with the optional operands' presence fixed at compile time: a test of a
// pointer inside the vectorised loop becomes a masked load, which on x86 costs a microcode assist
// per vector where the pointer is null (its address unmapped): 17 us a step at (B, H) = (64, 64),
// where the step's whole arithmetic takes about 9 us.
template <typename T, typename AccT, int64_t NL, int64_t PL, bool kGradPrev, bool kProduct, bool kRate>
inline void backward_row_loop(const T* __restrict drive, const T* __restrict h_prev, const T* __restrict h,
                              const T* __restrict grad_prev, T* __restrict dh, T* __restrict d_drive,
                              AccT* __restrict d_alpha_acc, const T* __restrict alpha, const T* __restrict keep,
                              int64_t hidden, const T* __restrict product, const T* __restrict grad_rate) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    T carried;
    if constexpr (PL == kVoltage) {
      T dv = dh[j];
      if constexpr (kProduct && kRate) {
        dv = dh[j] + derivative_at<NL>(h[j]) * (product[j] + grad_rate[j]);
      } else if constexpr (kProduct) {
        dv = dh[j] + derivative_at<NL>(h[j]) * product[j];
      } else if constexpr (kRate) {
        dv = dh[j] + derivative_at<NL>(h[j]) * grad_rate[j];
      }
      d_drive[j] = flush(alpha[j] * dv);
      d_alpha_acc[j] += static_cast<AccT>(dv * (drive[j] - h_prev[j]));
      carried = keep[j] * dv;
    } else if constexpr (PL == kOutside) {
      const T z = keep[j] * h_prev[j] + alpha[j] * drive[j];
      const T y = derivative_needs_output<NL> ? h[j] : T(0);
      const T dz = dh[j] * derivative<NL>(z, y);
      d_drive[j] = flush(alpha[j] * dz);
      d_alpha_acc[j] += static_cast<AccT>(dz * (drive[j] - h_prev[j]));
      carried = keep[j] * dz;
    } else {
      const T fd = activate<NL>(drive[j]);
      d_drive[j] = flush(alpha[j] * dh[j] * derivative<NL>(drive[j], fd));
      d_alpha_acc[j] += static_cast<AccT>(dh[j] * (fd - h_prev[j]));
      carried = keep[j] * dh[j];
    }
    if constexpr (kGradPrev) carried += grad_prev[j];
    dh[j] = flush(carried);
  }
}

// The element-wise half of one reverse step. On entry dh holds the adjoint of h_t; on exit it holds
// (1 - alpha) * (dz or dh) + grad_prev (grad_prev = the gradient reaching h_{t-1} from outside;
// nullptr at t = 0), to which the caller adds d_drive W. d_alpha_acc (H,) accumulates this row's
// d_alpha terms in AccT. "voltage": the adjoint of v_t is dh + f'(v_t) * product, product being the
// later step's d_drive W (its f'(v_t) factor is applied here, where v_t is read anyway; nullptr
// where no later step ran), and the caller writes d_drive W to product instead of adding it to dh.
// grad_rate ("voltage" with the rate as the output): r_t = f(v_t)'s gradient from outside, added to
// product before the f'(v_t) factor (nullptr where it reaches v itself, through grad_prev).
template <typename T, typename AccT, int64_t NL, int64_t PL>
inline void backward_row(const T* __restrict drive, const T* __restrict h_prev,
                         const T* __restrict h, const T* __restrict grad_prev, T* __restrict dh,
                         T* __restrict d_drive, AccT* __restrict d_alpha_acc,
                         const T* __restrict alpha, const T* __restrict keep, int64_t hidden,
                         const T* __restrict product = nullptr, const T* __restrict grad_rate = nullptr) {
  const bool p = PL == kVoltage && product != nullptr, r = PL == kVoltage && grad_rate != nullptr;
  const bool g = grad_prev != nullptr;
#define TK_ROW(G, P, R)                                                                                          \
  return backward_row_loop<T, AccT, NL, PL, G, P, R>(drive, h_prev, h, grad_prev, dh, d_drive, d_alpha_acc, alpha, \
                                                     keep, hidden, product, grad_rate)
  if (g && p && r) TK_ROW(true, true, true);
  if (g && p) TK_ROW(true, true, false);
  if (g && r) TK_ROW(true, false, true);
  if (g) TK_ROW(true, false, false);
  if (p && r) TK_ROW(false, true, true);
  if (p) TK_ROW(false, true, false);
  if (r) TK_ROW(false, false, true);
  TK_ROW(false, false, false);
#undef TK_ROW
}

// "voltage" after the last reverse step: dh0 = dh + f'(v_0) * product (product = the first step's
// d_drive W), in place.
template <typename T, int64_t NL>
inline void voltage_initial_row(const T* __restrict h0, const T* __restrict product,
                                T* __restrict dh, int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) dh[j] = flush(dh[j] + derivative_at<NL>(h0[j]) * product[j]);
}

// A row past its length in a reverse step: h_t = h_{t-1}, so the adjoint passes through unchanged
// (plus the gradient reaching h_{t-1} from outside) and its drive gets no gradient.
template <typename T>
inline void held_row_backward(const T* __restrict grad_prev, T* __restrict dh,
                              T* __restrict d_drive, int64_t hidden) {
  std::fill(d_drive, d_drive + hidden, T(0));
  if (grad_prev == nullptr) return;  // tested here, not in the vectorised loop (see backward_row_loop)
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) dh[j] = flush(dh[j] + grad_prev[j]);
}

}  // namespace timescale_kernels
