// A time step's GEMM, called directly: no ATen dispatch, no tensor, no allocation, so that a
// time step of a small network costs its arithmetic. float: torch's batch-reduce GEMM
// (at::native::cpublas::brgemm, oneDNN's ukernel JIT-compiled once per shape and thread, on x86
// with AVX2 or later; elsewhere it calls the BLAS). At 64-500 neurons it skips the packing that
// MKL's sgemm does on every call: 10-30% less time per step's GEMM on AVX-512 (benchmarks/NOTES.md).
// double: the BLAS that torch links (MKL in torch's CPU wheels). Inside a parallel region each
// call runs on the calling thread.
#pragma once

#include <ATen/native/CPUBlas.h>
#include <c10/util/Exception.h>

#include <cstdint>

extern "C" {
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace timescale_kernels {

// C (rows, n) = beta * C + A (rows, k) B (k, n), all row-major with leading dimensions lda, ldb, ldc;
// beta 0 (C is written, never read) or 1. (Row-major C = A B is column-major C^T = B^T A^T: the
// operands swap places in the Fortran call.)
template <typename T>
inline void gemm_rows(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                      T beta, T* c, int64_t ldc) {
  if (rows == 0 || n == 0) return;
  TORCH_INTERNAL_ASSERT(beta == T(0) || beta == T(1));
  if constexpr (sizeof(T) == sizeof(float)) {
    at::native::cpublas::brgemm(rows, n, k, lda, ldb, ldc, beta != T(0), a, b, c, false);
  } else {
    const char no = 'N';
    const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
    const int lda_ = static_cast<int>(ldb), ldb_ = static_cast<int>(lda), ldc_ = static_cast<int>(ldc);
    const T one = T(1);
    dgemm_(&no, &no, &m_, &n_, &k_, &one, b, &lda_, a, &ldb_, &beta, c, &ldc_);
  }
}

}  // namespace timescale_kernels
