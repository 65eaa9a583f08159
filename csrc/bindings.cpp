// The module's bindings (with bindings_plan.cpp, the plan proof's, the only files that know
// pybind11): they unpack Python arguments into plain data and call the core. Checks here only
// guard memory safety (a node's parameter count); every user-facing validation and error
// message lives in pylr/ (Python).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "optim/cpu.hpp"
#include "optim/kernel_api.hpp"
#include "parallel.hpp"
#include "schedule.hpp"

namespace py = pybind11;

void bind_plan(py::module_& m);       // bindings_plan.cpp
void bind_cuda_host(py::module_& m);  // bindings_cuda_host.cpp

namespace {

using pylr::ScheduleKind;
using pylr::ScheduleNode;
// pybind11 holders cannot be pointers to const; nodes are immutable all the same (no setters).
using NodePtr = std::shared_ptr<ScheduleNode>;
using StepArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

NodePtr make_node(int kind, std::vector<double> params, std::vector<double> points,
                  std::vector<NodePtr> children) {
    if (kind < 0 || kind >= pylr::kScheduleKindCount) {
        throw py::value_error("unknown schedule kind " + std::to_string(kind));
    }
    const auto k = static_cast<ScheduleKind>(kind);
    if (static_cast<int>(params.size()) != pylr::schedule_param_count(k)) {
        throw py::value_error("schedule kind " + std::to_string(kind) + " takes " +
                              std::to_string(pylr::schedule_param_count(k)) + " parameters");
    }
    const bool composite = k == ScheduleKind::Sequence || k == ScheduleKind::Product ||
                           k == ScheduleKind::Warmup || k == ScheduleKind::Scale;
    const std::size_t want_children = k == ScheduleKind::Sequence ? points.size() + 1
                                      : (k == ScheduleKind::Warmup || k == ScheduleKind::Scale)
                                          ? 1
                                          : children.size();
    if (composite ? (children.empty() || children.size() != want_children) : !children.empty()) {
        throw py::value_error("wrong number of child schedules");
    }
    int depth = 1;
    for (const auto& c : children) {
        if (!c) throw py::value_error("child schedule is None");
        depth = std::max(depth, c->depth() + 1);
    }
    // value() recurses once per level: a deeper tree could overflow the stack
    if (depth > pylr::kMaxScheduleDepth) {
        throw py::value_error("schedule nests " + std::to_string(depth) +
                              " levels deep, more than " +
                              std::to_string(pylr::kMaxScheduleDepth));
    }
    // a parameter that selects a formula is cast to int: out of range or NaN would be undefined
    const auto [coded, n_codes] = pylr::schedule_coded_param(k);
    const double code = coded >= 0 ? params[coded] : 0.0;
    if (coded >= 0 && !(code >= 0.0 && code < n_codes && std::floor(code) == code)) {
        throw py::value_error("parameter " + std::to_string(coded) + " of schedule kind " +
                              std::to_string(kind) + " must be an integer code in [0, " +
                              std::to_string(n_codes) + ")");
    }
    std::vector<std::shared_ptr<const ScheduleNode>> kids(children.begin(), children.end());
    return std::make_shared<ScheduleNode>(k, std::move(params), std::move(points),
                                          std::move(kids));
}

// The names of each kind's modes, in the order of their C++ enums (CyclicMode, Anneal,
// DecayShape, WarmupMode); Python reads them from here to check its arguments.
const std::vector<std::string> kCyclicModes{"triangular", "triangular2", "exp_range"};
const std::vector<std::string> kAnnealStrategies{"cos", "linear"};
const std::vector<std::string> kDecayShapes{"linear", "cosine", "1-sqrt"};
const std::vector<std::string> kWarmupModes{"linear", "constant", "exponential"};

double mode_code(const std::vector<std::string>& names, const std::string& name,
                 const char* what) {
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (names[i] == name) return static_cast<double>(i);
    }
    throw py::value_error(std::string("unknown ") + what + " '" + name + "'");
}

py::tuple names_of(const std::vector<std::string>& names) {
    py::tuple t(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) t[i] = py::str(names[i]);
    return t;
}

NodePtr leaf(ScheduleKind kind, std::vector<double> params, std::vector<double> points = {}) {
    return make_node(static_cast<int>(kind), std::move(params), std::move(points), {});
}

// One typed factory per schedule kind, with the kind's parameters by name (boost-histogram's
// style): the only place that knows a kind's parameter order is C++.
void bind_schedule_factories(py::module_& m) {
    using K = ScheduleKind;
    using namespace pybind11::literals;
    m.attr("CYCLIC_MODES") = names_of(kCyclicModes);
    m.attr("ANNEAL_STRATEGIES") = names_of(kAnnealStrategies);
    m.attr("DECAY_SHAPES") = names_of(kDecayShapes);
    m.attr("WARMUP_MODES") = names_of(kWarmupModes);
    m.def("constant", [](double value) { return leaf(K::Constant, {value}); }, py::kw_only(),
          "value"_a);
    m.def(
        "step",
        [](double base_lr, double step_size, double gamma) {
            return leaf(K::Step, {base_lr, step_size, gamma});
        },
        py::kw_only(), "base_lr"_a, "step_size"_a, "gamma"_a);
    m.def(
        "multistep",
        [](double base_lr, double gamma, std::vector<double> milestones) {
            return leaf(K::MultiStep, {base_lr, gamma}, std::move(milestones));
        },
        py::kw_only(), "base_lr"_a, "gamma"_a, "milestones"_a);
    m.def(
        "exponential",
        [](double base_lr, double gamma) { return leaf(K::Exponential, {base_lr, gamma}); },
        py::kw_only(), "base_lr"_a, "gamma"_a);
    m.def(
        "linear",
        [](double base_lr, double start_factor, double end_factor, double total_iters) {
            return leaf(K::Linear, {base_lr, start_factor, end_factor, total_iters});
        },
        py::kw_only(), "base_lr"_a, "start_factor"_a, "end_factor"_a, "total_iters"_a);
    m.def(
        "polynomial",
        [](double base_lr, double total_iters, double power) {
            return leaf(K::Polynomial, {base_lr, total_iters, power});
        },
        py::kw_only(), "base_lr"_a, "total_iters"_a, "power"_a);
    m.def(
        "cosine",
        [](double base_lr, double T_max, double eta_min) {
            return leaf(K::Cosine, {base_lr, T_max, eta_min});
        },
        py::kw_only(), "base_lr"_a, "T_max"_a, "eta_min"_a);
    m.def(
        "cosine_warm_restarts",
        [](double base_lr, double T_0, double T_mult, double eta_min) {
            return leaf(K::CosineWarmRestarts, {base_lr, T_0, T_mult, eta_min});
        },
        py::kw_only(), "base_lr"_a, "T_0"_a, "T_mult"_a, "eta_min"_a);
    m.def(
        "cyclic",
        [](double base_lr, double max_lr, double step_size_up, double step_size_down,
           const std::string& mode, double gamma, double base_momentum, double max_momentum) {
            return leaf(K::Cyclic, {base_lr, max_lr, step_size_up, step_size_down,
                                    mode_code(kCyclicModes, mode, "cyclic mode"), gamma,
                                    base_momentum, max_momentum});
        },
        py::kw_only(), "base_lr"_a, "max_lr"_a, "step_size_up"_a, "step_size_down"_a, "mode"_a,
        "gamma"_a, "base_momentum"_a, "max_momentum"_a);
    m.def(
        "one_cycle",
        [](double initial_lr, double max_lr, double min_lr, std::vector<double> phase_ends,
           const std::string& anneal_strategy, double base_momentum, double max_momentum,
           bool extrapolate, std::optional<double> final_momentum) {
            if (phase_ends.size() != 2 && phase_ends.size() != 3) {
                throw py::value_error("phase_ends must have 2 (or 3, three-phase) entries");
            }
            const bool three = phase_ends.size() == 3;
            return leaf(K::OneCycle,
                        {initial_lr, max_lr, min_lr, phase_ends[0],
                         three ? phase_ends[1] : std::nan(""), phase_ends.back() + 1.0,
                         three ? 1.0 : 0.0,
                         mode_code(kAnnealStrategies, anneal_strategy, "anneal strategy"),
                         base_momentum, max_momentum, extrapolate ? 1.0 : 0.0,
                         final_momentum.value_or(max_momentum)});
        },
        py::kw_only(), "initial_lr"_a, "max_lr"_a, "min_lr"_a, "phase_ends"_a,
        "anneal_strategy"_a, "base_momentum"_a, "max_momentum"_a, "extrapolate"_a,
        "final_momentum"_a = py::none(),
        "torch's OneCycleLR: phase_ends are the last step of each phase (torch's end_step); "
        "extrapolate evaluates the last phase past its end as torch does, else the value holds; "
        "the momentum ends at final_momentum (default max_momentum).");
    m.def(
        "inverse_sqrt",
        [](double peak_value, double warmup_steps, double timescale) {
            return leaf(K::InverseSqrt, {peak_value, warmup_steps, timescale});
        },
        py::kw_only(), "peak_value"_a, "warmup_steps"_a, "timescale"_a);
    m.def(
        "warmup_stable_decay",
        [](double peak_value, double warmup_steps, double stable_steps, double decay_steps,
           const std::string& decay_shape, double init_value, double min_ratio) {
            return leaf(K::WarmupStableDecay,
                        {peak_value, warmup_steps, stable_steps, decay_steps,
                         mode_code(kDecayShapes, decay_shape, "decay shape"), init_value,
                         min_ratio});
        },
        py::kw_only(), "peak_value"_a, "warmup_steps"_a, "stable_steps"_a, "decay_steps"_a,
        "decay_shape"_a, "init_value"_a, "min_ratio"_a);
    m.def(
        "warmup_cosine",
        [](double peak_value, double warmup_steps, double total_steps, double init_value,
           double min_ratio) {
            return leaf(K::WarmupCosine,
                        {peak_value, warmup_steps, total_steps, init_value, min_ratio});
        },
        py::kw_only(), "peak_value"_a, "warmup_steps"_a, "total_steps"_a, "init_value"_a,
        "min_ratio"_a);
    m.def(
        "sequence",
        [](std::vector<NodePtr> schedules, std::vector<double> milestones) {
            return make_node(static_cast<int>(K::Sequence), {}, std::move(milestones),
                             std::move(schedules));
        },
        py::kw_only(), "schedules"_a, "milestones"_a);
    m.def(
        "product",
        [](std::vector<NodePtr> schedules) {
            return make_node(static_cast<int>(K::Product), {}, {}, std::move(schedules));
        },
        py::kw_only(), "schedules"_a);
    m.def(
        "warmup",
        [](NodePtr schedule, double steps, const std::string& mode, double start_factor) {
            return make_node(static_cast<int>(K::Warmup),
                             {steps, mode_code(kWarmupModes, mode, "warmup mode"), start_factor},
                             {}, {std::move(schedule)});
        },
        py::kw_only(), "schedule"_a, "steps"_a, "mode"_a, "start_factor"_a);
    m.def(
        "scale",
        [](NodePtr schedule, double factor) {
            return make_node(static_cast<int>(K::Scale), {factor}, {}, {std::move(schedule)});
        },
        py::kw_only(), "schedule"_a, "factor"_a);
}

py::array_t<double> fill_from_steps(const ScheduleNode& node, const StepArray& steps,
                                    bool momentum) {
    py::array_t<double> out(steps.size());
    const double* in = steps.data();
    double* dst = out.mutable_data();
    const auto n = static_cast<std::size_t>(steps.size());
    {
        py::gil_scoped_release release;
        pylr::schedule_fill(node, in, dst, n, momentum);
    }
    return out.reshape(std::vector<py::ssize_t>(steps.shape(), steps.shape() + steps.ndim()));
}

// Sealed steps running now, in all threads (changed only under the GIL), and whether the garbage
// collector was on when the first of them began.
std::int64_t g_sealed_steps = 0;
bool g_collector_was_on = false;

using Table = py::array_t<std::int64_t, py::array::c_style>;
using Groups = py::array_t<double, py::array::c_style>;

void check_table(const Table& table) {
    if (table.ndim() != 2 || table.shape(1) != pylr::optim::kTableColumns || !table.writeable()) {
        throw py::value_error("table must be a writeable int64 array of shape (n, " +
                              std::to_string(pylr::optim::kTableColumns) + ")");
    }
}

// Fused schedules for a step: one node (or none) per param group, kept alive here.
struct GroupSchedules {
    std::vector<NodePtr> nodes;
    std::vector<const ScheduleNode*> raw;  // nodes' pointers, null where a group has none
};

// Runs one optimizer step over a pointer table (see optim/cpu.hpp). Only shapes are checked
// here; pylr/_plan.py built the table from validated tensors. while_updating (a callable, or
// None) is called once, holding the GIL, for a step that is taken, while the pool's other
// threads update; an exception it raises is raised once the update is done. It runs while this
// thread holds the pool (no other thread holding the GIL may wait for the pool: set_num_threads
// lets the GIL go first), and must not start a step itself: pylr passes a C function (no
// bytecode runs, so no Python signal handler either).
template <typename Step>
int run_step(Step step, Table& table, Groups& groups, int group_columns,
             std::uintptr_t grad_scale, std::uintptr_t found_inf, double grad_coef,
             const GroupSchedules* schedules, const py::object& schedule_steps,
             const py::object& while_updating) {
    check_table(table);
    if (groups.ndim() != 2 || groups.shape(1) != group_columns || !groups.writeable()) {
        throw py::value_error("groups must be a writeable float64 array of shape (g, " +
                              std::to_string(group_columns) + ")");
    }
    pylr::optim::StepArgs args;
    args.groups = groups.mutable_data();
    args.n_groups = groups.shape(0);
    args.grad_scale = reinterpret_cast<const float*>(grad_scale);
    args.found_inf = reinterpret_cast<const float*>(found_inf);
    args.grad_coef = grad_coef;
    py::array_t<double, py::array::c_style> steps;
    if (schedules != nullptr) {
        steps = py::cast<py::array_t<double, py::array::c_style>>(schedule_steps);
        if (static_cast<py::ssize_t>(schedules->raw.size()) != args.n_groups ||
            steps.ndim() != 1 || steps.shape(0) != args.n_groups) {
            throw py::value_error("one schedule and one schedule step per group");
        }
        args.schedules = schedules->raw.data();
        args.schedule_steps = steps.data();
    }
    std::int64_t* t = table.mutable_data();
    const std::int64_t n = table.shape(0);
    // the GIL released for the step, taken back for while_updating (its error, if any, stays
    // set on this thread until the step returns)
    PyThreadState* thread = nullptr;
    bool raised = false;
    const std::function<void()> callback = [&] {
        PyEval_RestoreThread(thread);
        PyObject* r = PyObject_CallNoArgs(while_updating.ptr());
        raised = r == nullptr;
        Py_XDECREF(r);
        thread = PyEval_SaveThread();
    };
    if (!while_updating.is_none()) args.while_updating = &callback;
    thread = PyEval_SaveThread();
    const int status = step(t, n, args);
    PyEval_RestoreThread(thread);
    if (raised) throw py::error_already_set();
    return status;
}

// A step's fused schedules evaluated into its group rows, for a step that runs outside this
// module (pylr._cuda): what adam_step / sgd_step do first.
int apply_group_schedules(Groups& groups, int group_columns, int lr_col, int momentum_col,
                          bool momentum_below_one, const GroupSchedules& schedules,
                          const py::object& schedule_steps) {
    if (groups.ndim() != 2 || groups.shape(1) != group_columns || !groups.writeable()) {
        throw py::value_error("groups must be a writeable float64 array of shape (g, " +
                              std::to_string(group_columns) + ")");
    }
    const auto steps = py::cast<py::array_t<double, py::array::c_style>>(schedule_steps);
    if (static_cast<py::ssize_t>(schedules.raw.size()) != groups.shape(0) || steps.ndim() != 1 ||
        steps.shape(0) != groups.shape(0)) {
        throw py::value_error("one schedule and one schedule step per group");
    }
    pylr::optim::StepArgs args;
    args.groups = groups.mutable_data();
    args.n_groups = groups.shape(0);
    args.schedules = schedules.raw.data();
    args.schedule_steps = steps.data();
    return pylr::optim::apply_schedules(args, group_columns, lr_col, momentum_col,
                                        momentum_below_one);
}

py::array_t<double> fill_range(const ScheduleNode& node, py::ssize_t n, bool momentum) {
    if (n < 0) throw py::value_error("n must be >= 0");
    py::array_t<double> out(n);
    double* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        pylr::schedule_fill_range(node, dst, static_cast<std::size_t>(n), momentum);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pylr's C++ core: closed-form schedules and the thread pool (no torch inside).";

    // Nodes are built only by the typed factories below: each kind's parameter order, and the
    // names of its modes, exist in C++ alone.
    py::class_<ScheduleNode, NodePtr>(m, "ScheduleNode")
        .def("value", &ScheduleNode::value, py::arg("t"))
        .def("momentum", &ScheduleNode::momentum, py::arg("t"))
        .def_property_readonly("has_momentum", &ScheduleNode::has_momentum)
        .def_property_readonly("depth", &ScheduleNode::depth)
        .def_property_readonly("kind", [](const ScheduleNode& s) { return static_cast<int>(s.kind()); })
        .def_property_readonly("params", &ScheduleNode::params)
        .def_property_readonly("points", &ScheduleNode::points)
        .def(
            "values",
            [](const ScheduleNode& s, const StepArray& steps) {
                return fill_from_steps(s, steps, false);
            },
            py::arg("steps"))
        .def(
            "momentum_values",
            [](const ScheduleNode& s, const StepArray& steps) {
                return fill_from_steps(s, steps, true);
            },
            py::arg("steps"))
        .def(
            "values_range", [](const ScheduleNode& s, py::ssize_t n) { return fill_range(s, n, false); },
            py::arg("n"))
        .def(
            "momentum_values_range",
            [](const ScheduleNode& s, py::ssize_t n) { return fill_range(s, n, true); },
            py::arg("n"));

    m.attr("MAX_SCHEDULE_DEPTH") = pylr::kMaxScheduleDepth;
    bind_schedule_factories(m);
    m.def(
        "warm_restart_position",
        [](double t_0, double t_mult, double t) {
            const auto pos = pylr::warm_restart_position(t_0, t_mult, t);
            return std::make_pair(pos.t_cur, pos.t_i);
        },
        py::arg("T_0"), py::arg("T_mult"), py::arg("t"),
        "(T_cur, T_i) of cosine annealing with warm restarts at step t.");
    py::class_<GroupSchedules>(m, "GroupSchedules",
                               "One fused schedule node (or None) per param group, for a step.")
        .def(py::init([](const std::vector<std::optional<NodePtr>>& nodes) {
                 GroupSchedules s;
                 for (const auto& n : nodes) {
                     s.nodes.push_back(n ? *n : nullptr);
                     s.raw.push_back(n ? n->get() : nullptr);
                 }
                 return s;
             }),
             py::arg("nodes"));
    m.attr("STEP_TAKEN") = pylr::optim::kStepTaken;
    m.attr("STEP_SKIPPED") = pylr::optim::kStepSkipped;
    m.attr("BAD_SCHEDULE") = pylr::optim::kBadSchedule;
    m.def(
        "adam_step",
        [](Table& table, Groups& groups, std::uintptr_t grad_scale, std::uintptr_t found_inf,
           double grad_coef, const GroupSchedules* schedules, const py::object& schedule_steps,
           const py::object& while_updating) {
            return run_step(pylr::optim::adam_step, table, groups, pylr::optim::kAdamGroupColumns,
                            grad_scale, found_inf, grad_coef, schedules, schedule_steps,
                            while_updating);
        },
        py::arg("table").noconvert(), py::arg("groups").noconvert(), py::arg("grad_scale") = 0,
        py::arg("found_inf") = 0, py::arg("grad_coef") = 1.0, py::arg("schedules") = nullptr,
        py::arg("schedule_steps") = py::none(), py::arg("while_updating") = py::none(),
        "One Adam/AdamW step over a pointer table: STEP_TAKEN, STEP_SKIPPED (found_inf), or "
        "BAD_SCHEDULE - g when group g's schedule gave an invalid value (nothing modified). "
        "while_updating() is called once for a step taken, while the pool's other threads "
        "update.");
    m.def(
        "sgd_step",
        [](Table& table, Groups& groups, std::uintptr_t grad_scale, std::uintptr_t found_inf,
           double grad_coef, const GroupSchedules* schedules, const py::object& schedule_steps,
           const py::object& while_updating) {
            return run_step(pylr::optim::sgd_step, table, groups, pylr::optim::kSgdGroupColumns,
                            grad_scale, found_inf, grad_coef, schedules, schedule_steps,
                            while_updating);
        },
        py::arg("table").noconvert(), py::arg("groups").noconvert(), py::arg("grad_scale") = 0,
        py::arg("found_inf") = 0, py::arg("grad_coef") = 1.0, py::arg("schedules") = nullptr,
        py::arg("schedule_steps") = py::none(), py::arg("while_updating") = py::none(),
        "One SGD step over a pointer table; the same results as adam_step.");
    m.def(
        "adam_schedules",
        [](Groups& groups, const GroupSchedules& schedules, const py::object& schedule_steps) {
            using namespace pylr::optim;
            return apply_group_schedules(groups, kAdamGroupColumns, kAdamLr, kAdamBeta1, true,
                                         schedules, schedule_steps);
        },
        py::arg("groups").noconvert(), py::arg("schedules"), py::arg("schedule_steps"),
        "The fused schedules' lr and beta1 at each group's step, written into Adam group rows "
        "(as adam_step does first): STEP_TAKEN, or BAD_SCHEDULE - g (nothing written).");
    m.def(
        "sgd_schedules",
        [](Groups& groups, const GroupSchedules& schedules, const py::object& schedule_steps) {
            using namespace pylr::optim;
            return apply_group_schedules(groups, kSgdGroupColumns, kSgdLr, kSgdMomentum, false,
                                         schedules, schedule_steps);
        },
        py::arg("groups").noconvert(), py::arg("schedules"), py::arg("schedule_steps"),
        "The fused schedules' lr and momentum written into SGD group rows (as sgd_step does).");
    m.def(
        "norm_chunks",
        [](Table& table) {
            check_table(table);
            return pylr::optim::norm_chunks(table.data(), table.shape(0));
        },
        py::arg("table").noconvert(), "How many partial sums grad_norm needs for this table.");
    m.def(
        "grad_norm",
        [](Table& table, int kind, double p,
           py::array_t<double, py::array::c_style>& partials) {
            check_table(table);
            if (kind < 0 || kind > static_cast<int>(pylr::optim::NormKind::P)) {
                throw py::value_error("unknown norm kind");
            }
            const std::int64_t n = table.shape(0);
            if (partials.ndim() != 1 || !partials.writeable() ||
                partials.shape(0) < pylr::optim::norm_chunks(table.data(), n)) {
                throw py::value_error("partials must be a writeable float64 array of norm_chunks");
            }
            const std::int64_t* t = table.data();
            double* part = partials.mutable_data();
            py::gil_scoped_release release;
            return pylr::optim::grad_norm(t, n, kind, p, part);
        },
        py::arg("table").noconvert(), py::arg("kind"), py::arg("p"),
        py::arg("partials").noconvert(),
        "The norm of all the table's grads (kind: NORM_TWO, NORM_ONE, NORM_INF, NORM_NEG_INF or "
        "NORM_P with p).");
    m.def(
        "roofline_step",
        [](Table& table, int n_states) {
            check_table(table);
            std::int64_t* t = table.mutable_data();
            const std::int64_t n = table.shape(0);
            py::gil_scoped_release release;
            pylr::optim::roofline_step(t, n, n_states);
        },
        py::arg("table").noconvert(), py::arg("n_states"),
        "Stream the bytes of a float32 step with trivial arithmetic (the bandwidth roofline).");
    m.def("kernel_isa", &pylr::optim::kernel_isa, "The SIMD instruction set of the kernels.");
    m.attr("TABLE_COLUMNS") = static_cast<int>(pylr::optim::kTableColumns);
    // the dtype codes of the table's kColDType / kColStateDType
    using pylr::optim::DType;
    m.attr("DTYPE_FLOAT32") = static_cast<int>(DType::Float32);
    m.attr("DTYPE_FLOAT64") = static_cast<int>(DType::Float64);
    m.attr("DTYPE_BFLOAT16") = static_cast<int>(DType::BFloat16);
    m.attr("DTYPE_FLOAT16") = static_cast<int>(DType::Float16);
    // grad_norm's kinds (torch.linalg.vector_norm's ord)
    using pylr::optim::NormKind;
    m.attr("NORM_TWO") = static_cast<int>(NormKind::Two);
    m.attr("NORM_ONE") = static_cast<int>(NormKind::One);
    m.attr("NORM_INF") = static_cast<int>(NormKind::Inf);
    m.attr("NORM_NEG_INF") = static_cast<int>(NormKind::NegInf);
    m.attr("NORM_P") = static_cast<int>(NormKind::P);
    // the table's columns, by name (csrc/optim/cpu.hpp is their single source)
    m.attr("COL_PARAM") = static_cast<int>(pylr::optim::kColParam);
    m.attr("COL_GRAD") = static_cast<int>(pylr::optim::kColGrad);
    m.attr("COL_STATE0") = static_cast<int>(pylr::optim::kColState0);
    m.attr("COL_STATE1") = static_cast<int>(pylr::optim::kColState1);
    m.attr("COL_STATE2") = static_cast<int>(pylr::optim::kColState2);
    m.attr("COL_STEP") = static_cast<int>(pylr::optim::kColStep);
    m.attr("COL_NUMEL") = static_cast<int>(pylr::optim::kColNumel);
    m.attr("COL_DTYPE") = static_cast<int>(pylr::optim::kColDType);
    m.attr("COL_GROUP") = static_cast<int>(pylr::optim::kColGroup);
    m.attr("COL_OFFSET") = static_cast<int>(pylr::optim::kColOffset);
    m.attr("COL_FIRST") = static_cast<int>(pylr::optim::kColFirst);
    m.attr("COL_STATE_DTYPE") = static_cast<int>(pylr::optim::kColStateDType);
    m.attr("COL_SALT") = static_cast<int>(pylr::optim::kColSalt);
    bind_plan(m);
    bind_cuda_host(m);
    m.attr("ADAM_GROUP_COLUMNS") = static_cast<int>(pylr::optim::kAdamGroupColumns);
    // each group row's columns by name (csrc/optim/cpu.hpp is their single source)
    {
        using namespace pylr::optim;
        py::dict adam, sgd;
        adam["lr"] = int{kAdamLr};
        adam["beta1"] = int{kAdamBeta1};
        adam["beta2"] = int{kAdamBeta2};
        adam["eps"] = int{kAdamEps};
        adam["weight_decay"] = int{kAdamWeightDecay};
        adam["amsgrad"] = int{kAdamAmsgrad};
        adam["maximize"] = int{kAdamMaximize};
        adam["decoupled"] = int{kAdamDecoupled};
        adam["stochastic_rounding"] = int{kAdamStochastic};
        adam["rounding_seed"] = int{kAdamSeed};
        sgd["lr"] = int{kSgdLr};
        sgd["momentum"] = int{kSgdMomentum};
        sgd["dampening"] = int{kSgdDampening};
        sgd["weight_decay"] = int{kSgdWeightDecay};
        sgd["nesterov"] = int{kSgdNesterov};
        sgd["maximize"] = int{kSgdMaximize};
        sgd["stochastic_rounding"] = int{kSgdStochastic};
        sgd["rounding_seed"] = int{kSgdSeed};
        sgd["rounding_step"] = int{kSgdRoundingStep};
        m.attr("ADAM_COLUMNS") = adam;
        m.attr("SGD_COLUMNS") = sgd;
    }
    m.attr("SGD_GROUP_COLUMNS") = static_cast<int>(pylr::optim::kSgdGroupColumns);
    m.def("prepare_threads", &pylr::prepare_threads, py::arg("elements"),
          "Wake idle pool threads ahead of a step over `elements` elements, if it is large "
          "enough to be worth it (returns at once).");
    m.def("pool_wake_requests", &pylr::pool_wake_requests,
          "How many jobs and hints asked the pool's sleeping workers to wake (for tests).");
    m.attr("WAKE_MIN_ELEMENTS") = static_cast<std::int64_t>(pylr::kWakeMinElements);
    m.def("get_num_threads", &pylr::get_num_threads,
          "Threads the pool uses, the caller included.");
    m.attr("MAX_THREADS") = pylr::kMaxThreads;
    // without the GIL: it waits for a running step, whose while_updating may need the GIL
    m.def("set_num_threads", &pylr::set_num_threads, py::arg("n"),
          py::call_guard<py::gil_scoped_release>(),
          "Sets the pool's thread count (clamped to [1, MAX_THREADS]); returns the count it now "
          "has, fewer where the system refused more threads.");
    // The garbage collector paused while any sealed step runs (pylr._plan.sealed_step), in any
    // thread: a count of the steps sealed, under the GIL, and whether it was on before the first.
    m.def("pause_collector", [] {
        if (g_sealed_steps++ == 0) g_collector_was_on = PyGC_Disable() != 0;
    }, "The garbage collector off while a sealed step runs (paired with resume_collector).");
    m.def("resume_collector", [] {
        if (g_sealed_steps > 0 && --g_sealed_steps == 0 && g_collector_was_on) PyGC_Enable();
    }, "The garbage collector back on once the last sealed step is done, if it was on before.");
}
