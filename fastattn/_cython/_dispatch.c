/* Runtime choice of the tile kernels' instruction-set level.
 *
 * The tables of every level that setup.py built (FA_BUILT_<level> defined) are linked
 * in; the Cython kernels call the plain kernel names, which forward to the active
 * table.  The active level starts at baseline; fastattn._isa selects the best level the
 * CPU supports at import (or FASTATTN_ISA's).  This file is compiled without ISA flags.
 */
#include "_kernel_list.h"

#define FA_DECLARE(level) extern const struct fa_kernel_table fa_table_##level;
FA_DECLARE(baseline)
#ifdef FA_BUILT_avx2
FA_DECLARE(avx2)
#endif
#ifdef FA_BUILT_avx512
FA_DECLARE(avx512)
#endif
#ifdef FA_BUILT_avx512bf16
FA_DECLARE(avx512bf16)
#endif

static const struct fa_kernel_table *const fa_tables[FA_N_LEVELS] = {
    &fa_table_baseline,
#ifdef FA_BUILT_avx2
    &fa_table_avx2,
#else
    0,
#endif
#ifdef FA_BUILT_avx512
    &fa_table_avx512,
#else
    0,
#endif
#ifdef FA_BUILT_avx512bf16
    &fa_table_avx512bf16,
#else
    0,
#endif
};

static const struct fa_kernel_table *fa_active = &fa_table_baseline;

/* The best level this CPU (and its OS, for the wide registers) supports. */
int fa_cpu_level(void)
{
#if defined(FA_EMULATED_CPU_LEVEL) /* tests only: see FASTATTN_EMULATE_AVX512 in setup.py */
    return FA_EMULATED_CPU_LEVEL;
#elif (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return FA_LEVEL_BASELINE;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
        return FA_LEVEL_AVX2;
    if (!__builtin_cpu_supports("avx512bf16"))
        return FA_LEVEL_AVX512;
    return FA_LEVEL_AVX512BF16;
#else
    return FA_LEVEL_BASELINE;
#endif
}

int fa_level_built(int level)
{
    return level >= 0 && level < FA_N_LEVELS && fa_tables[level] != 0;
}

/* Make `level` the active one: 0, or -1 where it was not built or the CPU lacks it. */
int fa_select_level(int level)
{
    if (!fa_level_built(level) || level > fa_cpu_level())
        return -1;
    fa_active = fa_tables[level];
    return 0;
}

int fa_active_level(void) { return fa_active->level; }

int fa_bf16_products(void) { return fa_active->fa_scores_t_bf16 != 0; }

#define FA_RETURN_void
#define FA_RETURN_int return
#define FA_FORWARD(ret, name, params, args) \
    ret name params { FA_RETURN_##ret fa_active->name args; }
FA_KERNEL_LIST(FA_FORWARD)
FA_BF16_KERNELS(FA_FORWARD)
