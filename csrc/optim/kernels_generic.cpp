// The optimizer loops compiled for the generic instruction set (see kernels.hpp).
#define PYLR_KERNEL_NS generic
#include "optim/kernels.hpp"
