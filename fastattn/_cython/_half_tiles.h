/* Half-precision (float16, bfloat16) pieces of the tile kernels.
 *
 * Included by the ISA table after _tiles.h and compiled once per ISA level, so the
 * code below picks its instructions from the target macros:
 *   - every level: rows of bfloat16 / float16 -> float32 scratch (the generic path
 *     converts each K/V block, then runs the float32 tiles), and the finiteness test
 *     of bfloat16 rows.  Every level gives the bits of _half_scalar.h.
 *   - __AVX512BF16__ only (FA_HAVE_BF16_PRODUCTS): the two block products on bfloat16
 *     pairs with vdpbf16ps, accumulating in float32.
 */
#ifndef FASTATTN_HALF_TILES_H
#define FASTATTN_HALF_TILES_H

#include <stddef.h>
#include <stdint.h>
#include "_tiles.h"
#include "_half_scalar.h"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
typedef uint32_t fa_u32_alias __attribute__((may_alias)); /* float32 bits written as integers */
#else
typedef uint32_t fa_u32_alias;
#endif

/* n rows of `width` bfloat16 (row i at rows + i * stride bytes) -> dst + i * pitch. */
static void fa_rows_to_f32_bf16(ptrdiff_t n, ptrdiff_t width, const char *rows,
                                ptrdiff_t stride, float *dst, ptrdiff_t pitch)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint16_t *row = (const uint16_t *)(rows + i * stride);
        fa_u32_alias *out = (fa_u32_alias *)(dst + i * pitch);
#pragma omp simd
        for (ptrdiff_t e = 0; e < width; e++)
            out[e] = (uint32_t)row[e] << 16;
    }
}

/* One row of float16 -> float32, with the conversion instructions where there are. */
FA_INLINE void fa_row_to_f32_f16(ptrdiff_t width, const uint16_t *row, float *out)
{
    ptrdiff_t e = 0;
#if defined(__AVX512F__)
    for (; e + 16 <= width; e += 16)
        _mm512_storeu_ps(out + e, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + e))));
#endif
#if defined(__F16C__)
    for (; e + 8 <= width; e += 8)
        _mm256_storeu_ps(out + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + e))));
#endif
#pragma omp simd
    for (ptrdiff_t t = e; t < width; t++)
        out[t] = fa_f16_to_f32(row[t]);
}

/* n rows of `width` float16 (row i at rows + i * stride bytes) -> dst + i * pitch. */
static void fa_rows_to_f32_f16(ptrdiff_t n, ptrdiff_t width, const char *rows,
                               ptrdiff_t stride, float *dst, ptrdiff_t pitch)
{
    for (ptrdiff_t i = 0; i < n; i++)
        fa_row_to_f32_f16(width, (const uint16_t *)(rows + i * stride), dst + i * pitch);
}

/* Whether n rows of `width` bfloat16 (stride bytes apart) hold no NaN or infinity. */
static int fa_rows_finite_bf16(ptrdiff_t n, ptrdiff_t width, const char *rows,
                               ptrdiff_t stride)
{
    unsigned special = 0; /* all-ones exponent seen: inf or NaN */
    for (ptrdiff_t i = 0; i < n; i++) {
        const uint16_t *row = (const uint16_t *)(rows + i * stride);
#pragma omp simd reduction(| : special)
        for (ptrdiff_t e = 0; e < width; e++)
            special |= (row[e] & 0x7f80u) == 0x7f80u;
    }
    return special == 0;
}

#endif
