// The CPU loops over one contiguous segment of one tensor, for every storage dtype and flag
// combination. Included by kernels_<isa>.cpp, each compiled with its own target flags inside its
// own namespace (PYLR_KERNEL_NS), so the compiler vectorises the same loops for AVX-512, AVX2 or
// a portable baseline; cpu.cpp picks one at run time from CPU detection.
//
// Storage types are widened to the compute type (float, or double for float64), updated by the
// math in math.hpp, and narrowed back with round-to-nearest-even (storage.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "optim/kernel_api.hpp"
#include "optim/math.hpp"
#include "optim/storage.hpp"

#ifndef PYLR_KERNEL_NS
#error "define PYLR_KERNEL_NS before including optim/kernels.hpp"
#endif

namespace pylr {
namespace optim {
namespace PYLR_KERNEL_NS {
namespace {

// Element i's random bits for state stream `stream` of StateRounding (0 without stochastic
// rounding, where nothing uses them).
template <bool Stochastic>
inline std::uint32_t rounding_bits(const StateRounding& rounding, int stream, std::int64_t i) {
    if constexpr (Stochastic) {
        return element_bits(rounding, stream, static_cast<std::uint32_t>(i));
    } else {
        return 0;
    }
}

// Half-precision parameters are stepped in blocks of kBlock elements: the block is widened to
// float with the conversion instructions (F16C, AVX-512) where the instruction set has them,
// updated by a loop the compiler vectorises, and narrowed back to nearest even. (GCC does not
// vectorise _Float16 conversions inside a loop: element by element, a float16 step ran ~16x
// slower than a float32 one.) The instructions are the IEEE conversions load() and store() make
// one element at a time, so the results are the same bits.
constexpr std::int64_t kBlock = 16;

template <typename T>
constexpr bool kIsHalf = std::is_same_v<T, Float16>;

template <typename T>
inline void widen_block(const T* src, float* dst) {
#if defined(__AVX512F__)
    if constexpr (kIsHalf<T>) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        _mm512_storeu_ps(dst, _mm512_cvtph_ps(h));
        return;
    }
#elif defined(__F16C__)
    if constexpr (kIsHalf<T>) {
        for (int k = 0; k < 2; ++k) {
            const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 8 * k));
            _mm256_storeu_ps(dst + 8 * k, _mm256_cvtph_ps(h));
        }
        return;
    }
#endif
    for (std::int64_t j = 0; j < kBlock; ++j) dst[j] = load(src[j]);
}

// Back to storage: float16 to nearest even; a state rounded stochastically with bits[j].
template <bool Stochastic, typename T>
inline void narrow_block(const float* src, T* dst, [[maybe_unused]] const std::uint32_t* bits) {
    if constexpr (!Stochastic && kIsHalf<T>) {
#if defined(__AVX512F__)
        const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
        return;
#elif defined(__F16C__)
        for (int k = 0; k < 2; ++k) {
            const __m256 f = _mm256_loadu_ps(src + 8 * k);
            const __m128i h = _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 8 * k), h);
        }
        return;
#endif
    }
    for (std::int64_t j = 0; j < kBlock; ++j) {
        if constexpr (Stochastic) {
            store_state<true>(dst[j], src[j], bits[j]);
        } else {
            store(dst[j], src[j]);
        }
    }
}

// S: the parameter's (and grad's) storage type; T: the states'; Stochastic: T is bfloat16 rounded
// stochastically. Arithmetic in S's compute type.
template <typename S, typename T, bool Stochastic, bool Decoupled, bool HasWd, bool Amsgrad>
void adam_loop(const AdamSegment& seg) {
    using C = typename ComputeOf<S>::type;
    const AdamScalars<C> s = compute_scalars<C>(seg.scalars);
    S* __restrict p = static_cast<S*>(seg.param);
    const S* __restrict g = static_cast<const S*>(seg.grad);
    T* __restrict m = static_cast<T*>(seg.exp_avg);
    T* __restrict v = static_cast<T*>(seg.exp_avg_sq);
    T* __restrict vmax = static_cast<T*>(seg.max_exp_avg_sq);
    const StateRounding& r = seg.state;
    std::int64_t i = 0;
    if constexpr (kIsHalf<S>) {
        for (; i + kBlock <= seg.n; i += kBlock) {
            float pb[kBlock], gb[kBlock], mb[kBlock], vb[kBlock], xb[kBlock] = {};
            std::uint32_t bits[kBlock], vbits[kBlock], xbits[kBlock];
            widen_block(p + i, pb);
            widen_block(g + i, gb);
            widen_block(m + i, mb);
            widen_block(v + i, vb);
            if (Amsgrad) widen_block(vmax + i, xb);
            for (std::int64_t j = 0; j < kBlock; ++j) {
                adam_update<C, Decoupled, HasWd, Amsgrad>(pb[j], gb[j], mb[j], vb[j], xb[j], s);
                bits[j] = rounding_bits<Stochastic>(r, 0, i + j);
                vbits[j] = bits[j] >> 16;
                xbits[j] = Amsgrad ? rounding_bits<Stochastic>(r, 2, i + j) : 0;
            }
            narrow_block<false>(pb, p + i, bits);
            narrow_block<Stochastic>(mb, m + i, bits);
            narrow_block<Stochastic>(vb, v + i, vbits);
            if (Amsgrad) narrow_block<Stochastic>(xb, vmax + i, xbits);
        }
    }
    for (; i < seg.n; ++i) {
        C pi = load(p[i]), mi = load(m[i]), vi = load(v[i]);
        C vmaxi = Amsgrad ? load(vmax[i]) : C(0);
        adam_update<C, Decoupled, HasWd, Amsgrad>(pi, load(g[i]), mi, vi, vmaxi, s);
        store(p[i], pi);
        // one hash for both moments (see StateRounding)
        const std::uint32_t bits = rounding_bits<Stochastic>(r, 0, i);
        store_state<Stochastic>(m[i], mi, bits);
        store_state<Stochastic>(v[i], vi, bits >> 16);
        if (Amsgrad) store_state<Stochastic>(vmax[i], vmaxi, rounding_bits<Stochastic>(r, 2, i));
    }
}

template <typename S, typename T, bool Stochastic, bool HasWd, bool HasMomentum, bool Nesterov,
          bool First>
void sgd_loop(const SgdSegment& seg) {
    using C = typename ComputeOf<S>::type;
    const SgdScalars<C> s = compute_scalars<C>(seg.scalars);
    S* __restrict p = static_cast<S*>(seg.param);
    const S* __restrict g = static_cast<const S*>(seg.grad);
    T* __restrict buf = static_cast<T*>(seg.momentum_buffer);
    std::int64_t i = 0;
    if constexpr (kIsHalf<S>) {
        for (; i + kBlock <= seg.n; i += kBlock) {
            float pb[kBlock], gb[kBlock], bb[kBlock] = {};
            std::uint32_t bits[kBlock];
            widen_block(p + i, pb);
            widen_block(g + i, gb);
            if (HasMomentum && !First) widen_block(buf + i, bb);
            for (std::int64_t j = 0; j < kBlock; ++j) {
                sgd_update<C, HasWd, HasMomentum, Nesterov, First>(pb[j], gb[j], bb[j], s);
                bits[j] = rounding_bits<Stochastic>(seg.state, 0, i + j);
            }
            narrow_block<false>(pb, p + i, bits);
            if (HasMomentum) narrow_block<Stochastic>(bb, buf + i, bits);
        }
    }
    for (; i < seg.n; ++i) {
        C pi = load(p[i]);
        C bi = (HasMomentum && !First) ? load(buf[i]) : C(0);
        sgd_update<C, HasWd, HasMomentum, Nesterov, First>(pi, load(g[i]), bi, s);
        store(p[i], pi);
        if (HasMomentum) {
            store_state<Stochastic>(buf[i], bi, rounding_bits<Stochastic>(seg.state, 0, i));
        }
    }
}

// Flags -> template arguments.
template <typename S, typename T, bool Stochastic>
void adam_flags(const AdamSegment& seg) {
    const int key = (seg.decoupled ? 4 : 0) | (seg.scalars.weight_decay != 0.0 ? 2 : 0) |
                    (seg.amsgrad ? 1 : 0);
    switch (key) {
        case 0: return adam_loop<S, T, Stochastic, false, false, false>(seg);
        case 1: return adam_loop<S, T, Stochastic, false, false, true>(seg);
        case 2: return adam_loop<S, T, Stochastic, false, true, false>(seg);
        case 3: return adam_loop<S, T, Stochastic, false, true, true>(seg);
        case 4: return adam_loop<S, T, Stochastic, true, false, false>(seg);
        case 5: return adam_loop<S, T, Stochastic, true, false, true>(seg);
        case 6: return adam_loop<S, T, Stochastic, true, true, false>(seg);
        default: return adam_loop<S, T, Stochastic, true, true, true>(seg);
    }
}

template <typename S, typename T, bool Stochastic>
void sgd_flags(const SgdSegment& seg) {
    const bool mom = seg.scalars.momentum != 0.0;
    const int key = (seg.scalars.weight_decay != 0.0 ? 8 : 0) | (mom ? 4 : 0) |
                    (mom && seg.nesterov ? 2 : 0) | (mom && seg.first_step ? 1 : 0);
    switch (key) {
        case 0: return sgd_loop<S, T, Stochastic, false, false, false, false>(seg);
        case 4: return sgd_loop<S, T, Stochastic, false, true, false, false>(seg);
        case 5: return sgd_loop<S, T, Stochastic, false, true, false, true>(seg);
        case 6: return sgd_loop<S, T, Stochastic, false, true, true, false>(seg);
        case 7: return sgd_loop<S, T, Stochastic, false, true, true, true>(seg);
        case 8: return sgd_loop<S, T, Stochastic, true, false, false, false>(seg);
        case 12: return sgd_loop<S, T, Stochastic, true, true, false, false>(seg);
        case 13: return sgd_loop<S, T, Stochastic, true, true, false, true>(seg);
        case 14: return sgd_loop<S, T, Stochastic, true, true, true, false>(seg);
        default: return sgd_loop<S, T, Stochastic, true, true, true, true>(seg);
    }
}

// Runs run(T*, stochastic) with the states' storage type T for parameters of storage type S:
// S itself, float32 (for half parameters), or bfloat16 (to nearest even or stochastically);
// pylr/_plan.py allows nothing else (float64 parameters keep float64 states).
template <typename S, typename Segment, typename Run>
void with_state_type(const Segment& seg, Run run) {
    const StateRounding& r = seg.state;
    if constexpr (std::is_same_v<S, double>) {
        run(static_cast<double*>(nullptr), std::false_type{});
    } else {
        if (r.dtype == DType::BFloat16) {
            if (r.stochastic) return run(static_cast<BFloat16*>(nullptr), std::true_type{});
            return run(static_cast<BFloat16*>(nullptr), std::false_type{});
        }
        if constexpr (std::is_same_v<S, Float16>) {
            if (r.dtype == DType::Float16) return run(static_cast<Float16*>(nullptr), std::false_type{});
        }
        run(static_cast<float*>(nullptr), std::false_type{});
    }
}

template <typename S>
void adam_dtype(const AdamSegment& seg) {
    with_state_type<S>(seg, [&](auto* t, auto stochastic) {
        using T = std::remove_pointer_t<decltype(t)>;
        adam_flags<S, T, decltype(stochastic)::value>(seg);
    });
}

template <typename S>
void sgd_dtype(const SgdSegment& seg) {
    with_state_type<S>(seg, [&](auto* t, auto stochastic) {
        using T = std::remove_pointer_t<decltype(t)>;
        sgd_flags<S, T, decltype(stochastic)::value>(seg);
    });
}

// |x| reductions over one segment with eight independent double accumulators, so that the
// compiler vectorises them without reassociating a single sum (the order, hence the result, is
// the same for every instruction set). NaN propagates through max and min as through sums.
template <typename S, NormKind Kind>
double norm_loop(const S* __restrict g, std::int64_t n, double p) {
    constexpr int kLanes = 8;
    const bool extremum = Kind == NormKind::Inf || Kind == NormKind::NegInf;
    double acc[kLanes];
    for (int j = 0; j < kLanes; ++j) acc[j] = norm_identity<Kind>();
    std::int64_t i = 0;
    // half-precision grads widened a block at a time; the same terms in the same order
    if constexpr (kIsHalf<S> || std::is_same_v<S, BFloat16>) {
        static_assert(kBlock % kLanes == 0, "a block holds whole rounds of the lanes");
        for (; i + kBlock <= n; i += kBlock) {
            float wide[kBlock];
            widen_block(g + i, wide);
            for (std::int64_t k = 0; k < kBlock; k += kLanes) {
                for (int j = 0; j < kLanes; ++j) {
                    const double x = static_cast<double>(wide[k + j]);
                    acc[j] = norm_combine<Kind>(acc[j], norm_term<Kind>(x, p));
                }
            }
        }
    }
    for (; i + kLanes <= n; i += kLanes) {
        for (int j = 0; j < kLanes; ++j) {
            acc[j] = norm_combine<Kind>(acc[j], norm_term<Kind>(static_cast<double>(load(g[i + j])), p));
        }
    }
    for (int j = 0; i < n; ++i, ++j) {
        acc[j] = norm_combine<Kind>(acc[j], norm_term<Kind>(static_cast<double>(load(g[i])), p));
    }
    double total = acc[0];
    for (int j = 1; j < kLanes; ++j) total = extremum ? norm_combine<Kind>(total, acc[j]) : total + acc[j];
    return total;
}

template <typename S>
double norm_dtype(const NormSegment& seg) {
    const S* g = static_cast<const S*>(seg.grad);
    switch (seg.kind) {
        case NormKind::Two: return norm_loop<S, NormKind::Two>(g, seg.n, seg.p);
        case NormKind::One: return norm_loop<S, NormKind::One>(g, seg.n, seg.p);
        case NormKind::Inf: return norm_loop<S, NormKind::Inf>(g, seg.n, seg.p);
        case NormKind::NegInf: return norm_loop<S, NormKind::NegInf>(g, seg.n, seg.p);
        default: return norm_loop<S, NormKind::P>(g, seg.n, seg.p);
    }
}

double norm_segment(const NormSegment& seg) {
    switch (seg.dtype) {
        case DType::Float64: return norm_dtype<double>(seg);
        case DType::BFloat16: return norm_dtype<BFloat16>(seg);
        case DType::Float16: return norm_dtype<Float16>(seg);
        case DType::Float32:
        default: return norm_dtype<float>(seg);
    }
}

void adam_segment(const AdamSegment& seg) {
    switch (seg.dtype) {
        case DType::Float32: return adam_dtype<float>(seg);
        case DType::Float64: return adam_dtype<double>(seg);
        case DType::BFloat16: return adam_dtype<BFloat16>(seg);
        case DType::Float16: return adam_dtype<Float16>(seg);
    }
}

void sgd_segment(const SgdSegment& seg) {
    switch (seg.dtype) {
        case DType::Float32: return sgd_dtype<float>(seg);
        case DType::Float64: return sgd_dtype<double>(seg);
        case DType::BFloat16: return sgd_dtype<BFloat16>(seg);
        case DType::Float16: return sgd_dtype<Float16>(seg);
    }
}

}  // namespace

const KernelTable kernels{&adam_segment, &sgd_segment, &norm_segment};

}  // namespace PYLR_KERNEL_NS
}  // namespace optim
}  // namespace pylr
