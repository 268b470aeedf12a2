// The whole leaky-RNN op on the CPU around the serial core, one call each way:
//
//   whole_forward: alpha from tau, the masked recurrent weight, the input projection, the loop
//     (leaky_rnn.cpp), the output zeroed past each row's length and each row's last state;
//   whole_backward: the loop's backward, then the gradient of every tensor (dW, tau, weight_ih, the
//     biases, the input) with the GEMMs and reductions of timescale_kernels/ops (core.py's
//     weight_gradient, eager.py's projections, ensemble.py's batched ones), in the same ATen calls,
//     so that each result has the bits the Python path gives.
//
// At 64 neurons a step's arithmetic takes microseconds and the pieces around the loop, each an ATen
// call from Python with its autograd node, cost more than the loop itself; here they are C++ calls
// with no Python, no autograd node and no dispatch of the wrapper between them (whole_autograd.cpp
// makes the pair one operator with one autograd node). Every tensor may carry a leading network
// dimension K (an ensemble).
//
//   whole_forward(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement, self_connections,
//                 lengths, reverse, save) -> (out, h_n, h, drive, w, alpha, rate)
//   whole_backward(grad_out, grad_h_n, x, h0, w_ih, w, h, drive, rate, alpha, tau, lengths,
//                  nonlinearity, placement, self_connections, reverse, needs) -> 7 gradients
//
// x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), biases (H,) or None, tau (H,) or 0-dim; with K:
// x (K, T, B, I), h0 (K, B, H), w_ih (K, H, I), w_hh (K, H, H), biases (K, H), tau (K, H) or (K, 1).
// out is h, or for "voltage" the rate r = f(v) written by the loop (rate: the same tensor), h_n each
// row's last state (v for "voltage"); h, drive, w, alpha, rate are what the backward takes (empty
// unless save). Not in reverse time order with lengths (the by-length loops), nor with drive noise:
// ops/whole.py sends those calls the Python way.

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <vector>

#include "activations.h"
#include "output_pool.h"
#include "serial_core.h"
#include "whole_op.h"

namespace timescale_kernels {
namespace {

// The Python side's threshold for its pooled projection (ops/eager.py _POOL_MIN_BYTES), where a
// single input's projection becomes an element-wise pass.
constexpr int64_t kPoolMinBytes = int64_t(8) << 20;

// alpha (K, H) contiguous = 1 / clamp(tau, min=1), tau (H,), 0-dim, (K, H) or (K, 1).
at::Tensor alpha_of(const at::Tensor& tau, int64_t networks, int64_t hidden, bool ensemble) {
  at::Tensor recip = at::clamp_min(tau, 1.0).reciprocal();
  if (!ensemble) recip = recip.reshape({1, -1});
  return recip.expand({networks, hidden}).contiguous();
}

// bias_ih + bias_hh, either, or undefined.
at::Tensor bias_sum(const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  if (b_ih.has_value() && b_hh.has_value()) return *b_ih + *b_hh;
  if (b_ih.has_value()) return *b_ih;
  if (b_hh.has_value()) return *b_hh;
  return at::Tensor();
}

// u = x w_ih^T + bias: (T*B, H) for one network (eager.input_projection), (K, T*B, H) for K
// (ensemble._project), with the same ATen operation as the Python path, into a block of the output
// pool (recycled memory) where it is large enough.
at::Tensor projection(const at::Tensor& flat, const at::Tensor& w_ih, const at::Tensor& bias, bool ensemble) {
  const int64_t hidden = w_ih.size(-2), rows = flat.size(-2);
  const std::vector<int64_t> sizes =
      ensemble ? std::vector<int64_t>{flat.size(0), rows, hidden} : std::vector<int64_t>{rows, hidden};
  at::Tensor out = OutputPool::instance().empty(sizes, flat.options());
  if (ensemble) {
    const at::Tensor w_t = w_ih.transpose(1, 2);
    const at::Tensor b = bias.defined() ? bias.unsqueeze(1) : bias;
    if (flat.size(2) == 1) return b.defined() ? at::addcmul_out(out, b, flat, w_t) : at::mul_out(out, flat, w_t);
    return b.defined() ? at::baddbmm_out(out, b, flat, w_t) : at::bmm_out(out, flat, w_t);
  }
  const at::Tensor w_t = w_ih.t();
  if (rows * hidden * flat.element_size() >= kPoolMinBytes && flat.size(1) == 1) {  // eager._PooledProjection
    return bias.defined() ? at::addcmul_out(out, bias, flat, w_t) : at::mul_out(out, flat, w_t);
  }
  return bias.defined() ? at::addmm_out(out, bias, flat, w_t) : at::mm_out(out, flat, w_t);
}

// Rows (k, t, b) with t >= lengths[k, b] of h (K, T, B, H) set to zero.
void zero_past_lengths(at::Tensor& h, const at::Tensor& lengths) {
  const int64_t networks = h.size(0), steps = h.size(1), batch = h.size(2), hidden = h.size(3);
  const at::Tensor len = lengths.contiguous();
  const int64_t* l = len.const_data_ptr<int64_t>();
  char* data = static_cast<char*>(h.data_ptr());
  const int64_t row_bytes = hidden * h.element_size();
  for (int64_t k = 0; k < networks; ++k) {
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = l[k * batch + b]; t < steps; ++t) {
        std::memset(data + ((k * steps + t) * batch + b) * row_bytes, 0, row_bytes);
      }
    }
  }
}

// Each row's last state (K, B, H) of h (K, T, B, H): h[:, 0] in reverse order, h[:, T - 1] without
// lengths, h[k, lengths[k, b] - 1, b] with them; a new tensor.
at::Tensor last_states(const at::Tensor& h, const std::optional<at::Tensor>& lengths, bool reverse) {
  const int64_t steps = h.size(1);
  if (reverse || !lengths.has_value()) return h.select(1, reverse ? 0 : steps - 1).clone();
  const int64_t networks = h.size(0), batch = h.size(2), hidden = h.size(3);
  at::Tensor last = at::empty({networks, batch, hidden}, h.options());
  const at::Tensor len = lengths->contiguous();
  const int64_t* l = len.const_data_ptr<int64_t>();
  const int64_t row_bytes = hidden * h.element_size();
  const char* src = static_cast<const char*>(h.const_data_ptr());
  char* dst = static_cast<char*>(last.data_ptr());
  for (int64_t k = 0; k < networks; ++k) {
    for (int64_t b = 0; b < batch; ++b) {
      std::memcpy(dst + (k * batch + b) * row_bytes, src + ((k * steps + l[k * batch + b] - 1) * batch + b) * row_bytes,
                  row_bytes);
    }
  }
  return last;
}

at::Tensor lead(const at::Tensor& t, bool ensemble) { return ensemble ? t : t.unsqueeze(0); }
at::Tensor unlead(const at::Tensor& t, bool ensemble) { return ensemble ? t : t.squeeze(0); }

}  // namespace

std::vector<at::Tensor> whole_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                      const std::optional<at::Tensor>& b_hh, const at::Tensor& tau,
                                      int64_t nonlinearity, int64_t placement, bool self_connections,
                                      const std::optional<at::Tensor>& lengths, bool reverse, bool save) {
  const bool ensemble = x.dim() == 4;
  TORCH_CHECK(!(reverse && lengths.has_value()), "whole_forward: not in reverse time order with lengths");
  const int64_t steps = x.size(-3), batch = x.size(-2), in_size = x.size(-1), hidden = w_hh.size(-1);
  const int64_t networks = ensemble ? x.size(0) : 1;
  const at::Tensor alpha = alpha_of(tau, networks, hidden, ensemble);
  at::Tensor w = lead(w_hh, ensemble);
  if (!self_connections) {
    w = w.clone(at::MemoryFormat::Contiguous);
    w.diagonal(0, -2, -1).zero_();
  }
  const at::Tensor flat = ensemble ? x.reshape({networks, steps * batch, in_size}) : x.reshape({steps * batch, in_size});
  const at::Tensor u = projection(flat, w_ih, bias_sum(b_ih, b_hh), ensemble).view({networks, steps, batch, hidden});
  const bool rates = placement == kVoltage;
  const std::optional<at::Tensor> len =
      lengths.has_value() ? std::optional<at::Tensor>(lead(*lengths, ensemble)) : std::nullopt;
  auto [h, drive, rate] = forward(u, lead(h0, ensemble).contiguous(), w.contiguous(), alpha, nonlinearity, placement,
                                  save, len, reverse, rates);
  if (len.has_value() && !rates) zero_past_lengths(h, *len);  // "voltage": the loop zeroed the rates
  at::Tensor h_n = last_states(h, len, reverse);
  at::Tensor out = rates ? rate : h;
  at::Tensor none = at::empty({0}, x.options());
  return {unlead(out, ensemble), unlead(h_n, ensemble), save ? h : none, save ? drive : none, save ? w : none,
          save ? alpha : none, save && rates ? rate : none};
}

namespace {

// f(x) with torch's own functions (reference.activation), for the bits the Python path gives.
at::Tensor activation(const at::Tensor& x, int64_t nonlinearity) {
  switch (nonlinearity) {
    case kLeakyRelu: return at::leaky_relu(x, kLeakySlope);
    case kRelu: return at::relu(x);
    case kTanh: return at::tanh(x);
    case kSigmoid: return at::sigmoid(x);
    default: return x;
  }
}

// core.weight_gradient of one network: d_drive, h (T, B, H), h0 (B, H), lengths (B,) or undefined.
at::Tensor weight_gradient(const at::Tensor& d_drive, const at::Tensor& h, const at::Tensor& h0,
                           const at::Tensor& lengths, bool reverse) {
  const int64_t steps = h.size(0), hidden = h.size(2);
  at::Tensor dw = at::mm(d_drive[reverse ? steps - 1 : 0].t(), h0);
  if (steps == 1) return dw;
  at::Tensor d_rows = (reverse ? d_drive.narrow(0, 0, steps - 1) : d_drive.narrow(0, 1, steps - 1)).reshape({-1, hidden});
  at::Tensor h_rows = (reverse ? h.narrow(0, 1, steps - 1) : h.narrow(0, 0, steps - 1)).reshape({-1, hidden});
  if (lengths.defined()) {  // the pairs still running (forward order): later step t < lengths[b]
    const at::Tensor len = lengths.contiguous();
    const int64_t* l = len.const_data_ptr<int64_t>();
    const int64_t batch = len.numel();
    if (batch > 0 && std::all_of(l, l + batch, [&](int64_t v) { return v == l[0]; })) {
      // Every row of the same length (an ensemble's network whose sequences were padded): the
      // running pairs are the first (L - 1) * B rows, the same rows in the same order as the gather
      // would give, without copying them.
      d_rows = d_rows.narrow(0, 0, (l[0] - 1) * batch);
      h_rows = h_rows.narrow(0, 0, (l[0] - 1) * batch);
    } else {
      const at::Tensor later = at::arange(1, steps, lengths.options());
      const at::Tensor running = (later.unsqueeze(1) < lengths).flatten().nonzero().squeeze(1);
      d_rows = d_rows.index_select(0, running);
      h_rows = h_rows.index_select(0, running);
    }
  }
  return dw.addmm(d_rows.t(), h_rows);
}

// core._network_weight_gradient: (K, H, H).
at::Tensor network_weight_gradient(const at::Tensor& d_drive, const at::Tensor& h, const at::Tensor& h0,
                                   const std::optional<at::Tensor>& lengths, bool reverse) {
  const int64_t networks = h.size(0), steps = h.size(1), hidden = h.size(3);
  if (lengths.has_value()) {
    std::vector<at::Tensor> per;
    for (int64_t k = 0; k < networks; ++k) per.push_back(weight_gradient(d_drive[k], h[k], h0[k], (*lengths)[k], reverse));
    return at::stack(per);
  }
  at::Tensor dw = at::bmm(d_drive.select(1, reverse ? steps - 1 : 0).transpose(1, 2), h0);
  if (steps == 1) return dw;
  const at::Tensor d_rows = (reverse ? d_drive.narrow(1, 0, steps - 1) : d_drive.narrow(1, 1, steps - 1))
                                .reshape({networks, -1, hidden});
  const at::Tensor h_rows =
      (reverse ? h.narrow(1, 1, steps - 1) : h.narrow(1, 0, steps - 1)).reshape({networks, -1, hidden});
  return dw.baddbmm(d_rows.transpose(1, 2), h_rows);
}

// The input projection's gradients (ensemble._Projection's for K networks, addmm's or
// eager._PooledProjection's for one) into out[0] (x), out[2] (w_ih), out[4] and out[5] (the biases).
void projection_gradients(const at::Tensor& d_drive, const at::Tensor& x, const at::Tensor& w_ih,
                          const std::array<bool, 7>& needs, bool ensemble, std::vector<at::Tensor>& out) {
  const int64_t networks = d_drive.size(0), steps = d_drive.size(1), batch = d_drive.size(2);
  const int64_t hidden = d_drive.size(3), in_size = x.size(-1);
  if (ensemble) {  // ensemble._Projection
    const at::Tensor d_u = d_drive.view({networks, steps * batch, hidden});
    const at::Tensor flat = x.reshape({networks, steps * batch, in_size});
    if (needs[0]) out[0] = at::bmm(d_u, w_ih).view(x.sizes());
    if (needs[2]) out[2] = at::bmm(flat.transpose(1, 2), d_u).transpose(1, 2);
    if (needs[4] || needs[5]) {
      const at::Tensor d_bias = d_u.sum(1);
      if (needs[4]) out[4] = d_bias;
      if (needs[5]) out[5] = d_bias;
    }
  } else {
    const at::Tensor d_u = d_drive.view({steps * batch, hidden});
    const at::Tensor flat = x.reshape({steps * batch, in_size});
    if (needs[0]) {
      at::Tensor d_flat = OutputPool::instance().empty({steps * batch, in_size}, d_drive.options());
      at::mm_out(d_flat, d_u, w_ih);
      out[0] = d_flat.view(x.sizes());
    }
    if (needs[2]) out[2] = d_u.t().mm(flat);  // as addmm's backward computes it for a transposed operand
    if (needs[4] || needs[5]) {
      const at::Tensor d_bias = d_u.sum(0);
      if (needs[4]) out[4] = d_bias;
      if (needs[5]) out[5] = d_bias;
    }
  }
}

}  // namespace

std::vector<at::Tensor> whole_backward(const std::optional<at::Tensor>& grad_out,
                                       const std::optional<at::Tensor>& grad_h_n, const at::Tensor& x,
                                       const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w,
                                       const at::Tensor& h, const at::Tensor& drive, const at::Tensor& rate,
                                       const at::Tensor& alpha, const at::Tensor& tau,
                                       const std::optional<at::Tensor>& lengths, int64_t nonlinearity,
                                       int64_t placement, bool self_connections, bool reverse,
                                       std::array<bool, 7> needs) {
  const bool ensemble = x.dim() == 4;
  const bool rates = placement == kVoltage;
  const int64_t hidden = h.size(3);
  const at::Tensor h0k = lead(h0, ensemble).contiguous();
  const std::optional<at::Tensor> len =
      lengths.has_value() ? std::optional<at::Tensor>(lead(*lengths, ensemble)) : std::nullopt;
  // No gradient from outside: one zero row stands for all of it (strides 0).
  const at::Tensor grad = grad_out.has_value() ? lead(*grad_out, ensemble)
                                               : at::zeros({1, 1, 1, hidden}, h.options()).expand(h.sizes());
  std::optional<at::Tensor> grad_last;
  if (grad_h_n.has_value()) grad_last = lead(*grad_h_n, ensemble).contiguous();
  auto [d_drive, dh0, d_alpha] = backward(grad, h, h0k, drive, w, alpha, nonlinearity, placement, len, reverse,
                                          grad_last, rates);
  std::vector<at::Tensor> out(7, at::empty({0}, h.options()));
  if (needs[1]) out[1] = unlead(dh0, ensemble);
  if (needs[3]) {
    const at::Tensor states = rates ? rate : h;
    const at::Tensor first = rates ? activation(h0k, nonlinearity) : h0k;
    at::Tensor dw = ensemble ? network_weight_gradient(d_drive, states, first, len, reverse)
                             : weight_gradient(d_drive[0], states[0], first[0], len.has_value() ? (*len)[0] : at::Tensor(),
                                               reverse);
    if (!self_connections) dw.diagonal(0, -2, -1).zero_();
    out[3] = dw;
  }
  if (needs[6]) {  // eager._RecurrenceOfParams: clamp's mask, then reciprocal's derivative
    const at::Tensor recip = at::clamp_min(tau, 1.0).reciprocal();
    const at::Tensor d_recip = unlead(d_alpha, ensemble).sum_to_size(recip.sizes());
    out[6] = at::where(tau >= 1.0, -d_recip * (recip * recip), at::zeros({}, tau.options()));
  }
  if (needs[0] || needs[2] || needs[4] || needs[5]) projection_gradients(d_drive, x, w_ih, needs, ensemble, out);
  return out;
}

}  // namespace timescale_kernels
