// The time loops of K networks (a lone network is K = 1) over blocks of batch rows, without lengths.
//
// Batch rows are independent in the forward and in the backward's state gradient, so one thread
// owns a block of one network's rows for the whole sequence: each step is one direct BLAS call on
// the block (blas.h) and the element-wise pass over the same rows, with no ATen dispatch, no
// parallel region and no barrier per step. The blocks are whole multiples of kRowsPerPartial rows,
// so that each d_alpha partial sum belongs to one block and the result does not depend on the
// thread count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
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

// u, h, drive (K, T, B, H), h0 (K, B, H), w_t (K, H, H) = each W^T, alpha and keep (K, H), all
// contiguous. drive is written only when save_drive (otherwise each block uses a scratch buffer).
template <typename T, int64_t NL, int64_t PL>
struct ForwardBlocksLoop {
  static void run(const T* u, const T* h0, const T* w_t, const T* alpha, const T* keep, T* h, T* drive,
                  bool save_drive, int64_t networks, int64_t steps, int64_t batch, int64_t hidden, TimeOrder time) {
    const int64_t plane = batch * hidden, sequence = steps * plane;
    for_each_block(networks, batch, [&](int64_t k, int64_t r0, int64_t r1) {
      const int64_t rows = r1 - r0;
      std::vector<T> product(rows * hidden), scratch(save_drive ? 0 : rows * hidden);
      const T* m = w_t + k * hidden * hidden;
      const T* a = alpha + k * hidden;
      const T* kp = keep + k * hidden;
      const int64_t base = k * sequence + r0 * hidden;
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t at_t = base + time(s) * plane;
        const T* h_prev = s == 0 ? h0 + (k * batch + r0) * hidden : h + base + time(s - 1) * plane;
        gemm_rows<T>(rows, hidden, hidden, h_prev, hidden, m, hidden, T(0), product.data(), hidden);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = i * hidden;
          T* d = save_drive ? drive + at_t + row : scratch.data() + row;
          forward_row<T, NL, PL>(u + at_t + row, product.data() + row, d, h_prev + row, h + at_t + row, a, kp,
                                 hidden);
        }
      }
    });
  }
};

// The reverse loop of the same blocks. grad_h (K, T, B, H) with any strides (gs: its four strides);
// h, drive, d_drive (K, T, B, H), h0 and dh (K, B, H), w (K, H, H) contiguous; dh enters as the
// adjoint of each row's last state and leaves as dh0. d_alpha_partial (K, P, H): network k's
// partial sums over its blocks of kRowsPerPartial rows, P = ceil(B / kRowsPerPartial).
template <typename T, int64_t NL, int64_t PL>
struct BackwardBlocksLoop {
  static void run(const T* grad_h, const int64_t* gs, const T* h, const T* h0, const T* drive, const T* w,
                  const T* alpha, const T* keep, T* d_drive, T* dh, double* d_alpha_partial, int64_t networks,
                  int64_t steps, int64_t batch, int64_t hidden, TimeOrder time) {
    const int64_t plane = batch * hidden, sequence = steps * plane;
    const int64_t partials = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
    const bool rows_in_place = hidden <= 1 || gs[3] == 1;
    for_each_block(networks, batch, [&](int64_t k, int64_t r0, int64_t r1) {
      const int64_t rows = r1 - r0;
      std::vector<T> grad_row(rows_in_place ? 0 : hidden);
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
          const T* gp = nullptr;
          if (t_prev >= 0) {
            gp = grad_h + k * gs[0] + t_prev * gs[1] + b * gs[2];
            if (!rows_in_place) {  // e.g. the stride-0 expansion autograd gives for output.sum()
              for (int64_t j = 0; j < hidden; ++j) grad_row[j] = gp[j * gs[3]];
              gp = grad_row.data();
            }
          }
          backward_row<T, double, NL, PL>(drive + at_t + row, h_prev + row, h + at_t + row, gp, dh_k + row,
                                          d_drive + at_t + row, partial + (b / kRowsPerPartial) * hidden, a, kp,
                                          hidden);
        }
        // dh_prev += d_drive_t W over the block's rows
        gemm_rows<T>(rows, hidden, hidden, d_drive + at_t, hidden, wk, hidden, T(1), dh_k, hidden);
      }
    });
  }
};

}  // namespace timescale_kernels
