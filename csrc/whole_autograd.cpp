// The whole op as one operator with its autograd node in C++:
//
//   whole(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement, self_connections, lengths,
//         reverse) -> (out, h_n)
//
// Shapes and semantics: whole_op.cpp. Its CPU kernel runs whole_forward alone (no autograd, nothing
// saved); its Autograd kernel, where a gradient is wanted, records one node (WholeNode) whose
// backward runs whole_backward. At 64 neurons a call's arithmetic takes a few hundred
// microseconds, and a Python autograd Function around the two C++ calls (its apply, its saved
// tensors, the engine's call back into Python) cost a sizeable share of it; here the engine calls
// C++ directly.
//
// Gradients of gradients are not supported (the backward kernels are not differentiable): where
// autograd records the backward (create_graph=True), the gradients come out of a second node whose
// own backward raises, naming the reference backend, which supports them.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "whole_op.h"

namespace timescale_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kInputs = 7;  // x, h0, w_ih, w_hh, b_ih, b_hh, tau: the tensors that may want a gradient

std::optional<at::Tensor> present(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// What the backward needs besides the incoming gradients, in whole_backward's order from x to tau.
struct Saved {
  at::Tensor x, h0, w_ih, w, h, drive, rate, alpha, tau, lengths;
  // From ten tensors in that order, the first at v[at].
  static Saved from(const std::vector<at::Tensor>& v, size_t at) {
    return {v[at], v[at + 1], v[at + 2], v[at + 3], v[at + 4], v[at + 5], v[at + 6], v[at + 7], v[at + 8], v[at + 9]};
  }
};

std::vector<at::Tensor> run_backward(const at::Tensor& grad_out, const at::Tensor& grad_h_n, const Saved& s,
                                     int64_t nonlinearity, int64_t placement, bool self_connections, bool reverse,
                                     std::array<bool, kInputs> needs) {
  return whole_backward(present(grad_out), present(grad_h_n), s.x, s.h0, s.w_ih, s.w, s.h, s.drive, s.rate, s.alpha,
                        s.tau, present(s.lengths), nonlinearity, placement, self_connections, reverse, needs);
}

// The first-order gradients where autograd records the backward: tensors = (grad_out, grad_h_n, then
// Saved's ten in order, then every input of the op), any of them undefined; connected = the defined
// ones, the node's inputs (autograd takes no undefined tensor as an input).
struct SecondOrderGuard : public torch::autograd::Function<SecondOrderGuard> {
  static variable_list forward(AutogradContext* ctx, at::TensorList connected, const std::vector<at::Tensor>& tensors,
                               int64_t nonlinearity, int64_t placement, bool self_connections, bool reverse,
                               std::array<bool, kInputs> needs) {
    return run_backward(tensors[0], tensors[1], Saved::from(tensors, 2), nonlinearity, placement, self_connections,
                        reverse, needs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The text of core.second_derivative_error("cpu") (tests/test_whole_op.py compares them).
    TORCH_CHECK(false,
                "leaky_rnn: gradients of gradients (create_graph=True) are not supported by the 'cpu' backend; "
                "use backend='reference', which supports them");
  }
};

struct WholeNode : public torch::autograd::Function<WholeNode> {
  // The biases and lengths may be absent (autograd takes no undefined tensor as an input).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& h0,
                               const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh, const at::Tensor& tau, int64_t nonlinearity,
                               int64_t placement, bool self_connections, const std::optional<at::Tensor>& lengths,
                               bool reverse) {
    std::vector<at::Tensor> r = whole_forward(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement,
                                              self_connections, lengths, reverse, true);
    // x, h0, w_ih, w, h, drive, rate, alpha, tau, lengths (Saved's order), then w_hh and the biases:
    // inputs the second-order guard connects to.
    ctx->save_for_backward({x, h0, w_ih, r[4], r[2], r[3], r[6], r[5], tau, lengths.value_or(at::Tensor()), w_hh,
                            b_ih.value_or(at::Tensor()), b_hh.value_or(at::Tensor())});
    ctx->saved_data["options"] = std::vector<int64_t>{nonlinearity, placement, self_connections, reverse,
                                                      b_ih.has_value(), b_hh.has_value()};
    ctx->set_materialize_grads(false);
    return {r[0], r[1]};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(12);  // one per argument of forward; the options get none
    const std::vector<int64_t> o = ctx->saved_data["options"].toIntVector();
    // The node's input edges skip the absent biases: argument i is edge edge[i].
    std::array<bool, kInputs> needs{};
    bool any = false;
    for (int i = 0, edge = 0; i < kInputs; ++i) {
      const bool absent = (i == 4 && o[4] == 0) || (i == 5 && o[5] == 0);
      if (!absent) any |= needs[i] = ctx->needs_input_grad(edge++);
    }
    if (!any || (!grads[0].defined() && !grads[1].defined())) return result;
    const variable_list saved = ctx->get_saved_variables();
    std::vector<at::Tensor> g;
    if (at::GradMode::is_enabled()) {  // create_graph=True
      std::vector<at::Tensor> tensors{grads[0], grads[1]}, connected;
      tensors.insert(tensors.end(), saved.begin(), saved.end());
      for (const at::Tensor& t : tensors) {
        if (t.defined()) connected.push_back(t);
      }
      g = SecondOrderGuard::apply(at::TensorList(connected), tensors, o[0], o[1], o[2] != 0, o[3] != 0, needs);
    } else {
      g = run_backward(grads[0], grads[1], Saved::from(saved, 0), o[0], o[1], o[2] != 0, o[3] != 0, needs);
    }
    for (int i = 0; i < kInputs; ++i) {
      if (needs[i]) result[i] = g[i];
    }
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> whole_cpu(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                                             const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                             const std::optional<at::Tensor>& b_hh, const at::Tensor& tau,
                                             int64_t nonlinearity, int64_t placement, bool self_connections,
                                             const std::optional<at::Tensor>& lengths, bool reverse) {
  std::vector<at::Tensor> r = whole_forward(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement,
                                            self_connections, lengths, reverse, false);
  return {r[0], r[1]};
}

std::tuple<at::Tensor, at::Tensor> whole_autograd(const at::Tensor& x, const at::Tensor& h0,
                                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                  const std::optional<at::Tensor>& b_ih,
                                                  const std::optional<at::Tensor>& b_hh, const at::Tensor& tau,
                                                  int64_t nonlinearity, int64_t placement, bool self_connections,
                                                  const std::optional<at::Tensor>& lengths, bool reverse) {
  bool wanted = false;
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor* t : {&x, &h0, &w_ih, &w_hh, &tau}) wanted |= t->requires_grad();
    for (const std::optional<at::Tensor>* t : {&b_ih, &b_hh}) wanted |= t->has_value() && (*t)->requires_grad();
  }
  if (!wanted) {
    at::AutoDispatchBelowADInplaceOrView below;
    return whole_cpu(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement, self_connections, lengths, reverse);
  }
  variable_list r = WholeNode::apply(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement, self_connections,
                                     lengths, reverse);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace timescale_kernels

TORCH_LIBRARY_FRAGMENT(timescale_kernels_cpu, m) {
  m.def(
      "whole(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor tau, "
      "int nonlinearity, int placement, bool self_connections, Tensor? lengths, bool reverse) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(timescale_kernels_cpu, CPU, m) { m.impl("whole", &timescale_kernels::whole_cpu); }

TORCH_LIBRARY_IMPL(timescale_kernels_cpu, Autograd, m) { m.impl("whole", &timescale_kernels::whole_autograd); }
