// The serial core's two entry points (leaky_rnn.cpp), for the other translation units (whole_op.cpp).
// Shapes and semantics: leaky_rnn.cpp and timescale_kernels/ops/core.py.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace timescale_kernels {

// u (K, T, B, H) or (T, B, H), h0, w, alpha likewise -> (h, drive, rate).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w, const at::Tensor& alpha, int64_t nonlinearity,
    int64_t placement, bool save_drive, const std::optional<at::Tensor>& lengths, bool reverse, bool rates);

// -> (d_drive, dh0, d_alpha).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& h, const at::Tensor& h0, const at::Tensor& drive,
    const at::Tensor& w, const at::Tensor& alpha, int64_t nonlinearity, int64_t placement,
    const std::optional<at::Tensor>& lengths, bool reverse, const std::optional<at::Tensor>& grad_last, bool rates);

}  // namespace timescale_kernels
