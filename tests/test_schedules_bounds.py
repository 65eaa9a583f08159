"""Bad or extreme input to pylr.schedules and the C++ core: every loop and every recursion is
bounded, and what Python refuses it refuses with a ValueError naming the argument."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np

from pylr import _core


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
