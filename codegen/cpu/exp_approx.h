/* e^x for the vectorized loops of the C kernels (activation.h's SiLU, kernels.c's
 * softmax, recurrent.c's gates): plain arithmetic that gcc vectorizes, where libm's
 * expf is a call it cannot. */
#ifndef ONNXFORGE_EXP_APPROX_H
#define ONNXFORGE_EXP_APPROX_H

#include <stdint.h>
#include <string.h>

/* exp_approx's clamp, [-87, 88]: 2^n stays a normal float there, and sigmoid's tails are 0
 * and 1 to float precision. Callers read the bounds once (exp_range) and pass them
 * in: as literals, gcc threaded the clamp's branch into a copy of the arithmetic for the
 * bound and computed v / (1 + e^88) for every lane beside the real quotient; that
 * quotient is denormal for |v| < 2, and each denormal result cost a microcode assist
 * (SiLU 2.7 ns per value on Zen 3, 0.65 with the bounds opaque). */
static volatile const float exp_bounds[2] = {-87.0f, 88.0f};
typedef struct {
  float lo, hi;
} ExpRange;
static inline ExpRange exp_range(void) {
  ExpRange r = {exp_bounds[0], exp_bounds[1]};
  return r;
}

/* e^x, branch-free so that loops over it vectorize: x = n ln2 + r (|r| <= ln2 / 2, ln2 in
 * two parts), e^r by a degree-7 polynomial (the Cephes expf coefficients, ~1 ulp), 2^n
 * put into the exponent bits. x is clamped to the range (exp_range). */
static inline __attribute__((always_inline)) float exp_approx(float x, ExpRange range) {
  x = x > range.hi ? range.hi : x; /* two selects, not a nested chain: they vectorize as min/max */
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

#endif
