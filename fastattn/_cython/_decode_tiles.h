/* The decode kernel of the Cython backend: a task with ONE query row per head.
 *
 * A decode task (Lq = 1: a generation step, a paged or varlen sequence of one token)
 * has only `group` query rows, one per query head of a kv head.  The forward tiles of
 * _tiles.h put query rows along the vector lanes, padded to FA_ROW_PAD, so there most
 * of every product is padding.  Here nothing is padded: each key and value row is read
 * once, in place, and used by all the group's rows while it is in registers.
 *
 *   scores  s[r][j] = q[r] . k[j]: dot products along the head dimension, VL (row,
 *           key) pairs at a time in VL vector accumulators, which a tree of two-source
 *           shuffles folds into one vector of VL sums (no per-key horizontal sum);
 *   softmax per row over a block of keys (keys along the lanes): modifiers, block max,
 *           rescale factor, exp, the sum in float64 -- the online softmax of the kernel
 *           contract, in blocks of `block` keys;
 *   P @ V   acc[r][e] += p[r][j] v[j][e]: value dimensions along the lanes, a register
 *           block of rows x vectors over a few keys at a time (those values stay in L1).
 *
 * Keys and values are contiguous rows or the pages of a block table (paged attention,
 * struct fa_decode_source): a softmax block then spans pages, its scores and P @ V taken
 * page run by page run, so small pages cost little more than a contiguous cache.  One
 * call may serve several kv heads over the same keys, FA_DECODE_HEAD_KEYS keys at a
 * time, head after head: where the heads of a key are stored side by side (a vLLM
 * cache, a (B, L, H, D) array), memory is then read nearly in order instead of one
 * head's rows scattered far apart.
 *
 * The result is left as the forward tiles leave theirs (acct[e * rp + r], the running
 * max m and sum l), so the Cython driver writes it like any task.  Vectors, FA_INLINE
 * and the exp come from _tiles.h; only -ffp-contract is relied on, never fast-math.
 */
#ifndef FASTATTN_DECODE_TILES_H
#define FASTATTN_DECODE_TILES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "_tiles.h"
#pragma GCC diagnostic pop

/* Keys whose values are accumulated together: their rows stay in L1 while every
 * register block of (rows x value vectors) passes over them. */
#define FA_DECODE_VALUE_KEYS 16

/* Accumulators of a register block of P @ V: up to 4 rows x (this / rows) value vectors. */
#if defined(__AVX512F__)
#define FA_DECODE_ACCS 16
#else
#define FA_DECODE_ACCS 8
#endif

/* The register blocks of P @ V are separate functions: inlined into one large
 * dispatcher, gcc 12 kept an accumulator of the inner loop on the stack (a store and
 * reload per key on that accumulator's chain: P @ V ran at half speed). */
#if defined(__GNUC__) || defined(__clang__)
#define FA_DECODE_NOINLINE __attribute__((noinline))
#else
#define FA_DECODE_NOINLINE __declspec(noinline)
#endif

/* Keeps a query vector in a register: with sixteen AVX2 registers gcc 12 otherwise
 * reloaded it for every product (memory operands), and the loads, not the FMAs, bound
 * the scores. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && FA_VBYTES == 32
#define FA_DECODE_IN_REGISTER(x) __asm__("" : "+x"(x))
#else
#define FA_DECODE_IN_REGISTER(x) ((void)(x))
#endif

/* Software prefetch into L2 (hint T1), each stream (keys while scores are formed,
 * values while they are summed) this many rows ahead of its use: past the run a call of
 * several heads takes (FA_DECODE_HEAD_KEYS), far enough to cover the memory's latency.
 * Prefetching a whole block ahead (the next block's keys during the scores, its values
 * during P @ V) decoded 10-20 % slower on Zen 3, contiguous or (L, H, D). */
#define FA_DECODE_AHEAD_ROWS 16
#if defined(__GNUC__) || defined(__clang__)
#define FA_DECODE_PREFETCH(address) __builtin_prefetch((address), 0, 2)
#else
#define FA_DECODE_PREFETCH(address) ((void)(address))
#endif

/* Rows to prefetch while a phase computes: n rows of `bytes` bytes, row i at
 * rows + i * stride or, paged (pages != NULL), at logical position first + i of the
 * block table (rows: block 0, slot 0; blocks block_stride bytes apart); then the rows
 * of `also` (NULL: none). */
struct fa_decode_ahead {
    const char *rows;
    ptrdiff_t n, stride, bytes;
    const int64_t *pages;
    int64_t first;
    ptrdiff_t page_size, block_stride;
    const struct fa_decode_ahead *also;
};

static inline void fa_decode_prefetch_row(const char *row, ptrdiff_t bytes)
{
    const char *line = (const char *)((uintptr_t)row & ~(uintptr_t)63);
    for (; line < row + bytes; line += 64) /* each cache line of the row once */
        FA_DECODE_PREFETCH(line);
}

/* Every cache line of rows [from, to) of `ahead` (those that exist), and of its `also`. */
static inline void fa_decode_prefetch(const struct fa_decode_ahead *ahead, ptrdiff_t from,
                                      ptrdiff_t to)
{
    for (; ahead != NULL; ahead = ahead->also) {
        const ptrdiff_t stop = to < ahead->n ? to : ahead->n;
        if (ahead->pages == NULL) {
            for (ptrdiff_t i = from; i < stop; i++)
                fa_decode_prefetch_row(ahead->rows + i * ahead->stride, ahead->bytes);
            continue;
        }
        for (ptrdiff_t i = from; i < stop; i++) {
            const int64_t position = ahead->first + i;
            fa_decode_prefetch_row(ahead->rows
                                       + ahead->pages[position / ahead->page_size]
                                             * ahead->block_stride
                                       + position % ahead->page_size * ahead->stride,
                                   ahead->bytes);
        }
    }
}

/* The run of a task's keys from key j, at most n of them, that one page holds (all n
 * when the source is contiguous): returns its length and sets its first key and value
 * rows (see struct fa_decode_source). */
static inline ptrdiff_t fa_decode_run(const struct fa_decode_source *source, ptrdiff_t j,
                                      ptrdiff_t n, const char **keys, const char **values)
{
    if (source->pages == NULL) {
        *keys = source->keys + j * source->key_stride;
        *values = source->values + j * source->value_stride;
        return n;
    }
    const int64_t position = source->first + j;
    const int64_t block = source->pages[position / source->page_size];
    const ptrdiff_t slot = position % source->page_size;
    *keys = source->keys + block * source->key_block + slot * source->key_stride;
    *values = source->values + block * source->value_block + slot * source->value_stride;
    return n < source->page_size - slot ? n : source->page_size - slot;
}

/* Keys one call of several kv heads takes head by head before the next keys: where the
 * heads of a key lie side by side, memory is then read nearly in order (with whole runs
 * head after head, each head's pass read its rows far apart: a (L, H, D) cache decoded
 * at 60 % of the speed of a (H, L, D) one, at 85 % with 8 keys). */
#define FA_DECODE_HEAD_KEYS 8
#if FA_DECODE_AHEAD_ROWS <= FA_DECODE_HEAD_KEYS
#error "the prefetches must run ahead of the keys a call of several heads takes at a time"
#endif

/* fa_decode_run, at most FA_DECODE_HEAD_KEYS keys when `heads` > 1. */
static inline ptrdiff_t fa_decode_stretch(const struct fa_decode_source *source, ptrdiff_t j,
                                          ptrdiff_t n, ptrdiff_t heads, const char **keys,
                                          const char **values)
{
    if (heads > 1 && n > FA_DECODE_HEAD_KEYS)
        n = FA_DECODE_HEAD_KEYS;
    return fa_decode_run(source, j, n, keys, values);
}

/* How many of a share of `share` rows exist when `left` rows are left (may be <= 0). */
#define FA_DECODE_SHARE(left, share) ((left) < (share) ? (left) : (share))

/* Keys (or, with `values`, values) j to j + n of a task, as rows to prefetch of `bytes`
 * from the first kv head's (n <= 0: none). */
static inline struct fa_decode_ahead fa_decode_rows_ahead(
    const struct fa_decode_source *source, int values, ptrdiff_t j, ptrdiff_t n,
    ptrdiff_t bytes)
{
    const char *rows = values ? source->values : source->keys;
    const ptrdiff_t stride = values ? source->value_stride : source->key_stride;
    struct fa_decode_ahead ahead = {rows, n, stride, bytes, source->pages, source->first + j,
                                    source->page_size,
                                    values ? source->value_block : source->key_block, NULL};
    if (source->pages == NULL)
        ahead.rows = rows + j * stride;
    return ahead;
}

/* Lanes per vector as preprocessor numbers (the shuffle masks are spelt out per width). */
#if defined(FA_VBYTES)
#define FA_DECODE_LANES_F32 (FA_VBYTES / 4)
#define FA_DECODE_LANES_F64 (FA_VBYTES / 8)
#else
#define FA_DECODE_LANES_F32 1
#define FA_DECODE_LANES_F64 1
#endif

/* Folding VL accumulators into one vector of their sums needs two-source shuffles with
 * constant masks: gcc's __builtin_shuffle or clang's __builtin_shufflevector.  Without
 * them (or with one-lane "vectors"), the sums are taken lane by lane. */
#if defined(FA_VBYTES) && defined(__clang__)
#define FA_DECODE_SHUFFLE 2
#elif defined(FA_VBYTES) && defined(__GNUC__)
#define FA_DECODE_SHUFFLE 1
#else
#define FA_DECODE_SHUFFLE 0
#endif

#if FA_DECODE_SHUFFLE
typedef int32_t fa_decode_ivec_f32 __attribute__((vector_size(FA_VBYTES)));
typedef int64_t fa_decode_ivec_f64 __attribute__((vector_size(FA_VBYTES)));
#else
typedef int fa_decode_ivec_f32; /* unused */
typedef int fa_decode_ivec_f64;
#endif

/* The fold of step h on vectors x, y of n lanes, in the instructions every width has
 * (AVX2 has no two-source lane permute): below the 128-bit chunk (h < FA_DECODE_CHUNK,
 * h = 1, 2, ...) an unpack, lane p of a chunk taking element p / 2h * h + p % h of x
 * (p / h even) or y (odd), HIGH the same elements half a chunk on; above it (h = the
 * chunk's lanes) chunk k of LOW is chunk 2k of x (first half of the chunks) or of y
 * (second half), HIGH the chunk after each.  The in-chunk steps leave lane p of chunk c
 * holding chunk c's sum of accumulator p; the chunk steps then add the chunks, each
 * keeping its lanes: lane a ends holding the sum of accumulator a. */
#define FA_DECODE_CHUNK(n) ((n) * 16 / FA_VBYTES)
#define FA_DECODE_UNPACK(n, h, i)                                                        \
    ((i) - (i) % FA_DECODE_CHUNK(n) + ((i) % FA_DECODE_CHUNK(n) / (h) % 2 ? (n) : 0) +    \
     (i) % FA_DECODE_CHUNK(n) / (2 * (h)) * (h) + (i) % (h))
#define FA_DECODE_CHUNKS(n, i)                                                           \
    (2 * ((i) / FA_DECODE_CHUNK(n)) < (n) / FA_DECODE_CHUNK(n)                            \
         ? 2 * ((i) / FA_DECODE_CHUNK(n)) * FA_DECODE_CHUNK(n) + (i) % FA_DECODE_CHUNK(n)   \
         : (n) + (2 * ((i) / FA_DECODE_CHUNK(n)) - (n) / FA_DECODE_CHUNK(n))              \
                     * FA_DECODE_CHUNK(n) + (i) % FA_DECODE_CHUNK(n))
#define FA_DECODE_LOW(n, h, i)                                                           \
    ((h) < FA_DECODE_CHUNK(n) ? FA_DECODE_UNPACK(n, h, i) : FA_DECODE_CHUNKS(n, i))
#define FA_DECODE_HIGH(n, h, i)                                                          \
    (FA_DECODE_LOW(n, h, i) +                                                            \
     ((h) < FA_DECODE_CHUNK(n) ? FA_DECODE_CHUNK(n) / 2 : FA_DECODE_CHUNK(n)))
#define FA_DECODE_L2(M, n, h) M(n, h, 0), M(n, h, 1)
#define FA_DECODE_L4(M, n, h) FA_DECODE_L2(M, n, h), M(n, h, 2), M(n, h, 3)
#define FA_DECODE_L8(M, n, h) FA_DECODE_L4(M, n, h), M(n, h, 4), M(n, h, 5), M(n, h, 6), \
                              M(n, h, 7)
#define FA_DECODE_L16(M, n, h) FA_DECODE_L8(M, n, h), M(n, h, 8), M(n, h, 9), M(n, h, 10), \
                               M(n, h, 11), M(n, h, 12), M(n, h, 13), M(n, h, 14),       \
                               M(n, h, 15)

#define REAL float
#define VEC fa_vec_f32
#define DECODE_IVEC fa_decode_ivec_f32
#define DECODE_LANES FA_DECODE_LANES_F32
#define EXP fa_exp_f32
#define TANH fa_tanh_f32
#define FN(name) fa_##name##_f32
#include "_decode_tiles.inc"
#undef REAL
#undef VEC
#undef DECODE_IVEC
#undef DECODE_LANES
#undef EXP
#undef TANH
#undef FN

#define REAL double
#define VEC fa_vec_f64
#define DECODE_IVEC fa_decode_ivec_f64
#define DECODE_LANES FA_DECODE_LANES_F64
#define EXP fa_exp_f64
#define TANH fa_tanh_f64
#define FN(name) fa_##name##_f64
#include "_decode_tiles.inc"
#undef REAL
#undef VEC
#undef DECODE_IVEC
#undef DECODE_LANES
#undef EXP
#undef TANH
#undef FN

#endif
