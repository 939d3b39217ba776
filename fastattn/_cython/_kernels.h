/* What the Cython kernels see of the C tile kernels: the forwarding functions of
 * _dispatch.c (one per kernel of _kernel_list.h, calling the active level's table), the
 * level selection, the layout constants and the task counter. */
#ifndef FASTATTN_KERNELS_H
#define FASTATTN_KERNELS_H

#include "_kernel_list.h"

#define FA_PROTOTYPE(ret, name, params, args) ret name params;
FA_KERNEL_LIST(FA_PROTOTYPE)
FA_BF16_KERNELS(FA_PROTOTYPE)
#undef FA_PROTOTYPE

int fa_cpu_level(void);
int fa_level_built(int level);
int fa_select_level(int level);
int fa_active_level(void);
int fa_bf16_products(void);

/* Claim the next task of a worker's run: the owner and any thief share one counter,
 * so each task is taken exactly once.  Relaxed suffices: tasks read shared inputs and
 * write disjoint outputs, published by the barrier that ends the parallel region. */
static inline int64_t fb_claim(int64_t *next) {
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
}

#endif
