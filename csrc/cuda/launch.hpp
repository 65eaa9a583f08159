// From a step's pointer table (the same host-memory table the CPU driver reads, its pointers on
// one CUDA device) to the launches of the CUDA kernels: rows grouped by kernel variant (param
// and state storage types), cut into launches by multi_tensor.hpp's planner, each launch struct
// filled in place and handed to `run` — pylr._cuda launches the kernel, pylr._core's host tests
// run step_kernels.hpp's bodies over every (block, thread) instead. Plain host C++ (g++ or the
// host side of nvcc); allocates nothing.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/multi_tensor.hpp"
#include "cuda/step_kernels.hpp"
#include "optim/cpu.hpp"
#include "optim/kernel_api.hpp"

namespace pylr {
namespace cuda {

using optim::DType;

// What a step reads beside the table: the group rows (Adam- or SgdGroupColumn), per group the
// address of a float32 lr on the device or 0 (null: none), and AMP's and the clip's scalars on
// the device (null: none).
struct StepInputs {
    const std::int64_t* table;
    std::int64_t n_rows;
    const double* groups;
    const std::int64_t* lr_on_device;
    const float* grad_scale;
    const float* found_inf;
    const double* grad_coef;
};

// The kernel variants: (parameter storage, state storage, stochastic rounding), the same choice
// of state storage as the CPU loops' with_state_type.
constexpr int kStateVariants = 11;

inline int state_variant(DType param, DType state, bool stochastic) {
    switch (param) {
        case DType::Float64: return 3;
        case DType::BFloat16: return state == DType::BFloat16 ? (stochastic ? 5 : 4) : 6;
        case DType::Float16:
            if (state == DType::BFloat16) return stochastic ? 10 : 9;
            return state == DType::Float16 ? 7 : 8;
        case DType::Float32:
        default: return state == DType::BFloat16 ? (stochastic ? 2 : 1) : 0;
    }
}

// Calls f(S*, T*, std::bool_constant<Stochastic>) (null pointers as type tags) for variant v.
template <typename F>
void with_state_variant(int v, F&& f) {
    using F32 = float*;
    using F64 = double*;
    using B16 = BFloat16*;
    using H16 = Float16*;
    const std::false_type rne;
    const std::true_type sr;
    switch (v) {
        case 0: return f(F32{}, F32{}, rne);
        case 1: return f(F32{}, B16{}, rne);
        case 2: return f(F32{}, B16{}, sr);
        case 3: return f(F64{}, F64{}, rne);
        case 4: return f(B16{}, B16{}, rne);
        case 5: return f(B16{}, B16{}, sr);
        case 6: return f(B16{}, F32{}, rne);
        case 7: return f(H16{}, H16{}, rne);
        case 8: return f(H16{}, F32{}, rne);
        case 9: return f(H16{}, B16{}, rne);
        default: return f(H16{}, B16{}, sr);
    }
}

// Calls f(S*) for a grad's storage type.
template <typename F>
void with_dtype(DType d, F&& f) {
    switch (d) {
        case DType::Float64: return f(static_cast<double*>(nullptr));
        case DType::BFloat16: return f(static_cast<BFloat16*>(nullptr));
        case DType::Float16: return f(static_cast<Float16*>(nullptr));
        case DType::Float32:
        default: return f(static_cast<float*>(nullptr));
    }
}

// Calls f(std::integral_constant<NormKind, K>) for a norm kind.
template <typename F>
void with_norm_kind(int kind, F&& f) {
    using K = NormKind;
    switch (static_cast<K>(kind)) {
        case K::Two: return f(std::integral_constant<K, K::Two>{});
        case K::One: return f(std::integral_constant<K, K::One>{});
        case K::Inf: return f(std::integral_constant<K, K::Inf>{});
        case K::NegInf: return f(std::integral_constant<K, K::NegInf>{});
        default: return f(std::integral_constant<K, K::P>{});
    }
}

inline const std::int64_t* table_row(const std::int64_t* table, std::int64_t r) {
    return table + r * optim::kTableColumns;
}

template <typename P>
inline P* pointer(const std::int64_t* row, int col) {
    return reinterpret_cast<P*>(static_cast<std::intptr_t>(row[col]));
}

// The planner's view of the rows of one variant (or, with variant < 0, of all rows).
// `stochastic_col` is the group column of the stochastic-rounding flag.
struct VariantRows {
    const StepInputs& in;
    int group_columns;
    int stochastic_col;
    int variant;

    std::int64_t count() const { return in.n_rows; }
    std::int64_t numel(std::int64_t r) const { return table_row(in.table, r)[optim::kColNumel]; }
    std::int64_t group(std::int64_t r) const { return table_row(in.table, r)[optim::kColGroup]; }
    int variant_of(std::int64_t r) const {
        const std::int64_t* row = table_row(in.table, r);
        const double* g = in.groups + row[optim::kColGroup] * group_columns;
        return state_variant(static_cast<DType>(row[optim::kColDType]),
                             static_cast<DType>(row[optim::kColStateDType]),
                             g[stochastic_col] != 0.0);
    }
    bool included(std::int64_t r) const { return variant < 0 || variant_of(r) == variant; }
};

// The variants the rows use, as a bit mask.
inline unsigned variants_used(const VariantRows& rows) {
    unsigned mask = 0;
    for (std::int64_t r = 0; r < rows.count(); ++r) mask |= 1u << rows.variant_of(r);
    return mask;
}

inline const float* group_lr_on_device(const StepInputs& in, std::int64_t g) {
    return in.lr_on_device == nullptr
               ? nullptr
               : reinterpret_cast<const float*>(static_cast<std::intptr_t>(in.lr_on_device[g]));
}

// The step counters of every row (rows without elements too, as the CPU driver does), in
// launches of kIncrementSlots; run(launch, n) for each.
template <typename Run>
void for_each_step_increment(const StepInputs& in, StepIncrement& launch, Run&& run) {
    launch.n = 0;
    launch.found_inf = in.found_inf;
    for (std::int64_t r = 0; r < in.n_rows; ++r) {
        launch.steps[launch.n++] = pointer<float>(table_row(in.table, r), optim::kColStep);
        if (launch.n == kIncrementSlots) {
            run(launch);
            launch.n = 0;
        }
    }
    if (launch.n > 0) run(launch);
}

// Adam's launches: run(variant, launch) for each, variants in order, rows in order within one.
template <typename Run>
void for_each_adam_launch(const StepInputs& in, const PlanLimits& limits, AdamLaunch& launch,
                          Run&& run) {
    using namespace optim;
    struct Sink {
        const StepInputs& in;
        AdamLaunch& out;
        const PlanLimits& limits;
        int variant;
        Run& run;
        void group(std::int32_t slot, std::int64_t g) {
            const double* row = in.groups + g * kAdamGroupColumns;
            out.groups[slot] = AdamGroup{row[kAdamLr],          row[kAdamBeta1],
                                            row[kAdamBeta2],       row[kAdamEps],
                                            row[kAdamWeightDecay], group_lr_on_device(in, g),
                                            row[kAdamAmsgrad] != 0.0, row[kAdamMaximize] != 0.0,
                                            row[kAdamDecoupled] != 0.0};
        }
        void slot(std::int32_t s, std::int64_t r, std::int32_t group_slot, std::int64_t first_chunk,
                  std::int32_t first_block) {
            const std::int64_t* row = table_row(in.table, r);
            map_slot(out.map, s, row[kColNumel], first_chunk, first_block);
            const double seed = in.groups[row[kColGroup] * kAdamGroupColumns + kAdamSeed];
            out.slots[s] = AdamSlot{
                pointer<void>(row, kColParam),
                pointer<const void>(row, kColGrad),
                pointer<void>(row, kColState0),
                pointer<void>(row, kColState1),
                pointer<void>(row, kColState2),
                pointer<const float>(row, kColStep),
                rounding_tensor_hash(static_cast<std::uint32_t>(seed),
                                     static_cast<std::uint32_t>(row[kColSalt])),
                group_slot};
        }
        void launch(std::int32_t n_slots, std::int32_t, std::int32_t n_blocks) {
            map_close(out.map, n_slots, n_blocks, limits.chunk);
            out.grad_scale = in.grad_scale;
            out.found_inf = in.found_inf;
            out.grad_coef = in.grad_coef;
            run(variant, static_cast<const AdamLaunch&>(out));
        }
    };
    const VariantRows all{in, kAdamGroupColumns, kAdamStochastic, -1};
    const unsigned used = variants_used(all);
    for (int v = 0; v < kStateVariants; ++v) {
        if ((used >> v & 1u) == 0) continue;
        const VariantRows rows{in, kAdamGroupColumns, kAdamStochastic, v};
        Sink sink{in, launch, limits, v, run};
        plan_launches(rows, limits, sink);
    }
}

// SGD's launches, as Adam's. `rounding_step` is not a row's: SGD's stochastic rounding hashes
// the group's counter (kSgdRoundingStep), as the CPU driver does.
template <typename Run>
void for_each_sgd_launch(const StepInputs& in, const PlanLimits& limits, SgdLaunch& launch,
                         Run&& run) {
    using namespace optim;
    struct Sink {
        const StepInputs& in;
        SgdLaunch& out;
        const PlanLimits& limits;
        int variant;
        Run& run;
        void group(std::int32_t slot, std::int64_t g) {
            const double* row = in.groups + g * kSgdGroupColumns;
            out.groups[slot] = SgdGroup{row[kSgdLr],          row[kSgdMomentum],
                                           row[kSgdDampening],   row[kSgdWeightDecay],
                                           group_lr_on_device(in, g), row[kSgdNesterov] != 0.0,
                                           row[kSgdMaximize] != 0.0};
        }
        void slot(std::int32_t s, std::int64_t r, std::int32_t group_slot, std::int64_t first_chunk,
                  std::int32_t first_block) {
            const std::int64_t* row = table_row(in.table, r);
            map_slot(out.map, s, row[kColNumel], first_chunk, first_block);
            const double* g = in.groups + row[kColGroup] * kSgdGroupColumns;
            const std::uint32_t tensor = rounding_tensor_hash(
                static_cast<std::uint32_t>(g[kSgdSeed]), static_cast<std::uint32_t>(row[kColSalt]));
            out.slots[s] = SgdSlot{
                pointer<void>(row, kColParam),
                pointer<const void>(row, kColGrad),
                pointer<void>(row, kColState0),
                rounding_stream(tensor, static_cast<std::uint32_t>(g[kSgdRoundingStep]), 0),
                group_slot,
                row[kColFirst] != 0};
        }
        void launch(std::int32_t n_slots, std::int32_t, std::int32_t n_blocks) {
            map_close(out.map, n_slots, n_blocks, limits.chunk);
            out.grad_scale = in.grad_scale;
            out.found_inf = in.found_inf;
            out.grad_coef = in.grad_coef;
            run(variant, static_cast<const SgdLaunch&>(out));
        }
    };
    const VariantRows all{in, kSgdGroupColumns, kSgdStochastic, -1};
    const unsigned used = variants_used(all);
    for (int v = 0; v < kStateVariants; ++v) {
        if ((used >> v & 1u) == 0) continue;
        const VariantRows rows{in, kSgdGroupColumns, kSgdStochastic, v};
        Sink sink{in, launch, limits, v, run};
        plan_launches(rows, limits, sink);
    }
}

// The planner's view of the rows of one grad dtype, for the norm (no groups: one "group").
struct DTypeRows {
    const std::int64_t* table;
    std::int64_t n_rows;
    int dtype;  // < 0: every row

    std::int64_t count() const { return n_rows; }
    std::int64_t numel(std::int64_t r) const { return table_row(table, r)[optim::kColNumel]; }
    std::int64_t group(std::int64_t) const { return 0; }
    bool included(std::int64_t r) const {
        return dtype < 0 || table_row(table, r)[optim::kColDType] == dtype;
    }
};

// How many blocks (so partials) the norm's launches have in all.
inline std::int64_t norm_blocks(const std::int64_t* table, std::int64_t n_rows,
                                const PlanLimits& limits) {
    std::int64_t blocks = 0;
    for (std::int64_t r = 0; r < n_rows; ++r) {
        blocks += (table_row(table, r)[optim::kColNumel] + limits.chunk - 1) / limits.chunk;
    }
    return blocks;
}

// The norm's launches over the grads: run(dtype, launch, first_partial) for each; the launch's
// block partials go to partials[first_partial ...].
template <typename Run>
void for_each_norm_launch(const std::int64_t* table, std::int64_t n_rows, double p,
                          double* partials, const PlanLimits& limits, NormLaunch& launch,
                          Run&& run) {
    struct Sink {
        const std::int64_t* table;
        NormLaunch& out;
        const PlanLimits& limits;
        double* partials;
        std::int64_t done;  // partials written by the launches before
        DType dtype;
        Run& run;
        void group(std::int32_t, std::int64_t) {}
        void slot(std::int32_t s, std::int64_t r, std::int32_t, std::int64_t first_chunk,
                  std::int32_t first_block) {
            const std::int64_t* row = table_row(table, r);
            map_slot(out.map, s, row[optim::kColNumel], first_chunk, first_block);
            out.grads[s] = pointer<const void>(row, optim::kColGrad);
        }
        void launch(std::int32_t n_slots, std::int32_t, std::int32_t n_blocks) {
            map_close(out.map, n_slots, n_blocks, limits.chunk);
            out.partials = partials + done;
            run(dtype, static_cast<const NormLaunch&>(out));
            done += n_blocks;
        }
    };
    launch.p = p;
    std::int64_t done = 0;
    for (const DType d : {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16}) {
        const DTypeRows rows{table, n_rows, static_cast<int>(d)};
        Sink sink{table, launch, limits, partials, done, d, run};
        plan_launches(rows, limits, sink);
        done = sink.done;
    }
}

// The production limits of each launch struct.
constexpr PlanLimits kAdamLimits{kAdamSlots, kAdamGroups, 1 << 30, kChunkElements};
constexpr PlanLimits kSgdLimits{kSgdSlots, kSgdGroups, 1 << 30, kChunkElements};
constexpr PlanLimits kNormLimits{kNormSlots, 1, 1 << 30, kChunkElements};

// Limits narrowed by a caller (host tests), never past a struct's capacity.
inline PlanLimits narrowed(const PlanLimits& cap, const PlanLimits& want) {
    PlanLimits l = cap;
    if (want.max_slots > 0 && want.max_slots < l.max_slots) l.max_slots = want.max_slots;
    if (want.max_groups > 0 && want.max_groups < l.max_groups) l.max_groups = want.max_groups;
    if (want.max_blocks > 0 && want.max_blocks < l.max_blocks) l.max_blocks = want.max_blocks;
    if (want.chunk > 0) l.chunk = want.chunk;
    return l;
}

}  // namespace cuda
}  // namespace pylr
