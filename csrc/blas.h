// The BLAS that torch links (MKL in torch's CPU wheels), called directly: no ATen dispatch, no
// tensor, no allocation, so that a time step of a small network costs its arithmetic. Inside a
// parallel region MKL runs each call on the calling thread.
#pragma once

#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace timescale_kernels {

// C (rows, n) = beta * C + A (rows, k) B (k, n), all row-major with leading dimensions lda, ldb, ldc.
// (Row-major C = A B is column-major C^T = B^T A^T: the operands swap places in the Fortran call.)
template <typename T>
inline void gemm_rows(int64_t rows, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                      T beta, T* c, int64_t ldc) {
  if (rows == 0 || n == 0) return;
  const char no = 'N';
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
  const int lda_ = static_cast<int>(ldb), ldb_ = static_cast<int>(lda), ldc_ = static_cast<int>(ldc);
  const T one = T(1);
  if constexpr (sizeof(T) == sizeof(float)) {
    sgemm_(&no, &no, &m_, &n_, &k_, &one, b, &lda_, a, &ldb_, &beta, c, &ldc_);
  } else {
    dgemm_(&no, &no, &m_, &n_, &k_, &one, b, &lda_, a, &ldb_, &beta, c, &ldc_);
  }
}

}  // namespace timescale_kernels
