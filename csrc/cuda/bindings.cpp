// pylr._cuda: the bindings of the CUDA kernels (the only file of the module that knows pybind11;
// it includes no CUDA header). Arguments are plain data — the step's host-memory pointer table,
// the group rows, device addresses and a stream handle as integers — that pylr/ (Python) has
// validated; the checks here only guard memory safety of the host arrays. Importing the module
// needs no GPU and no driver: nothing touches the CUDA runtime until a function is called.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cuda/device_api.hpp"
#include "cuda/launch.hpp"
#include "optim/cpu.hpp"

namespace py = pybind11;

namespace {

using Table = py::array_t<std::int64_t, py::array::c_style>;
using Groups = py::array_t<double, py::array::c_style>;
using namespace pylr;

void check_table(const Table& table) {
    if (table.ndim() != 2 || table.shape(1) != optim::kTableColumns || !table.writeable()) {
        throw py::value_error("table must be a writeable int64 array of shape (n, " +
                              std::to_string(optim::kTableColumns) + ")");
    }
}

void raise_on(const char* error) {
    if (error != nullptr) throw std::runtime_error(std::string("CUDA error: ") + error);
}

// The inputs of a step: the table and group rows checked for shape, and every group index in
// range (the launcher reads groups[row[kColGroup]]).
cuda::StepInputs step_inputs(Table& table, Groups& groups, int group_columns,
                             const py::object& lr_on_device, std::uintptr_t grad_scale,
                             std::uintptr_t found_inf, std::uintptr_t grad_coef,
                             py::array_t<std::int64_t, py::array::c_style>& lr_holder) {
    check_table(table);
    if (groups.ndim() != 2 || groups.shape(1) != group_columns) {
        throw py::value_error("groups must be a float64 array of shape (g, " +
                              std::to_string(group_columns) + ")");
    }
    const std::int64_t n_rows = table.shape(0), n_groups = groups.shape(0);
    for (std::int64_t r = 0; r < n_rows; ++r) {
        const std::int64_t g = table.data()[r * optim::kTableColumns + optim::kColGroup];
        if (g < 0 || g >= n_groups) throw py::value_error("a row's group is out of range");
    }
    cuda::StepInputs in{table.data(), n_rows, groups.data(), nullptr,
                        reinterpret_cast<const float*>(grad_scale),
                        reinterpret_cast<const float*>(found_inf),
                        reinterpret_cast<const double*>(grad_coef)};
    if (!lr_on_device.is_none()) {
        lr_holder = py::cast<py::array_t<std::int64_t, py::array::c_style>>(lr_on_device);
        if (lr_holder.ndim() != 1 || lr_holder.shape(0) != n_groups) {
            throw py::value_error("lr_on_device must hold one address (or 0) per group");
        }
        in.lr_on_device = lr_holder.data();
    }
    return in;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() =
        "pylr's CUDA kernels: multi-tensor SGD, Adam and AdamW steps and the gradient norm over "
        "pointer tables (no torch inside). Use pylr.cuda.";
    using namespace pybind11::literals;
    m.def(
        "device_count",
        [] {
            const char* error = nullptr;
            const int n = cuda::device_count(&error);
            return py::make_tuple(n, error == nullptr ? py::object(py::none()) : py::str(error));
        },
        "(count, None) or (0, the runtime's reason): the CUDA devices this module can use.");
    m.attr("RUNTIME_VERSION") = cuda::runtime_version();
#ifdef PYLR_CUDA_ARCHITECTURES
    m.attr("ARCHITECTURES") = PYLR_CUDA_ARCHITECTURES;
#endif
    m.attr("CHUNK_ELEMENTS") = cuda::kChunkElements;
    m.attr("BLOCK_THREADS") = cuda::kBlockThreads;
    m.attr("ADAM_SLOTS") = cuda::kAdamSlots;
    m.attr("SGD_SLOTS") = cuda::kSgdSlots;
    m.def(
        "adam_step",
        [](Table& table, Groups& groups, const py::object& lr_on_device, std::uintptr_t grad_scale,
           std::uintptr_t found_inf, std::uintptr_t grad_coef, std::intptr_t stream, int device) {
            py::array_t<std::int64_t, py::array::c_style> holder;
            const cuda::StepInputs in =
                step_inputs(table, groups, optim::kAdamGroupColumns, lr_on_device, grad_scale,
                            found_inf, grad_coef, holder);
            const char* error;
            {
                py::gil_scoped_release release;
                error = cuda::adam_step(in, stream, device);
            }
            raise_on(error);
        },
        py::arg("table").noconvert(), py::arg("groups").noconvert(), "lr_on_device"_a,
        "grad_scale"_a, "found_inf"_a, "grad_coef"_a, "stream"_a, "device"_a,
        "One Adam/AdamW step over a pointer table of device tensors, on `stream`: step counters "
        "(device float32) incremented, then the update; skipped on the device when *found_inf.");
    m.def(
        "sgd_step",
        [](Table& table, Groups& groups, const py::object& lr_on_device, std::uintptr_t grad_scale,
           std::uintptr_t found_inf, std::uintptr_t grad_coef, std::intptr_t stream, int device) {
            py::array_t<std::int64_t, py::array::c_style> holder;
            const cuda::StepInputs in =
                step_inputs(table, groups, optim::kSgdGroupColumns, lr_on_device, grad_scale,
                            found_inf, grad_coef, holder);
            const char* error;
            {
                py::gil_scoped_release release;
                error = cuda::sgd_step(in, stream, device);
            }
            raise_on(error);
            // the new buffers are filled (pylr.optim launches a step that fills new buffers only
            // once it has read found_inf clear)
            optim::clear_filled_first_steps(table.mutable_data(), table.shape(0), groups.data());
        },
        py::arg("table").noconvert(), py::arg("groups").noconvert(), "lr_on_device"_a,
        "grad_scale"_a, "found_inf"_a, "grad_coef"_a, "stream"_a, "device"_a,
        "One SGD step over a pointer table of device tensors, on `stream`.");
    m.def(
        "norm_partials",
        [](Table& table) {
            check_table(table);
            return cuda::norm_blocks(table.data(), table.shape(0), cuda::kNormLimits);
        },
        py::arg("table").noconvert(), "How many doubles grad_norm's partials need.");
    m.def(
        "grad_norm",
        [](Table& table, int kind, double p, std::uintptr_t partials, std::int64_t n_partials,
           std::uintptr_t out, std::intptr_t stream, int device) {
            check_table(table);
            if (kind < 0 || kind > static_cast<int>(optim::NormKind::P)) {
                throw py::value_error("unknown norm kind");
            }
            if (n_partials < cuda::norm_blocks(table.data(), table.shape(0), cuda::kNormLimits)) {
                throw py::value_error("partials must hold norm_partials(table) doubles");
            }
            const std::int64_t* t = table.data();
            const std::int64_t n = table.shape(0);
            const char* error;
            {
                py::gil_scoped_release release;
                error = cuda::grad_norm(t, n, kind, p, reinterpret_cast<double*>(partials),
                                        reinterpret_cast<double*>(out), stream, device);
            }
            raise_on(error);
        },
        py::arg("table").noconvert(), "kind"_a, "p"_a, "partials"_a, "n_partials"_a, "out"_a,
        "stream"_a, "device"_a,
        "The norm of all the table's grads (in double) written to the device double at `out`.");
    m.def(
        "copy",
        [](std::uintptr_t dst, std::uintptr_t src, std::int64_t n_bytes, std::intptr_t stream,
           int device) {
            if (dst % 16 != 0 || src % 16 != 0 || n_bytes % 16 != 0 || n_bytes < 0) {
                throw py::value_error("copy needs 16-byte aligned addresses and a multiple of 16 "
                                      "bytes");
            }
            const char* error;
            {
                py::gil_scoped_release release;
                error = cuda::copy_bytes(reinterpret_cast<void*>(dst),
                                         reinterpret_cast<const void*>(src), n_bytes, stream,
                                         device);
            }
            raise_on(error);
        },
        "dst"_a, "src"_a, "n_bytes"_a, "stream"_a, "device"_a,
        "A plain streaming copy of n_bytes (the benchmarks' bandwidth roofline).");
}
