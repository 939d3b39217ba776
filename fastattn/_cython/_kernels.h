/* What the Cython kernels see of the C tile kernels (interim: the definitions themselves). */
#ifndef FASTATTN_KERNELS_H
#define FASTATTN_KERNELS_H
#include "_backward_tiles.h"
#endif
