"""Benchmark workloads shared by ``pylr bench`` and ``benchmarks/``.

Every number is measured against torch in the same run (these machines are noisy), and every
workload checks its result before it is timed.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

from pylr import _core, schedules

__all__ = ["SCHEDULER_CASES", "make_scheduler_pair", "run_bench", "time_call"]


def time_call(fn: Callable[[], Any], *, number: int, repeat: int = 5) -> float:
    """Best seconds per call of ``fn`` over ``repeat`` rounds of ``number`` calls."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


# name -> (constructor kwargs); total_steps is large so OneCycleLR never runs out while timed.
SCHEDULER_CASES: dict[str, dict[str, Any]] = {
    "StepLR": {"step_size": 30, "gamma": 0.1},
    "CosineAnnealingLR": {"T_max": 1000, "eta_min": 1e-4},
    "OneCycleLR": {"max_lr": 0.1, "total_steps": 10**8},
    "CyclicLR": {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 500},
}


def make_scheduler_pair(name: str) -> tuple[Any, Any]:
    """The same scheduler from torch and from pylr, each on its own two-group SGD."""
    import torch

    from pylr import lr_scheduler as pylr_sched

    def optimizer() -> torch.optim.Optimizer:
        params = [torch.zeros(4, requires_grad=True) for _ in range(2)]
        return torch.optim.SGD(
            [{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.01}],
            momentum=0.9,
        )

    kwargs = SCHEDULER_CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            getattr(torch.optim.lr_scheduler, name)(optimizer(), **kwargs),
            getattr(pylr_sched, name)(optimizer(), **kwargs),
        )


def _bench_schedules(quick: bool) -> list[dict[str, Any]]:
    rows = []
    n = 1_000_000
    cases = {
        "Cosine": schedules.Cosine(T_max=n, base_lr=0.1),
        "OneCycle": schedules.OneCycle(max_lr=0.1, total_steps=n),
    }
    for name, s in cases.items():
        v = s.values(n)
        assert v.shape == (n,) and abs(v[12345] - s(12345)) <= 1e-15
        t_values = time_call(lambda s=s: s.values(n), number=1 if quick else 3)
        t_call = time_call(lambda s=s: s(12345), number=10_000 if quick else 100_000)
        rows.append({"schedule": name, "values_1M_ms": t_values * 1e3, "call_ns": t_call * 1e9})
    return rows


def _bench_schedulers(quick: bool) -> list[dict[str, Any]]:
    rows = []
    number = 2_000 if quick else 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in SCHEDULER_CASES:
            ref, ours = make_scheduler_pair(name)
            for _ in range(10):
                ref.step()
                ours.step()
            lr_ref, lr_ours = ref.get_last_lr(), ours.get_last_lr()
            assert all(
                math.isclose(a, b, rel_tol=1e-9) for a, b in zip(lr_ref, lr_ours, strict=True)
            )
            t_ref = time_call(ref.step, number=number)
            t_ours = time_call(ours.step, number=number)
            rows.append(
                {
                    "scheduler": name,
                    "torch_us": t_ref * 1e6,
                    "pylr_us": t_ours * 1e6,
                    "speedup": t_ref / t_ours,
                }
            )
    return rows


def run_bench(json_path: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Time pylr against torch in one run, print tables, optionally write JSON; returns results."""
    import torch

    results = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "pylr_threads": _core.get_num_threads(),
        },
        "schedules": _bench_schedules(quick),
        "schedulers": _bench_schedulers(quick),
    }
    print("Schedules (pylr, closed form in C++)")
    print(f"  {'schedule':<10} {'values(1M) ms':>14} {'schedule(t) ns':>15}")
    for r in results["schedules"]:
        print(f"  {r['schedule']:<10} {r['values_1M_ms']:>14.2f} {r['call_ns']:>15.0f}")
    print("scheduler.step(), two param groups (torch and pylr timed in this run)")
    print(f"  {'scheduler':<18} {'torch us':>9} {'pylr us':>9} {'speedup':>8}")
    for r in results["schedulers"]:
        print(
            f"  {r['scheduler']:<18} {r['torch_us']:>9.2f} {r['pylr_us']:>9.2f} "
            f"{r['speedup']:>7.2f}x"
        )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {json_path}")
    return results


if __name__ == "__main__":  # pragma: no cover
    run_bench()
