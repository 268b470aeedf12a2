// The time loops of K networks (a lone network is K = 1) over blocks of batch rows, with or without
// per-row lengths (the forward time order only, with lengths).
//
// Batch rows are independent in the forward and in the backward's state gradient, so one thread
// owns a block of one network's rows for the whole sequence: each step is one direct BLAS call on
// the block (blas.h) and the element-wise pass over the same rows, with no ATen dispatch, no
// parallel region and no barrier per step. The blocks are whole multiples of kRowsPerPartial rows,
// so that each d_alpha partial sum belongs to one block and the result does not depend on the
// thread count.
//
// With lengths, a row past its length is held (its state copied forward, its adjoint passed back).
// Each step's GEMM covers the span of the block's rows from the first to the last still running
// (BlockLengths::span): a row's GEMM output depends on that row alone, so held rows inside the span
// cost arithmetic but change nothing, and rows keep batch order (no gather, no sort). Past the
// block's longest row there is no GEMM at all.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "blas.h"
#include "loops.h"
#include "pointwise.h"

namespace timescale_kernels {

// The work items: network k's rows [row0, row1). Whole networks when there are at least as many
// networks as threads (the largest GEMMs), else each network split into about threads / K blocks.
struct RowBlocks {
  int64_t batch, per_network, rows_per_block;
  RowBlocks(int64_t networks, int64_t batch_, int64_t threads) : batch(batch_) {
    const int64_t partials = std::max<int64_t>(1, (batch + kRowsPerPartial - 1) / kRowsPerPartial);
    const int64_t wanted = std::max<int64_t>(1, (threads + networks - 1) / networks);
    per_network = std::min(partials, wanted);
    rows_per_block = ((partials + per_network - 1) / per_network) * kRowsPerPartial;
    per_network = std::max<int64_t>(1, (batch + rows_per_block - 1) / rows_per_block);
  }
  int64_t count(int64_t networks) const { return networks * per_network; }
  int64_t network(int64_t item) const { return item / per_network; }
  int64_t row0(int64_t item) const { return std::min(batch, (item % per_network) * rows_per_block); }
  int64_t row1(int64_t item) const { return std::min(batch, row0(item) + rows_per_block); }
};

// Runs body(k, row0, row1) for every block, in one parallel region.
template <typename F>
void for_each_block(int64_t networks, int64_t batch, const F& body) {
  const RowBlocks blocks(networks, batch, at::get_num_threads());
  at::parallel_for(0, blocks.count(networks), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      body(blocks.network(item), blocks.row0(item), blocks.row1(item));
    }
  });
}

// The lengths of one block's rows (nullptr: every row runs every step).
struct BlockLengths {
  const int64_t* length;
  int64_t rows;
  bool runs(int64_t i, int64_t s) const { return length == nullptr || length[i] > s; }
  // The rows of step s's GEMM: those from the first to the last running, widened to whole groups of
  // kRowsPerPartial rows (blocks start on such a group), empty when none runs. MKL's result for a
  // row depends on where the row lies in the GEMM's tiles (fp64: 4-row tiles; fp32: below 4 rows a
  // separate kernel), so a row's bits would otherwise depend on its neighbours' lengths and on how
  // the threads split the batch; whole groups keep them equal to a lone network's.
  std::pair<int64_t, int64_t> span(int64_t s) const {
    if (length == nullptr) return {0, rows};
    int64_t lo = 0, hi = rows;
    while (lo < rows && length[lo] <= s) ++lo;
    while (hi > lo && length[hi - 1] <= s) --hi;
    if (lo == hi) return {0, 0};
    return {lo / kRowsPerPartial * kRowsPerPartial,
            std::min(rows, (hi + kRowsPerPartial - 1) / kRowsPerPartial * kRowsPerPartial)};
  }
};

// u, h, drive (K, T, B, H), h0 (K, B, H), w_t (K, H, H) = each W^T, alpha and keep (K, H), all
// contiguous; lengths (K, B) contiguous, or nullptr where every row runs every step (with lengths,
// forward time order only). drive is written only when save_drive (otherwise each block uses a
// scratch buffer), and not where a row is held. rate (K, T, B, H) or nullptr: "voltage" only, where
// the output r_t = f(v_t) is written (zero where a row is held), each step's matmul operand read
// back from it (f(v_0) at the first step).
template <typename T, int64_t NL, int64_t PL>
struct ForwardBlocksLoop {
  static void run(const T* u, const T* h0, const T* w_t, const T* alpha, const T* keep, const int64_t* lengths,
                  T* h, T* drive, bool save_drive, int64_t networks, int64_t steps, int64_t batch, int64_t hidden,
                  TimeOrder time, T* rate_out = nullptr) {
    const int64_t plane = batch * hidden, sequence = steps * plane;
    const bool out = PL == kVoltage && rate_out != nullptr;
    for_each_block(networks, batch, [&](int64_t k, int64_t r0, int64_t r1) {
      const int64_t rows = r1 - r0;
      const BlockLengths lens{lengths == nullptr ? nullptr : lengths + k * batch + r0, rows};
      std::vector<T> product(rows * hidden), scratch(save_drive ? 0 : rows * hidden);
      // "voltage": the matmul operand is the rate f(v_{t-1}) of the block's rows, rewritten by each
      // step's element-wise pass after the GEMM has read it (a held row keeps its last).
      std::vector<T> rate(PL == kVoltage ? rows * hidden : 0);
      const T* m = w_t + k * hidden * hidden;
      const T* a = alpha + k * hidden;
      const T* kp = keep + k * hidden;
      const int64_t base = k * sequence + r0 * hidden;
      if constexpr (PL == kVoltage) {
        const T* v0 = h0 + (k * batch + r0) * hidden;
        for (int64_t j = 0; j < rows * hidden; ++j) rate[j] = activate<NL>(v0[j]);
      }
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t at_t = base + time(s) * plane;
        const T* h_prev = s == 0 ? h0 + (k * batch + r0) * hidden : h + base + time(s - 1) * plane;
        const auto [lo, hi] = lens.span(s);
        const T* operand = PL != kVoltage ? h_prev : !out || s == 0 ? rate.data() : rate_out + base + time(s - 1) * plane;
        gemm_rows<T>(hi - lo, hidden, hidden, operand + lo * hidden, hidden, m, hidden, T(0),
                     product.data() + lo * hidden, hidden);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = i * hidden;
          if (!lens.runs(i, s)) {  // held (never at s = 0: lengths are at least 1)
            std::memcpy(h + at_t + row, h_prev + row, hidden * sizeof(T));
            if (out) std::memset(rate_out + at_t + row, 0, hidden * sizeof(T));
            continue;
          }
          T* d = save_drive ? drive + at_t + row : scratch.data() + row;
          T* r = PL != kVoltage ? nullptr : out ? rate_out + at_t + row : rate.data() + row;
          forward_row<T, NL, PL>(u + at_t + row, product.data() + row, d, h_prev + row, h + at_t + row, a, kp,
                                 hidden, r);
        }
      }
    });
  }
};

// The rows of grad_h (K, T, B, H) with any strides (gs: its four strides) one at a time, each
// contiguous: in place where the columns are, else copied into a row buffer (which a row at the
// same address as the last one read reuses: output.sum()'s gradient, a stride-0 expansion of one
// number, is filled once).
template <typename T>
struct GradRowReader {
  const T* grad_h;
  const int64_t* gs;
  int64_t hidden;
  std::vector<T> buffer;
  const T* last = nullptr;
  GradRowReader(const T* g, const int64_t* strides, int64_t h)
      : grad_h(g), gs(strides), hidden(h), buffer(h <= 1 || strides[3] == 1 ? 0 : h) {}
  const T* row(int64_t k, int64_t t, int64_t b) {
    const T* gp = grad_h + k * gs[0] + t * gs[1] + b * gs[2];
    if (buffer.empty()) return gp;
    if (gp != last) {
      if (gs[3] == 0) {
        std::fill(buffer.begin(), buffer.end(), *gp);
      } else {
        for (int64_t j = 0; j < hidden; ++j) buffer[j] = gp[j * gs[3]];
      }
      last = gp;
    }
    return buffer.data();
  }
};

// The reverse loop of the same blocks. grad_h (K, T, B, H) with any strides (gs: its four strides);
// h, drive, d_drive (K, T, B, H), h0 and dh (K, B, H), w (K, H, H) contiguous; lengths as in the
// forward. dh enters as the adjoint of each row's last state (grad_h[T - 1] only for the rows that
// run step T - 1) and leaves as dh0. A held row passes its adjoint through, gets d_drive = 0, and
// takes grad_h at its last valid step, lengths[b] - 1. d_alpha_partial (K, P, H): network k's
// partial sums over its blocks of kRowsPerPartial rows, P = ceil(B / kRowsPerPartial).
// rates ("voltage" only): grad_h is the gradient of the output r_t = f(v_t), not of v_t; each
// running step adds f'(v_t) grad_h[t] to the adjoint of v_t, and dh enters as the gradient of
// each row's last v alone (nothing of grad_h: the caller leaves it out).
template <typename T, int64_t NL, int64_t PL>
struct BackwardBlocksLoop {
  static void run(const T* grad_h, const int64_t* gs, const T* h, const T* h0, const T* drive, const T* w,
                  const T* alpha, const T* keep, const int64_t* lengths, T* d_drive, T* dh, double* d_alpha_partial,
                  int64_t networks, int64_t steps, int64_t batch, int64_t hidden, TimeOrder time,
                  bool rates = false) {
    const int64_t plane = batch * hidden, sequence = steps * plane;
    const bool of_rates = PL == kVoltage && rates;
    const int64_t partials = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
    for_each_block(networks, batch, [&](int64_t k, int64_t r0, int64_t r1) {
      const int64_t rows = r1 - r0;
      const BlockLengths lens{lengths == nullptr ? nullptr : lengths + k * batch + r0, rows};
      GradRowReader<T> grad(grad_h, gs, hidden);
      // "voltage": d_drive_t W lands here; the next (earlier) step's pass applies its f'(v_{t-1}) factor.
      std::vector<T> product(PL == kVoltage ? rows * hidden : 0);
      const T* wk = w + k * hidden * hidden;
      const T* a = alpha + k * hidden;
      const T* kp = keep + k * hidden;
      const int64_t base = k * sequence + r0 * hidden;
      T* dh_k = dh + (k * batch + r0) * hidden;
      double* partial = d_alpha_partial + k * partials * hidden;
      for (int64_t s = steps - 1; s >= 0; --s) {
        const int64_t t = time(s), t_prev = s == 0 ? -1 : time(s - 1);
        const int64_t at_t = base + t * plane;
        const T* h_prev = s == 0 ? h0 + (k * batch + r0) * hidden : h + base + t_prev * plane;
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = i * hidden, b = r0 + i;
          // The gradient reaching h_{t-1} from outside, where the row ran the step before (with
          // rates, that reaching r_t, where the row runs this step).
          const T* gp = of_rates ? (lens.runs(i, s) ? grad.row(k, t, b) : nullptr)
                                 : (t_prev >= 0 && lens.runs(i, s - 1) ? grad.row(k, t_prev, b) : nullptr);
          if (of_rates && !lens.runs(i, s)) {
            held_row_backward<T>(nullptr, dh_k + row, d_drive + at_t + row, hidden);
            continue;
          }
          if (!lens.runs(i, s)) {
            held_row_backward<T>(gp, dh_k + row, d_drive + at_t + row, hidden);
            continue;
          }
          // "voltage": product holds the later step's d_drive W where the row ran that step.
          const bool later = PL == kVoltage && s + 1 < steps && lens.runs(i, s + 1);
          backward_row<T, double, NL, PL>(drive + at_t + row, h_prev + row, h + at_t + row, of_rates ? nullptr : gp,
                                          dh_k + row, d_drive + at_t + row, partial + (b / kRowsPerPartial) * hidden,
                                          a, kp, hidden, later ? product.data() + row : nullptr,
                                          of_rates ? gp : nullptr);
        }
        const auto [lo, hi] = lens.span(s);  // held rows inside it have d_drive = 0: they gain nothing
        if constexpr (PL == kVoltage) {  // product = d_drive_t W over the running rows
          gemm_rows<T>(hi - lo, hidden, hidden, d_drive + at_t + lo * hidden, hidden, wk, hidden, T(0),
                       product.data() + lo * hidden, hidden);
        } else {  // dh_prev += d_drive_t W over the running rows
          gemm_rows<T>(hi - lo, hidden, hidden, d_drive + at_t + lo * hidden, hidden, wk, hidden, T(1),
                       dh_k + lo * hidden, hidden);
        }
      }
      if constexpr (PL == kVoltage) {  // dh0 = dh + f'(v_0) * (the first step's d_drive W): every row runs it
        const T* v0 = h0 + (k * batch + r0) * hidden;
        for (int64_t i = 0; i < rows; ++i) {
          voltage_initial_row<T, NL>(v0 + i * hidden, product.data() + i * hidden, dh_k + i * hidden, hidden);
        }
      }
    });
  }
};

}  // namespace timescale_kernels
