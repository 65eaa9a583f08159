// The multi-tensor driver behind adam_step and sgd_step (see cpu.hpp).
#include "optim/cpu.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "optim/kernel_api.hpp"
#include "parallel.hpp"

namespace pylr {
namespace optim {
namespace {

// Below this many elements one thread does the whole step: waking the pool costs more.
constexpr std::int64_t kParallelMin = 1 << 14;
// Work is cut into chunks of about this many elements (at least one per thread, at most 16 per
// thread), claimed dynamically: a thread that starts late takes fewer.
constexpr std::int64_t kChunkElements = 1 << 15;
// Chunk boundaries fall on multiples of this many elements (a 64-byte line of float32).
constexpr std::int64_t kAlign = 16;
// The gradient norm sums chunks of this many elements, whatever the thread count.
constexpr std::int64_t kNormChunk = 1 << 16;

// PYLR_KERNELS=generic|avx2|avx512 narrows the choice (for tests and comparisons); a set the CPU
// lacks is never taken.
bool allowed(const char* isa) noexcept {
    const char* want = std::getenv("PYLR_KERNELS");
    return want == nullptr || *want == '\0' || std::strcmp(want, isa) == 0;
}

const KernelTable& select_kernels() noexcept {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(PYLR_HAVE_X86_KERNELS)
    __builtin_cpu_init();
    if (allowed("avx512") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma")) {
        return avx512::kernels;
    }
    if (allowed("avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        return avx2::kernels;
    }
#endif
    return generic::kernels;
}

const KernelTable& kernels() noexcept {
    static const KernelTable& table = select_kernels();
    return table;
}

inline const std::int64_t* row(const std::int64_t* table, std::int64_t i) {
    return table + i * kTableColumns;
}

template <typename T>
inline T* ptr(const std::int64_t* r, int col) {
    return reinterpret_cast<T*>(static_cast<std::intptr_t>(r[col]));
}

// The elements of all rows, one after another.
inline std::int64_t total_elements(const std::int64_t* table, std::int64_t n_rows) {
    if (n_rows == 0) return 0;
    const std::int64_t* last = row(table, n_rows - 1);
    return last[kColOffset] + last[kColNumel];
}

// Runs visit(row_index, begin, end) over every tensor segment of the elements [begin, end) of
// the concatenated rows (begin and end relative to each row's start).
template <typename Visit>
void visit_range(const std::int64_t* table, std::int64_t n_rows, std::int64_t begin,
                 std::int64_t end, Visit& visit) {
    if (begin >= end) return;
    // the first row whose range reaches past `begin` (binary search on the prefix sums)
    std::int64_t lo = 0, hi = n_rows - 1;
    while (lo < hi) {
        const std::int64_t mid = (lo + hi + 1) / 2;
        if (row(table, mid)[kColOffset] <= begin) lo = mid; else hi = mid - 1;
    }
    for (std::int64_t i = lo; i < n_rows && begin < end; ++i) {
        const std::int64_t* r = row(table, i);
        const std::int64_t t_begin = r[kColOffset], t_end = t_begin + r[kColNumel];
        if (t_end <= begin) continue;
        const std::int64_t seg_end = std::min(end, t_end);
        visit(i, begin - t_begin, seg_end - t_begin);
        begin = seg_end;
    }
}

// Runs visit(row_index, begin, end) over every tensor segment of the element range of each
// chunk; chunks are cut regardless of tensor boundaries and spread over the pool.
// Each chunk visits with a copy of `visit` of its own (a visitor may keep what it computed for
// one segment for the next ones of its chunk). caller_first: see parallel_for (it runs even where
// there is nothing to visit).
template <typename Visit>
void for_each_segment(const std::int64_t* table, std::int64_t n_rows, Visit visit,
                      const std::function<void()>* caller_first = nullptr) {
    if (n_rows == 0) {
        if (caller_first != nullptr) (*caller_first)();
        return;
    }
    const std::int64_t total = total_elements(table, n_rows);
    const std::int64_t threads = get_num_threads();
    // a multiple of the thread count, so that equal shares stay possible
    const std::int64_t per_thread = std::min<std::int64_t>(
        16, std::max<std::int64_t>(1, total / kChunkElements / threads));
    const std::int64_t n_chunks = total < kParallelMin || threads == 1 ? 1 : threads * per_thread;
    auto run_chunk = [&](std::size_t c) {
        const auto ci = static_cast<std::int64_t>(c);
        const std::int64_t begin = ci == 0 ? 0 : (total * ci / n_chunks) / kAlign * kAlign;
        const std::int64_t end =
            ci + 1 == n_chunks ? total : (total * (ci + 1) / n_chunks) / kAlign * kAlign;
        Visit chunk_visit = visit;
        visit_range(table, n_rows, begin, end, chunk_visit);
    };
    if (n_chunks == 1) {
        if (caller_first != nullptr) (*caller_first)();
        run_chunk(0);
    } else {
        parallel_for(static_cast<std::size_t>(n_chunks), run_chunk,
                     static_cast<std::size_t>(total) >= kWakeMinElements, caller_first);
    }
}

// The rounding of a row's states for one segment: storage dtype, and for stochastic rounding
// the hash streams of (seed, tensor, step) for each state tensor (see StateRounding).
inline StateRounding state_rounding(const std::int64_t* r, bool stochastic, double seed,
                                    double step, std::int64_t first) {
    StateRounding s{};
    s.dtype = static_cast<DType>(r[kColStateDType]);
    s.stochastic = stochastic;
    s.first = first;
    if (stochastic) {
        const std::uint32_t tensor = rounding_tensor_hash(static_cast<std::uint32_t>(seed),
                                                          static_cast<std::uint32_t>(r[kColSalt]));
        const auto t = static_cast<std::uint32_t>(step);
        for (std::uint32_t j = 0; j < 3; ++j) s.stream[j] = rounding_stream(tensor, t, j);
    }
    return s;
}

inline std::int64_t element_size(DType d) {
    return d == DType::Float64 ? 8 : d == DType::Float32 ? 4 : 2;
}

inline void* advance(void* p, std::int64_t elements, DType d) {
    return p == nullptr ? nullptr : static_cast<char*>(p) + elements * element_size(d);
}

}  // namespace

const char* kernel_isa() noexcept {
    const KernelTable& k = kernels();
    if (&k == &avx512::kernels) return "avx512";
    if (&k == &avx2::kernels) return "avx2";
    return "generic";
}

int apply_schedules(const StepArgs& a, int columns, int lr_col, int momentum_col,
                    bool momentum_below_one) noexcept {
    if (a.schedules == nullptr) return kStepTaken;
    for (std::int64_t g = 0; g < a.n_groups; ++g) {
        const ScheduleNode* node = a.schedules[g];
        if (node == nullptr) continue;
        const double t = a.schedule_steps[g];
        const double lr = node->value(t);
        bool ok = std::isfinite(lr) && lr >= 0.0;
        if (ok && node->has_momentum()) {
            const double m = node->momentum(t);
            ok = std::isfinite(m) && m >= 0.0 && (!momentum_below_one || m < 1.0);
        }
        if (!ok) return kBadSchedule - static_cast<int>(g);
    }
    for (std::int64_t g = 0; g < a.n_groups; ++g) {
        const ScheduleNode* node = a.schedules[g];
        if (node == nullptr) continue;
        double* row_g = a.groups + g * columns;
        const double t = a.schedule_steps[g];
        row_g[lr_col] = node->value(t);
        if (node->has_momentum()) row_g[momentum_col] = node->momentum(t);
    }
    return kStepTaken;
}

namespace {

inline double inverse_scale(const StepArgs& a) {
    return (a.grad_scale != nullptr ? 1.0 / static_cast<double>(*a.grad_scale) : 1.0) *
           a.grad_coef;
}

}  // namespace

int adam_step(std::int64_t* table, std::int64_t n_rows, const StepArgs& args) noexcept {
    if (args.found_inf != nullptr && *args.found_inf != 0.0f) return kStepSkipped;
    const int scheduled = apply_schedules(args, kAdamGroupColumns, kAdamLr, kAdamBeta1, true);
    if (scheduled != kStepTaken) return scheduled;
    // step_t += 1, once per tensor, before any thread reads it (each counter is a tensor of its
    // own, on a line of its own: the ones ahead are prefetched)
    constexpr std::int64_t kAhead = 16;
    for (std::int64_t i = 0; i < n_rows; ++i) {
        if (i + kAhead < n_rows) __builtin_prefetch(ptr<float>(row(table, i + kAhead), kColStep), 1);
        *ptr<float>(row(table, i), kColStep) += 1.0f;
    }
    const double inv_scale = inverse_scale(args);
    const double* groups = args.groups;
    const auto adam = kernels().adam;
    // a row's scalars (three pow calls) are those of the chunk's previous segment where that
    // was of the same group at the same step: the usual case, every row of a group stepped alike
    struct LastScalars {
        const double* group = nullptr;
        double step = 0.0;
        AdamStepScalars scalars{};
    };
    auto visit = [&, last = LastScalars{}](std::int64_t i, std::int64_t b, std::int64_t e) mutable {
        const std::int64_t* r = row(table, i);
        const double* g = groups + r[kColGroup] * kAdamGroupColumns;
        const auto dtype = static_cast<DType>(r[kColDType]);
        const double step = static_cast<double>(*ptr<float>(r, kColStep));
        AdamSegment seg;
        seg.param = advance(ptr<void>(r, kColParam), b, dtype);
        seg.grad = advance(ptr<void>(r, kColGrad), b, dtype);
        seg.n = e - b;
        seg.dtype = dtype;
        seg.state = state_rounding(r, g[kAdamStochastic] != 0.0, g[kAdamSeed], step, b);
        const auto state_dtype = seg.state.dtype;
        seg.exp_avg = advance(ptr<void>(r, kColState0), b, state_dtype);
        seg.exp_avg_sq = advance(ptr<void>(r, kColState1), b, state_dtype);
        seg.max_exp_avg_sq = advance(ptr<void>(r, kColState2), b, state_dtype);
        seg.decoupled = g[kAdamDecoupled] != 0.0;
        seg.amsgrad = g[kAdamAmsgrad] != 0.0;
        if (g != last.group || !(step == last.step)) {
            last.group = g;
            last.step = step;
            last.scalars = adam_step_scalars(
                g[kAdamLr], g[kAdamBeta1], g[kAdamBeta2], g[kAdamEps], g[kAdamWeightDecay],
                (g[kAdamMaximize] != 0.0 ? -1.0 : 1.0) * inv_scale, step);
        }
        seg.scalars = last.scalars;
        adam(seg);
    };
    for_each_segment(table, n_rows, visit, args.while_updating);
    return kStepTaken;
}

int sgd_step(std::int64_t* table, std::int64_t n_rows, const StepArgs& args) noexcept {
    if (args.found_inf != nullptr && *args.found_inf != 0.0f) return kStepSkipped;
    const int scheduled = apply_schedules(args, kSgdGroupColumns, kSgdLr, kSgdMomentum, false);
    if (scheduled != kStepTaken) return scheduled;
    const double inv_scale = inverse_scale(args);
    const double* groups = args.groups;
    const auto sgd = kernels().sgd;
    for_each_segment(table, n_rows, [&](std::int64_t i, std::int64_t b, std::int64_t e) {
        const std::int64_t* r = row(table, i);
        const double* g = groups + r[kColGroup] * kSgdGroupColumns;
        const auto dtype = static_cast<DType>(r[kColDType]);
        SgdSegment seg;
        seg.param = advance(ptr<void>(r, kColParam), b, dtype);
        seg.grad = advance(ptr<void>(r, kColGrad), b, dtype);
        seg.n = e - b;
        seg.dtype = dtype;
        seg.state = state_rounding(r, g[kSgdStochastic] != 0.0, g[kSgdSeed],
                                   g[kSgdRoundingStep], b);
        seg.momentum_buffer = advance(ptr<void>(r, kColState0), b, seg.state.dtype);
        seg.nesterov = g[kSgdNesterov] != 0.0;
        seg.first_step = r[kColFirst] != 0;
        seg.scalars = {(g[kSgdMaximize] != 0.0 ? -1.0 : 1.0) * inv_scale, g[kSgdWeightDecay],
                       g[kSgdMomentum], g[kSgdDampening], g[kSgdLr]};
        sgd(seg);
    }, args.while_updating);
    clear_filled_first_steps(table, n_rows, groups);
    return kStepTaken;
}

std::int64_t norm_chunks(const std::int64_t* table, std::int64_t n_rows) noexcept {
    const std::int64_t total = total_elements(table, n_rows);
    return (total + kNormChunk - 1) / kNormChunk;
}

double grad_norm(const std::int64_t* table, std::int64_t n_rows, int kind, double p,
                 double* partials) noexcept {
    const auto norm_kind = static_cast<NormKind>(kind);
    const bool extremum = norm_kind == NormKind::Inf || norm_kind == NormKind::NegInf;
    // max / min that keep a NaN, as torch's norms do
    auto combine = [&](double a, double b) {
        if (!extremum) return a + b;
        if (a != a || b != b) return a != a ? a : b;
        return norm_kind == NormKind::Inf ? std::max(a, b) : std::min(a, b);
    };
    const double empty = norm_kind == NormKind::NegInf ? HUGE_VAL : 0.0;
    const std::int64_t total = total_elements(table, n_rows);
    const std::int64_t n_chunks = norm_chunks(table, n_rows);
    const auto norm = kernels().norm;
    // fixed chunks, each summed in its own slot and the slots combined in order: the result does
    // not depend on the thread count
    auto run_chunk = [&](std::size_t c) {
        const auto ci = static_cast<std::int64_t>(c);
        double part = empty;
        auto visit = [&](std::int64_t i, std::int64_t b, std::int64_t e) {
            const std::int64_t* r = row(table, i);
            const auto dtype = static_cast<DType>(r[kColDType]);
            NormSegment seg{advance(ptr<void>(r, kColGrad), b, dtype), e - b, dtype, norm_kind, p};
            part = combine(part, norm(seg));
        };
        visit_range(table, n_rows, ci * kNormChunk, std::min(total, (ci + 1) * kNormChunk), visit);
        partials[c] = part;
    };
    if (n_chunks == 1) {
        run_chunk(0);
    } else if (n_chunks > 1) {
        parallel_for(static_cast<std::size_t>(n_chunks), run_chunk,
                     static_cast<std::size_t>(total) >= kWakeMinElements);
    }
    double sum = empty;
    for (std::int64_t c = 0; c < n_chunks; ++c) sum = combine(sum, partials[c]);
    if (total == 0) return 0.0;
    switch (norm_kind) {
        case NormKind::Two: return std::sqrt(sum);
        case NormKind::P: return std::pow(sum, 1.0 / p);
        default: return sum;
    }
}

void roofline_step(std::int64_t* table, std::int64_t n_rows, int n_states) noexcept {
    for_each_segment(table, n_rows, [&](std::int64_t i, std::int64_t b, std::int64_t e) {
        const std::int64_t* r = row(table, i);
        float* __restrict p = ptr<float>(r, kColParam) + b;
        const float* __restrict g = ptr<const float>(r, kColGrad) + b;
        float* __restrict s0 = n_states > 0 ? ptr<float>(r, kColState0) + b : nullptr;
        float* __restrict s1 = n_states > 1 ? ptr<float>(r, kColState1) + b : nullptr;
        const std::int64_t n = e - b;
        // read param, grad and the states; write param and the states back
        if (n_states >= 2) {
            for (std::int64_t k = 0; k < n; ++k) {
                const float gk = g[k];
                p[k] += gk;
                s0[k] += gk;
                s1[k] += gk;
            }
        } else if (n_states == 1) {
            for (std::int64_t k = 0; k < n; ++k) {
                const float gk = g[k];
                p[k] += gk;
                s0[k] += gk;
            }
        } else {
            for (std::int64_t k = 0; k < n; ++k) p[k] += g[k];
        }
    });
}

}  // namespace optim
}  // namespace pylr
