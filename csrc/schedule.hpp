// Learning-rate (and momentum) schedules as immutable trees of nodes, evaluated in closed form.
//
// A node is a kind, a vector of scalar parameters, a vector of points (milestones) and children.
// Every value is a pure function of the step t >= 0 (a double, so that fractional epochs and steps
// up to 2^53 are exact): no node keeps state between calls, so any step can be evaluated in any
// order. Python builds the trees and has already validated every parameter; nothing here throws.
//
// The parameter layout of each kind is listed beside ScheduleKind and mirrored by
// pylr/schedules.py, the only code that builds nodes.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace pylr {

enum class ScheduleKind : int {
    Constant = 0,            // params: value
    Step = 1,                // params: base_lr, step_size, gamma
    MultiStep = 2,           // params: base_lr, gamma; points: sorted milestones (repeats compound)
    Exponential = 3,         // params: base_lr, gamma
    Linear = 4,              // params: base_lr, start_factor, end_factor, total_iters
    Polynomial = 5,          // params: base_lr, total_iters, power
    Cosine = 6,              // params: base_lr, T_max, eta_min
    CosineWarmRestarts = 7,  // params: base_lr, T_0, T_mult, eta_min
    Cyclic = 8,              // params: base_lr, max_lr, step_size_up, step_size_down, mode, gamma,
                             //         base_momentum, max_momentum
    OneCycle = 9,            // params: initial_lr, max_lr, min_lr, end of phase 0, end of phase 1
                             //         (three-phase only), total_steps, three_phase, anneal,
                             //         base_momentum, max_momentum,
                             //         past_end (0: hold the last value, 1: extrapolate
                             //         like torch), final_momentum (torch: max_momentum)
    InverseSqrt = 10,        // params: peak_value, warmup_steps, timescale
    WarmupStableDecay = 11,  // params: peak_value, warmup_steps, stable_steps, decay_steps,
                             //         decay_shape, init_value, min_ratio
    WarmupCosine = 12,       // params: peak_value, warmup_steps, total_steps, init_value, min_ratio
    Sequence = 13,           // points: milestones; children: one more than milestones
    Product = 14,            // children: the factors
    Warmup = 15,             // params: steps, mode, start_factor; children: the wrapped schedule
    Scale = 16,              // params: factor; children: the scaled schedule
};

enum class CyclicMode : int { Triangular = 0, Triangular2 = 1, ExpRange = 2 };
enum class Anneal : int { Cos = 0, Linear = 1 };
enum class DecayShape : int { Linear = 0, Cosine = 1, OneMinusSqrt = 2 };
enum class WarmupMode : int { Linear = 0, Constant = 1, Exponential = 2 };
constexpr int kCyclicModeCount = 3, kAnnealCount = 2, kDecayShapeCount = 3, kWarmupModeCount = 3;

constexpr int kScheduleKindCount = 17;

// A schedule tree is at most this many levels deep (a leaf is one level). value() and momentum()
// recurse once per level, so the bound keeps their stack small on any thread, and it leaves Python
// room to repr, pickle and serialise any tree under its default recursion limit. pylr/schedules.py
// refuses deeper compositions with a message (it reads the bound from here); the binding refuses
// them too.
constexpr int kMaxScheduleDepth = 256;

// The number of scalar parameters each kind takes, indexed by ScheduleKind.
int schedule_param_count(ScheduleKind kind) noexcept;
// The parameter of each kind that selects a formula (a CyclicMode, Anneal, DecayShape or
// WarmupMode code) and how many codes it has; {-1, 0} for kinds without one.
std::pair<int, int> schedule_coded_param(ScheduleKind kind) noexcept;

class ScheduleNode {
  public:
    ScheduleNode(ScheduleKind kind, std::vector<double> params, std::vector<double> points,
                 std::vector<std::shared_ptr<const ScheduleNode>> children);

    // The schedule's value at step t (t >= 0).
    double value(double t) const noexcept;
    // The momentum (or Adam beta1) at step t; NaN where the schedule defines none.
    double momentum(double t) const noexcept;
    bool has_momentum() const noexcept { return has_momentum_; }
    // Levels from this node down to its deepest leaf (1 for a leaf).
    int depth() const noexcept { return depth_; }

    ScheduleKind kind() const noexcept { return kind_; }
    const std::vector<double>& params() const noexcept { return params_; }
    const std::vector<double>& points() const noexcept { return points_; }
    const std::vector<std::shared_ptr<const ScheduleNode>>& children() const noexcept {
        return children_;
    }

  private:
    // For Sequence: the index of the active child at t and t relative to its milestone.
    std::size_t sequence_segment(double t, double* local) const noexcept;

    ScheduleKind kind_;
    std::vector<double> params_;
    std::vector<double> points_;
    std::vector<std::shared_ptr<const ScheduleNode>> children_;
    bool has_momentum_;
    int depth_;
};

// Where SGDR stands at step t: the time since the last restart and the current period length.
struct WarmRestartPosition {
    double t_cur;
    double t_i;
};
WarmRestartPosition warm_restart_position(double t_0, double t_mult, double t) noexcept;

// out[i] = node.value(steps[i]) (or momentum), split across the thread pool for large n.
void schedule_fill(const ScheduleNode& node, const double* steps, double* out, std::size_t n,
                   bool momentum) noexcept;
// out[i] = node.value(i) for i in [0, n).
void schedule_fill_range(const ScheduleNode& node, double* out, std::size_t n,
                         bool momentum) noexcept;

}  // namespace pylr
