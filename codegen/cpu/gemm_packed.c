/* onnxforge packed-weight GEMM and direct convolution, linked into compiled x86/arm64
 * modules next to kernels.c.
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
 * activation (activation.h) are applied when the last chunk stores the tile. Row
 * counts that are not a multiple of MR end in 4- and 2-row tiles, then single rows.
 *
 * Convolutions (groups 1, any window, stride, dilation, padding) run on the same tiles
 * with the weight packed the same way: onnxforge_conv2d_packed (below), no im2col.
 *
 * ISA: one generic source written with GCC vector types (16 floats), compiled per
 * variant with a target attribute and its own MR (registers hold MR x 16 accumulators):
 *   x86-64: avx512 (avx512f, MR 12), avx2 (avx2+fma, MR 6), generic (SSE2, MR 2);
 *   aarch64: generic (NEON is baseline, MR 6).
 * The best one the CPU supports is picked at the first call (cpuid); the environment
 * variable ONNXFORGE_CPU_ISA=generic|avx2|avx512 caps it at a lower one, so every
 * variant can be run and tested on any host (an unknown value means generic).
 */
#include <limits.h>
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
#define CONV_KC 256 /* taps per chunk in the direct convolution: its 16 KiB weight chunk and the
                        * input lines of its taps share L1 */

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
  const float *a;    /* m x k, row-major */
  const float *bp;   /* packed: ceil(n / 16) panels of k x 16 */
  const float *bias; /* n values (one per column) or NULL */
  float *c;          /* m x n, row-major */
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

/* A direct convolution (groups 1) over the packed weight: see onnxforge_conv2d_packed. */
typedef struct {
  int32_t co, oh, ow, sh, sw;
  int32_t k;              /* taps: ci * kh * kw */
  const float *x;         /* the (zero-padded) input */
  int64_t x_image, x_row; /* its strides: per image, per row (per channel: off) */
  const int32_t *off;     /* k offsets of tap q = (c, ky, kx) from an output pixel's window origin */
  const float *bp;        /* the weight (co x k) packed: ceil(co / 16) panels of k x 16 */
  const float *bias;      /* co values or NULL */
  float *out;             /* nb x co x oh x ow */
  Act act;
  int32_t rows_per_block; /* output rows per block: their input rows stay in cache across panels */
} DirectJob;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* 8 pixels x 16 channels of a block buffer (rows of 16) to `cols` channel rows of 8
 * pixels (row j at out + j * npix): two 8x8 transposes in registers. */
__attribute__((target("avx2,fma"))) static void transpose8_avx2(float *out, int64_t npix, const float *buf,
                                                                 int32_t cols) {
  for (int32_t h = 0; h < 2 && h * 8 < cols; ++h) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(buf + i * NR + h * 8);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    /* r[i] (i < 4): channel i of pixels 0-3 in its low half, channel i + 4 in its high
     * half; r[i + 4] the same for pixels 4-7 */
    for (int i = 0; i < 4; ++i) {
      const int32_t c = h * 8 + i;
      if (c < cols) _mm256_storeu_ps(out + c * npix, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
      if (c + 4 < cols) _mm256_storeu_ps(out + (c + 4) * npix, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
  }
}
#endif

/* The direct convolution's tiles leave their sums pixel-major in a block buffer
 * (buf[p * 16 + j]: pixel p, channel j of the panel, vector stores and adds over k
 * chunks); once the block is complete it is transposed into the NCHW output (channel j's
 * pixels at out + j * npix), where the bias and activation then run on long rows. The
 * earlier per-tile scatter (scalar stores 16 rows apart, again for every k chunk) made
 * YOLOv8n's 3x3 layers 4-13% slower (single thread, C harness) and the model 8-13%. */
static PG_OPT void block_to_nchw(float *out, int64_t npix, const float *buf, int32_t n, int32_t cols) {
  int32_t p = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if (onnxforge_cpu_isa_level() >= 1) {
    for (; p + 8 <= n; p += 8) transpose8_avx2(out + p, npix, buf + (int64_t)p * NR, cols);
  }
#endif
  for (int32_t j = 0; j < cols; ++j)
    for (int32_t q = p; q < n; ++q) out[j * npix + q] = buf[(int64_t)q * NR + j];
}

/* One k step of a GEMM tile: the packed weight's row q times column q of the tile's rows of A. */
#define GEMM_STEP(q, ROWS, VT, VTU, VW)                                                                          \
  {                                                                                                              \
    VT b[NR / VW];                                                                                               \
    _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) b[v] = *(const VTU *)(bp + (int64_t)(q) * NR + v * VW); \
    _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r) {                                                    \
      float s = a[r * lda + (q)];                                                                                \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) acc[r][v] += s * b[v];                          \
    }                                                                                                            \
  }

/* A tile of ROWS rows x 16 columns over a k chunk, accumulated in registers (VT: a
 * native vector of VW floats, VTU its unaligned twin). Instantiated for the variant's MR
 * and for 4 and 2 rows, so that a row count that is not a multiple of MR (16 output
 * channels with MR 6) still runs in register tiles rather than one row at a time. */
#define PACKED_GEMM_TILE(NAME, ATTR, ROWS, VT, VTU, VW)                                                          \
  static ATTR void NAME(int32_t kc, const float *a, int64_t lda, const float *bp, const float *pf, float *c,      \
                        int64_t ldc, int32_t cols, int first, int last, const float *bias, const Act *act) {      \
    VT acc[ROWS][NR / VW];                                                                                        \
    _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r)                                                       \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) acc[r][v] = (VT){0};                             \
    /* unrolled by 4, the prefetch test outside the loop: a quarter of the loop overhead      \
     * (10-45% on 6-48 rows in cache in a single-thread micro-benchmark, same sums) */       \
    if (pf)                                                                                                       \
      _Pragma("GCC unroll 4") for (int32_t q = 0; q < kc; ++q) {                                                  \
        __builtin_prefetch(pf + (int64_t)q * NR);                                                                 \
        GEMM_STEP(q, ROWS, VT, VTU, VW)                                                                           \
      }                                                                                                           \
    else                                                                                                          \
      _Pragma("GCC unroll 4") for (int32_t q = 0; q < kc; ++q) { GEMM_STEP(q, ROWS, VT, VTU, VW) }                \
    float tile[ROWS][NR] __attribute__((aligned(64)));                                                            \
    _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r)                                                       \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) *(VTU *)(tile[r] + v * VW) = acc[r][v];          \
    tile_store(c, ldc, &tile[0][0], ROWS, cols, first, last, bias, act);                               \
  }

/* Direct convolution: a tile of ROWS output pixels x 16 output channels over taps
 * [0, kc): tap q of pixel r reads x[off[q] + PIX(r)] (x: the window origin of the
 * tile's first pixel in the zero-padded input) and multiplies the packed weight's row
 * q, as the GEMM tile multiplies A's. The sums go to dst[ROWS][16] (written by the
 * first k chunk, added to by later ones). Two kinds:
 * - along one output row, PIX(r) = r * SX (SX: the stride along the row). CONV_TILE
 *   makes three: NAME for any stride (sx), NAME##_s1 and NAME##_s2 for strides 1 and 2
 *   with the loop unrolled by 3 (the pixels' loads at constant offsets, a third of the
 *   loop overhead: the same speed on a quiet core, 10-25% faster when the VM's core is
 *   busier, as on 32 -> 32 3x3 at 80x80 in an interleaved single-thread benchmark);
 * - NAME##_px: any ROWS pixels of a block, rows may end inside the tile, PIX(r) =
 *   px[r] (held in registers). For short rows, which the first kind ends in 4-, 2- and
 *   1-pixel tiles that hide the FMA latency poorly: 10-pixel rows (YOLOv8n's deepest
 *   3x3 layers) ran at 72-88 GFLOP/s that way, 96-100 in MR tiles across rows (one
 *   thread, C harness); on 80-pixel rows the constant offsets are 7-9% faster. */
#define CONV_TILE_BODY(NAME, ATTR, ROWS, VT, VTU, VW, SETUP, PIX, XQ, UNROLL)                                    \
  static ATTR void NAME(int32_t kc, const float *x, const int32_t *off, const int32_t *px, int32_t sx,          \
                        const float *bp, float *dst, int first) {                                               \
    VT acc[ROWS][NR / VW];                                                                                      \
    SETUP                                                                                                       \
    _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r)                                                     \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) acc[r][v] = (VT){0};                           \
    _Pragma(UNROLL) for (int32_t q = 0; q < kc; ++q) {                                                          \
      VT b[NR / VW];                                                                                            \
      _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) b[v] = *(const VTU *)(bp + (int64_t)q * NR + v * VW); \
      const float *xq = x + off[q];                                                                             \
      XQ                                                                                                        \
      _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r) {                                                 \
        float s = xq[PIX(r)];                                                                                   \
        _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) acc[r][v] += s * b[v];                       \
      }                                                                                                         \
    }                                                                                                           \
    if (first)                                                                                                  \
      _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r)                                                   \
        _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) *(VTU *)(dst + r * NR + v * VW) = acc[r][v]; \
    else                                                                                                        \
      _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r)                                                   \
        _Pragma("GCC unroll 4") for (int v = 0; v < NR / VW; ++v) *(VTU *)(dst + r * NR + v * VW) += acc[r][v]; \
  }
#define PIX_STRIDE_sx(r) ((r) * sx)
#define PIX_STRIDE_1(r) (r)
#define PIX_STRIDE_2(r) ((r) * 2)
/* the pixel offsets in registers; xq as a base register (an empty asm), so each load
 * is xq + po[r] * 4 rather than an add of off[q] and po[r] per pixel */
#define PX_SETUP(ROWS)                                                                                           \
  int64_t po[ROWS];                                                                                             \
  _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; ++r) po[r] = px[r];
#define PIX_PX(r) po[r]
#define XQ_BASE __asm__("" : "+r"(xq));
#define CONV_TILE(NAME, ATTR, ROWS, VT, VTU, VW)                                                                 \
  CONV_TILE_BODY(NAME, ATTR, ROWS, VT, VTU, VW, (void)px;, PIX_STRIDE_sx, , "GCC unroll 1")                      \
  CONV_TILE_BODY(NAME##_s1, ATTR, ROWS, VT, VTU, VW, (void)px; (void)sx;, PIX_STRIDE_1, , "GCC unroll 3")        \
  CONV_TILE_BODY(NAME##_s2, ATTR, ROWS, VT, VTU, VW, (void)px; (void)sx;, PIX_STRIDE_2, , "GCC unroll 3")        \
  CONV_TILE_BODY(NAME##_px, ATTR, ROWS, VT, VTU, VW, PX_SETUP(ROWS) (void)sx;, PIX_PX, XQ_BASE, "GCC unroll 3")

/* A conv tile function (CONV_TILE_BODY's signature). */
typedef void (*ConvTileFn)(int32_t, const float *, const int32_t *, const int32_t *, int32_t, const float *, float *,
                           int);

/* One variant: NAME##_block (MR rows), NAME##_block4, NAME##_block2, NAME##_row (one
 * row, four partial sums over k so the FMA latency is hidden), NAME##_range (rows
 * r0..r1, panels p0..p1). */
#define PACKED_GEMM_VARIANT(NAME, ATTR, MR, VT, VTU, VW)                                                         \
  PACKED_GEMM_TILE(NAME##_block, ATTR, MR, VT, VTU, VW)                                                          \
  PACKED_GEMM_TILE(NAME##_block4, ATTR, 4, VT, VTU, VW)                                                          \
  PACKED_GEMM_TILE(NAME##_block2, ATTR, 2, VT, VTU, VW)                                                          \
  static ATTR void NAME##_row(int32_t kc, const float *a, const float *bp, float *c, int32_t cols, int first,   \
                              int last, const float *bias, const Act *act) {                                   \
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
    tile_store(c, 0, tile, 1, cols, first, last, bias, act);                                          \
  }                                                                                                             \
  static ATTR void NAME##_range(const PackedJob *j, int32_t r0, int32_t r1, int32_t p0, int32_t p1) {          \
    const int64_t k = j->k, n = j->n, lda = k, ldc = n;                                               \
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
          const float *a = j->a + mb * lda + kb;                   \
          float *c = j->c + mb * ldc + col0;                                                                    \
          int32_t r = mb;                                                                                       \
          /* MR 6 with 2 rows left: the last 8 as two 4-row tiles (a 2-row tile has too few                     \
           * accumulators to hide the FMA latency; 10-20% faster on 14 or 20 rows in cache) */                  \
          const int32_t mr_end = MR == 6 && (me - mb) % MR == 2 && me - mb > MR ? me - 8 : me;                  \
          for (; r + MR <= mr_end; r += MR, a += MR * lda, c += MR * ldc, pf = NULL)      \
            NAME##_block(kc, a, lda, bp, pf, c, ldc, cols, first, last, bias, &j->act);                     \
          for (; r + 4 <= me; r += 4, a += 4 * lda, c += 4 * ldc, pf = NULL)           \
            NAME##_block4(kc, a, lda, bp, pf, c, ldc, cols, first, last, bias, &j->act);                    \
          for (; r + 2 <= me; r += 2, a += 2 * lda, c += 2 * ldc, pf = NULL)           \
            NAME##_block2(kc, a, lda, bp, pf, c, ldc, cols, first, last, bias, &j->act);                    \
          if (r < me) NAME##_row(kc, a, bp, c, cols, first, last, bias, &j->act);                           \
        }                                                                                                       \
        if (last) break;                                                                                        \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
  CONV_TILE(NAME##_conv, ATTR, MR, VT, VTU, VW)                                                                 \
  CONV_TILE(NAME##_conv4, ATTR, 4, VT, VTU, VW)                                                                 \
  CONV_TILE(NAME##_conv2, ATTR, 2, VT, VTU, VW)                                                                 \
  CONV_TILE(NAME##_conv1, ATTR, 1, VT, VTU, VW)                                                                 \
  static ATTR void NAME##_direct(const DirectJob *j, int64_t img, int32_t y0, int32_t y1, int32_t p0, int32_t p1, \
                                 float *buf) {                                                                  \
    static const int32_t width[4] = {MR, 4, 2, 1};                                                              \
    static const ConvTileFn by_kind[4][4] = {                                                                  \
        {NAME##_conv, NAME##_conv4, NAME##_conv2, NAME##_conv1},                                                \
        {NAME##_conv_s1, NAME##_conv4_s1, NAME##_conv2_s1, NAME##_conv1_s1},                                    \
        {NAME##_conv_s2, NAME##_conv4_s2, NAME##_conv2_s2, NAME##_conv1_s2},                                    \
        {NAME##_conv_px, NAME##_conv4_px, NAME##_conv2_px, NAME##_conv1_px}};                                   \
    /* rows shorter than 4 tiles: tiles across rows (see CONV_TILE_BODY) */                                     \
    const int across = j->ow < 4 * MR;                                                                          \
    const ConvTileFn *tiles = by_kind[across ? 3 : j->sw == 1 ? 1 : j->sw == 2 ? 2 : 0];                        \
    const int64_t k = j->k, npix = (int64_t)j->oh * j->ow;                                                      \
    const float *xi = j->x + img * j->x_image;                                                                  \
    float *oi = j->out + img * j->co * npix;                                                                    \
    int32_t px[MR];                                                                                             \
    for (int32_t yb = y0; yb < y1; yb += j->rows_per_block) {                                                   \
      int32_t ye = yb + j->rows_per_block < y1 ? yb + j->rows_per_block : y1;                                   \
      const int32_t n = (ye - yb) * j->ow;                                                                      \
      for (int32_t p = p0; p < p1; ++p) {                                                                       \
        int32_t co0 = p * NR, cols = j->co - co0 < NR ? j->co - co0 : NR;                                       \
        for (int32_t kb = 0; kb < j->k; kb += CONV_KC) {                                                        \
          int32_t kc = j->k - kb <= CONV_KC + CONV_KC / 2 ? j->k - kb : CONV_KC;                                \
          const int32_t *off = j->off + kb;                                                                     \
          const float *bp = j->bp + ((int64_t)p * k + kb) * NR;                                                 \
          if (across) { /* the block's pixels in order: tiles of MR, then 4, 2, 1 */                            \
            const float *xb = xi + (int64_t)yb * j->sh * j->x_row;                                              \
            int32_t q = 0;                                                                                      \
            for (int t = 0; t < 4; ++t)                                                                         \
              for (; q + width[t] <= n; q += width[t]) {                                                        \
                for (int r = 0; r < width[t]; ++r) /* pixel q + r: its window origin from xb */                 \
                  px[r] = ((q + r) / j->ow) * j->sh * j->x_row + ((q + r) % j->ow) * j->sw;                     \
                tiles[t](kc, xb, off, px, j->sw, bp, buf + (int64_t)q * NR, kb == 0);                           \
              }                                                                                                 \
          } else {                                                                                              \
            float *d = buf;                                                                                     \
            for (int32_t y = yb; y < ye; ++y) {                                                                 \
              const float *xr = xi + (int64_t)y * j->sh * j->x_row;                                             \
              int32_t ox = 0;                                                                                   \
              for (int t = 0; t < 4; ++t) /* tiles of MR pixels, then 4, 2, 1 for the rest of the row */       \
                for (; ox + width[t] <= j->ow; ox += width[t], d += width[t] * NR)                              \
                  tiles[t](kc, xr + (int64_t)ox * j->sw, off, px, j->sw, bp, d, kb == 0);                       \
            }                                                                                                   \
          }                                                                                                     \
          if (kb + kc == j->k) break;                                                                           \
        }                                                                                                       \
        float *o = oi + co0 * npix + (int64_t)yb * j->ow;                                                       \
        block_to_nchw(o, npix, buf, n, cols);                                                                   \
        if (j->bias || j->act.kind != ACT_NONE)                                                                 \
          for (int32_t c = 0; c < cols; ++c)                                                                    \
            act_row(o + c * npix, n, NULL, j->bias ? j->bias[co0 + c] : 0.0f, &j->act);                         \
      }                                                                                                         \
    }                                                                                                           \
  }

typedef void (*RangeFn)(const PackedJob *, int32_t, int32_t, int32_t, int32_t);
typedef void (*DirectFn)(const DirectJob *, int64_t, int32_t, int32_t, int32_t, int32_t, float *);
typedef struct { const char *name; RangeFn range; DirectFn direct; int32_t mr; } Variant;

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
  if (cap && !strcmp(cap, "wide-test")) return (Variant){"wide-test", gemm_wide_test_range, gemm_wide_test_direct, MR_AVX512};
#endif
  int32_t level = onnxforge_cpu_isa_level();
  if (level >= 2) return (Variant){"avx512", gemm_avx512_range, gemm_avx512_direct, MR_AVX512};
  if (level >= 1) return (Variant){"avx2", gemm_avx2_range, gemm_avx2_direct, MR_AVX2};
  return (Variant){"generic", gemm_generic_range, gemm_generic_direct, MR_GENERIC};
#else
  return (Variant){"generic", gemm_generic_range, gemm_generic_direct, MR_GENERIC};
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
  if (onnxforge_in_serial() || 2LL * m * n * k < ONNXFORGE_PARALLEL_MIN_FLOPS) {
    packed_task(0, NULL, &task);
    return 0;
  }
  return TVMBackendParallelLaunch(packed_task, &task, 0);
}

/* ---- direct convolution over the packed weight (groups 1; NCHW / OIHW) ----
 * out = act(conv2d(x, w) + bias) with w (co x ci kh kw) packed as a GEMM weight
 * (pack_weight with trans: 16-channel panels, at load): each tile of MR output pixels
 * of one output row x 16 output channels sums the taps straight from the input
 * (zero-padded into a scratch copy when the windows reach outside it), with no
 * im2col; onnxforge's im2col by blocks + OpenBLAS (conv.c), which repacked both the
 * weight and the column block on every call, ran YOLOv8n's 3x3 convolutions at 57-94
 * GFLOP/s on 2 threads where onnxruntime's ran at 96-138. */
typedef struct PadJob PadJob;
static int pad_task(int task_id, TVMParallelGroupEnv *penv, void *cdata);

/* pad: the zero-padded copy the tasks make first (their shares, then a barrier), or NULL */
typedef struct { const DirectJob *job; const Variant *v; int32_t nb, by_panels; PadJob *pad; } DirectTask;

/* The calling thread's block buffer (rows_per_block output rows x 16 channels). */
static __thread Scratch block_buffer;

static int direct_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const DirectTask *t = (const DirectTask *)cdata;
  const DirectJob *j = t->job;
  const int64_t tasks = penv ? penv->num_task : 1;
  const int32_t panels = (j->co + NR - 1) / NR;
  if (t->pad) { /* in the same launch as the convolution: one wake-up of the pool, not two */
    pad_task(task_id, penv, t->pad);
    if (penv) TVMBackendParallelBarrier(task_id, penv);
  }
  float *buf = scratch_grow(&block_buffer, (size_t)j->rows_per_block * j->ow * NR);
  if (!buf) return -1;
  if (t->by_panels) { /* few output rows: stripes of channel panels over every row */
    int32_t p0 = (int32_t)(panels * task_id / tasks), p1 = (int32_t)(panels * (task_id + 1) / tasks);
    for (int64_t img = 0; p1 > p0 && img < t->nb; ++img) t->v->direct(j, img, 0, j->oh, p0, p1, buf);
    return 0;
  }
  /* an equal share of the (image, output row) pairs */
  const int64_t units = (int64_t)t->nb * j->oh;
  int64_t u0 = units * task_id / tasks, u1 = units * (task_id + 1) / tasks;
  while (u0 < u1) {
    int64_t img = u0 / j->oh;
    int32_t y0 = (int32_t)(u0 % j->oh), y1 = u1 - img * j->oh < j->oh ? (int32_t)(u1 - img * j->oh) : j->oh;
    t->v->direct(j, img, y0, y1, 0, panels, buf);
    u0 = img * j->oh + y1;
  }
  return 0;
}

struct PadJob { const float *x; float *xp; int32_t planes, h, w, hp, wp, pt, pl; };

static int pad_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const PadJob *j = (const PadJob *)cdata;
  const int64_t tasks = penv ? penv->num_task : 1;
  for (int64_t c = j->planes * task_id / tasks; c < j->planes * (task_id + 1) / tasks; ++c) {
    const float *src = j->x + c * j->h * j->w;
    float *dst = j->xp + c * j->hp * j->wp;
    for (int32_t yy = 0; yy < j->hp; ++yy, dst += j->wp) {
      const int32_t iy = yy - j->pt;
      if (iy < 0 || iy >= j->h) {
        memset(dst, 0, sizeof(float) * (size_t)j->wp);
        continue;
      }
      /* columns [lo, hi) of the padded row come from the input row */
      int32_t lo = j->pl < j->wp ? j->pl : j->wp, hi = j->pl + j->w < j->wp ? j->pl + j->w : j->wp;
      if (hi < lo) hi = lo;
      memset(dst, 0, sizeof(float) * (size_t)lo);
      memcpy(dst + lo, src + (int64_t)iy * j->w, sizeof(float) * (size_t)(hi - lo));
      memset(dst + hi, 0, sizeof(float) * (size_t)(j->wp - hi));
    }
  }
  return 0;
}

/* The calling thread's scratch (padded input and tap offsets). */
static __thread Scratch direct_buffer;

/* out = act(conv2d(x, w) + bias): x (nb, ci, h, w), bp the weight (co, ci, kh, kw) as
 * pack_weight(w.reshape(co, -1), trans=True) packs it, out (nb, co, oh, ow); pt / pl:
 * top / left padding (bottom / right follow from oh, ow); bias: co values when
 * bias_kind; act, lo, hi, alpha, beta: activation.h. -1 on bad sizes or no memory. */
int32_t onnxforge_conv2d_packed(int32_t nb, int32_t ci, int32_t h, int32_t w, int32_t co, int32_t oh, int32_t ow,
                                int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh,
                                int32_t dw, const float *x, const float *bp, float *out, const float *bias,
                                int32_t bias_kind, int32_t act, float lo, float hi, float alpha, float beta) {
  if (sh <= 0 || sw <= 0 || dh <= 0 || dw <= 0 || kh <= 0 || kw <= 0 || pt < 0 || pl < 0) return -1;
  if (nb <= 0 || co <= 0 || oh <= 0 || ow <= 0) return 0;
  const int64_t k = (int64_t)ci * kh * kw, npix = (int64_t)oh * ow;
  const Act epilogue = act_make(act, lo, hi, alpha, beta);
  if (k <= 0) { /* an empty sum: the epilogue of zeros */
    for (int64_t r = 0; r < (int64_t)nb * co; ++r) {
      memset(out + r * npix, 0, sizeof(float) * (size_t)npix);
      act_row(out + r * npix, (int32_t)npix, NULL, bias_kind ? bias[r % co] : 0.0f, &epilogue);
    }
    return 0;
  }
  /* the input rows and columns the windows read: all inside x, or a zero-padded copy */
  const int32_t hp = (oh - 1) * sh + (kh - 1) * dh + 1, wp = (ow - 1) * sw + (kw - 1) * dw + 1;
  const int padded = pt > 0 || pl > 0 || hp > h || wp > w;
  const int64_t plane = padded ? (int64_t)hp * wp : (int64_t)h * w, row = padded ? wp : w;
  if (plane * ci > INT32_MAX) return -1; /* the tap offsets are int32 */
  float *scratch = scratch_grow(&direct_buffer, (padded ? (size_t)nb * ci * plane : 0) + (size_t)k);
  if (!scratch) return -1;
  int32_t *off = (int32_t *)(scratch + (padded ? (size_t)nb * ci * plane : 0));
  for (int32_t c = 0, q = 0; c < ci; ++c)
    for (int32_t ky = 0; ky < kh; ++ky)
      for (int32_t kx = 0; kx < kw; ++kx, ++q) off[q] = (int32_t)(c * plane + (int64_t)ky * dh * row + (int64_t)kx * dw);
  const int serial = onnxforge_in_serial() || 2LL * nb * npix * k * co < ONNXFORGE_PARALLEL_MIN_FLOPS;
  PadJob pad = {x, scratch, nb * ci, h, w, hp, wp, pt, pl};
  int32_t rows_per_block = 256 / ow;
  DirectJob job = {co, oh, ow, sh, sw, (int32_t)k, padded ? scratch : x, ci * plane, row, off, bp,
                   bias_kind ? bias : NULL, out, epilogue, rows_per_block < 1 ? 1 : rows_per_block};
  const int32_t panels = (co + NR - 1) / NR;
  /* channel stripes when there are too few output rows for two tasks of 4 each */
  DirectTask task = {&job, current_variant(), nb, (int64_t)nb * oh < 8 && panels >= 2, padded ? &pad : NULL};
  if (serial) return direct_task(0, NULL, &task);
  return TVMBackendParallelLaunch(direct_task, &task, 0);
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
