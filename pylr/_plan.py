"""The step plan: the pointer table a fused step hands to C++, and its proof.

A fused step is fast because its table — one row of data pointers and sizes per tensor — is built
once and reused. Reuse is only safe while every fact the table holds is still true, so the table
carries a proof (:class:`pylr._core.PlanProof`) that re-reads those facts before every step:

- parameters and gradients: data pointer, element count and strides;
- optimizer state (``exp_avg``, ``momentum_buffer``, ``step`` ...): identity and data pointer;
- a gradient that is a new tensor (as after ``zero_grad(set_to_none=True)``) is taken over once it
  shows the parameter's layout, dtype and device.

A table's tensors are all on one device: the CPU (``pylr._core`` steps them) or one CUDA device
(``pylr._cuda`` does, through :func:`backend_for`); the table itself always lives in host memory,
and the CUDA launcher builds its kernels' metadata from it.

When anything differs the table is rebuilt from scratch through :func:`check_columns`, which
raises an error naming the offending tensor before anything is modified. The proof holds weak
references and integers only, so a plan keeps no tensor alive between steps.

This module is the one place where tensors are checked and tables are built, for ``pylr.optim``
and ``pylr.functional`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pylr import _core

__all__ = [
    "DTYPE_CODES",
    "PointerTable",
    "Proof",
    "backend_for",
    "check_columns",
    "check_tensor",
]

# dtype codes, read from the C++ core (csrc/optim/kernel_api.hpp's DType)
DTYPE_CODES = {
    torch.float32: _core.DTYPE_FLOAT32,
    torch.float64: _core.DTYPE_FLOAT64,
    torch.bfloat16: _core.DTYPE_BFLOAT16,
    torch.float16: _core.DTYPE_FLOAT16,
}
# the dtypes optimizer state may have beside a parameter's own: float32 for half parameters,
# bfloat16 for float32 and float16 ones (float64 parameters keep float64 state)
STATE_DTYPES = {
    torch.float32: (torch.float32, torch.bfloat16),
    torch.float64: (torch.float64,),
    torch.bfloat16: (torch.bfloat16, torch.float32),
    torch.float16: (torch.float16, torch.float32, torch.bfloat16),
}

# table columns, read from the C++ core (csrc/optim/cpu.hpp's TableColumn)
COL_PARAM = _core.COL_PARAM
COL_GRAD = _core.COL_GRAD
COL_STATE0 = _core.COL_STATE0
COL_STEP = _core.COL_STEP
COL_NUMEL = _core.COL_NUMEL
COL_DTYPE = _core.COL_DTYPE
COL_GROUP = _core.COL_GROUP
COL_OFFSET = _core.COL_OFFSET
COL_FIRST = _core.COL_FIRST
COL_STATE_DTYPE = _core.COL_STATE_DTYPE
COL_SALT = _core.COL_SALT

Proof = _core.Proof

_is_subclass_like = torch._C._dispatch_isTensorSubclassLike
_functorch = getattr(torch._C, "_functorch", None)


def _is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers exactly ``numel`` elements of its storage, in any dim order."""
    if t.numel() == 0:
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _not_plain_memory(t: torch.Tensor) -> str | None:
    """Why the C++ kernels cannot update ``t`` through its data pointer, or None."""
    if _is_subclass_like(t):
        name = type(t).__name__
        if name == "DTensor":
            return (
                "is a DTensor (a parameter sharded by FSDP2 or tensor parallelism); pylr's "
                "functional steps update plain tensors only (pylr.optim steps DTensors' shards)"
            )
        return (
            f"is a {type(t).__module__}.{name}, a tensor subclass whose data is not plain memory; "
            "pylr's optimizers update plain tensors only"
        )
    if _functorch is not None and _functorch.is_functorch_wrapped_tensor(t):
        return "is wrapped by a functorch transform (vmap/grad); pylr's step runs outside autograd"
    if t.is_neg():
        return "has its negative bit set (a lazy negation); call .resolve_neg() first"
    if t.is_inference() and not torch.is_inference_mode_enabled():
        return "is an inference tensor; it cannot be updated in place outside InferenceMode"
    n = t.numel()
    if n == 0:
        return None
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    needed = (t.storage_offset() + extent) * t.element_size()
    have = t.untyped_storage().nbytes()
    if t.data_ptr() == 0 or have < needed:
        return (
            f"has storage of {have} bytes for {n} elements needing {needed} (its storage was "
            "freed or resized)"
        )
    return None


def backend_for(device: torch.device, label: str = "a tensor") -> Any:
    """Who steps tensors on ``device``: None for the CPU (``pylr._core``), else the CUDA backend
    (``pylr.cuda``), or a RuntimeError naming ``label`` that says what to do when this build or
    machine cannot."""
    if device.type == "cpu":
        return None
    from pylr import cuda

    return cuda.backend(label, device)


def _check_device(label: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise RuntimeError(
            f"{label} is on {t.device}; pylr's optimizers update CPU and CUDA tensors only"
        )


def check_tensor(label: str, t: Any, like: torch.Tensor | None = None, state: bool = False) -> None:
    """Raise a clear error naming ``label`` unless ``t`` is a tensor pylr's kernels can update in
    place: plain, dense, real floating point, on the CPU or a CUDA device, with enough storage.

    ``like`` is the parameter that ``t`` (a gradient or, with ``state``, optimizer state) must
    match in shape, device and layout, and in dtype — a state may also have one of
    ``STATE_DTYPES[like.dtype]``.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_sparse or t.layout != torch.strided:
        raise RuntimeError(f"{label} is sparse; pylr's optimizers support dense tensors only")
    _check_device(label, t)
    if like is not None and t.device != like.device:
        raise ValueError(
            f"{label} is on {t.device} but its parameter on {like.device}; a parameter's grad "
            "and state must be on its device"
        )
    why = _not_plain_memory(t)
    if why is not None:
        raise TypeError(f"{label} {why}")
    if t.is_complex():
        raise TypeError(f"{label} is complex ({t.dtype}); pylr's optimizers support real tensors")
    if t.dtype not in DTYPE_CODES:
        raise TypeError(
            f"{label} has dtype {t.dtype}; pylr's optimizers support float32, float64, "
            "bfloat16 and float16"
        )
    if like is None:
        if not _is_dense(t):
            raise ValueError(
                f"{label} is not dense (strides {t.stride()} for shape {tuple(t.shape)}); "
                "pass a contiguous tensor"
            )
        return
    if t.shape != like.shape:
        raise ValueError(f"{label} has shape {tuple(t.shape)}, the parameter {tuple(like.shape)}")
    if t.dtype != like.dtype and not (state and t.dtype in STATE_DTYPES[like.dtype]):
        allowed = STATE_DTYPES[like.dtype] if state else (like.dtype,)
        names = " or ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(
            f"{label} has dtype {t.dtype}; for a {like.dtype} parameter it must be {names}"
        )
    if t.numel() > 1 and t.stride() != like.stride():
        raise ValueError(
            f"{label} has strides {t.stride()} but the parameter has {like.stride()}; pylr "
            "updates element i of each with element i of the other, so their layouts must "
            "match (make both contiguous)"
        )


def check_step_counter(label: str, t: Any, device: torch.device) -> None:
    """A state ``step``: a 1-element float32 tensor of plain memory on ``device`` (its param's:
    the CPU, or the CUDA device whose kernels increment it)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.numel() != 1:
        raise TypeError(f"{label} must be a 1-element float32 tensor")
    if t.device != device:
        raise ValueError(f"{label} is on {t.device}, not on its parameter's device {device}")
    why = _not_plain_memory(t)
    if why is not None:
        raise TypeError(f"{label} {why}")


def check_columns(
    names: Sequence[str],
    columns: Sequence[Sequence[torch.Tensor | None]],
    labels: Sequence[str],
    steps: Sequence[bool] | None = None,
    required: Sequence[bool] | None = None,
) -> None:
    """Validate every tensor of every column against its parameter (column 0), then that no
    memory is written twice in one step (or read where another tensor is written).

    ``steps[c]`` marks a column of step counters; ``required[c]`` a column whose entries may not
    be None (elsewhere None means "no tensor here"). Every tensor must be on the first
    parameter's device (one step runs on one device), and a CUDA device needs this build's CUDA
    kernels. Raises before anything is modified.
    """
    params = columns[0]
    for col, tensors in enumerate(columns):
        if len(tensors) != len(params):
            raise ValueError(f"{names[col]} has {len(tensors)} tensors for {len(params)} params")
    device = None
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            check_tensor(labels[i], p)  # raises
        _check_device(labels[i], p)
        if device is None:
            device = p.device
        elif p.device != device:
            raise ValueError(
                f"{labels[i]} is on {p.device} but {labels[0]} on {device}; one pylr step "
                "updates the tensors of one device: put the parameters on one device (or use "
                "one optimizer per device)"
            )
    if device is not None:
        backend_for(device, labels[0])  # a clear error where CUDA tensors cannot be stepped
    for i, p in enumerate(params):
        check_tensor(labels[i], p)
        state_dtype = None
        for col in range(1, len(columns)):
            t = columns[col][i]
            if t is None:
                if required is not None and required[col]:
                    raise TypeError(f"{names[col]}[{i}] is None; a tensor is needed")
                continue
            label = f"{labels[i]}: {names[col]}"
            if steps is not None and steps[col]:
                check_step_counter(label, t, p.device)
                continue
            check_tensor(label, t, like=p, state=col >= 2)
            if col >= 2:
                if state_dtype is not None and t.dtype != state_dtype:
                    raise TypeError(
                        f"{label} has dtype {t.dtype} but the param's other state {state_dtype}; "
                        "a param's state tensors must share one dtype"
                    )
                state_dtype = t.dtype
    _check_no_overlap(names, columns, labels, read_only=(1,))


def _check_no_overlap(
    names: Sequence[str],
    columns: Sequence[Sequence[torch.Tensor | None]],
    labels: Sequence[str],
    read_only: Sequence[int],
) -> None:
    """Tensors the step writes must not share memory with each other or with a tensor it reads:
    their rows run on different threads. (The same parameter listed twice is the common case;
    two params reading one grad tensor are fine.)"""
    spans: dict[bool, list[tuple[int, int, int, int]]] = {True: [], False: []}
    for col, tensors in enumerate(columns):
        for i, t in enumerate(tensors):
            if t is not None and t.numel() > 0:
                start = t.data_ptr()
                end = start + t.numel() * t.element_size()
                spans[col not in read_only].append((start, end, col, i))
    if not spans[True]:
        return

    def clash(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> ValueError:
        (ca, ia), (cb, ib) = sorted([(a[2], a[3]), (b[2], b[3])])
        what = "the same tensor" if a[0] == b[0] and a[1] == b[1] else "overlapping memory"
        return ValueError(
            f"{labels[ia]}: {names[ca]} and {labels[ib]}: {names[cb]} are {what}; a step "
            "updates each tensor once, so no memory it writes may appear twice (remove the "
            "duplicate parameter, or give each its own tensor)"
        )

    written = sorted(spans[True])
    starts = np.array([w[0] for w in written])
    ends = np.array([w[1] for w in written])
    # sorted by start, a written span overlaps an earlier one iff it starts before its end
    # (ends of non-overlapping sorted spans are sorted too, so the neighbour is enough)
    bad = np.nonzero(starts[1:] < ends[:-1])[0]
    if bad.size:
        k = int(bad[0])
        raise clash(written[k], written[k + 1])
    for span in spans[False]:
        # the last written span starting before this read span ends
        j = int(np.searchsorted(starts, span[1], side="left")) - 1
        if j >= 0 and ends[j] > span[0]:
            raise clash(written[j], span)


def step_and_bump(step: Any, numel: int, bump: Any, *args: Any) -> int:
    """``step(*args)`` — ``_core.adam_step`` or ``sgd_step`` over a table of ``numel`` elements —
    and, for a step taken, ``bump()``: autograd's version counters of what it wrote. A large step
    (>= ``WAKE_MIN_ELEMENTS``) bumps them on this thread while the pool's other threads update (at
    4000 params ~0.9 ms of cold reads that no longer wait for the update); a small one after it
    (the call from C++ back into Python costs more than it hides there). ``bump`` must be a C
    function (a ``functools.partial`` of ``torch._C._increment_version``): no bytecode, and so no
    Python signal handler, may run while the pool writes."""
    overlap = numel >= _core.WAKE_MIN_ELEMENTS
    status = step(*args, while_updating=bump if overlap else None)
    if status == _core.STEP_TAKEN and not overlap:
        bump()
    return status


# lower case: it is called as a function, ``with sealed_step():``
class sealed_step:
    """The context a step's proof and C++ update run in, so that no user Python code runs between
    proving a pointer and writing through it (such code could free or swap what was just proved):

    - torch function overrides (modes, and tensor subclasses' Python ``__torch_function__``) are
      off, so none runs inside the torch methods the proof calls (``data_ptr()``, ...). A mode
      sees pylr's step as it sees a fused torch kernel: from outside.
    - the garbage collector is paused, so that no finaliser (``__del__``, a weak-reference
      callback of an object in a cycle) runs from a collection that pylr's own allocations
      trigger between the proof and the update. The pause is counted across threads (C++, under
      the GIL): the collector is back on once no thread is inside a sealed step, if it was on
      when the first began (a ``gc.disable()`` made by another thread meanwhile is undone then).

    ~0.25 us a step."""

    __slots__ = ("_torch_function",)

    def __enter__(self) -> None:
        self._torch_function = torch._C.DisableTorchFunction()
        self._torch_function.__enter__()
        _core.pause_collector()

    def __exit__(self, *exc: object) -> None:
        try:
            self._torch_function.__exit__(*exc)
        finally:  # then a finaliser due runs as it would outside the step: under any mode
            _core.resume_collector()


class PointerTable:
    """The int64 table the C++ step reads — one row of pointers and sizes per tensor — and the
    proof that it is current.

    ``columns[c][r]`` is the tensor of row ``r`` in table column ``c`` (or None), already checked
    by :func:`check_columns`; ``proofs[c]`` says how column ``c`` is proved at each step;
    ``state_keys[c]`` names the optimizer-state key column ``c`` comes from (or None);
    ``group_params`` is each param group's list of parameters and ``state`` the optimizer's
    state dict (None for the functional API); ``owners[r]`` is row ``r``'s param as the
    optimizer holds it, and ``wrapped[r]`` says the row's tensors are the local shards of
    DTensors (FSDP2, tensor parallelism): the param, grad and states the optimizer holds,
    whose ``_local_tensor`` the table points into.
    """

    __slots__ = ("backend", "device", "numel", "proof", "table")

    def __init__(
        self,
        columns: Sequence[Sequence[torch.Tensor | None]],
        group_of_row: Sequence[int],
        proofs: Sequence[Any],
        *,
        first_step: Sequence[bool] | None = None,
        salts: Sequence[int] | None = None,
        state_keys: Sequence[str | None] | None = None,
        group_params: list[list[torch.Tensor]] | None = None,
        state: dict[Any, Any] | None = None,
        owners: list[torch.Tensor] | None = None,
        wrapped: Sequence[bool] | None = None,
    ) -> None:
        params = columns[0]
        n = len(params)
        table = np.zeros((n, _core.TABLE_COLUMNS), dtype=np.int64)
        numels = [p.numel() for p in params]
        for col, tensors in enumerate(columns):
            table[:, col] = [0 if t is None else t.data_ptr() for t in tensors]
        table[:, COL_NUMEL] = numels
        table[:, COL_DTYPE] = [DTYPE_CODES[p.dtype] for p in params]
        table[:, COL_GROUP] = group_of_row
        table[:, COL_OFFSET] = np.cumsum([0, *numels[:-1]]) if n else []
        if first_step is not None:
            table[:, COL_FIRST] = first_step
        # each row's state dtype: its state tensors' (they share one; check_columns checked),
        # else the param's
        state_cols = [c for c, kind in enumerate(proofs) if kind == Proof.STATE and c != COL_STEP]
        table[:, COL_STATE_DTYPE] = [
            DTYPE_CODES[next((t for c in state_cols if (t := columns[c][i]) is not None), p).dtype]
            for i, p in enumerate(params)
        ]
        table[:, COL_SALT] = range(n) if salts is None else salts
        self.table = table
        self.numel = int(sum(numels))  # elements in the step
        # the tensors' device, and who steps them there (None: pylr._core, on the CPU)
        self.device = params[0].device if n else torch.device("cpu")
        self.backend = backend_for(self.device)
        keys = list(state_keys) if state_keys is not None else [None] * len(columns)
        self.proof = _core.PlanProof(
            table,
            [list(c) for c in columns],
            [int(p) for p in proofs],
            keys,
            group_params,
            state,
            owners,
            list(wrapped) if wrapped is not None else [],
        )

    def is_current(self, columns: list[list[Any]]) -> bool:
        """Whether the table is still right for this call's tensors (the functional API).
        Grad pointers that moved are taken over after their layout checks."""
        return self.proof.verify(self.table, columns)


def scalar_value(value: Any) -> Any:
    """A hyperparameter as the value it holds now: a tensor by its value (a scheduler may
    ``fill_`` it in place), a tuple element by element, a list (``betas`` can be one, and
    edited in place) as the tuple of its values now."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else math.nan
    if isinstance(value, np.ndarray):  # mutable too: its value now
        return value.item() if value.size == 1 else math.nan
    if type(value) is tuple or type(value) is list:
        return tuple(map(scalar_value, value))
    return value
