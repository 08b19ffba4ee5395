/* onnxforge packed-weight GEMM, linked into compiled x86/arm64 modules next to kernels.c.
 *
 * C (m x n) = act(A (m x k) @ B (k x n) [+ bias per column]) where B is a
 * weight packed once (blas.py: at compile time for a constant, at load for a weight
 * parameter): column panels of NR = 16, each stored k x 16 contiguous (the last one
 * zero-padded). OpenBLAS repacks B on every call, which is most of the work when m is
 * small (ddddocr's 20 x 1024 x 8210 classifier head ran at 64 GFLOP/s that way, 5.3 ms;
 * ~4 ms here); here B streams from memory once per block of MC rows of A, and A is
 * read in place (no copy).
 *
 * Blocking (Goto's order, minus packing A): rows of A in blocks of MC, k in chunks
 * of KC (the MC x KC block of A stays in L2 across all panels), then per panel
 * micro-tiles of MR rows x 16 columns held in registers over the chunk; bias and
 * activation (activation.h) are applied when the last chunk stores the tile.
 *
 * ISA: one generic source written with GCC vector types (16 floats), compiled per
 * variant with a target attribute and its own MR (registers hold MR x 16 accumulators):
 *   x86-64: avx512 (avx512f, MR 12), avx2 (avx2+fma, MR 6), generic (SSE2, MR 2);
 *   aarch64: generic (NEON is baseline, MR 6).
 * The best one the CPU supports is picked at the first call (cpuid); the environment
 * variable ONNXFORGE_CPU_ISA=generic|avx2|avx512 caps it at a lower one, so every
 * variant can be run and tested on any host (an unknown value means generic).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "activation.h"
#include "thread_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NR 16
#define KC 512     /* k chunk: a 16-wide panel chunk is 32 KiB (L1/L2) */
#define MC_MAX 128 /* rows of A per block: 128 x 512 floats = 256 KiB (L2) */

/* Native vectors: 4 floats (SSE2, NEON), 8 (AVX2), 16 (AVX-512); loads and stores
 * through the unaligned (aligned(4)) twins. Tiles hold MR x (16 / width) of them. */
typedef float vf4 __attribute__((vector_size(16)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf16 __attribute__((vector_size(64)));
typedef float vf4u __attribute__((vector_size(16), aligned(4), may_alias));
typedef float vf8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef float vf16u __attribute__((vector_size(64), aligned(4), may_alias));

typedef struct {
  int32_t m, n, k;
  const float *a;  /* m x k, row-major, leading dimension k */
  const float *bp; /* packed: ceil(n / 16) panels of k x 16 */
  const float *bias; /* n values or NULL */
  float *c;        /* m x n, row-major */
  Act act;
} PackedJob;

/* -O3 for the micro-kernels and the tile stores */
#if defined(__GNUC__) && !defined(__clang__)
#define PG_OPT __attribute__((optimize("O3")))
#else
#define PG_OPT
#endif

/* Store `rows` 16-wide rows of a tile (row r at c + r * ldc): the first chunk writes,
 * later ones add; the last adds the bias and applies the activation. cols < 16 only in the last
 * panel. Out of line: once per tile and chunk, not per k, and one copy for every
 * variant keeps the file quick to compile (it is compiled into every CPU package). */
static PG_OPT void tile_store(float *c, int64_t ldc, const float *tile, int32_t rows, int32_t cols, int first, int last,
                       const float *bias, const Act *act) {
  for (int32_t r = 0; r < rows; ++r, c += ldc, tile += NR) {
    for (int32_t j = 0; j < cols; ++j) c[j] = tile[j] + (first ? 0.0f : c[j]);
    if (last) act_row(c, cols, bias, 0.0f, act);
  }
}

/* One variant (VT: a native vector of VW floats, VTU its unaligned twin):
 * NAME##_block (MR rows), NAME##_row (one row, four partial sums over k so the FMA
 * latency is hidden), NAME##_range (rows r0..r1, panels p0..p1). */
#define PACKED_GEMM_VARIANT(NAME, ATTR, MR, VT, VTU, VW)                                                         \
  static ATTR void NAME##_block(int32_t kc, const float *a, int64_t lda, const float *bp, const float *pf,       \
                                float *c, int64_t ldc, int32_t cols, int first, int last, const float *bias,     \
                                const Act *act) {                                                            \
    VT acc[MR][NR / VW];                                                                                        \
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r)                                                       \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) acc[r][v] = (VT){0};                           \
    for (int32_t q = 0; q < kc; ++q) {                                                                          \
      if (pf) __builtin_prefetch(pf + (int64_t)q * NR);                                                         \
      VT b[NR / VW];                                                                                            \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) b[v] = *(const VTU *)(bp + (int64_t)q * NR + v * VW); \
      _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {                                                   \
        float s = a[r * lda + q];                                                                               \
        _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) acc[r][v] += s * b[v];                       \
      }                                                                                                         \
    }                                                                                                           \
    float tile[MR][NR] __attribute__((aligned(64)));                                                            \
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r)                                                       \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) *(VTU *)(tile[r] + v * VW) = acc[r][v];        \
    tile_store(c, ldc, &tile[0][0], MR, cols, first, last, bias, act);                                       \
  }                                                                                                             \
  static ATTR void NAME##_row(int32_t kc, const float *a, const float *bp, float *c, int32_t cols, int first,   \
                              int last, const float *bias, const Act *act) {                                     \
    VT s[4][NR / VW];                                                                                           \
    _Pragma("GCC unroll 4") for (int u = 0; u < 4; ++u)                                                         \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) s[u][v] = (VT){0};                             \
    int32_t q = 0;                                                                                              \
    for (; q + 4 <= kc; q += 4)                                                                                 \
      _Pragma("GCC unroll 4") for (int u = 0; u < 4; ++u)                                                       \
        _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v)                                               \
          s[u][v] += a[q + u] * *(const VTU *)(bp + (int64_t)(q + u) * NR + v * VW);                            \
    for (; q < kc; ++q)                                                                                         \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v)                                                 \
        s[0][v] += a[q] * *(const VTU *)(bp + (int64_t)q * NR + v * VW);                                        \
    float tile[NR] __attribute__((aligned(64)));                                                                \
    _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v)                                                   \
      *(VTU *)(tile + v * VW) = (s[0][v] + s[1][v]) + (s[2][v] + s[3][v]);                                      \
    tile_store(c, 0, tile, 1, cols, first, last, bias, act);                                                 \
  }                                                                                                             \
  static ATTR void NAME##_range(const PackedJob *j, int32_t r0, int32_t r1, int32_t p0, int32_t p1) {          \
    const int64_t k = j->k, n = j->n;                                                                           \
    for (int32_t mb = r0; mb < r1; mb += MC_MAX) {                                                              \
      int32_t me = mb + MC_MAX < r1 ? mb + MC_MAX : r1;                                                         \
      for (int32_t kb = 0; kb < j->k; kb += KC) {                                                               \
        /* a short tail chunk joins the one before it (its accumulators already paid for) */                  \
        int32_t kc = j->k - kb <= KC + KC / 2 ? j->k - kb : KC;                                                 \
        int first = kb == 0, last = kb + kc == j->k;                                                            \
        for (int32_t p = p0; p < p1; ++p) {                                                                     \
          const float *bp = j->bp + ((int64_t)p * k + kb) * NR;                                                 \
          int32_t col0 = p * NR;                                                                                \
          int32_t cols = n - col0 < NR ? (int32_t)(n - col0) : NR;                                              \
          const float *bias = j->bias ? j->bias + col0 : NULL;                                                  \
          /* few rows: streaming B is the cost, so the first tile of a panel fetches the next               \
           * panel's chunk (one line per k); with more rows that only competes with the tiles */                \
          const float *pf = p + 1 < p1 && me - mb <= 32 ? bp + k * NR : NULL;                                   \
          int32_t r = mb;                                                                                       \
          for (; r + MR <= me; r += MR, pf = NULL)                                                              \
            NAME##_block(kc, j->a + r * k + kb, k, bp, pf, j->c + r * n + col0, n, cols, first, last, bias,     \
                         &j->act);                                                                         \
          for (; r < me; ++r)                                                                                   \
            NAME##_row(kc, j->a + r * k + kb, bp, j->c + r * n + col0, cols, first, last, bias, &j->act);  \
        }                                                                                                       \
        if (last) break;                                                                                        \
      }                                                                                                         \
    }                                                                                                           \
  }

typedef void (*RangeFn)(const PackedJob *, int32_t, int32_t, int32_t, int32_t);
typedef struct { const char *name; RangeFn range; int32_t mr; } Variant;

/* Rows per tile: what the vector registers hold as MR x 16 accumulators. */
#if defined(__x86_64__) && defined(__GNUC__)
#define MR_AVX512 12 /* 32 zmm */
#define MR_AVX2 6    /* 16 ymm, 2 per row */
#define MR_GENERIC 2 /* 16 xmm, 4 per row */
#else
#define MR_GENERIC 6 /* NEON: 32 q registers, 4 per row */
#endif

#if defined(__x86_64__) && defined(__GNUC__)
PACKED_GEMM_VARIANT(gemm_avx512, PG_OPT __attribute__((target("avx512f,fma"))), MR_AVX512, vf16, vf16u, 16)
PACKED_GEMM_VARIANT(gemm_avx2, PG_OPT __attribute__((target("avx2,fma"))), MR_AVX2, vf8, vf8u, 8)
PACKED_GEMM_VARIANT(gemm_generic, PG_OPT, MR_GENERIC, vf4, vf4u, 4)
#ifdef ONNXFORGE_GEMM_TEST /* the avx512 variant's blocking (MR 12) compiled for avx2, to test it on any host */
PACKED_GEMM_VARIANT(gemm_wide_test, PG_OPT __attribute__((target("avx2,fma"))), MR_AVX512, vf8, vf8u, 8)
#endif
#else
PACKED_GEMM_VARIANT(gemm_generic, PG_OPT, MR_GENERIC, vf4, vf4u, 4)
#endif

/* 0 baseline, 1 AVX2+FMA, 2 AVX-512F+FMA: the best this CPU has (always 0 off x86-64),
 * capped by ONNXFORGE_CPU_ISA=generic|avx2|avx512 (anything else: 0). Every ISA-
 * specific kernel of the module (here, kernels.c, recurrent.c) picks by this. */
int32_t onnxforge_cpu_isa_level(void) {
  static int32_t level = -1;
  if (level < 0) { /* benign race: every thread computes the same */
    const char *cap = getenv("ONNXFORGE_CPU_ISA");
    int32_t most = 2;
    if (cap && *cap) most = !strcmp(cap, "avx512") ? 2 : !strcmp(cap, "avx2") ? 1 : 0;
    int32_t have = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) have = 1;
    if (have && __builtin_cpu_supports("avx512f")) have = 2;
#endif
    level = have < most ? have : most;
  }
  return level;
}

/* The variant for onnxforge_cpu_isa_level. */
static Variant pick_variant(void) {
#if defined(__x86_64__) && defined(__GNUC__)
#ifdef ONNXFORGE_GEMM_TEST
  const char *cap = getenv("ONNXFORGE_CPU_ISA");
  if (cap && !strcmp(cap, "wide-test")) return (Variant){"wide-test", gemm_wide_test_range, MR_AVX512};
#endif
  int32_t level = onnxforge_cpu_isa_level();
  if (level >= 2) return (Variant){"avx512", gemm_avx512_range, MR_AVX512};
  if (level >= 1) return (Variant){"avx2", gemm_avx2_range, MR_AVX2};
  return (Variant){"generic", gemm_generic_range, MR_GENERIC};
#else
  return (Variant){"generic", gemm_generic_range, MR_GENERIC};
#endif
}

static Variant variant;
static int variant_ready = 0;

static const Variant *current_variant(void) {
  if (!variant_ready) { /* benign race: every thread picks the same */
    variant = pick_variant();
    variant_ready = 1;
  }
  return &variant;
}

/* The variant in use ("avx512", "avx2", "generic"), for tests and reports. */
const char *onnxforge_packed_gemm_isa(void) { return current_variant()->name; }

typedef struct { const PackedJob *job; const Variant *v; int32_t by_panels; } PackedTask;

static int packed_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const PackedTask *t = (const PackedTask *)cdata;
  const PackedJob *j = t->job;
  int64_t tasks = penv ? penv->num_task : 1;
  int32_t panels = (j->n + NR - 1) / NR;
  if (t->by_panels) {
    int32_t p0 = (int32_t)(panels * task_id / tasks), p1 = (int32_t)(panels * (task_id + 1) / tasks);
    if (p1 > p0) t->v->range(j, 0, j->m, p0, p1);
  } else { /* stripes of whole micro-tiles of rows */
    int64_t tiles = (j->m + t->v->mr - 1) / t->v->mr;
    int32_t r0 = (int32_t)(tiles * task_id / tasks) * t->v->mr, r1 = (int32_t)(tiles * (task_id + 1) / tasks) * t->v->mr;
    if (r1 > j->m) r1 = j->m;
    if (r1 > r0) t->v->range(j, r0, r1, 0, panels);
  }
  return 0;
}

/* C = act(A @ B + bias) with B packed (see the top of this file); bias: n values or
 * NULL; act, lo, hi, alpha, beta: activation.h. Split over TVM's thread pool by column
 * panels (or by rows when there are few panels); small products run on the calling thread. */
int32_t onnxforge_sgemm_packed(int32_t m, int32_t n, int32_t k, const float *a, const float *bp, float *c,
                               const float *bias, int32_t bias_kind, int32_t act, float lo, float hi, float alpha,
                               float beta) {
  if (m <= 0 || n <= 0) return 0;
  PackedJob job = {m, n, k, a, bp, bias_kind ? bias : NULL, c, act_make(act, lo, hi, alpha, beta)};
  if (k <= 0) { /* empty sum: the epilogue of zeros */
    for (int64_t r = 0; r < m; ++r) {
      memset(c + r * n, 0, sizeof(float) * (size_t)n);
      act_row(c + r * n, n, job.bias, 0.0f, &job.act);
    }
    return 0;
  }
  const Variant *v = current_variant();
  int32_t panels = (n + NR - 1) / NR;
  PackedTask task = {&job, v, panels >= 8 || m < 2 * v->mr};
  if (onnxforge_in_serial() || 2LL * m * n * k < (1 << 18)) {
    packed_task(0, NULL, &task);
    return 0;
  }
  return TVMBackendParallelLaunch(packed_task, &task, 0);
}

/* Products whose row count is known only at run time: the packed kernel up to
 * max_rows rows, else OpenBLAS (onnxforge_sgemm, kernels.c) on the weight as stored
 * (b, n x k when trans_b): above a hundred rows or so OpenBLAS's own packing of A
 * pays off. The module keeps both forms of such weights. */
int32_t onnxforge_sgemm(int32_t batch, int32_t m, int32_t n, int32_t k, const float *a, int64_t stride_a,
                        int32_t trans_a, const float *b, int64_t stride_b, int32_t trans_b, float *c,
                        const float *bias, int32_t bias_kind, int32_t act, float lo, float hi, float alpha,
                        float beta);

int32_t onnxforge_sgemm_rows(int32_t m, int32_t n, int32_t k, int32_t max_rows, const float *a, const float *b,
                             int32_t trans_b, const float *bp, float *c, const float *bias, int32_t bias_kind,
                             int32_t act, float lo, float hi, float alpha, float beta) {
  if (m <= max_rows) return onnxforge_sgemm_packed(m, n, k, a, bp, c, bias, bias_kind, act, lo, hi, alpha, beta);
  return onnxforge_sgemm(1, m, n, k, a, 0, 0, b, 0, trans_b, c, bias, bias_kind, act, lo, hi, alpha, beta);
}

#ifdef __cplusplus
}
#endif
