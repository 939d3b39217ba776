/* The tile kernels of one instruction-set level, as a function table.
 *
 * setup.py compiles this file once per level with that level's flags (see ISA_LEVELS
 * there) and FA_LEVEL_NAME / FA_LEVEL_ID set, so the same C source becomes a baseline
 * x86-64, an AVX2, an AVX-512 and an AVX-512 BF16 kernel set in one extension;
 * _dispatch.c picks one at import.  Everything here is static but the table.
 */
#include "_kernel_list.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "_backward_tiles.h" /* includes _tiles.h */
#include "_half_tiles.h"
#include "_decode_tiles.h"
#pragma GCC diagnostic pop

#define FA_PASTE2(a, b) a##b
#define FA_PASTE(a, b) FA_PASTE2(a, b)

#define FA_ENTRY(ret, name, params, args) .name = name,
const struct fa_kernel_table FA_PASTE(fa_table_, FA_LEVEL_NAME) = {
    .level = FA_LEVEL_ID,
    FA_KERNEL_LIST(FA_ENTRY)
#if defined(FA_HAVE_BF16_PRODUCTS)
    FA_BF16_KERNELS(FA_ENTRY)
#endif
};
