/* Register-blocked tile kernels of the Cython backward pass, for float and double.
 *
 * A backward task holds one block of keys fixed while it walks the query blocks, so
 * the tiles here keep the KEYS along the contiguous axis (the forward's tiles keep the
 * query rows there).  Everything derived from the key block is packed once per block:
 *   kt (D x kp) and vt (Dv x kp), keys and values transposed, and
 *   ks (kp x dp), the keys times the scale (dp = D rounded up to whole vectors),
 * and every query-side operand is read in place through one pointer per row (any row
 * stride, the heads of a GQA group side by side).  Then all five block products are
 * "broadcast one scalar, multiply a contiguous vector":
 *   S  = Q kt          rows_product   (a query element x a row of kt)
 *   dP = dO vt         rows_product
 *   dQ = dS ks         rows_product   (a dS element x a row of ks)
 *   dvt += dOᵀ P       cols_accumulate (a dO element x a row of P)
 *   dkt += Qᵀ dS       cols_accumulate
 * and the softmax-like step (P = exp(S * scale - lse), dS = P (dP - delta)) is
 * element-wise along a row with one lse and one delta per row.
 *
 * Vector types and FA_INLINE come from _tiles.h (GNU C vector extensions); only
 * -ffp-contract is relied on, never fast-math.
 */
#ifndef FASTATTN_BACKWARD_TILES_H
#define FASTATTN_BACKWARD_TILES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* _tiles.h also defines the forward's kernels, unused here. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "_tiles.h"
#pragma GCC diagnostic pop

/* Register block: FB_MR scalar rows x FB_NV vectors (24 accumulators with AVX-512). */
#if defined(__AVX512F__)
#define FB_MR 6
#define FB_NV 4
#else
#define FB_MR 4
#define FB_NV 3
#endif

/* Tile transposes by two-source shuffles where gcc has them for 64-byte vectors; elsewhere
 * element by element (see FN(transpose_tile)). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#define FB_SHUFFLE 1
typedef int32_t fb_ivec_f32 __attribute__((vector_size(FA_VBYTES)));
typedef int64_t fb_ivec_f64 __attribute__((vector_size(FA_VBYTES)));
#else
#define FB_SHUFFLE 0
typedef int fb_ivec_f32; /* unused */
typedef int fb_ivec_f64;
#endif

/* exp's argument from which P is taken as inf (the polynomial's 2**n overflows just above). */
#define FB_EXP_MAX_F32 88.0f
#define FB_EXP_MAX_F64 709.0

/* The union [*first, *stop) of the ranges [lo[i], hi[i]) of n rows (empty: 0, 0). */
static inline void fb_span(const ptrdiff_t *lo, const ptrdiff_t *hi, ptrdiff_t n,
                           ptrdiff_t *first, ptrdiff_t *stop)
{
    ptrdiff_t a = PTRDIFF_MAX, b = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        if (lo[i] < hi[i]) {
            a = lo[i] < a ? lo[i] : a;
            b = hi[i] > b ? hi[i] : b;
        }
    *first = a < b ? a : 0;
    *stop = a < b ? b : 0;
}

#define REAL float
#define VEC fa_vec_f32
#define IVEC fb_ivec_f32
#define EXP fa_exp_f32
#define TANH fa_tanh_f32
#define PICK fa_pick_f32
#define ABS fabsf
#define EXP_MAX FB_EXP_MAX_F32
#define FN(name) fb_##name##_f32
#include "_backward_tiles.inc"
#undef REAL
#undef VEC
#undef IVEC
#undef EXP
#undef TANH
#undef PICK
#undef ABS
#undef EXP_MAX
#undef FN

#define REAL double
#define VEC fa_vec_f64
#define IVEC fb_ivec_f64
#define EXP fa_exp_f64
#define TANH fa_tanh_f64
#define PICK fa_pick_f64
#define ABS fabs
#define EXP_MAX FB_EXP_MAX_F64
#define FN(name) fb_##name##_f64
#include "_backward_tiles.inc"
#undef REAL
#undef VEC
#undef IVEC
#undef EXP
#undef TANH
#undef PICK
#undef ABS
#undef EXP_MAX
#undef FN

#endif
