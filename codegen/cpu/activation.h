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

#include "exp_approx.h"

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
      const ExpRange range = exp_range();
      ACT_LOOP(v / (1.0f + exp_approx(-(alpha * v + beta), range)));
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
