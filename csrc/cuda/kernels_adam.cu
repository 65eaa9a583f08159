// Adam/AdamW on the GPU: the step-counter increment, then one kernel per state variant over
// multi-tensor launches (launch.hpp). Each kernel is step_kernels.hpp's block prologue (one
// thread, shared through shared memory) and its per-thread element loop.
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/device_api.hpp"
#include "cuda/launch.hpp"
#include "cuda/step_kernels.hpp"

namespace pylr {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kIncrementThreads)
    increment_kernel(const __grid_constant__ StepIncrement launch) {
    increment_step(launch, static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
}

template <typename S, typename T, bool Stochastic>
__global__ void __launch_bounds__(kBlockThreads)
    adam_kernel(const __grid_constant__ AdamLaunch launch) {
    using C = typename ComputeOf<S>::type;
    __shared__ AdamBlock<C> work;
    if (threadIdx.x == 0) work = adam_block<C>(launch, static_cast<std::int32_t>(blockIdx.x));
    __syncthreads();
    adam_threads<S, T, Stochastic>(launch, work, static_cast<int>(threadIdx.x),
                                   static_cast<int>(blockDim.x));
}

}  // namespace

const char* adam_step(const StepInputs& in, std::intptr_t stream_handle, int device) noexcept {
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
    // the launch structs, reused (a kernel's arguments are copied when it is launched)
    static thread_local StepIncrement increment;
    static thread_local AdamLaunch launch;
    for_each_step_increment(in, increment, [&](const StepIncrement& l) {
        const unsigned blocks = (l.n + kIncrementThreads - 1) / kIncrementThreads;
        increment_kernel<<<blocks, kIncrementThreads, 0, stream>>>(l);
    });
    for_each_adam_launch(in, kAdamLimits, launch, [&](int variant, const AdamLaunch& l) {
        with_state_variant(variant, [&](auto* s, auto* t, auto stochastic) {
            using S = std::remove_pointer_t<decltype(s)>;
            using T = std::remove_pointer_t<decltype(t)>;
            const auto blocks = static_cast<unsigned>(launch_blocks(l.map));
            adam_kernel<S, T, decltype(stochastic)::value><<<blocks, kBlockThreads, 0, stream>>>(l);
        });
    });
    err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace pylr
