"""Bad or extreme input to pylr.schedules and the C++ core: every loop and every recursion is
bounded, and what Python refuses it refuses with a ValueError naming the argument."""

from __future__ import annotations

import copy
import json
import math
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pylr import _core
from pylr import schedules as S
from pylr.cli import parse_spec


def run_isolated(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout. Code that could hang (a C++ loop
    holding the GIL ignores Ctrl-C) runs here, so that a regression fails the test instead of
    stopping the suite; the timeout is a hang detector, far above the milliseconds it takes."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",  # not the checkout, whose pylr/ has no compiled _core
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ------------------------------------------------------------------------------------------
# warm_restart_position: bounded for any input, exact for valid input


def test_warm_restart_position_returns_nan_for_input_python_refuses():
    out = run_isolated(
        """
        import math
        from pylr import _core
        cases = [(0, 2, 1000), (-3, 2, 1000), (math.nan, 2, 5), (10, 0.5, 1000), (10, 0, 50),
                 (10, -2, 50), (10, math.nan, 50), (10, 2, math.inf), (10, 1, math.inf),
                 (10, 2, -math.inf), (10, 2, math.nan), (1, 1 + 1e-12, 1e9)]
        for args in cases:
            print(*_core.warm_restart_position(*args))
        """
    )
    rows = [line.split() for line in out.splitlines()]
    assert len(rows) == 12
    assert all(math.isnan(float(x)) for row in rows for x in row), out


def test_warm_restart_position_is_exact_up_to_2_pow_52():
    rng = np.random.default_rng(0)
    for t_0, t_mult in [(1, 2), (3, 2), (10, 3), (7, 10), (1, 1000), (5, 1)]:
        starts = [0]
        while starts[-1] < 2**52:
            starts.append(starts[-1] + t_0 * t_mult ** (len(starts) - 1))
            if t_mult == 1 and len(starts) > 3:
                break
        for _ in range(200):
            t = int(rng.integers(0, 2**52))
            if t_mult == 1:
                want = (t % t_0, t_0)
            else:
                i = max(k for k, s in enumerate(starts) if s <= t)
                want = (t - starts[i], t_0 * t_mult**i)
            assert _core.warm_restart_position(t_0, t_mult, float(t)) == want, (t_0, t_mult, t)
    # every restart point and the step before it
    for k in range(1, 50):
        start = 2**k - 1  # T_0 = 1, T_mult = 2
        assert _core.warm_restart_position(1, 2, float(start)) == (0.0, 2.0**k)
        before = 2.0 ** (k - 1)
        assert _core.warm_restart_position(1, 2, float(start - 1)) == (before - 1, before)


def test_warm_restart_position_for_the_extremes_of_doubles():
    tiny, huge = 5e-324, 1.7e308
    t_cur, t_i = _core.warm_restart_position(tiny, 2, huge)
    assert 0.0 <= t_cur < t_i and math.isfinite(t_cur)
    assert _core.warm_restart_position(1, 1e300, 1e308)[1] == math.inf
    assert _core.warm_restart_position(math.inf, 2, 5.0) == (5.0, math.inf)


# ------------------------------------------------------------------------------------------
# nesting depth


def nest(kind: str, depth: int) -> S.Schedule:
    s: S.Schedule = S.Cosine(10, base_lr=0.5)
    for i in range(depth - 1):
        if kind == "scale":
            s = 1.0 * s
        elif kind == "chain":
            s = S.chain([s, S.Constant(1.0 + i % 2)])
        elif kind == "sequence":
            s = S.sequence([S.Constant(0.1), s], [3])
        elif kind == "warmup":
            s = S.warmup(s, 1 + i % 3)
        else:
            s = s * S.Exponential(0.99)
    return s


KINDS = ["scale", "chain", "sequence", "warmup", "product"]


@pytest.mark.parametrize("kind", KINDS)
def test_max_depth_builds_and_one_more_level_raises(kind):
    s = nest(kind, S.MAX_DEPTH)
    assert s.depth == S.MAX_DEPTH == 256
    assert math.isfinite(s(5)) and s.values(10).shape == (10,)
    with pytest.raises(ValueError, match=r"257 levels deep; .*MAX_DEPTH = 256"):
        {
            "scale": lambda: 2.0 * s,
            "chain": lambda: S.chain([S.Constant(), s]),
            "sequence": lambda: S.sequence([s, S.Constant()], [4]),
            "warmup": lambda: S.warmup(s, 5),
            "product": lambda: S.Constant(2.0) * s,
        }[kind]()


def test_nesting_in_a_loop_stops_with_a_clear_error_at_the_limit():
    s: S.Schedule = S.Constant(1.0)
    with pytest.raises(ValueError, match="MAX_DEPTH") as info:
        for _ in range(150_000):
            s = 1.0 * s
    assert s.depth == S.MAX_DEPTH
    assert "Scaled would nest 257 levels" in str(info.value)
    assert s(0) == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_everything_round_trips_at_the_max_depth(kind):
    """repr, to_dict, JSON, from_dict, pickle, copy, equality and hashing of the deepest schedule
    allowed, under Python's default recursion limit (and pytest's own stack)."""
    s, same = nest(kind, S.MAX_DEPTH), nest(kind, S.MAX_DEPTH)
    assert sys.getrecursionlimit() <= 1000
    assert s == same and hash(s) == hash(same) and s is not same
    assert repr(s) == repr(same) and repr(s).count("(") >= S.MAX_DEPTH
    d = s.to_dict()
    assert S.from_dict(d) == s
    assert S.from_dict(json.loads(json.dumps(d))) == s
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.values(50).tolist() == s.values(50).tolist()
    assert copy.deepcopy(s) is s and copy.copy(s) is s
    assert s != nest(kind, S.MAX_DEPTH - 1)


def test_repr_round_trips_through_the_cli_parser():
    # the parser's own limit (200 nested brackets) bounds how deep an expression can be
    for kind in ("scale", "warmup", "product"):
        s = nest(kind, 90)
        assert parse_spec(repr(s)) == s


@pytest.mark.parametrize("levels", [S.MAX_DEPTH + 1, 3000, 20_000])
def test_from_dict_of_a_deep_spec_raises_value_error_not_recursion_error(levels):
    d: dict = {"type": "Constant", "value": 1.0}
    for i in range(levels - 1):
        if i % 2:
            d = {"type": "Scaled", "schedule": d, "factor": 1.0}
        else:
            d = {"type": "Chain", "schedules": [d]}
    with pytest.raises(ValueError, match=r"nests more than pylr\.schedules\.MAX_DEPTH = 256"):
        S.from_dict(d)


def test_from_dict_names_unknown_fields_of_any_type():
    with pytest.raises(ValueError, match=r"Constant got unknown fields \['x', 1\]"):
        S.from_dict({"type": "Constant", 1: 2, "x": 3})


def test_from_dict_at_the_max_depth():
    d: dict = {"type": "Constant", "value": 1.0}
    for _ in range(S.MAX_DEPTH - 1):
        d = {"type": "Warmup", "schedule": d, "steps": 1}
    assert S.from_dict(d).depth == S.MAX_DEPTH


def test_the_core_refuses_deep_trees_and_unknown_modes():
    node = S.Constant(1.0)._node
    for _ in range(S.MAX_DEPTH - 1):
        node = _core.scale(schedule=node, factor=1.0)
    assert node.depth == _core.MAX_SCHEDULE_DEPTH
    with pytest.raises(ValueError, match="257 levels deep"):
        _core.scale(schedule=node, factor=1.0)
    cyclic = dict(
        base_lr=0.1,
        max_lr=1.0,
        step_size_up=2.0,
        step_size_down=2.0,
        gamma=1.0,
        base_momentum=0.8,
        max_momentum=0.9,
    )
    for mode in ("", "Triangular", "exp-range"):
        with pytest.raises(ValueError, match="unknown cyclic mode"):
            _core.cyclic(mode=mode, **cyclic)
    assert _core.cyclic(mode="triangular2", **cyclic).value(3.0) > 0.1


# ------------------------------------------------------------------------------------------
# numbers that do not fit


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda: S.Step(step_size=10**400), "step_size"),
        (lambda: S.Step(step_size=2**53 + 1), "step_size"),
        (lambda: S.Cosine(T_max=10**400), "T_max"),
        (lambda: S.Constant(2**1024), "value"),
        (lambda: S.Constant(-(10**5000)), "value"),
        (lambda: S.MultiStep([1, 10**30]), r"milestones\[1\]"),
        (lambda: S.OneCycle(0.1, total_steps=10**20), "total_steps"),
        (lambda: S.Constant() * 10**400, "factor"),
        (lambda: S.Cyclic(0.1, 1.0, step_size_up=1e308, step_size_down=1e308), "step_size_up"),
    ],
)
def test_numbers_too_large_for_a_double_raise_value_error_naming_the_argument(factory, name):
    with pytest.raises(ValueError, match=name) as info:
        factory()
    assert isinstance(info.value, OverflowError)  # what float() raises for them
    assert len(str(info.value)) < 200


def test_counts_up_to_2_pow_53_are_accepted():
    s = S.Step(step_size=2**53)
    assert s(2.0**53 - 1) == 1.0 and s(2.0**53) == pytest.approx(0.1)


def test_steps_that_do_not_fit_raise_value_error():
    s = S.Cosine(10)
    for bad in (10**400, -1, math.inf, math.nan, -(10**400)):
        with pytest.raises(ValueError, match="step must be finite and >= 0"):
            s(bad)
    for bad in ("3", b"3", None, [1]):
        with pytest.raises(TypeError, match="step must be a number"):
            s(bad)
    with pytest.raises(ValueError, match="steps must be finite"):
        s.values([1, 10**400])
    with pytest.raises(ValueError, match="steps"):
        s.values(99999999999999999999)
    assert s(np.float32(2.5)) == s(2.5) and s(np.int64(3)) == s(3)
    assert S.OneCycle(0.1, 10).momentum(10**400 // 10**399) == S.OneCycle(0.1, 10).momentum(10)
