// SGD on the GPU: one kernel per state variant over multi-tensor launches (launch.hpp), each
// step_kernels.hpp's block prologue and per-thread element loop.
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/device_api.hpp"
#include "cuda/launch.hpp"
#include "cuda/step_kernels.hpp"

namespace pylr {
namespace cuda {
namespace {

template <typename S, typename T, bool Stochastic>
__global__ void __launch_bounds__(kBlockThreads)
    sgd_kernel(const __grid_constant__ SgdLaunch launch) {
    using C = typename ComputeOf<S>::type;
    __shared__ SgdBlock<C> work;
    if (threadIdx.x == 0) work = sgd_block<C>(launch, static_cast<std::int32_t>(blockIdx.x));
    __syncthreads();
    sgd_threads<S, T, Stochastic>(launch, work, static_cast<int>(threadIdx.x),
                                  static_cast<int>(blockDim.x));
}

}  // namespace

const char* sgd_step(const StepInputs& in, std::intptr_t stream_handle, int device) noexcept {
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
    static thread_local SgdLaunch launch;
    for_each_sgd_launch(in, kSgdLimits, launch, [&](int variant, const SgdLaunch& l) {
        with_state_variant(variant, [&](auto* s, auto* t, auto stochastic) {
            using S = std::remove_pointer_t<decltype(s)>;
            using T = std::remove_pointer_t<decltype(t)>;
            const auto blocks = static_cast<unsigned>(launch_blocks(l.map));
            sgd_kernel<S, T, decltype(stochastic)::value><<<blocks, kBlockThreads, 0, stream>>>(l);
        });
    });
    err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda
}  // namespace pylr
