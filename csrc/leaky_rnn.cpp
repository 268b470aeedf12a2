// The leaky-RNN serial core on the CPU (see timescale_kernels/ops/core.py for the contract).
//
// Each time step is one BLAS GEMM into a preallocated (B, H) buffer (no allocation per step) and
// one fused element-wise pass, parallelised with at::parallel_for over torch's intra-op threads
// (the same OpenMP pool MKL uses). The weight gradient is not computed here: core.py does it with
// one GEMM over all T*B rows after the reverse loop. Large outputs come from output_pool.h.
//
//   timescale_kernels_cpu::forward(u, h0, w, alpha, nonlinearity, placement, save_drive) -> (h, drive)
//   timescale_kernels_cpu::backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement)
//       -> (d_drive, dh0, d_alpha)
//   timescale_kernels_cpu::empty_cache()

#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define TK_HAS_MXCSR 1
#endif

#include "activations.h"
#include "output_pool.h"

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

// drive_t = u_t + product (= h_{t-1} W^T), stored to drive (B, H), then h_t from drive_t and
// h_{t-1}; keep = 1 - alpha, both (H,). The GEMM writes product to a (B, H) buffer that stays in
// cache from step to step; writing the (T, B, H) drive here instead costs one pass over fresh
// memory rather than a GEMM on cold output, and adding u_t here saves a copy of it.
template <typename T, int64_t NL, int64_t PL>
void forward_pointwise(const T* u, const T* product, T* drive, const T* h_prev, T* h,
                       const T* alpha, const T* keep, int64_t batch, int64_t hidden) {
  const int64_t grain = std::max<int64_t>(1, kMinElementsPerTask / hidden);
  at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = b * hidden;
      const T* __restrict ub = u + row;
      const T* __restrict p = product + row;
      T* __restrict d = drive + row;
      const T* __restrict hp = h_prev + row;
      T* __restrict out = h + row;
#pragma omp simd
      for (int64_t j = 0; j < hidden; ++j) {
        const T dv = p[j] + ub[j];
        d[j] = dv;
        T y;
        if constexpr (PL == kOutside) {
          y = activate<NL>(keep[j] * hp[j] + alpha[j] * dv);
        } else {
          y = keep[j] * hp[j] + alpha[j] * activate<NL>(dv);
        }
        out[j] = flush(y);
      }
    }
  });
}

// Rows per partial sum of d_alpha in the backward pass. Fixed, not derived from the thread count,
// so that the order of summation, and so the result, is the same on any machine.
constexpr int64_t kRowsPerPartial = 16;

// One reverse step. On entry dh (B, H) holds the adjoint of h_t; on exit it holds
// (1 - alpha) * (dz or dh) + grad_h_{t-1}, to which the caller adds d_drive_t W. Each block of
// kRowsPerPartial rows accumulates its own d_alpha partial (AccT) row, so that no two threads
// ever add to the same element.
template <typename T, typename AccT, int64_t NL, int64_t PL>
void backward_pointwise(const T* drive, const T* h_prev, const T* h, const T* grad_prev, T* dh,
                        T* d_drive, AccT* d_alpha_partial, const T* alpha, const T* keep,
                        int64_t batch, int64_t hidden) {
  const int64_t blocks = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
  const int64_t grain = std::max<int64_t>(1, kMinElementsPerTask / (kRowsPerPartial * hidden));
  at::parallel_for(0, blocks, grain, [&](int64_t block0, int64_t block1) {
    for (int64_t block = block0; block < block1; ++block) {
      AccT* __restrict acc = d_alpha_partial + block * hidden;
      const int64_t b1 = std::min(batch, (block + 1) * kRowsPerPartial);
      for (int64_t b = block * kRowsPerPartial; b < b1; ++b) {
        const int64_t row = b * hidden;
        const T* __restrict d = drive + row;
        const T* __restrict hp = h_prev + row;
        const T* __restrict y_out = h + row;
        const T* __restrict gp = grad_prev == nullptr ? nullptr : grad_prev + row;
        T* __restrict g = dh + row;
        T* __restrict dd = d_drive + row;
#pragma omp simd
        for (int64_t j = 0; j < hidden; ++j) {
          T carried;
          if constexpr (PL == kOutside) {
            const T z = keep[j] * hp[j] + alpha[j] * d[j];
            const T y = derivative_needs_output<NL> ? y_out[j] : T(0);
            const T dz = g[j] * derivative<NL>(z, y);
            dd[j] = flush(alpha[j] * dz);
            acc[j] += static_cast<AccT>(dz * (d[j] - hp[j]));
            carried = keep[j] * dz;
          } else {
            const T fd = activate<NL>(d[j]);
            dd[j] = flush(alpha[j] * g[j] * derivative<NL>(d[j], fd));
            acc[j] += static_cast<AccT>(g[j] * (fd - hp[j]));
            carried = keep[j] * g[j];
          }
          if (gp != nullptr) carried += gp[j];
          g[j] = flush(carried);
        }
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
#define TK_CASE(CODE)                                                  \
  case CODE:                                                           \
    return outside ? Kernel<T, CODE, kOutside>::run(args...)           \
                   : Kernel<T, CODE, kInside>::run(args...);
    TK_CASE(kLeakyRelu)
    TK_CASE(kRelu)
    TK_CASE(kTanh)
    TK_CASE(kSigmoid)
    TK_CASE(kIdentity)
#undef TK_CASE
    default:
      TORCH_CHECK(false, "nonlinearity: expected a code in 0..4; got ", nonlinearity);
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
      const T* grad_prev = nullptr;  // grad_h[t - 1], none for t = 0
      if (t > 0 && grad_slice.defined()) {
        grad_slice.copy_(grad_h[t - 1]);
        grad_prev = grad_slice.const_data_ptr<T>();
      } else if (t > 0) {
        grad_prev = grad_h.const_data_ptr<T>() + (t - 1) * plane;
      }
      backward_pointwise<T, double, NL, PL>(
          drive_p + t * plane, t == 0 ? h0.const_data_ptr<T>() : h_p + (t - 1) * plane,
          h_p + t * plane, grad_prev, dh.mutable_data_ptr<T>(), d_drive_p + t * plane,
          d_alpha_partial.mutable_data_ptr<double>(), alpha.const_data_ptr<T>(),
          keep.const_data_ptr<T>(), batch, hidden);
      dh.addmm_(d_drive[t], w);  // dh_{t-1} += d_drive_t W, in place (beta = 1)
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

// u (T, B, H), h0 (B, H), w (H, H), alpha (H,) -> h (T, B, H) = h_1..h_T and drive (T, B, H)
// (empty unless save_drive).
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& u, const at::Tensor& h0,
                                           const at::Tensor& w, const at::Tensor& alpha,
                                           int64_t nonlinearity, int64_t placement,
                                           bool save_drive) {
  check_args(h0, w, alpha, {{"u", &u}});
  const int64_t steps = u.size(0), batch = h0.size(0), hidden = h0.size(1);
  at::Tensor h = OutputPool::instance().empty(u.sizes(), u.options());
  at::Tensor drive =
      save_drive ? OutputPool::instance().empty(u.sizes(), u.options()) : at::empty({0}, u.options());
  if (steps == 0) return {h, drive};
  // Without save_drive one (B, H) buffer serves every step.
  at::Tensor drive_buffer = save_drive ? drive : at::empty({batch, hidden}, u.options());
  const at::Tensor keep = 1 - alpha;
  DenormalsAreZero denormal_guard;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "timescale_kernels_cpu::forward", [&] {
    dispatch_activation<ForwardLoop, scalar_t>(nonlinearity, placement, u, h0, w, alpha, keep,
                                               h, drive_buffer, save_drive);
  });
  return {h, drive};
}

// grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,)
//   -> d_drive (T, B, H), dh0 (B, H), d_alpha (H,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0, const at::Tensor& drive,
    const at::Tensor& w, const at::Tensor& alpha, int64_t nonlinearity, int64_t placement) {
  check_args(h0, w, alpha, {{"grad_h", &grad_h}, {"h", &h}, {"drive", &drive}}, "grad_h");
  const int64_t steps = h.size(0), hidden = h0.size(1);
  TORCH_CHECK(grad_h.size(0) == steps && drive.size(0) == steps,
              "grad_h, h, drive: expected the same T; got ", grad_h.size(0), ", ", steps, ", ",
              drive.size(0));
  at::Tensor d_drive = OutputPool::instance().empty(h.sizes(), h.options());
  if (steps == 0) return {d_drive, at::zeros_like(h0), at::zeros_like(alpha)};
  at::Tensor dh = at::empty({h0.size(0), hidden}, h0.options());  // adjoint of h_t, carried back
  dh.copy_(grad_h[steps - 1]);
  const at::Tensor keep = 1 - alpha;
  // d_alpha accumulates in double (T * B terms per element), in partial sums over row blocks
  // that are added up in a fixed order at the end.
  const int64_t blocks = (h0.size(0) + kRowsPerPartial - 1) / kRowsPerPartial;
  at::Tensor d_alpha_partial = at::zeros({blocks, hidden}, alpha.options().dtype(at::kDouble));
  {
    DenormalsAreZero denormal_guard;
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "timescale_kernels_cpu::backward", [&] {
      dispatch_activation<BackwardLoop, scalar_t>(nonlinearity, placement, grad_h, h, h0, drive, w,
                                                  alpha, keep, d_drive, dh, d_alpha_partial);
    });
  }
  at::Tensor d_alpha = at::zeros({hidden}, alpha.options().dtype(at::kDouble));
  double* total = d_alpha.mutable_data_ptr<double>();
  const double* partial = d_alpha_partial.const_data_ptr<double>();
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t j = 0; j < hidden; ++j) total[j] += partial[block * hidden + j];
  }
  return {d_drive, dh, d_alpha.to(alpha.scalar_type())};
}

}  // namespace
}  // namespace timescale_kernels

TORCH_LIBRARY(timescale_kernels_cpu, m) {
  m.def(
      "forward(Tensor u, Tensor h0, Tensor w, Tensor alpha, int nonlinearity, int placement, "
      "bool save_drive) -> (Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor h, Tensor h0, Tensor drive, Tensor w, Tensor alpha, "
      "int nonlinearity, int placement) -> (Tensor, Tensor, Tensor)");
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
