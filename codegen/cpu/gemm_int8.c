/* onnxforge integer GEMM (issue 22's kernel family; not yet called by compiled modules):
 *
 *   C (m x n, int32) = A (m x k, uint8, row-major) @ B (k x n, int8)
 *
 * exactly, in int32, whatever the values (no saturating step). B is a weight, packed
 * once by onnxforge_qgemm_pack: column panels of 16, k in groups of 4, each group of a
 * panel 64 bytes with column j's 4 bytes (k = 4g .. 4g + 3) at 4j, k padded with zeros;
 * the pack also returns B's column sums, which fold activation zero points out of the
 * product (sum (a - za) b = sum a b - za * colsum). A is read in place.
 *
 * Variants (onnxforge_int8_isa, picked at the first call, capped like gemm_packed.c by
 * ONNXFORGE_CPU_ISA=generic|avx2|avx512):
 *   vnni512: vpdpbusd, 4 u8 x s8 products per int32 lane added without saturation,
 *            tiles of 8 rows x 32 columns (x 16 for a last odd panel);
 *   avx2:    the 4 bytes of a group widened to int16 and vpmaddwd (pairs of products,
 *            each at most 255 * 128, summed in int32: exact; vpmaddubsw's int16 pair
 *            sums would saturate at 2 * 255 * 127), tiles of 2 rows x 16 columns;
 *   generic: plain C in int32.
 * Rows are split over TVM's thread pool when the product is large (thread_pool.h).
 * The SIMD tiles are compiled at -O3 with their row loops unrolled: at the build's -O2
 * gcc kept the accumulators in memory (one core, MiniLM's shapes: VNNI 165-190 -> 310-400
 * GOP/s, AVX2 43-47 -> 68-73).
 */
#include <stdint.h>
#include <string.h>

#include "thread_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QNR 16 /* columns per panel */
#define QKG 4  /* k per group */

static inline int32_t q_groups(int32_t k) { return (k + QKG - 1) / QKG; }
static inline int32_t q_panels(int32_t n) { return (n + QNR - 1) / QNR; }

/* Bytes of the packed weight of a k x n matrix. */
int64_t onnxforge_qgemm_packed_size(int32_t k, int32_t n) {
  return (int64_t)q_panels(n) * q_groups(k) * QNR * QKG;
}

/* w (k x n, int8, or uint8 when w_unsigned: packed as w - 128; row stride ldw) -> bp
 * (onnxforge_qgemm_packed_size bytes); off[j] = (128 for uint8, else 0) - zw[j] and
 * colsum[j] = the sum over k of w - zw (zw: zw_count 1 or n values of w's type, 0:
 * none; off / colsum NULL: not wanted). */
static void q_pack(int32_t k, int32_t n, const void *w, int64_t ldw, int32_t w_unsigned, const void *zw,
                   int32_t zw_count, int8_t *bp, int32_t *off, int32_t *colsum) {
  const int32_t groups = q_groups(k);
  memset(bp, 0, (size_t)onnxforge_qgemm_packed_size(k, n));
  for (int32_t j = 0; j < n; ++j) {
    const int32_t z = !zw_count ? 0 : w_unsigned ? ((const uint8_t *)zw)[zw_count > 1 ? j : 0]
                                                 : ((const int8_t *)zw)[zw_count > 1 ? j : 0];
    int32_t s = 0;
    int8_t *col = bp + (int64_t)(j / QNR) * groups * QNR * QKG + (j % QNR) * QKG;
    for (int32_t q = 0; q < k; ++q) {
      const int32_t v = w_unsigned ? (int32_t)((const uint8_t *)w)[(int64_t)q * ldw + j]
                                   : (int32_t)((const int8_t *)w)[(int64_t)q * ldw + j];
      s += v;
      col[(int64_t)(q / QKG) * QNR * QKG + q % QKG] = (int8_t)(w_unsigned ? v - 128 : v);
    }
    if (off) off[j] = (w_unsigned ? 128 : 0) - z;
    if (colsum) colsum[j] = s - k * z;
  }
}

/* b (k x n int8, row stride ldb) -> bp (onnxforge_qgemm_packed_size bytes); colsum[j] =
 * sum over k of b[.][j] (n values; NULL: not wanted). */
void onnxforge_qgemm_pack(int32_t k, int32_t n, const int8_t *b, int64_t ldb, int8_t *bp, int32_t *colsum) {
  q_pack(k, n, b, ldb, 0, NULL, 0, bp, NULL, colsum);
}

/* The 4 bytes of row `a` at group g as one int32 (little-endian, as vpdpbusd reads
 * them); past k: zeros (the packed weight is zero there too, and the last row may end
 * at the end of its buffer). */
static inline uint32_t q_quad(const uint8_t *a, int32_t k, int32_t g) {
  uint32_t v = 0;
  const int32_t q = g * QKG, left = k - q;
  memcpy(&v, a + q, left >= QKG ? QKG : (size_t)left);
  return v;
}

/* cols (<= 16) int32 of a tile row into c */
static inline void q_store(int32_t *c, const int32_t *tile, int32_t cols) {
  memcpy(c, tile, sizeof(int32_t) * (size_t)cols);
}

/* ---- generic: int32 products ---- */
static void q_panel_generic(int32_t rows, int32_t k, const uint8_t *a, int64_t lda, const int8_t *bp, int32_t *c,
                            int64_t ldc, int32_t cols) {
  const int32_t groups = q_groups(k);
  for (int32_t r = 0; r < rows; ++r) {
    int32_t acc[QNR] = {0};
    const uint8_t *ar = a + r * lda;
    for (int32_t g = 0; g < groups; ++g) {
      const int8_t *bg = bp + (int64_t)g * QNR * QKG;
      const uint32_t quad = q_quad(ar, k, g);
      for (int32_t j = 0; j < QNR; ++j)
        for (int32_t i = 0; i < QKG; ++i) acc[j] += (int32_t)((quad >> (8 * i)) & 0xFF) * bg[j * QKG + i];
    }
    q_store(c + r * ldc, acc, cols);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* ---- AVX2: int16 pairs through vpmaddwd ----
 * A group's 64 bytes as 4 x 16 int8 (4 columns x 4 k each) widened to int16; the row's
 * 4 bytes widened and repeated to match; vpmaddwd gives per column two int32 pair
 * sums, added up across groups and folded at the end (hadd + a lane permute). */
#define Q_AVX2_ROWS 2
__attribute__((target("avx2"), optimize("O3"))) static void q_panel_avx2(int32_t rows, int32_t k, const uint8_t *a, int64_t lda,
                                                         const int8_t *bp, int32_t *c, int64_t ldc, int32_t cols) {
  const int32_t groups = q_groups(k), full = k / QKG;
  for (int32_t r = 0; r < rows; r += Q_AVX2_ROWS) {
    const int32_t nr = rows - r < Q_AVX2_ROWS ? rows - r : Q_AVX2_ROWS;
    __m256i acc[Q_AVX2_ROWS][4];
    _Pragma("GCC unroll 2") for (int i = 0; i < Q_AVX2_ROWS; ++i)
      _Pragma("GCC unroll 4") for (int v = 0; v < 4; ++v) acc[i][v] = _mm256_setzero_si256();
    for (int32_t g = 0; g < groups; ++g) {
      const int8_t *bg = bp + (int64_t)g * QNR * QKG;
      __m256i b[4];
      for (int v = 0; v < 4; ++v) b[v] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(bg + 16 * v)));
      for (int i = 0; i < Q_AVX2_ROWS; ++i) {
        if (i >= nr) break;
        uint32_t quad;
        if (g < full)
          memcpy(&quad, a + (r + i) * lda + (int64_t)g * QKG, sizeof quad);
        else
          quad = q_quad(a + (r + i) * lda, k, g);
        /* the 4 bytes as int16, repeated 4 times: the 4 columns of each 16-byte part */
        const __m256i aw = _mm256_cvtepu8_epi16(_mm_set1_epi32((int32_t)quad));
        for (int v = 0; v < 4; ++v) acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(b[v], aw));
      }
    }
    for (int i = 0; i < nr; ++i) {
      /* acc[v]: columns 4v .. 4v + 3, two partial sums each: [c0 c0 c1 c1 | c2 c2 c3 c3] */
      int32_t tile[QNR];
      for (int v = 0; v < 4; v += 2) {
        const __m256i h = _mm256_hadd_epi32(acc[i][v], acc[i][v + 1]); /* [c0 c1 c4 c5 | c2 c3 c6 c7] */
        _mm256_storeu_si256((__m256i *)(tile + 4 * v), _mm256_permute4x64_epi64(h, 0xD8));
      }
      q_store(c + (r + i) * ldc, tile, cols);
    }
  }
}

/* ---- AVX-512 VNNI: vpdpbusd ---- */
#define Q_VNNI_ROWS 8
__attribute__((target("avx512f,avx512vnni"), optimize("O3"))) static void q_panel_vnni512(int32_t rows, int32_t k, const uint8_t *a,
                                                                          int64_t lda, const int8_t *bp, int32_t *c,
                                                                          int64_t ldc, int32_t cols) {
  const int32_t groups = q_groups(k), full = k / QKG; /* groups read straight from A (all 4 bytes in the row) */
  const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
  for (int32_t r = 0; r < rows; r += Q_VNNI_ROWS) {
    const int32_t nr = rows - r < Q_VNNI_ROWS ? rows - r : Q_VNNI_ROWS;
    const uint8_t *ar = a + r * lda;
    __m512i acc[Q_VNNI_ROWS];
    _Pragma("GCC unroll 8") for (int i = 0; i < Q_VNNI_ROWS; ++i) acc[i] = _mm512_setzero_si512();
    if (nr == Q_VNNI_ROWS) {
      for (int32_t g = 0; g < full; ++g) {
        const __m512i b = _mm512_loadu_si512((const void *)(bp + (int64_t)g * QNR * QKG));
        _Pragma("GCC unroll 8") for (int i = 0; i < Q_VNNI_ROWS; ++i) {
          int32_t quad;
          memcpy(&quad, ar + i * lda + (int64_t)g * QKG, sizeof quad);
          acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_set1_epi32(quad), b);
        }
      }
    }
    for (int32_t g = nr == Q_VNNI_ROWS ? full : 0; g < groups; ++g) { /* short tiles, and k's last group */
      const __m512i b = _mm512_loadu_si512((const void *)(bp + (int64_t)g * QNR * QKG));
      for (int i = 0; i < nr; ++i)
        acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_set1_epi32((int32_t)q_quad(ar + i * lda, k, g)), b);
    }
    for (int i = 0; i < nr; ++i) _mm512_mask_storeu_epi32(c + (r + i) * ldc, mask, acc[i]);
  }
}

/* Two panels at once (32 columns): two weight loads feed 16 vpdpbusd per group instead
 * of one feeding 8, the row broadcasts shared (one core, interleaved runs: 128 x 384 x
 * 384 110 -> 137 GOP/s, one row x 384 x 1536 12-15 -> 21-22, the larger two within
 * noise). The first panel is full; `cols` is the second's width. */
__attribute__((target("avx512f,avx512vnni"), optimize("O3"))) static void q_panel2_vnni512(int32_t rows, int32_t k, const uint8_t *a,
                                                                           int64_t lda, const int8_t *bp,
                                                                           int64_t panel_bytes, int32_t *c,
                                                                           int64_t ldc, int32_t cols) {
  const int32_t groups = q_groups(k), full = k / QKG;
  const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
  const int8_t *bq = bp + panel_bytes;
  for (int32_t r = 0; r < rows; r += Q_VNNI_ROWS) {
    const int32_t nr = rows - r < Q_VNNI_ROWS ? rows - r : Q_VNNI_ROWS;
    const uint8_t *ar = a + r * lda;
    __m512i acc[Q_VNNI_ROWS][2];
    _Pragma("GCC unroll 8") for (int i = 0; i < Q_VNNI_ROWS; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
    if (nr == Q_VNNI_ROWS) {
      for (int32_t g = 0; g < full; ++g) {
        const __m512i b0 = _mm512_loadu_si512((const void *)(bp + (int64_t)g * QNR * QKG));
        const __m512i b1 = _mm512_loadu_si512((const void *)(bq + (int64_t)g * QNR * QKG));
        _Pragma("GCC unroll 8") for (int i = 0; i < Q_VNNI_ROWS; ++i) {
          int32_t quad;
          memcpy(&quad, ar + i * lda + (int64_t)g * QKG, sizeof quad);
          const __m512i av = _mm512_set1_epi32(quad);
          acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], av, b0);
          acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], av, b1);
        }
      }
    }
    for (int32_t g = nr == Q_VNNI_ROWS ? full : 0; g < groups; ++g) {
      const __m512i b0 = _mm512_loadu_si512((const void *)(bp + (int64_t)g * QNR * QKG));
      const __m512i b1 = _mm512_loadu_si512((const void *)(bq + (int64_t)g * QNR * QKG));
      for (int i = 0; i < nr; ++i) {
        const __m512i av = _mm512_set1_epi32((int32_t)q_quad(ar + i * lda, k, g));
        acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], av, b0);
        acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], av, b1);
      }
    }
    for (int i = 0; i < nr; ++i) {
      _mm512_storeu_si512((void *)(c + (r + i) * ldc), acc[i][0]);
      _mm512_mask_storeu_epi32(c + (r + i) * ldc + QNR, mask, acc[i][1]);
    }
  }
}
#endif

typedef void (*QPanelFn)(int32_t, int32_t, const uint8_t *, int64_t, const int8_t *, int32_t *, int64_t, int32_t);
typedef void (*QPanel2Fn)(int32_t, int32_t, const uint8_t *, int64_t, const int8_t *, int64_t, int32_t *, int64_t,
                          int32_t);

/* 0 generic, 1 AVX2, 2 AVX-512 VNNI: what the CPU has, capped by ONNXFORGE_CPU_ISA
 * (through gemm_packed.c's onnxforge_cpu_isa_level: avx512 allows VNNI). */
int32_t onnxforge_int8_isa(void) {
  static int32_t level = -1;
  if (level < 0) {
    int32_t most = onnxforge_cpu_isa_level(), have = most > 0 ? 1 : 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (most >= 2 && __builtin_cpu_supports("avx512vnni")) have = 2;
#else
    have = 0;
#endif
    level = have;
  }
  return level;
}

static QPanelFn q_panel_fn(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (onnxforge_int8_isa()) {
    case 2: return q_panel_vnni512;
    case 1: return q_panel_avx2;
    default: break;
  }
#endif
  return q_panel_generic;
}

typedef struct {
  int32_t m, n, k;
  const uint8_t *a;
  int64_t lda;
  const int8_t *bp;
  int32_t *c;
  int64_t ldc;
  QPanelFn panel;
  QPanel2Fn panel2; /* two panels at once, where the variant has it */
  /* onnxforge_qmatmul_packed's corrections, applied by each task to its rows (off NULL:
   * none): + rowsum(A) off[j] - zero colsum[j], then float32 where out_float */
  const int32_t *off, *colsum;
  int32_t zero, any_offset, out_float;
} QJob;

static void q_correct(const QJob *j, int32_t r0, int32_t r1) {
  float *flt = (float *)j->c; /* the same buffer: a float output has int32's size */
  for (int32_t r = r0; r < r1; ++r) {
    int32_t rowsum = 0;
    if (j->any_offset)
      for (int32_t q = 0; q < j->k; ++q) rowsum += j->a[r * j->lda + q];
    for (int32_t c = 0; c < j->n; ++c) {
      const int64_t at = r * j->ldc + c;
      const int32_t v = j->c[at] + rowsum * j->off[c] - j->zero * j->colsum[c];
      if (j->out_float)
        flt[at] = (float)v;
      else
        j->c[at] = v;
    }
  }
}

/* task t of T: rows [m t / T, m (t + 1) / T), every panel */
static int q_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const QJob *j = (const QJob *)cdata;
  const int64_t tasks = penv ? penv->num_task : 1;
  const int32_t r0 = (int32_t)(j->m * task_id / tasks), r1 = (int32_t)(j->m * (task_id + 1) / tasks);
  const int64_t panel_bytes = (int64_t)q_groups(j->k) * QNR * QKG;
  if (r1 <= r0) return 0;
  const int32_t panels = q_panels(j->n);
  for (int32_t p = 0; p < panels;) {
    const int32_t cols = j->n - p * QNR < QNR ? j->n - p * QNR : QNR;
    if (j->panel2 && p + 1 < panels) { /* two at once: the first is full */
      const int32_t next = j->n - (p + 1) * QNR < QNR ? j->n - (p + 1) * QNR : QNR;
      j->panel2(r1 - r0, j->k, j->a + r0 * j->lda, j->lda, j->bp + p * panel_bytes, panel_bytes,
                j->c + r0 * j->ldc + p * QNR, j->ldc, next);
      p += 2;
      continue;
    }
    j->panel(r1 - r0, j->k, j->a + r0 * j->lda, j->lda, j->bp + p * panel_bytes, j->c + r0 * j->ldc + p * QNR,
             j->ldc, cols);
    p += 1;
  }
  if (j->off) q_correct(j, r0, r1);
  return 0;
}

/* c (m x n, row stride ldc) = a (m x k uint8, row stride lda) @ the packed weight, in int32. */
static int32_t q_run(QJob *job) {
  job->panel = q_panel_fn();
  job->panel2 = NULL;
#if defined(__x86_64__) && defined(__GNUC__)
  if (job->panel == q_panel_vnni512) job->panel2 = q_panel2_vnni512;
#endif
  if (onnxforge_in_serial() || job->m < 2 || 2LL * job->m * job->n * job->k < ONNXFORGE_PARALLEL_MIN_FLOPS)
    return q_task(0, NULL, job);
  return TVMBackendParallelLaunch(q_task, job, 0);
}

int32_t onnxforge_qgemm_u8s8(int32_t m, int32_t n, int32_t k, const uint8_t *a, int64_t lda, const int8_t *bp,
                             int32_t *c, int64_t ldc) {
  if (m <= 0 || n <= 0) return 0;
  if (k <= 0) {
    for (int32_t r = 0; r < m; ++r) memset(c + r * ldc, 0, sizeof(int32_t) * (size_t)n);
    return 0;
  }
  QJob job = {m, n, k, a, lda, bp, c, ldc, NULL, NULL, NULL, NULL, 0, 0, 0};
  return q_run(&job);
}

/* out (m x n) = (A - za) @ (W - zw), exact (int32 sums), as int32, or as float32 when
 * out_float (what codegen/integer.py's MatMulInteger computes when the sums are exact
 * in float32, and what its int32 product computes otherwise): A uint8 (m x k),
 * za its zero point (za_count 1; 0: none); W the weight (k x n, int8, or uint8 when
 * w_unsigned), zw its zero point (zw_count 1 or n values of W's type; 0: none). An unsigned weight
 * goes to the kernel as W - 128 (exact in int8) and the rest through row and column
 * sums: (A - za)(W - zw) = A (W - o) + rowsum(A) o - za colsum(W - zw), o = 128 - zw for
 * uint8, -zw for int8. The weight is packed on every call (blas.py packs a weight
 * parameter once, at load, for onnxforge_qmatmul_packed); the int32 sums are formed in
 * `out` itself (float output: converted in place). */
int32_t onnxforge_qmatmul_packed(int32_t m, int32_t n, int32_t k, const uint8_t *a, const uint8_t *za,
                                 int32_t za_count, const int8_t *bp, const int32_t *cols, void *out,
                                 int32_t out_float);

int32_t onnxforge_qmatmul(int32_t m, int32_t n, int32_t k, const uint8_t *a, const uint8_t *za, int32_t za_count,
                          const void *w, int32_t w_unsigned, const void *zw, int32_t zw_count, void *out,
                          int32_t out_float) {
  static __thread Scratch scratch;
  if (m <= 0 || n <= 0) return 0;
  const int64_t packed = onnxforge_qgemm_packed_size(k, n);
  int8_t *bp = (int8_t *)scratch_grow(&scratch, (size_t)(packed / 4 + 2 * (int64_t)n));
  if (!bp) return -1;
  int32_t *cols = (int32_t *)(bp + packed); /* o, then the column sums of W - zw */
  q_pack(k, n, w, n, w_unsigned, zw, zw_count, bp, cols, cols + n);
  return onnxforge_qmatmul_packed(m, n, k, a, za, za_count, bp, cols, out, out_float);
}

/* As onnxforge_qmatmul, the weight packed beforehand (at load: blas.py's qpack kernels):
 * bp as onnxforge_qgemm_pack lays it out (W - 128 for a uint8 weight), cols (2 x n int32)
 * its per-column offsets o and the column sums of W - zw. */
int32_t onnxforge_qmatmul_packed(int32_t m, int32_t n, int32_t k, const uint8_t *a, const uint8_t *za,
                                 int32_t za_count, const int8_t *bp, const int32_t *cols, void *out,
                                 int32_t out_float) {
  if (m <= 0 || n <= 0) return 0;
  int32_t any_offset = 0;
  for (int32_t j = 0; j < n; ++j) any_offset |= cols[j] != 0;
  if (k <= 0) memset(out, 0, sizeof(int32_t) * (size_t)m * (size_t)n); /* the corrections are 0 too */
  QJob job = {m, n, k, a, k, bp, (int32_t *)out, n, NULL, NULL, cols, cols + n, za_count ? (int32_t)*za : 0,
              any_offset, out_float};
  if (k <= 0) {
    q_correct(&job, 0, m);
    return 0;
  }
  return q_run(&job);
}

/* The variant's name, for tests and profiles. */
const char *onnxforge_int8_isa_name(void) {
  static const char *names[] = {"generic", "avx2", "vnni512"};
  return names[onnxforge_int8_isa()];
}

#ifdef __cplusplus
}
#endif
