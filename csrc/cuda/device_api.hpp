// What pylr._cuda's bindings (bindings.cpp, compiled by the host compiler, no CUDA header) call
// in its CUDA translation units (kernels_*.cu). Every function launches on the given stream — a
// cudaStream_t passed as an integer, torch's current stream of the tensors' device — and returns
// null, or the CUDA runtime's message of the first error; none waits for the device.
#pragma once

#include <cstdint>

#include "cuda/launch.hpp"

namespace pylr {
namespace cuda {

// Devices the runtime sees (0 without a driver or a device, with *error set to why).
int device_count(const char** error) noexcept;

// The CUDA runtime version the module was built with (e.g. 13000).
int runtime_version() noexcept;

// One Adam/AdamW step over every row: the step counters incremented by one launch, then the
// updates, all skipped on the device when *found_inf is set.
const char* adam_step(const StepInputs& in, std::intptr_t stream, int device) noexcept;

// One SGD step over every row (kColFirst rows take the gradient into their new buffer).
const char* sgd_step(const StepInputs& in, std::intptr_t stream, int device) noexcept;

// The norm of every row's grad (kind a NormKind, p for NormKind::P) written to *out (a double on
// the device); partials must hold norm_blocks(...) doubles on the device.
const char* grad_norm(const std::int64_t* table, std::int64_t n_rows, int kind, double p,
                      double* partials, double* out, std::intptr_t stream, int device) noexcept;

// n bytes from src to dst (both 16-byte aligned, n a multiple of 16): the roofline of a
// streaming kernel, for benchmarks.
const char* copy_bytes(void* dst, const void* src, std::int64_t n, std::intptr_t stream,
                       int device) noexcept;

}  // namespace cuda
}  // namespace pylr
