// The leaky-RNN serial core on the CPU (see timescale_kernels/ops/core.py for the contract).
//
// Each time step is one BLAS GEMM into a preallocated (B, H) buffer (no allocation per step) and
// one fused element-wise pass, parallelised with at::parallel_for over torch's intra-op threads
// (the same OpenMP pool MKL uses). The weight gradient is not computed here: core.py does it with
// one GEMM over all T*B rows after the reverse loop. Large outputs come from output_pool.h.
//
// With per-row lengths the loops keep the state (and, in reverse, the adjoint) in a row order,
// longest first, so that each step's GEMM and element-wise pass cover only the rows still
// running, as torch.nn.RNN's packed path does; outputs stay in batch order.
//
//   timescale_kernels_cpu::forward(u, h0, w, alpha, nonlinearity, placement, save_drive, lengths)
//       -> (h, drive)
//   timescale_kernels_cpu::backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, lengths)
//       -> (d_drive, dh0, d_alpha)
//   timescale_kernels_cpu::nonlinearities() -> the names, in code order
//   timescale_kernels_cpu::empty_cache()

#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define TK_HAS_MXCSR 1
#endif

#include "activations.h"
#include "output_pool.h"
#include "pointwise.h"

namespace timescale_kernels {
namespace {

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
};

RowOrder order_by_length(const at::Tensor& lengths, int64_t steps, int64_t batch) {
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
  RowOrder order{at::empty({batch}, lengths.options()), std::vector<int64_t>(steps, 0)};
  int64_t* index = order.index.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) index[b] = b;
  std::stable_sort(index, index + batch, [len](int64_t a, int64_t b) { return len[a] > len[b]; });
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < len[b]; ++t) ++order.running[t];
  }
  return order;
}

// One forward step's element-wise pass over all B rows, in batch order.
template <typename T, int64_t NL, int64_t PL>
void forward_pointwise(const T* u, const T* product, T* drive, const T* h_prev, T* h,
                       const T* alpha, const T* keep, int64_t batch, int64_t hidden) {
  at::parallel_for(0, batch, row_grain(hidden), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = b * hidden;
      forward_row<T, NL, PL>(u + row, product + row, drive + row, h_prev + row, h + row, alpha,
                             keep, hidden);
    }
  });
}

// One reverse step's element-wise pass over all B rows, in batch order; dh (B, H) as in
// backward_row. Each block of kRowsPerPartial rows accumulates its own d_alpha partial (AccT) row,
// so that no two threads ever add to the same element.
template <typename T, typename AccT, int64_t NL, int64_t PL>
void backward_pointwise(const T* drive, const T* h_prev, const T* h, const T* grad_prev, T* dh,
                        T* d_drive, AccT* d_alpha_partial, const T* alpha, const T* keep,
                        int64_t batch, int64_t hidden) {
  const int64_t blocks = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
  at::parallel_for(0, blocks, row_grain(hidden, kRowsPerPartial), [&](int64_t k0, int64_t k1) {
    for (int64_t block = k0; block < k1; ++block) {
      const int64_t b1 = std::min(batch, (block + 1) * kRowsPerPartial);
      for (int64_t b = block * kRowsPerPartial; b < b1; ++b) {
        const int64_t row = b * hidden;
        backward_row<T, AccT, NL, PL>(drive + row, h_prev + row, h + row,
                                      grad_prev == nullptr ? nullptr : grad_prev + row, dh + row,
                                      d_drive + row, d_alpha_partial + block * hidden, alpha, keep,
                                      hidden);
      }
    }
  });
}

// Runs Kernel<T, NL, PL>::run(args...) for the runtime nonlinearity and placement codes.
template <template <typename, int64_t, int64_t> class Kernel, typename T, typename... Args>
void dispatch_activation(int64_t nonlinearity, int64_t placement, Args&&... args) {
  TORCH_CHECK(placement == kOutside || placement == kInside,
              "placement: expected 0 (outside) or 1 (inside); got ", placement);
  const bool outside = placement == kOutside;
  switch (nonlinearity) {
#define TK_CASE(CODE, NAME)                                  \
  case CODE:                                                 \
    return outside ? Kernel<T, CODE, kOutside>::run(args...) \
                   : Kernel<T, CODE, kInside>::run(args...);
    TK_NONLINEARITIES(TK_CASE)
#undef TK_CASE
    default:
      TORCH_CHECK(false, "nonlinearity: expected a code in 0..", kNumNonlinearities - 1, "; got ",
                  nonlinearity);
  }
}

// The forward time loop. Without save_drive, drive is one (B, H) buffer reused every step.
template <typename T, int64_t NL, int64_t PL>
struct ForwardLoop {
  static void run(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                  const at::Tensor& alpha, const at::Tensor& keep, at::Tensor& h,
                  at::Tensor& drive, bool save_drive) {
    const int64_t steps = u.size(0), batch = h0.size(0), hidden = h0.size(1);
    const int64_t plane = batch * hidden;
    const at::Tensor w_t = w.t();
    at::Tensor product = at::empty({batch, hidden}, u.options());
    const T* u_p = u.const_data_ptr<T>();
    T* h_p = h.mutable_data_ptr<T>();
    for (int64_t t = 0; t < steps; ++t) {
      const at::Tensor h_prev = t == 0 ? h0 : h[t - 1];
      at::mm_out(product, h_prev, w_t);  // product = h_{t-1} W^T
      T* drive_t = drive.mutable_data_ptr<T>() + (save_drive ? t * plane : 0);
      forward_pointwise<T, NL, PL>(u_p + t * plane, product.const_data_ptr<T>(), drive_t,
                                   h_prev.const_data_ptr<T>(), h_p + t * plane,
                                   alpha.const_data_ptr<T>(), keep.const_data_ptr<T>(), batch,
                                   hidden);
    }
  }
};

// The forward time loop over rows of different lengths. The state lives in row order (longest
// first) in a (B, H) buffer, so that step t's GEMM covers only its first running[t] rows; each
// running row is computed into h[t, b] (batch order) and copied back to the state, each finished
// row copies its held state to h[t, b].
template <typename T, int64_t NL, int64_t PL>
struct ForwardByLengthLoop {
  static void run(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                  const at::Tensor& alpha, const at::Tensor& keep, at::Tensor& h,
                  at::Tensor& drive, bool save_drive, const RowOrder& order) {
    const int64_t steps = u.size(0), batch = h0.size(0), hidden = h0.size(1);
    const int64_t plane = batch * hidden;
    const size_t row_bytes = hidden * sizeof(T);
    const at::Tensor w_t = w.t();
    at::Tensor state = h0.index_select(0, order.index);
    at::Tensor product = at::empty({batch, hidden}, u.options());
    const int64_t* index = order.index.const_data_ptr<int64_t>();
    T* s = state.mutable_data_ptr<T>();
    const T* p = product.const_data_ptr<T>();
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t running = order.running[t];
      if (running > 0) {  // product = h_{t-1} W^T over the running rows
        at::Tensor product_running = product.narrow(0, 0, running);
        at::mm_out(product_running, state.narrow(0, 0, running), w_t);
      }
      const T* u_t = u.const_data_ptr<T>() + t * plane;
      T* h_t = h.mutable_data_ptr<T>() + t * plane;
      T* drive_t = drive.mutable_data_ptr<T>() + (save_drive ? t * plane : 0);
      at::parallel_for(0, batch, row_grain(hidden), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t row = index[i] * hidden, pos = i * hidden;
          if (i < running) {
            forward_row<T, NL, PL>(u_t + row, p + pos, drive_t + row, s + pos, h_t + row,
                                   alpha.const_data_ptr<T>(), keep.const_data_ptr<T>(), hidden);
            std::memcpy(s + pos, h_t + row, row_bytes);
          } else {
            std::memcpy(h_t + row, s + pos, row_bytes);
          }
        }
      });
    }
  }
};

// grad_h[t - 1] as a contiguous (B, H) block (copied into scratch when grad_h has other strides),
// or nullptr at t = 0.
template <typename T>
const T* incoming_gradient(const at::Tensor& grad_h, int64_t t, at::Tensor& scratch) {
  if (t == 0) return nullptr;
  if (!scratch.defined()) return grad_h.const_data_ptr<T>() + (t - 1) * grad_h.stride(0);
  scratch.copy_(grad_h[t - 1]);
  return scratch.const_data_ptr<T>();
}

// The reverse time loop; dh (B, H) enters as grad_h[T-1] and leaves as dh0. grad_h may have any
// strides: autograd hands out a stride-0 expansion for a loss like output.sum(), and copying one
// (B, H) slice per step is far cheaper than materialising all T of them.
template <typename T, int64_t NL, int64_t PL>
struct BackwardLoop {
  static void run(const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0,
                  const at::Tensor& drive, const at::Tensor& w, const at::Tensor& alpha,
                  const at::Tensor& keep, at::Tensor& d_drive, at::Tensor& dh,
                  at::Tensor& d_alpha_partial) {
    const int64_t steps = h.size(0), batch = h0.size(0), hidden = h0.size(1);
    const int64_t plane = batch * hidden;
    const T* drive_p = drive.const_data_ptr<T>();
    const T* h_p = h.const_data_ptr<T>();
    T* d_drive_p = d_drive.mutable_data_ptr<T>();
    at::Tensor grad_slice = grad_h.is_contiguous() ? at::Tensor() : at::empty_like(dh);
    for (int64_t t = steps - 1; t >= 0; --t) {
      const T* grad_prev = incoming_gradient<T>(grad_h, t, grad_slice);
      backward_pointwise<T, double, NL, PL>(
          drive_p + t * plane, t == 0 ? h0.const_data_ptr<T>() : h_p + (t - 1) * plane,
          h_p + t * plane, grad_prev, dh.mutable_data_ptr<T>(), d_drive_p + t * plane,
          d_alpha_partial.mutable_data_ptr<double>(), alpha.const_data_ptr<T>(),
          keep.const_data_ptr<T>(), batch, hidden);
      dh.addmm_(d_drive[t], w);  // dh_{t-1} += d_drive_t W, in place (beta = 1)
    }
  }
};

// The reverse time loop over rows of different lengths: the adjoint dh (B, H) lives in row order,
// as the forward state did, so that step t's GEMM covers only the first running[t] rows. A running
// row's d_drive goes to a row-ordered buffer (the GEMM's operand) and is copied to d_drive[t, b];
// a finished row passes its adjoint through and gets d_drive[t, b] = 0. dh leaves in row order.
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
    at::Tensor grad_slice = grad_h.is_contiguous() ? at::Tensor() : at::empty_like(dh);
    T* g = dh.mutable_data_ptr<T>();
    T* dd = d_drive_rows.mutable_data_ptr<T>();
    double* partial = d_alpha_partial.mutable_data_ptr<double>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const int64_t running = order.running[t];
      const T* grad_prev = incoming_gradient<T>(grad_h, t, grad_slice);
      const T* h_prev = t == 0 ? h0.const_data_ptr<T>() : h.const_data_ptr<T>() + (t - 1) * plane;
      const T* h_t = h.const_data_ptr<T>() + t * plane;
      const T* drive_t = drive.const_data_ptr<T>() + t * plane;
      T* d_drive_t = d_drive.mutable_data_ptr<T>() + t * plane;
      at::parallel_for(0, blocks, row_grain(hidden, kRowsPerPartial), [&](int64_t k0, int64_t k1) {
        for (int64_t block = k0; block < k1; ++block) {
          const int64_t i1 = std::min(batch, (block + 1) * kRowsPerPartial);
          for (int64_t i = block * kRowsPerPartial; i < i1; ++i) {
            const int64_t row = index[i] * hidden, pos = i * hidden;
            const T* gp = grad_prev == nullptr ? nullptr : grad_prev + row;
            if (i < running) {
              backward_row<T, double, NL, PL>(drive_t + row, h_prev + row, h_t + row, gp, g + pos,
                                              dd + pos, partial + block * hidden,
                                              alpha.const_data_ptr<T>(), keep.const_data_ptr<T>(),
                                              hidden);
              std::memcpy(d_drive_t + row, dd + pos, hidden * sizeof(T));
            } else {
              held_row_backward<T>(gp, g + pos, d_drive_t + row, hidden);
            }
          }
        }
      });
      if (running > 0) {  // dh_{t-1} += d_drive_t W over the running rows
        dh.narrow(0, 0, running).addmm_(d_drive_rows.narrow(0, 0, running), w);
      }
    }
  }
};

// Shapes, device and dtype of every argument; contiguity of all but those named in `strided`.
void check_args(const at::Tensor& h0, const at::Tensor& w, const at::Tensor& alpha,
                std::initializer_list<std::pair<const char*, const at::Tensor*>> sequences,
                const char* strided = "") {
  TORCH_CHECK(h0.dim() == 2, "h0: expected (B, H); got ", h0.sizes());
  const int64_t batch = h0.size(0), hidden = h0.size(1);
  TORCH_CHECK(w.dim() == 2 && w.size(0) == hidden && w.size(1) == hidden, "w: expected (", hidden,
              ", ", hidden, "); got ", w.sizes());
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) == hidden, "alpha: expected (", hidden, ",); got ",
              alpha.sizes());
  for (const auto& [name, t] : sequences) {
    TORCH_CHECK(t->dim() == 3 && t->size(1) == batch && t->size(2) == hidden, name,
                ": expected (T, ", batch, ", ", hidden, "); got ", t->sizes());
  }
  std::vector<std::pair<const char*, const at::Tensor*>> all(sequences);
  all.insert(all.end(), {{"h0", &h0}, {"w", &w}, {"alpha", &alpha}});
  for (const auto& [name, t] : all) {
    TORCH_CHECK(t->device().is_cpu(), name, ": expected a CPU tensor; got ", t->device());
    TORCH_CHECK(t->scalar_type() == h0.scalar_type(), name, ": expected dtype ", h0.scalar_type(),
                "; got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous() || std::string(name) == strided, name,
                ": expected a contiguous tensor");
  }
}

// u (T, B, H), h0 (B, H), w (H, H), alpha (H,), lengths (B,) int64 or none
//   -> h (T, B, H) = h_1..h_T and drive (T, B, H) (empty unless save_drive).
// With lengths, row b holds its state from step lengths[b] on: h[t, b] = h[t - 1, b]; drive[t, b]
// is left unwritten there.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& u, const at::Tensor& h0,
                                           const at::Tensor& w, const at::Tensor& alpha,
                                           int64_t nonlinearity, int64_t placement,
                                           bool save_drive,
                                           const std::optional<at::Tensor>& lengths) {
  check_args(h0, w, alpha, {{"u", &u}});
  const int64_t steps = u.size(0), batch = h0.size(0), hidden = h0.size(1);
  at::Tensor h = OutputPool::instance().empty(u.sizes(), u.options());
  at::Tensor drive =
      save_drive ? OutputPool::instance().empty(u.sizes(), u.options()) : at::empty({0}, u.options());
  if (steps == 0) return {h, drive};
  // Without save_drive one (B, H) buffer serves every step.
  at::Tensor drive_buffer = save_drive ? drive : at::empty({batch, hidden}, u.options());
  const at::Tensor keep = 1 - alpha;
  const bool by_length = lengths.has_value();
  const RowOrder order = by_length ? order_by_length(*lengths, steps, batch) : RowOrder{};
  DenormalsAreZero denormal_guard;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "timescale_kernels_cpu::forward", [&] {
    if (by_length) {
      dispatch_activation<ForwardByLengthLoop, scalar_t>(nonlinearity, placement, u, h0, w, alpha,
                                                         keep, h, drive_buffer, save_drive, order);
    } else {
      dispatch_activation<ForwardLoop, scalar_t>(nonlinearity, placement, u, h0, w, alpha, keep,
                                                 h, drive_buffer, save_drive);
    }
  });
  return {h, drive};
}

// d_alpha (H,) in alpha's dtype: the (blocks, H) double partial sums added in a fixed order.
at::Tensor sum_partials(const at::Tensor& d_alpha_partial, const at::Tensor& alpha) {
  const int64_t blocks = d_alpha_partial.size(0), hidden = d_alpha_partial.size(1);
  at::Tensor d_alpha = at::zeros({hidden}, alpha.options().dtype(at::kDouble));
  double* total = d_alpha.mutable_data_ptr<double>();
  const double* partial = d_alpha_partial.const_data_ptr<double>();
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t j = 0; j < hidden; ++j) total[j] += partial[block * hidden + j];
  }
  return d_alpha.to(alpha.scalar_type());
}

// grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,), lengths (B,) int64 or none
//   -> d_drive (T, B, H), dh0 (B, H), d_alpha (H,).
// With lengths, d_drive[t, b] = 0 from step lengths[b] on, and the adjoint passes through those
// steps unchanged.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0, const at::Tensor& drive,
    const at::Tensor& w, const at::Tensor& alpha, int64_t nonlinearity, int64_t placement,
    const std::optional<at::Tensor>& lengths) {
  check_args(h0, w, alpha, {{"grad_h", &grad_h}, {"h", &h}, {"drive", &drive}}, "grad_h");
  const int64_t steps = h.size(0), batch = h0.size(0), hidden = h0.size(1);
  TORCH_CHECK(grad_h.size(0) == steps && drive.size(0) == steps,
              "grad_h, h, drive: expected the same T; got ", grad_h.size(0), ", ", steps, ", ",
              drive.size(0));
  at::Tensor d_drive = OutputPool::instance().empty(h.sizes(), h.options());
  if (steps == 0) return {d_drive, at::zeros_like(h0), at::zeros_like(alpha)};
  const bool by_length = lengths.has_value();
  const RowOrder order = by_length ? order_by_length(*lengths, steps, batch) : RowOrder{};
  // The adjoint of h_t, carried back; in row order when by length.
  // (A copy: the kernel updates it in place.)
  at::Tensor dh = by_length ? grad_h[steps - 1].index_select(0, order.index)
                            : grad_h[steps - 1].clone(at::MemoryFormat::Contiguous);
  const at::Tensor keep = 1 - alpha;
  // d_alpha accumulates in double (T * B terms per element), in partial sums over row blocks
  // that are added up in a fixed order at the end.
  const int64_t blocks = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
  at::Tensor d_alpha_partial = at::zeros({blocks, hidden}, alpha.options().dtype(at::kDouble));
  {
    DenormalsAreZero denormal_guard;
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "timescale_kernels_cpu::backward", [&] {
      if (by_length) {
        dispatch_activation<BackwardByLengthLoop, scalar_t>(nonlinearity, placement, grad_h, h, h0,
                                                            drive, w, alpha, keep, d_drive, dh,
                                                            d_alpha_partial, order);
      } else {
        dispatch_activation<BackwardLoop, scalar_t>(nonlinearity, placement, grad_h, h, h0, drive,
                                                    w, alpha, keep, d_drive, dh, d_alpha_partial);
      }
    });
  }
  at::Tensor dh0 = by_length ? at::empty_like(dh).index_copy_(0, order.index, dh) : dh;
  return {d_drive, dh0, sum_partials(d_alpha_partial, alpha)};
}

// The names of the nonlinearities, in the order of their codes.
std::vector<std::string> nonlinearities() {
  return std::vector<std::string>(std::begin(kNonlinearityNames), std::end(kNonlinearityNames));
}

}  // namespace
}  // namespace timescale_kernels

TORCH_LIBRARY(timescale_kernels_cpu, m) {
  m.def(
      "forward(Tensor u, Tensor h0, Tensor w, Tensor alpha, int nonlinearity, int placement, "
      "bool save_drive, Tensor? lengths=None) -> (Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor h, Tensor h0, Tensor drive, Tensor w, Tensor alpha, "
      "int nonlinearity, int placement, Tensor? lengths=None) -> (Tensor, Tensor, Tensor)");
  // The nonlinearity names in code order (checked against timescale_kernels/ops/choices.py).
  m.def("nonlinearities() -> str[]", &timescale_kernels::nonlinearities);
  // Frees the output blocks kept for reuse (see output_pool.h).
  m.def("empty_cache() -> ()", [] { timescale_kernels::OutputPool::instance().release(); });
}

TORCH_LIBRARY_IMPL(timescale_kernels_cpu, CPU, m) {
  m.impl("forward", &timescale_kernels::forward);
  m.impl("backward", &timescale_kernels::backward);
}

// `import timescale_kernels._C` loads this library, which registers the ops above with torch.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
