"""Learning-rate and momentum schedules as immutable, closed-form functions of the step.

Every schedule is a pure function ``step -> value`` evaluated in C++ (double precision, no state,
random access at any step ``t >= 0``). Arguments are validated once, at construction, with errors
that name the argument. Where a class mirrors a ``torch.optim.lr_scheduler`` class its parameters
keep torch's names and its values follow torch's closed form; the other classes share optax's
vocabulary (``peak_value``, ``init_value``, ``warmup_steps``, ...).

Example::

    >>> from pylr.schedules import OneCycle, Cosine, warmup
    >>> s = OneCycle(max_lr=0.1, total_steps=1000)
    >>> round(s(300), 6), round(s.momentum(300), 6)
    (0.1, 0.85)
    >>> w = warmup(Cosine(T_max=900, base_lr=0.1), steps=100)
    >>> w.values(1000).shape
    (1000,)

Schedules compose: ``sequence`` runs schedules one after another, ``chain`` (or ``a * b``)
multiplies them, ``warmup`` puts a warmup in front of any schedule and ``c * schedule`` scales one.
A composition nests at most :data:`MAX_DEPTH` (256) levels, a leaf schedule being one level;
deeper ones raise ``ValueError`` when built (or read by :func:`from_dict`). Each object supports
``__call__``, ``values``, ``momentum``/``momentum_values`` (where defined),
``to_dict``/``from_dict`` (JSON-safe), equality, hashing and pickling.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterable
from collections.abc import Sequence as SequenceABC
from typing import Any, ClassVar

import numpy as np

from pylr import _core
from pylr import _validate as check
from pylr._validate import NotFiniteError

__all__ = [
    "MAX_DEPTH",
    "Chain",
    "Constant",
    "Cosine",
    "CosineWarmRestarts",
    "Cyclic",
    "Exponential",
    "FastaiOneCycle",
    "InverseSqrt",
    "Linear",
    "MultiStep",
    "OneCycle",
    "Polynomial",
    "Scaled",
    "Schedule",
    "Sequence",
    "Step",
    "Warmup",
    "WarmupCosine",
    "WarmupStableDecay",
    "chain",
    "from_dict",
    "sequence",
    "warmup",
]

MAX_DEPTH: int = _core.MAX_SCHEDULE_DEPTH
"""The deepest composition a schedule may be, in levels (a leaf is one level):
``warmup(0.5 * Cosine(...))`` is three. The C++ evaluation recurses once per level; the bound
keeps that, ``repr``, pickling and ``to_dict``/``from_dict`` well inside Python's default
recursion limit."""

# The names of each kind's modes, from the C++ core (each kind's node is built by its typed
# factory there, e.g. _core.cosine(base_lr=..., T_max=..., eta_min=...)).
_CYCLIC_MODES: tuple[str, ...] = _core.CYCLIC_MODES
_ANNEAL_STRATEGIES: tuple[str, ...] = _core.ANNEAL_STRATEGIES
_DECAY_SHAPES: tuple[str, ...] = _core.DECAY_SHAPES
_WARMUP_MODES: tuple[str, ...] = _core.WARMUP_MODES


# --------------------------------------------------------------------------------------------
# Checks of compositions (argument checks live in pylr._validate, shared with the schedulers)


def _nest(what: str, children: Iterable[Schedule]) -> None:
    """Refuse a composition deeper than MAX_DEPTH before it is built."""
    depth = 1 + max(c._node.depth for c in children)
    if depth > MAX_DEPTH:
        raise ValueError(
            f"{what} would nest {depth} levels deep; schedules nest at most "
            f"pylr.schedules.MAX_DEPTH = {MAX_DEPTH} levels"
        )


def _is_count(steps: Any) -> bool:
    return isinstance(steps, numbers.Integral) and not isinstance(steps, bool)


# --------------------------------------------------------------------------------------------


_REGISTRY: dict[str, type[Schedule]] = {}


class Schedule:
    """Base class: an immutable schedule evaluated in closed form by pylr's C++ core.

    Subclasses list their constructor arguments in ``_fields`` (in positional order), validate
    them in ``__init__`` (a combinator also checks the nesting depth with ``_nest``) and build the
    C++ node in ``_build``. Everything else — evaluation, equality, hashing, repr, pickling,
    ``to_dict`` — is shared. Each of those visits a composition's levels by direct recursion, one
    Python frame (two where a level holds a list) per level, which ``MAX_DEPTH`` keeps bounded.
    """

    __slots__ = ("_hash", "_ident", "_node")
    _fields: ClassVar[tuple[str, ...]] = ()
    _node: Any
    # the type's name and the fields, children by their own _ident: compared as plain tuples
    _ident: tuple[Any, ...]
    _hash: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # -- construction ------------------------------------------------------------------------

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_node", self._build())
        ident: list[Any] = [type(self).__name__]
        hashed: list[Any] = [type(self).__name__]
        for name in self._fields:
            v = getattr(self, name)
            if isinstance(v, Schedule):
                ident.append(v._ident)
                hashed.append(v._hash)
            elif isinstance(v, tuple) and v and isinstance(v[0], Schedule):
                ident.append(tuple(c._ident for c in v))
                hashed.append(tuple(c._hash for c in v))
            else:
                ident.append(v)
                hashed.append(v)
        object.__setattr__(self, "_ident", tuple(ident))
        # from the children's hashes, so hashing never walks the tree
        object.__setattr__(self, "_hash", hash(tuple(hashed)))

    def _build(self) -> Any:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    # -- evaluation --------------------------------------------------------------------------

    def __call__(self, step: float) -> float:
        """The value at ``step`` (an int or float >= 0)."""
        return self._node.value(check.step_value(step))

    def values(self, steps: int | SequenceABC[float] | np.ndarray) -> np.ndarray:
        """Values at many steps in one C++ call: ``steps`` is a count ``n`` (steps ``0..n-1``)
        or an array of steps. Returns float64 values with the shape of ``steps``."""
        if _is_count(steps):
            return self._node.values_range(check.integer("steps", steps))
        return self._node.values(check.step_array(steps))

    @property
    def has_momentum(self) -> bool:
        """Whether the schedule also defines a momentum (or Adam beta1) schedule."""
        return self._node.has_momentum

    def momentum(self, step: float) -> float:
        """The momentum (or Adam beta1) at ``step``, where the schedule defines one."""
        self._require_momentum()
        return self._node.momentum(check.step_value(step))

    def momentum_values(self, steps: int | SequenceABC[float] | np.ndarray) -> np.ndarray:
        """Momentum at many steps; ``steps`` as in :meth:`values`."""
        self._require_momentum()
        if _is_count(steps):
            return self._node.momentum_values_range(check.integer("steps", steps))
        return self._node.momentum_values(check.step_array(steps))

    def _require_momentum(self) -> None:
        if not self._node.has_momentum:
            raise ValueError(f"{type(self).__name__} defines no momentum schedule")

    # -- composition -------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Levels of composition, 1 for a leaf schedule (at most :data:`MAX_DEPTH`)."""
        return self._node.depth

    def __mul__(self, other: Any) -> Schedule:
        if isinstance(other, Schedule):
            return Chain([self, other])
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return Scaled(self, other)
        return NotImplemented

    __rmul__ = __mul__

    # -- identity and serialisation ----------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._hash == other._hash and self._ident == other._ident

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), tuple(getattr(self, f) for f in self._fields))

    def __copy__(self) -> Schedule:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, Any]) -> Schedule:
        return self  # immutable: nothing to copy, and no walk down a deep composition

    def __repr__(self) -> str:
        defaults = _defaults(type(self))
        parts = []
        for f in self._fields:
            v = getattr(self, f)
            if f in defaults and defaults[f] == v and type(defaults[f]) is type(v):
                continue
            # x.__repr__() rather than repr(x), and a loop rather than a comprehension: one
            # Python frame per level of composition
            if isinstance(v, tuple):
                items = []
                for x in v:
                    items.append(x.__repr__())
                parts.append(f"{f}=[{', '.join(items)}]")
            else:
                parts.append(f"{f}={v.__repr__()}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :func:`from_dict` rebuilds an equal schedule from it."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in self._fields:
            v = getattr(self, f)
            if isinstance(v, Schedule):
                v = v.to_dict()
            elif isinstance(v, tuple):
                items = []
                for x in v:  # a loop, not a comprehension: one frame per level
                    items.append(x.to_dict() if isinstance(x, Schedule) else x)
                v = items
            out[f] = v
        return out


_DEFAULTS_CACHE: dict[type, dict[str, Any]] = {}


def _defaults(cls: type) -> dict[str, Any]:
    if cls not in _DEFAULTS_CACHE:
        sig = inspect.signature(cls.__init__)
        _DEFAULTS_CACHE[cls] = {
            n: p.default for n, p in sig.parameters.items() if p.default is not p.empty
        }
    return _DEFAULTS_CACHE[cls]


def from_dict(d: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_dict` output (e.g. after ``json.loads``).

    A spec nested deeper than :data:`MAX_DEPTH` raises ``ValueError`` before its inner levels are
    read, however deep it goes.
    """
    return _from_dict(d, 1)


def _from_dict(d: Any, depth: int) -> Schedule:
    if not isinstance(d, dict):
        raise TypeError(f"schedule spec must be a dict, got {type(d).__name__}")
    if depth > MAX_DEPTH:
        raise ValueError(
            f"schedule spec nests more than pylr.schedules.MAX_DEPTH = {MAX_DEPTH} levels"
        )
    kind = d.get("type")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown schedule type {kind!r}; expected one of {sorted(_REGISTRY)}")
    unknown = set(d) - {"type", *cls._fields}
    if unknown:
        raise ValueError(f"{kind} got unknown fields {sorted(unknown, key=repr)}")
    kwargs = {k: v for k, v in d.items() if k != "type"}
    if "schedule" in kwargs:
        kwargs["schedule"] = _from_dict(kwargs["schedule"], depth + 1)
    if "schedules" in kwargs:
        specs = kwargs["schedules"]
        if not isinstance(specs, list):
            raise TypeError(f"{kind}.schedules must be a list, got {type(specs).__name__}")
        parts = []
        for spec in specs:  # a loop, not a comprehension: one frame per level
            parts.append(_from_dict(spec, depth + 1))
        kwargs["schedules"] = parts
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Families


class Constant(Schedule):
    """``f(t) = value``."""

    __slots__ = ("value",)
    _fields = ("value",)

    def __init__(self, value: float = 1.0) -> None:
        self._set(value=check.real("value", value))

    def _build(self) -> Any:
        return _core.constant(value=self.value)


class Step(Schedule):
    """``f(t) = base_lr * gamma ** floor(t / step_size)`` — torch's StepLR."""

    __slots__ = ("base_lr", "gamma", "step_size")
    _fields = ("step_size", "gamma", "base_lr")

    def __init__(self, step_size: int, gamma: float = 0.1, base_lr: float = 1.0) -> None:
        self._set(
            step_size=check.integer("step_size", step_size, ge=1),
            gamma=check.real("gamma", gamma, gt=0.0),
            base_lr=check.real("base_lr", base_lr),
        )

    def _build(self) -> Any:
        return _core.step(base_lr=self.base_lr, step_size=self.step_size, gamma=self.gamma)


class MultiStep(Schedule):
    """``f(t) = base_lr * gamma ** (number of milestones <= t)`` — torch's MultiStepLR.

    A milestone listed twice decays twice at that step, as in torch.
    """

    __slots__ = ("base_lr", "gamma", "milestones")
    _fields = ("milestones", "gamma", "base_lr")

    def __init__(self, milestones: Iterable[int], gamma: float = 0.1, base_lr: float = 1.0) -> None:
        self._set(
            milestones=check.milestones("milestones", milestones, strict=False),
            gamma=check.real("gamma", gamma, gt=0.0),
            base_lr=check.real("base_lr", base_lr),
        )

    def _build(self) -> Any:
        return _core.multistep(
            base_lr=self.base_lr, gamma=self.gamma, milestones=[float(m) for m in self.milestones]
        )


class Exponential(Schedule):
    """``f(t) = base_lr * gamma ** t`` — torch's ExponentialLR."""

    __slots__ = ("base_lr", "gamma")
    _fields = ("gamma", "base_lr")

    def __init__(self, gamma: float, base_lr: float = 1.0) -> None:
        self._set(gamma=check.real("gamma", gamma, gt=0.0), base_lr=check.real("base_lr", base_lr))

    def _build(self) -> Any:
        return _core.exponential(base_lr=self.base_lr, gamma=self.gamma)


class Linear(Schedule):
    """``f(t) = base_lr * (s + (e - s) * min(t, T) / T)`` with ``s = start_factor``,
    ``e = end_factor``, ``T = total_iters`` — torch's LinearLR."""

    __slots__ = ("base_lr", "end_factor", "start_factor", "total_iters")
    _fields = ("start_factor", "end_factor", "total_iters", "base_lr")

    def __init__(
        self,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        base_lr: float = 1.0,
    ) -> None:
        self._set(
            start_factor=check.real("start_factor", start_factor, ge=0.0),
            end_factor=check.real("end_factor", end_factor, ge=0.0),
            total_iters=check.integer("total_iters", total_iters, ge=1),
            base_lr=check.real("base_lr", base_lr),
        )

    def _build(self) -> Any:
        return _core.linear(
            base_lr=self.base_lr,
            start_factor=self.start_factor,
            end_factor=self.end_factor,
            total_iters=self.total_iters,
        )


class Polynomial(Schedule):
    """``f(t) = base_lr * (1 - min(t, T) / T) ** power`` with ``T = total_iters`` — torch's
    PolynomialLR."""

    __slots__ = ("base_lr", "power", "total_iters")
    _fields = ("total_iters", "power", "base_lr")

    def __init__(self, total_iters: int = 5, power: float = 1.0, base_lr: float = 1.0) -> None:
        self._set(
            total_iters=check.integer("total_iters", total_iters, ge=1),
            power=check.real("power", power, ge=0.0),
            base_lr=check.real("base_lr", base_lr),
        )

    def _build(self) -> Any:
        return _core.polynomial(
            base_lr=self.base_lr, total_iters=self.total_iters, power=self.power
        )


class Cosine(Schedule):
    """``f(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` — torch's
    CosineAnnealingLR, including its periodic continuation past ``T_max`` (period ``2 T_max``)."""

    __slots__ = ("T_max", "base_lr", "eta_min")
    _fields = ("T_max", "eta_min", "base_lr")

    def __init__(self, T_max: float, eta_min: float = 0.0, base_lr: float = 1.0) -> None:
        self._set(
            T_max=check.real("T_max", T_max, gt=0.0),
            eta_min=check.real("eta_min", eta_min),
            base_lr=check.real("base_lr", base_lr),
        )

    def _build(self) -> Any:
        return _core.cosine(base_lr=self.base_lr, T_max=self.T_max, eta_min=self.eta_min)


class CosineWarmRestarts(Schedule):
    """SGDR — torch's CosineAnnealingWarmRestarts, with fractional steps.

    ``f(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2`` where the i-th
    period lasts ``T_i = T_0 * T_mult**i`` and ``T_cur`` is the time since the last restart.
    """

    __slots__ = ("T_0", "T_mult", "base_lr", "eta_min")
    _fields = ("T_0", "T_mult", "eta_min", "base_lr")

    def __init__(
        self,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        base_lr: float = 1.0,
    ) -> None:
        self._set(
            T_0=check.integer("T_0", T_0, ge=1),
            T_mult=check.integer("T_mult", T_mult, ge=1),
            eta_min=check.real("eta_min", eta_min),
            base_lr=check.real("base_lr", base_lr),
        )

    def _build(self) -> Any:
        return _core.cosine_warm_restarts(
            base_lr=self.base_lr, T_0=self.T_0, T_mult=self.T_mult, eta_min=self.eta_min
        )


class Cyclic(Schedule):
    """Cyclical learning rate (Smith, 2017) — torch's CyclicLR, with its momentum.

    ``f(t) = base_lr + (max_lr - base_lr) * h(t) * s(t)`` where ``h`` is a triangle wave rising
    over ``step_size_up`` steps and falling over ``step_size_down``, and ``s`` is 1
    (``triangular``), ``1 / 2**(cycle - 1)`` (``triangular2``) or ``gamma**t`` (``exp_range``).
    Momentum moves the opposite way: ``max_momentum - (max_momentum - base_momentum) * h * s``.
    """

    __slots__ = (
        "base_lr",
        "base_momentum",
        "gamma",
        "max_lr",
        "max_momentum",
        "mode",
        "step_size_down",
        "step_size_up",
    )
    _fields = (
        "base_lr",
        "max_lr",
        "step_size_up",
        "step_size_down",
        "mode",
        "gamma",
        "base_momentum",
        "max_momentum",
    )

    def __init__(
        self,
        base_lr: float,
        max_lr: float,
        step_size_up: float = 2000,
        step_size_down: float | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
    ) -> None:
        up = check.real("step_size_up", step_size_up, gt=0.0)
        down = (
            up if step_size_down is None else check.real("step_size_down", step_size_down, gt=0.0)
        )
        if not math.isfinite(up + down):
            raise NotFiniteError(f"step_size_up + step_size_down must be finite, got {up} + {down}")
        self._set(
            base_lr=check.real("base_lr", base_lr),
            max_lr=check.real("max_lr", max_lr),
            step_size_up=up,
            step_size_down=down,
            mode=check.choice("mode", mode, _CYCLIC_MODES),
            gamma=check.real("gamma", gamma, gt=0.0),
            base_momentum=check.real("base_momentum", base_momentum),
            max_momentum=check.real("max_momentum", max_momentum),
        )

    def _build(self) -> Any:
        return _core.cyclic(
            base_lr=self.base_lr,
            max_lr=self.max_lr,
            step_size_up=self.step_size_up,
            step_size_down=self.step_size_down,
            mode=self.mode,
            gamma=self.gamma,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
        )


class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin, 2018) — torch's OneCycleLR, with its momentum.

    The lr rises from ``max_lr / div_factor`` to ``max_lr`` over the first
    ``pct_start * total_steps`` steps, then anneals to ``max_lr / div_factor / final_div_factor``
    at step ``total_steps - 1`` (cosine: ``end + (start - end) * (1 + cos(pi * pct)) / 2``, or
    linear); ``three_phase`` comes back down to the initial lr before the final anneal. Momentum
    moves inversely between ``max_momentum`` and ``base_momentum``. Past the last step the values
    hold (torch's OneCycleLR raises instead).
    """

    __slots__ = (
        "anneal_strategy",
        "base_momentum",
        "div_factor",
        "final_div_factor",
        "max_lr",
        "max_momentum",
        "pct_start",
        "three_phase",
        "total_steps",
    )
    _fields = (
        "max_lr",
        "total_steps",
        "pct_start",
        "anneal_strategy",
        "div_factor",
        "final_div_factor",
        "three_phase",
        "base_momentum",
        "max_momentum",
    )

    def __init__(
        self,
        max_lr: float,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> None:
        total = check.integer("total_steps", total_steps, ge=1)
        pct = check.real("pct_start", pct_start, gt=0.0, lt=1.0)
        if not isinstance(three_phase, bool):
            raise TypeError(f"three_phase must be a bool, got {type(three_phase).__name__}")
        _check_one_cycle_phases(total, pct, three_phase)
        self._set(
            max_lr=check.real("max_lr", max_lr, gt=0.0),
            total_steps=total,
            pct_start=pct,
            anneal_strategy=check.choice("anneal_strategy", anneal_strategy, _ANNEAL_STRATEGIES),
            div_factor=check.real("div_factor", div_factor, gt=0.0),
            final_div_factor=check.real("final_div_factor", final_div_factor, gt=0.0),
            three_phase=three_phase,
            base_momentum=check.real("base_momentum", base_momentum),
            max_momentum=check.real("max_momentum", max_momentum),
        )

    def _build(self) -> Any:
        initial_lr = self.max_lr / self.div_factor
        return _core.one_cycle(
            initial_lr=initial_lr,
            max_lr=self.max_lr,
            min_lr=initial_lr / self.final_div_factor,
            phase_ends=one_cycle_phase_ends(self.total_steps, self.pct_start, self.three_phase),
            anneal_strategy=self.anneal_strategy,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
            extrapolate=False,
        )


class FastaiOneCycle(Schedule):
    """fastai's one-cycle policy (``fit_one_cycle``): two cosine phases over a fraction of
    training, with momentum (or Adam's beta1) moving the other way.

    With ``p = t / total_steps``, ``q = (p - pct_start) / (1 - pct_start)`` and
    ``cos_anneal(a, b, x) = b + (a - b) * (1 + cos(pi x)) / 2``::

        p <  pct_start:  lr = cos_anneal(lr_max / div, lr_max, p / pct_start)
                         momentum = cos_anneal(moms[0], moms[1], p / pct_start)
        p >= pct_start:  lr = cos_anneal(lr_max, lr_max / div_final, q)
                         momentum = cos_anneal(moms[1], moms[2], q)

    Unlike torch's ``OneCycleLR`` (:class:`OneCycle`), the phases are fractions of
    ``total_steps`` (fastai's ``combined_cos``), so the last step ``total_steps - 1`` is just
    short of ``lr_max / div_final``; the values hold from ``t = total_steps`` on.
    """

    __slots__ = ("div", "div_final", "lr_max", "moms", "pct_start", "total_steps")
    _fields = ("lr_max", "total_steps", "pct_start", "div", "div_final", "moms")

    def __init__(
        self,
        lr_max: float,
        total_steps: int,
        pct_start: float = 0.25,
        div: float = 25.0,
        div_final: float = 1e5,
        moms: SequenceABC[float] = (0.95, 0.85, 0.95),
    ) -> None:
        if isinstance(moms, (str, bytes)) or not isinstance(moms, SequenceABC) or len(moms) != 3:
            raise ValueError(f"moms must be three numbers (start, middle, end), got {moms!r}")
        self._set(
            lr_max=check.real("lr_max", lr_max, gt=0.0),
            total_steps=check.integer("total_steps", total_steps, ge=1),
            pct_start=check.real("pct_start", pct_start, gt=0.0, lt=1.0),
            div=check.real("div", div, gt=0.0),
            div_final=check.real("div_final", div_final, gt=0.0),
            moms=tuple(check.real(f"moms[{i}]", m) for i, m in enumerate(moms)),
        )

    def _build(self) -> Any:
        # torch's node with phase ends at fractions of total_steps: phase 0 ends at
        # pct_start * total_steps, the last at total_steps (so the node holds from there on)
        total = float(self.total_steps)
        return _core.one_cycle(
            initial_lr=self.lr_max / self.div,
            max_lr=self.lr_max,
            min_lr=self.lr_max / self.div_final,
            phase_ends=[self.pct_start * total, total],
            anneal_strategy="cos",
            base_momentum=self.moms[1],
            max_momentum=self.moms[0],
            extrapolate=False,
            final_momentum=self.moms[2],
        )


def one_cycle_phase_ends(total: int, pct: float, three_phase: bool) -> list[float]:
    """The last step of each phase, computed exactly as torch's OneCycleLR does."""
    ends = [float(pct * total) - 1]
    if three_phase:
        ends.append(float(2 * pct * total) - 2)
    ends.append(total - 1)
    return ends


def _check_one_cycle_phases(total: int, pct: float, three_phase: bool) -> None:
    """Reject phases of zero length, where torch's OneCycleLR divides by zero."""
    ends = one_cycle_phase_ends(total, pct, three_phase)
    start = 0.0
    for i, end in enumerate(ends):
        if end == start:
            raise ValueError(
                f"pct_start={pct} with total_steps={total} gives phase {i} of the one-cycle "
                "schedule zero length; change pct_start or total_steps"
            )
        start = end


class InverseSqrt(Schedule):
    """Linear warmup, then inverse-square-root decay (Vaswani et al.; as in fairseq and HF).

    ``f(t) = peak_value * t / warmup_steps`` for ``t < warmup_steps``, then
    ``peak_value / sqrt((t - warmup_steps + timescale) / timescale)``: ``peak_value`` at the end
    of the warmup. ``timescale`` defaults to ``warmup_steps`` (10,000 without a warmup).
    """

    __slots__ = ("peak_value", "timescale", "warmup_steps")
    _fields = ("peak_value", "warmup_steps", "timescale")

    def __init__(
        self, peak_value: float, warmup_steps: int = 0, timescale: float | None = None
    ) -> None:
        warm = check.integer("warmup_steps", warmup_steps)
        if timescale is None:
            scale = warm or 10_000
        else:
            scale = check.real("timescale", timescale, gt=0.0)
        self._set(
            peak_value=check.real("peak_value", peak_value, ge=0.0),
            warmup_steps=warm,
            timescale=float(scale),
        )

    def _build(self) -> Any:
        return _core.inverse_sqrt(
            peak_value=self.peak_value, warmup_steps=self.warmup_steps, timescale=self.timescale
        )


class WarmupStableDecay(Schedule):
    """Warmup-stable-decay (the "trapezoid" of MiniCPM and friends).

    Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, ``peak_value`` for
    ``stable_steps``, then down to the floor ``min_ratio * peak_value`` over ``decay_steps`` with
    shape ``1 - s`` (linear), ``(1 + cos(pi s)) / 2`` (cosine) or ``1 - sqrt(s)`` (1-sqrt),
    ``s`` running from 0 to 1; the floor after that.
    """

    __slots__ = (
        "decay_shape",
        "decay_steps",
        "init_value",
        "min_ratio",
        "peak_value",
        "stable_steps",
        "warmup_steps",
    )
    _fields = (
        "peak_value",
        "warmup_steps",
        "stable_steps",
        "decay_steps",
        "decay_shape",
        "init_value",
        "min_ratio",
    )

    def __init__(
        self,
        peak_value: float,
        warmup_steps: int,
        stable_steps: int,
        decay_steps: int,
        decay_shape: str = "linear",
        init_value: float = 0.0,
        min_ratio: float = 0.0,
    ) -> None:
        self._set(
            peak_value=check.real("peak_value", peak_value, ge=0.0),
            warmup_steps=check.integer("warmup_steps", warmup_steps),
            stable_steps=check.integer("stable_steps", stable_steps),
            decay_steps=check.integer("decay_steps", decay_steps),
            decay_shape=check.choice("decay_shape", decay_shape, _DECAY_SHAPES),
            init_value=check.real("init_value", init_value, ge=0.0),
            min_ratio=check.real("min_ratio", min_ratio, ge=0.0, le=1.0),
        )

    def _build(self) -> Any:
        return _core.warmup_stable_decay(
            peak_value=self.peak_value,
            warmup_steps=self.warmup_steps,
            stable_steps=self.stable_steps,
            decay_steps=self.decay_steps,
            decay_shape=self.decay_shape,
            init_value=self.init_value,
            min_ratio=self.min_ratio,
        )


class WarmupCosine(Schedule):
    """Linear warmup then cosine decay to a floor (optax's ``warmup_cosine_decay_schedule``).

    Linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    ``floor + (peak_value - floor) * (1 + cos(pi s)) / 2`` with
    ``s = (t - warmup_steps) / (total_steps - warmup_steps)`` and ``floor = min_ratio *
    peak_value``; the floor from ``total_steps`` on.
    """

    __slots__ = ("init_value", "min_ratio", "peak_value", "total_steps", "warmup_steps")
    _fields = ("peak_value", "warmup_steps", "total_steps", "init_value", "min_ratio")

    def __init__(
        self,
        peak_value: float,
        warmup_steps: int,
        total_steps: int,
        init_value: float = 0.0,
        min_ratio: float = 0.0,
    ) -> None:
        warm = check.integer("warmup_steps", warmup_steps)
        total = check.integer("total_steps", total_steps, ge=1)
        if total <= warm:
            raise ValueError(
                f"total_steps must be > warmup_steps, got total_steps={total}, warmup_steps={warm}"
            )
        self._set(
            peak_value=check.real("peak_value", peak_value, ge=0.0),
            warmup_steps=warm,
            total_steps=total,
            init_value=check.real("init_value", init_value, ge=0.0),
            min_ratio=check.real("min_ratio", min_ratio, ge=0.0, le=1.0),
        )

    def _build(self) -> Any:
        return _core.warmup_cosine(
            peak_value=self.peak_value,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            init_value=self.init_value,
            min_ratio=self.min_ratio,
        )


# --------------------------------------------------------------------------------------------
# Combinators


class Sequence(Schedule):
    """Schedules one after another: ``schedules[i]`` runs from ``milestones[i-1]`` (0 for the
    first) and sees its local step ``t - milestones[i-1]`` — like torch's SequentialLR and
    optax's ``join_schedules``. Momentum is defined where every part defines it."""

    __slots__ = ("milestones", "schedules")
    _fields = ("schedules", "milestones")

    def __init__(self, schedules: Iterable[Schedule], milestones: Iterable[int]) -> None:
        parts = check.schedule_list("schedules", schedules)
        marks = check.milestones("milestones", milestones, strict=False)
        if len(marks) != len(parts) - 1:
            raise ValueError(
                f"milestones must have one entry fewer than schedules, got {len(marks)} "
                f"milestones for {len(parts)} schedules"
            )
        _nest("Sequence", parts)
        self._set(schedules=parts, milestones=marks)

    def _build(self) -> Any:
        return _core.sequence(
            schedules=[s._node for s in self.schedules],
            milestones=[float(m) for m in self.milestones],
        )


class Chain(Schedule):
    """The product of schedules, ``f(t) = prod_i schedules[i](t)`` — like torch's
    ChainedScheduler over multiplicative schedulers. Momentum is defined when exactly one factor
    defines it."""

    __slots__ = ("schedules",)
    _fields = ("schedules",)

    def __init__(self, schedules: Iterable[Schedule]) -> None:
        parts = check.schedule_list("schedules", schedules)
        _nest("Chain", parts)
        self._set(schedules=parts)

    def _build(self) -> Any:
        return _core.product(schedules=[s._node for s in self.schedules])


class Warmup(Schedule):
    """A warmup of ``steps`` steps in front of ``schedule``, which then starts at its step 0.

    For ``t < steps``: ``schedule(0) * w(t)`` with ``w`` linear from ``start_factor`` to 1,
    ``constant`` at ``start_factor``, or ``exponential`` (``start_factor ** (1 - t / steps)``);
    afterwards ``schedule(t - steps)``.
    """

    __slots__ = ("mode", "schedule", "start_factor", "steps")
    _fields = ("schedule", "steps", "mode", "start_factor")

    def __init__(
        self, schedule: Schedule, steps: int, mode: str = "linear", start_factor: float = 0.0
    ) -> None:
        how = check.choice("mode", mode, _WARMUP_MODES)
        start = check.real("start_factor", start_factor, ge=0.0, le=1.0)
        if how != "linear" and start == 0.0:
            raise ValueError(f"start_factor must be > 0 for {how} warmup, got {start}")
        inner = check.schedule("schedule", schedule)
        _nest("Warmup", [inner])
        self._set(
            schedule=inner,
            steps=check.integer("steps", steps, ge=1),
            mode=how,
            start_factor=start,
        )

    def _build(self) -> Any:
        return _core.warmup(
            schedule=self.schedule._node,
            steps=self.steps,
            mode=self.mode,
            start_factor=self.start_factor,
        )


class Scaled(Schedule):
    """``f(t) = factor * schedule(t)``; written ``factor * schedule``. Momentum is unscaled."""

    __slots__ = ("factor", "schedule")
    _fields = ("schedule", "factor")

    def __init__(self, schedule: Schedule, factor: float) -> None:
        inner = check.schedule("schedule", schedule)
        _nest("Scaled", [inner])
        self._set(schedule=inner, factor=check.real("factor", factor))

    def _build(self) -> Any:
        return _core.scale(schedule=self.schedule._node, factor=self.factor)


def sequence(schedules: Iterable[Schedule], milestones: Iterable[int]) -> Sequence:
    """Run ``schedules`` one after another, switching at ``milestones`` (see :class:`Sequence`)."""
    return Sequence(schedules, milestones)


def chain(schedules: Iterable[Schedule]) -> Chain:
    """Multiply ``schedules`` step by step (see :class:`Chain`)."""
    return Chain(schedules)


def warmup(
    schedule: Schedule, steps: int, mode: str = "linear", start_factor: float = 0.0
) -> Warmup:
    """Put a warmup of ``steps`` steps in front of ``schedule`` (see :class:`Warmup`)."""
    return Warmup(schedule, steps, mode, start_factor)
