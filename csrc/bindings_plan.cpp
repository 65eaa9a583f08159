// The proof behind every cached step plan: before a step reuses its pointer table, each cached
// fact is read again from the live Python objects and compared — param and grad data pointers,
// element counts and strides; state tensors by identity and data pointer. A mismatch answers
// "not current" and Python rebuilds the plan with its full checks and error messages; nothing
// here raises for a bad tensor.
//
// It runs once per step over every tensor of the step, so it is written against Python's C API:
// torch's own methods (data_ptr, numel, stride, grad, dtype, is_cpu) are looked up once as
// descriptors and called directly. No torch header is included; torch is only a Python module
// here. Identities are held as weak references and pointers as integers, so a proof keeps no
// tensor alive: a grad, a state tensor or a parameter dropped by the user is freed at once.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "optim/cpu.hpp"

namespace py = pybind11;

namespace {

using pylr::optim::kColGrad;
using pylr::optim::kColNumel;
using pylr::optim::kColParam;
using pylr::optim::kTableColumns;

// How the tensors of a table column are proved current.
enum class Proof : int {
    None = 0,   // no tensor in this column
    Param = 1,  // identity, data pointer, element count, strides
    Grad = 2,   // data pointer (refreshed when it moved), element count, strides, dtype, device
    State = 3,  // identity and data pointer
};

// torch.Tensor's descriptors, looked up on first use; all strong references, never released
// (torch outlives every plan).
struct TensorApi {
    PyTypeObject* tensor_type = nullptr;
    PyObject* data_ptr = nullptr;  // method descriptors, called with the tensor as the only arg
    PyObject* numel = nullptr;
    PyObject* stride = nullptr;
    PyObject* grad = nullptr;  // getset descriptors
    PyObject* dtype = nullptr;
    PyObject* is_cpu = nullptr;
};

const TensorApi& tensor_api() {
    static TensorApi api = [] {
        TensorApi a;
        py::object tensor = py::module_::import("torch").attr("Tensor");
        a.tensor_type = reinterpret_cast<PyTypeObject*>(tensor.inc_ref().ptr());
        // on the class, a method or property is its descriptor itself
        auto descriptor = [&](const char* name) {
            return py::object(tensor.attr(name)).release().ptr();
        };
        a.data_ptr = descriptor("data_ptr");
        a.numel = descriptor("numel");
        a.stride = descriptor("stride");
        a.grad = descriptor("grad");
        a.dtype = descriptor("dtype");
        a.is_cpu = descriptor("is_cpu");
        return a;
    }();
    return api;
}

// method(self) through the method descriptor's vectorcall: no attribute lookup on the instance.
inline PyObject* call_method(PyObject* method, PyObject* self) {
    return PyObject_Vectorcall(method, &self, 1, nullptr);
}

// descriptor.__get__(self): the attribute without an instance-dict lookup.
inline PyObject* get_attribute(PyObject* descriptor, PyObject* self) {
    return Py_TYPE(descriptor)->tp_descr_get(descriptor, self,
                                             reinterpret_cast<PyObject*>(Py_TYPE(self)));
}

// The object a weak reference points to (borrowed), or null when it is gone.
inline PyObject* referent(PyObject* ref) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject* obj = nullptr;
    if (PyWeakref_GetRef(ref, &obj) != 1) return nullptr;
    Py_DECREF(obj);  // still referenced by its owner, which the caller holds
    return obj;
#else
    PyObject* obj = PyWeakref_GetObject(ref);
    return obj == Py_None ? nullptr : obj;
#endif
}

// A new reference to an int result as int64, or a Python error.
bool read_int(PyObject* result, std::int64_t* out) {
    if (result == nullptr) return false;
    const long long v = PyLong_AsLongLong(result);
    Py_DECREF(result);
    if (v == -1 && PyErr_Occurred()) return false;
    *out = static_cast<std::int64_t>(v);
    return true;
}

// data_ptr() as int64 (an address is below 2**63 on every platform pylr supports).
bool read_pointer(PyObject* t, std::int64_t* out) {
    PyObject* r = call_method(tensor_api().data_ptr, t);
    if (r == nullptr) return false;
    void* p = PyLong_AsVoidPtr(r);
    Py_DECREF(r);
    if (p == nullptr && PyErr_Occurred()) return false;
    *out = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(p));
    return true;
}

class PlanProof {
  public:
    // columns[c][r]: the tensor of row r in table column c (or None); proofs[c]: its Proof kind.
    // state_keys[c]: for the optimizer, the state-dict key column c is read from (or None).
    // all_params: every parameter of every group, in order (the optimizer) — params without a
    // row must still have no grad at the next step; None for the functional API.
    PlanProof(const py::array_t<std::int64_t, py::array::c_style>& table, const py::list& columns,
              const std::vector<int>& proofs, const py::list& state_keys,
              const py::object& all_params)
        : n_rows_(table.shape(0)), n_cols_(static_cast<int>(py::len(columns))) {
        const TensorApi& api = tensor_api();
        if (table.ndim() != 2 || table.shape(1) != kTableColumns) {
            throw py::value_error("table must have shape (n, TABLE_COLUMNS)");
        }
        if (static_cast<int>(proofs.size()) != n_cols_ ||
            static_cast<int>(py::len(state_keys)) != n_cols_) {
            throw py::value_error("one proof kind and one state key per column");
        }
        for (int c = 0; c < n_cols_; ++c) {
            proofs_.push_back(static_cast<Proof>(proofs[c]));
            py::handle key = state_keys[c];
            keys_.push_back(key.is_none() ? py::object() : py::reinterpret_borrow<py::object>(key));
        }
        refs_.assign(static_cast<std::size_t>(n_rows_ * n_cols_), py::object());
        strides_.resize(static_cast<std::size_t>(n_rows_));
        dtypes_.resize(static_cast<std::size_t>(n_rows_));
        for (int c = 0; c < n_cols_; ++c) {
            py::list column = columns[c];
            if (static_cast<std::int64_t>(py::len(column)) != n_rows_) {
                throw py::value_error("every column needs one entry per row");
            }
            for (std::int64_t r = 0; r < n_rows_; ++r) {
                py::handle t = column[static_cast<std::size_t>(r)];
                if (t.is_none() || proofs_[c] == Proof::Grad || proofs_[c] == Proof::None) continue;
                refs_[index(r, c)] = py::reinterpret_steal<py::object>(PyWeakref_NewRef(t.ptr(), nullptr));
                if (!refs_[index(r, c)]) throw py::error_already_set();
                if (proofs_[c] == Proof::Param) {
                    strides_[r] = py::reinterpret_steal<py::object>(call_method(api.stride, t.ptr()));
                    dtypes_[r] = py::reinterpret_steal<py::object>(get_attribute(api.dtype, t.ptr()));
                    if (!strides_[r] || !dtypes_[r]) throw py::error_already_set();
                    if (!all_params.is_none()) row_of_param_[t.ptr()] = r;
                }
            }
        }
        if (!all_params.is_none()) {
            for (py::handle p : py::list(all_params)) {
                const auto it = row_of_param_.find(p.ptr());
                row_of_all_.push_back(it == row_of_param_.end() ? -1 : it->second);
            }
            for (int c = 0; c < n_cols_; ++c) {
                if (proofs_[c] == Proof::State && keys_[c]) state_cols_.push_back(c);
            }
        }
    }

    // The functional API: current[c] is this call's list for column c (None where absent).
    // Returns whether the table is current; refreshes grad pointers that moved.
    bool verify(py::array_t<std::int64_t, py::array::c_style>& table, const py::list& current) {
        if (!same_shape(table) || static_cast<int>(py::len(current)) != n_cols_) return false;
        std::int64_t* rows = table.mutable_data();
        std::vector<PyObject*> lists(static_cast<std::size_t>(n_cols_), nullptr);
        for (int c = 0; c < n_cols_; ++c) {
            PyObject* list = PyList_Check(current[c].ptr()) ? current[c].ptr() : nullptr;
            if (proofs_[c] != Proof::None && list == nullptr) return false;
            if (list != nullptr && PyList_GET_SIZE(list) != n_rows_) return false;
            lists[c] = list;
        }
        for (std::int64_t r = 0; r < n_rows_; ++r) {
            std::int64_t* row = rows + r * kTableColumns;
            for (int c = 0; c < n_cols_; ++c) {
                if (lists[c] == nullptr) continue;
                PyObject* t = PyList_GET_ITEM(lists[c], r);
                if (!prove(r, c, t, row)) return fail();
            }
        }
        return true;
    }

    // The optimizer: all_params as at construction, the optimizer's `state` dict. Grads are read
    // from the params, state tensors from state[param][key].
    bool verify_optimizer(py::array_t<std::int64_t, py::array::c_style>& table,
                          const py::list& all_params, const py::handle& state) {
        if (!same_shape(table) || static_cast<std::size_t>(py::len(all_params)) != row_of_all_.size()) {
            return false;
        }
        std::int64_t* rows = table.mutable_data();
        const TensorApi& api = tensor_api();
        for (std::size_t j = 0; j < row_of_all_.size(); ++j) {
            PyObject* p = PyList_GET_ITEM(all_params.ptr(), static_cast<Py_ssize_t>(j));
            const std::int64_t r = row_of_all_[j];
            PyObject* g = get_attribute(api.grad, p);
            if (g == nullptr) return fail();
            const bool has_grad = g != Py_None;
            bool ok = true;
            if (r < 0) {
                ok = !has_grad;  // a param that gained a grad needs a row
            } else {
                std::int64_t* row = rows + r * kTableColumns;
                ok = has_grad && prove(r, kColParam, p, row) && prove(r, kColGrad, g, row);
            }
            Py_DECREF(g);
            if (!ok) return fail();
        }
        if (state_cols_.empty()) return true;
        // every row's state, found by walking the dict (a Tensor key hashes in Python)
        if (!PyDict_Check(state.ptr())) return false;
        std::int64_t found = 0;
        Py_ssize_t pos = 0;
        PyObject *key = nullptr, *value = nullptr;
        while (PyDict_Next(state.ptr(), &pos, &key, &value)) {
            const auto it = row_of_param_.find(key);
            if (it == row_of_param_.end()) continue;
            const std::int64_t r = it->second;
            if (!row_has_state(r)) continue;
            if (!PyDict_Check(value)) return false;
            std::int64_t* row = rows + r * kTableColumns;
            for (int c : state_cols_) {
                if (!refs_[index(r, c)]) continue;
                PyObject* t = PyDict_GetItemWithError(value, keys_[c].ptr());  // borrowed
                if (t == nullptr || !prove(r, c, t, row)) return fail();
            }
            ++found;
        }
        return found == rows_with_state();
    }

  private:
    std::size_t index(std::int64_t r, int c) const {
        return static_cast<std::size_t>(r * n_cols_ + c);
    }

    bool same_shape(const py::array_t<std::int64_t, py::array::c_style>& table) const {
        return table.ndim() == 2 && table.shape(0) == n_rows_ && table.shape(1) == kTableColumns;
    }

    // A Python error met while reading (a sparse tensor has no data pointer, ...) only means
    // "not current": Python's full checks will raise the real message.
    static bool fail() {
        PyErr_Clear();
        return false;
    }

    bool row_has_state(std::int64_t r) const {
        for (int c : state_cols_) {
            if (refs_[index(r, c)]) return true;
        }
        return false;
    }

    std::int64_t rows_with_state() {
        if (rows_with_state_ < 0) {
            rows_with_state_ = 0;
            for (std::int64_t r = 0; r < n_rows_; ++r) rows_with_state_ += row_has_state(r);
        }
        return rows_with_state_;
    }

    // Element count and strides equal to the row's parameter as the plan saw it.
    bool same_layout(std::int64_t r, PyObject* t, const std::int64_t* row) const {
        std::int64_t n = 0;
        if (!read_int(call_method(tensor_api().numel, t), &n) || n != row[kColNumel]) return false;
        if (n <= 1) return true;  // strides of a tensor of one element do not matter
        PyObject* s = call_method(tensor_api().stride, t);
        if (s == nullptr) return false;
        const int eq = PyObject_RichCompareBool(s, strides_[static_cast<std::size_t>(r)].ptr(), Py_EQ);
        Py_DECREF(s);
        return eq == 1;
    }

    bool prove(std::int64_t r, int c, PyObject* t, std::int64_t* row) {
        const Proof kind = proofs_[c];
        if (kind == Proof::None) return t == Py_None;
        if (kind == Proof::Param || kind == Proof::State) {
            PyObject* ref = refs_[index(r, c)].ptr();
            if (ref == nullptr) return t == Py_None;
            if (referent(ref) != t) return false;  // replaced (or gone)
            std::int64_t ptr = 0;
            if (!read_pointer(t, &ptr) || ptr != row[c]) return false;
            return kind == Proof::State || same_layout(r, t, row);
        }
        // a grad: often a new tensor each step (zero_grad(set_to_none=True)); its pointer is
        // taken over once it is shown to have the parameter's layout, dtype and device
        if (t == Py_None) return false;
        std::int64_t ptr = 0;
        if (!read_pointer(t, &ptr) || !same_layout(r, t, row)) return false;
        if (ptr != row[c]) {
            const TensorApi& api = tensor_api();
            if (Py_TYPE(t) != api.tensor_type) return false;  // a subclass: the full checks
            if (ptr == 0 && row[kColNumel] > 0) return false;
            PyObject* dtype = get_attribute(api.dtype, t);
            if (dtype == nullptr) return false;
            const bool same_dtype = dtype == dtypes_[static_cast<std::size_t>(r)].ptr();
            Py_DECREF(dtype);
            PyObject* cpu = get_attribute(api.is_cpu, t);
            if (cpu == nullptr) return false;
            const bool on_cpu = cpu == Py_True;
            Py_DECREF(cpu);
            if (!same_dtype || !on_cpu) return false;
            row[c] = ptr;
        }
        return true;
    }

    std::int64_t n_rows_;
    int n_cols_;
    std::vector<Proof> proofs_;
    std::vector<py::object> keys_;     // state-dict key per column (null where none)
    std::vector<py::object> refs_;     // weak references, n_rows x n_cols (null where none)
    std::vector<py::object> strides_;  // each row's parameter strides (a tuple)
    std::vector<py::object> dtypes_;   // each row's parameter dtype
    std::unordered_map<PyObject*, std::int64_t> row_of_param_;  // params are held by the plan
    std::vector<std::int64_t> row_of_all_;  // all_params[j] -> row, or -1 without a grad
    std::vector<int> state_cols_;
    std::int64_t rows_with_state_ = -1;
};

}  // namespace

void bind_plan(py::module_& m) {
    py::enum_<Proof>(m, "Proof", "How the tensors of a table column are proved current.")
        .value("NONE", Proof::None)
        .value("PARAM", Proof::Param)
        .value("GRAD", Proof::Grad)
        .value("STATE", Proof::State);
    py::class_<PlanProof>(m, "PlanProof",
                          "The facts a pointer table was built from, re-read before each step.")
        .def(py::init<const py::array_t<std::int64_t, py::array::c_style>&, const py::list&,
                      const std::vector<int>&, const py::list&, const py::object&>(),
             py::arg("table"), py::arg("columns"), py::arg("proofs"), py::arg("state_keys"),
             py::arg("all_params"))
        .def("verify", &PlanProof::verify, py::arg("table").noconvert(), py::arg("current"),
             "Whether the table is current for this call's tensor lists (grad pointers are "
             "refreshed).")
        .def("verify_optimizer", &PlanProof::verify_optimizer, py::arg("table").noconvert(),
             py::arg("all_params"), py::arg("state"),
             "Whether the table is current for these params' grads and the optimizer state.");
}
