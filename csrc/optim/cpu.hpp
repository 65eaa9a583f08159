// The multi-tensor driver: one call updates every tensor of every param group. The total element
// count is split into cache-line-aligned chunks balanced across the thread pool, regardless of
// tensor boundaries; each chunk runs the widest SIMD kernel the CPU supports.
#pragma once

#include <cstdint>

namespace pylr {
namespace optim {

// Columns of the per-tensor table (int64, row-major), shared with pylr/functional.py.
enum TableColumn : int {
    kColParam = 0,   // data pointer of the parameter
    kColGrad,        // data pointer of its gradient
    kColState0,      // exp_avg (Adam) or momentum_buffer (SGD; 0 without momentum)
    kColState1,      // exp_avg_sq (Adam)
    kColState2,      // max_exp_avg_sq (Adam with amsgrad; else 0)
    kColStep,        // pointer to the float32 step counter (Adam)
    kColNumel,       // element count
    kColDType,       // DType code
    kColGroup,       // param group index
    kColOffset,      // elements of all earlier rows (a prefix sum)
    kColFirst,       // SGD: 1 while the momentum buffer is new (cleared after the step)
    kColStateDType,  // DType code of the states (exp_avg, ..., momentum_buffer)
    kColSalt,        // a number of the tensor's own, for stochastic rounding's random bits
    kTableColumns
};

// Columns of the per-group scalar rows (double).
// kAdamStochastic / kSgdStochastic: bfloat16 states are rounded stochastically, with the
// group's seed (kAdamSeed / kSgdSeed), each tensor's salt, and the step: Adam's per-tensor step
// count, SGD's group counter kSgdRoundingStep.
enum AdamGroupColumn : int {
    kAdamLr = 0, kAdamBeta1, kAdamBeta2, kAdamEps, kAdamWeightDecay, kAdamAmsgrad,
    kAdamMaximize, kAdamDecoupled, kAdamStochastic, kAdamSeed, kAdamGroupColumns
};
enum SgdGroupColumn : int {
    kSgdLr = 0, kSgdMomentum, kSgdDampening, kSgdWeightDecay, kSgdNesterov, kSgdMaximize,
    kSgdStochastic, kSgdSeed, kSgdRoundingStep, kSgdGroupColumns
};

// One Adam/AdamW step over all rows of `table`. Increments every step counter, then updates.
// grad_scale / found_inf: AMP's 0-d float32 tensors or null. When *found_inf != 0 nothing is
// modified (step counters included) and false is returned. Every grad is read times grad_coef
// (a gradient-clipping coefficient; 1 for none) and divided by *grad_scale.
bool adam_step(std::int64_t* table, std::int64_t n_rows, const double* groups,
               const float* grad_scale, const float* found_inf, double grad_coef) noexcept;

// One SGD step over all rows of `table`; same AMP and grad_coef contract. Clears kColFirst
// after the step.
bool sgd_step(std::int64_t* table, std::int64_t n_rows, const double* groups,
              const float* grad_scale, const float* found_inf, double grad_coef) noexcept;

// The gradient norm over every row (torch.linalg.vector_norm of all grads concatenated, as
// torch.nn.utils.clip_grad_norm_ computes it): kind is a NormKind (p for NormKind::P). Fixed
// chunks are reduced in double on the pool and combined in order, so the result is the same for
// any thread count. partials must hold norm_chunks(table, n_rows) doubles.
double grad_norm(const std::int64_t* table, std::int64_t n_rows, int kind, double p,
                 double* partials) noexcept;
std::int64_t norm_chunks(const std::int64_t* table, std::int64_t n_rows) noexcept;

// A streaming kernel over the same float32 tensors and threads as a step, moving the same bytes
// with no arithmetic to speak of: the memory-bandwidth roofline that benchmarks compare a step
// with. n_states is 2 for Adam (exp_avg, exp_avg_sq) and 1 for SGD with momentum.
void roofline_step(std::int64_t* table, std::int64_t n_rows, int n_states) noexcept;

// The instruction set the kernels use on this CPU: "avx512", "avx2" or "generic".
const char* kernel_isa() noexcept;

}  // namespace optim
}  // namespace pylr
