// The gradient norm on the GPU (block partials, then one block over the partials; every order
// fixed), the runtime queries, and a plain copy kernel (the benchmarks' roofline).
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/device_api.hpp"
#include "cuda/launch.hpp"
#include "cuda/step_kernels.hpp"

namespace pylr {
namespace cuda {
namespace {

// The tree over the block's threads (blockDim.x a power of two); thread 0 is left with it all.
template <NormKind Kind>
__device__ void reduce_block(double* part) {
    __syncthreads();
    for (int half = static_cast<int>(blockDim.x) / 2; half > 0; half /= 2) {
        norm_tree_level<Kind>(part, static_cast<int>(threadIdx.x), half);
        __syncthreads();
    }
}

template <typename S, NormKind Kind>
__global__ void __launch_bounds__(kBlockThreads)
    norm_kernel(const __grid_constant__ NormLaunch launch) {
    __shared__ BlockSpan span;
    __shared__ double part[kBlockThreads];
    if (threadIdx.x == 0) span = locate_block(launch.map, static_cast<std::int32_t>(blockIdx.x));
    __syncthreads();
    part[threadIdx.x] = norm_thread<S, Kind>(launch, span, static_cast<int>(threadIdx.x),
                                             static_cast<int>(blockDim.x));
    reduce_block<Kind>(part);
    if (threadIdx.x == 0) launch.partials[blockIdx.x] = part[0];
}

template <NormKind Kind>
__global__ void __launch_bounds__(kBlockThreads) norm_final_kernel(NormFinal f) {
    __shared__ double part[kBlockThreads];
    part[threadIdx.x] =
        norm_final_thread<Kind>(f, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    reduce_block<Kind>(part);
    if (threadIdx.x == 0) *f.out = norm_root<Kind>(part[0], f);
}

__global__ void copy_kernel(uint4* __restrict__ dst, const uint4* __restrict__ src,
                            std::int64_t n) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        dst[i] = src[i];
    }
}

const char* error_of(cudaError_t err) {
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <NormKind Kind>
void launch_norm(const std::int64_t* table, std::int64_t n_rows, double p, double* partials,
                 double* out, cudaStream_t stream, NormLaunch& launch) {
    for_each_norm_launch(table, n_rows, p, partials, kNormLimits, launch,
                         [&](DType dtype, const NormLaunch& l) {
                             with_dtype(dtype, [&](auto* s) {
                                 using S = std::remove_pointer_t<decltype(s)>;
                                 const auto blocks = static_cast<unsigned>(launch_blocks(l.map));
                                 norm_kernel<S, Kind><<<blocks, kBlockThreads, 0, stream>>>(l);
                             });
                         });
    const NormFinal f{partials, norm_blocks(table, n_rows, kNormLimits), out, p};
    norm_final_kernel<Kind><<<1, kBlockThreads, 0, stream>>>(f);
}

}  // namespace

int device_count(const char** error) noexcept {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        *error = cudaGetErrorString(err);
        cudaGetLastError();  // not sticky: clear it
        return 0;
    }
    *error = nullptr;
    return n;
}

int runtime_version() noexcept { return CUDART_VERSION; }

const char* grad_norm(const std::int64_t* table, std::int64_t n_rows, int kind, double p,
                      double* partials, double* out, std::intptr_t stream_handle,
                      int device) noexcept {
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
    static thread_local NormLaunch launch;
    switch (static_cast<NormKind>(kind)) {
        case NormKind::Two:
            launch_norm<NormKind::Two>(table, n_rows, p, partials, out, stream, launch);
            break;
        case NormKind::One:
            launch_norm<NormKind::One>(table, n_rows, p, partials, out, stream, launch);
            break;
        case NormKind::Inf:
            launch_norm<NormKind::Inf>(table, n_rows, p, partials, out, stream, launch);
            break;
        case NormKind::NegInf:
            launch_norm<NormKind::NegInf>(table, n_rows, p, partials, out, stream, launch);
            break;
        default: launch_norm<NormKind::P>(table, n_rows, p, partials, out, stream, launch);
    }
    return error_of(cudaGetLastError());
}

const char* copy_bytes(void* dst, const void* src, std::int64_t n, std::intptr_t stream_handle,
                       int device) noexcept {
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    const std::int64_t vectors = n / 16;
    if (vectors == 0) return nullptr;
    int sms = 0;
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    const std::int64_t want = (vectors + 255) / 256;
    const auto blocks = static_cast<unsigned>(want < 8 * sms ? want : 8 * sms);
    copy_kernel<<<blocks, 256, 0, reinterpret_cast<cudaStream_t>(stream_handle)>>>(
        static_cast<uint4*>(dst), static_cast<const uint4*>(src), vectors);
    return error_of(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pylr
