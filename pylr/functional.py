"""Functional fused optimizer steps for hot loops: tensor lists in, one C++ call.

``sgd_``, ``adam_`` and ``adamw_`` update every tensor in place (params, states, step counters)
with the same math as ``torch.optim`` (``foreach=False``) in one multi-threaded SIMD pass — or,
for tensors on a CUDA device, in a few multi-tensor kernel launches on torch's current stream
(``pylr.cuda``; the step counters then live on the device too). The
tensor checks and the pointer table are cached: a call whose tensors are the same objects as the
previous call's (the usual hot loop; grads may be new tensors) skips the checks, after the cached
table is proved current (each tensor's data pointer, element count and strides; see
:mod:`pylr._plan`). The cache holds weak references only: it keeps no tensor alive.

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

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pylr import _core, _plan
from pylr import _validate as _check
from pylr._plan import PointerTable, Proof, check_columns, sealed_step, step_and_bump

__all__ = ["adam_", "adamw_", "sgd_"]


def adam_group_row(
    lr: Any,
    betas: tuple[Any, Any],
    eps: Any,
    weight_decay: Any,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    stochastic_rounding: bool = False,
    rounding_seed: int = 0,
    *,
    beta_names: tuple[str, str] = ("betas[0]", "betas[1]"),
) -> list[float]:
    """One checked row of Adam scalars, each at its column (``_core.ADAM_COLUMNS``)."""
    return _row(
        _core.ADAM_COLUMNS,
        lr=_check.hyper("lr", lr),
        beta1=_check.hyper(beta_names[0], betas[0], high=1.0),
        beta2=_check.hyper(beta_names[1], betas[1], high=1.0),
        eps=_check.hyper("eps", eps),
        weight_decay=_check.hyper("weight_decay", weight_decay),
        amsgrad=float(bool(amsgrad)),
        maximize=float(bool(maximize)),
        decoupled=float(bool(decoupled)),
        stochastic_rounding=float(bool(stochastic_rounding)),
        rounding_seed=float(_check.seed("rounding_seed", rounding_seed)),
    )


def _run(
    plan: Any,
    kernel: str,
    groups: np.ndarray,
    grad_scale: Any,
    found_inf: Any,
    written: list[torch.Tensor],
) -> bool:
    """One ``kernel`` ("adam" or "sgd") step over ``plan``'s table: the CPU's in this thread,
    or launched on the device's current stream. False when AMP's ``found_inf`` skipped it (on
    the CPU; a device reads it in the kernels). A step taken bumps the version counters of the
    ``written`` tensors: a large CPU step while the pool's other threads update, else after."""
    device, backend = plan.device, plan.backend
    gs = scalar_ptr(grad_scale, "grad_scale", device)
    fi = scalar_ptr(found_inf, "found_inf", device)
    bump = functools.partial(torch._C._increment_version, written)
    if backend is None:
        step = getattr(_core, f"{kernel}_step")
        return _core.STEP_TAKEN == step_and_bump(step, plan.numel, bump, plan.table, groups, gs, fi)
    getattr(backend, f"{kernel}_step")(
        plan.table, groups, None, gs, fi, 0, backend.stream(device), device_index(device)
    )
    bump()
    return True


def sgd_group_row(
    lr: Any,
    momentum: Any,
    dampening: Any,
    weight_decay: Any,
    nesterov: bool,
    maximize: bool,
    stochastic_rounding: bool = False,
    rounding_seed: int = 0,
    rounding_step: int = 0,
) -> list[float]:
    """One checked row of SGD scalars, each at its column (``_core.SGD_COLUMNS``). As in
    torch's step, Nesterov with a momentum of 0 is plain SGD, and with a dampening it uses the
    dampened buffer (torch refuses both at construction only)."""
    return _row(
        _core.SGD_COLUMNS,
        lr=_check.hyper("lr", lr),
        momentum=_check.hyper("momentum", momentum),
        dampening=_check.hyper("dampening", dampening, low=-math.inf),
        weight_decay=_check.hyper("weight_decay", weight_decay),
        nesterov=float(bool(nesterov)),
        maximize=float(bool(maximize)),
        stochastic_rounding=float(bool(stochastic_rounding)),
        rounding_seed=float(_check.seed("rounding_seed", rounding_seed)),
        rounding_step=float(_check.seed("rounding_step", rounding_step % 2**32)),
    )


def _row(columns: dict[str, int], **values: float) -> list[float]:
    """A group row with each value at its column, every column filled."""
    if values.keys() != columns.keys():
        raise AssertionError(f"row columns {sorted(values)} != the core's {sorted(columns)}")
    row = [0.0] * len(columns)
    for name, value in values.items():
        row[columns[name]] = value
    return row


_CPU = torch.device("cpu")


def scalar_ptr(t: torch.Tensor | None, name: str, device: torch.device = _CPU) -> int:
    """Address of AMP's 0-d float32 grad_scale / found_inf tensor (0 for None), which must be on
    the step's ``device`` (where the step reads it)."""
    if t is None:
        return 0
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        raise ValueError(f"{name} must be a 1-element tensor")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, but the step's tensors are on {device}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    return t.data_ptr()


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else 0


_ADAM_COLUMNS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps")
_ADAM_PROOFS = (Proof.PARAM, Proof.GRAD, Proof.STATE, Proof.STATE, Proof.STATE, Proof.STATE)
_SGD_COLUMNS = ("params", "grads", "momentum_buffer_list")
_SGD_PROOFS = (Proof.PARAM, Proof.GRAD, Proof.STATE)


class _Cache:
    """The last call's table, reused while its proof holds (weak references: no tensor kept)."""

    __slots__ = ("plan",)

    def __init__(self) -> None:
        self.plan: PointerTable | None = None


_adam_cache = _Cache()
_sgd_cache = _Cache()


def _labels(n: int) -> list[str]:
    return [f"params[{i}]" for i in range(n)]


def _adam_table(columns: list[list[Any]], amsgrad: bool) -> PointerTable:
    plan = _adam_cache.plan
    if plan is not None and plan.is_current(columns):
        return plan
    _adam_cache.plan = None
    check_columns(
        _ADAM_COLUMNS,
        columns,
        _labels(len(columns[0])),
        steps=(False,) * 5 + (True,),
        required=(True, True, True, True, amsgrad, True),
    )
    plan = PointerTable(columns, [0] * len(columns[0]), _ADAM_PROOFS)
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
    stochastic_rounding: bool = False,
    rounding_seed: int = 0,
) -> bool:
    """One Adam step over all tensors, in place; the formula is in the module docstring.

    ``state_steps`` are 1-element float32 tensors (torch's ``state["step"]``), incremented here.
    ``max_exp_avg_sqs`` is needed only with ``amsgrad``. The states may be float32 or bfloat16
    beside float32 or half params (see ``pylr.optim``'s ``state_dtype``); with
    ``stochastic_rounding`` bfloat16 states are rounded stochastically, the random bits a hash
    of (``rounding_seed``, the tensor's position in the lists, its step, the element). Returns
    False when AMP's ``found_inf`` is set, in which case nothing (step counters included) was
    modified. On a CUDA device (``state_steps`` there too) the kernels read ``found_inf`` and
    skip the step themselves, and the call returns True without waiting for the device.
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
                stochastic_rounding,
                rounding_seed,
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
    with sealed_step():
        plan = _adam_table(columns, amsgrad)
        written = [t for c in (columns[0], *columns[2:]) for t in c if t is not None]
        return _run(plan, "adam", groups, grad_scale, found_inf, written)


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
    stochastic_rounding: bool = False,
    rounding_seed: int = 0,
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
        stochastic_rounding=stochastic_rounding,
        rounding_seed=rounding_seed,
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
    stochastic_rounding: bool = False,
    rounding_seed: int = 0,
    rounding_step: int = 0,
) -> bool:
    """One SGD step over all tensors, in place; the formula is in the module docstring.

    With ``momentum != 0``, a ``None`` in ``momentum_buffer_list`` gets a new buffer (written into
    the list, as torch's functional ``sgd`` does) that takes the gradient on this first step.
    Buffers may be float32 or bfloat16 beside float32 or half params; with
    ``stochastic_rounding`` bfloat16 buffers are rounded stochastically (pass a new
    ``rounding_step`` at each step: SGD keeps no step count). Returns False when AMP's
    ``found_inf`` is set (nothing modified). On a CUDA device the kernels read ``found_inf``
    and skip the step themselves (the call returns True without waiting) — except a step that
    creates buffers, which reads ``found_inf`` first (a skipped first step creates none).
    """
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    groups = np.array(
        [
            sgd_group_row(
                lr,
                momentum,
                dampening,
                weight_decay,
                nesterov,
                maximize,
                stochastic_rounding,
                rounding_seed,
                rounding_step,
            )
        ],
        dtype=np.float64,
    )
    n = len(params)
    if len(momentum_buffer_list) != n:
        raise ValueError(
            f"momentum_buffer_list has {len(momentum_buffer_list)} entries for {n} params"
        )
    uses_buffers = momentum != 0
    columns = [
        list(params),
        list(grads),
        list(momentum_buffer_list) if uses_buffers else [None] * n,
    ]
    fresh = [b is None for b in columns[2]] if uses_buffers else [False] * n
    with sealed_step():
        plan = _sgd_cache.plan
        if any(fresh) or plan is None or not plan.is_current(columns):
            _sgd_cache.plan = None
            check_columns(_SGD_COLUMNS, columns, _labels(n), required=(True, True, False))
            stepped_on_device = n > 0 and _plan.backend_for(params[0].device) is not None
            if any(fresh) and stepped_on_device and found_inf is not None:
                # a skipped first step must create no buffer: read found_inf (one host sync)
                scalar_ptr(found_inf, "found_inf", params[0].device)
                if found_inf.item() != 0:
                    return False
            for i, p in enumerate(params):
                if fresh[i]:
                    buf = torch.empty_like(p, memory_format=torch.preserve_format)
                    momentum_buffer_list[i] = columns[2][i] = buf
            plan = PointerTable(columns, [0] * n, _SGD_PROOFS, first_step=fresh)
            _sgd_cache.plan = plan
        written = [*columns[0], *(b for b in columns[2] if b is not None)]
        ok = _run(plan, "sgd", groups, grad_scale, found_inf, written)
    if not ok and any(fresh):
        # skipped (found_inf): the buffers made for this call were never filled; the caller's
        # list gets its None entries back, and the table that points at them goes
        _sgd_cache.plan = None
        for i in range(n):
            if fresh[i]:
                momentum_buffer_list[i] = None
    return ok
