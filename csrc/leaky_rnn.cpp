// The leaky-RNN serial core on the CPU (see timescale_kernels/ops/core.py for the contract).
//
// Each time step is one BLAS GEMM into a preallocated (B, H) buffer (no allocation per step) and
// one fused element-wise pass, parallelised with at::parallel_for over torch's intra-op threads
// (the same OpenMP pool MKL uses). The weight gradient is not computed here: core.py does it with
// one GEMM over all T*B rows after the reverse loop. Large outputs come from output_pool.h.
//
// With per-row lengths the loops keep the state (and, in reverse, the adjoint) in a row order,
// longest first, so that each step's GEMM and element-wise pass cover only the rows still
// running, as torch.nn.RNN's packed path does; outputs stay in batch order. Without lengths the
// loops can also run the sequence in reverse time order (reverse=True; with lengths each row within
// its own length), reading and writing the tensors in place, for the reverse direction of a
// bidirectional layer.
//
//   timescale_kernels_cpu::forward(u, h0, w, alpha, nonlinearity, placement, save_drive, lengths,
//                                  reverse) -> (h, drive)
//   timescale_kernels_cpu::backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement,
//                                   lengths, reverse) -> (d_drive, dh0, d_alpha)
//   timescale_kernels_cpu::nonlinearities() -> the names, in code order
//   timescale_kernels_cpu::empty_cache()

#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "activations.h"
#include "loops.h"
#include "output_pool.h"

namespace timescale_kernels {
namespace {

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
// is left unwritten there. reverse: the steps run from time index T-1 down to 0 (with lengths, each
// row's from lengths[b]-1 down to 0), h[t] the state after reading u[t], so that h[0] is the last
// state; held steps stay where they are.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& u, const at::Tensor& h0,
                                           const at::Tensor& w, const at::Tensor& alpha,
                                           int64_t nonlinearity, int64_t placement,
                                           bool save_drive,
                                           const std::optional<at::Tensor>& lengths,
                                           bool reverse) {
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
  const RowOrder order = by_length ? order_by_length(*lengths, steps, batch, reverse) : RowOrder{};
  DenormalsAreZero denormal_guard;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "timescale_kernels_cpu::forward", [&] {
    if (by_length) {
      dispatch_activation<ForwardByLengthLoop, scalar_t>(nonlinearity, placement, u, h0, w, alpha,
                                                         keep, h, drive_buffer, save_drive, order);
    } else {
      dispatch_activation<ForwardLoop, scalar_t>(nonlinearity, placement, u, h0, w, alpha, keep,
                                                 h, drive_buffer, save_drive,
                                                 TimeOrder{steps, reverse});
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

// grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,), lengths (B,) int64 or none,
// grad_last (B, H) or none -> d_drive (T, B, H), dh0 (B, H), d_alpha (H,).
// With lengths, grad_h[t, b] is ignored and d_drive[t, b] = 0 from step lengths[b] on, and the
// adjoint passes through those steps unchanged. reverse: as in forward. grad_last: the gradient of
// each row's last state (h_n: h[lengths[b] - 1, b], h[T - 1, b], or h[0, b] in reverse order), added
// to the adjoint where the loop starts: it passes unchanged through a row's held steps to its last.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0, const at::Tensor& drive,
    const at::Tensor& w, const at::Tensor& alpha, int64_t nonlinearity, int64_t placement,
    const std::optional<at::Tensor>& lengths, bool reverse, const std::optional<at::Tensor>& grad_last) {
  check_args(h0, w, alpha, {{"grad_h", &grad_h}, {"h", &h}, {"drive", &drive}}, "grad_h");
  const int64_t steps = h.size(0), batch = h0.size(0), hidden = h0.size(1);
  TORCH_CHECK(grad_h.size(0) == steps && drive.size(0) == steps,
              "grad_h, h, drive: expected the same T; got ", grad_h.size(0), ", ", steps, ", ",
              drive.size(0));
  at::Tensor d_drive = OutputPool::instance().empty(h.sizes(), h.options());
  if (steps == 0) return {d_drive, at::zeros_like(h0), at::zeros_like(alpha)};
  const bool by_length = lengths.has_value();
  const RowOrder order = by_length ? order_by_length(*lengths, steps, batch, reverse) : RowOrder{};
  // In reverse by length each row reads grad_h at its own time index: its rows must be in place.
  const at::Tensor grad =
      by_length && reverse && !rows_readable_in_place(grad_h) ? grad_h.contiguous() : grad_h;
  // The adjoint of the last step's state, carried back; in row order when by length, zero for the
  // rows that do not run the last step. (A copy: the kernel updates it in place.)
  const int64_t last = reverse ? 0 : steps - 1;
  at::Tensor dh = by_length ? grad[last].index_select(0, order.index)
                            : grad[last].clone(at::MemoryFormat::Contiguous);
  if (by_length) dh.narrow(0, order.running[steps - 1], batch - order.running[steps - 1]).zero_();
  if (grad_last.has_value() && grad_last->defined()) {
    TORCH_CHECK(grad_last->sizes() == h0.sizes() && grad_last->scalar_type() == h0.scalar_type() &&
                    grad_last->device().is_cpu(),
                "grad_last: expected a CPU tensor of shape ", h0.sizes(), " and dtype ", h0.scalar_type(),
                "; got ", grad_last->sizes(), ", ", grad_last->scalar_type(), " on ", grad_last->device());
    dh.add_(by_length ? grad_last->index_select(0, order.index) : *grad_last);
  }
  const at::Tensor keep = 1 - alpha;
  // d_alpha accumulates in double (T * B terms per element), in partial sums over row blocks
  // that are added up in a fixed order at the end.
  const int64_t blocks = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
  at::Tensor d_alpha_partial = at::zeros({blocks, hidden}, alpha.options().dtype(at::kDouble));
  {
    DenormalsAreZero denormal_guard;
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "timescale_kernels_cpu::backward", [&] {
      if (by_length) {
        dispatch_activation<BackwardByLengthLoop, scalar_t>(nonlinearity, placement, grad, h, h0,
                                                            drive, w, alpha, keep, d_drive, dh,
                                                            d_alpha_partial, order);
      } else {
        dispatch_activation<BackwardLoop, scalar_t>(nonlinearity, placement, grad_h, h, h0, drive,
                                                    w, alpha, keep, d_drive, dh, d_alpha_partial,
                                                    TimeOrder{steps, reverse});
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
      "bool save_drive, Tensor? lengths=None, bool reverse=False) -> (Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor h, Tensor h0, Tensor drive, Tensor w, Tensor alpha, "
      "int nonlinearity, int placement, Tensor? lengths=None, bool reverse=False, "
      "Tensor? grad_last=None) -> (Tensor, Tensor, Tensor)");
  // The nonlinearity names in code order (checked against timescale_kernels/ops/choices.py).
  m.def("nonlinearities() -> str[]", &timescale_kernels::nonlinearities);
  // Frees the output blocks kept for reuse (see output_pool.h).
  m.def("empty_cache() -> ()", [] { timescale_kernels::OutputPool::instance().release(); });
  // An uninitialised contiguous CPU tensor from the same pool (for the input projection u).
  m.def("empty_pooled(int[] size, ScalarType dtype) -> Tensor",
        [](std::vector<int64_t> size, at::ScalarType dtype) {
          return timescale_kernels::OutputPool::instance().empty(size, at::TensorOptions().dtype(dtype));
        });
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
