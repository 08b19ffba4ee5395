/* onnxforge CPU kernels linked into compiled x86/arm64 modules (cpu_kernels="blas").
 *
 * Thin wrappers around OpenBLAS's cblas_sgemm (the scipy-openblas32 build: symbols
 * prefixed "scipy_"), called from TIR through T.call_extern. The library itself is
 * linked as a DT_NEEDED dependency of the module (see codegen/cpu/blas.py).
 * Compiled by the target's C/C++ compiler at export time (as an export_library addon).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "activation.h"
#include "thread_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hot loops: vectorised (-O3), compiled once per ISA (DW_VARIANT). */
#if defined(__GNUC__) && !defined(__clang__)
#define DW_OPT __attribute__((optimize("O3")))
#else
#define DW_OPT
#endif

#ifndef ONNXFORGE_BLAS_PREFIX_SCIPY
#define ONNXFORGE_BLAS_PREFIX_SCIPY 1
#endif

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };

#if ONNXFORGE_BLAS_PREFIX_SCIPY
void scipy_cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                       const float *b, int ldb, float beta, float *c, int ldc);
void scipy_openblas_set_num_threads(int n);
void scipy_cblas_sgemv(int order, int ta, int m, int n, float alpha, const float *a, int lda, const float *x,
                       int incx, float beta, float *y, int incy);
#define SGEMM scipy_cblas_sgemm
#define SGEMV scipy_cblas_sgemv
#define BLAS_SET_THREADS scipy_openblas_set_num_threads
#else
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc);
void openblas_set_num_threads(int n);
void cblas_sgemv(int order, int ta, int m, int n, float alpha, const float *a, int lda, const float *x, int incx,
                 float beta, float *y, int incy);
#define SGEMM cblas_sgemm
#define SGEMV cblas_sgemv
#define BLAS_SET_THREADS openblas_set_num_threads
#endif

/* C[b] (m x n) = act(op(A[b]) (m x k) @ op(B[b]) (k x n) [+ bias]), for b < batch.
 * stride_a / stride_b: elements between batches (0: broadcast the same matrix).
 * bias_kind: 0 none, 1 one value per column (n values), 2 one value per row (m values).
 * act, lo, hi, alpha, beta: the activation (activation.h: none, Relu/Clip, SiLU,
 * HardSwish). Bias and activation are the conv/matmul epilogue blas.py folds in
 * (otherwise one more pass over the whole output in memory); they run on column
 * chunks of C right after SGEMM wrote them (in L2).
 *
 * Threads: OpenBLAS runs single-threaded and the work is split over TVM's thread pool
 * (the one every other kernel of the module uses) in stripes of whole batches, rows
 * or columns. With OpenBLAS's own threads next to TVM's pool, any other busy
 * process on the machine made the two pools fight: EfficientNet-Lite0 went from
 * 17 ms to 92 ms with one background job (29 ms with a single pool). */
typedef struct {
  int32_t batch, m, n, k;
  const float *a, *b, *bias;
  int64_t stride_a, stride_b;
  int32_t trans_a, trans_b, bias_kind;
  float *c;
  Act act;
  int32_t split;  /* 0: batches, 1: rows of C, 2: columns of C */
  int32_t parts;  /* units of the split dimension */
} SgemmJob;

/* Columns per SGEMM call when an epilogue follows: the chunk of C (rows x cols floats)
 * stays in L2 (~128 KiB) between the product and the epilogue pass over it. */
static int32_t epilogue_chunk(int32_t rows) {
  int32_t cols = (32768 / (rows > 0 ? rows : 1)) & ~15;
  return cols < 64 ? 64 : cols;
}

/* c[r][q] = act(c[r][q] + bias_col[q] + bias_row[r]) (either bias may be NULL). */
static inline __attribute__((always_inline)) void sgemm_epilogue_body(float *c, int32_t ldc, int32_t rows,
                                                                      int32_t cols, const float *bias_col,
                                                                      const float *bias_row, const Act *act) {
  for (int32_t r = 0; r < rows; ++r) act_row(c + (int64_t)r * ldc, cols, bias_col, bias_row ? bias_row[r] : 0.0f, act);
}

/* The ISA-specific functions (DW_VARIANT below): depthwise planes, the epilogue. */
typedef struct {
  void (*flat)(const float *, const float *, float, float *, float *, int, int, int, int, int, int, int);
  void (*rows)(const float *, const float *, float, float *, float *, int, int, int, int, int, int, int, int, int,
               int, int);
  void (*epilogue)(float *, int32_t, int32_t, int32_t, const float *, const float *, const Act *);
  void (*softmax)(const float *, float *, int32_t);
  void (*layer_norm)(const float *, const float *, const float *, float, float *, int32_t);
  float (*mean)(const float *, int32_t);
  float (*max)(const float *, int32_t);
  float (*min)(const float *, int32_t);
} KernelSet;
static const KernelSet *kernel_set(void);

static void sgemm_block(const SgemmJob *j, int32_t bi, int32_t r0, int32_t r1, int32_t c0, int32_t c1) {
  int lda = j->trans_a ? j->m : j->k;
  int ldb = j->trans_b ? j->k : j->n;
  int32_t rows = r1 - r0;
  if (rows <= 0 || c1 <= c0) return;
  const float *a = j->a + (int64_t)bi * j->stride_a + (j->trans_a ? (int64_t)r0 : (int64_t)r0 * j->k);
  int epilogue = j->bias_kind || j->act.kind != ACT_NONE;
  int32_t chunk = c1 - c0;
  if (epilogue && chunk > epilogue_chunk(rows)) { /* equal chunks, multiples of 16: no short last call */
    int32_t n = (chunk + epilogue_chunk(rows) - 1) / epilogue_chunk(rows);
    chunk = ((chunk + n - 1) / n + 15) & ~15;
  }
  for (int32_t q0 = c0; q0 < c1; q0 += chunk) {
    int32_t cols = c1 - q0 < chunk ? c1 - q0 : chunk;
    const float *b = j->b + (int64_t)bi * j->stride_b + (j->trans_b ? (int64_t)q0 * j->k : (int64_t)q0);
    float *c = j->c + (int64_t)bi * j->m * j->n + (int64_t)r0 * j->n + q0;
    SGEMM(RowMajor, j->trans_a ? Trans : NoTrans, j->trans_b ? Trans : NoTrans, rows, cols, j->k, 1.0f, a, lda, b,
          ldb, 0.0f, c, j->n);
    if (epilogue)
      kernel_set()->epilogue(c, j->n, rows, cols, j->bias_kind == 1 ? j->bias + q0 : NULL,
                     j->bias_kind == 2 ? j->bias + r0 : NULL, &j->act);
  }
}

static int sgemm_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const SgemmJob *j = (const SgemmJob *)cdata;
  int32_t tasks = penv ? penv->num_task : 1;
  int64_t lo = (int64_t)j->parts * task_id / tasks, hi = (int64_t)j->parts * (task_id + 1) / tasks;
  if (j->split == 0) {
    for (int64_t bi = lo; bi < hi; ++bi) sgemm_block(j, (int32_t)bi, 0, j->m, 0, j->n);
  } else {
    for (int32_t bi = 0; bi < j->batch; ++bi) {
      if (j->split == 1) sgemm_block(j, bi, (int32_t)lo, (int32_t)hi, 0, j->n);
      else sgemm_block(j, bi, 0, j->m, (int32_t)lo, (int32_t)hi);
    }
  }
  return 0;
}

/* Inside a task of TVM's pool (recurrent.c runs the two directions of a layer side by
 * side), products run on the calling thread: a nested launch would wait on the pool
 * it runs in. Per thread, so other threads' calls are not affected. */
static __thread int32_t serial_depth = 0;
void onnxforge_serial_begin(void) { ++serial_depth; }
void onnxforge_serial_end(void) { --serial_depth; }
int32_t onnxforge_in_serial(void) { return serial_depth > 0; }

static void blas_single_threaded(void) {
  static int done = 0;
  if (!done) {  /* benign race: every caller sets the same value */
    BLAS_SET_THREADS(1);
    done = 1;
  }
}

int32_t onnxforge_sgemm(int32_t batch, int32_t m, int32_t n, int32_t k, const float *a, int64_t stride_a,
                        int32_t trans_a, const float *b, int64_t stride_b, int32_t trans_b, float *c,
                        const float *bias, int32_t bias_kind, int32_t act, float lo, float hi, float alpha,
                        float beta) {
  blas_single_threaded();
  SgemmJob job = {batch, m, n, k, a, b, bias, stride_a, stride_b, trans_a, trans_b, bias_kind, c,
                  act_make(act, lo, hi, alpha, beta), 0, batch};
  /* whole batches when there are several, else stripes along the longer side of C */
  if (batch < 4) {
    if (m >= n) { job.split = 1; job.parts = m; } else { job.split = 2; job.parts = n; }
  }
  int64_t flops = 2LL * batch * m * n * k;
  int32_t min_parts = job.split == 0 ? 2 : 32;  /* stripes of >= 16 rows/columns for 2 threads */
  if (serial_depth || flops < ONNXFORGE_PARALLEL_MIN_FLOPS || job.parts < min_parts) {  /* too small for a second thread */
    sgemm_task(0, NULL, &job);
    return 0;
  }
  return TVMBackendParallelLaunch(sgemm_task, &job, 0);
}

/* ---- matrix-vector products (the recurrence of RNN/GRU/LSTM at batch 1, recurrent.c) ----
 * y = A x (trans 0: A is m x n, y has m entries) or y = A^T x (trans 1: y has n entries),
 * A row-major with leading dimension lda. sgemm with one row packs the whole matrix on
 * every call; sgemv streams it once. Stripes of y over TVM's thread pool when large. */
typedef struct { int32_t trans, m, n, lda; const float *a, *x; float *y; } SgemvJob;

static int sgemv_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const SgemvJob *j = (const SgemvJob *)cdata;
  int32_t tasks = penv ? penv->num_task : 1;
  int32_t len = j->trans ? j->n : j->m;
  int32_t lo = (int32_t)((int64_t)len * task_id / tasks), hi = (int32_t)((int64_t)len * (task_id + 1) / tasks);
  if (hi <= lo) return 0;
  if (j->trans)
    SGEMV(RowMajor, Trans, j->m, hi - lo, 1.0f, j->a + lo, j->lda, j->x, 1, 0.0f, j->y + lo, 1);
  else
    SGEMV(RowMajor, NoTrans, hi - lo, j->n, 1.0f, j->a + (int64_t)lo * j->lda, j->lda, j->x, 1, 0.0f, j->y + lo, 1);
  return 0;
}

int32_t onnxforge_sgemv(int32_t trans, int32_t m, int32_t n, const float *a, int32_t lda, const float *x, float *y) {
  SgemvJob job = {trans, m, n, lda, a, x, y};
  blas_single_threaded();
  if (serial_depth || (int64_t)m * n < (1 << 18)) {  /* up to 1 MiB of matrix: not worth waking the pool */
    sgemv_task(0, NULL, &job);
    return 0;
  }
  return TVMBackendParallelLaunch(sgemv_task, &job, 0);
}

/* ---- for conv.c: one single-threaded SGEMM (C = op(A) op(B), beta 0) on the calling
 * thread, and the epilogue (bias per row, activation) of this CPU's ISA ---- */
#include <stdlib.h>
#include <string.h>

void onnxforge_blas_gemm(int32_t trans_a, int32_t m, int32_t n, int32_t k, const float *a, int32_t lda,
                         const float *b, int32_t ldb, float *c, int32_t ldc) {
  blas_single_threaded();
  SGEMM(RowMajor, trans_a ? Trans : NoTrans, NoTrans, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void onnxforge_epilogue_rows(float *c, int32_t ldc, int32_t rows, int32_t cols, const float *bias_row,
                             const Act *act) {
  kernel_set()->epilogue(c, ldc, rows, cols, NULL, bias_row, act);
}

/* ---- depthwise conv2d (NCHW, groups == channels, depth multiplier 1, dilation 1) ----
 *
 * One call computes one (image, channel) plane; the caller is a TIR loop over
 * batch * channels (blas.py: serial by default, or parallel over TVM's thread pool;
 * planes are independent, so calls may run concurrently). No padded copy
 * of the tensor is made: each plane works in a small scratch buffer (on the stack up to
 * 16 KiB) holding either a ring of kh zero-padded input rows (wide planes) or, for
 * stride 1 and output width < 32, the whole zero-padded plane (dw_plane_flat), so that
 * the loop over output x has no bounds checks and the compiler vectorises it
 * (x86-64 gcc: an AVX2/FMA clone picked at load time, plus a baseline one).
 * 3x3 and 5x5 with stride 1, 2 or (2, 1) are specialised (compile-time window); anything
 * else takes the generic path (same code, run-time window; ~5 ns per multiply-add).
 */

/* In the flat path, windows bigger than 3x3 (5x5: 25 weights, more than the 16 vector
 * registers hold) accumulate one kernel row at a time through the output (in L1);
 * measured ~1.4x faster there for 5x5, slower for 3x3 and for the strided row path. */
#define DW_BY_ROW(kh, kw) ((kh) * (kw) > 16)

/* rows: kh + 1 scratch rows of `len` floats, zero-filled by the caller; the first kh
 * hold padded copies of input rows (a ring indexed by iy % kh), the last stays zero
 * (rows above/below the image). Each input row is copied once per plane. */
static inline __attribute__((always_inline)) void dw_plane(const float *__restrict in, const float *__restrict w,
                                                           float bias, float *__restrict out, float *rows, int len,
                                                           int h, int wd, int oh, int ow, int kh, int kw, int sh,
                                                           int sw, int pt, int pl) {
  const float *zero = rows + (int64_t)kh * len;
  int held[16];
  const float *r[16];
  for (int ky = 0; ky < kh; ++ky) held[ky] = -1;
  for (int oy = 0; oy < oh; ++oy) {
    float *__restrict orow = out + (int64_t)oy * ow;
    for (int ky = 0; ky < kh; ++ky) {
      int iy = oy * sh - pt + ky;
      if (iy < 0 || iy >= h) {
        r[ky] = zero;
        continue;
      }
      int slot = iy % kh;
      float *dst = rows + (int64_t)slot * len;
      if (held[slot] != iy) {
        memcpy(dst + pl, in + (int64_t)iy * wd, sizeof(float) * (size_t)wd);
        held[slot] = iy;
      }
      r[ky] = dst;
    }
    for (int ox = 0; ox < ow; ++ox) {
      float acc = bias;
      for (int ky = 0; ky < kh; ++ky) {
        const float *rr = r[ky] + ox * sw;
        for (int kx = 0; kx < kw; ++kx) acc += w[ky * kw + kx] * rr[kx];
      }
      orow[ox] = acc;
    }
  }
}

/* Stride 1, narrow planes: the whole plane padded into scratch (rows of lp = ow + kw - 1),
 * then one contiguous loop over p = oy * lp + ox (columns ox >= ow are computed and
 * dropped), so that planes a few vectors wide (7x7, 14x14) run full vectors with no
 * scalar edges. scratch: (oh + kh) * lp + oh * lp floats. */
static inline __attribute__((always_inline)) void dw_plane_flat(const float *__restrict in,
                                                                const float *__restrict w, float bias,
                                                                float *__restrict out, float *__restrict scratch,
                                                                int h, int wd, int oh, int ow, int kh, int kw,
                                                                int pt, int pl) {
  int lp = ow + kw - 1;
  int prow = oh + kh;
  float *__restrict pad = scratch;
  float *__restrict tmp = scratch + (int64_t)prow * lp;
  memset(pad, 0, sizeof(float) * (size_t)prow * (size_t)lp);
  int ncopy = wd < lp - pl ? wd : lp - pl;
  for (int r = 0; r < oh + kh - 1; ++r) {
    int iy = r - pt;
    if (iy >= 0 && iy < h && ncopy > 0)
      memcpy(pad + (int64_t)r * lp + pl, in + (int64_t)iy * wd, sizeof(float) * (size_t)ncopy);
  }
  int np = oh * lp;
  if (DW_BY_ROW(kh, kw)) {
    for (int p = 0; p < np; ++p) tmp[p] = bias;
    for (int ky = 0; ky < kh; ++ky) {
      const float *wr = w + ky * kw;
      const float *__restrict rr = pad + ky * lp;
      for (int p = 0; p < np; ++p) {
        float acc = tmp[p];
        for (int kx = 0; kx < kw; ++kx) acc += wr[kx] * rr[p + kx];
        tmp[p] = acc;
      }
    }
  } else {
    for (int p = 0; p < np; ++p) {
      float acc = bias;
      for (int ky = 0; ky < kh; ++ky) {
        const float *rr = pad + p + ky * lp;
        for (int kx = 0; kx < kw; ++kx) acc += w[ky * kw + kx] * rr[kx];
      }
      tmp[p] = acc;
    }
  }
  for (int oy = 0; oy < oh; ++oy) memcpy(out + (int64_t)oy * ow, tmp + (int64_t)oy * lp, sizeof(float) * (size_t)ow);
}

/* ---- softmax over the last axis: y = exp(x - max) / sum, row by row ----
 * exp_approx.h's exp (~1 ulp) in a plain loop (gcc vectorizes it), then the sum and the max
 * over 8 partial results, so that they vectorize without reassociating float additions
 * (which gcc does only under -ffast-math). TVM's schedule of fast_softmax took 0.33 ms for
 * MiniLM's 12 x 128 x 128 scores per layer. x and y are distinct buffers (TVM's outputs). */
static inline __attribute__((always_inline)) void softmax_row_body(const float *__restrict x, float *__restrict y,
                                                                   int32_t n) {
  float part[8];
  for (int i = 0; i < 8; ++i) part[i] = -INFINITY;
  int32_t q = 0;
  for (; q + 8 <= n; q += 8)
    for (int i = 0; i < 8; ++i) part[i] = x[q + i] > part[i] ? x[q + i] : part[i];
  float m = -INFINITY, s = 0.0f;
  for (; q < n; ++q) m = x[q] > m ? x[q] : m;
  for (int i = 0; i < 8; ++i) m = part[i] > m ? part[i] : m;
  const ExpRange range = exp_range();
  for (q = 0; q < n; ++q) y[q] = exp_approx(x[q] - m, range);
  for (int i = 0; i < 8; ++i) part[i] = 0.0f;
  for (q = 0; q + 8 <= n; q += 8)
    for (int i = 0; i < 8; ++i) part[i] += y[q + i];
  for (; q < n; ++q) s += y[q];
  for (int i = 0; i < 8; ++i) s += part[i];
  const float inv = 1.0f / s;
  for (q = 0; q < n; ++q) y[q] *= inv;
}

/* ---- mean over the last axis (GlobalAveragePool, ReduceMean over trailing axes) ----
 * 8 partial sums so that it vectorizes. TVM's schedule of a mean whose size is known
 * only at run time (squeeze-excitation blocks in a package for any image size) ran
 * each as a parallel kernel with a scalar chain of adds. */
static inline __attribute__((always_inline)) float mean_row_body(const float *__restrict x, int32_t n) {
  float part[8] = {0}, s = 0.0f;
  int32_t q = 0;
  for (; q + 8 <= n; q += 8)
    for (int i = 0; i < 8; ++i) part[i] += x[q + i];
  for (; q < n; ++q) s += x[q];
  for (int i = 0; i < 8; ++i) s += part[i];
  return s / (float)n;
}

/* ---- max / min over the last axis (a dynamic quantization's range: the whole tensor as
 * one row) ----
 * 8 partial results, so that they vectorize (NaNs are not propagated: x > e ? x : e).
 * TVM's schedule of the whole-tensor max and min took 70 us each on MiniLM's 128 x 384
 * activations, 18 of each per run. */
static inline __attribute__((always_inline)) float extreme_row_body(const float *__restrict x, int32_t n, int top) {
  float part[8], e = top ? -INFINITY : INFINITY;
  for (int i = 0; i < 8; ++i) part[i] = e;
  int32_t q = 0;
  for (; q + 8 <= n; q += 8)
    for (int i = 0; i < 8; ++i) part[i] = (top ? x[q + i] > part[i] : x[q + i] < part[i]) ? x[q + i] : part[i];
  for (; q < n; ++q) e = (top ? x[q] > e : x[q] < e) ? x[q] : e;
  for (int i = 0; i < 8; ++i) e = (top ? part[i] > e : part[i] < e) ? part[i] : e;
  return e;
}

/* ---- layer normalization over the last axis: y = (x - mean) / sqrt(var + eps) * g + b ----
 * Two passes per row (the mean, then the squared deviations: no cancellation), each over
 * 8 partial sums so that it vectorizes. TVM's schedule took 0.07 ms per MiniLM row block
 * of 128 x 384. */
static inline __attribute__((always_inline)) void layer_norm_row_body(const float *__restrict x,
                                                                      const float *__restrict g,
                                                                      const float *__restrict b, float eps,
                                                                      float *__restrict y, int32_t n) {
  float part[8] = {0};
  int32_t q = 0;
  for (; q + 8 <= n; q += 8)
    for (int i = 0; i < 8; ++i) part[i] += x[q + i];
  float s = 0.0f;
  for (; q < n; ++q) s += x[q];
  for (int i = 0; i < 8; ++i) s += part[i], part[i] = 0.0f;
  const float mean = s / (float)n;
  for (q = 0; q + 8 <= n; q += 8)
    for (int i = 0; i < 8; ++i) part[i] += (x[q + i] - mean) * (x[q + i] - mean);
  float v = 0.0f;
  for (; q < n; ++q) v += (x[q] - mean) * (x[q] - mean);
  for (int i = 0; i < 8; ++i) v += part[i];
  const float inv = 1.0f / sqrtf(v / (float)n + eps);
  for (q = 0; q < n; ++q) y[q] = (x[q] - mean) * inv * g[q] + b[q];
}

/* The hot functions once per ISA (x86-64 gcc: AVX-512, AVX2+FMA, baseline; elsewhere
 * baseline only), the best the CPU has picked at run time, capped by ONNXFORGE_CPU_ISA
 * (onnxforge_cpu_isa_level, gemm_packed.c). The window and stride are compile-time
 * constants in the specialised branches (3x3, 5x5; stride 1 or 2). */
#define DW_VARIANT(SFX, ATTR)                                                                                  \
  static ATTR DW_OPT void dw_flat_##SFX(const float *in, const float *w, float bias, float *out, float *scratch, \
                                        int h, int wd, int oh, int ow, int k, int pt, int pl) {                  \
    if (k == 3)                                                                                                 \
      dw_plane_flat(in, w, bias, out, scratch, h, wd, oh, ow, 3, 3, pt, pl);                                    \
    else                                                                                                        \
      dw_plane_flat(in, w, bias, out, scratch, h, wd, oh, ow, 5, 5, pt, pl);                                    \
  }                                                                                                             \
  static ATTR DW_OPT void dw_rows_##SFX(const float *in, const float *w, float bias, float *out, float *rows,    \
                                        int len, int h, int wd, int oh, int ow, int kh, int kw, int sh, int sw,  \
                                        int pt, int pl) {                                                        \
    if (kh == 3 && kw == 3 && sh == 1 && sw == 1)                                                               \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, 3, 3, 1, 1, pt, pl);                                 \
    else if (kh == 3 && kw == 3 && sh == 2 && sw == 2)                                                          \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, 3, 3, 2, 2, pt, pl);                                 \
    else if (kh == 5 && kw == 5 && sh == 1 && sw == 1)                                                          \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, 5, 5, 1, 1, pt, pl);                                 \
    else if (kh == 5 && kw == 5 && sh == 2 && sw == 2)                                                          \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, 5, 5, 2, 2, pt, pl);                                 \
    else if (kh == 3 && kw == 3 && sh == 2 && sw == 1) /* PP-OCR's (2, 1): rows halve, width kept */            \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, 3, 3, 2, 1, pt, pl);                                 \
    else if (kh == 5 && kw == 5 && sh == 2 && sw == 1)                                                          \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, 5, 5, 2, 1, pt, pl);                                 \
    else                                                                                                        \
      dw_plane(in, w, bias, out, rows, len, h, wd, oh, ow, kh, kw, sh, sw, pt, pl);                             \
  }                                                                                                             \
  static ATTR DW_OPT void epilogue_##SFX(float *c, int32_t ldc, int32_t rows, int32_t cols,                     \
                                         const float *bias_col, const float *bias_row, const Act *act) {         \
    sgemm_epilogue_body(c, ldc, rows, cols, bias_col, bias_row, act);                                           \
  }                                                                                                             \
  static ATTR DW_OPT void softmax_##SFX(const float *x, float *y, int32_t n) { softmax_row_body(x, y, n); }      \
  static ATTR DW_OPT void layer_norm_##SFX(const float *x, const float *g, const float *b, float eps, float *y,   \
                                           int32_t n) {                                                        \
    layer_norm_row_body(x, g, b, eps, y, n);                                                                    \
  }                                                                                                             \
  static ATTR DW_OPT float mean_##SFX(const float *x, int32_t n) { return mean_row_body(x, n); }                \
  static ATTR DW_OPT float max_##SFX(const float *x, int32_t n) { return extreme_row_body(x, n, 1); }           \
  static ATTR DW_OPT float min_##SFX(const float *x, int32_t n) { return extreme_row_body(x, n, 0); }           \
  static const KernelSet kernels_##SFX = {dw_flat_##SFX, dw_rows_##SFX, epilogue_##SFX, softmax_##SFX,          \
                                          layer_norm_##SFX, mean_##SFX, max_##SFX, min_##SFX};

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
DW_VARIANT(avx512, __attribute__((target("avx512f,avx2,fma"))))
DW_VARIANT(avx2, __attribute__((target("avx2,fma"))))
DW_VARIANT(base, )
static const KernelSet *kernel_set(void) {
  int32_t level = onnxforge_cpu_isa_level();
  return level >= 2 ? &kernels_avx512 : level >= 1 ? &kernels_avx2 : &kernels_base;
}
#else
DW_VARIANT(base, )
static const KernelSet *kernel_set(void) { return &kernels_base; }
#endif

/* out[plane] = act(depthwise conv of x[plane] with w[plane % c] (+ bias[plane % c] if bias_kind))
 * (act, lo, hi, alpha, beta: the epilogue, as in onnxforge_sgemm), plane = n * c + channel.
 * x: (n, c, h, wd), w: (c, 1, kh, kw), out: (n, c, oh, ow).
 * Only the top/left padding is passed: bottom/right follow from oh/ow. kh <= 16. */
int32_t onnxforge_dwconv2d_plane(int32_t plane, int32_t c, int32_t h, int32_t wd, int32_t oh, int32_t ow,
                                 int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl,
                                 const float *x, const float *w, const float *bias, int32_t bias_kind,
                                 int32_t act, float lo, float hi, float alpha, float beta, float *out) {
  if (kh > 16 || kh <= 0 || kw <= 0) return -1;
  int ch = plane % c;
  const float *in = x + (int64_t)plane * h * wd;
  const float *wk = w + (int64_t)ch * kh * kw;
  float *o = out + (int64_t)plane * oh * ow;
  float b = bias_kind ? bias[ch] : 0.0f;
  float sbuf[4096];
  size_t nflat = (size_t)(2 * oh + kh) * (size_t)(ow + kw - 1);
  const KernelSet *ks = kernel_set();
  Act epilogue = act_make(act, lo, hi, alpha, beta);
  if (sh == 1 && sw == 1 && kh == kw && (kh == 3 || kh == 5) && ow < 32 && nflat <= sizeof(sbuf) / sizeof(float)) {
    ks->flat(in, wk, b, o, sbuf, h, wd, oh, ow, kh, pt, pl);
    if (act != ACT_NONE) ks->epilogue(o, 0, 1, oh * ow, NULL, NULL, &epilogue);
    return 0;
  }
  /* padded row length: every window of every output column lies inside it */
  int len = (ow - 1) * sw + kw;
  if (len < pl + wd) len = pl + wd;
  size_t nrows = (size_t)(kh + 1) * (size_t)len;
  float *rows = sbuf;
  if (nrows > sizeof(sbuf) / sizeof(float)) {
    rows = (float *)calloc(nrows, sizeof(float));
    if (!rows) return -1;
  } else {
    memset(sbuf, 0, sizeof(float) * nrows);
  }
  ks->rows(in, wk, b, o, rows, len, h, wd, oh, ow, kh, kw, sh, sw, pt, pl);
  if (rows != sbuf) free(rows);
  if (act != ACT_NONE) ks->epilogue(o, 0, 1, oh * ow, NULL, NULL, &epilogue);
  return 0;
}

/* Row kernels (softmax, layer norm) over a (rows, n) row-major tensor: rows split over
 * TVM's pool, or on the calling thread when small. */
typedef struct RowJob {
  const float *x, *g, *b; /* input; layer norm's scale and bias */
  float eps, *y;
  int64_t rows;
  int32_t n;
  const KernelSet *ks;
  void (*row)(const struct RowJob *, int64_t);
} RowJob;

static int row_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const RowJob *j = (const RowJob *)cdata;
  int64_t tasks = penv ? penv->num_task : 1;
  for (int64_t r = j->rows * task_id / tasks, hi = j->rows * (task_id + 1) / tasks; r < hi; ++r) j->row(j, r);
  return 0;
}

static int32_t run_rows(RowJob *job) {
  if (job->rows <= 0 || job->n <= 0) return 0;
  if (serial_depth || job->rows < 2 || job->rows * job->n < ONNXFORGE_PARALLEL_MIN_VALUES) {
    row_task(0, NULL, job);
    return 0;
  }
  return TVMBackendParallelLaunch(row_task, job, 0);
}

static void softmax_one(const RowJob *j, int64_t r) { j->ks->softmax(j->x + r * j->n, j->y + r * j->n, j->n); }

static void mean_one(const RowJob *j, int64_t r) { j->y[r] = j->ks->mean(j->x + r * j->n, j->n); }

static void max_one(const RowJob *j, int64_t r) { j->y[r] = j->ks->max(j->x + r * j->n, j->n); }

static void min_one(const RowJob *j, int64_t r) { j->y[r] = j->ks->min(j->x + r * j->n, j->n); }

static void layer_norm_one(const RowJob *j, int64_t r) {
  j->ks->layer_norm(j->x + r * j->n, j->g, j->b, j->eps, j->y + r * j->n, j->n);
}

/* y = softmax(x) over the last axis, x and y (rows, n) row-major, distinct. */
int32_t onnxforge_softmax_rows(int64_t rows, int32_t n, const float *x, float *y) {
  RowJob job = {x, NULL, NULL, 0.0f, y, rows, n, kernel_set(), softmax_one};
  return run_rows(&job);
}

/* y[r] = mean of row r of x (rows, n), row-major. */
int32_t onnxforge_mean_rows(int64_t rows, int32_t n, const float *x, float *y) {
  RowJob job = {x, NULL, NULL, 0.0f, y, rows, n, kernel_set(), mean_one};
  return run_rows(&job);
}

/* y[r] = the max (min) of row r of x (rows, n), row-major. */
int32_t onnxforge_max_rows(int64_t rows, int32_t n, const float *x, float *y) {
  RowJob job = {x, NULL, NULL, 0.0f, y, rows, n, kernel_set(), max_one};
  return run_rows(&job);
}

int32_t onnxforge_min_rows(int64_t rows, int32_t n, const float *x, float *y) {
  RowJob job = {x, NULL, NULL, 0.0f, y, rows, n, kernel_set(), min_one};
  return run_rows(&job);
}

/* y = layer_norm(x) over the last axis with scale g and bias b (n values each); x and y
 * (rows, n) row-major, distinct. */
int32_t onnxforge_layer_norm_rows(int64_t rows, int32_t n, const float *x, const float *g, const float *b, float eps,
                                  float *y) {
  RowJob job = {x, g, b, eps, y, rows, n, kernel_set(), layer_norm_one};
  return run_rows(&job);
}

#ifdef __cplusplus
}
#endif
