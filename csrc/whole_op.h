// The whole op's two C++ halves (whole_op.cpp), for the autograd node around them
// (whole_autograd.cpp). Shapes: whole_op.cpp's header comment.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <vector>

namespace timescale_kernels {

// -> (out, h_n, h, drive, w, alpha, rate); the last five are what whole_backward takes (empty unless save).
std::vector<at::Tensor> whole_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                                      const std::optional<at::Tensor>& b_hh, const at::Tensor& tau,
                                      int64_t nonlinearity, int64_t placement, bool self_connections,
                                      const std::optional<at::Tensor>& lengths, bool reverse, bool save);

// needs: which of (x, h0, w_ih, w_hh, b_ih, b_hh, tau) want a gradient. Returns the seven gradients,
// each shaped as its tensor (an empty tensor where not wanted).
std::vector<at::Tensor> whole_backward(const std::optional<at::Tensor>& grad_out,
                                       const std::optional<at::Tensor>& grad_h_n, const at::Tensor& x,
                                       const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w,
                                       const at::Tensor& h, const at::Tensor& drive, const at::Tensor& rate,
                                       const at::Tensor& alpha, const at::Tensor& tau,
                                       const std::optional<at::Tensor>& lengths, int64_t nonlinearity,
                                       int64_t placement, bool self_connections, bool reverse,
                                       std::array<bool, 7> needs);

}  // namespace timescale_kernels
