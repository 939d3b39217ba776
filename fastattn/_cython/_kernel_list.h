/* Every C tile kernel that the Cython kernels call, as one X-macro list.
 *
 * X(ret, name, params, args) is expanded three times: into the function table of one
 * instruction-set level (_isa_table.c, compiled once per level), into that table's
 * type (_kernels.h), and into the forwarding functions that Cython calls by name
 * (_dispatch.c).  A kernel added to the tiles is added here once.
 */
#ifndef FASTATTN_KERNEL_LIST_H
#define FASTATTN_KERNEL_LIST_H

#include <stddef.h>
#include <stdint.h>

/* The forward tiles of _tiles.inc for one real type R with suffix S. */
#define FA_FORWARD_KERNELS(X, R, S)                                                       \
    X(void, fa_scores_t_##S,                                                             \
      (ptrdiff_t n_k, ptrdiff_t dim, const char *keys, ptrdiff_t key_stride, const R *qt, \
       ptrdiff_t rows, ptrdiff_t rp, R *st),                                             \
      (n_k, dim, keys, key_stride, qt, rows, rp, st))                                    \
    X(void, fa_accumulate_t_##S,                                                         \
      (ptrdiff_t n_k, ptrdiff_t value_dim, const char *values, ptrdiff_t value_stride,    \
       const R *st, ptrdiff_t rows, ptrdiff_t rp, R *acct),                              \
      (n_k, value_dim, values, value_stride, st, rows, rp, acct))                        \
    X(int, fa_softmax_t_##S,                                                             \
      (R *st, ptrdiff_t n_k, ptrdiff_t rp, R *m, double *l, R *shift, R *alpha,           \
       double *block_sum),                                                               \
      (st, n_k, rp, m, l, shift, alpha, block_sum))                                      \
    X(void, fa_rescale_t_##S, (R *acct, ptrdiff_t value_dim, ptrdiff_t rp, const R *alpha), \
      (acct, value_dim, rp, alpha))                                                      \
    X(void, fa_modify_t_##S,                                                             \
      (R *st, ptrdiff_t n_k, ptrdiff_t rp, R cap, const R *slope, const R *row,           \
       int64_t key0),                                                                    \
      (st, n_k, rp, cap, slope, row, key0))                                              \
    X(void, fa_accumulate_visible_t_##S,                                                 \
      (ptrdiff_t n_k, ptrdiff_t value_dim, const char *values, ptrdiff_t value_stride,    \
       const R *st, ptrdiff_t rp, R *acct),                                              \
      (n_k, value_dim, values, value_stride, st, rp, acct))                              \
    X(int, fa_rows_finite_##S,                                                           \
      (ptrdiff_t n, ptrdiff_t width, const char *rows, ptrdiff_t stride),                 \
      (n, width, rows, stride))

/* The backward tiles of _backward_tiles.inc for one real type R with suffix S. */
#define FA_BACKWARD_KERNELS(X, R, S)                                                      \
    X(void, fb_scores_product_##S,                                                       \
      (ptrdiff_t rows, const R *const *a, ptrdiff_t depth, const R *b, ptrdiff_t bp,      \
       ptrdiff_t cols, R *const *c, const ptrdiff_t *lo, const ptrdiff_t *hi),            \
      (rows, a, depth, b, bp, cols, c, lo, hi))                                          \
    X(void, fb_rows_product_##S,                                                         \
      (ptrdiff_t rows, const R *const *a, ptrdiff_t depth, const R *b, ptrdiff_t bp,      \
       ptrdiff_t cols, R *const *c, int add, const ptrdiff_t *lo, const ptrdiff_t *hi),   \
      (rows, a, depth, b, bp, cols, c, add, lo, hi))                                     \
    X(void, fb_cols_accumulate_##S,                                                      \
      (ptrdiff_t rows, const R *const *a, ptrdiff_t width, const R *b, ptrdiff_t bp,      \
       ptrdiff_t cols, R *c, ptrdiff_t cp, const ptrdiff_t *lo, const ptrdiff_t *hi),     \
      (rows, a, width, b, bp, cols, c, cp, lo, hi))                                      \
    X(void, fb_probs_row_##S,                                                            \
      (R *s, R *dp, ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t kp, const R *add, R scale,      \
       R lse, R delta),                                                                  \
      (s, dp, lo, hi, kp, add, scale, lse, delta))                                       \
    X(void, fb_probs_row_modified_##S,                                                   \
      (R *s, R *dp, ptrdiff_t lo, ptrdiff_t hi, ptrdiff_t kp, const R *add, R scale,      \
       R lse, R delta, R cap, R slope, R base),                                          \
      (s, dp, lo, hi, kp, add, scale, lse, delta, cap, slope, base))                     \
    X(int, fb_strided_finite_##S,                                                        \
      (ptrdiff_t n, const char *base, ptrdiff_t stride, ptrdiff_t width),                 \
      (n, base, stride, width))                                                          \
    X(int, fb_rows_finite_##S, (ptrdiff_t rows, const R *const *a, ptrdiff_t width),     \
      (rows, a, width))                                                                  \
    X(void, fb_rows_product_nz_##S,                                                      \
      (ptrdiff_t rows, const R *const *a, ptrdiff_t depth, const R *b, ptrdiff_t bp,      \
       ptrdiff_t cols, R *const *c, int add),                                            \
      (rows, a, depth, b, bp, cols, c, add))                                             \
    X(void, fb_cols_accumulate_nz_##S,                                                   \
      (ptrdiff_t rows, const R *const *a, ptrdiff_t width, const R *b, ptrdiff_t bp,      \
       ptrdiff_t cols, R *c, ptrdiff_t cp),                                              \
      (rows, a, width, b, bp, cols, c, cp))                                              \
    X(void, fb_pack_transposed_##S,                                                      \
      (ptrdiff_t n, ptrdiff_t width, const char *rows, ptrdiff_t stride, ptrdiff_t kp,    \
       R *out),                                                                          \
      (n, width, rows, stride, kp, out))                                                 \
    X(void, fb_unpack_transposed_##S,                                                    \
      (ptrdiff_t n, ptrdiff_t width, const R *in, ptrdiff_t kp, R factor, char *rows,     \
       ptrdiff_t stride),                                                                \
      (n, width, in, kp, factor, rows, stride))

/* Half-precision conversions (_half_tiles.h), at every level. */
#define FA_HALF_KERNELS(X)                                                                \
    X(void, fa_rows_to_f32_bf16,                                                         \
      (ptrdiff_t n, ptrdiff_t width, const char *rows, ptrdiff_t stride, float *dst,      \
       ptrdiff_t pitch),                                                                 \
      (n, width, rows, stride, dst, pitch))                                              \
    X(void, fa_rows_to_f32_f16,                                                          \
      (ptrdiff_t n, ptrdiff_t width, const char *rows, ptrdiff_t stride, float *dst,      \
       ptrdiff_t pitch),                                                                 \
      (n, width, rows, stride, dst, pitch))                                              \
    X(int, fa_rows_finite_bf16,                                                          \
      (ptrdiff_t n, ptrdiff_t width, const char *rows, ptrdiff_t stride),                 \
      (n, width, rows, stride))

/* bfloat16 products (vdpbf16ps): only levels with AVX512_BF16 have them (NULL elsewhere). */
#define FA_BF16_KERNELS(X)                                                                \
    X(void, fa_scores_t_bf16,                                                            \
      (ptrdiff_t n_k, ptrdiff_t dim, const char *keys, ptrdiff_t key_stride,              \
       const uint16_t *qtb, ptrdiff_t rows, ptrdiff_t rp, float scale, float *st),       \
      (n_k, dim, keys, key_stride, qtb, rows, rp, scale, st))                            \
    X(void, fa_accumulate_t_bf16,                                                        \
      (ptrdiff_t n_k, ptrdiff_t value_dim, const char *values, ptrdiff_t value_stride,    \
       const float *st, ptrdiff_t rows, ptrdiff_t rp, float *acct, uint16_t *scratch),    \
      (n_k, value_dim, values, value_stride, st, rows, rp, acct, scratch))

/* Where a decode task's keys and values are (FA_DECODE_KERNELS), for its first kv head
 * (head h's rows are h * key_head bytes further; values alike).  Contiguous (pages ==
 * NULL): key j of the task at keys + j * key_stride.  Paged (a block table): key j is the
 * logical position p = first + j, at block pages[p / page_size], slot p % page_size,
 * i.e. keys + pages[p / page_size] * key_block + (p % page_size) * key_stride (keys:
 * block 0, slot 0; key_block the bytes between blocks).  Values alike. */
struct fa_decode_source {
    const char *keys, *values;
    ptrdiff_t key_stride, value_stride, key_head, value_head;
    const int64_t *pages;
    int64_t first;
    ptrdiff_t page_size, key_block, value_block;
};

/* The decode kernel of _decode_tiles.inc (tasks with one query row per head), over the
 * same keys of `heads` consecutive kv heads at once. */
#define FA_DECODE_KERNELS(X, R, S)                                                        \
    X(void, fa_decode_##S,                                                               \
      (ptrdiff_t n_k, ptrdiff_t block, ptrdiff_t heads, ptrdiff_t rows, ptrdiff_t dim,     \
       ptrdiff_t value_dim, const struct fa_decode_source *source, const R *q, R cap,     \
       const R *slopes, int64_t distance0, R *work, R *m, double *l, R *acct,             \
       ptrdiff_t rp),                                                                    \
      (n_k, block, heads, rows, dim, value_dim, source, q, cap, slopes, distance0, work,  \
       m, l, acct, rp))

#define FA_KERNEL_LIST(X)                                                                 \
    FA_FORWARD_KERNELS(X, float, f32)                                                    \
    FA_FORWARD_KERNELS(X, double, f64)                                                   \
    FA_DECODE_KERNELS(X, float, f32)                                                     \
    FA_DECODE_KERNELS(X, double, f64)                                                    \
    FA_BACKWARD_KERNELS(X, float, f32)                                                   \
    FA_BACKWARD_KERNELS(X, double, f64)                                                  \
    FA_HALF_KERNELS(X)

/* Layout of the tiles, the same at every level (the Cython drivers size scratch by it). */
#define FA_ROW_PAD 16 /* the forward's rp is a multiple of this (one 64-byte line of floats) */
#define FB_PAD 16     /* the backward's kp and dp: whole vectors of float and double */

/* The instruction-set levels, lowest first (names in fastattn/_isa.py). */
enum { FA_LEVEL_BASELINE = 0, FA_LEVEL_AVX2, FA_LEVEL_AVX512, FA_LEVEL_AVX512BF16,
       FA_N_LEVELS };

/* The kernels of one level. */
struct fa_kernel_table {
    int level;
#define FA_FIELD(ret, name, params, args) ret(*name) params;
    FA_KERNEL_LIST(FA_FIELD)
    FA_BF16_KERNELS(FA_FIELD)
#undef FA_FIELD
};

#endif
