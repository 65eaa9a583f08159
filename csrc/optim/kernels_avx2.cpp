// The optimizer loops compiled for the avx2 instruction set (see kernels.hpp).
#define PYLR_KERNEL_NS avx2
#include "optim/kernels.hpp"
