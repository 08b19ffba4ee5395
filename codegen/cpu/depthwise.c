/* Strided depthwise convolutions (groups == channels), 16 channels at a time.
 *
 * onnxforge_dwconv2d_block(task, ...) computes a band of up to DW_BAND output rows of 16
 * consecutive channels of one image: their input rows are copied, zero-padded and
 * interleaved (pixel-major, 16 channels per pixel; 8x8 register transposes) into a ring
 * of kh rows, so that every tap is one 16-lane multiply-add with the 16 channels' weights
 * for that tap whatever the stride; 4 output pixels share each weight load; each finished
 * output row gets its bias and activation and is transposed back into the 16 NCHW planes.
 * kernels.c's plane kernel loads a strided window row by row and ran stride-2 layers at
 * up to 2.2x this one's time (256 channels, 5x5, 14x14 -> 7x7: 114 us against 53, one
 * core); at stride 1 it stays (the two transposes cost as much as 3x3's nine taps there:
 * 1.3-1.5x slower on 28-112 px planes).
 *
 * Tasks: image x channel block x band, in that order (extern_calls.dwconv_te loops over
 * them, over TVM's thread pool when the layer is large). Any window (kh <= 16), stride
 * and padding; one generic source with GCC vector types, compiled per ISA (avx512, avx2,
 * baseline) and picked at run time like gemm_packed.c (onnxforge_cpu_isa_level); below
 * AVX2 the tasks hand their channels to the plane kernel.
 */
#include <stdint.h>
#include <string.h>

#include "activation.h"
#include "thread_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DW_LANES 16
#define DW_BAND 8 /* output rows per task (blas.py's task count assumes it) */
#define DW_PIX 4  /* output pixels per weight load */

typedef float dwv __attribute__((vector_size(64)));
typedef float dwvu __attribute__((vector_size(64), aligned(4), may_alias));

typedef float dwv8 __attribute__((vector_size(32)));
typedef float dwv8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t dwi8 __attribute__((vector_size(32)));

/* r[i] (8 rows of 8) transposed in registers: r[j] = column j (unpack, shuffle, lane
 * swap; gcc lowers the shuffles to AVX2's, or emulates them below). */
static inline __attribute__((always_inline)) void dw_transpose8(dwv8 r[8]) {
  const dwi8 lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const dwi8 even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
  const dwi8 first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
  dwv8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], even);
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], odd);
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], even);
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], odd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shuffle(u[i], u[i + 4], first);
    r[i + 4] = __builtin_shuffle(u[i], u[i + 4], second);
  }
}

/* Input row iy of nc <= 16 planes (plane stride ip) into dst, pixel-major: dst[(x + pl) *
 * 16 + l] for x < wd, zero on the left pad, right of the image and in lanes >= nc;
 * 8 x 8 blocks through registers. */
static inline __attribute__((always_inline)) void dw_fill_row(float *__restrict dst, const float *__restrict in,
                                                              int64_t ip, int nc, int wd, int pl, int pw) {
  memset(dst, 0, sizeof(float) * DW_LANES * (size_t)pw);
  int n = wd < pw - pl ? wd : pw - pl;
  for (int g = 0; g < nc; g += 8) {
    int x = 0;
    for (; x + 8 <= n; x += 8) {
      dwv8 r[8];
      for (int i = 0; i < 8; ++i) {
        const dwv8 none = {0};
        if (g + i < nc)
          r[i] = *(const dwv8u *)(in + (g + i) * ip + x);
        else
          r[i] = none;
      }
      dw_transpose8(r);
      for (int i = 0; i < 8; ++i) *(dwv8u *)(dst + (int64_t)(x + i + pl) * DW_LANES + g) = r[i];
    }
    for (int l = g; l < nc && l < g + 8; ++l)
      for (int xx = x; xx < n; ++xx) dst[(int64_t)(xx + pl) * DW_LANES + l] = in[l * ip + xx];
  }
}

/* One finished output row acc (ow x 16, pixel-major) into nc planes of out (plane stride
 * op) at offset `at`. */
static inline __attribute__((always_inline)) void dw_store_row(float *__restrict out, const float *__restrict acc,
                                                               int64_t op, int64_t at, int nc, int ow) {
  for (int g = 0; g < nc; g += 8) {
    int x = 0;
    for (; x + 8 <= ow; x += 8) {
      dwv8 r[8];
      for (int i = 0; i < 8; ++i) r[i] = *(const dwv8u *)(acc + (int64_t)(x + i) * DW_LANES + g);
      dw_transpose8(r);
      for (int i = 0; i < 8 && g + i < nc; ++i) *(dwv8u *)(out + (g + i) * op + at + x) = r[i];
    }
    for (int l = g; l < nc && l < g + 8; ++l)
      for (int xx = x; xx < ow; ++xx) out[l * op + at + xx] = acc[(int64_t)xx * DW_LANES + l];
  }
}

static inline __attribute__((always_inline)) void dw_block_body(
    const float *__restrict in, const float *__restrict w, const float *__restrict bias, float *__restrict out,
    float *__restrict scratch, int nc, int h, int wd, int oh, int ow, int kh, int kw, int sh, int sw, int pt,
    int pl, int oy0, int oy1, const Act *act) {
  const int64_t ip = (int64_t)h * wd, op = (int64_t)oh * ow;
  const int pw = (ow - 1) * sw + kw; /* the padded row length the windows read */
  const int taps = kh * kw;
  float *wt = scratch;                                 /* taps x 16: tap-major weights */
  float *zero = wt + (int64_t)taps * DW_LANES;         /* pw x 16 zeros: rows outside the image */
  float *acc = zero + (int64_t)pw * DW_LANES;          /* ow x 16: one output row */
  float *ring = acc + (int64_t)ow * DW_LANES;          /* kh rows of pw x 16 */
  for (int t = 0; t < taps; ++t)
    for (int l = 0; l < DW_LANES; ++l) wt[t * DW_LANES + l] = l < nc ? w[(int64_t)l * taps + t] : 0.0f;
  memset(zero, 0, sizeof(float) * DW_LANES * (size_t)pw);
  dwv b = {0};
  for (int l = 0; l < nc; ++l) b[l] = bias ? bias[l] : 0.0f;
  int held[16];
  const float *r[16];
  for (int s = 0; s < kh; ++s) held[s] = -1;
  for (int oy = oy0; oy < oy1; ++oy) {
    for (int ky = 0; ky < kh; ++ky) {
      int iy = oy * sh - pt + ky;
      if (iy < 0 || iy >= h) {
        r[ky] = zero;
        continue;
      }
      int slot = iy % kh;
      float *dst = ring + (int64_t)slot * pw * DW_LANES;
      if (held[slot] != iy) {
        dw_fill_row(dst, in + (int64_t)iy * wd, ip, nc, wd, pl, pw);
        held[slot] = iy;
      }
      r[ky] = dst;
    }
    int ox = 0;
    for (; ox + DW_PIX <= ow; ox += DW_PIX) {
      dwv a[DW_PIX];
      for (int p = 0; p < DW_PIX; ++p) a[p] = b;
      for (int ky = 0; ky < kh; ++ky) {
        const float *rr = r[ky] + (int64_t)ox * sw * DW_LANES;
        const float *ww = wt + ky * kw * DW_LANES;
        for (int kx = 0; kx < kw; ++kx) {
          dwv wv = *(const dwvu *)(ww + kx * DW_LANES);
          for (int p = 0; p < DW_PIX; ++p) a[p] += wv * *(const dwvu *)(rr + (p * sw + kx) * DW_LANES);
        }
      }
      for (int p = 0; p < DW_PIX; ++p) *(dwvu *)(acc + (int64_t)(ox + p) * DW_LANES) = a[p];
    }
    for (; ox < ow; ++ox) {
      dwv a = b;
      for (int ky = 0; ky < kh; ++ky) {
        const float *rr = r[ky] + (int64_t)ox * sw * DW_LANES;
        const float *ww = wt + ky * kw * DW_LANES;
        for (int kx = 0; kx < kw; ++kx) a += *(const dwvu *)(ww + kx * DW_LANES) * *(const dwvu *)(rr + kx * DW_LANES);
      }
      *(dwvu *)(acc + (int64_t)ox * DW_LANES) = a;
    }
    if (act->kind != ACT_NONE) act_row(acc, ow * DW_LANES, NULL, 0.0f, act);
    dw_store_row(out, acc, op, (int64_t)oy * ow, nc, ow);
  }
}

/* kernels.c: one plane at a time (the path below AVX2) */
int32_t onnxforge_dwconv2d_plane(int32_t plane, int32_t c, int32_t h, int32_t wd, int32_t oh, int32_t ow, int32_t kh,
                                 int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, const float *x,
                                 const float *w, const float *bias, int32_t bias_kind, int32_t act, float lo, float hi,
                                 float alpha, float beta, float *out);

typedef void (*DwBlockFn)(const float *, const float *, const float *, float *, float *, int, int, int, int, int, int,
                          int, int, int, int, int, int, int, const Act *);

/* 3x3 and 5x5 at stride 1 and 2 get compile-time windows (unrolled taps); the rest the
 * same code with run-time ones. */
#define DW_BLOCK_VARIANT(SFX, ATTR)                                                                             \
  static ATTR __attribute__((optimize("O3"))) void dw_block_##SFX(                                              \
      const float *in, const float *w, const float *bias, float *out, float *scratch, int nc, int h, int wd,     \
      int oh, int ow, int kh, int kw, int sh, int sw, int pt, int pl, int oy0, int oy1, const Act *act) {        \
    if (kh == 3 && kw == 3 && sh == 1 && sw == 1)                                                                \
      dw_block_body(in, w, bias, out, scratch, nc, h, wd, oh, ow, 3, 3, 1, 1, pt, pl, oy0, oy1, act);            \
    else if (kh == 3 && kw == 3 && sh == 2 && sw == 2)                                                           \
      dw_block_body(in, w, bias, out, scratch, nc, h, wd, oh, ow, 3, 3, 2, 2, pt, pl, oy0, oy1, act);            \
    else if (kh == 5 && kw == 5 && sh == 1 && sw == 1)                                                           \
      dw_block_body(in, w, bias, out, scratch, nc, h, wd, oh, ow, 5, 5, 1, 1, pt, pl, oy0, oy1, act);            \
    else if (kh == 5 && kw == 5 && sh == 2 && sw == 2)                                                           \
      dw_block_body(in, w, bias, out, scratch, nc, h, wd, oh, ow, 5, 5, 2, 2, pt, pl, oy0, oy1, act);            \
    else                                                                                                         \
      dw_block_body(in, w, bias, out, scratch, nc, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, oy0, oy1, act);        \
  }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
DW_BLOCK_VARIANT(avx512, __attribute__((target("avx512f,fma"))))
DW_BLOCK_VARIANT(avx2, __attribute__((target("avx2,fma"))))
DW_BLOCK_VARIANT(base, )
static DwBlockFn dw_block_fn(void) {
  int32_t level = onnxforge_cpu_isa_level();
  return level >= 2 ? dw_block_avx512 : level >= 1 ? dw_block_avx2 : dw_block_base;
}
#else
DW_BLOCK_VARIANT(base, )
static DwBlockFn dw_block_fn(void) { return dw_block_base; }
#endif

/* Task `task` of nb * ceil(c / 16) * ceil(oh / DW_BAND): out[n, c0:c0+16, band] =
 * act(depthwise conv of x with w (+ bias if bias_kind)); x (nb, c, h, wd), w (c, 1, kh,
 * kw), out (nb, c, oh, ow); only the top/left padding is passed (bottom/right follow from
 * oh/ow). The epilogue arguments are onnxforge_sgemm's. */
int32_t onnxforge_dwconv2d_block(int32_t task, int32_t c, int32_t h, int32_t wd, int32_t oh, int32_t ow, int32_t kh,
                                 int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, const float *x,
                                 const float *w, const float *bias, int32_t bias_kind, int32_t act, float lo, float hi,
                                 float alpha, float beta, float *out) {
  static __thread Scratch scratch;
  if (kh > 16 || kh <= 0 || kw <= 0 || sh <= 0 || sw <= 0 || c <= 0 || oh <= 0 || ow <= 0) return -1;
  int32_t bands = (oh + DW_BAND - 1) / DW_BAND, blocks = (c + DW_LANES - 1) / DW_LANES;
  int32_t band = task % bands, block = (task / bands) % blocks, image = task / bands / blocks;
  int32_t c0 = block * DW_LANES, nc = c - c0 < DW_LANES ? c - c0 : DW_LANES;
  int32_t oy0 = band * DW_BAND, oy1 = oy0 + DW_BAND < oh ? oy0 + DW_BAND : oh;
  int64_t pw = (int64_t)(ow - 1) * sw + kw;
  float *buf = scratch_grow(&scratch, (size_t)DW_LANES * ((size_t)kh * kw + (size_t)(kh + 1) * pw + ow));
  if (!buf) return -1;
  int64_t first = (int64_t)image * c + c0; /* plane index of the block's first channel */
  if (onnxforge_cpu_isa_level() < 1) {
    /* baseline vectors (SSE2; arm64's NEON, not measured): the shuffles cost more than they
     * save (3.3x the plane kernel's time on SSE2), so each block's first band runs its
     * channels' whole planes there and the other bands have nothing left to do */
    for (int32_t l = 0; band == 0 && l < nc; ++l)
      if (onnxforge_dwconv2d_plane((int32_t)(first + l), c, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, x, w, bias,
                                   bias_kind, act, lo, hi, alpha, beta, out))
        return -1;
    return 0;
  }
  Act epilogue = act_make(act, lo, hi, alpha, beta);
  dw_block_fn()(x + first * h * wd, w + (int64_t)c0 * kh * kw, bias_kind ? bias + c0 : NULL,
                out + first * oh * ow, buf, nc, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, oy0, oy1, &epilogue);
  return 0;
}

#ifdef __cplusplus
}
#endif
