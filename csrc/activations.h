// Element-wise nonlinearities of the leaky RNN and their derivatives, written so that the
// compiler can vectorise loops over them (no calls into libm for float, only selects and
// polynomials). The double versions call libm: double is for gradient checks, not speed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace timescale_kernels {

// The nonlinearities, one X(code, name) each. A nonlinearity's integer code is its position in
// this list, which must be the order of NONLINEARITIES in timescale_kernels/ops/choices.py: the
// extension reports the names (torch.ops.timescale_kernels_cpu.nonlinearities()) and a test checks
// that the two lists agree. A new nonlinearity is one line here plus its cases in activate() and
// derivative() below.
#define TK_NONLINEARITIES(X) \
  X(kLeakyRelu, "leaky_relu")  \
  X(kRelu, "relu")             \
  X(kTanh, "tanh")             \
  X(kSigmoid, "sigmoid")       \
  X(kIdentity, "identity")

#define TK_ENUM_ENTRY(CODE, NAME) CODE,
enum Nonlinearity : int64_t { TK_NONLINEARITIES(TK_ENUM_ENTRY) kNumNonlinearities };
#undef TK_ENUM_ENTRY

#define TK_NAME_ENTRY(CODE, NAME) NAME,
inline constexpr const char* kNonlinearityNames[] = {TK_NONLINEARITIES(TK_NAME_ENTRY)};
#undef TK_NAME_ENTRY

// Placement codes: positions in PLACEMENTS of timescale_kernels/ops/choices.py.
enum Placement : int64_t { kOutside = 0, kInside = 1, kVoltage = 2 };

constexpr double kLeakySlope = 0.01;

// exp for float with a Cephes polynomial, ~1 ulp on the clamped range. The clamp keeps
// 2^n a normal float, so callers never see inf or NaN from it.
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float tanh_approx(float x) {
  // Small |x|: odd polynomial (Cephes tanhf), exact to ~1 ulp where 1 - 2/(e+1) would cancel.
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * z * p;
  const float ax = std::fabs(x);
  const float large = 1.0f - 2.0f / (exp_approx(2.0f * ax) + 1.0f);
  return ax < 0.625f ? small : std::copysign(large, x);
}

inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double tanh_approx(double x) { return std::tanh(x); }
inline double sigmoid_approx(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Zero for |x| below the smallest normal: keeps decaying states and gradients off the slow
// denormal path in the next step's GEMM on any CPU, whatever the FP control register says.
template <typename T>
inline T flush(T x) {
  return std::fabs(x) < std::numeric_limits<T>::min() ? T(0) : x;
}

template <int64_t NL, typename T>
inline T activate(T z) {
  if constexpr (NL == kLeakyRelu) return z > T(0) ? z : z * T(kLeakySlope);
  if constexpr (NL == kRelu) return z > T(0) ? z : T(0);
  if constexpr (NL == kTanh) return tanh_approx(z);
  if constexpr (NL == kSigmoid) return sigmoid_approx(z);
  return z;
}

// f'(z) given the pre-activation z and the output y = f(z): tanh and sigmoid use y (the same
// formulas autograd uses, so the two agree bit for bit on y); a function whose derivative is
// simpler in z (the ReLUs; softplus, ELU, GELU) uses z. Callers pass y only where
// derivative_needs_output says it is read, so that the others need not load it.
template <int64_t NL>
constexpr bool derivative_needs_output = NL == kTanh || NL == kSigmoid;

template <int64_t NL, typename T>
inline T derivative(T z, T y) {
  if constexpr (NL == kLeakyRelu) return z > T(0) ? T(1) : T(kLeakySlope);
  if constexpr (NL == kRelu) return z > T(0) ? T(1) : T(0);
  if constexpr (NL == kTanh) return T(1) - y * y;
  if constexpr (NL == kSigmoid) return y * (T(1) - y);
  return T(1);
}

// f'(z) from the pre-activation z alone (the "voltage" placement's state is z itself).
template <int64_t NL, typename T>
inline T derivative_at(T z) {
  return derivative<NL>(z, derivative_needs_output<NL> ? activate<NL>(z) : T(0));
}

}  // namespace timescale_kernels
