/* onnxforge convolutions, linked into compiled x86/arm64 modules next to kernels.c:
 * Conv (any window, stride, dilation, padding, groups; depthwise ones take kernels.c's
 * plane kernel instead) and ConvTranspose, both as OpenBLAS products on blocks that
 * stay in cache, with the bias and activation (activation.h) run on each block. The
 * products and the epilogue come from kernels.c (onnxforge_blas_gemm,
 * onnxforge_epilogue_rows); the work is split over TVM's thread pool. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "activation.h"
#include "thread_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* kernels.c */
void onnxforge_blas_gemm(int32_t trans_a, int32_t m, int32_t n, int32_t k, const float *a, int32_t lda,
                         const float *b, int32_t ldb, float *c, int32_t ldc);
void onnxforge_epilogue_rows(float *c, int32_t ldc, int32_t rows, int32_t cols, const float *bias_row,
                             const Act *act);

/* ---- convolution (NCHW; any window, stride, dilation, padding and groups) ----
 * out = act(conv2d(x, w) + bias), one SGEMM per block of output pixels: the block's
 * im2col (col: K x np, K = cin/groups * kh * kw) is built in a per-thread buffer of
 * about 256 KiB that stays in cache, OpenBLAS multiplies the weight (cout/groups x K,
 * OIHW rows are K-contiguous) by it straight into the output, and the epilogue runs
 * on the block while it is in cache. Built for the whole image first (a TVM im2col
 * kernel, then one SGEMM), col went through memory twice, kh * kw times the input:
 * YOLOv8n spent a quarter of its time in im2col. */
typedef struct {
  int32_t nb, ci, h, w, co, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups;
  const float *x, *wt, *bias; /* bias: co values or NULL */
  float *out;
  Act act;
  int32_t block; /* output pixels per block, at most */
} ConvJob;

/* col[q][t] (rows of np) = the input under tap q for output pixel p0 + t, zero in the padding;
 * x: the image's first input channel of the group. */
static void conv_im2col(const ConvJob *j, const float *x, int32_t p0, int32_t np, float *col) {
  const int32_t cig = j->ci / j->groups;
  for (int32_t c = 0; c < cig; ++c) {
    const float *plane = x + (int64_t)c * j->h * j->w;
    for (int32_t ky = 0; ky < j->kh; ++ky)
      for (int32_t kx = 0; kx < j->kw; ++kx, col += np) {
        for (int32_t t = 0; t < np;) { /* one output row (or its part in the block) at a time */
          const int32_t p = p0 + t, oy = p / j->ow, ox = p % j->ow;
          const int32_t run = j->ow - ox < np - t ? j->ow - ox : np - t;
          const int32_t iy = oy * j->sh - j->pt + ky * j->dh, ix = ox * j->sw - j->pl + kx * j->dw;
          float *dst = col + t;
          t += run;
          if (iy < 0 || iy >= j->h || ix + (int64_t)(run - 1) * j->sw < 0 || ix >= j->w) {
            memset(dst, 0, sizeof(float) * (size_t)run);
            continue;
          }
          /* outputs u in [lo, hi) read inside the row: ix + u * sw in [0, w) */
          int32_t lo = ix >= 0 ? 0 : (-ix + j->sw - 1) / j->sw;
          int32_t hi = (j->w - 1 - ix) / j->sw + 1;
          if (hi > run) hi = run;
          const float *src = plane + (int64_t)iy * j->w + ix;
          memset(dst, 0, sizeof(float) * (size_t)lo);
          if (j->sw == 1) {
            memcpy(dst + lo, src + lo, sizeof(float) * (size_t)(hi - lo));
          } else if (j->sw == 2) { /* a constant stride: vectorized as shuffles */
            for (int32_t u = lo; u < hi; ++u) dst[u] = src[2 * (int64_t)u];
          } else {
            for (int32_t u = lo; u < hi; ++u) dst[u] = src[(int64_t)u * j->sw];
          }
          memset(dst + hi, 0, sizeof(float) * (size_t)(run - hi));
        }
      }
  }
}

/* The calling thread's im2col buffer (one per pool thread). */
static __thread Scratch conv_buffer;

/* The split, decided the same way by every task once the pool's size is known:
 * (image, group) pairs when there are at least two per task; else each task takes an
 * equal range of every pair's pixels (cut into equal blocks of at most j->block), or,
 * when that range would be under 64 pixels (deep layers) and there are channels
 * enough, a stripe of output channels over all the pixels. Equal shares matter: a
 * 20x20 layer cut into 128-pixel blocks gave one thread 256 pixels, the other 144. */
static int conv_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const ConvJob *j = (const ConvJob *)cdata;
  const int64_t tasks = penv ? penv->num_task : 1;
  const int32_t cig = j->ci / j->groups, cog = j->co / j->groups;
  const int32_t k = cig * j->kh * j->kw, npix = j->oh * j->ow;
  const int64_t pairs = (int64_t)j->nb * j->groups;
  int64_t g0 = 0, g1 = pairs;
  int32_t p_lo = 0, p_hi = npix, r0 = 0, r1 = cog;
  if (tasks > 1 && pairs >= 2 * tasks) {
    g0 = pairs * task_id / tasks;
    g1 = pairs * (task_id + 1) / tasks;
  } else if (tasks > 1 && npix / tasks < 64 && cog >= 16 * tasks) { /* stripes of 16 output channels */
    const int64_t tiles = (cog + 15) / 16;
    r0 = (int32_t)(tiles * task_id / tasks) * 16;
    r1 = (int32_t)(tiles * (task_id + 1) / tasks) * 16;
    if (r1 > cog) r1 = cog;
  } else if (tasks > 1) {
    p_lo = (int32_t)((int64_t)npix * task_id / tasks);
    p_hi = (int32_t)((int64_t)npix * (task_id + 1) / tasks);
  }
  if (r1 <= r0 || p_hi <= p_lo || g1 <= g0) return 0;
  const int32_t nblk = (p_hi - p_lo + j->block - 1) / j->block;
  const int32_t step = (p_hi - p_lo + nblk - 1) / nblk; /* equal blocks */
  float *col = scratch_grow(&conv_buffer, (size_t)k * (size_t)step);
  if (!col) return -1;
  for (int64_t pair = g0; pair < g1; ++pair) {
    const int32_t g = (int32_t)(pair % j->groups);
    const int64_t img = pair / j->groups;
    for (int32_t p0 = p_lo; p0 < p_hi; p0 += step) {
      const int32_t np = p_hi - p0 < step ? p_hi - p0 : step;
      conv_im2col(j, j->x + ((int64_t)img * j->ci + (int64_t)g * cig) * j->h * j->w, p0, np, col);
      float *c = j->out + ((int64_t)img * j->co + (int64_t)g * cog + r0) * npix + p0;
      onnxforge_blas_gemm(0, r1 - r0, np, k, j->wt + ((int64_t)g * cog + r0) * k, k, col, np, c, npix);
      if (j->bias || j->act.kind != ACT_NONE)
        onnxforge_epilogue_rows(c, npix, r1 - r0, np, j->bias ? j->bias + (int64_t)g * cog + r0 : NULL, &j->act);
    }
  }
  return 0;
}

/* out = act(conv2d(x, wt) + bias): x (nb, ci, h, w), wt (co, ci / groups, kh, kw), out
 * (nb, co, oh, ow); pt / pl: top / left padding (bottom / right follow from oh, ow);
 * bias: co values when bias_kind; act, lo, hi, alpha, beta: activation.h. Split over
 * TVM's thread pool as conv_task says. */
int32_t onnxforge_conv2d(int32_t nb, int32_t ci, int32_t h, int32_t w, int32_t co, int32_t oh, int32_t ow,
                         int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh,
                         int32_t dw, int32_t groups, const float *x, const float *wt, float *out, const float *bias,
                         int32_t bias_kind, int32_t act, float lo, float hi, float alpha, float beta) {
  if (groups <= 0 || ci % groups || co % groups || sh <= 0 || sw <= 0) return -1;
  if (nb <= 0 || co <= 0 || oh <= 0 || ow <= 0) return 0;
  const int64_t npix = (int64_t)oh * ow, k = (int64_t)(ci / groups) * kh * kw;
  ConvJob job = {nb, ci, h, w, co, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, x, wt, bias_kind ? bias : NULL,
                 out, act_make(act, lo, hi, alpha, beta), 0};
  if (k <= 0) { /* an empty sum: the epilogue of zeros */
    for (int64_t r = 0; r < (int64_t)nb * co; ++r) {
      memset(out + r * npix, 0, sizeof(float) * (size_t)npix);
      onnxforge_epilogue_rows(out + r * npix, 0, 1, (int32_t)npix, job.bias ? job.bias + r % co : NULL, &job.act);
    }
    return 0;
  }
  /* ~256 KiB of col per block (it stays in L2 for SGEMM to pack), at least 128 pixels
   * (each SGEMM call repacks the weight) */
  int64_t block = ((65536 / k) + 15) & ~(int64_t)15;
  if (block < 128) block = 128;
  job.block = (int32_t)(block < npix ? block : npix);
  if (onnxforge_in_serial() || 2 * npix * k * co * nb < ONNXFORGE_PARALLEL_MIN_FLOPS) return conv_task(0, NULL, &job);
  return TVMBackendParallelLaunch(conv_task, &job, 0);
}

/* ---- ConvTranspose (NCHW; weight (ci, co / groups, kh, kw); any stride, dilation,
 * padding, output padding, groups) ----
 * Per image and group, for a block of np input pixels: col ((co / groups) kh kw x np) =
 * W_g^T x_g (OpenBLAS, the weight read transposed in place), then every column's kh x kw
 * taps are added into the output (col2im). Each task owns a stripe of output channels,
 * so no two tasks add into the same value. Left to TVM's default schedule, PP-OCRv4
 * det's two upsampling ConvTransposes took 1.0 s of its 1.1 s. */
typedef struct {
  int32_t nb, ci, h, w, co, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups;
  const float *x, *wt, *bias; /* bias: co values or NULL */
  float *out;
  Act act;
  int32_t stripes; /* channel stripes per (image, group) */
} ConvTJob;

static int convt_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  const ConvTJob *j = (const ConvTJob *)cdata;
  const int64_t tasks = penv ? penv->num_task : 1, units = (int64_t)j->nb * j->groups * j->stripes;
  const int32_t cig = j->ci / j->groups, cog = j->co / j->groups, taps = j->kh * j->kw;
  const int64_t nin = (int64_t)j->h * j->w, npix = (int64_t)j->oh * j->ow;
  for (int64_t u = units * task_id / tasks; u < units * (task_id + 1) / tasks; ++u) {
    const int32_t s = (int32_t)(u % j->stripes), g = (int32_t)((u / j->stripes) % j->groups);
    const int64_t img = u / j->stripes / j->groups;
    const int32_t c0 = (int32_t)((int64_t)cog * s / j->stripes), c1 = (int32_t)((int64_t)cog * (s + 1) / j->stripes);
    if (c1 <= c0) continue;
    float *o = j->out + ((int64_t)img * j->co + (int64_t)g * cog + c0) * npix;
    memset(o, 0, sizeof(float) * (size_t)((c1 - c0) * npix));
    const int32_t m = (c1 - c0) * taps;
    int64_t block = 65536 / m;
    if (block < 64) block = 64;
    if (block > nin) block = nin;
    float *col = scratch_grow(&conv_buffer, (size_t)m * (size_t)block);
    if (!col) return -1;
    const float *xg = j->x + ((int64_t)img * j->ci + (int64_t)g * cig) * nin;
    /* A^T: row r = (channel, ky, kx) from c0 of the group's (cig x cog kh kw) weight */
    const float *a = j->wt + (int64_t)g * cig * cog * taps + (int64_t)c0 * taps;
    for (int64_t p0 = 0; p0 < nin; p0 += block) {
      const int32_t np = (int32_t)(nin - p0 < block ? nin - p0 : block);
      onnxforge_blas_gemm(1, m, np, cig, a, cog * taps, xg + p0, (int32_t)nin, col, np);
      for (int32_t r = 0; r < m; ++r) {
        const int32_t tap = r % taps, ky = tap / j->kw, kx = tap % j->kw;
        float *plane = o + (int64_t)(r / taps) * npix;
        const float *src = col + (int64_t)r * np;
        int32_t iy = (int32_t)(p0 / j->w), ix = (int32_t)(p0 % j->w);
        for (int32_t t = 0; t < np; ++t) {
          const int32_t oy = iy * j->sh - j->pt + ky * j->dh, ox = ix * j->sw - j->pl + kx * j->dw;
          if (oy >= 0 && oy < j->oh && ox >= 0 && ox < j->ow) plane[(int64_t)oy * j->ow + ox] += src[t];
          if (++ix == j->w) {
            ix = 0;
            ++iy;
          }
        }
      }
    }
    if (j->bias || j->act.kind != ACT_NONE)
      onnxforge_epilogue_rows(o, (int32_t)npix, c1 - c0, (int32_t)npix,
                              j->bias ? j->bias + (int64_t)g * cog + c0 : NULL, &j->act);
  }
  return 0;
}

/* out = act(conv_transpose2d(x, wt) + bias): x (nb, ci, h, w), wt (ci, co / groups, kh, kw),
 * out (nb, co, oh, ow) (output padding included); pt / pl: top / left padding; bias:
 * co values when bias_kind; act, lo, hi, alpha, beta: activation.h. */
int32_t onnxforge_conv2d_transpose(int32_t nb, int32_t ci, int32_t h, int32_t w, int32_t co, int32_t oh,
                                   int32_t ow, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl,
                                   int32_t dh, int32_t dw, int32_t groups, const float *x, const float *wt,
                                   float *out, const float *bias, int32_t bias_kind, int32_t act, float lo, float hi,
                                   float alpha, float beta) {
  if (groups <= 0 || ci % groups || co % groups || kh <= 0 || kw <= 0) return -1;
  if (nb <= 0 || co <= 0 || oh <= 0 || ow <= 0) return 0;
  const int32_t cog = co / groups;
  int32_t stripes = 8 / (nb * groups > 0 ? nb * groups : 1);
  if (stripes < 1) stripes = 1;
  if (stripes > cog) stripes = cog;
  ConvTJob job = {nb, ci, h, w, co, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, x, wt, bias_kind ? bias : NULL,
                  out, act_make(act, lo, hi, alpha, beta), stripes};
  const int64_t flops = 2LL * nb * ci * h * w * cog * kh * kw;
  if (onnxforge_in_serial() || flops < ONNXFORGE_PARALLEL_MIN_FLOPS || (int64_t)h * w == 0) {
    job.stripes = 1;
    return convt_task(0, NULL, &job);
  }
  return TVMBackendParallelLaunch(convt_task, &job, 0);
}

#ifdef __cplusplus
}
#endif
