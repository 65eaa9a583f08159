"""Drop-in replacements for ``torch.optim.lr_scheduler``, computed by pylr's C++ closed forms.

Each class has torch 2.13's name, constructor signature, defaults and validation (plus checks
torch lacks: a zero period raises ``ValueError`` here instead of ``ZeroDivisionError`` later),
subclasses ``torch.optim.lr_scheduler.LRScheduler`` so other libraries' ``isinstance`` checks
hold, keeps torch's attributes (``base_lrs``, ``last_epoch``, ``initial_lr`` in the groups, ...;
the same ``__dict__``) and exchanges ``state_dict()`` with the torch class of the same name.
Beyond torch, every path checks its numbers before it evaluates: ``last_epoch`` (a number in
``[-1, 2**53]``) in every constructor, ``step(epoch)``, and every value of a state dict in
``load_state_dict``, which raises ``ValueError`` naming the key (``state_dict['T_mult'] must be
>= 1, got 0``) before it changes anything — a rejected load leaves the scheduler as it was.

The closed form and torch's recursion. torch's chainable schedulers (StepLR, MultiStepLR,
ConstantLR, LinearLR, ExponentialLR, PolynomialLR, CosineAnnealingLR) update ``group["lr"]``
recursively, from the lr the group has: an lr edited by hand, or changed by another scheduler
stepping the same optimizer ("back-to-back" schedulers, ChainedScheduler), is carried forward.
pylr evaluates ``f_i(t)``, the closed form, as long as group ``i`` holds the value the closed form
gave at the previous step — the common case, and the fast one; when the group holds anything
else it continues from that lr with torch's recursive formula, operation for operation, and
returns to the closed form as soon as the two agree to rounding. So both a hand edit and two
schedulers on one optimizer behave as in torch, and resuming with ``last_epoch=k`` does too.
The other classes (CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts, LambdaLR) compute their lr
from scratch in torch as well: a hand edit is overwritten at the next step in both.
CosineAnnealingWarmRestarts carries a hand-edited ``T_cur`` forward as torch does. torch reads a
scheduler's attributes at every step; an attribute edited between steps (``sched.gamma = 0.5``,
``sched.base_lrs[0] = 0.2``, OneCycleLR's keys in a group) makes pylr build its closed forms
again, and takes effect as in torch.

What remains different: the closed form and torch's recursion round differently (they agree to
about 1e-15 relative per step, a float32 tensor lr to an ulp of float32); warm restarts find the
restart exactly where torch's ``step(epoch)`` misrounds its ``log`` and where torch's constructor,
resuming at ``last_epoch=k`` with ``T_mult > 1``, wraps ``T_cur`` only once.

A param group added with ``optimizer.add_param_group`` after a scheduler was built has no closed
form: the chainable schedulers (and ScheduleLR with one schedule for all groups) continue its lr
with torch's recursion, as torch does, and ``base_lrs`` keeps one entry per original group.
Where torch's class fails for lack of per-group values (CosineAnnealingLR,
CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR without the group keys it reads), pylr raises at
the next step, naming the group and what it lacks.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as SequenceABC
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim import lr_scheduler as _torch

from pylr import _core, _validate, schedules
from pylr.schedules import Schedule

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "ScheduleLR",
    "SequentialLR",
    "StepLR",
]

LRScheduler = _torch.LRScheduler


def _set_group_value(group: dict[str, Any], key: str, value: Any) -> None:
    """Write an lr or momentum into a param group, in place when it is a Tensor (as torch does)."""
    if isinstance(group[key], Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def _group_values(optimizer: Optimizer, key: str) -> list[Any]:
    return [
        g[key].clone() if isinstance(g[key], Tensor) else g[key] for g in optimizer.param_groups
    ]


def _per_group(name: str, optimizer: Optimizer, value: Any) -> list[Any]:
    """torch's _format_param: one value for every group, or a list with one per group; tensors
    are copied, so that editing the caller's tensor later changes nothing here."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. {name} has "
                f"{len(value)} values, param_groups has {len(optimizer.param_groups)}."
            )
        values = list(value)
    else:
        values = [value] * len(optimizer.param_groups)
    return [v.clone() if isinstance(v, Tensor) else v for v in values]


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _momentum_key(optimizer: Optimizer) -> str:
    """'betas' for Adam-like optimizers (beta1 is cycled), else 'momentum'; as torch decides."""
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
        )
    return "betas" if "betas" in optimizer.defaults else "momentum"


def _write_momentum(group: dict[str, Any], use_beta1: bool, value: float) -> None:
    if use_beta1:
        group["betas"] = (value, *group["betas"][1:])
    else:
        group["momentum"] = value


def _warn_step_order(optimizer: Optimizer) -> None:
    """torch's warnings on the first scheduler step, word for word."""
    if not hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        warnings.warn(
            "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
            "initialization. Please, make sure to call `optimizer.step()` before "
            "`lr_scheduler.step()`. See more details at "
            "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
            UserWarning,
            stacklevel=3,
        )
    elif not getattr(optimizer, "_opt_called", False):
        warnings.warn(
            "Detected call of `lr_scheduler.step()` before `optimizer.step()`. In PyTorch 1.1.0 "
            "and later, you should call them in the opposite order: `optimizer.step()` before "
            "`lr_scheduler.step()`.  Failure to do this will result in PyTorch skipping the "
            "first value of the learning rate schedule. See more details at "
            "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# Checks of constructor arguments and of state dicts (the primitives are pylr._validate's). A
# state dict is data: every bad value in it is a ValueError naming its key, raised before the
# scheduler changes.


def _check_last_epoch(value: Any, name: str = "last_epoch") -> None:
    """``last_epoch`` is a number in ``[-1, 2**53]``; -1 means not stepped yet (torch's
    SequentialLR leaves every scheduler but the first there)."""
    v = _validate.real(name, value, ge=-1.0)
    if v > _validate.MAX_COUNT:
        raise _validate.NotFiniteError(f"{name} must be <= 2**53, got {v}")


def _check_epoch(epoch: Any) -> None:
    """The ``epoch`` of ``step(epoch)``: a number in ``[0, 2**53]``."""
    v = _validate.real("epoch", epoch, ge=0.0)
    if v > _validate.MAX_COUNT:
        raise _validate.NotFiniteError(f"epoch must be <= 2**53, got {v}")


def _one_of(choices: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        _validate.choice(name, value, choices)

    return check


def _milestone_counts(name: str, value: Any) -> None:
    """MultiStepLR's ``milestones``: a Counter of step -> how many times it decays there."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a Counter of milestones, got {type(value).__name__}")
    total = 0
    for step, count in value.items():
        _validate.integer(f"{name} key", step)
        total += _validate.integer(f"{name}[{step}]", count)
    if total > _MAX_MILESTONES:
        raise ValueError(f"{name} counts {total} milestones, more than {_MAX_MILESTONES}")


_MAX_MILESTONES = 2**20  # the node holds each (repeated) milestone

# Keys of state dicts written by earlier pylr versions, which derived them; dropped on load.
_LEGACY_KEYS = ("_held_lrs", "_group_bases")


class _StateCheck:
    """The checks of one ``load_state_dict``. ``merged`` is what the scheduler would hold after
    the load — its attributes updated with ``state_dict``, as torch's load does — and every
    check names its key, ``state_dict['key']`` (under ``prefix`` for a nested state)."""

    def __init__(self, scheduler: Any, state_dict: Any, prefix: str) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{prefix} must be a dict, got {type(state_dict).__name__}")
        if "optimizer" in state_dict:
            raise ValueError(f"{prefix} must not hold 'optimizer' (a state dict never does)")
        self.scheduler = scheduler
        self.prefix = prefix
        self.state = {k: v for k, v in state_dict.items() if k not in _LEGACY_KEYS}
        self.merged = {**scheduler.__dict__, **self.state}

    def name(self, key: str) -> str:
        return f"{self.prefix}[{key!r}]"

    def value(self, key: str) -> Any:
        if key not in self.merged:
            raise ValueError(f"{self.prefix} lacks {key!r}")
        return self.merged[key]

    def check(self, key: str, check: Callable[..., Any], **bounds: Any) -> Any:
        """``merged[key]``, after ``check(name, value, **bounds)`` (a TypeError becomes a
        ValueError: in a state dict a wrong type is a bad value)."""
        value = self.value(key)
        try:
            check(self.name(key), value, **bounds)
        except TypeError as e:
            raise ValueError(str(e)) from None
        return value

    def each(
        self, key: str, check: Callable[..., Any], *, length: int | None = None, **bounds: Any
    ) -> list[Any]:
        """``merged[key]``, a list whose items each pass ``check`` (``length`` of them)."""
        value = self.value(key)
        name = self.name(key)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {type(value).__name__}")
        if length is not None and len(value) != length:
            raise ValueError(f"{name} must have {length} entries, got {len(value)}")
        for i, v in enumerate(value):
            try:
                check(f"{name}[{i}]", v, **bounds)
            except TypeError as e:
                raise ValueError(str(e)) from None
        return list(value)

    def per_group(self, key: str, check: Callable[..., Any], **bounds: Any) -> list[Any]:
        """A list with at most one entry per param group: groups added to the optimizer after
        the state was saved are continued from their lrs at the next step."""
        items = self.each(key, check, **bounds)
        n_groups = len(self.scheduler.optimizer.param_groups)
        if len(items) > n_groups:
            raise ValueError(
                f"{self.name(key)} has {len(items)} entries, more than the optimizer's "
                f"{n_groups} param groups"
            )
        return items

    def counters(self) -> None:
        """The bookkeeping every torch scheduler keeps."""
        self.check("last_epoch", lambda name, v: _check_last_epoch(v, name))
        if "_step_count" in self.merged:
            self.check("_step_count", _validate.integer)
        if "_last_lr" in self.merged:
            self.each("_last_lr", _validate.number)


def _check_nested(check: Callable[[Any, str], Any], state: Any, prefix: str) -> None:
    """Run a sub-scheduler's state check; its TypeError (a state that is not a dict) is a
    ValueError here too."""
    try:
        check(state, prefix)
    except TypeError as e:
        raise ValueError(str(e)) from None


# --------------------------------------------------------------------------------------------
# The closed forms, and where a group's lr leaves them

# A group's lr "is" the closed form's when they agree to a few units in the last place: a value
# torch's recursion computed (a loaded state) differs from the closed form by rounding only.
_ULPS = 4.0
_F64_EPS = _ULPS * sys.float_info.epsilon


def _shaped(track: _Track, i: int, which: int, value: Any) -> Any:
    """``value`` as torch's formula returns it for group ``i``: a new tensor where it computes
    with a tensor hyperparameter (``which``: 0 for the lr, 1 for the momentum), else as is."""
    like = track.like[i][which] if track.like is not None and i < len(track.like) else None
    if like is None or isinstance(value, Tensor):
        return value
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _likes(
    groups: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]],
) -> list[tuple[Tensor | None, Tensor | None]] | None:
    """``_Track.like`` from each group's (lr inputs, momentum inputs): the first tensor of each."""

    def first(values: tuple[Any, ...]) -> Tensor | None:
        return next((v for v in values if isinstance(v, Tensor)), None)

    likes = [(first(lr), first(momentum)) for lr, momentum in groups]
    return likes if any(a is not None or b is not None for a, b in likes) else None


def _snapshot(value: Any) -> Any:
    """A copy of scheduler attributes to compare them with later: lists, dicts (milestones) and
    the dicts in a list (OneCycleLR's phases) copied, everything else (numbers, tensors,
    functions) kept, so that comparing is cheap and an in-place edit of a container shows."""
    if isinstance(value, tuple):
        return tuple(_snapshot(v) for v in value)
    if isinstance(value, list):
        return [dict(v) if isinstance(v, dict) else v for v in value]
    if isinstance(value, dict):
        return type(value)(value)
    return value


def _near(a: float, b: float, eps: float) -> bool:
    return a == b or abs(a - b) <= eps * max(abs(a), abs(b))


def _tensor_eps(t: Tensor) -> float:
    return _ULPS * torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0


class _OffTrack:
    """The expectation of a group that does not follow the closed form: no lr is it."""

    __slots__ = ()


_OFF = _OffTrack()


class _TensorMark:
    """A tensor lr that follows the closed form: the tensor pylr filled, and its version counter
    right after (any later in-place write, by anyone, moves the counter)."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self.version = tensor._version

    def holds(self, lr: Any) -> bool:
        return lr is self.tensor and lr._version == self.version


class _Track:
    """What a scheduler derives from its state, outside ``__dict__`` (so outside ``state_dict()``,
    pickles and ``__dict__`` comparisons) and rebuilt on demand.

    ``nodes``: the C++ node of each param group that has a closed form (``len(base_lrs)`` of
    them; OneCycleLR: every group). ``expect[i]``, for the chainable schedulers: the lr of group
    ``i`` that shows it still follows its node — the float pylr wrote (compared by identity on
    the fast path), a :class:`_TensorMark`, or ``_OFF`` — valid while ``last_epoch == epoch``.
    ``extra``: what a class derives beside the nodes (a unit schedule, a restart position).
    ``like``: where torch's formula computes with tensor hyperparameters (CyclicLR, OneCycleLR),
    the tensor whose dtype and device the values written take. ``hypers``: a copy of the
    attributes the nodes were built from; torch reads them at every step, so a scheduler
    whose attributes no longer equal it (``sched.gamma = 0.5``) builds its nodes again."""

    __slots__ = (
        "chainable",
        "epoch",
        "expect",
        "extra",
        "hypers",
        "like",
        "momentum",
        "n_groups",
        "nodes",
    )

    def __init__(self, nodes: list[Any], chainable: bool, momentum: bool) -> None:
        self.nodes = nodes
        self.chainable = chainable
        self.momentum = momentum
        self.extra: Any = None
        self.like: list[tuple[Tensor | None, Tensor | None]] | None = None
        self.n_groups = -1
        self.epoch: Any = None
        self.expect: list[Any] = []
        self.hypers: tuple[Any, ...] = ()


class _ClosedForm(_torch.LRScheduler):
    """Base of the schedulers whose lr at ``last_epoch = t`` is a C++ closed form per group.

    Subclasses implement ``_build_nodes(base_lrs)``, one C++ schedule node per group (absolute
    lrs), from the attributes torch's class of the same name keeps — so a state dict from either
    class rebuilds the same nodes — and ``_check_state``, which checks those attributes in a
    state dict. The chainable ones (``_chainable``) also implement ``_continue(i, lr, t)``:
    torch's recursive update of one group's lr to step ``t``, used where the group does not hold
    its closed-form value (see the module notes). Where the schedule defines momentum and
    ``cycle_momentum`` is on, the momentum (or ``betas[0]``) of each group is written at every
    step, as torch does.

    The nodes and expectations live in the slot ``_track`` (see :class:`_Track`): built at the
    first step, again after ``load_state_dict`` and when the optimizer has gained a param group.
    A group added after the scheduler was built has no node: ``_adopt_group`` refuses it where
    torch's class fails for it, else the group is continued from its lr.
    """

    __slots__ = ("_track",)
    _chainable = True
    _private: tuple[str, ...] = ()  # attributes that are not state (constructor arguments)
    _kept_slots: tuple[str, ...] = ()  # slots that are state (pickled), beside __dict__
    # the attributes the nodes are built from, as each class names them
    _hypers: Callable[[Any], Any] = attrgetter("base_lrs")

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        self._track = None
        # torch's step() leaves this attribute on the instance; its __dict__ has it
        self._get_lr_called_within_step = False
        super().__init__(optimizer, last_epoch)

    def __getstate__(self) -> tuple[dict[str, Any], dict[str, Any]]:
        # the track is derived, and its nodes do not pickle
        return dict(self.__dict__), {k: getattr(self, k) for k in self._kept_slots}

    def __setstate__(self, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
        attributes, slots = state
        self.__dict__.update(attributes)
        for key, value in slots.items():
            setattr(self, key, value)
        self._track = None

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:  # pragma: no cover
        raise NotImplementedError

    def _new_track(self) -> _Track:
        nodes = self._build_nodes([float(b) for b in self.base_lrs])
        track = _Track(nodes, self._chainable, self._writes_momentum())
        track.like = self._tensor_likes()
        track.hypers = _snapshot(self._hypers(self))
        return track

    def _tensor_likes(self) -> list[tuple[Tensor | None, Tensor | None]] | None:
        """See ``_Track.like``; None where every hyperparameter is a number."""
        return None

    def _continue(self, i: int, lr: Any, t: Any) -> Any:  # pragma: no cover - chainable only
        raise NotImplementedError

    def _adopt_group(self, index: int, group: dict[str, Any]) -> None:
        """Accept ``param_groups[index]``, added after the scheduler was built (it is continued
        from its lr), or raise where torch's class cannot drive it either."""

    _nodes_read_groups = False  # OneCycleLR: the nodes come from each group's keys

    def _nodes_track(self) -> _Track:
        """The track with nodes for the optimizer's groups as they are now."""
        track = self._track
        groups = self.optimizer.param_groups
        fresh = track is not None and self._hypers(self) == track.hypers
        if fresh and track.n_groups == len(groups):
            return track
        n = len(self.base_lrs)
        if n > len(groups):
            raise ValueError(
                f"{type(self).__name__} has {n} base lrs but the optimizer has only "
                f"{len(groups)} param groups; build the scheduler again after removing groups"
            )
        for i in range(n, len(groups)):
            self._adopt_group(i, groups[i])
        if not fresh or (self._nodes_read_groups and track.n_groups != len(groups)):
            track = self._new_track()
        track.n_groups = len(groups)
        track.epoch = None
        self._track = track
        return track

    def _ensure_track(self) -> _Track:
        """The track, with each group's expectation at the current ``last_epoch``."""
        track = self._nodes_track()
        if track.epoch != self.last_epoch:
            if track.chainable:
                track.expect = [
                    self._expectation(track, i, group)
                    for i, group in enumerate(self.optimizer.param_groups)
                ]
            track.epoch = self.last_epoch
        return track

    def _expectation(self, track: _Track, i: int, group: dict[str, Any]) -> Any:
        """Whether group ``i`` holds its closed-form value at ``last_epoch`` (before a step):
        the lr itself (or its mark) if so, else ``_OFF``. Before the first step the closed form
        starts from the group's initial lr; a constructor resuming at ``last_epoch >= 0``
        continues from whatever the group holds, as torch's does."""
        t = self.last_epoch
        if i >= len(track.nodes) or (t >= 0 and self._is_initial):
            return _OFF
        ref = float(self.base_lrs[i]) if t < 0 else track.nodes[i].value(t)
        lr = group["lr"]
        if isinstance(lr, Tensor):
            return _TensorMark(lr) if _near(lr.item(), ref, _tensor_eps(lr)) else _OFF
        return lr if _near(float(lr), ref, _F64_EPS) else _OFF

    def _writes_momentum(self) -> bool:
        return bool(getattr(self, "cycle_momentum", False))

    def _write_momenta(self, track: _Track, t: float) -> None:
        # a group without a node (added later) has no momentum schedule
        groups = self.optimizer.param_groups
        use_beta1 = self.use_beta1
        if track.like is None and not use_beta1:
            for group, node in zip(groups, track.nodes, strict=False):
                group["momentum"] = node.momentum(t)
            return
        for i, (group, node) in enumerate(zip(groups, track.nodes, strict=False)):
            _write_momentum(group, use_beta1, _shaped(track, i, 1, node.momentum(t)))

    def _values_at(self, t: float, track: _Track) -> list[Any]:
        """Each group's closed-form lr at ``t`` (a group without a node keeps its lr); writes
        the momentum where the schedule cycles it."""
        if track.momentum:
            self._write_momenta(track, t)
        lrs = [node.value(t) for node in track.nodes]
        groups = self.optimizer.param_groups
        if len(lrs) < len(groups):
            lrs += [g["lr"] for g in groups[len(lrs) :]]
        return lrs

    def step(self, epoch: int | None = None) -> None:
        """Advance ``last_epoch`` by one (or set it to ``epoch``, deprecated as in torch) and
        write each group's lr: the closed form where the group follows it, else torch's
        recursion from the group's lr (see the module notes). Same warnings and bookkeeping as
        torch's step(), in fewer Python operations."""
        if epoch is not None:
            _check_epoch(epoch)
        track = self._track
        groups = self.optimizer.param_groups
        if (
            track is None
            or track.epoch != self.last_epoch
            or track.n_groups != len(groups)
            or self._hypers(self) != track.hypers
        ):
            track = self._ensure_track()  # before anything changes: it may refuse a new group
        if self._step_count == 1:
            _warn_step_order(self.optimizer)
        self._step_count += 1
        if epoch is None:
            t = self.last_epoch + 1
        else:
            warnings.warn(_torch.EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
            t = epoch
        self.last_epoch = t
        if track.chainable and epoch is None:
            if track.momentum:
                self._write_momenta(track, t)
            self._last_lr = self._step_chain(track, groups, t)
        else:
            # torch too takes the closed form for step(epoch)
            self._last_lr = self._write_closed(track, groups, t)
        track.epoch = t

    def _write_closed(self, track: _Track, groups: list[dict[str, Any]], t: Any) -> list[Any]:
        lrs = self._values_at(t, track)
        tensors = False
        if not track.chainable and track.like is None:
            for group, lr in zip(groups, lrs, strict=True):
                current = group["lr"]
                if isinstance(current, Tensor):
                    current.fill_(lr)
                    tensors = True
                else:
                    group["lr"] = lr
            return _group_values(self.optimizer, "lr") if tensors else lrs
        expect = [] if track.chainable else None
        for i, (group, lr) in enumerate(zip(groups, lrs, strict=True)):
            current = group["lr"]
            if track.like is not None and not isinstance(current, Tensor):
                # torch computes with tensor hyperparameters, and stores the tensor
                current = group["lr"] = _shaped(track, i, 0, current)
            if isinstance(current, Tensor):
                if lr is not current:
                    current.fill_(lr)
                tensors = True
                mark: Any = _TensorMark(current)
            else:
                group["lr"] = mark = lr
            if expect is not None:
                expect.append(mark)
        if expect is not None:
            expect[len(track.nodes) :] = [_OFF] * (len(groups) - len(track.nodes))
            track.expect = expect
        return _group_values(self.optimizer, "lr") if tensors else lrs

    def _step_chain(self, track: _Track, groups: list[dict[str, Any]], t: int) -> list[Any]:
        nodes, expect = track.nodes, track.expect
        lrs = []
        for i, group in enumerate(groups):
            lr = group["lr"]
            if lr is expect[i]:
                # the float pylr wrote at the last step: the closed form goes on
                v = nodes[i].value(t)
                group["lr"] = expect[i] = v
                lrs.append(v)
            else:
                lrs.append(self._step_group(track, i, group, lr, t))
        return lrs

    def _step_group(self, track: _Track, i: int, group: dict[str, Any], lr: Any, t: int) -> Any:
        """One group's step off the fast path — a tensor lr, an lr someone else wrote, a group
        with no node — returning the group's new lr (a copy of a tensor) for ``_last_lr``."""
        mark = track.expect[i]
        is_tensor = isinstance(lr, Tensor)
        node = track.nodes[i] if i < len(track.nodes) else None
        if is_tensor:
            on = isinstance(mark, _TensorMark) and mark.holds(lr)
        else:
            on = mark is not _OFF and not isinstance(mark, _TensorMark) and lr == mark
        if on:
            value: Any = node.value(t)
        else:
            # torch's recursion from the lr the group holds; back on the closed form where the
            # two agree to rounding
            value = self._continue(i, lr, t)
            if node is not None:
                closed = node.value(t)
                seen = value.item() if isinstance(value, Tensor) else float(value)
                eps = _tensor_eps(lr) if is_tensor else _F64_EPS
                if _near(seen, closed, eps):
                    value, on = closed, True
        if is_tensor:
            if value is not lr:
                lr.fill_(value)
            track.expect[i] = _TensorMark(lr) if on else _OFF
            return lr.clone()
        if isinstance(value, Tensor):  # a tensor base lr in torch's formula: store a float
            value = value.item()
        group["lr"] = value
        track.expect[i] = value if on else _OFF
        return value

    def get_lr(self) -> list[Any]:
        """What torch's ``get_lr`` returns: for the chainable schedulers its recursion applied to
        each group's lr at ``last_epoch`` (called outside ``step()`` that is one step more, as in
        torch), for the others the lr at ``last_epoch``. ``get_last_lr()`` is the lr in use."""
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use "
                "`get_last_lr()`.",
                UserWarning,
                stacklevel=2,
            )
        track = self._nodes_track()
        if track.chainable:
            groups = self.optimizer.param_groups
            return [self._continue(i, g["lr"], self.last_epoch) for i, g in enumerate(groups)]
        return self._values_at(self.last_epoch, track)

    def _get_closed_form_lr(self) -> list[Any]:
        return self._values_at(self.last_epoch, self._nodes_track())

    def state_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in self.__dict__.items() if k != "optimizer" and k not in self._private
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load (the state's entries become attributes), once every value has passed the
        checks: a bad one raises ValueError naming its key and leaves the scheduler unchanged."""
        state = self._checked_state(state_dict)
        self.__dict__.update(state)
        self._after_load()

    def _after_load(self) -> None:
        """Forget what was derived from the state."""
        self._track = None

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        """``state_dict`` as ``load_state_dict`` applies it, checked: each value by
        ``_check_state``, then the nodes built from the result, so that the next step cannot
        fail on it."""
        c = _StateCheck(self, state_dict, prefix)
        c.counters()
        c.per_group("base_lrs", _validate.scalar)
        self._check_state(c)
        probe = object.__new__(type(self))
        probe.__dict__.update(c.merged)
        probe._after_load()
        try:
            probe._new_track()
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{prefix} is not a valid {type(self).__name__} state: {e}") from None
        return c.state

    def _check_state(self, c: _StateCheck) -> None:  # pragma: no cover - every class has one
        raise NotImplementedError

    def _not_adoptable(self, index: int, needs: str) -> ValueError:
        """The error of a scheduler that, like its torch twin, cannot drive a group added after
        it was built."""
        return ValueError(
            f"{type(self).__name__} cannot drive param_groups[{index}], which was added to the "
            f"optimizer after the scheduler was built: it needs {needs} for every group, as "
            f"torch's {type(self).__name__} does. Build the scheduler after adding the group."
        )


def _try_schedule(factory: Callable[..., Schedule], *args: Any, **kwargs: Any) -> None:
    """Construct a pure schedule once so that bad arguments raise, naming themselves, up front."""
    factory(*args, **kwargs)


class StepLR(_ClosedForm):
    """Decays each group's lr by ``gamma`` every ``step_size`` epochs:
    ``lr = base_lr * gamma ** (last_epoch // step_size)``; from an lr set elsewhere, torch's
    ``lr *= gamma`` at each multiple of ``step_size``."""

    _hypers = attrgetter("step_size", "gamma", "base_lrs")

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        _check_last_epoch(last_epoch)
        _try_schedule(schedules.Step, step_size, gamma)
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [schedules.Step(self.step_size, self.gamma, b)._node for b in base_lrs]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        if t == 0 or t % self.step_size != 0:
            return lr
        return lr * self.gamma

    def _check_state(self, c: _StateCheck) -> None:
        c.check("step_size", _validate.integer, ge=1)
        c.check("gamma", _validate.real, gt=0.0)


class MultiStepLR(_ClosedForm):
    """Decays each group's lr by ``gamma`` at every milestone:
    ``lr = base_lr * gamma ** bisect_right(milestones, last_epoch)`` (repeats compound); from an
    lr set elsewhere, torch's ``lr *= gamma ** milestones[last_epoch]``."""

    _hypers = attrgetter("milestones", "gamma", "base_lrs")

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        marks = list(milestones)
        _try_schedule(schedules.MultiStep, marks, gamma)
        self.milestones = Counter(marks)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        marks = sorted(self.milestones.elements())
        return [schedules.MultiStep(marks, self.gamma, b)._node for b in base_lrs]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        if t not in self.milestones:
            return lr
        return lr * self.gamma ** self.milestones[t]

    def _check_state(self, c: _StateCheck) -> None:
        c.check("milestones", _milestone_counts)
        c.check("gamma", _validate.real, gt=0.0)


class ConstantLR(_ClosedForm):
    """``lr = base_lr * factor`` until ``total_iters``, then ``base_lr``; from an lr set
    elsewhere, torch's ``lr *= factor`` at step 0 and ``lr *= 1 / factor`` at ``total_iters``."""

    _hypers = attrgetter("factor", "total_iters", "base_lrs")

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        _validate.integer("total_iters", total_iters)
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _check_state(self, c: _StateCheck) -> None:
        c.check("factor", _validate.real, ge=0.0, le=1.0)
        c.check("total_iters", _validate.integer)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [
            schedules.sequence(
                [schedules.Constant(b * self.factor), schedules.Constant(b)], [self.total_iters]
            )._node
            for b in base_lrs
        ]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        if t == 0:
            return lr * self.factor
        if t != self.total_iters:
            return lr
        if self.factor == 0.0:
            # torch divides by zero here; the lr the closed form ends at is the base lr
            return self.base_lrs[i] if i < len(self.base_lrs) else lr
        return lr * (1.0 / self.factor)


class LinearLR(_ClosedForm):
    """``lr = base_lr * (start + (end - start) * min(last_epoch, total_iters) / total_iters)``;
    from an lr set elsewhere, torch's ratio of consecutive factors."""

    _hypers = attrgetter("start_factor", "end_factor", "total_iters", "base_lrs")

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or "
                "equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        _try_schedule(schedules.Linear, start_factor, end_factor, total_iters)
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [
            schedules.Linear(self.start_factor, self.end_factor, self.total_iters, b)._node
            for b in base_lrs
        ]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        if t == 0:
            return lr * self.start_factor
        if self._is_initial or t > self.total_iters:
            return lr
        slope = self.end_factor - self.start_factor
        # lr * (1 + (e - s) / (T * s + (t - 1) * (e - s))), as torch writes it
        return lr * (1.0 + slope / (self.total_iters * self.start_factor + (t - 1) * slope))

    def _check_state(self, c: _StateCheck) -> None:
        c.check("start_factor", _validate.real, gt=0.0, le=1.0)
        c.check("end_factor", _validate.real, ge=0.0, le=1.0)
        c.check("total_iters", _validate.integer, ge=1)


class ExponentialLR(_ClosedForm):
    """``lr = base_lr * gamma ** last_epoch``; from an lr set elsewhere, torch's
    ``lr *= gamma``."""

    _hypers = attrgetter("gamma", "base_lrs")

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        _check_last_epoch(last_epoch)
        _try_schedule(schedules.Exponential, gamma)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [schedules.Exponential(self.gamma, b)._node for b in base_lrs]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        # a constructor's first step (resuming at last_epoch=k too) keeps the lr, as torch's
        return lr if self._is_initial else lr * self.gamma

    def _check_state(self, c: _StateCheck) -> None:
        c.check("gamma", _validate.real, gt=0.0)


class PolynomialLR(_ClosedForm):
    """``lr = base_lr * (1 - min(last_epoch, total_iters) / total_iters) ** power``; from an lr
    set elsewhere, torch's ratio of consecutive factors."""

    _hypers = attrgetter("total_iters", "power", "base_lrs")

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        _try_schedule(schedules.Polynomial, total_iters, power)
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [schedules.Polynomial(self.total_iters, self.power, b)._node for b in base_lrs]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        if self._is_initial or t > self.total_iters:
            return lr
        total = self.total_iters
        decay = ((1.0 - t / total) / (1.0 - (t - 1) / total)) ** self.power
        return lr * decay

    def _check_state(self, c: _StateCheck) -> None:
        c.check("total_iters", _validate.integer, ge=1)
        c.check("power", _validate.real, ge=0.0)


class CosineAnnealingLR(_ClosedForm):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * last_epoch / T_max)) / 2``,
    periodic past ``T_max`` exactly like torch's; from an lr set elsewhere, torch's recursion
    ``eta_min + (lr - eta_min) * (1 + cos(pi t / T)) / (1 + cos(pi (t - 1) / T))``."""

    _hypers = attrgetter("T_max", "eta_min", "base_lrs")

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        _try_schedule(schedules.Cosine, T_max, eta_min)
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [schedules.Cosine(self.T_max, self.eta_min, b)._node for b in base_lrs]

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        if self._is_initial:
            return lr
        eta_min, t_max = self.eta_min, self.T_max
        if self._step_count == 1 and t > 0:
            return eta_min + (self.base_lrs[i] - eta_min) * (1 + math.cos(t * math.pi / t_max)) / 2
        if (t - 1 - t_max) % (2 * t_max) == 0:
            # the step after a trough, where the ratio below is 0 / 0
            return lr + (self.base_lrs[i] - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        ratio = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
        return ratio * (lr - eta_min) + eta_min

    def _adopt_group(self, index: int, group: dict[str, Any]) -> None:
        # torch's recursive cosine reads base_lrs after each trough (zip fails there)
        raise self._not_adoptable(index, "a base lr")

    def _check_state(self, c: _StateCheck) -> None:
        c.check("T_max", _validate.real, gt=0.0)
        c.check("eta_min", _validate.real)


class CosineAnnealingWarmRestarts(_ClosedForm):
    """SGDR: ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, restarting
    after ``T_0``, ``T_0 * T_mult``, ... epochs. ``step(epoch)`` takes fractional epochs.

    The position in the restarts is computed exactly from the epoch (torch's ``step(epoch)``
    uses a ``log`` that can misround at a restart, and a constructor resuming at
    ``last_epoch=k`` with ``T_mult > 1`` wraps ``T_cur`` only once). A ``T_cur`` or ``T_i`` set
    by hand (or loaded from a state torch's recursion left inconsistent) is carried forward with
    torch's recursion, ``T_cur += 1``, wrapping at ``T_i``.
    """

    _hypers = attrgetter("T_0", "T_mult", "eta_min", "base_lrs")

    _chainable = False

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
            )
        _try_schedule(schedules.CosineWarmRestarts, T_0, T_mult, eta_min)
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        return [
            schedules.CosineWarmRestarts(self.T_0, self.T_mult, self.eta_min, b)._node
            for b in base_lrs
        ]

    def _adopt_group(self, index: int, group: dict[str, Any]) -> None:
        raise self._not_adoptable(index, "a base lr")

    def _check_state(self, c: _StateCheck) -> None:
        c.check("T_0", _validate.integer, ge=1)
        c.check("T_mult", _validate.integer, ge=1)
        c.check("eta_min", _validate.real)
        c.check("T_i", _validate.real, gt=0.0)
        c.check("T_cur", _validate.real, ge=-1.0)

    def _position(self) -> float:
        """The (possibly fractional) epoch the scheduler stands at, from torch's state."""
        return math.floor(self.last_epoch) - math.floor(self.T_cur) + self.T_cur

    def _restart_position(self, track: _Track) -> float | None:
        """The epoch at which ``T_cur`` and ``T_i`` are the closed form's, or None where they
        were set otherwise."""
        if track.extra is not None:
            p, t_cur, t_i = track.extra  # what the last step wrote
            if self.T_cur == t_cur and self.T_i == t_i and self.last_epoch == math.floor(p):
                return p
        if self._is_initial:
            # a constructor resuming at last_epoch=k: T_cur = k is that epoch
            return float(self.last_epoch)
        p = self._position()
        t_cur, t_i = _core.warm_restart_position(self.T_0, self.T_mult, p)
        scale = _F64_EPS * max(1.0, t_i)
        if abs(t_cur - self.T_cur) <= scale and abs(t_i - self.T_i) <= scale:
            return p
        return None

    def step(self, epoch: float | None = None) -> None:
        """Advance one epoch, or jump to ``epoch`` (may be fractional, e.g. ``e + i / iters``)."""
        track = self._ensure_track()  # refuses added groups before anything changes
        if epoch is None:
            p = None if self.last_epoch < 0 else self._restart_position(track)
            if p is None and self.last_epoch >= 0:
                self._step_recursively(track)
                return
            t = 0 if p is None else p + 1
        else:
            if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
                raise TypeError(f"epoch must be a number, got {type(epoch).__name__}")
            if not epoch >= 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            _check_epoch(epoch)
            if self.T_mult == 1 and epoch >= self.T_0 and self.T_i != self.T_0:
                # torch's step(epoch) with T_mult=1 sets T_cur only: an edited T_i stays
                self.T_cur = epoch % self.T_0
                self.last_epoch = math.floor(epoch)
                self._write_from_state(track)
                return
            t = epoch
        self.last_epoch = math.floor(t)
        lrs = self._values_at(t, track)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = _group_values(self.optimizer, "lr")
        track.extra = (t, self.T_cur, self.T_i)
        track.epoch = self.last_epoch

    def _step_recursively(self, track: _Track) -> None:
        """torch's step from the ``T_cur`` and ``T_i`` the scheduler holds."""
        self.T_cur = self.T_cur + 1
        if self.T_cur >= self.T_i:
            self.T_cur = self.T_cur % self.T_i
            self.T_i = self.T_i * self.T_mult
        self.last_epoch = math.floor(self.last_epoch + 1)
        self._write_from_state(track)

    def _write_from_state(self, track: _Track) -> None:
        for group, lr in zip(self.optimizer.param_groups, self._lrs_from_state(), strict=True):
            _set_group_value(group, "lr", lr)
        self._last_lr = _group_values(self.optimizer, "lr")
        track.extra = None
        track.epoch = self.last_epoch

    def _lrs_from_state(self) -> list[float]:
        """torch's get_lr: the lrs at the ``T_cur`` and ``T_i`` the scheduler holds."""
        cos = 1 + math.cos(math.pi * self.T_cur / self.T_i)
        return [self.eta_min + (float(b) - self.eta_min) * cos / 2 for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """The lr of each group at the scheduler's ``T_cur`` and ``T_i``, as torch's."""
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use "
                "`get_last_lr()`.",
                UserWarning,
                stacklevel=2,
            )
        return self._lrs_from_state()

    def _get_closed_form_lr(self) -> list[float]:
        # torch's class has none: its _update_lr (SequentialLR's milestones) reads get_lr
        return self._lrs_from_state()

    def _values_at(self, t: float, track: _Track) -> list[float]:
        t_cur, t_i = _core.warm_restart_position(self.T_0, self.T_mult, float(t))
        # torch keeps T_cur and T_i as ints while the epochs are whole
        self.T_cur = int(t_cur) if t_cur.is_integer() else t_cur
        self.T_i = int(t_i) if t_i.is_integer() else t_i
        return [node.value(t) for node in track.nodes]


class CyclicLR(_ClosedForm):
    """Cyclical learning rates (Smith, 2017), with momentum cycled inversely.

    ``lr = base_lr + (max_lr - base_lr) * h(t) * s`` with ``h`` the triangle wave and ``s`` the
    mode's scale (``1``, ``1 / 2**(cycle - 1)``, ``gamma**t``) or the user's ``scale_fn`` — the
    one part that runs in Python. As in torch, the constructor's first step starts from each
    group's ``initial_lr`` where the group already has one (after loading an optimizer state),
    and from ``base_lr`` after it. Tensor ``base_lr``, ``max_lr`` and momenta are copied.
    """

    __slots__ = ("_exact_steps",)
    _kept_slots = ("_exact_steps",)
    _chainable = False
    _hypers = attrgetter(
        "base_lrs",
        "max_lrs",
        "total_size",
        "step_ratio",
        "mode",
        "gamma",
        "scale_mode",
        "_scale_fn_custom",
        "cycle_momentum",
    )

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_last_epoch(last_epoch)
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable, got {type(scale_fn).__name__}")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        base_momentums = _per_group("base_momentum", optimizer, base_momentum)
        max_momentums = _per_group("max_momentum", optimizer, max_momentum)
        for i, (b, m, bm, mm) in enumerate(
            zip(base_lrs, max_lrs, base_momentums, max_momentums, strict=True)
        ):
            _try_schedule(
                schedules.Cyclic,
                _validate.scalar(f"base_lr[{i}]", b),
                _validate.scalar(f"max_lr[{i}]", m),
                step_size_up,
                step_size_down,
                mode if scale_fn is None else "triangular",
                gamma,
                _validate.scalar(f"base_momentum[{i}]", bm),
                _validate.scalar(f"max_momentum[{i}]", mm),
            )
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                # a copy: torch's group would alias its base_lrs entry, which then drifts
                _set_group_value(group, "lr", lr.clone() if isinstance(lr, Tensor) else lr)
        self.max_lrs = max_lrs
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        # up and down as given, while total_size and step_ratio are the ones they gave
        self._exact_steps: tuple[float, ...] | None = (up, down, self.total_size, self.step_ratio)
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer) == "betas"
            self.base_momentums = base_momentums
            self.max_momentums = max_momentums
            if last_epoch == -1:
                for mm, bm, group in zip(
                    max_momentums, base_momentums, optimizer.param_groups, strict=True
                ):
                    _write_momentum(group, self.use_beta1, mm)
                    group["max_momentum"] = mm
                    group["base_momentum"] = bm
        # the first step runs from base_lrs = the groups' initial lrs, as torch's does
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs
        self._track = None

    def _init_scale_fn(self) -> None:
        """torch's: the built-in mode's scale function (kept for torch's attribute; the closed
        form computes it in C++), and the scale mode it implies."""
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref = self._triangular_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref = self._triangular2_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "exp_range":
            self._scale_fn_ref = partial(self._exp_range_scale_fn, self.gamma)
            self.scale_mode = "iterations"

    def scale_fn(self, x: float) -> float:
        """The amplitude scale at ``x`` (the cycle or the step, per ``scale_mode``)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    @staticmethod
    def _triangular_scale_fn(x: float) -> float:
        return 1.0

    @staticmethod
    def _triangular2_scale_fn(x: float) -> float:
        return 1 / 2.0 ** (x - 1)

    @staticmethod
    def _exp_range_scale_fn(gamma: float, x: float) -> float:
        return gamma**x

    def _cyclic(self, base: float, top: float, base_m: float, max_m: float, mode: str) -> Any:
        exact = self._exact_steps
        if exact is not None and exact[2:] == (self.total_size, self.step_ratio):
            up, down = exact[:2]
        else:
            up = self.total_size * self.step_ratio
            down = self.total_size * (1 - self.step_ratio)
        return schedules.Cyclic(base, top, up, down, mode, self.gamma, base_m, max_m)._node

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        cycling = self.cycle_momentum
        momenta = (
            zip(self.base_momentums, self.max_momentums, strict=True)
            if cycling
            else [(0.0, 0.0)] * len(base_lrs)
        )
        mode = self.mode if self._scale_fn_custom is None else "triangular"
        return [
            self._cyclic(float(b), float(m), float(bm), float(mm), mode)
            for b, m, (bm, mm) in zip(base_lrs, self.max_lrs, momenta, strict=True)
        ]

    def _tensor_likes(self) -> list[tuple[Tensor | None, Tensor | None]] | None:
        momenta = (
            zip(self.base_momentums, self.max_momentums, strict=True)
            if self.cycle_momentum
            else [(None, None)] * len(self.base_lrs)
        )
        return _likes(
            ((b, m), pair) for b, m, pair in zip(self.base_lrs, self.max_lrs, momenta, strict=True)
        )

    def _new_track(self) -> _Track:
        track = super()._new_track()
        # the unit triangle h(t): 0 + (1 - 0) * h * 1, for a custom scale_fn
        track.extra = self._cyclic(0.0, 1.0, 0.0, 0.0, "triangular")
        return track

    def _values_at(self, t: float, track: _Track) -> list[Any]:
        if self._scale_fn_custom is None:
            return super()._values_at(t, track)
        h = track.extra.value(t)
        scale = self._scale_fn_custom(
            math.floor(1 + t / self.total_size) if self.scale_mode == "cycle" else t
        )
        lrs = [
            float(b) + (float(m) - float(b)) * h * scale
            for b, m in zip(self.base_lrs, self.max_lrs, strict=True)
        ]
        if self.cycle_momentum:
            for i, (group, bm, mm) in enumerate(
                zip(
                    self.optimizer.param_groups,
                    self.base_momentums,
                    self.max_momentums,
                    strict=True,
                )
            ):
                bm, mm = float(bm), float(mm)
                momentum = _shaped(track, i, 1, mm - (mm - bm) * h * scale)
                _write_momentum(group, self.use_beta1, momentum)
        return lrs

    def _adopt_group(self, index: int, group: dict[str, Any]) -> None:
        raise self._not_adoptable(index, "a base lr, a max lr and (cycling momentum) momenta")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        fn = state.pop("_scale_fn_custom")
        state["_scale_fn_custom"] = None
        if fn is not None and not isinstance(fn, types.FunctionType):
            state["_scale_fn_custom"] = fn.__dict__.copy()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, checked as for every scheduler; the attributes of a callable-object
        ``scale_fn`` are restored too."""
        fn = state_dict.get("_scale_fn_custom") if isinstance(state_dict, Mapping) else None
        super().load_state_dict(state_dict)
        if fn is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(fn)

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        if isinstance(state_dict, Mapping):
            # the scale function's attributes are restored apart (see load_state_dict)
            state_dict = dict(state_dict)
            fn = state_dict.pop("_scale_fn_custom", None)
            state_dict.pop("_scale_fn_ref", None)
            if fn is not None and not isinstance(fn, dict):
                raise ValueError(
                    f"{prefix}['_scale_fn_custom'] must be None or a dict of the scale "
                    f"function's attributes, got {type(fn).__name__}"
                )
        return super()._checked_state(state_dict, prefix)

    def _after_load(self) -> None:
        super()._after_load()
        self._exact_steps = None  # derived from total_size and step_ratio from now on
        self._init_scale_fn()

    def _check_state(self, c: _StateCheck) -> None:
        n = len(c.value("base_lrs"))
        c.each("max_lrs", _validate.scalar, length=n)
        c.check("total_size", _validate.real, gt=0.0)
        c.check("step_ratio", _validate.real, gt=0.0, lt=1.0)
        if c.merged.get("_scale_fn_custom") is None:
            c.check("mode", _one_of(("triangular", "triangular2", "exp_range")))
        c.check("gamma", _validate.real, gt=0.0)
        c.check("scale_mode", _one_of(("cycle", "iterations")))
        if c.check("cycle_momentum", _validate.flag):
            c.check("use_beta1", _validate.flag)
            c.each("base_momentums", _validate.scalar, length=n)
            c.each("max_momentums", _validate.scalar, length=n)


class _GroupKeyError(KeyError):
    """A KeyError (as torch raises) whose message prints as written."""

    def __str__(self) -> str:
        return str(self.args[0])


def _one_cycle_phases(name: str, value: Any) -> None:
    """OneCycleLR's ``_schedule_phases``: two or three dicts whose ``end_step``s are finite and
    each differ from the one before (0 before the first): no phase of zero length."""
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise ValueError(f"{name} must be a list of 2 or 3 phases, got {value!r:.100}")
    start = 0.0
    for i, phase in enumerate(value):
        if not isinstance(phase, Mapping) or "end_step" not in phase:
            raise ValueError(f"{name}[{i}] must be a dict with an 'end_step'")
        end = _validate.real(f"{name}[{i}]['end_step']", phase["end_step"])
        if end == start:
            raise ValueError(f"{name}[{i}] has zero length (end_step {end})")
        start = end


_ONE_CYCLE_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
_one_cycle_keys = itemgetter(*_ONE_CYCLE_KEYS)


def _one_cycle_hypers(self: Any) -> tuple[Any, ...]:
    """What OneCycleLR's nodes are built from: its attributes, and the keys it reads from every
    param group (torch's reads them at every step)."""
    groups = self.optimizer.param_groups
    try:
        keys = list(map(_one_cycle_keys, groups))
    except KeyError:  # no momenta (cycle_momentum=False), or a group added without the keys
        keys = [tuple(map(g.get, _ONE_CYCLE_KEYS)) for g in groups]
    return (
        self.total_steps,
        self._schedule_phases,
        self._anneal_func_type,
        self.cycle_momentum,
        keys,
    )


class OneCycleLR(_ClosedForm):
    """The 1cycle policy (Smith & Topin, 2018), with momentum cycled inversely; see
    :class:`pylr.schedules.OneCycle` for the formula. Stepping past ``total_steps`` raises
    ``ValueError`` as in torch; at ``total_steps`` the last phase is extrapolated as in torch.
    Tensor ``max_lr`` and momenta are copied; a state dict of torch before 2.2 (an
    ``anneal_func`` instead of ``_anneal_func_type``) loads."""

    _chainable = False
    _nodes_read_groups = True
    _hypers = staticmethod(_one_cycle_hypers)

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_last_epoch(last_epoch)
        self.optimizer = optimizer
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
                )
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        max_momentums = _per_group("max_momentum", optimizer, max_momentum)
        base_momentums = _per_group("base_momentum", optimizer, base_momentum)
        for i, (m, bm, mm) in enumerate(zip(max_lrs, base_momentums, max_momentums, strict=True)):
            _try_schedule(
                schedules.OneCycle,
                _validate.scalar(f"max_lr[{i}]", m),
                self.total_steps,
                pct_start,
                anneal_strategy,
                div_factor,
                final_div_factor,
                three_phase,
                _validate.scalar(f"base_momentum[{i}]", bm),
                _validate.scalar(f"max_momentum[{i}]", mm),
            )
        ends = schedules.one_cycle_phase_ends(self.total_steps, pct_start, three_phase)
        names = (
            [
                ("initial_lr", "max_lr", "max_momentum", "base_momentum"),
                ("max_lr", "initial_lr", "base_momentum", "max_momentum"),
                ("initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
            if three_phase
            else [
                ("initial_lr", "max_lr", "max_momentum", "base_momentum"),
                ("max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        )
        self._schedule_phases = [
            {"end_step": e, "start_lr": a, "end_lr": b, "start_momentum": c, "end_momentum": d}
            for e, (a, b, c, d) in zip(ends, names, strict=True)
        ]
        self._anneal_func_type = anneal_strategy
        if last_epoch == -1:
            for m, group in zip(max_lrs, optimizer.param_groups, strict=True):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer) == "betas"
            if last_epoch == -1:
                for mm, bm, group in zip(
                    max_momentums, base_momentums, optimizer.param_groups, strict=True
                ):
                    _write_momentum(group, self.use_beta1, mm)
                    group["max_momentum"] = mm
                    group["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _annealing_cos(start: float, end: float, pct: float) -> float:
        """torch's cosine anneal from ``start`` to ``end`` (``pct`` from 0 to 1)."""
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out

    @staticmethod
    def _annealing_linear(start: float, end: float, pct: float) -> float:
        """torch's linear anneal from ``start`` to ``end``."""
        return (end - start) * pct + start

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        ends = [float(p["end_step"]) for p in self._schedule_phases]
        return [
            _core.one_cycle(
                initial_lr=float(g["initial_lr"]),
                max_lr=float(g["max_lr"]),
                min_lr=float(g["min_lr"]),
                phase_ends=ends,
                anneal_strategy=self._anneal_func_type,
                base_momentum=float(g.get("base_momentum", 0.0)),
                max_momentum=float(g.get("max_momentum", 0.0)),
                extrapolate=True,
            )
            for g in self.optimizer.param_groups
        ]

    def _tensor_likes(self) -> list[tuple[Tensor | None, Tensor | None]] | None:
        momenta = ("max_momentum", "base_momentum") if self.cycle_momentum else ()
        return _likes(
            (
                (g["initial_lr"], g["max_lr"], g["min_lr"]),
                tuple(g.get(k) for k in momenta),
            )
            for g in self.optimizer.param_groups
        )

    def _values_at(self, t: float, track: _Track) -> list[Any]:
        if t > self.total_steps:
            raise ValueError(
                f"Tried to step {t} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        return super()._values_at(t, track)

    def _group_keys(self) -> list[str]:
        """What the one-cycle nodes read from each param group."""
        keys = ["initial_lr", "max_lr", "min_lr"]
        return [*keys, "max_momentum", "base_momentum"] if self.cycle_momentum else keys

    def _adopt_group(self, index: int, group: dict[str, Any]) -> None:
        # torch's OneCycleLR reads these keys from every group (KeyError without them); a group
        # that has them is driven as torch drives it
        missing = [k for k in self._group_keys() if k not in group]
        if missing:
            raise _GroupKeyError(
                f"OneCycleLR cannot drive param_groups[{index}], which was added to the "
                f"optimizer after the scheduler was built: it lacks "
                f"{', '.join(map(repr, missing))}, which OneCycleLR (like torch's) reads from "
                "every group. Add the group with those keys, or build the scheduler after it."
            )
        for k in self._group_keys():
            _validate.scalar(f"param_groups[{index}][{k!r}]", group[k])

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        if (
            isinstance(state_dict, Mapping)
            and "anneal_func" in state_dict
            and "_anneal_func_type" not in state_dict
        ):
            # torch before 2.2 kept the anneal function itself; pylr needs its kind
            state_dict = dict(state_dict)
            fn = state_dict.pop("anneal_func")
            kinds = {"_annealing_cos": "cos", "_annealing_linear": "linear"}
            kind = kinds.get(getattr(fn, "__name__", ""))
            if kind is None:
                raise ValueError(
                    f"{prefix}['anneal_func'] must be OneCycleLR's _annealing_cos or "
                    f"_annealing_linear, got {fn!r:.100}"
                )
            state_dict["_anneal_func_type"] = kind
        return super()._checked_state(state_dict, prefix)

    def _check_state(self, c: _StateCheck) -> None:
        total = c.check("total_steps", _validate.integer, ge=1)
        c.check("_anneal_func_type", _one_of(("cos", "linear")))
        c.check("_schedule_phases", _one_cycle_phases)
        if c.check("cycle_momentum", _validate.flag):
            c.check("use_beta1", _validate.flag)
        if c.value("last_epoch") > total:
            raise ValueError(
                f"{c.name('last_epoch')} is {c.value('last_epoch')}, past "
                f"{c.name('total_steps')} = {total}"
            )


class ScheduleLR(_ClosedForm):
    """Drive an optimizer's groups from :mod:`pylr.schedules` objects.

    ``schedule`` is one schedule for every group — a factor on each group's initial lr,
    ``lr_i = initial_lr_i * schedule(t)`` — or a list with one schedule per group, giving
    absolute lrs. Where the schedule defines momentum (Cyclic, OneCycle) and ``cycle_momentum``
    is on, each group's ``momentum`` (or ``betas[0]``) is set to it at every step.

    With one schedule, an lr set elsewhere (by hand, by another scheduler, a group added later)
    is carried forward by the schedule's ratio, ``lr * schedule(t) / schedule(t - 1)`` — taken
    as the group's base, ``lr * schedule(t)``, at step 0 or after a factor of 0. Absolute
    schedules are absolute: they overwrite it.

    Example::

        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = ScheduleLR(opt, warmup(Cosine(T_max=900), steps=100))
    """

    _private = ("_schedules",)
    _hypers = attrgetter("_relative", "_schedules", "base_lrs", "cycle_momentum")

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule | SequenceABC[Schedule],
        cycle_momentum: bool = True,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_last_epoch(last_epoch)
        if isinstance(schedule, Schedule):
            if schedule.depth >= schedules.MAX_DEPTH:
                raise ValueError(
                    f"schedule nests {schedule.depth} levels deep; as a factor on each group's "
                    f"lr it takes one more, so at most pylr.schedules.MAX_DEPTH - 1 = "
                    f"{schedules.MAX_DEPTH - 1} here"
                )
            self._relative = True
            self._schedules: list[Schedule] = [schedule]
        else:
            items = _validate.schedule_list("schedule", schedule)
            if len(items) != len(optimizer.param_groups):
                raise ValueError(
                    f"schedule has {len(items)} schedules for "
                    f"{len(optimizer.param_groups)} param groups"
                )
            self._relative = False
            self._schedules = list(items)
        has_momentum = all(s.has_momentum for s in self._schedules)
        self.cycle_momentum = bool(cycle_momentum) and has_momentum
        if self.cycle_momentum:
            self.use_beta1 = _momentum_key(optimizer) == "betas"
        super().__init__(optimizer, last_epoch)

    @property
    def _chainable(self) -> bool:  # type: ignore[override]
        return self._relative

    def _build_nodes(self, base_lrs: list[float]) -> list[Any]:
        if self._relative:
            return [(b * self._schedules[0])._node for b in base_lrs]
        return [s._node for s in self._schedules]

    def _new_track(self) -> _Track:
        track = super()._new_track()
        track.extra = self._schedules[0]._node  # the factor, for the ratio
        return track

    def _continue(self, i: int, lr: Any, t: int) -> Any:
        factor = self._track.extra
        before = factor.value(t - 1) if t >= 1 else 0.0
        if before == 0.0:
            return lr * factor.value(t)
        return lr * (factor.value(t) / before)

    def _adopt_group(self, index: int, group: dict[str, Any]) -> None:
        if not self._relative:
            raise ValueError(
                f"ScheduleLR was given one schedule per param group "
                f"({len(self._schedules)}); param_groups[{index}], added to the optimizer after "
                "it was built, has none. Build a ScheduleLR with a schedule for every group."
            )

    def _check_state(self, c: _StateCheck) -> None:
        c.check("_relative", _validate.flag)
        if c.check("cycle_momentum", _validate.flag):
            c.check("use_beta1", _validate.flag)


class SequentialLR(_torch.SequentialLR):
    """torch's SequentialLR over pylr schedulers — and, beyond torch, a ``ReduceLROnPlateau`` as
    the last scheduler, so plateau reduction can follow a warmup.

    Once the plateau scheduler is active, ``step(metrics)`` forwards ``metrics`` to it; from its
    milestone on, the groups start again from their initial lrs. Before it, ``metrics`` may be
    given and is ignored.

    Example::

        warm = LinearLR(opt, start_factor=0.01, total_iters=5)
        plateau = ReduceLROnPlateau(opt, patience=3)
        sched = SequentialLR(opt, [warm, plateau], milestones=[5])
        for epoch in range(epochs):
            ...
            sched.step(val_loss)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: list[Any],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        _check_last_epoch(last_epoch)
        scheds = list(schedulers)
        plateau = None
        if scheds and isinstance(scheds[-1], _torch.ReduceLROnPlateau):
            plateau = scheds.pop()
            if plateau.optimizer is not optimizer:
                raise ValueError(
                    "SequentialLR expects all schedulers to belong to the same optimizer, but "
                    "the ReduceLROnPlateau at the end has a different one."
                )
            if not scheds:
                raise ValueError("SequentialLR needs a scheduler before the ReduceLROnPlateau")
        marks = list(milestones)
        _validate.milestones("milestones", marks, strict=True)
        if plateau is not None:
            if len(marks) != len(scheds):
                raise ValueError(
                    "Sequential Schedulers expects number of schedulers provided to be one more "
                    f"than the number of milestone points, but got number of schedulers "
                    f"{len(scheds) + 1} and the number of milestones to be equal to {len(marks)}"
                )
            self._plateau = plateau
            self._plateau_start = marks[-1]
            marks = marks[:-1]
        else:
            self._plateau = None
            self._plateau_start = None
        super().__init__(optimizer, scheds, marks, last_epoch)

    def step(self, metrics: Any = None) -> None:  # type: ignore[override]
        """Advance one step; ``metrics`` feeds the ReduceLROnPlateau once it is active."""
        start = self._plateau_start
        if start is None or self.last_epoch + 1 < start:
            super().step()
            return
        if metrics is None:
            raise ValueError(
                f"SequentialLR.step() needs metrics: the ReduceLROnPlateau is active from "
                f"step {start}"
            )
        self.last_epoch += 1
        if self.last_epoch == start:
            for group in self.optimizer.param_groups:
                # a group added after the schedulers were built has no initial lr: it goes on
                _set_group_value(group, "lr", group.get("initial_lr", group["lr"]))
        self._plateau.step(metrics)
        self._last_lr = _group_values(self.optimizer, "lr")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_plateau", None)
        if self._plateau is not None:
            state["_plateau_state"] = self._plateau.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, once the whole state — the member schedulers' states included — has
        passed the checks: a bad value raises ValueError naming its key and changes nothing."""
        self._checked_state(state_dict)
        state = dict(state_dict)
        plateau_state = state.pop("_plateau_state", None)
        plateau = self._plateau
        super().load_state_dict(state)
        self._plateau = plateau
        if plateau is not None and plateau_state is not None:
            plateau.load_state_dict(plateau_state)

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        c = _StateCheck(self, state_dict, prefix)
        c.counters()
        n = len(self._schedulers)
        marks = c.check("_milestones", _validate.milestones, strict=True)
        if len(marks) != n - 1:
            raise ValueError(
                f"{c.name('_milestones')} must have {n - 1} entries (one fewer than the "
                f"{n} schedulers), got {len(marks)}"
            )
        _check_members(c, self._schedulers)
        if self._plateau is not None:
            start = c.check("_plateau_start", _validate.integer)
            if marks and start <= marks[-1]:
                raise ValueError(
                    f"{c.name('_plateau_start')} must come after the last milestone "
                    f"{marks[-1]}, got {start}"
                )
            if "_plateau_state" in c.state:
                _check_nested(
                    self._plateau._checked_state,
                    c.state["_plateau_state"],
                    c.name("_plateau_state"),
                )
        return c.state


class ChainedScheduler(_torch.ChainedScheduler):
    """torch's ChainedScheduler: at each step every member steps in turn on the same optimizer,
    each from the lrs the one before it wrote (pylr's chainable schedulers continue from them
    as torch's recursive ones do), and ``get_last_lr()`` is the lrs the last one left. Its
    ``load_state_dict`` checks the whole state, the members' included, before it loads."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, once the whole state — the members' states included — has passed the
        checks: a bad value raises ValueError naming its key and changes nothing."""
        super().load_state_dict(self._checked_state(state_dict))

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        c = _StateCheck(self, state_dict, prefix)
        if "_last_lr" in c.merged:
            c.each("_last_lr", _validate.number)
        _check_members(c, self._schedulers)
        return c.state


class _CheckedLambdaState:
    """The state-dict checks of torch's two schedulers built on user callables."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, once every value has passed the checks (see ``_check_lambda_state``)."""
        _check_lambda_state(self, state_dict, "state_dict")
        super().load_state_dict(dict(state_dict))

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        return _check_lambda_state(self, state_dict, prefix)


class LambdaLR(_CheckedLambdaState, _torch.LambdaLR):
    """torch's LambdaLR (``lr = base_lr * lr_lambda(last_epoch)``); the user's callable runs in
    Python. Checks that every ``lr_lambda`` is callable."""

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        fns = lr_lambda if isinstance(lr_lambda, (list, tuple)) else [lr_lambda]
        for fn in fns:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, lr_lambda, last_epoch)


class MultiplicativeLR(_CheckedLambdaState, _torch.MultiplicativeLR):
    """torch's MultiplicativeLR (``lr *= lr_lambda(last_epoch)``, recursive by definition); the
    user's callable runs in Python."""

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        _check_last_epoch(last_epoch)
        super().__init__(optimizer, lr_lambda, last_epoch)


def _check_lambda_state(scheduler: Any, state_dict: Any, prefix: str) -> dict[str, Any]:
    """LambdaLR/MultiplicativeLR: the counters, the base lrs, and one entry per ``lr_lambda``
    (None for a function, the attributes of a callable object)."""
    c = _StateCheck(scheduler, state_dict, prefix)
    c.counters()
    c.per_group("base_lrs", _validate.scalar)
    if "lr_lambdas" in c.state:
        c.each("lr_lambdas", _attributes_or_none, length=len(scheduler.lr_lambdas))
    return c.state


def _attributes_or_none(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name} must be None or a dict of attributes, got {type(value).__name__}")


def _check_members(c: _StateCheck, members: SequenceABC[Any]) -> None:
    """The ``_schedulers`` of a SequentialLR/ChainedScheduler state: one state per member, each
    checked by the member itself (torch's own classes are not checked)."""
    if "_schedulers" not in c.state:
        raise ValueError(f"{c.prefix} lacks '_schedulers' (the member schedulers' states)")
    states = c.each("_schedulers", lambda name, v: None, length=len(members))
    for i, (member, state) in enumerate(zip(members, states, strict=True)):
        check = getattr(member, "_checked_state", None)
        if check is not None:
            _check_nested(check, state, f"{c.name('_schedulers')}[{i}]")


class ReduceLROnPlateau(_torch.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau (modes ``min``/``max``, threshold modes ``rel``/``abs``,
    cooldown, per-group ``min_lr``, ``eps``), with its arguments checked up front. It can follow a
    warmup inside :class:`SequentialLR`."""

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        _validate.real("factor", factor, gt=0.0)
        _validate.integer("patience", patience)
        _validate.real("threshold", threshold, ge=0.0)
        _validate.integer("cooldown", cooldown)
        _validate.real("eps", eps, ge=0.0)
        for i, m in enumerate(min_lr if isinstance(min_lr, (list, tuple)) else [min_lr]):
            _validate.real(
                f"min_lr[{i}]" if isinstance(min_lr, (list, tuple)) else "min_lr", m, ge=0.0
            )
        super().__init__(
            optimizer, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, once every value has passed the checks (torch's own raises for a bad
        mode only after changing the scheduler)."""
        self._checked_state(state_dict)
        super().load_state_dict(dict(state_dict))

    def _checked_state(self, state_dict: Any, prefix: str = "state_dict") -> dict[str, Any]:
        c = _StateCheck(self, state_dict, prefix)
        c.counters()
        c.check("factor", _validate.real, gt=0.0, lt=1.0)
        for key in ("patience", "cooldown", "cooldown_counter", "num_bad_epochs"):
            c.check(key, _validate.integer)
        c.check("threshold", _validate.real, ge=0.0)
        c.check("eps", _validate.real, ge=0.0)
        c.check("mode", _one_of(("min", "max")))
        c.check("threshold_mode", _one_of(("rel", "abs")))
        c.per_group("min_lrs", _validate.scalar, ge=0.0)
        if c.value("default_min_lr") is not None:
            c.check("default_min_lr", _validate.scalar, ge=0.0)
        c.check("best", _not_nan)
        return c.state


def _not_nan(name: str, value: Any) -> None:
    """A real number, infinities included (ReduceLROnPlateau's ``best`` starts at +-inf)."""
    _validate.number(name, value)
    if math.isnan(value.item() if isinstance(value, Tensor) else value):
        raise ValueError(f"{name} must not be NaN")
