"""pylr._validate: the argument checks shared by schedules, schedulers and (to come) optimizers."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pylr import _validate as check
from pylr import schedules as S

HYPER_CASES = [
    # value, bounds, the expected value or (exception, message)
    (0.1, {}, 0.1),
    (0, {}, 0.0),
    (np.float32(0.25), {}, 0.25),
    (torch.tensor(0.3, dtype=torch.float64), {}, 0.3),
    (torch.tensor([0.5]), {"high": 1.0}, 0.5),
    (torch.tensor(2, dtype=torch.int64), {"low": -math.inf}, 2.0),
    (-0.5, {"low": -math.inf}, -0.5),
    (0.999, {"high": 1.0}, 0.999),
    (-0.5, {}, (ValueError, "Invalid lr value: -0.5 (must be >= 0.0)")),
    (1.0, {"high": 1.0}, (ValueError, "Invalid lr value: 1.0 (must be in [0.0, 1.0))")),
    (0.4, {"low": 0.5, "high": 0.9}, (ValueError, "Invalid lr value: 0.4 (must be in [0.5, 0.9))")),
    (math.nan, {}, (ValueError, "Invalid lr value: nan (must be finite)")),
    (math.inf, {"low": -math.inf}, (ValueError, "Invalid lr value: inf (must be finite)")),
    (torch.tensor([0.1, 0.2]), {}, (ValueError, "Tensor lr must be 1-element")),
    ("0.1", {}, (TypeError, "lr must be a number, got str")),  # torch's comparisons fail too
    (10**400, {}, (ValueError, "Invalid lr value: too large for a float (must be finite)")),
    (None, {}, (TypeError, "lr must be a number, got NoneType")),
    ([0.1], {}, (TypeError, "lr must be a number, got list")),
]


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as e:
        return (type(e), str(e))


@pytest.mark.parametrize(("value", "bounds", "expected"), HYPER_CASES, ids=repr)
def test_hyper_reads_optimizer_hyperparameters(value, bounds, expected):
    """The optimizers' check (pylr.optim and pylr.functional): a finite float in [low, high),
    one-element tensors by value, messages worded as torch.optim's."""
    assert _outcome(check.hyper, "lr", value, **bounds) == expected


def test_seed_is_a_32_bit_integer():
    assert check.seed("rounding_seed", 2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32, 1.0, True, None):
        with pytest.raises(ValueError, match="rounding_seed must be an integer in"):
            check.seed("rounding_seed", bad)


def test_scalar_reads_one_element_tensors_by_value():
    assert check.scalar("max_lr", torch.tensor(0.25)) == 0.25
    assert check.scalar("max_lr", torch.tensor([0.5], dtype=torch.float64)) == 0.5
    with pytest.raises(ValueError, match=r"max_lr must be a number, got a tensor of shape \(2,\)"):
        check.scalar("max_lr", torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match=re.escape("max_lr must be > 0.0, got -1.0")):
        check.scalar("max_lr", torch.tensor(-1.0), gt=0.0)
    with pytest.raises(TypeError, match="max_lr must be a real number, got Tensor"):
        check.real("max_lr", torch.tensor(0.25))  # real(): numbers only


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda: check.real("gamma", math.nan), ValueError, "gamma must be finite, got nan"),
        (lambda: check.real("gamma", 10**400), check.NotFiniteError, "too large for a double"),
        (lambda: check.real("gamma", True), TypeError, "gamma must be a real number, got bool"),
        (lambda: check.integer("steps", 2**53 + 1), check.NotFiniteError, "must be <= 2**53"),
        (lambda: check.integer("steps", 3.0), TypeError, "steps must be an integer, got float"),
        (lambda: check.choice("mode", "x", ("a", "b")), ValueError, "one of 'a', 'b', got 'x'"),
        (lambda: check.flag("three_phase", 1), TypeError, "must be True or False, got 1"),
        (lambda: check.number("lr", "0.1"), TypeError, "lr must be a number, got str"),
        (lambda: check.milestones("m", [3, 2], strict=False), ValueError, "non-decreasing"),
        (lambda: check.milestones("m", [2, 2], strict=True), ValueError, "must be increasing"),
        (lambda: check.milestones("m", "12", strict=True), TypeError, "list of integers"),
        (lambda: check.schedule("s", 3), TypeError, "must be a pylr.schedules.Schedule"),
        (lambda: check.schedule_list("s", []), ValueError, "s must not be empty"),
        (lambda: check.step_value(-1), ValueError, "step must be finite and >= 0, got -1"),
        (lambda: check.step_array([0, math.inf]), ValueError, "steps must be finite and >= 0"),
    ],
)
def test_each_check_names_the_argument(call, exc, message):
    with pytest.raises(exc) as info:
        call()
    assert message in str(info.value)


def test_checks_return_what_callers_compute_with():
    assert check.real("x", np.float32(0.5), ge=0.0) == 0.5
    assert check.integer("n", np.int64(7)) == 7 and type(check.integer("n", np.int64(7))) is int
    assert check.milestones("m", (1, 1, 4), strict=False) == (1, 1, 4)
    assert check.schedule_list("s", [S.Constant(1.0)]) == (S.Constant(1.0),)
    assert check.step_value(torch.tensor(3)) == 3.0
    assert check.step_array([1, 2]).dtype == np.float64
    assert issubclass(check.NotFiniteError, OverflowError)
    assert S.NotFiniteError is check.NotFiniteError  # still reachable where it was


def test_importing_the_schedules_does_not_import_torch():
    code = "import sys, pylr.schedules, pylr._validate; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd="/",  # not the checkout, whose pylr/ has no compiled _core
    )
    assert out.stdout.strip() == "False"
