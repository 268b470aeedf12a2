// The time loops of the CPU core over rows of different lengths in reverse time order (see
// leaky_rnn.cpp; otherwise the loops of row_blocks.h run), the floating-point mode guard and the
// dispatch. Each loop is a
// Kernel<T, NL, PL> with a static run(...), instantiated per dtype, nonlinearity and placement by
// dispatch_activation.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define TK_HAS_MXCSR 1
#endif

#include "activations.h"
#include "pointwise.h"

namespace timescale_kernels {

// Elements per parallel chunk below which one thread is faster than waking the others.
constexpr int64_t kMinElementsPerTask = 16384;

// Sets flush-to-zero and denormals-are-zero in every intra-op thread (where MKL's GEMMs run too)
// for the lifetime of the object and restores each thread's previous mode afterwards. Together
// with flush() in the element-wise passes this keeps decaying states and gradients fast.
class DenormalsAreZero {
 public:
  DenormalsAreZero() {
#ifdef TK_HAS_MXCSR
    saved_.assign(at::get_num_threads() + 1, 0);
    on_each_thread([this](int64_t slot) {
      saved_[slot] = _mm_getcsr();
      _mm_setcsr(saved_[slot] | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
    });
#endif
  }
  ~DenormalsAreZero() {
#ifdef TK_HAS_MXCSR
    try {
      on_each_thread([this](int64_t slot) { _mm_setcsr(saved_[slot]); });
    } catch (...) {
    }
#endif
  }
  DenormalsAreZero(const DenormalsAreZero&) = delete;
  DenormalsAreZero& operator=(const DenormalsAreZero&) = delete;

 private:
  template <typename F>
  void on_each_thread(const F& f) {
    const int64_t n = at::get_num_threads();
    // A range of n with grain 1 gives each of the n team threads exactly one index.
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) f(std::min<int64_t>(at::get_thread_num(), n));
    });
  }
  std::vector<unsigned int> saved_;
};

// Rows per partial sum of d_alpha in the backward pass. Fixed, not derived from the thread count,
// so that the order of summation, and so the result, is the same on any machine.
constexpr int64_t kRowsPerPartial = 16;

// Rows per parallel task: enough elements that waking another thread pays.
inline int64_t row_grain(int64_t hidden, int64_t rows_per_item = 1) {
  return std::max<int64_t>(1, kMinElementsPerTask / (rows_per_item * hidden));
}

// The rows of a batch ordered by length, longest first (ties in batch order), and how many of them
// still run at each step: at step t the running rows are exactly the first running[t] of the order,
// so that one GEMM over a prefix of a row-ordered state covers them.
struct RowOrder {
  at::Tensor index;              // (B,) int64: position in the order -> batch row
  std::vector<int64_t> running;  // (T,): rows with lengths > t
  std::vector<int64_t> length;   // (B,): the length of the row at each position of the order
  bool reverse = false;          // each row runs its own steps in reverse time order

  // The time index that step s reads and writes for the row at position i (running at s): s, or
  // length - 1 - s in reverse (the row's first lengths[b] steps reversed; held steps stay put).
  int64_t time(int64_t i, int64_t s) const { return reverse ? length[i] - 1 - s : s; }
};

// One network's lengths (B,), checked (a CPU int64 tensor of values in 1..steps), contiguous.
inline at::Tensor checked_lengths(const at::Tensor& lengths, int64_t steps, int64_t batch) {
  TORCH_CHECK(lengths.device().is_cpu() && lengths.scalar_type() == at::kLong,
              "lengths: expected a CPU int64 tensor; got ", lengths.device(), " ",
              lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == batch, "lengths: expected (", batch,
              ",); got ", lengths.sizes());
  const at::Tensor lengths_c = lengths.contiguous();
  const int64_t* len = lengths_c.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(len[b] >= 1 && len[b] <= steps, "lengths: expected values in 1..", steps,
                "; got ", len[b], " at row ", b);
  }
  return lengths_c;
}

inline RowOrder order_by_length(const at::Tensor& lengths, int64_t steps, int64_t batch,
                                bool reverse = false) {
  const at::Tensor lengths_c = checked_lengths(lengths, steps, batch);
  const int64_t* len = lengths_c.const_data_ptr<int64_t>();
  RowOrder order{at::empty({batch}, lengths.options()), std::vector<int64_t>(steps, 0),
                 std::vector<int64_t>(batch), reverse};
  int64_t* index = order.index.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) index[b] = b;
  std::stable_sort(index, index + batch, [len](int64_t a, int64_t b) { return len[a] > len[b]; });
  for (int64_t i = 0; i < batch; ++i) {
    order.length[i] = len[index[i]];
    for (int64_t t = 0; t < order.length[i]; ++t) ++order.running[t];
  }
  return order;
}

// f(x) for a (B, H) state x: the "voltage" placement's first matmul operand f(v_0).
template <typename T, int64_t NL>
at::Tensor rate_of(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const at::Tensor xc = x.contiguous();
  const T* in = xc.const_data_ptr<T>();
  T* o = out.mutable_data_ptr<T>();
  at::parallel_for(0, xc.numel(), kMinElementsPerTask, [&](int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) o[i] = activate<NL>(in[i]);
  });
  return out;
}

// The rows of grad_h[t - 1] (see incoming_gradient): row b starts at data + b * row_stride and is
// contiguous; data is nullptr at t = 0 (no gradient reaches h_0 from outside).
template <typename T>
struct GradRows {
  const T* data;
  int64_t row_stride;
  const T* row(int64_t b) const { return data == nullptr ? nullptr : data + b * row_stride; }
};

// Runs Kernel<T, NL, PL>::run(args...) for the runtime nonlinearity and placement codes.
template <template <typename, int64_t, int64_t> class Kernel, typename T, typename... Args>
void dispatch_activation(int64_t nonlinearity, int64_t placement, Args&&... args) {
  TORCH_CHECK(placement == kOutside || placement == kInside || placement == kVoltage,
              "placement: expected 0 (outside), 1 (inside) or 2 (voltage); got ", placement);
  switch (nonlinearity) {
#define TK_CASE(CODE, NAME)                                                    \
  case CODE:                                                                   \
    if (placement == kOutside) return Kernel<T, CODE, kOutside>::run(args...); \
    if (placement == kInside) return Kernel<T, CODE, kInside>::run(args...);   \
    return Kernel<T, CODE, kVoltage>::run(args...);
    TK_NONLINEARITIES(TK_CASE)
#undef TK_CASE
    default:
      TORCH_CHECK(false, "nonlinearity: expected a code in 0..", kNumNonlinearities - 1, "; got ",
                  nonlinearity);
  }
}

// Step s of the recurrence reads and writes time index s, or T - 1 - s when it runs the sequence in
// reverse time order (the reverse direction of a bidirectional layer, without flipping any tensor).
struct TimeOrder {
  int64_t steps;
  bool reverse;
  int64_t operator()(int64_t s) const { return reverse ? steps - 1 - s : s; }
};

// The forward time loop over rows of different lengths. The state lives in row order (longest
// first) in a (B, H) buffer, so that step s's GEMM covers only its first running[s] rows; each
// running row is computed into h[t, b] (batch order; t = order.time(i, s)) and copied back to the
// state, each finished row copies its held state to h[s, b].
template <typename T, int64_t NL, int64_t PL>
struct ForwardByLengthLoop {
  static void run(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                  const at::Tensor& alpha, const at::Tensor& keep, at::Tensor& h,
                  at::Tensor& drive, bool save_drive, const RowOrder& order) {
    const int64_t steps = u.size(0), batch = h0.size(0), hidden = h0.size(1);
    const int64_t plane = batch * hidden;
    const size_t row_bytes = hidden * sizeof(T);
    // W^T contiguous: MKL's small-matrix path is up to 1.8x slower for a transposed operand (H = 64).
    const at::Tensor w_t = w.t().contiguous();
    at::Tensor state = h0.index_select(0, order.index);
    at::Tensor product = at::empty({batch, hidden}, u.options());
    // "voltage": the rates f(v) in row order, the matmul operand (held rows keep theirs).
    at::Tensor rate = PL == kVoltage ? rate_of<T, NL>(state) : at::Tensor();
    T* rate_p = PL == kVoltage ? rate.mutable_data_ptr<T>() : nullptr;
    const int64_t* index = order.index.const_data_ptr<int64_t>();
    T* s = state.mutable_data_ptr<T>();
    const T* p = product.const_data_ptr<T>();
    const T* u_p = u.const_data_ptr<T>();
    T* h_p = h.mutable_data_ptr<T>();
    T* drive_p = drive.mutable_data_ptr<T>();
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t running = order.running[step];
      if (running > 0) {  // product = h_prev W^T over the running rows
        at::Tensor product_running = product.narrow(0, 0, running);
        at::mm_out(product_running, (PL == kVoltage ? rate : state).narrow(0, 0, running), w_t);
      }
      at::parallel_for(0, batch, row_grain(hidden), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t row = index[i] * hidden, pos = i * hidden;
          if (i < running) {
            const int64_t at = order.time(i, step) * plane + row;
            T* h_row = h_p + at;
            forward_row<T, NL, PL>(u_p + at, p + pos, drive_p + (save_drive ? at : row), s + pos,
                                   h_row, alpha.const_data_ptr<T>(), keep.const_data_ptr<T>(),
                                   hidden, rate_p == nullptr ? nullptr : rate_p + pos);
            std::memcpy(s + pos, h_row, row_bytes);
          } else {
            std::memcpy(h_p + step * plane + row, s + pos, row_bytes);
          }
        }
      });
    }
  }
};

// True when every row grad_h[t, b, :] is contiguous, so that the loops read grad_h in place: any
// strides over t and b, e.g. one direction's slice of a concatenated output's gradient.
inline bool rows_readable_in_place(const at::Tensor& grad_h) {
  return grad_h.size(2) <= 1 || grad_h.stride(2) == 1;
}

// A (B, H) scratch block for incoming_gradient when grad_h's rows cannot be read in place (e.g.
// the stride-0 expansion autograd gives for output.sum()), else an undefined tensor.
inline at::Tensor gradient_scratch(const at::Tensor& grad_h, const at::Tensor& like) {
  return rows_readable_in_place(grad_h) ? at::Tensor() : at::empty_like(like);
}

// The rows of grad_h[t]: in place, or copied into scratch (when defined) as a contiguous (B, H)
// block; no rows for t < 0 (the step before the first: no gradient reaches h0 from outside).
template <typename T>
GradRows<T> incoming_gradient(const at::Tensor& grad_h, int64_t t, at::Tensor& scratch) {
  if (t < 0) return {nullptr, 0};
  if (!scratch.defined()) {
    return {grad_h.const_data_ptr<T>() + t * grad_h.stride(0), grad_h.stride(1)};
  }
  scratch.copy_(grad_h[t]);
  return {scratch.const_data_ptr<T>(), scratch.size(1)};
}

// "voltage" after the reverse loop: dh0 = dh + f'(v_0) * product for the first `rows` rows of dh
// (all of them in batch order; in row order through index, h0 being in batch order).
template <typename T, int64_t NL>
void voltage_initial(const at::Tensor& h0, const at::Tensor& product, at::Tensor& dh,
                     const int64_t* index, int64_t rows) {
  const int64_t hidden = h0.size(1);
  const T* h0_p = h0.const_data_ptr<T>();
  const T* p = product.const_data_ptr<T>();
  T* g = dh.mutable_data_ptr<T>();
  at::parallel_for(0, rows, row_grain(hidden), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = index == nullptr ? i : index[i];
      voltage_initial_row<T, NL>(h0_p + b * hidden, p + i * hidden, g + i * hidden, hidden);
    }
  });
}

// The backward time loop over rows of different lengths (the forward's steps, last first): the
// adjoint dh (B, H) lives in row order, as the forward state did, so that step s's GEMM covers only
// the first running[s] rows. A running row's d_drive goes to a row-ordered buffer (the GEMM's
// operand) and is copied to d_drive[t, b] (t = order.time(i, s)); a finished row passes its adjoint
// through and gets d_drive[s, b] = 0. The incoming gradient of the previous step's state is added
// only where row b still runs at step s - 1 (elsewhere h is the op's constant zero, so no mask pass
// over grad_h is needed). In reverse order each row reads grad_h at its own time index, so grad_h's
// rows must be readable in place (the caller makes it contiguous otherwise). dh leaves in row order.
template <typename T, int64_t NL, int64_t PL>
struct BackwardByLengthLoop {
  static void run(const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0,
                  const at::Tensor& drive, const at::Tensor& w, const at::Tensor& alpha,
                  const at::Tensor& keep, at::Tensor& d_drive, at::Tensor& dh,
                  at::Tensor& d_alpha_partial, const RowOrder& order) {
    const int64_t steps = h.size(0), batch = h0.size(0), hidden = h0.size(1);
    const int64_t plane = batch * hidden;
    const int64_t blocks = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
    const int64_t* index = order.index.const_data_ptr<int64_t>();
    at::Tensor d_drive_rows = at::empty({batch, hidden}, h.options());
    at::Tensor grad_slice = gradient_scratch(grad_h, dh);
    // "voltage": the later step's d_drive W in row order, valid for the rows that ran that step.
    at::Tensor product = PL == kVoltage ? at::empty({batch, hidden}, h.options()) : at::Tensor();
    const T* product_p = PL == kVoltage ? product.const_data_ptr<T>() : nullptr;
    T* g = dh.mutable_data_ptr<T>();
    T* dd = d_drive_rows.mutable_data_ptr<T>();
    double* partial = d_alpha_partial.mutable_data_ptr<double>();
    const T* h_p = h.const_data_ptr<T>();
    const T* drive_p = drive.const_data_ptr<T>();
    T* d_drive_p = d_drive.mutable_data_ptr<T>();
    const T* grad_p = grad_h.const_data_ptr<T>();
    for (int64_t step = steps - 1; step >= 0; --step) {
      const int64_t running = order.running[step];
      const int64_t running_prev = step > 0 ? order.running[step - 1] : 0;  // their grad_h counts
      const int64_t running_next = step + 1 < steps ? order.running[step + 1] : 0;  // have a product
      // Forward time order: the previous step's gradient rows, one plane (copied if need be).
      const GradRows<T> grad_plane =
          order.reverse ? GradRows<T>{nullptr, 0} : incoming_gradient<T>(grad_h, step - 1, grad_slice);
      at::parallel_for(0, blocks, row_grain(hidden, kRowsPerPartial), [&](int64_t k0, int64_t k1) {
        for (int64_t block = k0; block < k1; ++block) {
          const int64_t i1 = std::min(batch, (block + 1) * kRowsPerPartial);
          for (int64_t i = block * kRowsPerPartial; i < i1; ++i) {
            const int64_t b = index[i], row = b * hidden, pos = i * hidden;
            const bool counts = i < running_prev;  // the row ran step - 1: its state's gradient
            const int64_t t_prev = counts ? order.time(i, step - 1) : 0;
            const T* gp = !counts        ? nullptr
                          : order.reverse ? grad_p + t_prev * grad_h.stride(0) + b * grad_h.stride(1)
                                          : grad_plane.row(b);
            if (i < running) {
              const int64_t at = order.time(i, step) * plane + row;
              const T* h_prev = step == 0 ? h0.const_data_ptr<T>() + row : h_p + t_prev * plane + row;
              backward_row<T, double, NL, PL>(drive_p + at, h_prev, h_p + at, gp, g + pos, dd + pos,
                                              partial + block * hidden, alpha.const_data_ptr<T>(),
                                              keep.const_data_ptr<T>(), hidden,
                                              i < running_next ? product_p + pos : nullptr);
              std::memcpy(d_drive_p + at, dd + pos, hidden * sizeof(T));
            } else {
              held_row_backward<T>(gp, g + pos, d_drive_p + step * plane + row, hidden);
            }
          }
        }
      });
      if (running > 0 && PL == kVoltage) {  // product = d_drive_s W over the running rows
        at::Tensor product_running = product.narrow(0, 0, running);
        at::mm_out(product_running, d_drive_rows.narrow(0, 0, running), w);
      } else if (running > 0) {  // dh_prev += d_drive_s W over the running rows
        dh.narrow(0, 0, running).addmm_(d_drive_rows.narrow(0, 0, running), w);
      }
    }
    if constexpr (PL == kVoltage) voltage_initial<T, NL>(h0, product, dh, index, order.running[0]);
  }
};

}  // namespace timescale_kernels
