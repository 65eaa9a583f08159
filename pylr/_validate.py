"""Argument checks shared by pylr's schedules, schedulers and optimizers: one wording everywhere.

Every check takes the argument's ``name`` as the message should show it (``"gamma"``,
``"max_lr[1]"``, ``"state_dict['T_0']"``) and returns the value in the form the caller computes
with (a float, an int, a tuple), or raises naming it: ``TypeError`` for a value of the wrong kind,
``ValueError`` for one out of range, :class:`NotFiniteError` (a ``ValueError`` and an
``OverflowError``) for one that is infinite or too large for a double.

Two families of number checks:

- :func:`real`, :func:`integer`, :func:`scalar`: pylr's own messages (``gamma must be > 0.0, got
  -1.0``), for schedules and schedulers. :func:`scalar` also takes a one-element tensor, by value.
- :func:`hyper`: torch.optim's messages (``Invalid lr value: -1.0 (must be >= 0.0)``), for
  optimizer hyperparameters; a one-element tensor is read by value.

This module does not import torch (``import pylr.schedules`` must not): a value is a tensor only
if torch is already imported, so it is looked up in ``sys.modules``.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "MAX_COUNT",
    "NotFiniteError",
    "choice",
    "flag",
    "hyper",
    "integer",
    "milestones",
    "number",
    "real",
    "scalar",
    "schedule",
    "schedule_list",
    "step_array",
    "step_value",
]

# Integer arguments are step counts, which the C++ core holds as doubles: exact up to 2**53.
MAX_COUNT = 2**53


class NotFiniteError(ValueError, OverflowError):
    """An argument that is infinite or too large for a double. A ``ValueError`` like every other
    bad value, and an ``OverflowError`` as Python's ``float()`` (and torch, for an infinite
    ``last_epoch``) raise for it."""


def _tensor_type() -> Any:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _tensor_item(name: str, value: Any) -> Any:
    """``value`` itself, or the number in a one-element tensor (ValueError for any other tensor)."""
    tensor = _tensor_type()
    if tensor is not None and isinstance(value, tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    return value


def real(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """``value`` (a real number, not a bool) as a finite float within the bounds given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise NotFiniteError(
            f"{name} must be finite, got a number too large for a double"
        ) from None
    if math.isnan(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if math.isinf(v):
        raise NotFiniteError(f"{name} must be finite, got {v}")
    if gt is not None and not v > gt:
        raise ValueError(f"{name} must be > {gt}, got {v}")
    if ge is not None and not v >= ge:
        raise ValueError(f"{name} must be >= {ge}, got {v}")
    if lt is not None and not v < lt:
        raise ValueError(f"{name} must be < {lt}, got {v}")
    if le is not None and not v <= le:
        raise ValueError(f"{name} must be <= {le}, got {v}")
    return v


def scalar(name: str, value: Any, **bounds: float) -> float:
    """:func:`real`, also taking a one-element tensor by value (an lr or momentum may be one)."""
    return real(name, _tensor_item(name, value), **bounds)


def integer(name: str, value: Any, *, ge: int = 0) -> int:
    """``value`` (an integer, not a bool) as an int in ``[ge, 2**53]``: a count of steps, exact as
    a double."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    v = int(value)
    if v < ge:
        raise ValueError(f"{name} must be >= {ge}, got {v}")
    if v > MAX_COUNT:
        raise NotFiniteError(f"{name} must be <= 2**53 = {MAX_COUNT}, got {_short(v)}")
    return v


def _short(v: int) -> str:
    """An int for a message: its digits, or its size in bits when they are too many to read."""
    return str(v) if v.bit_length() <= 200 else f"an integer of {v.bit_length()} bits"


def number(name: str, value: Any) -> None:
    """A real number or a one-element tensor, finite or not (an lr as it was written)."""
    tensor = _tensor_type()
    if tensor is not None and isinstance(value, tensor) and value.numel() == 1:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")


def hyper(name: str, value: Any, *, low: float = 0.0, high: float | None = None) -> float:
    """An optimizer hyperparameter: a finite float in ``[low, high)`` (``high`` exclusive), a
    one-element tensor read by value; messages as torch.optim words them."""
    tensor = _tensor_type()
    if tensor is not None and isinstance(value, tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        value = value.item()
    if isinstance(value, (str, bytes, bytearray)):  # float() would parse them
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"Invalid {name} value: too large for a float (must be finite)") from None
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name} value: {v} (must be finite)")
    if v < low or (high is not None and v >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"Invalid {name} value: {v} (must be {bound})")
    return v


def seed(name: str, value: Any) -> int:
    """An integer in [0, 2**32): the seed of stochastic rounding's random bits."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def milestones(name: str, value: Any, *, strict: bool) -> tuple[int, ...]:
    """Non-negative integer milestones in non-decreasing (strict: increasing) order."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of integers, got {type(value).__name__}")
    items = tuple(integer(f"{name}[{i}]", m) for i, m in enumerate(value))
    for i in range(1, len(items)):
        if items[i] < items[i - 1] or (strict and items[i] == items[i - 1]):
            order = "increasing" if strict else "sorted in non-decreasing order"
            raise ValueError(f"{name} must be {order}, got {list(items)}")
    return items


def schedule(name: str, value: Any) -> Any:
    """A :class:`pylr.schedules.Schedule`."""
    from pylr.schedules import Schedule  # schedules imports this module

    if not isinstance(value, Schedule):
        raise TypeError(f"{name} must be a pylr.schedules.Schedule, got {type(value).__name__}")
    return value


def schedule_list(name: str, value: Any) -> tuple[Any, ...]:
    """A non-empty list (any iterable but a single schedule) of schedules, as a tuple."""
    from pylr.schedules import Schedule

    if isinstance(value, Schedule) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of schedules, got {type(value).__name__}")
    items = tuple(value)
    if not items:
        raise ValueError(f"{name} must not be empty")
    return tuple(schedule(f"{name}[{i}]", s) for i, s in enumerate(items))


def step_value(step: Any) -> float:
    """One step at which to evaluate a schedule: a number (a float, int, numpy or 0-d torch
    scalar) that is finite and >= 0."""
    if isinstance(step, (str, bytes)):
        raise TypeError(f"step must be a number, got {type(step).__name__}")
    try:
        t = float(step)
    except OverflowError:
        t = math.inf
    except (TypeError, ValueError):
        raise TypeError(f"step must be a number, got {type(step).__name__}") from None
    if not 0.0 <= t < math.inf:
        shown = _short(step) if isinstance(step, int) else repr(step)
        raise ValueError(f"step must be finite and >= 0, got {shown}")
    return t


def step_array(steps: Any) -> np.ndarray:
    """Steps at which to evaluate a schedule, as a float64 array: each finite and >= 0."""
    try:
        arr = np.asarray(steps, dtype=np.float64)
    except OverflowError:
        raise NotFiniteError("steps must be finite and >= 0") from None
    if arr.size and not (arr.min() >= 0.0 and arr.max() < math.inf):
        raise ValueError("steps must be finite and >= 0")
    return arr
