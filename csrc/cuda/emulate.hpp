// The CUDA kernels' bodies run on the host: pylr._core's test entry points (_cuda_emulate_*),
// compiled with the host compiler whether or not a CUDA toolkit exists. They take the same
// pointer table (here of CPU tensors) through the same launch builder and planner as
// pylr._cuda, and run step_kernels.hpp's block prologue and thread body over every (block,
// thread) of every launch, so that host tests compare the GPU's code with the CPU optimizer.
#pragma once

#include <cstdint>

#include "cuda/launch.hpp"

namespace pylr {
namespace cuda {

// Whether this build's emulation computes math.hpp's madd with a fused multiply-add, as the
// device does (x86: emulate.cpp is compiled with -mfma; aarch64 always). Only then can it agree
// with the device — and with the CPU's FMA kernels — bit for bit.
bool emulation_uses_fma() noexcept;

// `limits` narrows the production launch limits (0: keep); block_size threads per block.
void emulate_adam_step(const StepInputs& in, const PlanLimits& limits, int block_size) noexcept;
void emulate_sgd_step(const StepInputs& in, const PlanLimits& limits, int block_size) noexcept;
// block_size a power of two (the block's tree reduction)
double emulate_grad_norm(const std::int64_t* table, std::int64_t n_rows, int kind, double p,
                         const PlanLimits& limits, int block_size);

}  // namespace cuda
}  // namespace pylr
