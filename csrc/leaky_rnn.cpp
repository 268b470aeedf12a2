// The leaky-RNN serial core on the CPU (see timescale_kernels/ops/core.py for the contract).
//
// Every tensor may carry a leading network dimension K (an ensemble of independent networks; a lone
// network is K = 1). One parallel region covers the whole call: each thread owns blocks of
// (network, batch rows) for the whole sequence, and each step of a block is one direct BLAS call
// and one fused element-wise pass over its rows (row_blocks.h): no ATen dispatch, no allocation and
// no barrier per step. With per-row lengths a row past its length is held, and a step's GEMM covers
// only the block's rows around those still running. The weight gradient is not computed here:
// core.py does it with one GEMM per network over all T*B rows after the reverse loop. Large outputs
// come from output_pool.h. whole_op.cpp wraps these two entry points in the whole op (projection,
// alpha, mask and every gradient), one call each way.
//
// The loops also run the sequence in reverse time order (reverse=True), reading and writing the
// tensors in place, for the reverse direction of a bidirectional layer. With lengths, where each row
// runs its own steps reversed (different time indices in one step), the by-length loops of loops.h
// run instead, each network in turn: they keep the state (and the adjoint) in a row order, longest
// first, so that each step's GEMM and element-wise pass cover only the rows still running, as
// torch.nn.RNN's packed path does; outputs stay in batch order.
//
//   timescale_kernels_cpu::forward(u, h0, w, alpha, nonlinearity, placement, save_drive, lengths,
//                                  reverse, rates) -> (h, drive, rate)
//   timescale_kernels_cpu::backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement,
//                                   lengths, reverse, grad_last, rates) -> (d_drive, dh0, d_alpha)
//
// rates ("voltage" only, not in reverse with lengths): the forward also writes the output r = f(v)
// (zero past each row's length) from inside its loop, and the backward takes r's gradient as
// grad_h, applying f'(v) there: no element-wise pass over (T, B, H) outside the loops.
//   timescale_kernels_cpu::nonlinearities() -> the names, in code order
//   timescale_kernels_cpu::empty_cache()

#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "activations.h"
#include "loops.h"
#include "output_pool.h"
#include "row_blocks.h"
#include "serial_core.h"

namespace timescale_kernels {
namespace {

// Shapes, device and dtype of every argument (each with its leading network dimension K);
// contiguity of all but those named in `strided`.
void check_args(const at::Tensor& h0, const at::Tensor& w, const at::Tensor& alpha,
                std::initializer_list<std::pair<const char*, const at::Tensor*>> sequences,
                const char* strided = "") {
  TORCH_CHECK(h0.dim() == 3, "h0: expected (K, B, H); got ", h0.sizes());
  const int64_t networks = h0.size(0), batch = h0.size(1), hidden = h0.size(2);
  TORCH_CHECK(w.dim() == 3 && w.size(0) == networks && w.size(1) == hidden && w.size(2) == hidden,
              "w: expected (", networks, ", ", hidden, ", ", hidden, "); got ", w.sizes());
  TORCH_CHECK(alpha.dim() == 2 && alpha.size(0) == networks && alpha.size(1) == hidden, "alpha: expected (",
              networks, ", ", hidden, "); got ", alpha.sizes());
  for (const auto& [name, t] : sequences) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == networks && t->size(2) == batch && t->size(3) == hidden, name,
                ": expected (", networks, ", T, ", batch, ", ", hidden, "); got ", t->sizes());
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

// t with a leading network dimension: itself for an ensemble, else a view with K = 1.
at::Tensor networks_of(const at::Tensor& t, bool ensemble) { return ensemble ? t : t.unsqueeze(0); }

// lengths (K, B) (or (B,) for a lone network), checked network by network, contiguous; undefined
// without lengths.
at::Tensor network_lengths(const std::optional<at::Tensor>& lengths, bool ensemble, int64_t networks, int64_t steps,
                           int64_t batch) {
  if (!lengths.has_value()) return at::Tensor();
  const at::Tensor len = networks_of(*lengths, ensemble);
  TORCH_CHECK(len.dim() >= 1 && len.size(0) == networks, "lengths: expected (", networks, ", ", batch, "); got ",
              lengths->sizes());
  for (int64_t k = 0; k < networks; ++k) checked_lengths(len[k], steps, batch);
  return len.contiguous();
}

// One network's forward over rows of different lengths (u, h, drive (T, B, H), ...; see forward).
void forward_by_length(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w, const at::Tensor& alpha,
                       int64_t nonlinearity, int64_t placement, bool save_drive, const at::Tensor& lengths,
                       bool reverse, at::Tensor h, at::Tensor drive) {
  const int64_t steps = u.size(0), batch = h0.size(0), hidden = h0.size(1);
  // Without save_drive one (B, H) buffer serves every step.
  at::Tensor drive_buffer = save_drive ? drive : at::empty({batch, hidden}, u.options());
  const at::Tensor keep = 1 - alpha;
  const RowOrder order = order_by_length(lengths, steps, batch, reverse);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "timescale_kernels_cpu::forward", [&] {
    dispatch_activation<ForwardByLengthLoop, scalar_t>(nonlinearity, placement, u, h0, w, alpha, keep, h,
                                                       drive_buffer, save_drive, order);
  });
}

}  // namespace

// u (T, B, H), h0 (B, H), w (H, H), alpha (H,), lengths (B,) int64 or none
//   -> h (T, B, H) = h_1..h_T and drive (T, B, H) (empty unless save_drive).
// K networks at once: every tensor with a leading K (u (K, T, B, H), ..., lengths (K, B)).
// With lengths, row b holds its state from step lengths[b] on: h[t, b] = h[t - 1, b]; drive[t, b]
// is left unwritten there. reverse: the steps run from time index T-1 down to 0 (with lengths, each
// row's from lengths[b]-1 down to 0), h[t] the state after reading u[t], so that h[0] is the last
// state; held steps stay where they are. One parallel region for the whole call (row_blocks.h),
// except in reverse with lengths: each network's rows ordered by length (loops.h), one after another.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& u_, const at::Tensor& h0_, const at::Tensor& w_, const at::Tensor& alpha_,
    int64_t nonlinearity, int64_t placement, bool save_drive, const std::optional<at::Tensor>& lengths,
    bool reverse, bool rates) {
  const bool ensemble = u_.dim() == 4;
  const at::Tensor u = networks_of(u_, ensemble), h0 = networks_of(h0_, ensemble);
  const at::Tensor w = networks_of(w_, ensemble), alpha = networks_of(alpha_, ensemble);
  check_args(h0, w, alpha, {{"u", &u}});
  const int64_t networks = u.size(0), steps = u.size(1), batch = h0.size(1), hidden = h0.size(2);
  at::Tensor h = OutputPool::instance().empty(u.sizes(), u.options());
  at::Tensor drive =
      save_drive ? OutputPool::instance().empty(u.sizes(), u.options()) : at::empty({0}, u.options());
  TORCH_CHECK(!rates || (placement == kVoltage && !(lengths.has_value() && reverse)),
              "rates: the \"voltage\" placement only, and not in reverse with lengths");
  at::Tensor rate = rates ? OutputPool::instance().empty(u.sizes(), u.options()) : at::empty({0}, u.options());
  DenormalsAreZero denormal_guard;
  if (steps > 0 && lengths.has_value() && reverse) {
    const at::Tensor len = networks_of(*lengths, ensemble);
    for (int64_t k = 0; k < networks; ++k) {
      forward_by_length(u[k], h0[k], w[k], alpha[k], nonlinearity, placement, save_drive, len[k], reverse, h[k],
                        save_drive ? drive[k] : drive);
    }
  } else if (steps > 0) {
    // W^T contiguous: MKL's small-matrix path is up to 1.8x slower for a transposed operand (H = 64).
    const at::Tensor w_t = w.transpose(1, 2).contiguous(), keep = 1 - alpha;
    const at::Tensor len = network_lengths(lengths, ensemble, networks, steps, batch);
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "timescale_kernels_cpu::forward", [&] {
      dispatch_activation<ForwardBlocksLoop, scalar_t>(
          nonlinearity, placement, u.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
          w_t.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(), keep.const_data_ptr<scalar_t>(),
          len.defined() ? len.const_data_ptr<int64_t>() : nullptr, h.mutable_data_ptr<scalar_t>(), save_drive ? drive.mutable_data_ptr<scalar_t>() : nullptr, save_drive,
          networks, steps, batch, hidden, TimeOrder{steps, reverse}, rates ? rate.mutable_data_ptr<scalar_t>() : nullptr);
    });
  }
  if (ensemble) return {h, drive, rate};
  return {h.squeeze(0), save_drive ? drive.squeeze(0) : drive, rates ? rate.squeeze(0) : rate};
}

namespace {

// d_alpha (K, H) in alpha's dtype: each network's (P, H) double partial sums added in a fixed order.
at::Tensor sum_partials(const at::Tensor& d_alpha_partial, const at::Tensor& alpha) {
  const int64_t networks = d_alpha_partial.size(0), blocks = d_alpha_partial.size(1);
  const int64_t hidden = d_alpha_partial.size(2);
  at::Tensor d_alpha = at::zeros({networks, hidden}, alpha.options().dtype(at::kDouble));
  double* total = d_alpha.mutable_data_ptr<double>();
  const double* partial = d_alpha_partial.const_data_ptr<double>();
  for (int64_t k = 0; k < networks; ++k) {
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t j = 0; j < hidden; ++j) total[k * hidden + j] += partial[(k * blocks + block) * hidden + j];
    }
  }
  return d_alpha.to(alpha.scalar_type());
}

// One network's backward over rows of different lengths (grad_h, h, drive, d_drive (T, B, H), ...;
// see backward); returns dh0 (B, H) and fills d_alpha_partial (P, H).
at::Tensor backward_by_length(const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0,
                              const at::Tensor& drive, const at::Tensor& w, const at::Tensor& alpha,
                              int64_t nonlinearity, int64_t placement, const at::Tensor& lengths, bool reverse,
                              const at::Tensor& grad_last, at::Tensor d_drive, at::Tensor d_alpha_partial) {
  const int64_t steps = h.size(0), batch = h0.size(0);
  const RowOrder order = order_by_length(lengths, steps, batch, reverse);
  // In reverse by length each row reads grad_h at its own time index: its rows must be in place.
  const at::Tensor grad = reverse && !rows_readable_in_place(grad_h) ? grad_h.contiguous() : grad_h;
  // The adjoint of the last step's state, carried back in row order, zero for the rows that do not
  // run the last step. (A copy: the kernel updates it in place.)
  at::Tensor dh = grad[reverse ? 0 : steps - 1].index_select(0, order.index);
  dh.narrow(0, order.running[steps - 1], batch - order.running[steps - 1]).zero_();
  if (grad_last.defined()) dh.add_(grad_last.index_select(0, order.index));
  const at::Tensor keep = 1 - alpha;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "timescale_kernels_cpu::backward", [&] {
    dispatch_activation<BackwardByLengthLoop, scalar_t>(nonlinearity, placement, grad, h, h0, drive, w, alpha,
                                                        keep, d_drive, dh, d_alpha_partial, order);
  });
  return at::empty_like(dh).index_copy_(0, order.index, dh);
}

// The reverse loop of K networks' blocks of rows (row_blocks.h), lengths (K, B) contiguous or
// undefined (not with reverse); returns dh0.
at::Tensor backward_blocks(const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0,
                           const at::Tensor& drive, const at::Tensor& w, const at::Tensor& alpha,
                           int64_t nonlinearity, int64_t placement, bool reverse, const at::Tensor& lengths,
                           const at::Tensor& grad_last, at::Tensor& d_drive, at::Tensor& d_alpha_partial,
                           bool rates) {
  const int64_t networks = h.size(0), steps = h.size(1), batch = h0.size(1), hidden = h0.size(2);
  // With rates, grad_h (the output's) enters inside the loop, step by step.
  at::Tensor dh = rates ? at::zeros_like(h0) : grad_h.select(1, reverse ? 0 : steps - 1).clone(at::MemoryFormat::Contiguous);
  // A row that does not run the last step gets its grad_h where it is held instead (the loop).
  if (lengths.defined() && !rates) dh.masked_fill_((lengths < steps).unsqueeze(-1), 0);
  if (grad_last.defined()) dh.add_(grad_last);
  const at::Tensor keep = 1 - alpha;
  const int64_t strides[4] = {grad_h.stride(0), grad_h.stride(1), grad_h.stride(2), grad_h.stride(3)};
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "timescale_kernels_cpu::backward", [&] {
    dispatch_activation<BackwardBlocksLoop, scalar_t>(
        nonlinearity, placement, grad_h.const_data_ptr<scalar_t>(), strides, h.const_data_ptr<scalar_t>(),
        h0.const_data_ptr<scalar_t>(), drive.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        alpha.const_data_ptr<scalar_t>(), keep.const_data_ptr<scalar_t>(),
        lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr, d_drive.mutable_data_ptr<scalar_t>(),
        dh.mutable_data_ptr<scalar_t>(), d_alpha_partial.mutable_data_ptr<double>(), networks, steps, batch,
        hidden, TimeOrder{steps, reverse}, rates);
  });
  return dh;
}

}  // namespace

// grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,), lengths (B,) int64 or none,
// grad_last (B, H) or none -> d_drive (T, B, H), dh0 (B, H), d_alpha (H,); K networks at once with
// a leading K on every tensor. With lengths, grad_h[t, b] is ignored and d_drive[t, b] = 0 from step
// lengths[b] on, and the adjoint passes through those steps unchanged. reverse: as in forward.
// grad_last: the gradient of each row's last state (h_n: h[lengths[b] - 1, b], h[T - 1, b], or
// h[0, b] in reverse order), added to the adjoint where the loop starts: it passes unchanged through
// a row's held steps to its last. d_alpha accumulates in double (T * B terms per element), in
// partial sums over blocks of kRowsPerPartial rows added up in a fixed order at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h_, const at::Tensor& h_, const at::Tensor& h0_, const at::Tensor& drive_,
    const at::Tensor& w_, const at::Tensor& alpha_, int64_t nonlinearity, int64_t placement,
    const std::optional<at::Tensor>& lengths, bool reverse, const std::optional<at::Tensor>& grad_last_,
    bool rates) {
  const bool ensemble = h_.dim() == 4;
  const at::Tensor grad_h = networks_of(grad_h_, ensemble), h = networks_of(h_, ensemble);
  const at::Tensor h0 = networks_of(h0_, ensemble), drive = networks_of(drive_, ensemble);
  const at::Tensor w = networks_of(w_, ensemble), alpha = networks_of(alpha_, ensemble);
  check_args(h0, w, alpha, {{"grad_h", &grad_h}, {"h", &h}, {"drive", &drive}}, "grad_h");
  const int64_t networks = h.size(0), steps = h.size(1), batch = h0.size(1), hidden = h0.size(2);
  TORCH_CHECK(grad_h.size(1) == steps && drive.size(1) == steps, "grad_h, h, drive: expected the same T; got ",
              grad_h.size(1), ", ", steps, ", ", drive.size(1));
  at::Tensor grad_last;
  if (grad_last_.has_value() && grad_last_->defined()) {
    grad_last = networks_of(*grad_last_, ensemble);
    TORCH_CHECK(grad_last.sizes() == h0.sizes() && grad_last.scalar_type() == h0.scalar_type() &&
                    grad_last.device().is_cpu(),
                "grad_last: expected a CPU tensor of shape ", h0_.sizes(), " and dtype ", h0.scalar_type(),
                "; got ", grad_last_->sizes(), ", ", grad_last_->scalar_type(), " on ", grad_last_->device());
  }
  TORCH_CHECK(!rates || (placement == kVoltage && !(lengths.has_value() && reverse)),
              "rates: the \"voltage\" placement only, and not in reverse with lengths");
  at::Tensor d_drive = OutputPool::instance().empty(h.sizes(), h.options());
  const int64_t blocks = (batch + kRowsPerPartial - 1) / kRowsPerPartial;
  at::Tensor d_alpha_partial = at::zeros({networks, blocks, hidden}, alpha.options().dtype(at::kDouble));
  at::Tensor dh0 = at::zeros_like(h0);
  if (steps > 0) {
    DenormalsAreZero denormal_guard;
    if (lengths.has_value() && reverse) {
      const at::Tensor len = networks_of(*lengths, ensemble);
      for (int64_t k = 0; k < networks; ++k) {
        dh0[k].copy_(backward_by_length(grad_h[k], h[k], h0[k], drive[k], w[k], alpha[k], nonlinearity, placement,
                                        len[k], reverse, grad_last.defined() ? grad_last[k] : at::Tensor(),
                                        d_drive[k], d_alpha_partial[k]));
      }
    } else {
      const at::Tensor len = network_lengths(lengths, ensemble, networks, steps, batch);
      dh0 = backward_blocks(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, reverse, len, grad_last,
                            d_drive, d_alpha_partial, rates);
    }
  }
  at::Tensor d_alpha = sum_partials(d_alpha_partial, alpha);
  if (ensemble) return {d_drive, dh0, d_alpha};
  return {d_drive.squeeze(0), dh0.squeeze(0), d_alpha.squeeze(0)};
}

namespace {

// The names of the nonlinearities, in the order of their codes.
std::vector<std::string> nonlinearities() {
  return std::vector<std::string>(std::begin(kNonlinearityNames), std::end(kNonlinearityNames));
}

}  // namespace
}  // namespace timescale_kernels

TORCH_LIBRARY(timescale_kernels_cpu, m) {
  m.def(
      "forward(Tensor u, Tensor h0, Tensor w, Tensor alpha, int nonlinearity, int placement, "
      "bool save_drive, Tensor? lengths=None, bool reverse=False, bool rates=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor h, Tensor h0, Tensor drive, Tensor w, Tensor alpha, "
      "int nonlinearity, int placement, Tensor? lengths=None, bool reverse=False, "
      "Tensor? grad_last=None, bool rates=False) -> (Tensor, Tensor, Tensor)");
  // The nonlinearity names in code order (checked against timescale_kernels/ops/choices.py).
  m.def("nonlinearities() -> str[]", &timescale_kernels::nonlinearities);
  // Frees the output blocks kept for reuse (see output_pool.h).
  m.def("empty_cache() -> ()", [] { timescale_kernels::OutputPool::instance().release(); });
  // Whether every value of a float or double tensor is finite: one pass, for the argument checks
  // (torch.isfinite(t).all() makes several ATen calls and tensors; at 64 neurons that shows).
  m.def("all_finite(Tensor t) -> bool", [](const at::Tensor& t) {
    TORCH_CHECK(t.device().is_cpu(), "all_finite: a CPU tensor");
    const at::Tensor c = t.contiguous();
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "timescale_kernels_cpu::all_finite", [&] {
      const scalar_t* data = c.const_data_ptr<scalar_t>();
      for (int64_t i = 0, n = c.numel(); i < n; ++i) finite &= std::isfinite(data[i]);
    });
    return finite;
  });
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
