/* onnxforge recurrent kernels (ONNX RNN / GRU / LSTM and com.microsoft DynamicQuantizeLSTM),
 * linked into compiled x86/arm64 modules next to kernels.c (cpu_kernels="blas").
 *
 * The input projection of all timesteps (X @ W^T + biases) is one GEMM that the Relax
 * graph computes before the call (codegen/recurrent.py); this file runs the recurrence:
 * per timestep one GEMM of the hidden state with R through onnxforge_sgemm (the same
 * OpenBLAS path and thread pool the dense layers use), then the gates, elementwise.
 * Semantics follow onnxruntime's CPU kernels where the ONNX spec leaves room: clip is
 * applied to every gate's pre-activation (after bias and peephole), alpha/beta are
 * consumed only by activations that take them, rows past their sequence_lens keep
 * their state and write zeros to Y.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_approx.h"
#include "thread_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

int32_t onnxforge_sgemm(int32_t batch, int32_t m, int32_t n, int32_t k, const float *a, int64_t stride_a,
                        int32_t trans_a, const float *b, int64_t stride_b, int32_t trans_b, float *c,
                        const float *bias, int32_t bias_kind, int32_t act, float lo, float hi, float alpha,
                        float beta);

int32_t onnxforge_sgemv(int32_t trans, int32_t m, int32_t n, const float *a, int32_t lda, const float *x, float *y);
void onnxforge_serial_begin(void);
void onnxforge_serial_end(void);

/* Activation codes: the order of codegen/recurrent.py's ACTIVATIONS. */
enum {
  ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_HARDSIGMOID, ACT_AFFINE, ACT_LEAKYRELU,
  ACT_THRESHOLDEDRELU, ACT_SCALEDTANH, ACT_ELU, ACT_SOFTSIGN, ACT_SOFTPLUS
};
enum { KIND_RNN = 0, KIND_GRU = 1, KIND_LSTM = 2 };

typedef struct { int32_t code; float alpha, beta; } Act;

/* The gate loops run 4*H activations per row and step: libm's expf/tanhf are calls the
 * compiler cannot vectorize; exp_approx.h's exp is plain arithmetic, so the loops
 * vectorize (compiled once per ISA and picked at run time, as in kernels.c). */
#if defined(__GNUC__) && !defined(__clang__)
#define GATE_OPT __attribute__((optimize("O3", "no-trapping-math")))
#else
#define GATE_OPT
#endif

static inline __attribute__((always_inline)) void sigmoid_body(float *__restrict x, int32_t n) {
  const ExpRange range = exp_range();
  for (int32_t i = 0; i < n; ++i) x[i] = 1.0f / (1.0f + exp_approx(-x[i], range));
}

/* tanh(x) = 1 - 2 / (e^2x + 1); near 0 (|x| < 1/4) its series, which keeps the
 * relative error small where the difference would cancel. */
static inline __attribute__((always_inline)) void tanh_body(float *__restrict x, int32_t n, float alpha, float beta) {
  const ExpRange range = exp_range();
  for (int32_t i = 0; i < n; ++i) {
    float v = beta * x[i], v2 = v * v;
    float big = 1.0f - 2.0f / (exp_approx(2.0f * v, range) + 1.0f);
    float small = v * (1.0f + v2 * (-0.33333333f + v2 * (0.13333333f + v2 * (-0.053968254f + v2 * 0.021869489f))));
    x[i] = alpha * (v2 < 0.0625f ? small : big);
  }
}

/* Per ISA (onnxforge_cpu_isa_level, gemm_packed.c: the best the CPU has, capped by ONNXFORGE_CPU_ISA). */
#define GATE_VARIANT(SFX, ATTR)                                                                                \
  static ATTR GATE_OPT void sigmoid_##SFX(float *__restrict x, int32_t n) { sigmoid_body(x, n); }              \
  static ATTR GATE_OPT void tanh_##SFX(float *__restrict x, int32_t n, float alpha, float beta) {              \
    tanh_body(x, n, alpha, beta);                                                                               \
  }
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
GATE_VARIANT(avx512, __attribute__((target("avx512f,avx2,fma"))))
GATE_VARIANT(avx2, __attribute__((target("avx2,fma"))))
GATE_VARIANT(base, )
static void sigmoid_gate(float *x, int32_t n) {
  int32_t level = onnxforge_cpu_isa_level();
  (level >= 2 ? sigmoid_avx512 : level >= 1 ? sigmoid_avx2 : sigmoid_base)(x, n);
}
static void tanh_gate(float *x, int32_t n, float alpha, float beta) {
  int32_t level = onnxforge_cpu_isa_level();
  (level >= 2 ? tanh_avx512 : level >= 1 ? tanh_avx2 : tanh_base)(x, n, alpha, beta);
}
#else
GATE_VARIANT(base, )
static void sigmoid_gate(float *x, int32_t n) { sigmoid_base(x, n); }
static void tanh_gate(float *x, int32_t n, float alpha, float beta) { tanh_base(x, n, alpha, beta); }
#endif

static void activate(float *x, int32_t n, Act a) {
  switch (a.code) {
    case ACT_SIGMOID: sigmoid_gate(x, n); break;
    case ACT_TANH: tanh_gate(x, n, 1.0f, 1.0f); break;
    case ACT_RELU: for (int32_t i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f; break;
    case ACT_HARDSIGMOID:
      for (int32_t i = 0; i < n; ++i) { float v = a.alpha * x[i] + a.beta; x[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }
      break;
    case ACT_AFFINE: for (int32_t i = 0; i < n; ++i) x[i] = a.alpha * x[i] + a.beta; break;
    case ACT_LEAKYRELU: for (int32_t i = 0; i < n; ++i) x[i] = x[i] >= 0.0f ? x[i] : a.alpha * x[i]; break;
    case ACT_THRESHOLDEDRELU: for (int32_t i = 0; i < n; ++i) x[i] = x[i] > a.alpha ? x[i] : 0.0f; break;
    case ACT_SCALEDTANH: tanh_gate(x, n, a.alpha, a.beta); break;
    case ACT_ELU: for (int32_t i = 0; i < n; ++i) x[i] = x[i] >= 0.0f ? x[i] : a.alpha * (expf(x[i]) - 1.0f); break;
    case ACT_SOFTSIGN: for (int32_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + fabsf(x[i])); break;
    case ACT_SOFTPLUS: for (int32_t i = 0; i < n; ++i) x[i] = log1pf(expf(x[i])); break;
    default: break;
  }
}

static void clip_inplace(float *x, int32_t n, float clip) {
  for (int32_t i = 0; i < n; ++i) x[i] = x[i] < -clip ? -clip : (x[i] > clip ? clip : x[i]);
}

static float round_half_even(float v) { return v - remainderf(v, 1.0f); }

/* Dynamic uint8 quantization of a (rows x cols) matrix, as onnxruntime's
 * DynamicQuantizeLSTM does to the hidden state before each recurrent GEMM: range
 * widened to hold 0, scale = range / 255, zero point rounded half to even. `out`
 * gets (q - zero_point) as floats (exact small integers), the return value the scale. */
static float quantize_u8(const float *x, int64_t n, float *out) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) { lo = x[i] < lo ? x[i] : lo; hi = x[i] > hi ? x[i] : hi; }
  float scale = hi == lo ? 1.0f : (hi - lo) / 255.0f;
  float zp0 = 0.0f - lo / scale;
  float zp = round_half_even(zp0 < 0.0f ? 0.0f : (zp0 > 255.0f ? 255.0f : zp0));
  for (int64_t i = 0; i < n; ++i) {
    float q = round_half_even(x[i] / scale) + zp;
    q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
    out[i] = q - zp;
  }
  return scale;
}

typedef struct {
  int32_t kind, seq, batch, hidden, dirs, reverse;
  const float *r;      /* [dirs, G*H, H] (r_trans = 1) or [dirs, H, G*H] (quantized LSTM: r_trans = 0) */
  int32_t r_trans;
  const float *r_scale; /* quantized: [dirs, r_scale_n] per-column multipliers of the recurrent GEMM, else NULL */
  int32_t r_scale_n;
  const float *rbh;    /* GRU, linear_before_reset: [dirs, H] */
  const float *peep;   /* LSTM: [dirs, 3H] or NULL */
  const int32_t *lens; /* [batch] or NULL */
  const float *h0, *c0; /* [dirs, batch, H] or NULL */
  const float *acts;   /* [dirs, 3, 3]: code, alpha, beta of f, g, h */
  float clip;          /* <= 0: none */
  int32_t input_forget, linear_before_reset;
  float *y, *yh, *yc;  /* [seq, dirs, batch, H], [dirs, batch, H] x2 */
} RnnArgs;

/* gates (batch x n) = op(h) @ R-part, R-part starting at row (or column) `first` of R. */
static void recurrent_gemm(const RnnArgs *p, int32_t d, const float *h, float *qbuf, int32_t first, int32_t n,
                           float *gates) {
  int32_t H = p->hidden, G = p->kind == KIND_LSTM ? 4 : (p->kind == KIND_GRU ? 3 : 1);
  const float *a = h;
  float scale = 1.0f;
  if (p->r_scale) {
    scale = quantize_u8(h, (int64_t)p->batch * H, qbuf);
    a = qbuf;
  }
  if (p->batch <= 2) {  /* a row or two: matrix-vector products (sgemm would repack R every step) */
    for (int32_t b = 0; b < p->batch; ++b) {
      if (p->r_trans)
        onnxforge_sgemv(0, n, H, p->r + (int64_t)d * G * H * H + (int64_t)first * H, H, a + (int64_t)b * H,
                        gates + (int64_t)b * n);
      else
        onnxforge_sgemv(1, H, n, p->r + (int64_t)d * H * G * H + first, G * H, a + (int64_t)b * H,
                        gates + (int64_t)b * n);
    }
  } else if (p->r_trans) {
    const float *rd = p->r + (int64_t)d * G * H * H + (int64_t)first * H;
    onnxforge_sgemm(1, p->batch, n, H, a, 0, 0, rd, 0, 1, gates, NULL, 0, 0, 0.0f, 0.0f, 0.0f, 0.0f);
  } else {
    /* [H, G*H] row-major: columns first..first+n of each row; sgemm wants a dense B, so
       the quantized LSTM (the only user) always asks for all columns (first = 0). */
    const float *rd = p->r + (int64_t)d * H * G * H;
    onnxforge_sgemm(1, p->batch, n, H, a, 0, 0, rd, 0, 0, gates, NULL, 0, 0, 0.0f, 0.0f, 0.0f, 0.0f);
  }
  if (p->r_scale) {
    const float *s = p->r_scale + (int64_t)d * p->r_scale_n;
    for (int32_t b = 0; b < p->batch; ++b)
      for (int32_t j = 0; j < n; ++j) gates[(int64_t)b * n + j] *= scale * s[p->r_scale_n == 1 ? 0 : first + j];
  }
}

static int32_t run_direction(const RnnArgs *p, int32_t d, const float *xw) {
  int32_t B = p->batch, H = p->hidden, T = p->seq;
  int32_t G = p->kind == KIND_LSTM ? 4 : (p->kind == KIND_GRU ? 3 : 1);
  int32_t reverse = p->dirs == 2 ? d == 1 : p->reverse;
  Act f = {(int32_t)p->acts[d * 9 + 0], p->acts[d * 9 + 1], p->acts[d * 9 + 2]};
  Act g = {(int32_t)p->acts[d * 9 + 3], p->acts[d * 9 + 4], p->acts[d * 9 + 5]};
  Act hh = {(int32_t)p->acts[d * 9 + 6], p->acts[d * 9 + 7], p->acts[d * 9 + 8]};
  int64_t bh = (int64_t)B * H;
  /* h, c, gates (B x G*H), scratch (B x H), quantized h (B x H) */
  float *mem = (float *)malloc(sizeof(float) * (size_t)(bh * 4 + (int64_t)B * G * H));
  if (!mem) return -1;
  float *h = mem, *c = mem + bh, *tmp = mem + 2 * bh, *qbuf = mem + 3 * bh, *gates = mem + 4 * bh;
  if (p->h0) memcpy(h, p->h0 + (int64_t)d * bh, sizeof(float) * (size_t)bh); else memset(h, 0, sizeof(float) * (size_t)bh);
  if (p->c0) memcpy(c, p->c0 + (int64_t)d * bh, sizeof(float) * (size_t)bh); else memset(c, 0, sizeof(float) * (size_t)bh);
  const float *peep = p->peep ? p->peep + (int64_t)d * 3 * H : NULL;
  int32_t lbr = p->linear_before_reset;
  for (int32_t s = 0; s < T; ++s) {
    int32_t t = reverse ? T - 1 - s : s;
    const float *x = xw + (int64_t)t * B * G * H;
    /* GRU without linear_before_reset multiplies r into h before the h-gate's GEMM */
    int32_t n_first = (p->kind == KIND_GRU && !lbr) ? 2 * H : G * H;
    recurrent_gemm(p, d, h, qbuf, 0, n_first, gates);
    if (p->kind == KIND_GRU && !lbr) {
      /* z, r first; then (r * h) @ Rh^T into the h columns */
      for (int32_t b = 0; b < B; ++b) {
        float *gr = gates + (int64_t)b * 2 * H;
        const float *xr = x + (int64_t)b * G * H;
        for (int32_t j = 0; j < 2 * H; ++j) gr[j] += xr[j];
        if (p->clip > 0) clip_inplace(gr, 2 * H, p->clip);
        activate(gr, 2 * H, f);
        for (int32_t j = 0; j < H; ++j) tmp[(int64_t)b * H + j] = gr[H + j] * h[(int64_t)b * H + j];
      }
      float *gh = gates + (int64_t)B * 2 * H; /* B x H after the B x 2H block */
      recurrent_gemm(p, d, tmp, qbuf, 2 * H, H, gh);
    }
    for (int32_t b = 0; b < B; ++b) {
      float *hb = h + (int64_t)b * H, *cb = c + (int64_t)b * H;
      float *yb = p->y ? p->y + (((int64_t)t * p->dirs + d) * B + b) * H : NULL;
      if (p->lens && t >= p->lens[b]) {
        if (yb) memset(yb, 0, sizeof(float) * (size_t)H);
        continue;
      }
      const float *xb = x + (int64_t)b * G * H;
      if (p->kind == KIND_RNN) {
        float *gb = gates + (int64_t)b * H;
        for (int32_t j = 0; j < H; ++j) gb[j] += xb[j];
        if (p->clip > 0) clip_inplace(gb, H, p->clip);
        activate(gb, H, f);
        memcpy(hb, gb, sizeof(float) * (size_t)H);
      } else if (p->kind == KIND_GRU) {
        float *z, *r, *n;
        if (lbr) {
          z = gates + (int64_t)b * 3 * H; r = z + H; n = r + H;
          for (int32_t j = 0; j < 2 * H; ++j) z[j] += xb[j];
          if (p->clip > 0) clip_inplace(z, 2 * H, p->clip);
          activate(z, 2 * H, f);
          const float *rb = p->rbh ? p->rbh + (int64_t)d * H : NULL;
          for (int32_t j = 0; j < H; ++j) n[j] = xb[2 * H + j] + r[j] * (n[j] + (rb ? rb[j] : 0.0f));
        } else {
          z = gates + (int64_t)b * 2 * H; r = z + H; n = gates + (int64_t)B * 2 * H + (int64_t)b * H;
          for (int32_t j = 0; j < H; ++j) n[j] += xb[2 * H + j];
        }
        if (p->clip > 0) clip_inplace(n, H, p->clip);
        activate(n, H, g);
        for (int32_t j = 0; j < H; ++j) hb[j] = (1.0f - z[j]) * n[j] + z[j] * hb[j];
      } else { /* LSTM: gates i, o, f, c */
        float *gi = gates + (int64_t)b * 4 * H, *go = gi + H, *gf = go + H, *gc = gf + H;
        for (int32_t j = 0; j < 4 * H; ++j) gi[j] += xb[j];
        if (peep) for (int32_t j = 0; j < H; ++j) gi[j] += peep[j] * cb[j];
        if (p->clip > 0) clip_inplace(gi, H, p->clip);
        activate(gi, H, f);
        if (p->input_forget) {
          for (int32_t j = 0; j < H; ++j) gf[j] = 1.0f - gi[j];
        } else {
          if (peep) for (int32_t j = 0; j < H; ++j) gf[j] += peep[2 * H + j] * cb[j];
          if (p->clip > 0) clip_inplace(gf, H, p->clip);
          activate(gf, H, f);
        }
        if (p->clip > 0) clip_inplace(gc, H, p->clip);
        activate(gc, H, g);
        for (int32_t j = 0; j < H; ++j) cb[j] = gf[j] * cb[j] + gi[j] * gc[j];
        if (peep) for (int32_t j = 0; j < H; ++j) go[j] += peep[H + j] * cb[j];
        if (p->clip > 0) clip_inplace(go, H, p->clip);
        activate(go, H, f);
        memcpy(tmp, cb, sizeof(float) * (size_t)H);
        activate(tmp, H, hh);
        for (int32_t j = 0; j < H; ++j) hb[j] = go[j] * tmp[j];
      }
      if (yb) memcpy(yb, hb, sizeof(float) * (size_t)H);
    }
  }
  if (p->yh) memcpy(p->yh + (int64_t)d * bh, h, sizeof(float) * (size_t)bh);
  if (p->yc) memcpy(p->yc + (int64_t)d * bh, c, sizeof(float) * (size_t)bh);
  free(mem);
  return 0;
}

typedef struct { const RnnArgs *p; const float *xw0, *xw1; int32_t status; } DirectionsJob;

static int directions_task(int task_id, TVMParallelGroupEnv *penv, void *cdata) {
  DirectionsJob *j = (DirectionsJob *)cdata;
  int32_t tasks = penv ? penv->num_task : 1;
  onnxforge_serial_begin();
  for (int32_t d = task_id; d < j->p->dirs; d += tasks)
    if (run_direction(j->p, d, d == 0 ? j->xw0 : j->xw1) != 0) j->status = -1;
  onnxforge_serial_end();
  return 0;
}

/* One recurrent layer, all directions (reverse: a single direction run backwards). xw0 / xw1: [seq, batch, G*H] input projections
 * (with every bias that adds outside the recurrence) of direction 0 / 1. Optional
 * tensors come with a flag (has_*): when 0 the pointer is not read. Returns 0, or -1
 * when out of memory. */
int32_t onnxforge_rnn(int32_t kind, int32_t seq, int32_t batch, int32_t hidden, int32_t dirs, int32_t reverse,
                      const float *xw0,
                      const float *xw1, const float *r, int32_t r_trans, const float *r_scale, int32_t r_scale_n,
                      int32_t has_r_scale, const float *rbh, int32_t has_rbh, const float *peep, int32_t has_peep,
                      const int32_t *lens, int32_t has_lens, const float *h0, int32_t has_h0, const float *c0,
                      int32_t has_c0, const float *acts, float clip, int32_t input_forget,
                      int32_t linear_before_reset, float *y, float *yh, float *yc) {
  RnnArgs p = {kind, seq, batch, hidden, dirs, reverse, r, r_trans, has_r_scale ? r_scale : NULL, r_scale_n,
               has_rbh ? rbh : NULL, has_peep ? peep : NULL, has_lens ? lens : NULL, has_h0 ? h0 : NULL,
               has_c0 ? c0 : NULL, acts, clip, input_forget, linear_before_reset, y, yh, yc};
  if (batch <= 0 || hidden <= 0) return 0;
  if (seq <= 0) { /* nothing to run: the final state is the initial one */
    int64_t n = (int64_t)dirs * batch * hidden;
    if (p.h0) memcpy(yh, p.h0, sizeof(float) * (size_t)n); else memset(yh, 0, sizeof(float) * (size_t)n);
    if (p.c0) memcpy(yc, p.c0, sizeof(float) * (size_t)n); else memset(yc, 0, sizeof(float) * (size_t)n);
    return 0;
  }
  if (dirs == 2) {  /* the directions are independent: one per thread, each product on it */
    DirectionsJob job = {&p, xw0, xw1, 0};
    TVMBackendParallelLaunch(directions_task, &job, 0);
    return job.status;
  }
  return run_direction(&p, 0, xw0);
}

/* out [m, n] = dq(a) @ b [k, n] * (a_scale * scale[col]) (+ bias[col]), where dq(a) is a
 * quantized to uint8 over the whole tensor, minus its zero point (DynamicQuantizeLSTM's
 * input projection; b holds the weight minus its zero point). */
int32_t onnxforge_dq_gemm(int32_t m, int32_t n, int32_t k, const float *a, const float *b, const float *scale,
                          int32_t n_scale, const float *bias, int32_t has_bias, float *out) {
  if (m <= 0 || n <= 0) return 0;
  float *q = (float *)malloc(sizeof(float) * (size_t)((int64_t)m * k > 0 ? (int64_t)m * k : 1));
  if (!q) return -1;
  float a_scale = quantize_u8(a, (int64_t)m * k, q);
  onnxforge_sgemm(1, m, n, k, q, 0, 0, b, 0, 0, out, NULL, 0, 0, 0.0f, 0.0f, 0.0f, 0.0f);
  for (int32_t i = 0; i < m; ++i) {
    float *row = out + (int64_t)i * n;
    for (int32_t j = 0; j < n; ++j) row[j] = row[j] * (a_scale * scale[n_scale == 1 ? 0 : j]) + (has_bias ? bias[j] : 0.0f);
  }
  free(q);
  return 0;
}

#ifdef __cplusplus
}
#endif
