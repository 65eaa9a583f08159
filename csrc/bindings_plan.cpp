// The proof behind every cached step plan: before a step reuses its pointer table, each cached
// fact is read again from the live Python objects and compared — param and grad data pointers,
// element counts and strides; state tensors by identity and data pointer. A mismatch answers
// "not current" and Python rebuilds the plan with its full checks and error messages; nothing
// here raises for a bad tensor.
//
// It runs once per step over every tensor of the step, right after the previous step streamed
// the whole model through the caches, so its cost is cache misses on torch's objects (a tensor's
// PyObject, TensorImpl and StorageImpl) more than instructions. Hence each tensor is visited
// once (a param with its grad in the pass over the groups, the states in the walk over the state
// dict), the lines torch will read for the rows ahead prefetched, and identities compared as
// addresses: a weak-reference callback marks the proof stale the moment a tracked object dies,
// so an address is never mistaken for a new object at the same place.
//
// Tensors are read only through Python's C API and torch's public methods and properties
// (data_ptr, nbytes, stride, is_contiguous, is_neg, grad, dtype, get_device, _version, _cdata),
// looked up once as descriptors: no torch header is included. The proof holds no strong
// reference to any tensor, so a grad, a state tensor or a parameter dropped by the user is
// freed at once.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "optim/cpu.hpp"

namespace py = pybind11;

namespace {

using pylr::optim::kColGrad;
using pylr::optim::kColNumel;
using pylr::optim::kColParam;
using pylr::optim::kColStep;
using pylr::optim::kTableColumns;

// How the tensors of a table column are proved current.
enum class Proof : int {
    None = 0,   // no tensor in this column
    Param = 1,  // identity, data pointer, element count, strides
    Grad = 2,   // data pointer (refreshed when it moved), element count, strides, dtype, device
    State = 3,  // identity and data pointer
};

// A method or property of torch.Tensor, called with the tensor as its only argument: through the
// C function behind its descriptor where CPython's descriptor would call just that (a method
// taking no arguments, or only optional ones, or a getter), after the same type check; else
// through the descriptor. ~36,000 calls a step at 4000 params: the direct call saves CPython's
// dispatch (~10 ns) on each.
struct Accessor {
    PyObject* descriptor = nullptr;  // a strong reference, never released (torch outlives plans)
    PyTypeObject* owner = nullptr;   // the class that defines it (self must be an instance)
    PyCFunction noargs = nullptr;    // METH_NOARGS
    PyCFunctionWithKeywords with_keywords = nullptr;  // METH_VARARGS | METH_KEYWORDS, given none
    getter get = nullptr;            // a getset descriptor's getter, with its closure
    void* closure = nullptr;
};

// torch.Tensor's accessors, looked up on first use.
struct TensorApi {
    PyTypeObject* tensor_type = nullptr;
    PyObject* no_args = nullptr;  // ()
    Accessor data_ptr;  // methods
    Accessor stride;
    Accessor is_contiguous;
    Accessor get_device;
    Accessor is_neg;
    Accessor grad;  // properties
    Accessor nbytes;
    Accessor dtype;
    Accessor version;  // _version: autograd's count of in-place changes
};

const TensorApi& tensor_api() {
    static TensorApi api = [] {
        TensorApi a;
        py::object tensor = py::module_::import("torch").attr("Tensor");
        a.tensor_type = reinterpret_cast<PyTypeObject*>(tensor.inc_ref().ptr());
        a.no_args = PyTuple_New(0);
        // on the class, a method or property is its descriptor itself
        auto accessor = [&](const char* name) {
            Accessor x;
            x.descriptor = py::object(tensor.attr(name)).release().ptr();
            if (Py_IS_TYPE(x.descriptor, &PyMethodDescr_Type)) {
                auto* d = reinterpret_cast<PyMethodDescrObject*>(x.descriptor);
                const int flags = d->d_method->ml_flags & ~METH_COEXIST;
                x.owner = PyDescr_TYPE(d);
                if (flags == METH_NOARGS) {
                    x.noargs = d->d_method->ml_meth;
                } else if (flags == (METH_VARARGS | METH_KEYWORDS)) {
                    x.with_keywords =
                        reinterpret_cast<PyCFunctionWithKeywords>(
                            reinterpret_cast<void (*)()>(d->d_method->ml_meth));
                }
            } else if (Py_IS_TYPE(x.descriptor, &PyGetSetDescr_Type)) {
                auto* d = reinterpret_cast<PyGetSetDescrObject*>(x.descriptor);
                x.owner = PyDescr_TYPE(d);
                x.get = d->d_getset->get;
                x.closure = d->d_getset->closure;
            }
            return x;
        };
        a.data_ptr = accessor("data_ptr");
        a.stride = accessor("stride");
        a.is_contiguous = accessor("is_contiguous");
        a.get_device = accessor("get_device");
        a.is_neg = accessor("is_neg");
        a.grad = accessor("grad");
        a.nbytes = accessor("nbytes");
        a.dtype = accessor("dtype");
        a.version = accessor("_version");
        return a;
    }();
    return api;
}

// method(self), answered as a call through its descriptor would be: a new reference, or null
// with a Python error set.
inline PyObject* call_method(const Accessor& m, PyObject* self) {
    if (m.owner != nullptr && PyObject_TypeCheck(self, m.owner)) {
        if (m.noargs != nullptr) return m.noargs(self, nullptr);
        if (m.with_keywords != nullptr) return m.with_keywords(self, tensor_api().no_args, nullptr);
    }
    return PyObject_Vectorcall(m.descriptor, &self, 1, nullptr);
}

// self.property, as the descriptor's __get__ answers it (no instance-dict lookup).
inline PyObject* get_attribute(const Accessor& p, PyObject* self) {
    if (p.get != nullptr && PyObject_TypeCheck(self, p.owner)) return p.get(self, p.closure);
    return Py_TYPE(p.descriptor)->tp_descr_get(p.descriptor, self,
                                               reinterpret_cast<PyObject*>(Py_TYPE(self)));
}

// A new reference to an int result as int64, or false with a Python error set.
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

// Where torch keeps a tensor's metadata (TensorImpl) and its storage's (StorageImpl), as
// reported by `_cdata`: prefetch hints only, never dereferenced here.
struct Lines {
    const void* impl = nullptr;
    const void* storage = nullptr;
};

const void* address_of(PyObject* obj) {
    PyObject* v = PyObject_GetAttrString(obj, "_cdata");
    void* p = v != nullptr && PyLong_Check(v) ? PyLong_AsVoidPtr(v) : nullptr;
    Py_XDECREF(v);
    PyErr_Clear();
    return p;
}

Lines lines_of(PyObject* t) {
    Lines l;
    l.impl = address_of(t);
    PyObject* storage = PyObject_CallMethod(t, "untyped_storage", nullptr);
    if (storage != nullptr) {
        l.storage = address_of(storage);
        Py_DECREF(storage);
    }
    PyErr_Clear();
    return l;
}

// How many rows ahead a pass prefetches the objects it is about to read: the objects of one
// row sit on pages far apart (each tensor's data lies between them), beyond the hardware
// prefetchers' reach.
constexpr std::int64_t kPrefetchAhead = 8;

// Where in torch's objects the fields sit that the proof's first reads load. data_ptr():
// TensorImpl + 0x10 its storage pointer, + 0xa0 its dtype, offset and element count;
// StorageImpl + 0x10 the data pointer, + 0x3b the flags it checks. p.grad: the grad's TensorImpl
// + 0x30, where it finds the grad's PyObject (on another line than + 0x10 for three alignments
// in four). Found in torch 2.13's THPVariable_data_ptr and THPVariable_Wrap (perf annotate: their
// stalls were the loads at + 0xa0, + 0x3b and + 0x30). Measured cold at 4000 params x 4096 (A/B
// in alternating processes): proof 3.4-5.2 -> 2.1-2.5 ms with the data_ptr() lines, 2.5-3.0 ->
// 2.3-2.6 ms with the grad's. Each object's first lines instead (the earlier hint), or one line
// more, measured slower, and so did the same prefetches issued from a loop the compiler kept.
// Another torch's layout costs only speed: a hint is never dereferenced.
constexpr std::ptrdiff_t kImplStorage = 0x10;
constexpr std::ptrdiff_t kImplDtype = 0xa0;
constexpr std::ptrdiff_t kImplPyObject = 0x30;
constexpr std::ptrdiff_t kStorageData = 0x10;
constexpr std::ptrdiff_t kStorageFlags = 0x3b;

inline void prefetch(const void* p) {
    if (p != nullptr) __builtin_prefetch(p);
}

class PlanProof {
  public:
    // columns[c][r]: the tensor of row r in table column c (or None); proofs[c]: its Proof kind.
    // state_keys[c]: for the optimizer, the state-dict key column c is read from (or None).
    // group_params: each group's list of parameters, in order (the optimizer) — the groups
    // must hold the very same params at the next step, and params without a row must still
    // have no grad; None for the functional API. state: the optimizer's state dict as it is
    // now (its order is the order expected next time), or None.
    //
    // owners: for the optimizer, the param each row belongs to as the optimizer holds it, and
    // wrapped[r]: row r's tensors are the local shards (`_local_tensor`) of what the optimizer
    // holds — a DTensor param, its DTensor grad and states — so the proof unwraps them first.
    PlanProof(const py::array_t<std::int64_t, py::array::c_style>& table, const py::list& columns,
              const std::vector<int>& proofs, const py::list& state_keys,
              const py::object& group_params, const py::object& state, const py::object& owners,
              const std::vector<bool>& wrapped)
        : n_rows_(table.shape(0)),
          n_cols_(static_cast<int>(py::len(columns))),
          dead_(std::make_shared<bool>(false)) {
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
            if (proofs_[c] == Proof::State && !key.is_none()) state_cols_.push_back(c);
        }
        // the optimizer's layout, which verify_optimizer reads: the param and its grad, then
        // state columns read from the state dict by key (or columns without tensors)
        if (!group_params.is_none()) {
            bool layout = n_cols_ > kColGrad && proofs_[kColParam] == Proof::Param &&
                          proofs_[kColGrad] == Proof::Grad;
            for (int c = kColGrad + 1; layout && c < n_cols_; ++c) {
                layout = proofs_[c] == Proof::None || (proofs_[c] == Proof::State && keys_[c]);
            }
            if (!layout) {
                throw py::value_error(
                    "an optimizer's columns are its param, its grad, then keyed state columns");
            }
        }
        // a tracked object's death marks the proof stale (the callback holds only the flag)
        std::shared_ptr<bool> dead = dead_;
        on_death_ = py::cpp_function([dead](py::handle) { *dead = true; });
        const auto cells = static_cast<std::size_t>(n_rows_ * n_cols_);
        objects_.assign(cells, nullptr);
        lines_.assign(cells, Lines{});
        last_grad_.assign(static_cast<std::size_t>(n_rows_), nullptr);
        itemsize_.assign(static_cast<std::size_t>(n_rows_), 0);
        contiguous_.assign(static_cast<std::size_t>(n_rows_), false);
        dtypes_.assign(static_cast<std::size_t>(n_rows_), nullptr);
        devices_.assign(static_cast<std::size_t>(n_rows_), -1);
        stride_start_.assign(static_cast<std::size_t>(n_rows_) + 1, 0);
        for (int c = 0; c < n_cols_; ++c) {
            py::list column = columns[c];
            if (static_cast<std::int64_t>(py::len(column)) != n_rows_) {
                throw py::value_error("every column needs one entry per row");
            }
        }
        for (std::int64_t r = 0; r < n_rows_; ++r) {
            for (int c = 0; c < n_cols_; ++c) {
                PyObject* t = py::list(columns[c])[static_cast<std::size_t>(r)].ptr();
                if (t == Py_None || proofs_[c] == Proof::None) continue;
                lines_[index(r, c)] = lines_of(t);
                if (proofs_[c] == Proof::Grad) continue;  // grads are not tracked by identity
                watch(t);
                objects_[index(r, c)] = t;
                note_written(t);
                if (proofs_[c] == Proof::Param) {
                    py::handle p(t);
                    py::object s = py::reinterpret_steal<py::object>(call_method(api.stride, t));
                    py::object d = py::reinterpret_steal<py::object>(get_attribute(api.dtype, t));
                    if (!s || !d) throw py::error_already_set();
                    for (py::handle v : py::tuple(s)) strides_.push_back(v.cast<std::int64_t>());
                    dtypes_[r] = d.ptr();  // dtypes are immortal singletons
                    if (!read_int(call_method(api.get_device, t), &devices_[r])) {
                        throw py::error_already_set();
                    }
                    itemsize_[r] = p.attr("element_size")().cast<std::int64_t>();
                    contiguous_[r] = p.attr("is_contiguous")().cast<bool>();
                    if (!group_params.is_none()) {
                        PyObject* owner = t;
                        if (!owners.is_none()) {
                            owner = py::list(owners)[static_cast<std::size_t>(r)].ptr();
                        }
                        row_of_param_[owner] = r;
                    }
                }
            }
            stride_start_[static_cast<std::size_t>(r) + 1] = strides_.size();
        }
        wrapped_.assign(static_cast<std::size_t>(n_rows_), false);
        if (!wrapped.empty()) {
            if (static_cast<std::int64_t>(wrapped.size()) != n_rows_) {
                throw py::value_error("one wrapped flag per row");
            }
            for (std::int64_t r = 0; r < n_rows_; ++r) wrapped_[r] = wrapped[r];
        }
        if (!group_params.is_none()) {
            for (py::handle group : py::list(group_params)) {
                const auto params = py::reinterpret_borrow<py::list>(group);
                group_sizes_.push_back(static_cast<Py_ssize_t>(py::len(params)));
                for (py::handle p : params) {
                    const auto it = row_of_param_.find(p.ptr());
                    all_params_.push_back(p.ptr());
                    row_of_all_.push_back(it == row_of_param_.end() ? -1 : it->second);
                }
            }
        }
        std::sort(written_.begin(), written_.end());
        for (std::int64_t r = 0; r < n_rows_; ++r) rows_with_state_ += row_has_state(r);
        if (!state.is_none() && PyDict_Check(state.ptr())) {
            // the state dict's order now: next time the same keys come in the same order
            Py_ssize_t pos = 0;
            PyObject *key = nullptr, *value = nullptr;
            while (PyDict_Next(state.ptr(), &pos, &key, &value)) {
                const auto it = row_of_param_.find(key);
                expected_keys_.push_back(key);
                expected_rows_.push_back(it == row_of_param_.end() ? -1 : it->second);
            }
        }
    }

    // The functional API: current[c] is this call's list for column c (None where absent).
    // Returns whether the table is current; refreshes grad pointers that moved.
    bool verify(py::array_t<std::int64_t, py::array::c_style>& table, const py::list& current) {
        if (*dead_ || !same_shape(table) || static_cast<int>(py::len(current)) != n_cols_) {
            return false;
        }
        current_.assign(static_cast<std::size_t>(n_rows_ * n_cols_), nullptr);
        held_.clear();
        for (int c = 0; c < n_cols_; ++c) {
            PyObject* list = current[static_cast<std::size_t>(c)].ptr();
            if (!PyList_Check(list) || PyList_GET_SIZE(list) != n_rows_) return false;
            for (std::int64_t r = 0; r < n_rows_; ++r) hold(index(r, c), PyList_GET_ITEM(list, r));
        }
        return release(prove_all(table.mutable_data()));
    }

    // The optimizer: its `param_groups` (each group's "params" must be the list of the very
    // params it held at construction) and its `state` dict. Grads are read from the params,
    // state tensors from state[param][key].
    bool verify_optimizer(py::array_t<std::int64_t, py::array::c_style>& table,
                          const py::handle& param_groups, const py::handle& state) {
        if (*dead_ || !same_shape(table) || !PyList_Check(param_groups.ptr()) ||
            PyList_GET_SIZE(param_groups.ptr()) != static_cast<Py_ssize_t>(group_sizes_.size())) {
            return false;
        }
        std::int64_t* rows = table.mutable_data();
        const TensorApi& api = tensor_api();
        current_.assign(static_cast<std::size_t>(n_rows_ * n_cols_), nullptr);
        held_.clear();
        // the groups hold the same params (compared by address: the plan references them)
        static PyObject* params_key = PyUnicode_InternFromString("params");
        std::size_t k = 0;
        for (std::size_t gi = 0; gi < group_sizes_.size(); ++gi) {
            PyObject* group = PyList_GET_ITEM(param_groups.ptr(), static_cast<Py_ssize_t>(gi));
            if (!PyDict_Check(group)) return false;
            PyObject* params = PyDict_GetItemWithError(group, params_key);  // borrowed
            if (params == nullptr) return fail();
            if (!PyList_Check(params) || PyList_GET_SIZE(params) != group_sizes_[gi]) return false;
            for (Py_ssize_t i = 0; i < group_sizes_[gi]; ++i, ++k) {
                if (PyList_GET_ITEM(params, i) != all_params_[k]) return false;
            }
        }
        // One pass over the params, in the groups' order: a param without a row must have no
        // grad, a row's param must have one, and the row's param and grad are proved while their
        // objects are at hand (each tensor's metadata lies on a page of its own: visiting it once
        // a step, not once per column, halves the TLB and cache misses of a cold proof). Reading
        // p.grad walks the param's PyObject, TensorImpl and autograd metadata to the grad's
        // TensorImpl and PyObject: the ones of the params ahead are prefetched (the grad as it
        // was last time: a hint, never dereferenced here).
        const std::size_t n_all = row_of_all_.size();
        for (std::size_t j = 0; j < n_all; ++j) {
            if (j + kPrefetchAhead < n_all) {
                const std::size_t ahead = j + kPrefetchAhead;
                prefetch(all_params_[ahead]);
                const std::int64_t ra = row_of_all_[ahead];
                if (ra >= 0) {
                    prefetch_tensor(index(ra, kColParam));
                    prefetch_tensor(index(ra, kColGrad));
                    prefetch_grad_object(index(ra, kColGrad));
                    prefetch(last_grad_[static_cast<std::size_t>(ra)]);
                }
            }
            PyObject* p = all_params_[j];
            const std::int64_t r = row_of_all_[j];
            PyObject* g = get_attribute(api.grad, p);
            if (g == nullptr) return release(fail());
            held_.push_back(py::reinterpret_steal<py::object>(g));
            if ((g == Py_None) != (r < 0)) return release(false);
            if (r < 0) continue;
            if (wrapped_[r]) {  // the shards the table points into
                p = unwrap(p);
                g = unwrap(g);
                if (p == nullptr || g == nullptr) return release(fail());
            }
            hold(index(r, kColParam), p);
            current_[index(r, kColGrad)] = g;
            last_grad_[static_cast<std::size_t>(r)] = g;
            std::int64_t* row = rows + r * kTableColumns;
            if (!prove(r, kColParam, p, row) || !prove(r, kColGrad, g, row)) {
                return release(fail());
            }
        }
        // the states (every other column: see the constructor), proved as the state dict's walk
        // finds them
        if (rows_with_state_ > 0 && !collect_state(state, rows)) return release(fail());
        return release(true);
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

    // Every row, each of its columns in turn (current_ holds this step's tensors): a row's
    // objects visited together, the rows ahead prefetched.
    bool prove_all(std::int64_t* rows) {
        for (std::int64_t r = 0; r < n_rows_; ++r) {
            if (r + kPrefetchAhead < n_rows_) {
                for (int c = 0; c < n_cols_; ++c) {
                    if (proofs_[static_cast<std::size_t>(c)] == Proof::None) continue;
                    const std::size_t ahead = index(r + kPrefetchAhead, c);
                    prefetch(current_[ahead]);
                    prefetch_tensor(ahead);
                }
            }
            for (int c = 0; c < n_cols_; ++c) {
                if (!prove(r, c, current_[index(r, c)], rows + r * kTableColumns)) return fail();
            }
        }
        return true;
    }

    // The lines of a cell's TensorImpl and StorageImpl (as the plan saw them) that data_ptr()
    // reads (see kImplStorage).
    void prefetch_tensor(std::size_t cell) const {
        const Lines& l = lines_[cell];
        if (l.impl != nullptr) {
            const char* impl = static_cast<const char*>(l.impl);
            __builtin_prefetch(impl + kImplStorage);
            __builtin_prefetch(impl + kImplDtype);
        }
        if (l.storage != nullptr) {
            const char* storage = static_cast<const char*>(l.storage);
            __builtin_prefetch(storage + kStorageData);
            __builtin_prefetch(storage + kStorageFlags);
        }
    }

    // The line of a grad's TensorImpl where p.grad finds the grad's PyObject.
    void prefetch_grad_object(std::size_t cell) const {
        const Lines& l = lines_[cell];
        if (l.impl != nullptr) __builtin_prefetch(static_cast<const char*>(l.impl) + kImplPyObject);
    }

    // A DTensor's local shard (a new reference, kept in held_), or null with an error set.
    PyObject* unwrap(PyObject* t) {
        static PyObject* name = PyUnicode_InternFromString("_local_tensor");
        PyObject* local = PyObject_GetAttr(t, name);
        if (local != nullptr) held_.push_back(py::reinterpret_steal<py::object>(local));
        return local;
    }

    // This call's tensors stay referenced while it reads them: a torch function mode could run
    // Python code inside any of torch's methods.
    void hold(std::size_t cell, PyObject* t) {
        current_[cell] = t;
        held_.push_back(py::reinterpret_borrow<py::object>(t));
    }

    // Drops this call's references. A tracked object that died meanwhile (Python code run by
    // a torch method — a torch function mode, a subclass — dropped the last other reference,
    // or dropping ours did) means the table is not current, whatever the proof found.
    bool release(bool result) {
        held_.clear();
        return result && !*dead_;
    }

    void watch(PyObject* t) {
        PyObject* ref = PyWeakref_NewRef(t, on_death_.ptr());
        if (ref == nullptr) throw py::error_already_set();
        watches_.push_back(py::reinterpret_steal<py::object>(ref));
    }

    // The memory the step writes (params and states: proved unmoved before each step), as
    // sorted disjoint [begin, end) spans — a rebuild refuses overlaps among them.
    void note_written(PyObject* t) {
        std::int64_t ptr = 0, bytes = 0;
        if (!read_pointer(t, &ptr) || !read_int(get_attribute(tensor_api().nbytes, t), &bytes)) {
            throw py::error_already_set();
        }
        if (bytes > 0) written_.emplace_back(ptr, ptr + bytes);
    }

    // Whether [begin, begin + bytes) shares memory with what the step writes.
    bool overlaps_written(std::int64_t begin, std::int64_t bytes) const {
        if (bytes <= 0) return false;
        const std::int64_t end = begin + bytes;
        // the last span starting before `end` is the only one that can reach past `begin`
        auto it = std::lower_bound(written_.begin(), written_.end(),
                                   std::make_pair(end, std::int64_t{0}));
        return it != written_.begin() && std::prev(it)->second > begin;
    }

    bool row_has_state(std::int64_t r) const {
        for (int c : state_cols_) {
            if (objects_[index(r, c)] != nullptr) return true;
        }
        return false;
    }

    // The row of the state dict's k-th entry `key`: by position while the order seen at
    // construction holds, through the lookup table where it does not (-1: not a row's param).
    std::int64_t row_of_state_entry(std::size_t k, PyObject* key) const {
        if (k < expected_keys_.size() && key == expected_keys_[k]) return expected_rows_[k];
        const auto it = row_of_param_.find(key);
        return it == row_of_param_.end() ? -1 : it->second;
    }

    // Every row's state tensors, found by walking the dict (a Tensor key hashes in Python) and
    // proved as they are found (identity and data pointer). A row without its state dict, or a
    // key missing, is not current.
    bool collect_state(const py::handle& state, std::int64_t* rows) {
        if (!PyDict_Check(state.ptr())) return false;
        std::int64_t found = 0;
        Py_ssize_t pos = 0;
        std::size_t k = 0;
        PyObject *key = nullptr, *value = nullptr;
        // a second cursor a few entries ahead prefetches the per-param dicts and the state
        // tensors of the row expected there
        Py_ssize_t ahead_pos = 0;
        std::size_t ahead_k = 0;
        PyObject *ahead_key = nullptr, *ahead_value = nullptr;
        // and a third, half as far ahead, the keys table of a dict the second one fetched
        Py_ssize_t near_pos = 0;
        PyObject *near_key = nullptr, *near_value = nullptr;
        auto look_ahead = [&] {
            if (PyDict_Next(state.ptr(), &ahead_pos, &ahead_key, &ahead_value)) {
                prefetch(ahead_value);
                if (ahead_k < expected_keys_.size() && ahead_key == expected_keys_[ahead_k] &&
                    expected_rows_[ahead_k] >= 0) {
                    for (int c : state_cols_) {
                        const std::size_t cell = index(expected_rows_[ahead_k], c);
                        prefetch(objects_[cell]);
                        prefetch_tensor(cell);
                    }
                }
                ++ahead_k;
            }
        };
        auto look_near = [&] {
            if (PyDict_Next(state.ptr(), &near_pos, &near_key, &near_value) &&
                PyDict_CheckExact(near_value)) {
                const void* keys = reinterpret_cast<PyDictObject*>(near_value)->ma_keys;
                prefetch(keys);
                prefetch(static_cast<const char*>(keys) + 64);
            }
        };
        for (std::int64_t i = 0; i < kPrefetchAhead / 2; ++i) look_near();
        for (std::int64_t i = 0; i < kPrefetchAhead; ++i) look_ahead();
        while (PyDict_Next(state.ptr(), &pos, &key, &value)) {
            look_ahead();
            look_near();
            const std::int64_t r = row_of_state_entry(k++, key);
            if (r < 0 || !row_has_state(r)) continue;
            if (!PyDict_Check(value)) return false;
            // the row's dict stays referenced while its tensors are read: a torch method may run
            // Python code that drops it from the state
            held_.push_back(py::reinterpret_borrow<py::object>(value));
            std::int64_t* row = rows + r * kTableColumns;
            for (int c : state_cols_) {
                if (objects_[index(r, c)] == nullptr) continue;
                PyObject* t = PyDict_GetItemWithError(value, keys_[c].ptr());  // borrowed
                if (t != nullptr && wrapped_[r] && c != kColStep) t = unwrap(t);  // step is plain
                if (t == nullptr) return false;
                hold(index(r, c), t);
                if (!prove(r, c, t, row)) return false;
            }
            ++found;
        }
        return found == rows_with_state_;
    }

    // The row's layout as the plan saw it, beyond one element: contiguity where the parameter
    // was contiguous (with equal sizes, the same element order), its strides otherwise.
    bool same_order(std::int64_t r, PyObject* t, const std::int64_t* row) const {
        if (row[kColNumel] <= 1) return true;  // the strides of one element do not matter
        if (contiguous_[static_cast<std::size_t>(r)]) {
            PyObject* c = call_method(tensor_api().is_contiguous, t);
            if (c == nullptr) return false;
            Py_DECREF(c);
            return c == Py_True;
        }
        PyObject* s = call_method(tensor_api().stride, t);
        if (s == nullptr) return false;
        const std::size_t begin = stride_start_[static_cast<std::size_t>(r)];
        const std::size_t dims = stride_start_[static_cast<std::size_t>(r) + 1] - begin;
        bool same = PyTuple_Check(s) && static_cast<std::size_t>(PyTuple_GET_SIZE(s)) == dims;
        for (std::size_t d = 0; same && d < dims; ++d) {
            const long long v = PyLong_AsLongLong(PyTuple_GET_ITEM(s, static_cast<Py_ssize_t>(d)));
            same = v == strides_[begin + d];
        }
        Py_DECREF(s);
        return same;
    }

    // The row's size in bytes as the plan saw it (element count times element size).
    bool same_size(std::int64_t r, PyObject* t, const std::int64_t* row) const {
        std::int64_t bytes = 0;
        return read_int(get_attribute(tensor_api().nbytes, t), &bytes) &&
               bytes == row[kColNumel] * itemsize_[static_cast<std::size_t>(r)];
    }

    // A param: the same object, data pointer, size and order. A state tensor: the same object
    // and data pointer. A grad (often a new tensor each step, after zero_grad(set_to_none=True)):
    // the parameter's order, and where its data pointer moved, the parameter's size, dtype and
    // device (the CPU or the param's CUDA device), no negative bit and no overlap with memory
    // the step writes, before the table takes the new pointer over. (A new grad object at the
    // old address has the parameter's size, dtype and device: torch checks them when a grad is
    // assigned, and the parameter's size is proved just before.)
    bool prove(std::int64_t r, int c, PyObject* t, std::int64_t* row) {
        const Proof kind = proofs_[static_cast<std::size_t>(c)];
        if (kind == Proof::None) return t == nullptr || t == Py_None;
        if (kind == Proof::Param || kind == Proof::State) {
            PyObject* cached = objects_[index(r, c)];
            if (cached == nullptr) return t == nullptr || t == Py_None;  // no tensor here
            if (t != cached) return false;  // replaced (a dead one has marked the proof stale)
            std::int64_t ptr = 0;
            if (!read_pointer(t, &ptr) || ptr != row[c]) return false;
            return kind == Proof::State || (same_size(r, t, row) && same_order(r, t, row));
        }
        if (t == nullptr || t == Py_None) return false;
        std::int64_t ptr = 0;
        if (!read_pointer(t, &ptr) || !same_order(r, t, row)) return false;
        if (ptr != row[c]) {
            const TensorApi& api = tensor_api();
            if (Py_TYPE(t) != api.tensor_type) return false;  // a subclass: the full checks
            if (!same_size(r, t, row) || (ptr == 0 && row[kColNumel] > 0)) return false;
            PyObject* dtype = get_attribute(api.dtype, t);
            if (dtype == nullptr) return false;
            const bool same_dtype = dtype == dtypes_[static_cast<std::size_t>(r)];
            Py_DECREF(dtype);
            std::int64_t device = 0;
            if (!read_int(call_method(api.get_device, t), &device)) return false;
            if (!same_dtype || device != devices_[static_cast<std::size_t>(r)]) return false;
            PyObject* neg = call_method(api.is_neg, t);  // a negative view reads as -g
            if (neg == nullptr) return false;
            Py_DECREF(neg);
            if (neg != Py_False) return false;
            // a grad that is (part of) a param or a state would be read while it is written
            if (overlaps_written(ptr, row[kColNumel] * itemsize_[static_cast<std::size_t>(r)])) {
                return false;
            }
            row[c] = ptr;
        }
        return true;
    }

    std::int64_t n_rows_;
    int n_cols_;
    std::shared_ptr<bool> dead_;  // set when a tracked object dies
    py::object on_death_;
    std::vector<py::object> watches_;  // weak references with on_death_ as callback
    std::vector<Proof> proofs_;
    std::vector<py::object> keys_;    // state-dict key per column (null where none)
    std::vector<int> state_cols_;
    std::vector<PyObject*> objects_;  // n_rows x n_cols tracked identities (no references)
    std::vector<PyObject*> current_;  // this verify's tensors, n_rows x n_cols
    std::vector<PyObject*> last_grad_;  // each row's grad at the last verify (a prefetch hint)
    std::vector<py::object> held_;    // and the references that keep them alive meanwhile
    std::vector<Lines> lines_;        // n_rows x n_cols prefetch hints
    std::vector<PyObject*> dtypes_;   // each row's parameter dtype
    std::vector<std::int64_t> devices_;  // and device (get_device(): -1 for the CPU)
    std::vector<std::int64_t> itemsize_;  // each row's element size in bytes
    std::vector<bool> contiguous_;    // each row's parameter is contiguous
    std::vector<bool> wrapped_;       // each row's tensors are DTensors' local shards
    std::vector<std::int64_t> strides_;       // each row's parameter strides, concatenated
    std::vector<std::size_t> stride_start_;   // row r's strides: [start[r], start[r + 1])
    std::unordered_map<PyObject*, std::int64_t> row_of_param_;  // params are held by the plan
    std::vector<Py_ssize_t> group_sizes_;     // each group's number of params
    std::vector<PyObject*> all_params_;       // every group's params, in order (held by the plan)
    std::vector<std::int64_t> row_of_all_;    // all_params_[j] -> row, or -1 without a grad
    std::int64_t rows_with_state_ = 0;
    // the state dict as it was: key and its row (or -1), by position
    std::vector<PyObject*> expected_keys_;
    std::vector<std::int64_t> expected_rows_;
    std::vector<std::pair<std::int64_t, std::int64_t>> written_;  // see note_written
};

// The grads a pending clip_grad_norm_ coefficient was computed for: each param's grad object
// (a weak reference: nothing is kept alive) and its version counter. The coefficient belongs to
// exactly those grads as they were; `compare` tells whether they still are the grads.
class GradMark {
  public:
    static constexpr int kSame = 0;     // every param has the marked grad, unmodified
    static constexpr int kGone = 1;     // no param has its marked grad any more
    static constexpr int kChanged = 2;  // anything else: modified in place, or some replaced

    explicit GradMark(const py::list& params) {
        const TensorApi& api = tensor_api();
        for (const py::handle& p : params) {
            py::object grad = py::reinterpret_steal<py::object>(get_attribute(api.grad, p.ptr()));
            if (!grad) throw py::error_already_set();
            Entry e;
            e.param = weak(p.ptr());
            if (!grad.is_none()) {
                e.grad = weak(grad.ptr());
                if (!read_int(get_attribute(api.version, grad.ptr()), &e.version)) {
                    throw py::error_already_set();
                }
                e.pointer = pointer_or_none(grad.ptr());
            }
            entries_.push_back(std::move(e));
        }
    }

    int compare(const py::list& params) const {
        const TensorApi& api = tensor_api();
        std::size_t same = 0, gone = 0;
        const bool same_params = static_cast<std::size_t>(py::len(params)) == entries_.size();
        std::size_t i = 0;
        for (const Entry& e : entries_) {
            const py::object p = e.param();  // None once dead
            if (same_params && p.ptr() != params[i].ptr()) return kChanged;  // other params
            ++i;
            const py::object marked = e.grad ? e.grad() : py::none();
            if (p.is_none() || marked.is_none()) {
                ++gone;
                continue;
            }
            py::object grad = py::reinterpret_steal<py::object>(get_attribute(api.grad, p.ptr()));
            if (!grad) throw py::error_already_set();
            if (!grad.is(marked)) {
                ++gone;
                continue;
            }
            std::int64_t version = 0;
            if (!read_int(get_attribute(api.version, marked.ptr()), &version)) {
                throw py::error_already_set();
            }
            if (version == e.version && pointer_or_none(marked.ptr()) == e.pointer) ++same;
        }
        if (same_params && same == entries_.size()) return kSame;
        if (gone == entries_.size()) return kGone;
        return kChanged;
    }

  private:
    struct Entry {
        py::object param;  // weak references
        py::object grad;   // null where the param had no grad
        std::int64_t version = 0;
        std::int64_t pointer = -1;  // its data pointer (.data = moves it without a new version)
    };

    // data_ptr(), or -1 where the tensor has none to give (a DTensor grad, ...): then only
    // identity and version tell.
    static std::int64_t pointer_or_none(PyObject* t) {
        std::int64_t ptr = 0;
        if (read_pointer(t, &ptr)) return ptr;
        PyErr_Clear();
        return -1;
    }

    static py::object weak(PyObject* obj) {
        PyObject* ref = PyWeakref_NewRef(obj, nullptr);
        if (ref == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(ref);
    }

    std::vector<Entry> entries_;
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
                      const std::vector<int>&, const py::list&, const py::object&,
                      const py::object&, const py::object&, const std::vector<bool>&>(),
             py::arg("table"), py::arg("columns"), py::arg("proofs"), py::arg("state_keys"),
             py::arg("group_params"), py::arg("state"), py::arg("owners") = py::none(),
             py::arg("wrapped") = std::vector<bool>{})
        .def("verify", &PlanProof::verify, py::arg("table").noconvert(), py::arg("current"),
             "Whether the table is current for this call's tensor lists (grad pointers are "
             "refreshed).")
        .def("verify_optimizer", &PlanProof::verify_optimizer, py::arg("table").noconvert(),
             py::arg("param_groups"), py::arg("state"),
             "Whether the table is current for these params' grads and the optimizer state.");
    py::class_<GradMark>(m, "GradMark",
                         "The grads a clip_grad_norm_ coefficient belongs to (weakly held).")
        .def(py::init<const py::list&>(), py::arg("params"))
        .def("compare", &GradMark::compare, py::arg("params"),
             "SAME: these params hold the marked grads unmodified; GONE: none does; CHANGED: "
             "anything else.")
        .def_property_readonly_static("SAME", [](py::object) { return GradMark::kSame; })
        .def_property_readonly_static("GONE", [](py::object) { return GradMark::kGone; })
        .def_property_readonly_static("CHANGED", [](py::object) { return GradMark::kChanged; });
}
