// Test-only bindings of pylr._core: the CUDA kernels' chunk planner and kernel bodies run on the
// host (csrc/cuda/emulate.cpp), so that every machine — with or without a CUDA toolkit or a GPU
// — tests the code pylr._cuda runs. Underscored names: not part of pylr's API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda/emulate.hpp"
#include "cuda/launch.hpp"
#include "cuda/multi_tensor.hpp"
#include "optim/cpu.hpp"

namespace py = pybind11;

namespace {

using namespace pylr;
using Table = py::array_t<std::int64_t, py::array::c_style>;
using Groups = py::array_t<double, py::array::c_style>;
using Addresses = py::array_t<std::int64_t, py::array::c_style>;

// The planner's largest slot count a test may ask for.
constexpr int kTestSlots = 4096;

struct ListRows {
    const std::vector<std::int64_t>& numels;
    const std::vector<std::int64_t>& groups;
    std::int64_t count() const { return static_cast<std::int64_t>(numels.size()); }
    std::int64_t numel(std::int64_t r) const { return numels[static_cast<std::size_t>(r)]; }
    std::int64_t group(std::int64_t r) const {
        return groups.empty() ? 0 : groups[static_cast<std::size_t>(r)];
    }
    bool included(std::int64_t) const { return true; }
};

// Records each launch as the device would read it: every block's (row, begin, end) from
// locate_block over the filled LaunchMap.
struct RecordingSink {
    RecordingSink(cuda::LaunchMap<kTestSlots>& m, std::int64_t c, const std::vector<std::int64_t>& n)
        : map(m), chunk(c), numels(n), row_of_slot(kTestSlots), group_of_slot(kTestSlots) {}

    cuda::LaunchMap<kTestSlots>& map;
    std::int64_t chunk;
    const std::vector<std::int64_t>& numels;
    std::vector<std::int64_t> row_of_slot;
    std::vector<std::int64_t> group_of_slot;
    py::list launches;

    void group(std::int32_t slot, std::int64_t g) {
        group_of_slot[static_cast<std::size_t>(slot)] = g;
    }
    void slot(std::int32_t s, std::int64_t r, std::int32_t, std::int64_t first_chunk,
              std::int32_t first_block) {
        map_slot(map, s, numels[static_cast<std::size_t>(r)], first_chunk, first_block);
        row_of_slot[static_cast<std::size_t>(s)] = r;
    }
    void launch(std::int32_t n_slots, std::int32_t n_groups, std::int32_t n_blocks) {
        map_close(map, n_slots, n_blocks, chunk);
        py::array_t<std::int64_t> blocks({static_cast<py::ssize_t>(n_blocks), py::ssize_t{3}});
        auto b = blocks.mutable_unchecked<2>();
        for (std::int32_t k = 0; k < cuda::launch_blocks(map); ++k) {
            const cuda::BlockSpan span = cuda::locate_block(map, k);
            b(k, 0) = row_of_slot[static_cast<std::size_t>(span.slot)];
            b(k, 1) = span.begin;
            b(k, 2) = span.end;
        }
        launches.append(py::make_tuple(n_slots, n_groups, blocks));
    }
};

cuda::PlanLimits limits_of(int max_slots, int max_groups, std::int64_t max_blocks,
                           std::int64_t chunk) {
    if (max_slots < 0 || max_groups < 0 || max_blocks < 0 || chunk < 0 ||
        max_blocks > (std::int64_t{1} << 30)) {
        throw py::value_error("launch limits must be >= 0 (0: the production value)");
    }
    return {max_slots, max_groups, static_cast<std::int32_t>(max_blocks), chunk};
}

void check_table(const Table& table) {
    if (table.ndim() != 2 || table.shape(1) != optim::kTableColumns || !table.writeable()) {
        throw py::value_error("table must be a writeable int64 array of shape (n, " +
                              std::to_string(optim::kTableColumns) + ")");
    }
}

void check_emulation(int block_size) {
    if (block_size < 1 || block_size > 4096) throw py::value_error("block_size must be in [1, 4096]");
#if defined(PYLR_EMULATE_WITH_FMA)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("fma")) {
        throw std::runtime_error("the CUDA emulation is compiled with FMA, which this CPU lacks");
    }
#endif
}

cuda::StepInputs step_inputs(Table& table, Groups& groups, int group_columns,
                             const py::object& lr_addresses, std::uintptr_t grad_scale,
                             std::uintptr_t found_inf, std::uintptr_t grad_coef,
                             Addresses& holder) {
    check_table(table);
    if (groups.ndim() != 2 || groups.shape(1) != group_columns) {
        throw py::value_error("groups must be a float64 array of shape (g, " +
                              std::to_string(group_columns) + ")");
    }
    for (std::int64_t r = 0; r < table.shape(0); ++r) {
        const std::int64_t g = table.data()[r * optim::kTableColumns + optim::kColGroup];
        if (g < 0 || g >= groups.shape(0)) throw py::value_error("a row's group is out of range");
    }
    cuda::StepInputs in{table.data(), table.shape(0), groups.data(), nullptr,
                        reinterpret_cast<const float*>(grad_scale),
                        reinterpret_cast<const float*>(found_inf),
                        reinterpret_cast<const double*>(grad_coef)};
    if (!lr_addresses.is_none()) {
        holder = py::cast<Addresses>(lr_addresses);
        if (holder.ndim() != 1 || holder.shape(0) != groups.shape(0)) {
            throw py::value_error("lr_on_device must hold one address (or 0) per group");
        }
        in.lr_on_device = holder.data();
    }
    return in;
}

}  // namespace

void bind_cuda_host(py::module_& m) {
    using namespace pybind11::literals;
    m.attr("_CUDA_EMULATION_FMA") = cuda::emulation_uses_fma();
    m.attr("_CUDA_CHUNK_ELEMENTS") = cuda::kChunkElements;
    m.attr("_CUDA_BLOCK_THREADS") = cuda::kBlockThreads;
    m.attr("_CUDA_ADAM_SLOTS") = cuda::kAdamSlots;
    m.attr("_CUDA_ADAM_GROUPS") = cuda::kAdamGroups;
    m.def(
        "_cuda_plan_chunks",
        [](const std::vector<std::int64_t>& numels, const std::vector<std::int64_t>& groups,
           int max_slots, int max_groups, std::int64_t max_blocks, std::int64_t chunk) {
            if (!groups.empty() && groups.size() != numels.size()) {
                throw py::value_error("one group per tensor (or none)");
            }
            if (max_slots < 1 || max_slots > kTestSlots || max_groups < 1 || max_blocks < 1 ||
                chunk < 1) {
                throw py::value_error("limits must be >= 1 (max_slots at most 4096)");
            }
            for (const std::int64_t n : numels) {
                if (n < 0) throw py::value_error("element counts must be >= 0");
            }
            const cuda::PlanLimits limits = limits_of(max_slots, max_groups, max_blocks, chunk);
            auto map = std::make_unique<cuda::LaunchMap<kTestSlots>>();
            RecordingSink sink(*map, chunk, numels);
            cuda::plan_launches(ListRows{numels, groups}, limits, sink);
            return sink.launches;
        },
        "numels"_a, "groups"_a = std::vector<std::int64_t>{}, py::kw_only(), "max_slots"_a,
        "max_groups"_a, "max_blocks"_a, "chunk"_a,
        "The CUDA launches for tensors of these sizes: [(n_slots, n_groups, blocks)], blocks[b] "
        "= (tensor, begin, end) as block b of the launch finds it on the device (test-only).");
    m.def(
        "_cuda_emulate_adam",
        [](Table& table, Groups& groups, const py::object& lr_on_device, std::uintptr_t grad_scale,
           std::uintptr_t found_inf, std::uintptr_t grad_coef, int block_size, int max_slots,
           int max_groups, std::int64_t max_blocks, std::int64_t chunk) {
            check_emulation(block_size);
            Addresses holder;
            const cuda::StepInputs in = step_inputs(table, groups, optim::kAdamGroupColumns,
                                                    lr_on_device, grad_scale, found_inf,
                                                    grad_coef, holder);
            const cuda::PlanLimits limits = limits_of(max_slots, max_groups, max_blocks, chunk);
            py::gil_scoped_release release;
            cuda::emulate_adam_step(in, limits, block_size);
        },
        py::arg("table").noconvert(), py::arg("groups").noconvert(), py::kw_only(),
        "lr_on_device"_a = py::none(), "grad_scale"_a = 0, "found_inf"_a = 0, "grad_coef"_a = 0,
        "block_size"_a = cuda::kBlockThreads, "max_slots"_a = 0, "max_groups"_a = 0,
        "max_blocks"_a = 0, "chunk"_a = 0,
        "pylr._cuda's Adam step run on the host over a table of CPU tensors: the planner, the "
        "launch structs and the kernels' bodies over every (block, thread) (test-only).");
    m.def(
        "_cuda_emulate_sgd",
        [](Table& table, Groups& groups, const py::object& lr_on_device, std::uintptr_t grad_scale,
           std::uintptr_t found_inf, std::uintptr_t grad_coef, int block_size, int max_slots,
           int max_groups, std::int64_t max_blocks, std::int64_t chunk) {
            check_emulation(block_size);
            Addresses holder;
            const cuda::StepInputs in = step_inputs(table, groups, optim::kSgdGroupColumns,
                                                    lr_on_device, grad_scale, found_inf,
                                                    grad_coef, holder);
            const cuda::PlanLimits limits = limits_of(max_slots, max_groups, max_blocks, chunk);
            {
                py::gil_scoped_release release;
                cuda::emulate_sgd_step(in, limits, block_size);
            }
            optim::clear_filled_first_steps(table.mutable_data(), table.shape(0), groups.data());
        },
        py::arg("table").noconvert(), py::arg("groups").noconvert(), py::kw_only(),
        "lr_on_device"_a = py::none(), "grad_scale"_a = 0, "found_inf"_a = 0, "grad_coef"_a = 0,
        "block_size"_a = cuda::kBlockThreads, "max_slots"_a = 0, "max_groups"_a = 0,
        "max_blocks"_a = 0, "chunk"_a = 0,
        "pylr._cuda's SGD step run on the host (test-only; see _cuda_emulate_adam).");
    m.def(
        "_cuda_emulate_grad_norm",
        [](Table& table, int kind, double p, int block_size, int max_slots, std::int64_t max_blocks,
           std::int64_t chunk) {
            check_emulation(block_size);
            check_table(table);
            if ((block_size & (block_size - 1)) != 0) {
                throw py::value_error("block_size must be a power of two");
            }
            if (kind < 0 || kind > static_cast<int>(optim::NormKind::P)) {
                throw py::value_error("unknown norm kind");
            }
            const cuda::PlanLimits limits = limits_of(max_slots, 0, max_blocks, chunk);
            const std::int64_t* t = table.data();
            const std::int64_t n = table.shape(0);
            py::gil_scoped_release release;
            return cuda::emulate_grad_norm(t, n, kind, p, limits, block_size);
        },
        py::arg("table").noconvert(), "kind"_a, "p"_a, py::kw_only(),
        "block_size"_a = cuda::kBlockThreads, "max_slots"_a = 0, "max_blocks"_a = 0, "chunk"_a = 0,
        "pylr._cuda's gradient norm run on the host (test-only).");
}
