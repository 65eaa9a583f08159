// The storage types of optimizer tensors and their conversions to and from the compute type:
// float32, float64, bfloat16 and float16 storage; float (double for float64) arithmetic; round to
// nearest even on the way back, or stochastic rounding for bfloat16 state (see StateRounding).
//
// Shared by the CPU loops (kernels.hpp, compiled once per instruction set) and the CUDA kernels
// (csrc/cuda/), so both read and round every element identically. Like math.hpp, the functions
// are `static` on the host (each instruction-set translation unit keeps its own copy, compiled
// with its own flags) and __host__ __device__ under nvcc.
#pragma once

#include <cstdint>
#include <cstring>

#include "optim/kernel_api.hpp"
#include "optim/math.hpp"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace pylr {
namespace optim {

struct BFloat16 {
    std::uint16_t bits;
};
struct Float16 {
    std::uint16_t bits;
};

// The arithmetic type of a storage type: float, or double for float64.
template <typename S>
struct ComputeOf {
    using type = float;
};
template <>
struct ComputeOf<double> {
    using type = double;
};

PYLR_HD std::uint32_t bits_of(float v) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(v);
#else
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    return u;
#endif
}

PYLR_HD float float_of(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
#endif
}

PYLR_HD float load(float x) { return x; }
PYLR_HD double load(double x) { return x; }
PYLR_HD float load(BFloat16 x) { return float_of(static_cast<std::uint32_t>(x.bits) << 16); }

#if defined(__CUDA_ARCH__)
// the device's conversion instructions (IEEE, exact)
PYLR_HD float load(Float16 x) { return __half2float(__ushort_as_half(x.bits)); }
#elif defined(__FLT16_MAX__) && !defined(__CUDACC__)
// The compiler's half type: F16C / AVX-512 conversions where the target has them.
PYLR_HD float load(Float16 x) {
    _Float16 h;
    std::memcpy(&h, &x.bits, sizeof h);
    return static_cast<float>(h);
}
#else
// IEEE binary16 -> binary32, exact (subnormals, infinities and NaN included).
PYLR_HD float load(Float16 x) {
    const std::uint32_t sign = static_cast<std::uint32_t>(x.bits & 0x8000u) << 16;
    std::uint32_t exp = (x.bits >> 10) & 0x1fu, mant = x.bits & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        u = sign;
    } else {  // subnormal: normalise
        exp = 113;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --exp;
        }
        u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    return float_of(u);
}
#endif

PYLR_HD void store(float& dst, float v) { dst = v; }
PYLR_HD void store(double& dst, double v) { dst = v; }
PYLR_HD void store(BFloat16& dst, float v) {
    const std::uint32_t u = bits_of(v);
    // round to nearest even on the 16 dropped bits; NaN stays a (quiet) NaN
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    dst.bits = static_cast<std::uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}
#if defined(__CUDA_ARCH__)
PYLR_HD void store(Float16& dst, float v) { dst.bits = __half_as_ushort(__float2half_rn(v)); }
#elif defined(__FLT16_MAX__) && !defined(__CUDACC__)
PYLR_HD void store(Float16& dst, float v) {
    const _Float16 h = static_cast<_Float16>(v);  // IEEE round to nearest even
    std::memcpy(&dst.bits, &h, sizeof h);
}
#else
// binary32 -> binary16 with round to nearest even, overflow to infinity, NaN kept quiet.
PYLR_HD void store(Float16& dst, float v) {
    const std::uint32_t u = bits_of(v);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t abs = u & 0x7fffffffu;
    std::uint32_t h;
    if (abs > 0x7f800000u) {
        h = 0x7e00u;  // NaN
    } else if (abs >= 0x477ff000u) {
        h = 0x7c00u;  // rounds to infinity (or is one)
    } else if (abs >= 0x38800000u) {  // normal half
        const std::uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);
        h = (r - 0x38000000u) >> 13;
    } else if (abs > 0x33000000u) {  // subnormal half
        const std::uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u;
        const std::uint32_t shift = 126u - e;  // 14..24
        const std::uint32_t half = 1u << (shift - 1);
        const std::uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u);
        h = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    } else {
        h = 0;  // rounds to zero
    }
    dst.bits = static_cast<std::uint16_t>(sign | h);
}
#endif

// bfloat16 from float32 rounded stochastically with the random bits r (see StateRounding):
// r's low 16 bits are added below the kept ones, then dropped; NaN stays a (quiet) NaN, and
// infinities stay infinite.
PYLR_HD void store_stochastic(BFloat16& dst, float v, std::uint32_t r) {
    const std::uint32_t u = bits_of(v);
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    dst.bits = static_cast<std::uint16_t>(nan ? ((u >> 16) | 0x40u) : ((u + (r & 0xffffu)) >> 16));
}

// A state element back to storage: rounded stochastically with the random bits r (bfloat16
// storage of StateRounding's stochastic mode; only r's low 16 bits are used) or to nearest even.
template <bool Stochastic, typename T, typename C>
PYLR_HD void store_state(T& dst, C v, [[maybe_unused]] std::uint32_t r) {
    if constexpr (Stochastic) {
        store_stochastic(dst, static_cast<float>(v), r);
    } else {
        store(dst, v);
    }
}

}  // namespace optim
}  // namespace pylr
