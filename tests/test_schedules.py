"""pylr.schedules: closed forms, composition, serialisation, validation."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylr import schedules as S

# ------------------------------------------------------------------------------------------
# strategies

reals = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False)
gammas = st.floats(min_value=0.05, max_value=0.999)
periods = st.integers(min_value=1, max_value=500)


def leaf_schedules() -> st.SearchStrategy[S.Schedule]:
    return st.one_of(
        st.builds(S.Constant, reals),
        st.builds(S.Step, periods, gammas, reals),
        st.builds(
            S.MultiStep, st.lists(st.integers(0, 300), max_size=5).map(sorted), gammas, reals
        ),
        st.builds(S.Exponential, gammas, reals),
        st.builds(S.Linear, st.floats(0.01, 1.0), st.floats(0.0, 1.0), periods, reals),
        st.builds(S.Polynomial, periods, st.floats(0.0, 3.0), reals),
        st.builds(S.Cosine, periods, st.floats(0.0, 1e-3), reals),
        st.builds(S.CosineWarmRestarts, periods, st.integers(1, 3), st.floats(0.0, 1e-3), reals),
        st.builds(
            S.Cyclic,
            st.floats(1e-4, 1e-2),
            st.floats(0.02, 1.0),
            st.integers(1, 200),
            st.integers(1, 200),
            st.sampled_from(["triangular", "triangular2", "exp_range"]),
            st.floats(0.9, 1.0),
        ),
        st.builds(
            S.OneCycle,
            st.floats(1e-3, 1.0),
            st.integers(20, 2000),
            st.floats(0.1, 0.9),
            st.sampled_from(["cos", "linear"]),
            three_phase=st.booleans(),
        ),
        st.builds(
            S.FastaiOneCycle,
            st.floats(1e-3, 1.0),
            st.integers(1, 2000),
            st.floats(0.05, 0.95),
            moms=st.tuples(st.floats(0.8, 0.99), st.floats(0.5, 0.9), st.floats(0.8, 0.99)),
        ),
        st.builds(S.InverseSqrt, reals, st.integers(0, 100)),
        st.builds(
            S.WarmupStableDecay,
            reals,
            st.integers(0, 100),
            st.integers(0, 100),
            st.integers(0, 100),
            st.sampled_from(["linear", "cosine", "1-sqrt"]),
            min_ratio=st.floats(0.0, 1.0),
        ),
        st.builds(S.WarmupCosine, reals, st.integers(0, 50), st.integers(51, 500)),
    )


any_schedule = st.recursive(
    leaf_schedules(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).flatmap(
            lambda parts: st.lists(
                st.integers(0, 400), min_size=len(parts) - 1, max_size=len(parts) - 1
            ).map(lambda ms: S.sequence(parts, sorted(ms)))
        ),
        st.lists(inner, min_size=1, max_size=3).map(S.chain),
        st.builds(
            S.warmup,
            inner,
            st.integers(1, 50),
            st.sampled_from(["linear", "constant"]),
            st.floats(0.01, 1.0),
        ),
        st.builds(lambda s, c: c * s, inner, reals),
    ),
    max_leaves=4,
)

steps_arrays = st.lists(
    st.one_of(st.integers(0, 5000), st.floats(0, 5000, allow_nan=False)), min_size=0, max_size=50
)


# ------------------------------------------------------------------------------------------
# properties


@settings(max_examples=150, deadline=None)
@given(any_schedule, steps_arrays)
def test_values_equal_per_step_calls(s, steps):
    vals = s.values(np.array(steps, dtype=np.float64))
    assert vals.dtype == np.float64 and vals.shape == (len(steps),)
    for t, v in zip(steps, vals, strict=True):
        assert v == s(t) or (math.isnan(v) and math.isnan(s(t)))
    if s.has_momentum:
        moms = s.momentum_values(np.array(steps, dtype=np.float64))
        for t, m in zip(steps, moms, strict=True):
            assert m == s.momentum(t)


@settings(max_examples=150, deadline=None)
@given(any_schedule)
def test_values_of_a_count_are_steps_zero_to_n(s):
    n = 300
    np.testing.assert_array_equal(s.values(n), [s(t) for t in range(n)])


@settings(max_examples=150, deadline=None)
@given(any_schedule)
def test_to_dict_round_trips_through_json(s):
    d = json.loads(json.dumps(s.to_dict()))
    back = S.from_dict(d)
    assert back == s and hash(back) == hash(s)
    np.testing.assert_array_equal(back.values(100), s.values(100))
    assert pickle.loads(pickle.dumps(s)) == s
    assert eval(repr(s), vars(S)) == s  # the repr is the constructor call


@settings(max_examples=100, deadline=None)
@given(st.builds(S.Step, periods, gammas, reals))
def test_step_is_non_increasing_and_changes_only_at_multiples(s):
    v = s.values(2000)
    assert np.all(np.diff(v) <= 0)
    changes = np.nonzero(np.diff(v))[0] + 1
    assert np.all(changes % s.step_size == 0)


@settings(max_examples=100, deadline=None)
@given(st.builds(S.Cosine, periods, st.floats(0.0, 1e-3), st.floats(0.01, 1.0)))
def test_cosine_decreases_then_increases_with_period_two_t_max(s):
    t_max = int(s.T_max)
    v = s.values(4 * t_max + 1)
    assert np.all(np.diff(v[: t_max + 1]) <= 1e-15)
    assert np.all(np.diff(v[t_max : 2 * t_max + 1]) >= -1e-15)
    np.testing.assert_allclose(v[: 2 * t_max], v[2 * t_max : 4 * t_max], rtol=1e-12, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        S.OneCycle,
        st.floats(1e-3, 1.0),
        st.integers(50, 3000),
        st.floats(0.1, 0.9),
        st.sampled_from(["cos", "linear"]),
    )
)
def test_one_cycle_rises_then_falls_and_momentum_mirrors(s):
    n = s.total_steps
    v, m = s.values(n), s.momentum_values(n)
    rise_end = math.floor(s.pct_start * n - 1)  # the last whole step of the warm-up phase
    up, down = slice(0, rise_end + 1), slice(rise_end + 1, n)
    assert np.all(np.diff(v[up]) >= -1e-15) and np.all(np.diff(m[up]) <= 1e-15)
    assert np.all(np.diff(v[down]) <= 1e-15) and np.all(np.diff(m[down]) >= -1e-15)
    assert v[0] == pytest.approx(s.max_lr / s.div_factor)
    assert v[-1] == pytest.approx(s.max_lr / s.div_factor / s.final_div_factor)
    assert s(n + 10) == s(n - 1)  # holds past the end


def _fastai_combined_cos(pos, pct, start, middle, end):
    """fastai's combined_cos from its definition (two cosine phases over the fraction pos)."""

    def cos_anneal(a, b, x):
        return a + (1 + math.cos(math.pi * (1 - x))) * (b - a) / 2

    if pos < pct:
        return cos_anneal(start, middle, pos / pct)
    return cos_anneal(middle, end, (pos - pct) / (1 - pct))


@settings(max_examples=100, deadline=None)
@given(
    st.floats(1e-4, 1.0),
    st.integers(1, 3000),
    st.floats(0.05, 0.95),
    st.floats(1.0, 100.0),
    st.floats(1.0, 1e6),
    st.tuples(st.floats(0.8, 0.99), st.floats(0.5, 0.9), st.floats(0.0, 0.99)),
)
def test_fastai_one_cycle_is_fastais_combined_cos(lr_max, total, pct, div, div_final, moms):
    s = S.FastaiOneCycle(lr_max, total, pct, div, div_final, moms)
    v, m = s.values(total + 5), s.momentum_values(total + 5)
    for t in [*range(0, total, max(1, total // 50)), total - 1]:
        pos = t / total
        lr = _fastai_combined_cos(pos, pct, lr_max / div, lr_max, lr_max / div_final)
        mom = _fastai_combined_cos(pos, pct, *moms)
        assert v[t] == pytest.approx(lr, rel=1e-9, abs=1e-300)
        assert m[t] == pytest.approx(mom, rel=1e-12, abs=1e-15)
    # from total_steps on it holds the end values
    assert v[total:] == pytest.approx([lr_max / div_final] * 5, rel=1e-9)
    assert m[total:] == pytest.approx([moms[2]] * 5, abs=1e-15)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        S.WarmupStableDecay,
        reals,
        st.integers(1, 100),
        st.integers(0, 100),
        st.integers(1, 100),
        st.sampled_from(["linear", "cosine", "1-sqrt"]),
        min_ratio=st.floats(0.0, 1.0),
    )
)
def test_wsd_phases_are_monotone(s):
    w, st_, d = s.warmup_steps, s.stable_steps, s.decay_steps
    v = s.values(w + st_ + d + 10)
    assert np.all(np.diff(v[: w + 1]) >= 0)
    assert np.all(v[w : w + st_] == s.peak_value)
    assert np.all(np.diff(v[w + st_ :]) <= 1e-15)
    assert v[-1] == pytest.approx(s.min_ratio * s.peak_value)


# ------------------------------------------------------------------------------------------
# closed forms at chosen points


def test_closed_forms_by_hand():
    assert S.Step(3, 0.5, 2.0)(0) == 2.0 and S.Step(3, 0.5, 2.0)(3) == 1.0
    assert S.MultiStep([2, 2, 5], 0.1)(2) == pytest.approx(0.01)  # a repeat compounds
    assert S.MultiStep([2, 2, 5], 0.1)(5) == pytest.approx(0.001)
    assert S.Exponential(0.5, 4.0)(2) == 1.0
    assert S.Linear(0.5, 1.0, 10)(5) == pytest.approx(0.75)
    assert S.Linear(0.5, 1.0, 10)(50) == 1.0
    assert S.Polynomial(10, 2.0)(5) == pytest.approx(0.25)
    assert S.Polynomial(10, 2.0)(20) == 0.0
    assert S.Cosine(10, 0.1, 1.0)(10) == pytest.approx(0.1)
    assert S.Cosine(10, 0.1, 1.0)(20) == pytest.approx(1.0)
    r = S.CosineWarmRestarts(T_0=10, T_mult=2)
    assert r(10) == 1.0 and r(30) == 1.0 and r(20) == pytest.approx(0.5)
    assert r(2.5) == pytest.approx((1 + math.cos(math.pi * 0.25)) / 2)
    assert S.InverseSqrt(1.0, 100)(50) == 0.5
    assert S.InverseSqrt(1.0, 100)(100) == 1.0
    assert S.InverseSqrt(1.0, 100)(400) == pytest.approx(0.5)
    wc = S.WarmupCosine(1.0, 10, 110, min_ratio=0.1)
    assert wc(5) == 0.5 and wc(10) == 1.0 and wc(60) == pytest.approx(0.55) and wc(500) == 0.1
    c = S.Cyclic(0.1, 1.0, 5, 5)
    assert c(0) == 0.1 and c(5) == 1.0 and c(10) == 0.1
    assert c.momentum(0) == 0.9 and c.momentum(5) == pytest.approx(0.8)


def test_combinators():
    seq = S.sequence([S.Constant(1.0), S.Linear(0.0, 1.0, 10, 2.0)], [5])
    assert seq(4) == 1.0 and seq(5) == 0.0 and seq(10) == 1.0  # local step 5 of the linear
    ch = S.Step(2, 0.5) * S.Constant(3.0)
    assert isinstance(ch, S.Chain) and ch(2) == 1.5
    assert (0.5 * S.Constant(4.0))(0) == 2.0 and (S.Constant(4.0) * 0.5)(7) == 2.0
    w = S.warmup(S.Constant(2.0), 4)
    assert [w(t) for t in range(6)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    we = S.warmup(S.Constant(1.0), 2, mode="exponential", start_factor=0.01)
    assert we(0) == pytest.approx(0.01) and we(1) == pytest.approx(0.1) and we(2) == 1.0
    wk = S.warmup(S.Constant(1.0), 3, mode="constant", start_factor=0.25)
    assert wk(2) == 0.25 and wk(3) == 1.0
    oc = S.OneCycle(0.1, 100)
    ww = S.warmup(oc, 10)
    assert (
        ww.has_momentum and ww.momentum(3) == oc.momentum(0) and ww.momentum(15) == oc.momentum(5)
    )
    assert (2 * oc).momentum(7) == oc.momentum(7)
    assert S.sequence([oc, S.Cyclic(0.1, 1.0, 5)], [50]).has_momentum
    assert not S.sequence([oc, S.Constant(1.0)], [50]).has_momentum


@pytest.mark.parametrize(
    "s",
    [
        S.Step(7, 0.9),
        S.Exponential(0.999),
        S.Cosine(1000),
        S.CosineWarmRestarts(7, 2),
        S.Cyclic(0.01, 0.1, 2000),
        S.OneCycle(0.1, 10_000),
        S.InverseSqrt(1.0, 100),
        S.WarmupStableDecay(1.0, 10, 10, 10),
        S.sequence([S.Constant(1.0), S.Cosine(100)], [10]),
    ],
)
def test_edges_step_zero_last_past_end_and_huge_steps(s):
    for t in (0, 1, 9_999, 10_000, 10**9, 10**12, 10**12 + 0.5):
        v = s(t)
        assert math.isfinite(v) and v >= 0.0
    np.testing.assert_array_equal(s.values(np.array([0.0, 1e12])), [s(0), s(10**12)])


def test_huge_steps_are_accurate_where_periodic():
    # period reduction keeps the cosine argument small: 1e12 is a multiple of 2 * T_max
    assert S.Cosine(1000)(10**12) == 1.0
    assert S.Cosine(1000)(10**12 + 1000) == pytest.approx(0.0, abs=1e-15)
    assert S.CosineWarmRestarts(1000)(10**12 + 500) == pytest.approx(0.5)
    assert S.Step(10, 0.5)(10**12) == 0.0  # underflows cleanly, no NaN


# ------------------------------------------------------------------------------------------
# the object model


def test_immutable_equal_hashable_and_momentum_where_defined():
    s = S.Cosine(100, base_lr=0.1)
    with pytest.raises(AttributeError, match="immutable"):
        s.T_max = 5
    assert s == S.Cosine(100.0, 0.0, 0.1) and s != S.Cosine(101, base_lr=0.1)
    assert len({s, S.Cosine(100, base_lr=0.1)}) == 1
    assert repr(s) == "Cosine(T_max=100.0, base_lr=0.1)"
    assert not s.has_momentum
    with pytest.raises(ValueError, match="Cosine defines no momentum"):
        s.momentum(3)
    with pytest.raises(ValueError, match="no momentum"):
        s.momentum_values(3)


def test_values_shapes_and_step_validation():
    s = S.Exponential(0.5)
    assert s.values(0).shape == (0,)
    assert s.values(np.zeros((2, 3))).shape == (2, 3)
    assert s.values([0, 1, 2]).tolist() == [1.0, 0.5, 0.25]
    for bad in (-1, -0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="step"):
            s(bad)
        with pytest.raises(ValueError, match="steps"):
            s.values([0, bad])
    with pytest.raises(ValueError, match="steps"):
        s.values(-3)
    with pytest.raises(TypeError, match="step must be a number"):
        s("3")


@pytest.mark.parametrize(
    ("factory", "exc", "match"),
    [
        (lambda: S.Step(0), ValueError, "step_size"),
        (lambda: S.Step(2.5), TypeError, "step_size"),
        (lambda: S.Step(5, gamma=0.0), ValueError, "gamma"),
        (lambda: S.Step(5, gamma=-1), ValueError, "gamma"),
        (lambda: S.Exponential(math.nan), ValueError, "gamma"),
        (lambda: S.Exponential("0.9"), TypeError, "gamma"),
        (lambda: S.MultiStep([5, 3]), ValueError, "milestones"),
        (lambda: S.MultiStep([-1, 3]), ValueError, r"milestones\[0\]"),
        (lambda: S.MultiStep(5), TypeError, "milestones"),
        (lambda: S.Linear(total_iters=0), ValueError, "total_iters"),
        (lambda: S.Polynomial(power=-1), ValueError, "power"),
        (lambda: S.Cosine(0), ValueError, "T_max"),
        (lambda: S.Cosine(10, eta_min=math.inf), ValueError, "eta_min"),
        (lambda: S.CosineWarmRestarts(0), ValueError, "T_0"),
        (lambda: S.CosineWarmRestarts(10, 0), ValueError, "T_mult"),
        (lambda: S.Cyclic(0.1, 1.0, step_size_up=0), ValueError, "step_size_up"),
        (lambda: S.Cyclic(0.1, 1.0, mode="sine"), ValueError, "mode"),
        (lambda: S.Cyclic(0.1, 1.0, gamma=0), ValueError, "gamma"),
        (lambda: S.OneCycle(0.1, 100, pct_start=0.0), ValueError, "pct_start"),
        (lambda: S.OneCycle(0.1, 100, pct_start=1.0), ValueError, "pct_start"),
        (lambda: S.OneCycle(0.1, 10, pct_start=0.1), ValueError, "zero length"),
        (lambda: S.OneCycle(0.1, 0), ValueError, "total_steps"),
        (lambda: S.OneCycle(-0.1, 10), ValueError, "max_lr"),
        (lambda: S.OneCycle(0.1, 10, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
        (lambda: S.OneCycle(0.1, 100, three_phase=1), TypeError, "three_phase"),
        (lambda: S.FastaiOneCycle(0.0, 100), ValueError, "lr_max"),
        (lambda: S.FastaiOneCycle(0.1, 100, pct_start=1.0), ValueError, "pct_start"),
        (lambda: S.FastaiOneCycle(0.1, 100, moms=(0.9, 0.8)), ValueError, "moms"),
        (lambda: S.FastaiOneCycle(0.1, 100, moms=(0.9, "a", 0.8)), TypeError, r"moms\[1\]"),
        (lambda: S.FastaiOneCycle(0.1, 100, div_final=0), ValueError, "div_final"),
        (lambda: S.InverseSqrt(1.0, -1), ValueError, "warmup_steps"),
        (lambda: S.WarmupStableDecay(1.0, 1, 1, 1, "exp"), ValueError, "decay_shape"),
        (lambda: S.WarmupStableDecay(1.0, 1, 1, 1, min_ratio=2), ValueError, "min_ratio"),
        (lambda: S.WarmupCosine(1.0, 10, 10), ValueError, "total_steps"),
        (lambda: S.sequence([S.Constant()], [3]), ValueError, "milestones"),
        (lambda: S.sequence([], []), ValueError, "schedules"),
        (lambda: S.sequence([S.Constant(), 3], [3]), TypeError, r"schedules\[1\]"),
        (lambda: S.sequence([S.Constant(), S.Constant()], [-3]), ValueError, "milestones"),
        (lambda: S.warmup(S.Constant(), 0), ValueError, "steps"),
        (lambda: S.warmup(S.Constant(), 3, mode="exponential"), ValueError, "start_factor"),
        (lambda: S.warmup(3, 3), TypeError, "schedule"),
        (lambda: S.Constant(True), TypeError, "value"),
        (lambda: S.from_dict({"type": "Nope"}), ValueError, "unknown schedule type"),
        (lambda: S.from_dict({"type": "Step", "step_size": 2, "x": 1}), ValueError, "unknown"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(factory, exc, match):
    with pytest.raises(exc, match=match):
        factory()


def test_calls_are_thread_count_independent():
    import pylr

    s = S.OneCycle(0.1, 200_000)
    before = pylr.get_num_threads()
    try:
        pylr.set_num_threads(1)
        one = s.values(200_000)
        pylr.set_num_threads(2)
        two = s.values(200_000)
    finally:
        pylr.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    with pytest.raises(ValueError, match="n must be"):
        pylr.set_num_threads(0)
