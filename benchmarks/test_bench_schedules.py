"""Schedule speed, pylr against torch in the same run (pytest-benchmark).

Run: ``pytest benchmarks/ --benchmark-columns=min,median,mean`` — each pair (``torch`` and
``pylr`` in the same group) is measured in one process; compare the ratio, not the absolute time.
Each benchmark checks its result before timing it.
"""

from __future__ import annotations

import warnings

import pytest

from pylr import schedules as S
from pylr.bench import SCHEDULER_CASES, make_scheduler_pair

N = 1_000_000


@pytest.mark.parametrize(
    "schedule",
    [S.Cosine(T_max=N, base_lr=0.1), S.OneCycle(max_lr=0.1, total_steps=N)],
    ids=["cosine", "one-cycle"],
)
def test_values_1m(benchmark, schedule):
    benchmark.group = "values(1_000_000)"
    out = benchmark(schedule.values, N)
    assert out.shape == (N,) and out[777] == schedule(777)


@pytest.mark.parametrize(
    "schedule",
    [S.Cosine(T_max=1000, base_lr=0.1), S.OneCycle(max_lr=0.1, total_steps=1000)],
    ids=["cosine", "one-cycle"],
)
def test_schedule_call(benchmark, schedule):
    benchmark.group = "schedule(step)"
    assert benchmark(schedule, 123) == schedule.values([123])[0]


@pytest.mark.parametrize("name", list(SCHEDULER_CASES))
@pytest.mark.parametrize("impl", ["torch", "pylr"])
def test_scheduler_step(benchmark, name, impl):
    benchmark.group = f"scheduler.step() {name}"
    ref, ours = make_scheduler_pair(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            ref.step()
            ours.step()
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-9)
        benchmark(ref.step if impl == "torch" else ours.step)
