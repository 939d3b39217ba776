/* Test only (FASTATTN_EMULATE_AVX512=1, see setup.py and .ci/run): the compiler's own
 * intrinsics headers, then software versions of the AVX-512 intrinsics that
 * _half_tiles.h uses (fake512.h, written from the instruction set reference), so that
 * the avx512 and avx512bf16 levels' code runs, and is tested, on a CPU without AVX-512.
 * It shows that the kernels' logic is right at those levels, not that real hardware
 * agrees with these software versions. */
#undef __AVX512F__
#undef __AVX512BW__
#undef __AVX512BF16__
#include_next <immintrin.h>
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512BF16__ 1
#include "fake512.h"
