// The host emulation of pylr._cuda's kernels (see emulate.hpp): each kernel's body over every
// (block, thread), blocks in order and threads in order within a block — a schedule the device
// may also run, and the only one that matters: no two threads of a step touch one element, and
// the norm's reductions have a fixed order.
#include "cuda/emulate.hpp"

#include <type_traits>
#include <vector>

#include "cuda/launch.hpp"
#include "cuda/step_kernels.hpp"

namespace pylr {
namespace cuda {
namespace {

void emulate_increments(const StepInputs& in) {
    static thread_local StepIncrement increment;
    for_each_step_increment(in, increment, [](const StepIncrement& l) {
        const std::int64_t blocks = (l.n + kIncrementThreads - 1) / kIncrementThreads;
        for (std::int64_t b = 0; b < blocks; ++b) {
            for (int t = 0; t < kIncrementThreads; ++t) increment_step(l, b * kIncrementThreads + t);
        }
    });
}

// One norm launch or the final reduction: part[t] filled by thread_part(t), then the tree.
template <NormKind Kind, typename Part>
double reduce_block(std::vector<double>& part, int block_size, Part thread_part) {
    for (int t = 0; t < block_size; ++t) part[t] = thread_part(t);
    for (int half = block_size / 2; half > 0; half /= 2) {
        for (int t = 0; t < block_size; ++t) norm_tree_level<Kind>(part.data(), t, half);
    }
    return part[0];
}

template <NormKind Kind>
double emulate_norm(const std::int64_t* table, std::int64_t n_rows, double p,
                    const PlanLimits& limits, int block_size) {
    std::vector<double> partials(static_cast<std::size_t>(norm_blocks(table, n_rows, limits)));
    std::vector<double> part(static_cast<std::size_t>(block_size));
    static thread_local NormLaunch launch;
    for_each_norm_launch(table, n_rows, p, partials.data(), limits, launch,
                         [&](DType dtype, const NormLaunch& l) {
                             with_dtype(dtype, [&](auto* s) {
                                 using S = std::remove_pointer_t<decltype(s)>;
                                 for (std::int32_t b = 0; b < launch_blocks(l.map); ++b) {
                                     const BlockSpan span = locate_block(l.map, b);
                                     l.partials[b] = reduce_block<Kind>(part, block_size, [&](int t) {
                                         return norm_thread<S, Kind>(l, span, t, block_size);
                                     });
                                 }
                             });
                         });
    double out = 0.0;
    const NormFinal f{partials.data(), static_cast<std::int64_t>(partials.size()), &out, p};
    const double reduced = reduce_block<Kind>(
        part, block_size, [&](int t) { return norm_final_thread<Kind>(f, t, block_size); });
    return norm_root<Kind>(reduced, f);
}

}  // namespace

bool emulation_uses_fma() noexcept {
#if defined(__FMA__) || defined(__aarch64__)
    return true;
#else
    return false;
#endif
}

void emulate_adam_step(const StepInputs& in, const PlanLimits& limits, int block_size) noexcept {
    emulate_increments(in);
    static thread_local AdamLaunch launch;
    for_each_adam_launch(in, narrowed(kAdamLimits, limits), launch,
                         [&](int variant, const AdamLaunch& l) {
                             with_state_variant(variant, [&](auto* s, auto* t, auto stochastic) {
                                 using S = std::remove_pointer_t<decltype(s)>;
                                 using T = std::remove_pointer_t<decltype(t)>;
                                 using C = typename ComputeOf<S>::type;
                                 constexpr bool SR = decltype(stochastic)::value;
                                 for (std::int32_t b = 0; b < launch_blocks(l.map); ++b) {
                                     const AdamBlock<C> w = adam_block<C>(l, b);
                                     for (int th = 0; th < block_size; ++th) {
                                         adam_threads<S, T, SR>(l, w, th, block_size);
                                     }
                                 }
                             });
                         });
}

void emulate_sgd_step(const StepInputs& in, const PlanLimits& limits, int block_size) noexcept {
    static thread_local SgdLaunch launch;
    for_each_sgd_launch(in, narrowed(kSgdLimits, limits), launch,
                        [&](int variant, const SgdLaunch& l) {
                            with_state_variant(variant, [&](auto* s, auto* t, auto stochastic) {
                                using S = std::remove_pointer_t<decltype(s)>;
                                using T = std::remove_pointer_t<decltype(t)>;
                                using C = typename ComputeOf<S>::type;
                                constexpr bool SR = decltype(stochastic)::value;
                                for (std::int32_t b = 0; b < launch_blocks(l.map); ++b) {
                                    const SgdBlock<C> w = sgd_block<C>(l, b);
                                    for (int th = 0; th < block_size; ++th) {
                                        sgd_threads<S, T, SR>(l, w, th, block_size);
                                    }
                                }
                            });
                        });
}

double emulate_grad_norm(const std::int64_t* table, std::int64_t n_rows, int kind, double p,
                         const PlanLimits& limits, int block_size) {
    const PlanLimits l = narrowed(kNormLimits, limits);
    double result = 0.0;
    with_norm_kind(kind, [&](auto k) {
        result = emulate_norm<decltype(k)::value>(table, n_rows, p, l, block_size);
    });
    return result;
}

}  // namespace cuda
}  // namespace pylr
