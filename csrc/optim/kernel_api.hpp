// What the multi-tensor driver (cpu.cpp) hands a CPU kernel: one contiguous segment of one tensor
// with its scalars in double, and the table of kernels each instruction set provides.
#pragma once

#include <cstdint>

namespace pylr {
namespace optim {

// dtype codes (pylr/_plan.py reads them through the module's DTYPE_* attributes)
enum class DType : std::int64_t { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

// A 32-bit integer hash with good avalanche (Wellons' lowbias32): the counter-based random bits
// of stochastic rounding, the same on every instruction set (and under nvcc).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline std::uint32_t mix32(std::uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// How optimizer state is stored and rounded: in the parameter's dtype (round to nearest even),
// in float32, or in bfloat16 rounded to nearest even or stochastically.
//
// Stochastic rounding of element i adds 16 bits of a hash of (seed, tensor, step, i) to the
// float32 bits before truncating them, so a value rounds up with probability proportional to
// its distance from the lower bfloat16 neighbour: in expectation the update survives even when
// it is below bfloat16's resolution (beta2 * v + (1 - beta2) * g^2 changes v by 0.1%, under
// bfloat16's 2^-8). The hash depends on nothing else, so results do not depend on the thread
// count or on where chunks begin. One hash serves two states: Adam's exp_avg takes the low 16
// bits of stream 0's hash, exp_avg_sq its high 16 bits; max_exp_avg_sq (AMSGrad) the low bits
// of stream 2's; SGD's momentum buffer the low bits of stream 0's.
struct StateRounding {
    DType dtype;              // the states' storage dtype
    bool stochastic;          // bfloat16 storage rounded stochastically
    std::uint32_t stream[3];  // the hash of (seed, tensor, step) for streams 0..2
    std::int64_t first;       // element index of the segment's first element in its tensor
};

// The 32 random bits of the segment's element i (index first + i in its tensor, modulo 2^32)
// for stream `stream`.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline std::uint32_t element_bits(const StateRounding& r, int stream, std::uint32_t i) {
    return mix32((static_cast<std::uint32_t>(r.first) + i) ^ r.stream[stream]);
}

struct AdamSegment {
    void* param;
    const void* grad;
    void* exp_avg;
    void* exp_avg_sq;
    void* max_exp_avg_sq;  // null unless amsgrad
    std::int64_t n;
    DType dtype;
    StateRounding state;
    bool decoupled;
    bool amsgrad;
    double grad_factor;  // sign / grad_scale
    double weight_decay;
    double decay_factor;
    double beta1;
    double beta2;
    double neg_step_size;
    double bias_correction2_sqrt;
    double eps;
};

struct SgdSegment {
    void* param;
    const void* grad;
    void* momentum_buffer;  // null without momentum
    std::int64_t n;
    DType dtype;
    StateRounding state;
    bool nesterov;
    bool first_step;
    double grad_factor;  // sign / grad_scale
    double weight_decay;
    double momentum;
    double dampening;
    double lr;
};

// Which norm of the gradients (torch.linalg.vector_norm's ord): p = 2, 1, inf, -inf or any
// other nonzero p (sum of |x|^p).
enum class NormKind : int { Two = 0, One = 1, Inf = 2, NegInf = 3, P = 4 };

struct NormSegment {
    const void* grad;
    std::int64_t n;
    DType dtype;
    NormKind kind;
    double p;  // for NormKind::P
};

struct KernelTable {
    void (*adam)(const AdamSegment&);
    void (*sgd)(const SgdSegment&);
    // The segment's part of the norm in double: sum of x*x, |x| or |x|^p, or the max / min of
    // |x| (NaN propagates).
    double (*norm)(const NormSegment&);
};

namespace generic {
extern const KernelTable kernels;
}
namespace avx2 {
extern const KernelTable kernels;
}
namespace avx512 {
extern const KernelTable kernels;
}

}  // namespace optim
}  // namespace pylr
