// The optimizer loops compiled for the avx512 instruction set (see kernels.hpp).
#define PYLR_KERNEL_NS avx512
#include "optim/kernels.hpp"
