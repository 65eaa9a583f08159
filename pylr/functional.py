"""Functional fused optimizer steps for hot loops: tensor lists in, one C++ call.

``sgd_``, ``adam_`` and ``adamw_`` update every tensor in place (params, states, step counters)
with the same math as ``torch.optim`` (``foreach=False``) in one multi-threaded SIMD pass. The
tensor checks and the pointer table are cached: a call whose tensors are the same objects as the
previous call's (the usual hot loop) skips straight to the C++ step.

Adam, per element (``t`` = the step counter after its increment)::

    g = -grad if maximize else grad            (grad * (1 / grad_scale) under AMP)
    AdamW: p *= 1 - lr * wd;  Adam: g += wd * p
    m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
    v_hat = max(v_max, v) if amsgrad else v
    p -= lr / (1 - beta1**t) * m / (sqrt(v_hat) / sqrt(1 - beta2**t) + eps)

SGD, per element::

    g = (-grad if maximize else grad) + wd * p
    buf = g on the first step, else momentum * buf + (1 - dampening) * g
    g = g + momentum * buf if nesterov else buf          (when momentum != 0)
    p -= lr * g
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pylr import _core

__all__ = ["adam_", "adamw_", "sgd_"]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}

# Table columns; must match TableColumn in csrc/optim/cpu.hpp.
COL_PARAM, COL_GRAD, COL_STATE0, COL_STATE1, COL_STATE2, COL_STEP = range(6)
COL_NUMEL, COL_DTYPE, COL_GROUP, COL_OFFSET, COL_FIRST = range(6, 11)
assert _core.TABLE_COLUMNS == 11

_is = operator.is_


def _is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers exactly ``numel`` elements of its storage, in any dim order."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def check_tensor(name: str, t: Any, like: torch.Tensor | None = None, what: str = "") -> None:
    """Raise a clear error unless ``t`` is a tensor pylr's CPU kernels can update in place.

    ``like`` is the parameter that ``t`` (a gradient or state) must match in shape, dtype, device
    and layout.
    """
    label = f"{name}{what}"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_sparse or t.layout != torch.strided:
        raise RuntimeError(f"{label} is sparse; pylr's optimizers support dense tensors only")
    if t.is_complex():
        raise TypeError(f"{label} is complex ({t.dtype}); pylr's optimizers support real tensors")
    if t.dtype not in DTYPE_CODES:
        raise TypeError(
            f"{label} has dtype {t.dtype}; pylr's optimizers support float32, float64, "
            "bfloat16 and float16"
        )
    if t.device.type != "cpu":
        raise RuntimeError(
            f"{label} is on {t.device}; this pylr build updates CPU tensors only (no CUDA "
            "extension)"
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
    if t.dtype != like.dtype:
        raise TypeError(f"{label} has dtype {t.dtype}, the parameter {like.dtype}")
    if t.numel() > 1 and t.stride() != like.stride():
        raise ValueError(
            f"{label} has strides {t.stride()} but the parameter has {like.stride()}; pylr "
            "updates element i of each with element i of the other, so their layouts must "
            "match (make both contiguous)"
        )


def check_hyper(name: str, value: Any, *, low: float = 0.0, high: float | None = None) -> float:
    """A finite float in [low, high) (high exclusive), or a ValueError naming it."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        value = value.item()
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name} value: {v} (must be finite)")
    if v < low or (high is not None and v >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"Invalid {name} value: {v} (must be {bound})")
    return v


def adam_group_row(
    lr: Any,
    betas: tuple[Any, Any],
    eps: Any,
    weight_decay: Any,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    *,
    beta_names: tuple[str, str] = ("betas[0]", "betas[1]"),
) -> list[float]:
    """One checked row of Adam scalars, in csrc/optim/cpu.hpp's AdamGroupColumn order."""
    return [
        check_hyper("lr", lr),
        check_hyper(beta_names[0], betas[0], high=1.0),
        check_hyper(beta_names[1], betas[1], high=1.0),
        check_hyper("eps", eps),
        check_hyper("weight_decay", weight_decay),
        float(bool(amsgrad)),
        float(bool(maximize)),
        float(bool(decoupled)),
    ]


def sgd_group_row(
    lr: Any, momentum: Any, dampening: Any, weight_decay: Any, nesterov: bool, maximize: bool
) -> list[float]:
    """One checked row of SGD scalars, in csrc/optim/cpu.hpp's SgdGroupColumn order."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return [
        check_hyper("lr", lr),
        check_hyper("momentum", momentum),
        check_hyper("dampening", dampening, low=-math.inf),
        check_hyper("weight_decay", weight_decay),
        float(bool(nesterov)),
        float(bool(maximize)),
    ]


def scalar_ptr(t: torch.Tensor | None, name: str) -> int:
    """Address of AMP's 0-d float32 grad_scale / found_inf tensor (0 for None)."""
    if t is None:
        return 0
    if not isinstance(t, torch.Tensor) or t.numel() != 1 or t.device.type != "cpu":
        raise ValueError(f"{name} must be a 1-element CPU tensor")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    return t.data_ptr()


class PointerTable:
    """The int64 table the C++ step reads: one row of pointers and sizes per tensor.

    Built from validated tensor lists; ``matches`` tells, cheaply, whether a new call passes the
    very same tensors (same objects, same storage) so the table can be reused as is.
    """

    __slots__ = ("columns", "numel", "param_ptrs", "table", "written")

    def __init__(
        self,
        columns: Sequence[Sequence[torch.Tensor | None]],
        group_of_row: Sequence[int],
        first_step: Sequence[bool] | None = None,
    ) -> None:
        params = columns[0]
        n = len(params)
        table = np.zeros((n, _core.TABLE_COLUMNS), dtype=np.int64)
        offset = 0
        for i, p in enumerate(params):
            for col, tensors in enumerate(columns):
                t = tensors[i]
                table[i, col] = 0 if t is None else t.data_ptr()
            numel = p.numel()
            table[i, COL_NUMEL] = numel
            table[i, COL_DTYPE] = DTYPE_CODES[p.dtype]
            table[i, COL_GROUP] = group_of_row[i]
            table[i, COL_OFFSET] = offset
            table[i, COL_FIRST] = 1 if first_step is not None and first_step[i] else 0
            offset += numel
        self.table = table
        self.numel = offset  # elements in the step
        self.columns = [list(c) for c in columns]
        self.param_ptrs = [p.data_ptr() for p in params]
        # what the step writes, for autograd's version counters (the grads are read only)
        self.written = [
            t for c, ts in enumerate(self.columns) if c != COL_GRAD for t in ts if t is not None
        ]

    def matches(self, columns: Sequence[Sequence[torch.Tensor | None]]) -> bool:
        """Same tensor objects in every column, and no parameter's storage swapped since."""
        for mine, theirs in zip(self.columns, columns, strict=True):
            if len(mine) != len(theirs) or not all(map(_is, mine, theirs)):
                return False
        return [p.data_ptr() for p in self.columns[0]] == self.param_ptrs


def build_columns_checked(
    names: Sequence[str], columns: Sequence[Sequence[torch.Tensor | None]], labels: Sequence[str]
) -> None:
    """Validate every tensor of every column against its parameter (column 0)."""
    params = columns[0]
    for col, tensors in enumerate(columns):
        if len(tensors) != len(params):
            raise ValueError(f"{names[col]} has {len(tensors)} tensors for {len(params)} params")
    for i, p in enumerate(params):
        check_tensor(labels[i], p)
        for col in range(1, len(columns)):
            t = columns[col][i]
            if t is None:
                continue
            if names[col] == "state_steps":
                if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.numel() != 1:
                    raise TypeError(f"state_steps[{i}] must be a 1-element float32 tensor")
                if t.device.type != "cpu":
                    raise RuntimeError(f"state_steps[{i}] is on {t.device}, not the CPU")
                continue
            check_tensor(labels[i], t, like=p, what=f": {names[col]}")


_ADAM_COLUMNS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps")
_SGD_COLUMNS = ("params", "grads", "momentum_buffer_list")


class _Cache:
    """The last call's table, reused while the same tensors come back."""

    __slots__ = ("plan",)

    def __init__(self) -> None:
        self.plan: PointerTable | None = None


_adam_cache = _Cache()
_sgd_cache = _Cache()


def _adam_table(columns: list[list[Any]]) -> PointerTable:
    plan = _adam_cache.plan
    if plan is not None and plan.matches(columns):
        return plan
    labels = [f"params[{i}]" for i in range(len(columns[0]))]
    build_columns_checked(_ADAM_COLUMNS, columns, labels)
    plan = PointerTable(columns, [0] * len(columns[0]))
    _adam_cache.plan = plan
    return plan


def adam_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor] | None,
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> bool:
    """One Adam step over all tensors, in place; the formula is in the module docstring.

    ``state_steps`` are 1-element float32 tensors (torch's ``state["step"]``), incremented here.
    ``max_exp_avg_sqs`` is needed only with ``amsgrad``. Returns False when AMP's ``found_inf`` is
    set, in which case nothing (step counters included) was modified.
    """
    groups = np.array(
        [
            adam_group_row(
                lr,
                (beta1, beta2),
                eps,
                weight_decay,
                amsgrad,
                maximize,
                decoupled_weight_decay,
                beta_names=("beta1", "beta2"),
            )
        ],
        dtype=np.float64,
    )
    if amsgrad and max_exp_avg_sqs is None:
        raise ValueError("amsgrad=True needs max_exp_avg_sqs")
    n = len(params)
    columns = [
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        list(max_exp_avg_sqs) if amsgrad and max_exp_avg_sqs is not None else [None] * n,
        list(state_steps),
    ]
    plan = _adam_table(columns)
    ok = _core.adam_step(
        plan.table, groups, scalar_ptr(grad_scale, "grad_scale"), scalar_ptr(found_inf, "found_inf")
    )
    if ok:
        torch._C._increment_version(plan.written)
    return ok


def adamw_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor] | None,
    state_steps: Sequence[torch.Tensor],
    *,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> bool:
    """One AdamW step (Adam with decoupled weight decay ``p *= 1 - lr * weight_decay``)."""
    return adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=True,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )


def sgd_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_buffer_list: list[torch.Tensor | None],
    *,
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> bool:
    """One SGD step over all tensors, in place; the formula is in the module docstring.

    With ``momentum != 0``, a ``None`` in ``momentum_buffer_list`` gets a new buffer (written into
    the list, as torch's functional ``sgd`` does) that takes the gradient on this first step.
    Returns False when AMP's ``found_inf`` is set (nothing modified).
    """
    groups = np.array(
        [sgd_group_row(lr, momentum, dampening, weight_decay, nesterov, maximize)],
        dtype=np.float64,
    )
    n = len(params)
    if len(momentum_buffer_list) != n:
        raise ValueError(
            f"momentum_buffer_list has {len(momentum_buffer_list)} entries for {n} params"
        )
    uses_buffers = momentum != 0
    fresh = [uses_buffers and b is None for b in momentum_buffer_list]
    columns = [
        list(params),
        list(grads),
        list(momentum_buffer_list) if uses_buffers else [None] * n,
    ]
    plan = _sgd_cache.plan
    if any(fresh) or plan is None or not plan.matches(columns):
        labels = [f"params[{i}]" for i in range(n)]
        build_columns_checked(_SGD_COLUMNS, columns, labels)
        if any(fresh):
            for i, p in enumerate(params):
                if fresh[i]:
                    momentum_buffer_list[i] = torch.empty_like(p)
            columns[2] = list(momentum_buffer_list)
        plan = PointerTable(columns, [0] * n, first_step=fresh)
        _sgd_cache.plan = plan
    ok = _core.sgd_step(
        plan.table, groups, scalar_ptr(grad_scale, "grad_scale"), scalar_ptr(found_inf, "found_inf")
    )
    if ok:
        torch._C._increment_version(plan.written)
    return ok
