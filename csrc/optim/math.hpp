// The per-element update math of pylr's optimizers: SGD (momentum, dampening, Nesterov, weight
// decay, maximize) and Adam/AdamW (coupled or decoupled weight decay, AMSGrad, maximize).
//
// This is the only place the math exists. The CPU kernels (kernels.hpp, compiled once per
// instruction set) and any CUDA kernel include it; under nvcc every function is
// __host__ __device__. C is the compute type: float for float32/bfloat16/float16 storage,
// double for float64. Each line names the torch.optim (foreach=False) operation it mirrors, in
// the same order, so results agree with torch's to rounding.
//
// Functions are `static` on the host on purpose: each instruction-set translation unit gets its
// own copy compiled with its own target flags, and the linker never merges an AVX-512 copy into
// code that runs on a CPU without it.
#pragma once

#if defined(__CUDACC__)
#define PYLR_HD __host__ __device__ __forceinline__
#else
#define PYLR_HD static inline
#endif

#include <cmath>

namespace pylr {
namespace optim {

// a * b + c as torch's vectorised `add(x, alpha=...)` and `lerp` compute it: one fused
// multiply-add where the CPU has one (torch's Vectorized::fmadd), else two rounded operations.
template <typename C>
PYLR_HD C madd(C a, C b, C c) {
#if defined(__CUDACC__) || defined(__FMA__) || defined(__aarch64__)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}

// Scalars constant over one tensor for one Adam step, cast to the compute type. The host
// computes them in double (bias corrections, step size) as torch does in Python.
template <typename C>
struct AdamScalars {
    C grad_factor;            // sign / grad_scale: -1 when maximizing, AMP's unscale folded in
    C weight_decay;           // coupled (Adam) weight decay
    C decay_factor;           // decoupled (AdamW): 1 - lr * weight_decay
    C lerp_weight;            // 1 - beta1
    C beta2;
    C one_minus_beta2;
    C neg_step_size;          // -lr / (1 - beta1^t)
    C bias_correction2_sqrt;  // (1 - beta2^t) ** 0.5
    C eps;
};

// One element of Adam / AdamW.
template <typename C, bool Decoupled, bool HasWeightDecay, bool Amsgrad>
PYLR_HD void adam_update(C& param, C grad, C& exp_avg, C& exp_avg_sq, C& max_exp_avg_sq,
                         const AdamScalars<C>& s) {
    // grad = -grad if maximize; AMP: grad * (1 / scale), as GradScaler.unscale_ does
    grad = grad * s.grad_factor;
    if (HasWeightDecay) {
        if (Decoupled) {
            // param.mul_(1 - lr * weight_decay)
            param = param * s.decay_factor;
        } else {
            // grad = grad.add(param, alpha=weight_decay)
            grad = madd(param, s.weight_decay, grad);
        }
    }
    // exp_avg.lerp_(grad, 1 - beta1), with torch's two formulas around weight 0.5
    const C diff = grad - exp_avg;
    exp_avg = s.lerp_weight < C(0.5) ? madd(s.lerp_weight, diff, exp_avg)
                                     : madd(s.lerp_weight - C(1), diff, grad);
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_sq = exp_avg_sq * s.beta2;
    exp_avg_sq = exp_avg_sq + s.one_minus_beta2 * grad * grad;
    C second = exp_avg_sq;
    if (Amsgrad) {
        // torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq): a NaN in either wins
        max_exp_avg_sq = (max_exp_avg_sq < exp_avg_sq || exp_avg_sq != exp_avg_sq)
                             ? exp_avg_sq
                             : max_exp_avg_sq;
        second = max_exp_avg_sq;
    }
    // denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
    const C denom = std::sqrt(second) / s.bias_correction2_sqrt + s.eps;
    // param.addcdiv_(exp_avg, denom, value=-step_size)
    param = param + s.neg_step_size * exp_avg / denom;
}

// Scalars constant over one tensor for one SGD step.
template <typename C>
struct SgdScalars {
    C grad_factor;          // sign / grad_scale: -1 when maximizing, AMP's unscale folded in
    C weight_decay;
    C momentum;
    C one_minus_dampening;  // 1 - dampening
    C neg_lr;               // -lr
};

// One element of SGD. FirstStep: the momentum buffer is new and takes the gradient, as torch's
// `buf = torch.clone(grad)` on the first step.
template <typename C, bool HasWeightDecay, bool HasMomentum, bool Nesterov, bool FirstStep>
PYLR_HD void sgd_update(C& param, C grad, C& momentum_buffer, const SgdScalars<C>& s) {
    // grad = -grad if maximize; AMP: grad * (1 / scale), as GradScaler.unscale_ does
    grad = grad * s.grad_factor;
    if (HasWeightDecay) {
        // grad = grad.add(param, alpha=weight_decay)
        grad = madd(param, s.weight_decay, grad);
    }
    if (HasMomentum) {
        if (FirstStep) {
            // buf = torch.clone(grad).detach()
            momentum_buffer = grad;
        } else {
            // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            momentum_buffer = madd(grad, s.one_minus_dampening, momentum_buffer * s.momentum);
        }
        // grad = grad.add(buf, alpha=momentum) if nesterov else buf
        grad = Nesterov ? madd(momentum_buffer, s.momentum, grad) : momentum_buffer;
    }
    // param.add_(grad, alpha=-lr)
    param = madd(grad, s.neg_lr, param);
}

}  // namespace optim
}  // namespace pylr
