/* The streaming read of the serving report's bandwidth probe (fastattn.bench): a sum
 * of float32 values in eight independent vector accumulators, so that the loop waits
 * on memory only.  It is compiled at the extension's baseline level: 16-byte loads
 * already ask more of one core than memory gives it. */
#ifndef FASTATTN_READ_PROBE_H
#define FASTATTN_READ_PROBE_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
typedef float fa_read_vec __attribute__((vector_size(16), aligned(4), may_alias));
#define FA_READ_LANES 4
#else
typedef float fa_read_vec;
#define FA_READ_LANES 1
#endif

/* The sum of x[0 .. n). */
static inline double fa_read_sum(const float *x, ptrdiff_t n)
{
    fa_read_vec acc[8] = {0};
    const ptrdiff_t step = 8 * FA_READ_LANES;
    ptrdiff_t i = 0;
    double total = 0.0;
    for (; i + step <= n; i += step)
        for (int a = 0; a < 8; a++)
            acc[a] += *(const fa_read_vec *)(x + i + a * FA_READ_LANES);
    for (int a = 0; a < 8; a++) {
        float lanes[FA_READ_LANES];
        memcpy(lanes, &acc[a], sizeof lanes);
        for (int l = 0; l < FA_READ_LANES; l++)
            total += lanes[l];
    }
    for (; i < n; i++)
        total += x[i];
    return total;
}

#endif
