"""Drop-in fused optimizers: ``SGD``, ``Adam`` and ``AdamW`` as ``torch.optim.Optimizer``
subclasses whose whole step — every group, every tensor — is one multi-threaded SIMD C++ call.

Same constructor signatures, defaults, validation messages, param-group keys and state
(``step`` as a 0-d float32 tensor, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
``momentum_buffer``) as torch 2.13, so state dicts move between ``pylr.optim.X`` and
``torch.optim.X`` both ways. Hyperparameters are read from the groups at every step, so code that
edits ``group["lr"]`` and every torch or pylr scheduler works. The formulas are in
:mod:`pylr.functional`.

Beyond torch:

- ``schedule=``: a :mod:`pylr.schedules` object (a factor on each group's initial lr) or a list
  with one per group (absolute lrs) whose value at each step is taken in the step itself — no
  scheduler object. ``group["lr"]`` shows the lr used by the last step. Where the schedule
  defines a momentum (``Cyclic``, ``OneCycle``, ``FastaiOneCycle``), it drives SGD's
  ``momentum`` or Adam's ``betas[0]`` too, as ``ScheduleLR`` does.
- GradScaler hands its ``grad_scale`` and ``found_inf`` over (``_step_supports_amp_scaling``):
  grads are unscaled in the same pass, and a step with ``found_inf`` set changes nothing.

CUDA parameters (with ``pylr.cuda.is_available()``) get the same step from pylr's CUDA kernels:
every tensor of every group in a few multi-tensor launches on torch's current stream, with
``grad_scale``, ``found_inf``, the clip coefficient and the step counters read on the device (a
CUDA param's ``state["step"]`` is a float32 0-d tensor on its device, as torch's fused Adam keeps
it), so a step waits for nothing. An lr that is a float32 tensor on the params' device is read
on the device at each step; with ``capturable=True`` (Adam, AdamW) the step may be captured in a
CUDA graph. All of an optimizer's params must be on one device.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.optim import Optimizer

from pylr import _core, _plan
from pylr import _validate as _check
from pylr._plan import (
    STATE_DTYPES,
    PointerTable,
    Proof,
    check_columns,
    scalar_value,
    sealed_step,
    step_and_bump,
)
from pylr.functional import adam_group_row, device_index, scalar_ptr, sgd_group_row
from pylr.schedules import Schedule, from_dict

__all__ = ["SGD", "Adam", "AdamW"]

_GET_SCHEDULE = operator.itemgetter("schedule")
# hyperparameter types that are their own value (no tensor to read)
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None), torch.dtype})


def _plain(values: tuple[Any, ...]) -> bool:
    """True when ``values`` (and the tuples among them) hold no tensor: then they compare as
    the values scalar_value gives, without reading each one."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN_TYPES:
        return True
    return kinds - _PLAIN_TYPES == {tuple} and all(
        set(map(type, v)) <= _PLAIN_TYPES for v in values if type(v) is tuple
    )


try:  # torch's registries of global hooks (private; absent in some versions)
    from torch.optim.optimizer import (
        _global_optimizer_post_hooks,
        _global_optimizer_pre_hooks,
    )
except ImportError:  # pragma: no cover
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = {}

_threads_synced = False
_SGD_ROUNDING_STEP = _core.SGD_COLUMNS["rounding_step"]
# clip_grad_norm_'s norm_type -> the C++ norm kind (any other p: NORM_P)
_NORM_KINDS = {
    2.0: _core.NORM_TWO,
    1.0: _core.NORM_ONE,
    math.inf: _core.NORM_INF,
    -math.inf: _core.NORM_NEG_INF,
}


def _sync_threads() -> None:
    """Size pylr's pool like torch's intra-op pool, once, unless the user chose a size."""
    global _threads_synced
    import pylr

    if not _threads_synced and not pylr._threads_set_by_user:
        _core.set_num_threads(max(1, torch.get_num_threads()))
    _threads_synced = True


# group keys of pylr's own (beyond torch's), and the values that mean "not used"
_PYLR_GROUP_DEFAULTS = {"state_dtype": None, "rounding_seed": 0}
# the group keys torch's optimizers do not have
_PYLR_GROUP_KEYS = ("schedule", "schedule_step", "state_dtype", "rounding_seed", "rounding_step")


def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


_DTensor = _dtensor_class()


def _is_dtensor(t: Any) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def _shard_of(label: str, t: Any, param: torch.Tensor) -> Any:
    """The local shard the C++ step updates for ``t`` (a grad or state) of DTensor ``param``:
    ``t`` must be a DTensor laid out as the param (mesh and placements), as FSDP2 and torch's
    optimizers keep them."""
    if t is None:
        return None
    if not _is_dtensor(t):
        raise TypeError(
            f"{label} is a {type(t).__name__} but its param is a DTensor: the grad and state of "
            "a DTensor param must be DTensors with its mesh and placements"
        )
    if t.device_mesh != param.device_mesh or t.placements != param.placements:
        raise ValueError(
            f"{label} has placements {t.placements} on {t.device_mesh}, its param "
            f"{param.placements} on {param.device_mesh}"
        )
    return t._local_tensor


def _check_state_options(state_dtype: Any, rounding_seed: Any) -> None:
    if state_dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(
            f"state_dtype must be None (the params' dtype), torch.float32 or torch.bfloat16, "
            f"got {state_dtype!r}"
        )
    _check.seed("rounding_seed", rounding_seed)


def _as_float(value: Any) -> float:
    return value.item() if isinstance(value, torch.Tensor) else value


def _versioned(plan: _Plan) -> list[torch.Tensor]:
    """The tensors whose version counters a taken step bumps — autograd's guard of tensors saved
    for backward: the params (and DTensor params' local shards; the optimizer's own state never
    enters a graph)."""
    return plan.params + plan.shards if plan.shards else plan.params


class _Plan:
    """What a step needs beyond the tensors: the pointer table (with its proof), each group's row
    of scalars, and the structure both were built for."""

    __slots__ = (
        "all_params",
        "created",
        "flags",
        "fresh",
        "grad_dtype",
        "group_params",
        "groups",
        "lr_on_device",
        "norm_out",
        "params",
        "partials",
        "row_values",
        "schedule_set",
        "schedule_steps",
        "scheduled",
        "scheduled_momentum",
        "schedules",
        "seen",
        "shards",
        "table",
    )

    def __init__(
        self,
        table: PointerTable,
        params: list[torch.Tensor],
        all_params: list[torch.Tensor],
        group_params: list[list[torch.Tensor]],
        flags: tuple,
        group_columns: int,
    ) -> None:
        self.table = table
        self.params = params  # the params of the table's rows, in order
        self.all_params = all_params  # every param of every group, in order
        self.group_params = group_params
        self.flags = flags
        self.groups = np.zeros((len(group_params), group_columns), dtype=np.float64)
        self.row_values: list[tuple | None] = [None] * len(group_params)
        # each group's objects behind its row (and its schedule) as last read, where they hold
        # no tensor: immutable, so the same objects are the same values (None: compare values)
        self.seen: list[tuple | None] = []
        # SGD: new momentum buffers, (param, buffer, group), to enter the state once a step
        # filled them
        self.fresh: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        # CUDA: per group the address of an lr tensor on the device read by the kernels, or 0
        self.lr_on_device = np.zeros(len(group_params), dtype=np.int64)
        # clip_grad_norm_: its scratch (one double per chunk; a device tensor on CUDA, with the
        # device double the norm lands in) and the dtype torch's norm has
        self.partials: Any = None
        self.norm_out: torch.Tensor | None = None
        self.grad_dtype = functools.reduce(torch.promote_types, {p.dtype for p in params})
        # fused schedules, per group: the Schedule objects, their C++ nodes, the steps
        self.schedules: tuple[Schedule | None, ...] = ()
        self.schedule_set: Any = None
        self.schedule_steps = np.zeros(len(group_params), dtype=np.float64)
        self.scheduled: list[tuple[int, bool]] = []  # (group, has momentum)
        self.scheduled_momentum: dict[int, bool] = {}  # the same, by group
        # the params whose state this plan created, until its first step is taken
        self.created: list[torch.Tensor] = []
        # DTensor params' local shards (autograd's version counters are bumped on both)
        self.shards: list[torch.Tensor] = []

    def set_schedules(self, schedules: tuple[Schedule | None, ...]) -> None:
        self.schedules = schedules
        self.scheduled = [(gi, s.has_momentum) for gi, s in enumerate(schedules) if s is not None]
        self.scheduled_momentum = dict(self.scheduled)
        self.schedule_set = (
            _core.GroupSchedules([None if s is None else s._node for s in schedules])
            if self.scheduled
            else None
        )


class _FusedOptimizer(Optimizer):
    """Shared machinery: step with hooks, the plan contract, schedule fusion, state dicts."""

    _group_columns: ClassVar[int]
    # the group key a schedule's momentum drives, and where lr and momentum sit in a group's row
    _momentum_key: ClassVar[str]
    _momentum_placeholder: ClassVar[float]
    _schedule_columns: ClassVar[tuple[int, int]]
    # the group keys a step reads, in the order of the row builder's arguments
    _group_keys: ClassVar[tuple[str, ...]]
    _group_row: ClassVar[Callable[..., list[float]]]
    # from _group_keys: a group's values in that order, and where the momentum key sits
    _get_row: ClassVar[Callable[[dict[str, Any]], tuple[Any, ...]]]
    _get_seen: ClassVar[Callable[[dict[str, Any]], tuple[Any, ...]]]
    _kernel: ClassVar[str]
    _core_step: ClassVar[Callable[..., int]]
    _core_schedules: ClassVar[Callable[..., int]]
    _momentum_at: ClassVar[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_kernel" in cls.__dict__:  # the C++ entry points of this algorithm
            cls._core_step = staticmethod(getattr(_core, f"{cls._kernel}_step"))
            cls._core_schedules = staticmethod(getattr(_core, f"{cls._kernel}_schedules"))
        if "_group_keys" in cls.__dict__:
            cls._get_row = operator.itemgetter(*cls._group_keys)
            cls._get_seen = operator.itemgetter(*cls._group_keys, "schedule")
            cls._momentum_at = cls._group_keys.index(cls._momentum_key)

    def __init__(self, params: Any, defaults: dict[str, Any], schedule: Any) -> None:
        if defaults.get("differentiable"):
            raise ValueError(
                f"pylr.optim.{type(self).__name__} cannot be differentiable: its step runs in C++"
                " outside autograd; use torch.optim for differentiable=True"
            )
        super().__init__(params, defaults)
        self._step_supports_amp_scaling = True
        self._plan: _Plan | None = None
        # a pending clip_grad_norm_: its coefficient, folded into the next step's grads, and the
        # grads it belongs to
        self._clip: tuple[float, Any] | None = None
        self._attach_schedule(schedule)
        _sync_threads()

    # -- schedule fusion ---------------------------------------------------------------------

    def _attach_schedule(self, schedule: Any) -> None:
        groups = self.param_groups
        if schedule is None:
            for group in groups:
                group.setdefault("schedule", None)
            return
        if isinstance(schedule, Schedule):
            for group in groups:
                base = float(_as_float(group["lr"]))
                group.setdefault("initial_lr", base)
                group["schedule"] = base * schedule
        else:
            items = list(schedule) if isinstance(schedule, Iterable) else None
            if items is None or len(items) != len(groups):
                raise ValueError(
                    "schedule must be a pylr.schedules.Schedule or a list with one per param "
                    f"group ({len(groups)})"
                )
            for i, (group, s) in enumerate(zip(groups, items, strict=True)):
                if s is not None and not isinstance(s, Schedule):
                    raise TypeError(
                        f"schedule[{i}] must be a Schedule or None, not {type(s).__name__}"
                    )
                group["schedule"] = s
        for group in groups:
            group.setdefault("schedule_step", 0)
        self._apply_schedules()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group.get("params")
        if params is not None and not isinstance(params, (torch.Tensor, set)):
            param_group["params"] = params = list(params)
            seen: dict[int, int] = {}
            for i, p in enumerate(params):
                if id(p) in seen:
                    raise ValueError(
                        f"param group {len(self.param_groups)} lists the same tensor twice "
                        f"(params[{seen[id(p)]}] and params[{i}]); pylr steps each tensor once "
                        "(torch deprecates duplicates); remove the duplicate"
                    )
                seen[id(p)] = i
        param_group.setdefault("schedule", None)
        param_group.setdefault("schedule_step", 0)
        super().add_param_group(param_group)

    # -- state dicts -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict; fused schedules are stored as their ``to_dict()`` (so that
        ``torch.load(weights_only=True)`` reads it)."""
        sd = super().state_dict()
        for group in sd["param_groups"]:
            s = group.get("schedule")
            if isinstance(s, Schedule):
                group["schedule"] = s.to_dict()
            else:
                # pylr's own keys only where they say something: a checkpoint of an optimizer
                # using none of them has torch's keys exactly (DCP loads require the same keys)
                group.pop("schedule", None)
                group.pop("schedule_step", None)
            for key, default in _PYLR_GROUP_DEFAULTS.items():
                if key in group and group[key] == default:
                    del group[key]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, and then:

        - pylr's own group settings (``schedule``, ``schedule_step``, ``state_dtype``,
          ``rounding_seed``, ``rounding_step``) that the checkpoint does not carry — one saved
          by torch's optimizers, or by pylr's with the default — keep this optimizer's values;
        - state saved in a dtype the param may keep (float32 or bfloat16 beside half params)
          is loaded in that dtype, not cast to the param's first as torch's load does (which
          would flush a float16 ``exp_avg_sq`` to 0), then converted to ``state_dtype`` where
          one is set;
        - a step count saved as a number (torch before 1.12) becomes a float32 tensor.
        """
        saved_groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        own = [{k: g[k] for k in _PYLR_GROUP_KEYS if k in g} for g in self.param_groups]
        kept_state = self._state_kept_in_its_dtype(state_dict)
        super().load_state_dict(state_dict)
        for group, mine, saved in zip(self.param_groups, own, saved_groups or (), strict=False):
            for key, value in mine.items():
                if isinstance(saved, dict) and key not in saved:
                    group[key] = value
        for group in self.param_groups:
            s = group.get("schedule")
            group["schedule"] = from_dict(s) if isinstance(s, dict) else s
            group.setdefault("schedule_step", 0)
            self._init_group_defaults(group)
        for p, key, value in kept_state:
            self.state[p][key] = value.to(device=p.device)
        self._convert_loaded_state()

    def _state_kept_in_its_dtype(self, state_dict: Any) -> list[tuple[torch.Tensor, str, Any]]:
        """The saved state tensors whose dtype differs from their param's but is one the param
        may keep (see STATE_DTYPES), found as torch's load pairs saved ids with params; empty
        for anything torch's load will refuse."""
        if not isinstance(state_dict, dict):
            return []
        saved_groups, saved_state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(saved_groups, list) or not isinstance(saved_state, dict):
            return []
        if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved_groups):
            return []
        ids = [i for g in saved_groups for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        if len(ids) != len(params):
            return []
        kept = []
        for pid, p in zip(ids, params, strict=True):
            entry = saved_state.get(pid)
            if not isinstance(entry, dict):
                continue
            for key, value in entry.items():
                if (
                    key != "step"
                    and isinstance(value, torch.Tensor)
                    and value.dtype != p.dtype
                    and value.dtype in STATE_DTYPES.get(p.dtype, ())
                ):
                    kept.append((p, key, value))
        return kept

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._plan = None
        self._clip = None
        for st in self.state.values():
            step = st.get("step") if isinstance(st, dict) else None
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                st["step"] = torch.tensor(float(step), dtype=torch.float32)
            elif isinstance(step, torch.Tensor) and step.dtype != torch.float32:
                st["step"] = step.to(torch.float32)
        for group in self.param_groups:
            group.setdefault("schedule", None)
            group.setdefault("schedule_step", 0)
            self._init_group_defaults(group)

    def _init_group_defaults(self, group: dict[str, Any]) -> None:
        group.setdefault("state_dtype", None)
        group.setdefault("rounding_seed", 0)

    def _state_dtype(self, p: torch.Tensor, gi: int, label: str) -> torch.dtype:
        """The dtype new state for ``p`` (in group ``gi``) is created with."""
        want = self.param_groups[gi]["state_dtype"]
        if want is None:
            return p.dtype
        if want not in STATE_DTYPES[p.dtype]:
            raise TypeError(
                f"{label}: param_groups[{gi}]['state_dtype'] is {want}, which a {p.dtype} "
                "parameter cannot use; float32 params can keep bfloat16 state, bfloat16 params "
                "float32 state, float16 params float32 or bfloat16 state (float64 params keep "
                "float64 state)"
            )
        return want

    def _convert_loaded_state(self) -> None:
        """After load_state_dict: state in each group's ``state_dtype`` where one is set (torch's
        loading casts state to the param's dtype first)."""
        for group in self.param_groups:
            want = group.get("state_dtype")
            if want is None:
                continue
            for p in group["params"]:
                state = self.state.get(p)
                if not state or want not in STATE_DTYPES.get(p.dtype, ()):
                    continue
                for k, v in list(state.items()):
                    if k != "step" and isinstance(v, torch.Tensor) and v.dtype != want:
                        state[k] = v.to(want)

    # -- the step ----------------------------------------------------------------------------

    # Under torch.compile the step is an explicit graph break: Dynamo runs it eagerly (it cannot
    # trace the C++ call) instead of warning about each call it cannot trace. (~0.2 us a call.)
    @torch.compiler.disable
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One fused step over every param with a gradient; returns ``closure()``'s loss."""
        if (
            _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or torch.autograd._profiler_enabled()
        ):
            return Optimizer.profile_hook_step(type(self)._fused_step)(self, closure)
        return self._fused_step(closure)

    # torch wraps a subclass's step in a profiling/hook wrapper (~6 us a call); ours runs that
    # wrapper itself, and only when a hook or the profiler needs it.
    step.hooked = True  # type: ignore[attr-defined]

    def _fused_step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with sealed_step():
            self._take_step()
        return loss

    def _take_step(self) -> None:
        """The step itself: the plan proved current (or rebuilt), then the C++ update."""
        # a large step wakes the pool while Python prepares it (the last plan tells the size)
        last = self._plan
        _core.prepare_threads(0 if last is None or last.table.backend else last.table.numel)
        plan = self._current_plan()
        if plan is None:
            self._clip = None
            return
        on_device = plan.table.backend is not None
        try:
            for gi, _ in plan.scheduled:
                plan.schedule_steps[gi] = self._schedule_step(gi)
            grad_scale = getattr(self, "grad_scale", None)
            found_inf = getattr(self, "found_inf", None)
            if not on_device:
                grad_scale = scalar_ptr(grad_scale, "grad_scale")
                found_inf = scalar_ptr(found_inf, "found_inf")
            # a clip_grad_norm_ coefficient belongs to this step's grads, taken or skipped
            coef = self._pending_clip(plan)
            if on_device:
                status = self._run_on_device(plan, grad_scale, found_inf, coef)
        except BaseException:
            self._discard(plan)
            raise
        self._clip = None
        if not on_device:
            status = self._run(plan, grad_scale, found_inf, coef)  # bumps the versions too
        if status == _core.STEP_TAKEN:
            if on_device:
                torch._C._increment_version(_versioned(plan))
            self._after_step(plan)
            # the values the fused schedules gave this step, shown in the groups
            lr_col, momentum_col = self._schedule_columns
            for gi, has_momentum in plan.scheduled:
                group = self.param_groups[gi]
                group["lr"] = float(plan.groups[gi, lr_col])
                if has_momentum:
                    self._set_momentum(group, float(plan.groups[gi, momentum_col]))
                group["schedule_step"] += 1
                if plan.seen[gi] is not None:  # the schedule's own writes change nothing
                    plan.seen[gi] = self._get_seen(group)
        elif status != _core.STEP_SKIPPED:
            self._discard(plan)  # nothing changed in C++
            self._refuse_schedule(_core.BAD_SCHEDULE - status)
        plan.created = []

    def _run_on_device(
        self, plan: _Plan, grad_scale: Any, found_inf: Any, coef: float | torch.Tensor
    ) -> int:
        """The step on a CUDA device: what the device reads (AMP's scalars, the clip
        coefficient, step counters, tensor lrs) stays there, so nothing waits for it — except
        what the host must know of a skipped step (a fused schedule's step count, SGD's new
        buffers), which reads ``found_inf`` first."""
        table = plan.table
        backend, device = table.backend, table.device
        gs = scalar_ptr(grad_scale, "grad_scale", device)
        fi = scalar_ptr(found_inf, "found_inf", device)
        capturing = backend.capturing(device)
        if capturing:
            self._check_capture(plan)
        if found_inf is not None and (plan.scheduled or self._needs_found_inf(plan)):
            if capturing:
                raise RuntimeError(
                    f"{type(self).__name__}.step() under CUDA-graph capture with AMP's found_inf "
                    "cannot wait for it, and this step must (fused schedules, or SGD's first "
                    "step); take a step before capturing and use a tensor lr instead of a schedule"
                )
            if found_inf.item() != 0:
                return _core.STEP_SKIPPED
        if plan.schedule_set is not None:
            status = self._apply_schedules_on_host(plan)
            if status != _core.STEP_TAKEN:
                return status
        if isinstance(coef, torch.Tensor):
            coef_ptr = coef.data_ptr()
        elif coef != 1.0:
            coef = torch.tensor(coef, dtype=torch.float64, device=device)
            coef_ptr = coef.data_ptr()
        else:
            coef_ptr = 0
        self._launch(plan, gs, fi, coef_ptr, backend.stream(device), device_index(device))
        return _core.STEP_TAKEN

    def _check_capture(self, plan: _Plan) -> None:
        """What a CUDA graph of this step would freeze must not change between replays."""
        if plan.scheduled:
            raise RuntimeError(
                f"{type(self).__name__}.step() is being captured in a CUDA graph, but fused "
                "schedules (schedule=) are evaluated on the host at each step and would be "
                "frozen in the graph: use a float32 lr tensor on the device, updated by a "
                "scheduler, instead"
            )

    def _needs_found_inf(self, plan: _Plan) -> bool:
        return False

    def _discard(self, plan: _Plan) -> None:
        """A refused step: undo the state ``plan`` created in Python, and drop the plan."""
        for p in plan.created:
            self.state.pop(p, None)
        plan.created = []
        self._plan = None

    # -- gradient clipping, folded into the step ---------------------------------------------

    def clip_grad_norm_(
        self,
        max_norm: float,
        norm_type: float | str = 2.0,
        error_if_nonfinite: bool = False,
        foreach: bool | None = None,
    ) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over this optimizer's params that have grads,
        folded into the next :meth:`step`.

        Returns the total norm of the grads (viewed as one vector), as torch's does, computed in
        one threaded pass in C++ (each chunk accumulated in double, chunks combined in a fixed
        order). The grads are *not* rewritten: the next ``step()`` multiplies every grad by
        ``min(1, max_norm / (total_norm + 1e-6))`` as it reads it, saving the pass that rewrites
        them — so code that reads the grads between this call and ``step()`` sees them
        unclipped. The coefficient belongs to the grads it was computed for: ``step()`` (taken
        or skipped) and ``zero_grad()`` drop it; a grad changed in between — in place (an
        accumulating backward, a ``mul_``), moved (``.data =``) or replaced (``p.grad = ...``,
        ``model.zero_grad()`` and a new backward) — makes the next ``step()`` raise, since pylr
        cannot tell whether the grads then carry torch's clipping; a new ``clip_grad_norm_``
        over grads that were all replaced starts afresh. A second call over the same grads
        clips further, as torch's repeated clipping does. Call it after
        ``GradScaler.unscale_(optimizer)`` as with torch. ``foreach`` is accepted for torch's
        signature.

        Args:
            max_norm: the largest total norm allowed (``inf``: compute the norm only).
            norm_type: the p of the p-norm: any float, ``inf`` or ``-inf`` (also as strings).
            error_if_nonfinite: raise RuntimeError when the total norm is NaN or infinite
                (nothing changes then); otherwise the step's grads are scaled by the
                non-finite coefficient, as torch's clipping does.
        """
        del foreach
        if isinstance(max_norm, torch.Tensor):
            max_norm = max_norm.item()
        try:
            limit = float(max_norm)
            p = float(norm_type)
        except (TypeError, ValueError):
            raise TypeError(
                f"max_norm and norm_type must be numbers, got {max_norm!r} and {norm_type!r}"
            ) from None
        if not limit >= 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
        if p != p:
            raise ValueError("norm_type must not be NaN")
        with sealed_step():  # the plan's pointers read as proved (see _take_step)
            return self._clip_grad_norm(limit, p, error_if_nonfinite)

    def _clip_grad_norm(self, limit: float, p: float, error_if_nonfinite: bool) -> torch.Tensor:
        plan = self._current_plan()
        if plan is None:
            return torch.tensor(0.0)
        pending = self._pending_clip(plan, clipping=True)
        if plan.shards:
            # DTensor grads (FSDP2, tensor parallelism): torch's norm, which reduces across the
            # shards as their placements say
            total = torch.nn.utils.get_total_norm(
                self._grads_of(plan), p, error_if_nonfinite=error_if_nonfinite
            )
            if pending != 1.0:
                total = total * pending
            full = total.full_tensor() if _is_dtensor(total) else total
            self._set_clip(plan, pending * self._clip_coefficient(full, limit))
            self._keep_no_state(plan)
            return total
        if plan.table.backend is not None:
            return self._clip_on_device(plan, limit, p, error_if_nonfinite, pending)
        if p == 0:
            # torch's 0-"norm" of the per-tensor norms: how many grads have a nonzero element
            norm = float(sum(bool(g.count_nonzero()) for g in self._grads_of(plan)))
            if pending == 0:
                norm = 0.0
        else:
            if (p < 0 or p == math.inf) and (plan.table.table[:, _plan.COL_NUMEL] == 0).any():
                # as torch: a max or a negative power over no elements has no identity
                raise RuntimeError(
                    f"clip_grad_norm_ cannot compute the {p} norm over an empty grad because "
                    "the operation does not have an identity"
                )
            if plan.partials is None:
                plan.partials = np.empty(max(1, _core.norm_chunks(plan.table.table)))
            kind = _NORM_KINDS.get(p, _core.NORM_P)
            # the grads the step will use: a pending coefficient scales them
            norm = _core.grad_norm(plan.table.table, kind, p, plan.partials) * pending
        total = torch.tensor(norm, dtype=plan.grad_dtype)
        if error_if_nonfinite and not math.isfinite(norm):
            raise RuntimeError(
                f"The total norm of order {p} for gradients from `parameters` is non-finite, "
                "so it cannot be clipped. To disable this error and scale the gradients by the "
                "non-finite norm anyway, set `error_if_nonfinite=False`"
            )
        self._set_clip(plan, pending * self._clip_coefficient(total, limit))
        self._keep_no_state(plan)
        return total

    def _clip_on_device(
        self, plan: _Plan, limit: float, p: float, error_if_nonfinite: bool, pending: Any
    ) -> torch.Tensor:
        """clip_grad_norm_ on a CUDA device: the norm reduced by pylr's kernels (in double, as on
        the CPU), the coefficient computed by torch ops on the device and left there for the
        step — no host sync unless ``error_if_nonfinite`` asks for the norm's value (as torch's
        does)."""
        table = plan.table
        backend, device = table.backend, table.device
        if p == 0:
            # torch's 0-"norm" of the per-tensor norms: how many grads have a nonzero element
            nonzero = [torch.count_nonzero(g) > 0 for g in self._grads_of(plan)]
            norm = torch.stack(nonzero).sum(dtype=torch.float64)
            if isinstance(pending, torch.Tensor):
                norm = torch.where(pending == 0, 0.0, norm)
            elif pending == 0:
                norm = torch.zeros_like(norm)
        else:
            if (p < 0 or p == math.inf) and (table.table[:, _plan.COL_NUMEL] == 0).any():
                raise RuntimeError(
                    f"clip_grad_norm_ cannot compute the {p} norm over an empty grad because "
                    "the operation does not have an identity"
                )
            if plan.partials is None:
                n = max(1, backend.norm_partials(table.table))
                plan.partials = torch.empty(n, dtype=torch.float64, device=device)
                plan.norm_out = torch.empty((), dtype=torch.float64, device=device)
            out = plan.norm_out
            assert out is not None
            backend.grad_norm(
                table.table,
                _NORM_KINDS.get(p, _core.NORM_P),
                p,
                plan.partials.data_ptr(),
                plan.partials.numel(),
                out.data_ptr(),
                backend.stream(device),
                device_index(device),
            )
            # the grads the step will use: a pending coefficient scales them
            norm = out * pending
        total = norm.to(plan.grad_dtype)
        if error_if_nonfinite and not bool(torch.isfinite(norm)):
            raise RuntimeError(
                f"The total norm of order {p} for gradients from `parameters` is non-finite, "
                "so it cannot be clipped. To disable this error and scale the gradients by the "
                "non-finite norm anyway, set `error_if_nonfinite=False`"
            )
        # _clip_coefficient's arithmetic, on the device
        wide = torch.float64 if total.dtype == torch.float64 else torch.float32
        coef = torch.clamp(1.0 / (total.to(wide) + 1e-6) * limit, max=1.0)
        self._set_clip(plan, coef.to(torch.float64) * pending)
        self._keep_no_state(plan)
        return total

    def _keep_no_state(self, plan: _Plan) -> None:
        # a plan built for clip_grad_norm_ alone may have created state: torch's clip creates
        # none, so it goes until a step (which builds the plan again)
        if plan.created:
            self._discard(plan)

    def _set_clip(self, plan: _Plan, coef: float | torch.Tensor) -> None:
        # a coefficient of 1 changes nothing, whatever happens to the grads before the step (a
        # CUDA coefficient stays on the device unread: comparing it would wait for it)
        if not isinstance(coef, torch.Tensor) and coef == 1.0:
            self._clip = None
        else:
            self._clip = (coef, _core.GradMark(plan.params))

    def _pending_clip(self, plan: _Plan, *, clipping: bool = False) -> float:
        """The pending clip_grad_norm_ coefficient for ``plan``'s grads (1 when none is
        pending). Raises when the grads it was computed for changed since — in place, moved
        (``.data =``), or replaced — since pylr cannot tell whether new grads derive from the
        clipped ones (``p.grad = p.grad + noise`` carries torch's clipping, a new backward does
        not): no coefficient then reproduces torch's result. Only a new ``clip_grad_norm_``
        (``clipping``) over grads that all were replaced starts afresh: it clips them as they
        are, as torch's does (``model.zero_grad()``, a new backward, then the clip)."""
        if self._clip is None:
            return 1.0
        coef, mark = self._clip
        seen = mark.compare(plan.params)
        if seen == _core.GradMark.SAME:
            return coef
        if seen == _core.GradMark.GONE and clipping:
            self._clip = None
            return 1.0
        raise RuntimeError(
            "the grads changed after clip_grad_norm_ (in place, moved by .data =, or replaced): "
            "pylr folds the clipping into step() and cannot tell whether the grads as they are "
            "now carry it. Clip right before step(), after the last change to the grads, or call "
            "optimizer.zero_grad() (which drops the pending clip) before making new ones"
        )

    @staticmethod
    def _clip_coefficient(total: torch.Tensor, max_norm: float) -> float:
        """torch's ``min(1, max_norm / (total + 1e-6))`` in its arithmetic and the norm's dtype
        (float32 for half norms): ``max_norm * (1 / (total + 1e-6))``, clamped."""
        wide = np.float64 if total.dtype == torch.float64 else np.float32
        with np.errstate(all="ignore"):
            coef = wide(1) / (wide(total.item()) + wide(1e-6)) * wide(max_norm)
        return float(min(coef, wide(1)))

    @staticmethod
    def _grads_of(plan: _Plan) -> list[torch.Tensor]:
        return [p.grad for p in plan.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; also drops a pending ``clip_grad_norm_`` coefficient."""
        self._clip = None
        super().zero_grad(set_to_none)

    # -- the plan contract -------------------------------------------------------------------

    def _current_plan(self) -> _Plan | None:
        """The plan for this step, proved current or rebuilt — the one place that decides.

        Reused only when the plan's flags still hold (they are read from the groups' values,
        so groups holding the same objects as at the last step keep them) and the table's proof
        holds (``PlanProof.verify_optimizer``: the groups hold the same params, by identity;
        each param's and grad's data pointer, element count and strides, each state tensor of
        ``self.state`` by identity and data pointer, no param gained or lost a grad). Otherwise
        everything is checked again and the table rebuilt; a bad tensor raises before anything
        is modified. Then each group's scalars are refreshed where a hyperparameter's value
        changed (a tensor by its value). None when no param has a grad.
        """
        plan = self._plan
        if plan is not None:
            unchanged = self._groups_unchanged(plan)
            proof = plan.table.proof
            if (unchanged or plan.flags == self._plan_flags()) and proof.verify_optimizer(
                plan.table.table, self.param_groups, self.state
            ):
                if not unchanged:
                    self._fill_group_rows(plan)
                return plan
            self._plan = None
        plan = self._build_plan()
        if plan is None:
            return None
        self._fill_group_rows(plan)
        self._plan = plan
        return plan

    def _params_with_grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """Every param with a grad, its grad, and its group index."""
        params, grads, rows = [], [], []
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                g = p.grad
                if g is not None:
                    params.append(p)
                    grads.append(g)
                    rows.append(gi)
        return params, grads, rows

    def _new_plan(
        self,
        params: list[torch.Tensor],
        columns: list[list[Any]],
        rows: list[int],
        proofs: Sequence[Any],
        state_keys: Sequence[str | None],
        first_step: Sequence[bool] | None = None,
    ) -> _Plan:
        """The plan over ``columns`` (the tensors the table points into: for a DTensor param,
        the local shards of it, its grad and its states) for the optimizer's ``params``."""
        group_params = [list(g["params"]) for g in self.param_groups]
        all_params = [p for g in group_params for p in g]  # referenced by the plan
        # stochastic rounding's per-tensor salt: the param's place among all of them
        place = {id(p): i for i, p in enumerate(all_params)}
        wrapped = [_is_dtensor(p) for p in params]
        table = PointerTable(
            columns,
            rows,
            proofs,
            first_step=first_step,
            salts=[place[id(p)] for p in params],
            state_keys=state_keys,
            group_params=group_params,
            state=self.state,
            owners=params,
            wrapped=wrapped,
        )
        plan = _Plan(
            table, params, all_params, group_params, self._plan_flags(), self._group_columns
        )
        plan.shards = [c for c, w in zip(columns[0], wrapped, strict=True) if w]
        return plan

    def _local_columns(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], labels: list[str]
    ) -> tuple[list[Any], list[Any]]:
        """The tensors the table points into for the params and grads: themselves, or for a
        DTensor param (FSDP2, tensor parallelism) its local shard and its grad's."""
        local_params, local_grads = [], []
        for p, g, label in zip(params, grads, labels, strict=True):
            if _is_dtensor(p):
                local_params.append(p._local_tensor)
                local_grads.append(_shard_of(f"{label}.grad", g, p))
            else:
                if _is_dtensor(g):
                    raise TypeError(f"{label}.grad is a DTensor but the param is not")
                local_params.append(p)
                local_grads.append(g)
        return local_params, local_grads

    @staticmethod
    def _local_state(label: str, t: Any, p: torch.Tensor) -> Any:
        return _shard_of(label, t, p) if _is_dtensor(p) else t

    def _labels(self, params: list[torch.Tensor]) -> list[str]:
        """Each of ``params`` (the params with grads, in group order) as
        ``param_groups[i]['params'][j]``: a param listed twice gets each place in turn."""
        where: dict[int, list[str]] = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                where.setdefault(id(p), []).append(f"param_groups[{gi}]['params'][{pi}]")
        seen: dict[int, int] = {}
        labels = []
        for p in params:
            places = where[id(p)]
            k = seen.get(id(p), 0)
            seen[id(p)] = k + 1
            labels.append(places[min(k, len(places) - 1)])
        return labels

    def _existing_state(self, p: torch.Tensor, label: str) -> dict[str, Any] | None:
        """``self.state[p]`` if it holds anything (without creating an entry), else None."""
        state = self.state.get(p)
        if state is None or (isinstance(state, dict) and len(state) == 0):
            return None
        if not isinstance(state, dict):
            raise TypeError(f"{label}: optimizer state must be a dict, got {type(state).__name__}")
        return state

    # -- fused schedules ---------------------------------------------------------------------
    #
    # The C++ step evaluates each group's schedule at its schedule_step and writes the lr (and
    # momentum or beta1) into the group's row itself; Python only hands it the steps, and shows
    # the values in the groups afterwards.

    def _schedule_of(self, gi: int) -> Schedule | None:
        schedule = self.param_groups[gi]["schedule"]
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(
                f"param_groups[{gi}]['schedule'] must be a pylr.schedules.Schedule or None, "
                f"got {type(schedule).__name__}"
            )
        return schedule

    def _schedule_step(self, gi: int) -> float:
        t = self.param_groups[gi]["schedule_step"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf:
            raise ValueError(
                f"param_groups[{gi}]['schedule_step'] must be a finite number >= 0, got {t!r}"
            )
        return float(t)

    def _apply_schedules(self) -> None:
        """Each fused schedule's lr — and momentum (or beta1) where it defines one, as
        ``ScheduleLR`` does — at the group's ``schedule_step``, written into the groups (when a
        schedule is attached; the step itself evaluates them in C++)."""
        for gi, group in enumerate(self.param_groups):
            schedule = self._schedule_of(gi)
            if schedule is not None:
                t = self._schedule_step(gi)
                node = schedule._node
                group["lr"] = node.value(t)
                if node.has_momentum:
                    self._set_momentum(group, node.momentum(t))

    def _refuse_schedule(self, gi: int) -> None:
        schedule = self.param_groups[gi]["schedule"]
        t = self._schedule_step(gi)
        node = schedule._node
        got = f"lr {node.value(t)!r}"
        if node.has_momentum:
            got += f" and momentum {node.momentum(t)!r}"
        raise ValueError(
            f"param_groups[{gi}]['schedule'] gives {got} at schedule_step {t:g}: an lr must be "
            "finite and >= 0, a momentum finite and >= 0 (Adam's beta1 also < 1); nothing was "
            "changed"
        )

    def _set_momentum(self, group: dict[str, Any], value: float) -> None:
        group["momentum"] = value

    def _groups_unchanged(self, plan: _Plan) -> bool:
        """Whether every group holds the very objects its row (and schedule) was filled from
        at the last step, none of them a tensor or a mutable list: then nothing in the rows
        can have changed, since the others are immutable values."""
        groups = self.param_groups
        seen = plan.seen
        if len(seen) != len(groups):
            return False
        get_seen = self._get_seen
        for group, last in zip(groups, seen):  # noqa: B905 (equal lengths)
            if last is None or not all(map(operator.is_, get_seen(group), last)):
                return False
        return True

    def _fill_group_rows(self, plan: _Plan) -> None:
        """Each group's checked row of scalars, rebuilt only when one of its values changed (a
        tensor hyperparameter by the value it holds, since schedulers ``fill_`` it in place;
        what a fused schedule sets is the schedule's to write, and not compared). A bad value
        raises and drops the plan (with any state it created)."""
        try:
            self._refill_group_rows(plan)
        except BaseException:
            self._discard(plan)
            raise

    def _refill_group_rows(self, plan: _Plan) -> None:
        groups = self.param_groups
        schedules = tuple(map(_GET_SCHEDULE, groups))
        if len(schedules) != len(plan.schedules) or any(
            map(operator.is_not, schedules, plan.schedules)
        ):
            plan.set_schedules(tuple(self._schedule_of(gi) for gi in range(len(groups))))
            # a row filled under a schedule holds placeholders (and the schedule's last
            # values): compared with the values now, it could pass for current
            plan.row_values = [None] * len(groups)
        get_row, get_seen = self._get_row, self._get_seen
        scheduled = plan.scheduled_momentum
        on_device, device = plan.table.backend is not None, plan.table.device
        plan.seen = seen = []
        for gi, group in enumerate(groups):
            raw = get_row(group)
            plain = _plain(raw)
            seen.append(get_seen(group) if plain else None)
            has_momentum = scheduled.get(gi)
            if has_momentum is not None:
                # placeholders the row's checks accept: the step writes (and checks) the
                # schedule's values
                raw = list(raw)
                raw[0] = 0.0
                if has_momentum:
                    at = self._momentum_at
                    m, fill = raw[at], self._momentum_placeholder
                    raw[at] = (fill, *m[1:]) if isinstance(m, (tuple, list)) else fill
                raw = tuple(raw)
            if on_device:
                # an lr tensor on the device is read by the kernels at each step (a tensor lr
                # is not plain: such a group is never skipped by the seen check)
                scheduled_lr = has_momentum is not None
                address = 0 if scheduled_lr else self._lr_on_device(gi, raw[0], device)
                plan.lr_on_device[gi] = address
                if address:
                    raw = (0.0, *raw[1:])
            values = raw if plain else tuple(map(scalar_value, raw))
            if values != plan.row_values[gi]:
                plan.groups[gi] = self._group_row(*raw)
                plan.row_values[gi] = values

    @staticmethod
    def _lr_on_device(gi: int, lr: Any, device: torch.device) -> int:
        """The address of a group's lr when it is a tensor on the params' device (the kernels
        read it at each step, so a scheduler's ``fill_`` needs no host sync), else 0 (a number,
        or a CPU tensor, read by value)."""
        if not isinstance(lr, torch.Tensor) or (lr.device.type == "cpu" != device.type):
            return 0
        if lr.device != device or lr.dtype != torch.float32 or lr.numel() != 1:
            raise TypeError(
                f"param_groups[{gi}]['lr'] is a {lr.dtype} tensor of {lr.numel()} elements on "
                f"{lr.device}; an lr tensor on a CUDA device must be a 1-element float32 "
                f"tensor on the params' device ({device})"
            )
        return lr.data_ptr()

    def _prepare_run(self, plan: _Plan) -> None:
        """Per-step values the step reads beyond the group rows (SGD: bfloat16 rounding steps)."""

    def _run(self, plan: _Plan, grad_scale: int, found_inf: int, coef: float) -> int:
        """The CPU step; a step taken bumps the params' versions (see ``step_and_bump``)."""
        self._prepare_run(plan)
        return step_and_bump(
            self._core_step,
            plan.table.numel,
            functools.partial(torch._C._increment_version, _versioned(plan)),
            plan.table.table,
            plan.groups,
            grad_scale,
            found_inf,
            coef,
            plan.schedule_set,
            plan.schedule_steps,
        )

    def _apply_schedules_on_host(self, plan: _Plan) -> int:
        return self._core_schedules(plan.groups, plan.schedule_set, plan.schedule_steps)

    def _launch(
        self, plan: _Plan, grad_scale: int, found_inf: int, coef: int, stream: int, device: int
    ) -> None:
        self._prepare_run(plan)
        getattr(plan.table.backend, f"{self._kernel}_step")(
            plan.table.table,
            plan.groups,
            plan.lr_on_device,
            grad_scale,
            found_inf,
            coef,
            stream,
            device,
        )

    # subclasses: _kernel ("adam" or "sgd"), _group_keys, _group_row, _plan_flags, _build_plan,
    # _after_step, _prepare_run


class Adam(_FusedOptimizer):
    """Adam (Kingma & Ba) — and AdamW with ``decoupled_weight_decay=True`` — fused.

    Per element, with ``t`` the param's step count after its increment::

        g = -grad if maximize else grad
        p *= 1 - lr * wd  (decoupled)   or   g += wd * p  (coupled)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g**2
        p -= lr / (1 - beta1**t) * m / (sqrt(max(v_max, v) if amsgrad else v)
                                          / sqrt(1 - beta2**t) + eps)
    """

    _group_columns = _core.ADAM_GROUP_COLUMNS
    _kernel = "adam"
    _momentum_key = "betas"
    _momentum_placeholder = 0.0
    _schedule_columns = (_core.ADAM_COLUMNS["lr"], _core.ADAM_COLUMNS["beta1"])
    _group_keys = (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "amsgrad",
        "maximize",
        "decoupled_weight_decay",
        "state_dtype",
        "rounding_seed",
    )

    @staticmethod
    def _group_row(*values: Any) -> list[float]:
        *hyper, state_dtype, seed = values
        return adam_group_row(*hyper, state_dtype == torch.bfloat16, seed)

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        schedule: Schedule | Sequence[Schedule | None] | None = None,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int = 0,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        _check_state_options(state_dtype, rounding_seed)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        for name, v in (
            ("lr", lr),
            ("eps", eps),
            ("weight_decay", weight_decay),
            ("betas[0]", betas[0]),
            ("betas[1]", betas[1]),
        ):
            _check.hyper(name, v)
        if not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], torch.Tensor) and isinstance(betas[1], torch.Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, b in enumerate(betas):
            if isinstance(b, torch.Tensor) and b.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
        # as torch: a tensor beta is kept (a 0-d view of it), read by value at each step
        betas = tuple(b.squeeze() if isinstance(b, torch.Tensor) and b.dim() else b for b in betas)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "state_dtype": state_dtype,
            "rounding_seed": rounding_seed,
        }
        super().__init__(params, defaults, schedule)

    def _init_group_defaults(self, group: dict[str, Any]) -> None:
        super()._init_group_defaults(group)
        group.setdefault("amsgrad", False)
        group.setdefault("maximize", False)
        group.setdefault("decoupled_weight_decay", False)

    def _plan_flags(self) -> tuple:
        return tuple(bool(g["amsgrad"]) for g in self.param_groups)

    _state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")

    def _build_plan(self) -> _Plan | None:
        """Check everything, create missing state as torch does, build the table."""
        params, grads, rows = self._params_with_grads()
        if not params:
            return None
        labels = self._labels(params)
        amsgrad = self._plan_flags()
        # what self.state holds now; torch creates a whole state where none exists and raises
        # KeyError for a state missing a key (amsgrad switched on mid-run, a popped entry)
        existing = [self._existing_state(p, label) for p, label in zip(params, labels, strict=True)]
        for state, label, r in zip(existing, labels, rows, strict=True):
            if state is not None:
                needs = self._state_keys if amsgrad[r] else (*self._state_keys[:2], "step")
                missing = [k for k in needs if k not in state]
                if missing:
                    raise KeyError(
                        f"{label}: optimizer state has no {missing[0]!r} (it holds "
                        f"{sorted(state)}); torch's Adam raises here too. Delete the param's "
                        "whole state (del opt.state[p]) to start it afresh"
                    )
        steps = [None if s is None else s["step"] for s in existing]
        for step, label in zip(steps, labels, strict=True):
            if step is not None and not (
                isinstance(step, torch.Tensor) and step.numel() == 1 and step.is_floating_point()
            ):
                raise TypeError(f"{label}: state 'step' must be a 1-element float tensor")
        local_params, local_grads = self._local_columns(params, grads, labels)
        shard = self._local_state
        columns = [
            local_params,
            local_grads,
            [
                None if s is None else shard(f"{label}: exp_avg", s["exp_avg"], p)
                for s, label, p in zip(existing, labels, params, strict=True)
            ],
            [
                None if s is None else shard(f"{label}: exp_avg_sq", s["exp_avg_sq"], p)
                for s, label, p in zip(existing, labels, params, strict=True)
            ],
            [
                shard(f"{label}: max_exp_avg_sq", s["max_exp_avg_sq"], p)
                if s is not None and amsgrad[r]
                else None
                for s, r, label, p in zip(existing, rows, labels, params, strict=True)
            ],
            # a float64 step, or one off its param's device, converts below (as torch's
            # load_state_dict does): CUDA params count their steps on their device
            [
                None if s is None or s.dtype != torch.float32 or s.device != lp.device else s
                for s, lp in zip(steps, local_params, strict=True)
            ],
        ]
        names = ("params", "grads", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")
        check_columns(names, columns, labels, steps=(False,) * 5 + (True,))
        new_dtypes = [
            self._state_dtype(p, r, label) if s is None else None
            for p, r, label, s in zip(params, rows, labels, existing, strict=True)
        ]
        # every check passed: create or convert state
        for i, (p, r) in enumerate(zip(params, rows, strict=True)):
            state = self.state[p]
            if existing[i] is None:
                state.clear()
                state["step"] = torch.zeros((), dtype=torch.float32, device=local_params[i].device)
                zeros = functools.partial(
                    torch.zeros_like, p, dtype=new_dtypes[i], memory_format=torch.preserve_format
                )
                state["exp_avg"] = zeros()
                state["exp_avg_sq"] = zeros()
                if amsgrad[r]:
                    state["max_exp_avg_sq"] = zeros()
            elif columns[5][i] is None:
                state["step"] = state["step"].to(local_params[i].device, torch.float32)
            columns[2][i] = shard("exp_avg", state["exp_avg"], p)
            columns[3][i] = shard("exp_avg_sq", state["exp_avg_sq"], p)
            columns[4][i] = (
                shard("max_exp_avg_sq", state["max_exp_avg_sq"], p) if amsgrad[r] else None
            )
            columns[5][i] = state["step"]
        plan = self._new_plan(
            params,
            columns,
            rows,
            (Proof.PARAM, Proof.GRAD, Proof.STATE, Proof.STATE, Proof.STATE, Proof.STATE),
            (None, None, *self._state_keys),
        )
        plan.created = [p for p, s in zip(params, existing, strict=True) if s is None]
        return plan

    def _set_momentum(self, group: dict[str, Any], value: float) -> None:
        beta2 = group["betas"][1]
        if group["betas"][0] != value:
            group["betas"] = (value, beta2)

    def _check_capture(self, plan: _Plan) -> None:
        if not all(group["capturable"] for group in self.param_groups):
            # torch's words (torch.optim.optimizer._cuda_graph_capture_health_check)
            raise RuntimeError(
                f"Attempting CUDA graph capture of step() for an instance of {type(self).__name__}"
                " but param_groups' capturable is False."
            )
        super()._check_capture(plan)

    def _after_step(self, plan: _Plan) -> None:
        pass


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam with decoupled weight decay, ``p *= 1 - lr * wd``."""

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        schedule: Schedule | Sequence[Schedule | None] | None = None,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int = 0,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            schedule=schedule,
            state_dtype=state_dtype,
            rounding_seed=rounding_seed,
        )

    def _init_group_defaults(self, group: dict[str, Any]) -> None:
        super()._init_group_defaults(group)
        group["decoupled_weight_decay"] = True


class SGD(_FusedOptimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay, fused.

    Per element::

        g = (-grad if maximize else grad) + wd * p
        buf = g (first step) or momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf        (momentum != 0)
        p -= lr * g
    """

    _group_columns = _core.SGD_GROUP_COLUMNS
    _kernel = "sgd"
    _momentum_key = "momentum"
    _momentum_placeholder = 0.5  # a Nesterov group's momentum must be > 0
    _schedule_columns = (_core.SGD_COLUMNS["lr"], _core.SGD_COLUMNS["momentum"])
    _group_keys = (
        "lr",
        "momentum",
        "dampening",
        "weight_decay",
        "nesterov",
        "maximize",
        "state_dtype",
        "rounding_seed",
    )

    @staticmethod
    def _group_row(*values: Any) -> list[float]:
        *hyper, state_dtype, seed = values
        return sgd_group_row(*hyper, state_dtype == torch.bfloat16, seed)

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | torch.Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        schedule: Schedule | Sequence[Schedule | None] | None = None,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int = 0,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        _check_state_options(state_dtype, rounding_seed)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        for name, v in (
            ("lr", lr),
            ("momentum", momentum),
            ("dampening", dampening),
            ("weight_decay", weight_decay),
        ):
            _check.hyper(name, v, low=-math.inf)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "state_dtype": state_dtype,
            "rounding_seed": rounding_seed,
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults, schedule)

    def _init_group_defaults(self, group: dict[str, Any]) -> None:
        super()._init_group_defaults(group)
        group.setdefault("nesterov", False)
        group.setdefault("maximize", False)

    def _plan_flags(self) -> tuple:
        # which groups' rows have a momentum buffer: those with a momentum, and those whose
        # fused schedule sets one (it may pass through 0 and back, or start from a group's 0);
        # a momentum switched on or off changes the table
        return tuple(
            scalar_value(group["momentum"]) != 0
            or getattr(group.get("schedule"), "has_momentum", False) is True
            for group in self.param_groups
        )

    def _build_plan(self) -> _Plan | None:
        """Check everything, take the momentum buffers the state holds (a missing one starts
        from the grad on this step, as torch's does), build the table."""
        params, grads, rows = self._params_with_grads()
        if not params:
            return None
        labels = self._labels(params)
        momentum = self._plan_flags()
        buffers: list[torch.Tensor | None] = []
        for p, label, r in zip(params, labels, rows, strict=True):
            state = self._existing_state(p, label) if momentum[r] else None
            buf = None if state is None else state.get("momentum_buffer")
            buffers.append(self._local_state(f"{label}: momentum_buffer", buf, p))
        local_params, local_grads = self._local_columns(params, grads, labels)
        columns = [local_params, local_grads, buffers]
        check_columns(("params", "grads", "momentum_buffer"), columns, labels)
        first = [momentum[r] and b is None for b, r in zip(buffers, rows, strict=True)]
        new_dtypes = [
            self._state_dtype(p, r, label) if new else None
            for p, r, label, new in zip(params, rows, labels, first, strict=True)
        ]
        fresh = []
        for i, p in enumerate(params):
            if first[i]:
                buf = torch.empty_like(p, dtype=new_dtypes[i], memory_format=torch.preserve_format)
                buffers[i] = self._local_state("momentum_buffer", buf, p)
                fresh.append((p, buf, rows[i]))
        plan = self._new_plan(
            params,
            columns,
            rows,
            (Proof.PARAM, Proof.GRAD, Proof.STATE),
            (None, None, "momentum_buffer"),
            first_step=first,
        )
        plan.fresh = fresh
        return plan

    def _prepare_run(self, plan: _Plan) -> None:
        # bfloat16 buffers rounded stochastically: the group's step count feeds the random bits
        for gi, group in enumerate(self.param_groups):
            if group["state_dtype"] == torch.bfloat16:
                plan.groups[gi, _SGD_ROUNDING_STEP] = group.setdefault("rounding_step", 0) % (2**32)

    def _needs_found_inf(self, plan: _Plan) -> bool:
        # a first step fills new buffers, which enter the state only if it is taken; the
        # rounding step of bfloat16 buffers counts the steps taken
        return bool(plan.fresh) or any(
            group["state_dtype"] == torch.bfloat16 for group in self.param_groups
        )

    def _after_step(self, plan: _Plan) -> None:
        # new buffers enter the state once a step has filled them: one whose group's momentum
        # was 0 on this step (a fused schedule's) was not touched, as torch's is not created
        # (the table still points at an unfilled one, which the state lacks: the next step's
        # proof fails and the plan is built again, with a fresh buffer)
        momentum = plan.groups[:, _core.SGD_COLUMNS["momentum"]]
        for p, buf, gi in plan.fresh:
            if momentum[gi] != 0:
                self.state[p]["momentum_buffer"] = buf
        plan.fresh = []
        for group in self.param_groups:
            if group["state_dtype"] == torch.bfloat16:
                group["rounding_step"] += 1
