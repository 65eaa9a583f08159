// What the multi-tensor driver (cpu.cpp) hands a CPU kernel: one contiguous segment of one tensor
// with its scalars in double, and the table of kernels each instruction set provides. The scalar
// formulas, the stochastic-rounding hashes and the norm's terms here are shared with the CUDA
// kernels (csrc/cuda/): __host__ __device__ under nvcc.
#pragma once

#include <cmath>
#include <cstdint>

#include "optim/math.hpp"

namespace pylr {
namespace optim {

// dtype codes (pylr/_plan.py reads them through the module's DTYPE_* attributes)
enum class DType : std::int64_t { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

// A 32-bit integer hash with good avalanche (Wellons' lowbias32): the counter-based random bits
// of stochastic rounding, the same on every instruction set (and under nvcc).
PYLR_HD std::uint32_t mix32(std::uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// Stochastic rounding's random bits (see StateRounding): the hash of (seed, tensor) ...
PYLR_HD std::uint32_t rounding_tensor_hash(std::uint32_t seed, std::uint32_t salt) {
    return mix32(seed ^ mix32(salt));
}

// ... and from it, at a step, the stream of state tensor j (exp_avg 0, exp_avg_sq 1,
// max_exp_avg_sq 2; SGD's momentum_buffer 0). Element i draws element_bits(stream, i); which of
// its bits a state uses, StateRounding says.
PYLR_HD std::uint32_t rounding_stream(std::uint32_t tensor, std::uint32_t step, std::uint32_t j) {
    return mix32(tensor ^ mix32(step + 0x9e3779b9u * (j + 1)));
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

// The 32 random bits of element `element` of a state tensor (its index in the tensor, modulo
// 2^32) for a stream's hash: the CPU loops and the CUDA kernels draw the same bits.
PYLR_HD std::uint32_t element_bits(std::uint32_t stream, std::int64_t element) {
    return mix32(static_cast<std::uint32_t>(element) ^ stream);
}

// The same for the segment's element i (index first + i in its tensor) for stream `stream`.
PYLR_HD std::uint32_t element_bits(const StateRounding& r, int stream, std::uint32_t i) {
    return element_bits(r.stream[stream], r.first + static_cast<std::int64_t>(i));
}

// One Adam tensor's scalars for one step, in double as torch computes them in Python.
struct AdamStepScalars {
    double grad_factor;  // sign / grad_scale (times clip_grad_norm_'s coefficient)
    double weight_decay;
    double decay_factor;  // 1 - lr * weight_decay
    double beta1;
    double beta2;
    double neg_step_size;  // -lr / (1 - beta1^step)
    double bias_correction2_sqrt;
    double eps;
};

// The scalars of a tensor whose step counter reads `step` (after its increment).
PYLR_HD AdamStepScalars adam_step_scalars(double lr, double beta1, double beta2, double eps,
                                          double weight_decay, double grad_factor, double step) {
    // bias_correction1 = 1 - beta1 ** step; step_size = lr / bias_correction1
    const double bias_correction1 = 1.0 - std::pow(beta1, step);
    // bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    const double bias_correction2_sqrt = std::pow(1.0 - std::pow(beta2, step), 0.5);
    return {grad_factor, weight_decay,           1.0 - lr * weight_decay,
            beta1,       beta2,                  -(lr / bias_correction1),
            bias_correction2_sqrt, eps};
}

// The same scalars in the compute type, each rounded once from double.
template <typename C>
PYLR_HD AdamScalars<C> compute_scalars(const AdamStepScalars& d) {
    return AdamScalars<C>{static_cast<C>(d.grad_factor),  static_cast<C>(d.weight_decay),
                          static_cast<C>(d.decay_factor), static_cast<C>(1.0 - d.beta1),
                          static_cast<C>(d.beta2),        static_cast<C>(1.0 - d.beta2),
                          static_cast<C>(d.neg_step_size),
                          static_cast<C>(d.bias_correction2_sqrt), static_cast<C>(d.eps)};
}

struct SgdStepScalars {
    double grad_factor;  // sign / grad_scale (times clip_grad_norm_'s coefficient)
    double weight_decay;
    double momentum;
    double dampening;
    double lr;
};

template <typename C>
PYLR_HD SgdScalars<C> compute_scalars(const SgdStepScalars& d) {
    return SgdScalars<C>{static_cast<C>(d.grad_factor), static_cast<C>(d.weight_decay),
                         static_cast<C>(d.momentum), static_cast<C>(1.0 - d.dampening),
                         static_cast<C>(-d.lr)};
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
    AdamStepScalars scalars;
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
    SgdStepScalars scalars;
};

// Which norm of the gradients (torch.linalg.vector_norm's ord): p = 2, 1, inf, -inf or any
// other nonzero p (sum of |x|^p).
enum class NormKind : int { Two = 0, One = 1, Inf = 2, NegInf = 3, P = 4 };

// One element's term of the norm (x widened to double) and how terms accumulate: max / min of
// |x| that keep a NaN (for the Inf / NegInf kinds), or sums.
template <NormKind Kind>
PYLR_HD double norm_term(double x, double p) {
    const double a = std::fabs(x);
    switch (Kind) {
        case NormKind::Two: return x * x;
        case NormKind::P: return std::pow(a, p);
        default: return a;
    }
}

template <NormKind Kind>
PYLR_HD double norm_combine(double acc, double t) {
    if (Kind == NormKind::Inf) return (t > acc || t != t) && acc == acc ? t : acc;
    if (Kind == NormKind::NegInf) return (t < acc || t != t) && acc == acc ? t : acc;
    return acc + t;
}

// The accumulator of no elements.
template <NormKind Kind>
PYLR_HD double norm_identity() {
    return Kind == NormKind::NegInf ? HUGE_VAL : 0.0;
}

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
