// The multi-tensor driver: one call updates every tensor of every param group. The total element
// count is split into cache-line-aligned chunks balanced across the thread pool, regardless of
// tensor boundaries; each chunk runs the widest SIMD kernel the CPU supports.
#pragma once

#include <cstdint>
#include <functional>

#include "schedule.hpp"

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

// What a step needs beside the table.
struct StepArgs {
    double* groups = nullptr;  // each group's row of scalars (Adam- or SgdGroupColumn)
    std::int64_t n_groups = 0;
    const float* grad_scale = nullptr;  // AMP's 0-d float32 tensors, or null
    const float* found_inf = nullptr;
    double grad_coef = 1.0;  // every grad is read times this (clip_grad_norm_'s coefficient)
    // Fused schedules: per group a node (or null) evaluated at schedule_steps[g]; its value is
    // the group's lr, its momentum (where it has one) SGD's momentum or Adam's beta1. They are
    // written into the group's row before the update.
    const ScheduleNode* const* schedules = nullptr;
    const double* schedule_steps = nullptr;
    // Where given, run once on the calling thread for a step that is taken, while the pool's
    // other threads update (autograd's version bump over the params: bookkeeping that no longer
    // waits for the update). Must not throw, nor touch the step's tensors' data.
    const std::function<void()>* while_updating = nullptr;
};

// A step's outcome: taken, skipped for AMP's found_inf (nothing modified), or refused because
// group g's fused schedule gave an invalid value (kBadSchedule - g; nothing modified).
constexpr int kStepTaken = 1;
constexpr int kStepSkipped = 0;
constexpr int kBadSchedule = -1;

// The fused schedules of `args` evaluated (each group's at its schedule step) and written into
// the group rows: the lr at lr_col, the momentum (where the schedule has one) at momentum_col —
// below 1 when momentum_below_one (Adam's beta1). Every value is checked before any is written.
// Returns kStepTaken, or kBadSchedule - g for the first group whose value is invalid. The steps
// below call it first; the CUDA step (pylr._cuda) has it called before its launches.
int apply_schedules(const StepArgs& args, int columns, int lr_col, int momentum_col,
                    bool momentum_below_one) noexcept;

// One Adam/AdamW step over all rows of `table`. Increments every step counter, then updates;
// each grad is read times grad_coef and divided by *grad_scale.
int adam_step(std::int64_t* table, std::int64_t n_rows, const StepArgs& args) noexcept;

// One SGD step over all rows of `table`, the same contract. Clears kColFirst after the step
// in the rows whose group momentum was not 0 (their buffers were filled).
int sgd_step(std::int64_t* table, std::int64_t n_rows, const StepArgs& args) noexcept;

// After an SGD step (on the CPU or a CUDA device): kColFirst cleared in the rows whose group
// momentum was not 0 on this step (a fused schedule's may be) — their buffers were filled.
inline void clear_filled_first_steps(std::int64_t* table, std::int64_t n_rows,
                                     const double* groups) noexcept {
    for (std::int64_t i = 0; i < n_rows; ++i) {
        std::int64_t* r = table + i * kTableColumns;
        if (groups[r[kColGroup] * kSgdGroupColumns + kSgdMomentum] != 0.0) r[kColFirst] = 0;
    }
}

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
