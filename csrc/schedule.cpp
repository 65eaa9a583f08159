// Closed forms of every schedule kind. Where a kind mirrors a torch.optim.lr_scheduler class, the
// arithmetic follows torch's closed form operation by operation (same order, same pow), so the
// values agree with torch's to the last bit or nearly so; each such line names its torch twin.
#include "schedule.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "parallel.hpp"

namespace pylr {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

constexpr int kParamCounts[kScheduleKindCount] = {
    1,   // Constant
    3,   // Step
    2,   // MultiStep
    2,   // Exponential
    4,   // Linear
    3,   // Polynomial
    3,   // Cosine
    4,   // CosineWarmRestarts
    8,   // Cyclic
    12,  // OneCycle
    3,   // InverseSqrt
    7,   // WarmupStableDecay
    5,   // WarmupCosine
    0,   // Sequence
    0,   // Product
    3,   // Warmup
    1,   // Scale
};

// Half a cosine wave from 1 (s = 0) to 0 (s = 1): (1 + cos(pi s)) / 2.
inline double half_cosine(double s) { return (1.0 + std::cos(kPi * s)) / 2.0; }

// Cosine annealing, periodic with period 2 T_max like torch's CosineAnnealingLR. Reducing t
// modulo the period first (fmod is exact) keeps the argument small for steps up to 1e12; below
// one period the value is bitwise torch's _get_closed_form_lr.
double cosine_annealing(const double* p, double t) {
    const double base = p[0], t_max = p[1], eta_min = p[2];
    const double period = 2.0 * t_max;
    const double r = t < period ? t : std::fmod(t, period);
    // eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2
    return eta_min + (base - eta_min) * (1.0 + std::cos(kPi * r / t_max)) / 2.0;
}

// SGDR: cosine annealing restarted at T_0, T_0 + T_0 T_mult, ...; t may be fractional.
double cosine_warm_restarts(const double* p, double t) {
    const double base = p[0], eta_min = p[3];
    const WarmRestartPosition pos = warm_restart_position(p[1], p[2], t);
    // eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2
    return eta_min + (base - eta_min) * (1.0 + std::cos(kPi * pos.t_cur / pos.t_i)) / 2.0;
}

// torch's CyclicLR at step t: where in the triangle (scale_factor, in [0, 1]) and the mode's
// amplitude scale (scale_fn of the cycle or of t). The caller forms
// base + (max - base) * scale_factor * scale, in torch's order.
struct CyclicPosition {
    double scale_factor;
    double scale;
};

CyclicPosition cyclic_position(const double* p, double t) {
    const double up = p[2], down = p[3], gamma = p[5];
    const auto mode = static_cast<CyclicMode>(static_cast<int>(p[4]));
    const double total = up + down;
    const double ratio = up / total;
    // cycle = floor(1 + t / total_size); x = 1 + t / total_size - cycle
    const double cycle = std::floor(1.0 + t / total);
    const double x = 1.0 + t / total - cycle;
    const double scale_factor = x <= ratio ? x / ratio : (x - 1.0) / (ratio - 1.0);
    switch (mode) {
        case CyclicMode::Triangular2:
            return {scale_factor, 1.0 / std::pow(2.0, cycle - 1.0)};
        case CyclicMode::ExpRange:
            return {scale_factor, std::pow(gamma, t)};
        case CyclicMode::Triangular:
        default:
            return {scale_factor, 1.0};
    }
}

// torch's OneCycleLR anneal functions.
inline double anneal(Anneal how, double start, double end, double pct) {
    if (how == Anneal::Linear) return (end - start) * pct + start;
    return end + (start - end) / 2.0 * (std::cos(kPi * pct) + 1.0);
}

// torch's OneCycleLR at step t: the lr, and the momentum through *momentum if non-null. The
// phase boundaries arrive precomputed (float(pct_start * total) - 1, ...), as torch stores them.
double one_cycle(const double* p, double t, double* momentum) {
    const double initial_lr = p[0], max_lr = p[1], min_lr = p[2];
    const double end0 = p[3], end1 = p[4], total = p[5];
    const bool three_phase = p[6] != 0.0;
    const auto how = static_cast<Anneal>(static_cast<int>(p[7]));
    const double base_m = p[8], max_m = p[9];
    const bool extrapolate = p[10] != 0.0;
    const double final_m = p[11];  // torch: max_m; fastai's moms may end elsewhere
    if (!extrapolate) t = std::min(t, total - 1.0);

    struct Phase {
        double end_step, start_lr, end_lr, start_m, end_m;
    };
    Phase phases[3];
    int n_phases = 0;
    phases[n_phases++] = {end0, initial_lr, max_lr, max_m, base_m};
    if (three_phase) {
        phases[n_phases++] = {end1, max_lr, initial_lr, base_m, max_m};
        phases[n_phases++] = {total - 1.0, initial_lr, min_lr, max_m, final_m};
    } else {
        phases[n_phases++] = {total - 1.0, max_lr, min_lr, base_m, final_m};
    }
    double start_step = 0.0;
    for (int i = 0; i < n_phases; ++i) {
        const Phase& ph = phases[i];
        if (t <= ph.end_step || i == n_phases - 1) {
            const double pct = (t - start_step) / (ph.end_step - start_step);
            if (momentum != nullptr) *momentum = anneal(how, ph.start_m, ph.end_m, pct);
            return anneal(how, ph.start_lr, ph.end_lr, pct);
        }
        start_step = ph.end_step;
    }
    return kNaN;  // unreachable: the last phase always matches
}

// Linear ramp from init to peak over [0, warmup).
inline double linear_warmup(double init, double peak, double warmup, double t) {
    return init + (peak - init) * (t / warmup);
}

double warmup_stable_decay(const double* p, double t) {
    const double peak = p[0], warmup = p[1], stable = p[2], decay = p[3];
    const auto shape = static_cast<DecayShape>(static_cast<int>(p[4]));
    const double init = p[5], floor = p[6] * peak;
    if (t < warmup) return linear_warmup(init, peak, warmup, t);
    if (t < warmup + stable) return peak;
    const double d = t - warmup - stable;
    if (d >= decay) return floor;
    const double s = d / decay;
    double left = 1.0 - s;
    if (shape == DecayShape::Cosine) left = half_cosine(s);
    if (shape == DecayShape::OneMinusSqrt) left = 1.0 - std::sqrt(s);
    return floor + (peak - floor) * left;
}

double warmup_cosine(const double* p, double t) {
    const double peak = p[0], warmup = p[1], total = p[2], init = p[3], floor = p[4] * peak;
    if (t < warmup) return linear_warmup(init, peak, warmup, t);
    if (t >= total) return floor;
    return floor + (peak - floor) * half_cosine((t - warmup) / (total - warmup));
}

double inverse_sqrt(const double* p, double t) {
    const double peak = p[0], warmup = p[1], timescale = p[2];
    if (t < warmup) return peak * (t / warmup);
    // peak / sqrt((t + timescale - warmup) / timescale): 1 at the end of the warmup
    return peak / std::sqrt((t - warmup + timescale) / timescale);
}

double warmup_factor(const double* p, double t) {
    const double steps = p[0], start = p[2];
    switch (static_cast<WarmupMode>(static_cast<int>(p[1]))) {
        case WarmupMode::Constant:
            return start;
        case WarmupMode::Exponential:
            return std::pow(start, 1.0 - t / steps);
        case WarmupMode::Linear:
        default:
            return start + (1.0 - start) * (t / steps);
    }
}

bool compute_has_momentum(ScheduleKind kind,
                          const std::vector<std::shared_ptr<const ScheduleNode>>& children) {
    switch (kind) {
        case ScheduleKind::Cyclic:
        case ScheduleKind::OneCycle:
            return true;
        case ScheduleKind::Sequence:
            return std::all_of(children.begin(), children.end(),
                               [](const auto& c) { return c->has_momentum(); });
        case ScheduleKind::Product:
            return std::count_if(children.begin(), children.end(),
                                 [](const auto& c) { return c->has_momentum(); }) == 1;
        case ScheduleKind::Warmup:
        case ScheduleKind::Scale:
            return children[0]->has_momentum();
        default:
            return false;
    }
}

int compute_depth(const std::vector<std::shared_ptr<const ScheduleNode>>& children) {
    int deepest = 0;
    for (const auto& c : children) deepest = std::max(deepest, c->depth());
    return deepest + 1;
}

}  // namespace

// The restart points are integers, found by walking the geometric series, so T_cur is exact where
// torch's log-based step(epoch) path can misround. The walk is bounded for every input: with
// T_mult >= 2 (Python takes torch's integer T_mult) each period at least doubles, so from
// T_0 >= 2^-1074 (the smallest double) the sum passes any finite t within 1074 + 1024 + 1 terms;
// in practice it takes about log2(t / T_0) (40 for t = 1e12, T_0 = 1). Input Python refuses —
// T_0 <= 0, T_mult < 1 or NaN, a non-finite t, or a multiplier so close to 1 that the bound is
// reached — gives NaN at once.
constexpr int kMaxRestartTerms = 2100;

WarmRestartPosition warm_restart_position(double t_0, double t_mult, double t) noexcept {
    if (!(t_0 > 0.0) || !(t_mult >= 1.0) || !std::isfinite(t)) return {kNaN, kNaN};
    if (t < t_0) return {t, t_0};
    if (t_mult == 1.0) return {std::fmod(t, t_0), t_0};
    double start = 0.0, t_i = t_0;
    for (int term = 0; term < kMaxRestartTerms; ++term) {
        if (t < start + t_i) return {t - start, t_i};
        start += t_i;
        t_i *= t_mult;
    }
    return {kNaN, kNaN};
}

int schedule_param_count(ScheduleKind kind) noexcept {
    const int k = static_cast<int>(kind);
    return k >= 0 && k < kScheduleKindCount ? kParamCounts[k] : -1;
}

std::pair<int, int> schedule_coded_param(ScheduleKind kind) noexcept {
    switch (kind) {
        case ScheduleKind::Cyclic:
            return {4, kCyclicModeCount};
        case ScheduleKind::OneCycle:
            return {7, kAnnealCount};
        case ScheduleKind::WarmupStableDecay:
            return {4, kDecayShapeCount};
        case ScheduleKind::Warmup:
            return {1, kWarmupModeCount};
        default:
            return {-1, 0};
    }
}

ScheduleNode::ScheduleNode(ScheduleKind kind, std::vector<double> params,
                           std::vector<double> points,
                           std::vector<std::shared_ptr<const ScheduleNode>> children)
    : kind_(kind),
      params_(std::move(params)),
      points_(std::move(points)),
      children_(std::move(children)),
      has_momentum_(compute_has_momentum(kind_, children_)),
      depth_(compute_depth(children_)) {}

std::size_t ScheduleNode::sequence_segment(double t, double* local) const noexcept {
    const auto it = std::upper_bound(points_.begin(), points_.end(), t);
    const std::size_t i = static_cast<std::size_t>(it - points_.begin());
    *local = i == 0 ? t : t - points_[i - 1];
    return i;
}

double ScheduleNode::value(double t) const noexcept {
    const double* p = params_.data();
    switch (kind_) {
        case ScheduleKind::Constant:
            return p[0];
        case ScheduleKind::Step:
            // base_lr * gamma ** (t // step_size)
            return p[0] * std::pow(p[2], std::floor(t / p[1]));
        case ScheduleKind::MultiStep: {
            // base_lr * gamma ** bisect_right(milestones, t)
            const auto passed = std::upper_bound(points_.begin(), points_.end(), t) -
                                points_.begin();
            return p[0] * std::pow(p[1], static_cast<double>(passed));
        }
        case ScheduleKind::Exponential:
            // base_lr * gamma ** t
            return p[0] * std::pow(p[1], t);
        case ScheduleKind::Linear:
            // base_lr * (start + (end - start) * min(total_iters, t) / total_iters)
            return p[0] * (p[1] + (p[2] - p[1]) * std::min(p[3], t) / p[3]);
        case ScheduleKind::Polynomial:
            // base_lr * (1 - min(total_iters, t) / total_iters) ** power
            return p[0] * std::pow(1.0 - std::min(p[1], t) / p[1], p[2]);
        case ScheduleKind::Cosine:
            return cosine_annealing(p, t);
        case ScheduleKind::CosineWarmRestarts:
            return cosine_warm_restarts(p, t);
        case ScheduleKind::Cyclic: {
            // base_lr + (max_lr - base_lr) * scale_factor * scale_fn(...)
            const CyclicPosition pos = cyclic_position(p, t);
            return p[0] + (p[1] - p[0]) * pos.scale_factor * pos.scale;
        }
        case ScheduleKind::OneCycle:
            return one_cycle(p, t, nullptr);
        case ScheduleKind::InverseSqrt:
            return inverse_sqrt(p, t);
        case ScheduleKind::WarmupStableDecay:
            return warmup_stable_decay(p, t);
        case ScheduleKind::WarmupCosine:
            return warmup_cosine(p, t);
        case ScheduleKind::Sequence: {
            double local = 0.0;
            const std::size_t i = sequence_segment(t, &local);
            return children_[i]->value(local);
        }
        case ScheduleKind::Product: {
            double v = 1.0;
            for (const auto& c : children_) v *= c->value(t);
            return v;
        }
        case ScheduleKind::Warmup:
            if (t < p[0]) return children_[0]->value(0.0) * warmup_factor(p, t);
            return children_[0]->value(t - p[0]);
        case ScheduleKind::Scale:
            return p[0] * children_[0]->value(t);
    }
    return kNaN;
}

double ScheduleNode::momentum(double t) const noexcept {
    if (!has_momentum_) return kNaN;
    const double* p = params_.data();
    switch (kind_) {
        case ScheduleKind::Cyclic: {
            // max_momentum - (max_momentum - base_momentum) * scale_factor * scale_fn(...)
            const CyclicPosition pos = cyclic_position(p, t);
            return p[7] - (p[7] - p[6]) * pos.scale_factor * pos.scale;
        }
        case ScheduleKind::OneCycle: {
            double m = kNaN;
            one_cycle(p, t, &m);
            return m;
        }
        case ScheduleKind::Sequence: {
            double local = 0.0;
            const std::size_t i = sequence_segment(t, &local);
            return children_[i]->momentum(local);
        }
        case ScheduleKind::Product:
            for (const auto& c : children_) {
                if (c->has_momentum()) return c->momentum(t);
            }
            return kNaN;
        case ScheduleKind::Warmup:
            return children_[0]->momentum(t < p[0] ? 0.0 : t - p[0]);
        case ScheduleKind::Scale:
            return children_[0]->momentum(t);
        default:
            return kNaN;
    }
}

namespace {

// Below this many steps one thread fills the output: waking the pool costs more than it saves.
constexpr std::size_t kParallelFillMin = 1 << 15;
constexpr std::size_t kFillChunk = 1 << 14;

template <typename StepAt>
void fill(const ScheduleNode& node, StepAt step_at, double* out, std::size_t n, bool momentum) {
    auto fill_span = [&](std::size_t begin, std::size_t end) {
        if (momentum) {
            for (std::size_t i = begin; i < end; ++i) out[i] = node.momentum(step_at(i));
        } else {
            for (std::size_t i = begin; i < end; ++i) out[i] = node.value(step_at(i));
        }
    };
    if (n < kParallelFillMin) {
        fill_span(0, n);
        return;
    }
    const std::size_t n_chunks = (n + kFillChunk - 1) / kFillChunk;
    parallel_for(n_chunks, [&](std::size_t c) {
        fill_span(c * kFillChunk, std::min(n, (c + 1) * kFillChunk));
    });
}

}  // namespace

void schedule_fill(const ScheduleNode& node, const double* steps, double* out, std::size_t n,
                   bool momentum) noexcept {
    fill(node, [steps](std::size_t i) { return steps[i]; }, out, n, momentum);
}

void schedule_fill_range(const ScheduleNode& node, double* out, std::size_t n,
                         bool momentum) noexcept {
    fill(node, [](std::size_t i) { return static_cast<double>(i); }, out, n, momentum);
}

}  // namespace pylr
