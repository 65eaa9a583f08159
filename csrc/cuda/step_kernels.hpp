// The bodies of pylr's CUDA kernels — the Adam/AdamW and SGD updates, the gradient norm and the
// step-counter increment — as plain functions of (launch, block index, thread index, block size),
// so that the very code a GPU runs also runs on the host: pylr._core's test entry points call
// them over every (block, thread) of every launch and compare with the CPU optimizer bit for bit.
//
// A block's work has two parts. Its prologue (`*_block`, run by one thread on the device, which
// shares the result through shared memory) finds the block's tensor and element range, reads
// what lives on the device — AMP's grad_scale and found_inf, clip_grad_norm_'s coefficient, the
// step counter, a capturable lr — and derives the step's scalars in double exactly as the CPU
// driver does (kernel_api.hpp's adam_step_scalars). Its threads (`*_threads`) then update the
// elements with math.hpp's per-element functions, kILP consecutive elements per iteration with
// one vector load per tensor where every pointer is aligned for it.
//
// No CUDA header or intrinsic is used here beyond storage.hpp's conversions: under nvcc every
// function is __host__ __device__, under g++ a static inline host function.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/multi_tensor.hpp"
#include "optim/kernel_api.hpp"
#include "optim/math.hpp"
#include "optim/storage.hpp"

namespace pylr {
namespace cuda {

using optim::AdamScalars;
using optim::BFloat16;
using optim::ComputeOf;
using optim::Float16;
using optim::NormKind;
using optim::SgdScalars;

// Launch capacities (tensor slots and param groups per launch), sized so that each launch
// struct fits in one kernel argument.
constexpr int kAdamSlots = 320;
constexpr int kAdamGroups = 32;
constexpr int kSgdSlots = 384;
constexpr int kSgdGroups = 32;
constexpr int kNormSlots = 1024;
constexpr int kIncrementSlots = 4000;
// threads per block of the step-counter increment
constexpr int kIncrementThreads = 256;

// ---------------------------------------------------------------------------------------------
// Loads and stores of kILP consecutive elements

template <typename X>
struct alignas(sizeof(X) * kILP) Pack {
    X v[kILP];
};

template <typename X>
PYLR_HD bool pack_aligned(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % (sizeof(X) * kILP) == 0;
}

// n (<= kILP) elements from src widened to the compute type; one vector load when `packed` and
// the group is whole. Lanes past n read as 0 (and are never stored).
template <typename X, typename C>
PYLR_HD void load_elements(const X* src, C (&dst)[kILP], int n, bool packed) {
    if (packed && n == kILP) {
#if defined(__CUDA_ARCH__)
        const Pack<X> raw = *reinterpret_cast<const Pack<X>*>(src);
#else
        Pack<X> raw;
        std::memcpy(&raw, src, sizeof raw);
#endif
        for (int j = 0; j < kILP; ++j) dst[j] = optim::load(raw.v[j]);
        return;
    }
    for (int j = 0; j < kILP; ++j) dst[j] = j < n ? optim::load(src[j]) : C(0);
}

// Stochastic rounding's random bits of elements first .. first + kILP - 1 of a state tensor for
// one stream's hash (kernel_api.hpp's element_bits, as the CPU loops draw them); zeros, unused,
// without stochastic rounding.
template <bool Stochastic>
PYLR_HD void draw_bits(std::uint32_t (&bits)[kILP], std::uint32_t stream, std::int64_t first) {
    for (int j = 0; j < kILP; ++j) bits[j] = Stochastic ? optim::element_bits(stream, first + j) : 0u;
}

// n elements narrowed back to storage, element j rounded with bits[j] >> shift (see
// StateRounding: exp_avg_sq takes the high 16 bits of exp_avg's hash); one vector store when
// `packed` and the group is whole.
template <bool Stochastic, typename X, typename C>
PYLR_HD void store_elements(X* dst, const C (&src)[kILP], int n, bool packed,
                            const std::uint32_t (&bits)[kILP], int shift) {
    if (packed && n == kILP) {
        Pack<X> raw;
        for (int j = 0; j < kILP; ++j) {
            optim::store_state<Stochastic>(raw.v[j], src[j], bits[j] >> shift);
        }
#if defined(__CUDA_ARCH__)
        *reinterpret_cast<Pack<X>*>(dst) = raw;
#else
        std::memcpy(dst, &raw, sizeof raw);
#endif
        return;
    }
    // a fixed trip count, so that src stays in registers
    for (int j = 0; j < kILP; ++j) {
        if (j < n) optim::store_state<Stochastic>(dst[j], src[j], bits[j] >> shift);
    }
}

// clip_grad_norm_'s coefficient times AMP's unscale (1 / grad_scale), in double as the CPU
// driver's inverse_scale: both read on the device.
PYLR_HD double inverse_scale(const float* grad_scale, const double* grad_coef) {
    return (grad_scale != nullptr ? 1.0 / static_cast<double>(*grad_scale) : 1.0) *
           (grad_coef != nullptr ? *grad_coef : 1.0);
}

PYLR_HD bool inf_found(const float* found_inf) {
    return found_inf != nullptr && *found_inf != 0.0f;
}

// ---------------------------------------------------------------------------------------------
// Adam / AdamW

// One param group's hyperparameters in a launch (kAdamGroupColumns of its row).
struct AdamGroup {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    const float* lr_on_device;  // a float32 lr tensor on the device, read at each step, or null
    bool amsgrad;
    bool maximize;
    bool decoupled;
};

struct AdamSlot {
    void* param;
    const void* grad;
    void* exp_avg;
    void* exp_avg_sq;
    void* max_exp_avg_sq;  // null unless amsgrad
    const float* step;     // the tensor's float32 step counter on the device, incremented before
    std::uint32_t tensor_hash;  // stochastic rounding: the hash of (seed, tensor)
    std::int32_t group;         // in groups[]
};

struct AdamLaunch {
    LaunchMap<kAdamSlots> map;
    AdamSlot slots[kAdamSlots];
    AdamGroup groups[kAdamGroups];
    const float* grad_scale;  // AMP's, on the device, or null
    const float* found_inf;
    const double* grad_coef;  // clip_grad_norm_'s coefficient on the device, or null
};
static_assert(sizeof(AdamLaunch) <= kMaxLaunchBytes, "AdamLaunch must fit in a kernel argument");

template <typename C>
struct AdamBlock {
    bool skip;  // AMP found an inf: nothing changes
    int variant;  // (decoupled, weight decay, amsgrad) as adam_threads dispatches them
    std::int32_t slot;
    std::int64_t begin, end;
    AdamScalars<C> s;
    std::uint32_t stream[3];  // stochastic rounding's streams 0..2 (kernel_api.hpp's StateRounding)
};

// The block's prologue: its element range and the step's scalars of its tensor.
template <typename C>
PYLR_HD AdamBlock<C> adam_block(const AdamLaunch& launch, std::int32_t block) {
    AdamBlock<C> w{};
    if (inf_found(launch.found_inf)) {
        w.skip = true;
        return w;
    }
    const BlockSpan span = locate_block(launch.map, block);
    const AdamSlot& t = launch.slots[span.slot];
    const AdamGroup& g = launch.groups[t.group];
    const double lr = g.lr_on_device != nullptr ? static_cast<double>(*g.lr_on_device) : g.lr;
    const double step = static_cast<double>(*t.step);
    const double grad_factor =
        (g.maximize ? -1.0 : 1.0) * inverse_scale(launch.grad_scale, launch.grad_coef);
    w.s = optim::compute_scalars<C>(
        optim::adam_step_scalars(lr, g.beta1, g.beta2, g.eps, g.weight_decay, grad_factor, step));
    const bool has_wd = g.weight_decay != 0.0;
    w.variant = (has_wd && g.decoupled ? 4 : 0) | (has_wd ? 2 : 0) | (g.amsgrad ? 1 : 0);
    w.slot = span.slot;
    w.begin = span.begin;
    w.end = span.end;
    for (std::uint32_t j = 0; j < 3; ++j) {
        w.stream[j] = optim::rounding_stream(t.tensor_hash, static_cast<std::uint32_t>(step), j);
    }
    return w;
}

// S: the parameter's (and grad's) storage type; T: the states'; Stochastic: T is bfloat16
// rounded stochastically. One thread's elements of the block's range.
template <typename S, typename T, bool Stochastic, bool Decoupled, bool HasWd, bool Amsgrad>
PYLR_HD void adam_elements(const AdamSlot& t, const AdamBlock<typename ComputeOf<S>::type>& w,
                           int thread, int block_size) {
    using C = typename ComputeOf<S>::type;
    S* p = static_cast<S*>(t.param);
    const S* g = static_cast<const S*>(t.grad);
    T* m = static_cast<T*>(t.exp_avg);
    T* v = static_cast<T*>(t.exp_avg_sq);
    T* vmax = static_cast<T*>(t.max_exp_avg_sq);
    // every iteration's first element is aligned like the range's first (the stride is kILP's
    // multiple)
    const std::int64_t b = w.begin;
    const bool packed = pack_aligned<S>(p + b) && pack_aligned<S>(g + b) &&
                        pack_aligned<T>(m + b) && pack_aligned<T>(v + b) &&
                        (!Amsgrad || pack_aligned<T>(vmax + b));
    const std::int64_t stride = static_cast<std::int64_t>(block_size) * kILP;
    for (std::int64_t i = w.begin + static_cast<std::int64_t>(thread) * kILP; i < w.end;
         i += stride) {
        const int n = w.end - i < kILP ? static_cast<int>(w.end - i) : kILP;
        C pr[kILP], gr[kILP], mr[kILP], vr[kILP], xr[kILP];
        load_elements(p + i, pr, n, packed);
        load_elements(g + i, gr, n, packed);
        load_elements(m + i, mr, n, packed);
        load_elements(v + i, vr, n, packed);
        if (Amsgrad) {
            load_elements(vmax + i, xr, n, packed);
        } else {
            for (int j = 0; j < kILP; ++j) xr[j] = C(0);
        }
        for (int j = 0; j < kILP; ++j) {
            optim::adam_update<C, Decoupled, HasWd, Amsgrad>(pr[j], gr[j], mr[j], vr[j], xr[j],
                                                             w.s);
        }
        std::uint32_t bits[kILP];
        draw_bits<false>(bits, 0u, i);
        store_elements<false>(p + i, pr, n, packed, bits, 0);
        // one hash for both moments: exp_avg its low 16 bits, exp_avg_sq its high 16
        draw_bits<Stochastic>(bits, w.stream[0], i);
        store_elements<Stochastic>(m + i, mr, n, packed, bits, 0);
        store_elements<Stochastic>(v + i, vr, n, packed, bits, 16);
        if (Amsgrad) {
            draw_bits<Stochastic>(bits, w.stream[2], i);
            store_elements<Stochastic>(vmax + i, xr, n, packed, bits, 0);
        }
    }
}

template <typename S, typename T, bool Stochastic>
PYLR_HD void adam_threads(const AdamLaunch& launch,
                          const AdamBlock<typename ComputeOf<S>::type>& w, int thread,
                          int block_size) {
    if (w.skip) return;
    const AdamSlot& t = launch.slots[w.slot];
    switch (w.variant) {
        case 0: return adam_elements<S, T, Stochastic, false, false, false>(t, w, thread, block_size);
        case 1: return adam_elements<S, T, Stochastic, false, false, true>(t, w, thread, block_size);
        case 2: return adam_elements<S, T, Stochastic, false, true, false>(t, w, thread, block_size);
        case 3: return adam_elements<S, T, Stochastic, false, true, true>(t, w, thread, block_size);
        case 6: return adam_elements<S, T, Stochastic, true, true, false>(t, w, thread, block_size);
        default: return adam_elements<S, T, Stochastic, true, true, true>(t, w, thread, block_size);
    }
}

// The step counters of a step's rows, incremented (step_t += 1) by one launch before the
// updates read them — unless AMP found an inf.
struct StepIncrement {
    float* steps[kIncrementSlots];
    std::int32_t n;
    const float* found_inf;
};
static_assert(sizeof(StepIncrement) <= kMaxLaunchBytes, "StepIncrement must fit");

PYLR_HD void increment_step(const StepIncrement& launch, std::int64_t index) {
    if (index < launch.n && !inf_found(launch.found_inf)) *launch.steps[index] += 1.0f;
}

// ---------------------------------------------------------------------------------------------
// SGD

struct SgdGroup {
    double lr;
    double momentum;
    double dampening;
    double weight_decay;
    const float* lr_on_device;  // a float32 lr tensor on the device, read at each step, or null
    bool nesterov;
    bool maximize;
};

struct SgdSlot {
    void* param;
    const void* grad;
    void* momentum_buffer;  // null without momentum
    std::uint32_t stream;   // stochastic rounding's stream of the buffer (host-computed)
    std::int32_t group;
    bool first;  // the buffer is new: it takes the gradient (torch's clone)
};

struct SgdLaunch {
    LaunchMap<kSgdSlots> map;
    SgdSlot slots[kSgdSlots];
    SgdGroup groups[kSgdGroups];
    const float* grad_scale;
    const float* found_inf;
    const double* grad_coef;
};
static_assert(sizeof(SgdLaunch) <= kMaxLaunchBytes, "SgdLaunch must fit in a kernel argument");

template <typename C>
struct SgdBlock {
    bool skip;
    int variant;  // (weight decay, momentum, nesterov, first step) as the CPU driver's key
    std::int32_t slot;
    std::int64_t begin, end;
    SgdScalars<C> s;
};

template <typename C>
PYLR_HD SgdBlock<C> sgd_block(const SgdLaunch& launch, std::int32_t block) {
    SgdBlock<C> w{};
    if (inf_found(launch.found_inf)) {
        w.skip = true;
        return w;
    }
    const BlockSpan span = locate_block(launch.map, block);
    const SgdSlot& t = launch.slots[span.slot];
    const SgdGroup& g = launch.groups[t.group];
    const double lr = g.lr_on_device != nullptr ? static_cast<double>(*g.lr_on_device) : g.lr;
    const double grad_factor =
        (g.maximize ? -1.0 : 1.0) * inverse_scale(launch.grad_scale, launch.grad_coef);
    w.s = optim::compute_scalars<C>(
        optim::SgdStepScalars{grad_factor, g.weight_decay, g.momentum, g.dampening, lr});
    const bool mom = g.momentum != 0.0;
    w.variant = (g.weight_decay != 0.0 ? 8 : 0) | (mom ? 4 : 0) | (mom && g.nesterov ? 2 : 0) |
                (mom && t.first ? 1 : 0);
    w.slot = span.slot;
    w.begin = span.begin;
    w.end = span.end;
    return w;
}

template <typename S, typename T, bool Stochastic, bool HasWd, bool HasMomentum, bool Nesterov,
          bool First>
PYLR_HD void sgd_elements(const SgdSlot& t, const SgdBlock<typename ComputeOf<S>::type>& w,
                          int thread, int block_size) {
    using C = typename ComputeOf<S>::type;
    S* p = static_cast<S*>(t.param);
    const S* g = static_cast<const S*>(t.grad);
    T* buf = static_cast<T*>(t.momentum_buffer);
    const std::int64_t b = w.begin;
    const bool packed = pack_aligned<S>(p + b) && pack_aligned<S>(g + b) &&
                        (!HasMomentum || pack_aligned<T>(buf + b));
    const std::int64_t stride = static_cast<std::int64_t>(block_size) * kILP;
    for (std::int64_t i = w.begin + static_cast<std::int64_t>(thread) * kILP; i < w.end;
         i += stride) {
        const int n = w.end - i < kILP ? static_cast<int>(w.end - i) : kILP;
        C pr[kILP], gr[kILP], br[kILP];
        load_elements(p + i, pr, n, packed);
        load_elements(g + i, gr, n, packed);
        if (HasMomentum && !First) {
            load_elements(buf + i, br, n, packed);
        } else {
            for (int j = 0; j < kILP; ++j) br[j] = C(0);
        }
        for (int j = 0; j < kILP; ++j) {
            optim::sgd_update<C, HasWd, HasMomentum, Nesterov, First>(pr[j], gr[j], br[j], w.s);
        }
        std::uint32_t bits[kILP];
        draw_bits<false>(bits, 0u, i);
        store_elements<false>(p + i, pr, n, packed, bits, 0);
        if (HasMomentum) {
            draw_bits<Stochastic>(bits, t.stream, i);
            store_elements<Stochastic>(buf + i, br, n, packed, bits, 0);
        }
    }
}

template <typename S, typename T, bool Stochastic>
PYLR_HD void sgd_threads(const SgdLaunch& launch, const SgdBlock<typename ComputeOf<S>::type>& w,
                         int thread, int block_size) {
    if (w.skip) return;
    const SgdSlot& t = launch.slots[w.slot];
    const int b = block_size;
    switch (w.variant) {
        case 0: return sgd_elements<S, T, Stochastic, false, false, false, false>(t, w, thread, b);
        case 4: return sgd_elements<S, T, Stochastic, false, true, false, false>(t, w, thread, b);
        case 5: return sgd_elements<S, T, Stochastic, false, true, false, true>(t, w, thread, b);
        case 6: return sgd_elements<S, T, Stochastic, false, true, true, false>(t, w, thread, b);
        case 7: return sgd_elements<S, T, Stochastic, false, true, true, true>(t, w, thread, b);
        case 8: return sgd_elements<S, T, Stochastic, true, false, false, false>(t, w, thread, b);
        case 12: return sgd_elements<S, T, Stochastic, true, true, false, false>(t, w, thread, b);
        case 13: return sgd_elements<S, T, Stochastic, true, true, false, true>(t, w, thread, b);
        case 14: return sgd_elements<S, T, Stochastic, true, true, true, false>(t, w, thread, b);
        default: return sgd_elements<S, T, Stochastic, true, true, true, true>(t, w, thread, b);
    }
}

// ---------------------------------------------------------------------------------------------
// The gradient norm: each block reduces its chunk to one partial (per thread in order, then a
// tree over the block's threads), the partials land at partials[block]; one more block reduces
// the partials the same way and takes the root. Every order is fixed, so the result does not
// depend on scheduling.

struct NormLaunch {
    LaunchMap<kNormSlots> map;
    const void* grads[kNormSlots];
    double* partials;  // this launch's block partials (on the device)
    double p;          // for NormKind::P
};
static_assert(sizeof(NormLaunch) <= kMaxLaunchBytes, "NormLaunch must fit in a kernel argument");

// One thread's part of its block's chunk.
template <typename S, NormKind Kind>
PYLR_HD double norm_thread(const NormLaunch& launch, const BlockSpan& span, int thread,
                           int block_size) {
    const S* g = static_cast<const S*>(launch.grads[span.slot]);
    double acc = optim::norm_identity<Kind>();
    const std::int64_t stride = static_cast<std::int64_t>(block_size) * kILP;
    for (std::int64_t i = span.begin + static_cast<std::int64_t>(thread) * kILP; i < span.end;
         i += stride) {
        for (int j = 0; j < kILP; ++j) {
            if (i + j >= span.end) break;
            const double x = static_cast<double>(optim::load(g[i + j]));
            acc = optim::norm_combine<Kind>(acc, optim::norm_term<Kind>(x, launch.p));
        }
    }
    return acc;
}

// One level of a block's tree reduction over part[0, 2 * half): thread t < half takes in
// part[t + half]. The levels run half = block_size / 2, ..., 1 (block_size a power of two).
template <NormKind Kind>
PYLR_HD void norm_tree_level(double* part, int thread, int half) {
    if (thread < half) part[thread] = optim::norm_combine<Kind>(part[thread], part[thread + half]);
}

// The final reduction: one block over n partials.
struct NormFinal {
    const double* partials;
    std::int64_t n;
    double* out;  // the norm, in double, on the device
    double p;
};

template <NormKind Kind>
PYLR_HD double norm_final_thread(const NormFinal& f, int thread, int block_size) {
    double acc = optim::norm_identity<Kind>();
    for (std::int64_t i = thread; i < f.n; i += block_size) {
        acc = optim::norm_combine<Kind>(acc, f.partials[i]);
    }
    return acc;
}

// The norm from the reduced terms: the root for the 2- and p-norms; 0 over no elements.
template <NormKind Kind>
PYLR_HD double norm_root(double reduced, const NormFinal& f) {
    if (f.n == 0) return 0.0;
    switch (Kind) {
        case NormKind::Two: return std::sqrt(reduced);
        case NormKind::P: return std::pow(reduced, 1.0 / f.p);
        default: return reduced;
    }
}

}  // namespace cuda
}  // namespace pylr
