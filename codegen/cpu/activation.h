/* The activation a conv/matmul kernel applies to its output right after computing it
 * (blas.py folds it in; otherwise it is one more pass over the output in memory, and
 * worse, TVM fuses it into the next conv's im2col, where it is computed kh * kw times).
 * Included by kernels.c and gemm_packed.c; compiled inside each caller's ISA variant.
 *
 *   ACT_NONE         v
 *   ACT_CLAMP        min(max(v, lo), hi)                     Relu, Clip / ReLU6
 *   ACT_SIGMOID_GATE v * sigmoid(alpha * v + beta)           SiLU / Swish (YOLOv5-v8, EfficientNet)
 *   ACT_HARD_GATE    v * min(max(alpha * v + beta, lo), hi)  HardSwish, x * HardSigmoid(x) (MobileNetV3, PP-LCNet)
 * where v is the product plus its bias. */
#ifndef ONNXFORGE_ACTIVATION_H
#define ONNXFORGE_ACTIVATION_H

#include <stdint.h>
#include <string.h>

enum { ACT_NONE = 0, ACT_CLAMP = 1, ACT_SIGMOID_GATE = 2, ACT_HARD_GATE = 3 };

typedef struct {
  int32_t kind;
  float lo, hi, alpha, beta;
} Act;

static inline Act act_make(int32_t kind, float lo, float hi, float alpha, float beta) {
  Act a = {kind, lo, hi, alpha, beta};
  return a;
}

static inline __attribute__((always_inline)) float act_clamp(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v); /* NaN stays NaN */
}

/* act_exp's clamp, [-87, 88]: 2^n stays a normal float there, and sigmoid's tails are 0
 * and 1 to float precision. Callers read the bounds once (act_exp_range) and pass them
 * in: as literals, gcc threaded the clamp's branch into a copy of the arithmetic for the
 * bound and computed v / (1 + e^88) for every lane beside the real quotient; that
 * quotient is denormal for |v| < 2, and each denormal result cost a microcode assist
 * (SiLU 2.7 ns per value on Zen 3, 0.65 with the bounds opaque). */
static volatile const float act_exp_bounds[2] = {-87.0f, 88.0f};
typedef struct {
  float lo, hi;
} ExpRange;
static inline ExpRange act_exp_range(void) {
  ExpRange r = {act_exp_bounds[0], act_exp_bounds[1]};
  return r;
}

/* e^x, branch-free so that loops over it vectorize: x = n ln2 + r (|r| <= ln2 / 2, ln2 in
 * two parts), e^r by a degree-7 polynomial (the Cephes expf coefficients, ~1 ulp), 2^n
 * put into the exponent bits. x is clamped to the range (act_exp_range). */
static inline __attribute__((always_inline)) float act_exp(float x, ExpRange range) {
  x = x > range.hi ? range.hi : x; /* two selects (not act_clamp's chain): they vectorize as min/max */
  x = x < range.lo ? range.lo : x;
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#define ACT_LOOP(EXPR)                                                      \
  do {                                                                      \
    if (bias)                                                               \
      for (int32_t q = 0; q < cols; ++q) {                                  \
        float v = row[q] + bias[q] + add;                                   \
        row[q] = (EXPR);                                                    \
      }                                                                     \
    else                                                                    \
      for (int32_t q = 0; q < cols; ++q) {                                  \
        float v = row[q] + add;                                             \
        row[q] = (EXPR);                                                    \
      }                                                                     \
  } while (0)

/* row[q] = act(row[q] + bias[q] + add) for q < cols (bias may be NULL). */
static inline __attribute__((always_inline)) void act_row(float *__restrict row, int32_t cols,
                                                          const float *__restrict bias, float add, const Act *act) {
  const float lo = act->lo, hi = act->hi, alpha = act->alpha, beta = act->beta;
  switch (act->kind) {
    case ACT_SIGMOID_GATE: {
      const ExpRange range = act_exp_range();
      ACT_LOOP(v / (1.0f + act_exp(-(alpha * v + beta), range)));
      break;
    }
    case ACT_HARD_GATE:
      ACT_LOOP(v * act_clamp(alpha * v + beta, lo, hi));
      break;
    case ACT_CLAMP:
      ACT_LOOP(act_clamp(v, lo, hi));
      break;
    default:
      if (bias || add != 0.0f) ACT_LOOP(v);
  }
}

#endif
