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

#if defined(__AVX512BF16__)
/* The block products on bfloat16 pairs: vdpbf16ps multiplies the two bfloat16 of each
 * 32-bit lane of two vectors and adds both products to the float32 lane, so a vector
 * of 16 query rows steps over two elements of the reduced axis at once (twice the
 * products of a float32 FMA).  The layout of _tiles.h with the reduced axis paired:
 *   - scores: the queries qtb hold, per pair of dims, 16-row vectors of (d, d+1)
 *     pairs; a key's (d, d+1) pair is one 32-bit word, broadcast, read in place.
 *   - P @ V:  P is rounded to bfloat16 and packed as (key j, key j+1) pairs per row,
 *     the values are interleaved by key pairs so that (v_j[e], v_j+1[e]) is a word. */
#define FA_HAVE_BF16_PRODUCTS 1
#define FA_BF16_MR 6 /* keys (scores) or value columns (P @ V) per register block */
#define FA_BF16_NV 4 /* vectors of 16 query rows per register block */
#define FA_BF16_VL 16

/* One 32-bit word in every lane: a bfloat16 pair of both operands of vdpbf16ps. */
FA_INLINE __m512bh fa_bf16_word(uint32_t word)
{
    return (__m512bh)_mm512_set1_epi32((int)word);
}

FA_INLINE uint32_t fa_bf16_pair(const uint16_t *pair)
{
    uint32_t word;
    memcpy(&word, pair, sizeof word);
    return word;
}

/* acc[a][v] += word_a . x[v] (lane-wise pairs) for a < mr and v < nv, where word_of
 * is an expression in a: the pair word of key (or value column) a. */
#define FA_BF16_STEP(mr, nv, acc, x, word_of)                                               \
    for (int a = 0; a < (mr); a++) {                                                         \
        __m512bh w = fa_bf16_word(word_of);                                                  \
        for (int v = 0; v < (nv); v++)                                                       \
            acc[a][v] = _mm512_dpbf16_ps(acc[a][v], x[v], w);                                \
    }

/* Register block of the scores: st[a, v] = scale * sum_d key_a[d] * q[d, v] for mr keys
 * and nv vectors of rows; constant mr and nv unroll the loops into registers. */
FA_INLINE void fa_qk_bf16_block(const int mr, const int nv, ptrdiff_t dim, const char *keys,
                                ptrdiff_t key_stride, const uint16_t *qtb, ptrdiff_t rp,
                                float scale, float *st)
{
    __m512 acc[FA_BF16_MR][FA_BF16_NV];
    const uint16_t *key[FA_BF16_MR];
    __m512bh q[FA_BF16_NV];
    ptrdiff_t p;
    for (int a = 0; a < mr; a++) {
        key[a] = (const uint16_t *)(keys + a * key_stride);
        for (int v = 0; v < nv; v++)
            acc[a][v] = _mm512_setzero_ps();
    }
    for (p = 0; p < dim / 2; p++) {
        for (int v = 0; v < nv; v++)
            q[v] = (__m512bh)_mm512_loadu_si512(qtb + p * 2 * rp + v * 2 * FA_BF16_VL);
        FA_BF16_STEP(mr, nv, acc, q, fa_bf16_pair(key[a] + 2 * p))
    }
    if (dim % 2) { /* the last element alone, paired with 0 (the queries' padding is 0 too) */
        for (int v = 0; v < nv; v++)
            q[v] = (__m512bh)_mm512_loadu_si512(qtb + p * 2 * rp + v * 2 * FA_BF16_VL);
        FA_BF16_STEP(mr, nv, acc, q, (uint32_t)key[a][dim - 1])
    }
    __m512 factor = _mm512_set1_ps(scale);
    for (int a = 0; a < mr; a++)
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(st + a * rp + v * FA_BF16_VL, _mm512_mul_ps(acc[a][v], factor));
}

/* Register block of P @ V: acct[e, v] += sum_p words_p[e] . pb[p, v] over the key
 * pairs, for me value columns (their pair words vb[p, 2e]) and nv vectors of rows. */
FA_INLINE void fa_pv_bf16_block(const int me, const int nv, ptrdiff_t pairs,
                                const uint16_t *vb, ptrdiff_t value_dim, const uint16_t *pb,
                                ptrdiff_t rp, float *acct)
{
    __m512 acc[FA_BF16_MR][FA_BF16_NV];
    __m512bh x[FA_BF16_NV];
    for (int e = 0; e < me; e++)
        for (int v = 0; v < nv; v++)
            acc[e][v] = _mm512_loadu_ps(acct + e * rp + v * FA_BF16_VL);
    for (ptrdiff_t p = 0; p < pairs; p++) {
        const uint16_t *words = vb + p * 2 * value_dim;
        for (int v = 0; v < nv; v++)
            x[v] = (__m512bh)_mm512_loadu_si512(pb + p * 2 * rp + v * 2 * FA_BF16_VL);
        FA_BF16_STEP(me, nv, acc, x, fa_bf16_pair(words + 2 * a))
    }
    for (int e = 0; e < me; e++)
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(acct + e * rp + v * FA_BF16_VL, acc[e][v]);
}
#undef FA_BF16_STEP

/* Run-time block sizes -> calls with constant ones (CALL(M, NV)). */
#define FA_BF16_CASES_NV(CALL, M)                                                           \
    switch (nv) {                                                                            \
    case 1: CALL(M, 1); break;                                                               \
    case 2: CALL(M, 2); break;                                                               \
    case 3: CALL(M, 3); break;                                                               \
    default: CALL(M, 4); break;                                                              \
    }
#define FA_BF16_CASES(CALL)                                                                 \
    switch (m) {                                                                             \
    case 1: FA_BF16_CASES_NV(CALL, 1) break;                                                 \
    case 2: FA_BF16_CASES_NV(CALL, 2) break;                                                 \
    case 3: FA_BF16_CASES_NV(CALL, 3) break;                                                 \
    case 4: FA_BF16_CASES_NV(CALL, 4) break;                                                 \
    case 5: FA_BF16_CASES_NV(CALL, 5) break;                                                 \
    default: FA_BF16_CASES_NV(CALL, 6) break;                                                \
    }

static void fa_qk_bf16_dispatch(int m, int nv, ptrdiff_t dim, const char *keys,
                                ptrdiff_t key_stride, const uint16_t *qtb, ptrdiff_t rp,
                                float scale, float *st)
{
#define FA_QK(M, NV) fa_qk_bf16_block(M, NV, dim, keys, key_stride, qtb, rp, scale, st)
    FA_BF16_CASES(FA_QK)
#undef FA_QK
}

static void fa_pv_bf16_dispatch(int m, int nv, ptrdiff_t pairs, const uint16_t *vb,
                                ptrdiff_t value_dim, const uint16_t *pb, ptrdiff_t rp,
                                float *acct)
{
#define FA_PV(M, NV) fa_pv_bf16_block(M, NV, pairs, vb, value_dim, pb, rp, acct)
    FA_BF16_CASES(FA_PV)
#undef FA_PV
}

/* st (n_k x rp) = scale * keys (n_k bfloat16 rows of dim, key_stride bytes apart) @ the
 * queries qtb (bfloat16 pairs: element (d, r) at qtb[(d/2) * 2 * rp + 2 * r + d % 2]),
 * for the first `rows` rows rounded up to 16. */
static void fa_scores_t_bf16(ptrdiff_t n_k, ptrdiff_t dim, const char *keys,
                             ptrdiff_t key_stride, const uint16_t *qtb, ptrdiff_t rows,
                             ptrdiff_t rp, float scale, float *st)
{
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += FA_BF16_NV * FA_BF16_VL) {
        ptrdiff_t left = (rows - r0 + FA_BF16_VL - 1) / FA_BF16_VL;
        int nv = left < FA_BF16_NV ? (int)left : FA_BF16_NV;
        for (ptrdiff_t j = 0; j < n_k; j += FA_BF16_MR) {
            int m = n_k - j < FA_BF16_MR ? (int)(n_k - j) : FA_BF16_MR;
            fa_qk_bf16_dispatch(m, nv, dim, keys + j * key_stride, key_stride, qtb + 2 * r0,
                                rp, scale, st + j * rp + r0);
        }
    }
}

/* The mask of the first n (<= 32) 16-bit lanes. */
FA_INLINE __mmask32 fa_first_lanes(ptrdiff_t n)
{
    return n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1u);
}

/* P (rows16 rows of st, n_k keys) rounded to bfloat16 and paired by keys:
 * pb[(j/2) * 2 * rp + 2 * r + j % 2] = bf16(st[j * rp + r]), a missing last key 0. */
FA_INLINE void fa_pack_p_bf16(ptrdiff_t n_k, const float *st, ptrdiff_t rows16, ptrdiff_t rp,
                              uint16_t *pb)
{
    static const uint16_t pairs_of_halves[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5,
                                                 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26,
                                                 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i interleave = _mm512_loadu_si512(pairs_of_halves);
    for (ptrdiff_t j = 0; j < n_k; j += 2) {
        const float *first = st + j * rp, *second = first + rp;
        uint16_t *out = pb + j * rp;
        for (ptrdiff_t r = 0; r < rows16; r += FA_BF16_VL) {
            __m512 x0 = _mm512_loadu_ps(first + r);
            __m512 x1 = j + 1 < n_k ? _mm512_loadu_ps(second + r) : _mm512_setzero_ps();
            __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(x1, x0); /* x0 low, x1 high */
            _mm512_storeu_si512(out + 2 * r, _mm512_permutexvar_epi16(interleave, halves));
        }
    }
}

/* The values interleaved by key pairs: vb[(j/2) * 2 * value_dim + 2 * e + j % 2] =
 * value_j[e], a missing last key 0.  Masked loads and stores: nothing is read past a
 * row's last element nor written past the block. */
FA_INLINE void fa_pack_values_bf16(ptrdiff_t n_k, ptrdiff_t value_dim, const char *values,
                                   ptrdiff_t value_stride, uint16_t *vb)
{
    static const uint16_t low_pairs[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5,
                                           37, 6, 38, 7, 39, 8, 40, 9, 41, 10, 42,
                                           11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i low = _mm512_loadu_si512(low_pairs);
    const __m512i high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
    for (ptrdiff_t j = 0; j < n_k; j += 2) {
        const uint16_t *first = (const uint16_t *)(values + j * value_stride);
        const uint16_t *second = (const uint16_t *)((const char *)first + value_stride);
        uint16_t *out = vb + j * value_dim;
        for (ptrdiff_t e = 0; e < value_dim; e += 32) {
            ptrdiff_t left = value_dim - e;
            __mmask32 in = fa_first_lanes(left);
            __m512i x0 = _mm512_maskz_loadu_epi16(in, first + e);
            __m512i x1 = j + 1 < n_k ? _mm512_maskz_loadu_epi16(in, second + e)
                                     : _mm512_setzero_si512();
            _mm512_mask_storeu_epi16(out + 2 * e, fa_first_lanes(2 * left),
                                     _mm512_permutex2var_epi16(x0, low, x1));
            if (left > 16)
                _mm512_mask_storeu_epi16(out + 2 * e + 32, fa_first_lanes(2 * left - 32),
                                         _mm512_permutex2var_epi16(x0, high, x1));
        }
    }
}

/* acct (value_dim x rp) += bf16(st)ᵀ-weighted values: acct[e, r] += sum_j
 * bf16(st[j, r]) * value_j[e] over n_k keys (bfloat16 rows, value_stride bytes apart),
 * for the first `rows` rows rounded up to 16.  scratch: 64-byte aligned, at least
 * ((n_k + 1) / 2) * 2 * (rp + value_dim) uint16. */
static void fa_accumulate_t_bf16(ptrdiff_t n_k, ptrdiff_t value_dim, const char *values,
                                 ptrdiff_t value_stride, const float *st, ptrdiff_t rows,
                                 ptrdiff_t rp, float *acct, uint16_t *scratch)
{
    ptrdiff_t pairs = (n_k + 1) / 2;
    ptrdiff_t rows16 = (rows + FA_BF16_VL - 1) / FA_BF16_VL * FA_BF16_VL;
    uint16_t *pb = scratch, *vb = scratch + pairs * 2 * rp;
    fa_pack_p_bf16(n_k, st, rows16, rp, pb);
    fa_pack_values_bf16(n_k, value_dim, values, value_stride, vb);
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += FA_BF16_NV * FA_BF16_VL) {
        ptrdiff_t left = (rows - r0 + FA_BF16_VL - 1) / FA_BF16_VL;
        int nv = left < FA_BF16_NV ? (int)left : FA_BF16_NV;
        for (ptrdiff_t e = 0; e < value_dim; e += FA_BF16_MR) {
            int m = value_dim - e < FA_BF16_MR ? (int)(value_dim - e) : FA_BF16_MR;
            fa_pv_bf16_dispatch(m, nv, pairs, vb + 2 * e, value_dim, pb + 2 * r0, rp,
                                acct + e * rp + r0);
        }
    }
}
#undef FA_BF16_CASES
#undef FA_BF16_CASES_NV
#endif /* __AVX512BF16__ */

#endif
