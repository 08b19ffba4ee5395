/* onnxforge CPU kernels linked into compiled x86/arm64 modules (cpu_kernels="blas").
 *
 * Thin wrappers around OpenBLAS's cblas_sgemm (the scipy-openblas32 build: symbols
 * prefixed "scipy_"), called from TIR through T.call_extern. The library itself is
 * linked as a DT_NEEDED dependency of the module (see codegen/cpu/blas.py).
 * Compiled by the target's C/C++ compiler at export time (as an export_library addon).
 */
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef ONNXFORGE_BLAS_PREFIX_SCIPY
#define ONNXFORGE_BLAS_PREFIX_SCIPY 1
#endif

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

#if ONNXFORGE_BLAS_PREFIX_SCIPY
void scipy_cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                       const float *b, int ldb, float beta, float *c, int ldc);
#define SGEMM scipy_cblas_sgemm
#else
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
#define SGEMM cblas_sgemm
#endif

/* C[b] (m x n) = op(A[b]) (m x k) @ op(B[b]) (k x n) [+ bias], for b < batch.
 * stride_a / stride_b: elements between batches (0: broadcast the same matrix).
 * bias_kind: 0 none, 1 one value per column (n values), 2 one value per row (m values). */
int32_t onnxforge_sgemm(int32_t batch, int32_t m, int32_t n, int32_t k, const float *a, int64_t stride_a,
                        int32_t trans_a, const float *b, int64_t stride_b, int32_t trans_b, float *c,
                        const float *bias, int32_t bias_kind) {
  int lda = trans_a ? m : k;
  int ldb = trans_b ? k : n;
  for (int32_t i = 0; i < batch; ++i) {
    float *ci = c + (int64_t)i * m * n;
    float beta = 0.0f;
    if (bias_kind == 1) {
      for (int32_t r = 0; r < m; ++r)
        for (int32_t j = 0; j < n; ++j) ci[(int64_t)r * n + j] = bias[j];
      beta = 1.0f;
    } else if (bias_kind == 2) {
      for (int32_t r = 0; r < m; ++r)
        for (int32_t j = 0; j < n; ++j) ci[(int64_t)r * n + j] = bias[r];
      beta = 1.0f;
    }
    SGEMM(RowMajor, trans_a ? Trans : NoTrans, trans_b ? Trans : NoTrans, m, n, k, 1.0f, a + (int64_t)i * stride_a,
          lda, b + (int64_t)i * stride_b, ldb, beta, ci, n);
  }
  return 0;
}

#ifdef __cplusplus
}
#endif
