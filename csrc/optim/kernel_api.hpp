// What the multi-tensor driver (cpu.cpp) hands a CPU kernel: one contiguous segment of one tensor
// with its scalars in double, and the table of kernels each instruction set provides.
#pragma once

#include <cstdint>

namespace pylr {
namespace optim {

// dtype codes shared with pylr/functional.py
enum class DType : std::int64_t { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

struct AdamSegment {
    void* param;
    const void* grad;
    void* exp_avg;
    void* exp_avg_sq;
    void* max_exp_avg_sq;  // null unless amsgrad
    std::int64_t n;
    DType dtype;
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
