/* The vectorisable exp of the kernel contract, for float and double.
 *
 * Plain C that gcc vectorises inside the `#pragma omp simd` loops of _tiles.inc
 * (no -ffast-math, which the kernel must not use because masked scores are -inf).
 *
 * The same algorithm as fastattn/_numba/rowops.py (described once in docs/design.md):
 * x = n ln2 + t with n = round(x / ln2) to nearest (the 1.5 * 2**mantissa trick), so
 * |t| <= ln2 / 2, exp(t) from its Taylor series (degree 7 for float, 13 for double,
 * below one ulp), and 2**n written into the exponent bits.
 * Arguments are clamped at -88 (float) / -709 (double), where the exponent field
 * becomes 0, so anything below -- -inf included -- gives exactly 0; NaN stays NaN
 * (the clamp compares so that NaN passes through).  The argument is always <= 0 or
 * NaN here (scores minus their running max).
 */
#ifndef FASTATTN_ROWOPS_H
#define FASTATTN_ROWOPS_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <math.h>

#define FA_LOG2E 1.4426950408889634
#define FA_LN2_HI 0.693145751953125 /* ln 2 split so that n * FA_LN2_HI is exact */
#define FA_LN2_LO 1.4286068203094173e-06

/* cond ? a : b as a bit select.  gcc 12 (without -fno-trapping-math) vectorises no loop
 * with a plain `cond ? a : b` whose arm is floating-point work used nowhere else: it
 * moves that work into the branch, where it might trap, and keeps the branch.  So the
 * selects of the vectorised row loops are written with these. */
static inline float fa_pick_f32(int cond, float a, float b)
{
    int32_t ai, bi, mask = -(int32_t)(cond != 0);
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    ai = (ai & mask) | (bi & ~mask);
    memcpy(&a, &ai, sizeof a);
    return a;
}

static inline double fa_pick_f64(int cond, double a, double b)
{
    int64_t ai, bi, mask = -(int64_t)(cond != 0);
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    ai = (ai & mask) | (bi & ~mask);
    memcpy(&a, &ai, sizeof a);
    return a;
}

static inline float fa_exp_f32(float x)
{
    x = fa_pick_f32(x < -88.0f, -88.0f, x); /* NaN passes through */
    /* n = round(x / ln2) by the "magic number" trick: adding 1.5 * 2**23 leaves n in
     * the low mantissa bits (no float-to-int conversion, which blocks vectorisation). */
    float shifted = x * (float)FA_LOG2E + 12582912.0f;
    float nf = shifted - 12582912.0f;
    int32_t n;
    memcpy(&n, &shifted, sizeof n);
    n -= 0x4B400000; /* bits of 12582912.0f */
    float t = x - nf * (float)FA_LN2_HI - nf * (float)FA_LN2_LO;
    float p = 1.0f / 5040.0f;
    p = p * t + 1.0f / 720.0f;
    p = p * t + 1.0f / 120.0f;
    p = p * t + 1.0f / 24.0f;
    p = p * t + 1.0f / 6.0f;
    p = p * t + 0.5f;
    p = p * t + 1.0f;
    p = p * t + 1.0f;
    int32_t bits = (n + 127) << 23; /* 2**n; 0 for n = -127, i.e. x <= -88 */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static inline double fa_exp_f64(double x)
{
    x = fa_pick_f64(x < -709.0, -709.0, x);
    double shifted = x * FA_LOG2E + 6755399441055744.0; /* 1.5 * 2**52, as above */
    double nf = shifted - 6755399441055744.0;
    int64_t n;
    memcpy(&n, &shifted, sizeof n);
    n -= INT64_C(0x4338000000000000); /* bits of 1.5 * 2**52 */
    double t = x - nf * FA_LN2_HI - nf * FA_LN2_LO;
    double p = 1.0 / 6227020800.0;
    p = p * t + 1.0 / 479001600.0;
    p = p * t + 1.0 / 39916800.0;
    p = p * t + 1.0 / 3628800.0;
    p = p * t + 1.0 / 362880.0;
    p = p * t + 1.0 / 40320.0;
    p = p * t + 1.0 / 5040.0;
    p = p * t + 1.0 / 720.0;
    p = p * t + 1.0 / 120.0;
    p = p * t + 1.0 / 24.0;
    p = p * t + 1.0 / 6.0;
    p = p * t + 0.5;
    p = p * t + 1.0;
    p = p * t + 1.0;
    int64_t bits = (n + 1023) << 52; /* 2**n; 0 for n = -1023, i.e. x <= -709 */
    double two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/* tanh for the softcap, vectorisable like the exp above: tanh|x| = -m / (2 + m) with
 * m = expm1(-2|x|), from the exp's range reduction, e^y - 1 = 2^n (e^t - 1) + (2^n - 1),
 * where e^t - 1 is the Taylor series without its constant term: no cancellation, so
 * the result is within a few ulp for small |x| too.  Below the clamp m = -1 exactly
 * (tanh = +-1, infinities included); NaN stays NaN. */
static inline float fa_tanh_f32(float x)
{
    float y = -2.0f * fabsf(x);
    y = fa_pick_f32(y < -88.0f, -88.0f, y);
    float shifted = y * (float)FA_LOG2E + 12582912.0f;
    float nf = shifted - 12582912.0f;
    int32_t n;
    memcpy(&n, &shifted, sizeof n);
    n -= 0x4B400000;
    float t = y - nf * (float)FA_LN2_HI - nf * (float)FA_LN2_LO;
    float p = 1.0f / 5040.0f;
    p = p * t + 1.0f / 720.0f;
    p = p * t + 1.0f / 120.0f;
    p = p * t + 1.0f / 24.0f;
    p = p * t + 1.0f / 6.0f;
    p = p * t + 0.5f;
    p = p * t + 1.0f;
    p = p * t; /* e^t - 1 */
    int32_t bits = (n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float m = two_n * p + (two_n - 1.0f);
    return copysignf(-m / (2.0f + m), x);
}

static inline double fa_tanh_f64(double x)
{
    double y = -2.0 * fabs(x);
    y = fa_pick_f64(y < -709.0, -709.0, y);
    double shifted = y * FA_LOG2E + 6755399441055744.0;
    double nf = shifted - 6755399441055744.0;
    int64_t n;
    memcpy(&n, &shifted, sizeof n);
    n -= INT64_C(0x4338000000000000);
    double t = y - nf * FA_LN2_HI - nf * FA_LN2_LO;
    double p = 1.0 / 6227020800.0;
    p = p * t + 1.0 / 479001600.0;
    p = p * t + 1.0 / 39916800.0;
    p = p * t + 1.0 / 3628800.0;
    p = p * t + 1.0 / 362880.0;
    p = p * t + 1.0 / 40320.0;
    p = p * t + 1.0 / 5040.0;
    p = p * t + 1.0 / 720.0;
    p = p * t + 1.0 / 120.0;
    p = p * t + 1.0 / 24.0;
    p = p * t + 1.0 / 6.0;
    p = p * t + 0.5;
    p = p * t + 1.0;
    p = p * t; /* e^t - 1 */
    int64_t bits = (n + 1023) << 52;
    double two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    double m = two_n * p + (two_n - 1.0);
    return copysign(-m / (2.0 + m), x);
}

#endif
