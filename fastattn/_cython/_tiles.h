/* Register-blocked tile kernels of the Cython backend, for float and double.
 *
 * The tiles are stored transposed: the packed queries qt (head_dim x rp), the scores
 * st (n_k x rp) and the accumulator acct (value_dim x rp) all have the task's query
 * rows along the contiguous axis (rp = rows rounded up to 16).  Then
 *   - scores:  st[j, :] = sum_d k[j, d] * qt[d, :]   (a key element is broadcast)
 *   - P @ V:   acct[e, :] += sum_j v[j, e] * st[j, :] (a value element is broadcast)
 *   - softmax: the running max, sum and rescale of every row are element-wise
 *     vector operations across rows, and so are the score modifiers (softcap, ALiBi),
 * so keys and values are read in place from any row stride, never packed, and one
 * kernel serves prefill (many rows) and decode (a single row) alike.
 *
 * Vectors are GNU C vector extensions sized for the target (64 bytes with AVX-512,
 * 32 with AVX, else 16); other compilers get the same code on scalars.  Only
 * -ffp-contract (a * b + c as one FMA) is relied on, never fast-math.
 */
#ifndef FASTATTN_TILES_H
#define FASTATTN_TILES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include "_rowops.h"
#include "_kernel_list.h" /* FA_ROW_PAD */

#if defined(__GNUC__) || defined(__clang__)
#define FA_INLINE static inline __attribute__((always_inline))
#if defined(__AVX512F__)
#define FA_VBYTES 64
#define FA_NV 4 /* row vectors per register block (x FA_MR keys or values) */
#define FA_MR 6
#elif defined(__AVX__)
#define FA_VBYTES 32
#define FA_NV 2
#define FA_MR 5
#else
#define FA_VBYTES 16
#define FA_NV 2
#define FA_MR 5
#endif
#define FA_VECTOR(name, real)                                                            \
    typedef real name __attribute__((vector_size(FA_VBYTES), aligned(sizeof(real)),      \
                                     may_alias))
#else
#define FA_INLINE static __forceinline
#define FA_NV 4
#define FA_MR 4
#define FA_VECTOR(name, real) typedef real name
#endif


FA_VECTOR(fa_vec_f32, float);
FA_VECTOR(fa_vec_f64, double);

#define REAL float
#define VEC fa_vec_f32
#define EXP fa_exp_f32
#define TANH fa_tanh_f32
#define ABS fabsf
#define FN(name) fa_##name##_f32
#include "_tiles.inc"
#undef REAL
#undef VEC
#undef EXP
#undef TANH
#undef ABS
#undef FN

#define REAL double
#define VEC fa_vec_f64
#define EXP fa_exp_f64
#define TANH fa_tanh_f64
#define ABS fabs
#define FN(name) fa_##name##_f64
#include "_tiles.inc"
#undef REAL
#undef VEC
#undef EXP
#undef TANH
#undef ABS
#undef FN

#endif
