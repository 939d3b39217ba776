/* Scalar conversions between float32 and the half-precision storage types.
 *
 * Plain C for any target (no ISA flags): the .pyx translation units use these to write
 * the half output and to pack queries.  Every rounding is round-to-nearest-even,
 * overflow gives inf, float16 subnormals are exact, and the results are bit-exact
 * with numpy's astype(np.float16) and ml_dtypes' astype(bfloat16), with one choice
 * for NaN: a NaN stays a NaN of the same sign, made quiet.
 *   - bfloat16: float32 NaN -> 0x7fc0 (ml_dtypes' canonical NaN); bfloat16 -> float32
 *     is exact for every pattern (the bits shifted), NaN payloads included.
 *   - float16: a NaN keeps its payload and gets the quiet bit, as the F16C and
 *     AVX-512 conversion instructions do (numpy keeps a signalling NaN signalling;
 *     only those patterns differ from numpy), so every ISA level gives the same bits.
 * The float16 conversions are branch-free selects so that loops over them vectorise.
 */
#ifndef FASTATTN_HALF_SCALAR_H
#define FASTATTN_HALF_SCALAR_H

#include <stdint.h>
#include <string.h>

static inline uint32_t fa_float_bits(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

static inline float fa_bits_float(uint32_t bits)
{
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

static inline float fa_bf16_to_f32(uint16_t bits)
{
    return fa_bits_float((uint32_t)bits << 16);
}

static inline uint16_t fa_f32_to_bf16(float x)
{
    uint32_t bits = fa_float_bits(x);
    /* Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; a
     * carry out of the mantissa bumps the exponent, up to inf, as it should. */
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

/* All ones where cond holds: the selects below are bitwise, so that loops over these
 * conversions have no branches and vectorise (a float operation under a branch would
 * stop gcc, which may not speculate it without -fno-trapping-math). */
static inline uint32_t fa_mask(int cond)
{
    return (uint32_t)0 - (uint32_t)(cond != 0);
}

static inline float fa_f16_to_f32(uint16_t bits)
{
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    int32_t magnitude = bits & 0x7fff;
    int32_t exponent = magnitude & 0x7c00;
    int32_t mantissa = magnitude & 0x3ff;
    /* normal numbers: rebias the exponent (127 - 15) */
    uint32_t normal = ((uint32_t)magnitude << 13) + ((uint32_t)(127 - 15) << 23);
    /* subnormals and zero: the mantissa m means m * 2**-24, exact in float32 */
    uint32_t subnormal = fa_float_bits((float)mantissa * 5.9604644775390625e-8f);
    /* inf and NaN: all-ones exponent, payload kept, a NaN made quiet */
    uint32_t special = 0x7f800000u | (uint32_t)mantissa << 13 | (fa_mask(mantissa != 0) & 0x00400000u);
    uint32_t is_special = fa_mask(exponent == 0x7c00), is_subnormal = fa_mask(exponent == 0);
    uint32_t out = (special & is_special) | (subnormal & is_subnormal)
                   | (normal & ~(is_special | is_subnormal));
    return fa_bits_float(sign | out);
}

static inline uint16_t fa_f32_to_f16(float x)
{
    uint32_t bits = fa_float_bits(x);
    uint32_t sign = (bits >> 16) & 0x8000u;
    int32_t magnitude = (int32_t)(bits & 0x7fffffffu);
    /* |x| < 2**-14 (float16 subnormals and zero): adding 0.5 puts the float16
     * mantissa, rounded to nearest even by the float addition itself, in the low bits. */
    uint32_t small = fa_float_bits(fa_bits_float((uint32_t)magnitude) + 0.5f) - 0x3f000000u;
    /* normal range: rebias, then round the 13 dropped bits to nearest even; a carry
     * into the exponent is right, up to 0x7c00 = inf at 65520 and above. */
    int32_t odd = (magnitude >> 13) & 1;
    uint32_t normal = (uint32_t)(magnitude - ((127 - 15) << 23) + 0xfff + odd) >> 13;
    /* >= 65536 and inf -> inf; NaN -> quiet NaN with the payload's top bits */
    uint32_t big = 0x7c00u | (fa_mask(magnitude > 0x7f800000) & (0x200u | ((uint32_t)magnitude >> 13 & 0x3ffu)));
    uint32_t is_big = fa_mask(magnitude >= 0x47800000), is_small = fa_mask(magnitude < 0x38800000);
    uint32_t out = (big & is_big) | (small & is_small) | (normal & ~(is_big | is_small));
    return (uint16_t)(sign | out);
}

#endif
