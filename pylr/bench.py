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

__all__ = [
    "ALGORITHMS",
    "SCHEDULER_CASES",
    "bench_optimizer",
    "load_workloads",
    "make_scheduler_pair",
    "run_bench",
    "time_call",
]


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


# --------------------------------------------------------------------------------------------
# Optimizer steps


def load_workloads(quick: bool = False) -> dict[str, dict[str, Any]]:
    """The parameter shapes of the benchmark workloads (pylr/workloads.json); ``quick`` scales
    the large ones down for smoke tests."""
    from importlib import resources

    data = json.loads(resources.files("pylr").joinpath("workloads.json").read_text())
    if quick:
        data = {
            "tiny_mlp": data["tiny_mlp"],
            "many_small": {"about": "400 tensors of 4096 elements", "shapes": [[4096]] * 400},
            "one_large": {"about": "one tensor of 4M elements", "shapes": [[1 << 22]]},
        }
    return data


# name -> (bytes moved per float32 element, state tensors per param, torch kwargs)
ALGORITHMS: dict[str, tuple[int, int, dict[str, Any]]] = {
    "AdamW": (28, 2, {"lr": 1e-3, "weight_decay": 1e-2}),
    "Adam": (28, 2, {"lr": 1e-3}),
    "SGD": (20, 1, {"lr": 1e-3, "momentum": 0.9}),
}


def _make_params(shapes: list[list[int]]) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02)
        p.grad = torch.randn(s, generator=gen) * 1e-3
        params.append(p)
    return params


def _steppers(algo: str, params: list[Any], impl: str) -> Callable[[], Any]:
    """A zero-argument callable doing one step of ``algo`` with implementation ``impl``."""
    import torch

    from pylr import functional as F
    from pylr import optim as pylr_optim

    _, n_states, kwargs = ALGORITHMS[algo]
    if impl.startswith("torch"):
        flavour = {
            "torch for-loop": {"foreach": False},
            "torch foreach": {"foreach": True},
            "torch fused": {"fused": True},
        }[impl]
        return getattr(torch.optim, algo)(params, **kwargs, **flavour).step
    if impl == "pylr":
        return getattr(pylr_optim, algo)(params, **kwargs).step
    grads = [p.grad for p in params]
    if impl == "pylr functional":
        if algo == "SGD":
            bufs: list[Any] = [None] * len(params)
            return lambda: F.sgd_(params, grads, bufs, lr=1e-3, momentum=0.9)
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        steps = [torch.tensor(0.0) for _ in params]
        fn = F.adamw_ if algo == "AdamW" else F.adam_
        extra = {"weight_decay": 1e-2} if algo == "AdamW" else {}
        return lambda: fn(params, grads, m, v, None, steps, lr=1e-3, **extra)
    if impl == "roofline":
        opt = getattr(pylr_optim, algo)(params, **kwargs)
        opt.step()
        # the closure keeps the optimizer (and so the tensors behind the table) alive
        return lambda: _core.roofline_step(opt._plan.table.table, n_states)
    raise ValueError(f"unknown implementation {impl!r}")


def bench_optimizer(
    algo: str, shapes: list[list[int]], impls: list[str], budget_s: float = 0.3
) -> dict[str, float]:
    """Seconds per step of ``algo`` on params of ``shapes`` for each implementation, each on its
    own fresh params (so no implementation warms the caches for another)."""
    import gc

    out = {}
    for impl in impls:
        params = _make_params(shapes)
        step = _steppers(algo, params, impl)
        step()  # state allocation and plan building are not timed
        start = time.perf_counter()
        step()
        once = max(time.perf_counter() - start, 1e-7)
        number = max(1, min(2000, int(budget_s / 3 / once)))
        out[impl] = time_call(step, number=number, repeat=3)
        del step, params
        gc.collect()
    return out


def _bench_optimizers(quick: bool) -> list[dict[str, Any]]:
    impls = ["torch fused", "pylr", "pylr functional", "roofline"]
    if not quick:
        impls = ["torch for-loop", "torch foreach", *impls]
    algos = ["AdamW", "SGD"] if quick else list(ALGORITHMS)
    rows = []
    for name, w in load_workloads(quick).items():
        elements = sum(math.prod(s) for s in w["shapes"])
        for algo in algos:
            bytes_per_elem = ALGORITHMS[algo][0]
            times = bench_optimizer(algo, w["shapes"], impls, budget_s=0.05 if quick else 0.6)
            gbs = {k: elements * bytes_per_elem / t / 1e9 for k, t in times.items()}
            rows.append(
                {
                    "workload": name,
                    "algorithm": algo,
                    "tensors": len(w["shapes"]),
                    "elements": elements,
                    "ms_per_step": {k: t * 1e3 for k, t in times.items()},
                    "gb_per_s": gbs,
                    "speedup_vs_fused": times["torch fused"] / times["pylr"],
                    "functional_speedup_vs_fused": times["torch fused"] / times["pylr functional"],
                    "fraction_of_roofline": times["roofline"] / times["pylr"],
                }
            )
    return rows


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int, number: int) -> dict[str, float]:
    """Best seconds per call of each function, rounds interleaved so all see the same load."""
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], time_call(fn, number=number, repeat=1))
    return best


def _bench_clip(quick: bool) -> list[dict[str, Any]]:
    """Gradient clipping + AdamW step: torch's ``clip_grad_norm_`` (a norm pass and a pass
    rewriting the grads) + fused AdamW, against pylr's ``clip_grad_norm_`` folded into its step
    (the norm pass only), with float32 and with bfloat16 state; same-run rooflines: streaming
    the bytes each moves (a read of the grads, then p, g and two float32 states — or one, the
    bytes of two bfloat16 ones)."""
    import torch

    from pylr import optim as pylr_optim

    name = "one_large" if quick else "gpt2_small"
    shapes = load_workloads(quick)[name]["shapes"]
    elements = sum(math.prod(s) for s in shapes)

    def setup(impl: str) -> Callable[[], Any]:
        params = _make_params(shapes)
        if impl == "torch":
            opt = torch.optim.AdamW(params, lr=1e-3, fused=True)

            def step() -> None:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()

            return step
        state = torch.bfloat16 if impl == "pylr bf16 state" else None
        mine = pylr_optim.AdamW(params, lr=1e-3, state_dtype=state)

        def step_pylr() -> None:
            mine.clip_grad_norm_(1.0)
            mine.step()

        return step_pylr

    impls = ["torch", "pylr", "pylr bf16 state"]
    steps = {impl: setup(impl) for impl in impls}
    for fn in steps.values():
        fn()  # state and plans
    # rooflines on a pylr plan of these shapes: a read pass over the grads plus the step's bytes
    roof_params = _make_params(shapes)
    roof = pylr_optim.AdamW(roof_params, lr=1e-3)
    roof.step()
    roof.clip_grad_norm_(1.0)  # on the step's plan: its scratch for the norm
    plan = roof._plan
    assert plan is not None and plan.partials is not None
    table, partials = plan.table.table, plan.partials

    def roofline(n_states: int) -> Callable[[], None]:
        def run() -> None:
            _core.grad_norm(table, _core.NORM_TWO, 2.0, partials)
            _core.roofline_step(table, n_states)

        return run

    steps["roofline fp32 state"] = roofline(2)
    steps["roofline bf16 state"] = roofline(1)  # p, g and 8 bytes of state: two bf16 read+write
    times = _interleaved(steps, rounds=3 if quick else 5, number=3 if quick else 10)
    bytes_per = {"torch": 40, "pylr": 32, "pylr bf16 state": 24}
    return [
        {
            "workload": name,
            "elements": elements,
            "ms_per_step": {k: t * 1e3 for k, t in times.items()},
            "gb_per_s": {k: elements * b / times[k] / 1e9 for k, b in bytes_per.items()},
            "speedup_fp32_state": times["torch"] / times["pylr"],
            "speedup_bf16_state": times["torch"] / times["pylr bf16 state"],
            "fraction_of_roofline_fp32": times["roofline fp32 state"] / times["pylr"],
            "fraction_of_roofline_bf16": times["roofline bf16 state"] / times["pylr bf16 state"],
        }
    ]


def _bench_scheduled(quick: bool) -> list[dict[str, Any]]:
    """The tiny MLP's AdamW step under a OneCycle schedule: torch's fused AdamW +
    ``OneCycleLR.step()`` against pylr's AdamW with the schedule fused into its step."""
    import torch

    from pylr import optim as pylr_optim

    shapes = load_workloads()["tiny_mlp"]["shapes"]
    total = 10**8

    def torch_step() -> Callable[[], None]:
        opt = torch.optim.AdamW(_make_params(shapes), lr=1e-3, fused=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=total)

        def step() -> None:
            opt.step()
            sched.step()

        return step

    def pylr_step() -> Callable[[], Any]:
        schedule = schedules.OneCycle(max_lr=1e-3, total_steps=total)
        opt = pylr_optim.AdamW(_make_params(shapes), lr=1.0, schedule=schedule)
        return opt.step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps = {"torch fused + OneCycleLR": torch_step(), "pylr fused schedule": pylr_step()}
        for fn in steps.values():
            fn()
        roof = pylr_optim.AdamW(_make_params(shapes), lr=1e-3)
        roof.step()
        table = roof._plan.table.table  # type: ignore[union-attr]
        steps["roofline"] = lambda: _core.roofline_step(table, 2)
        times = _interleaved(steps, rounds=3 if quick else 7, number=200 if quick else 2000)
    return [
        {
            "workload": "tiny_mlp",
            "ms_per_step": {k: t * 1e3 for k, t in times.items()},
            "speedup": times["torch fused + OneCycleLR"] / times["pylr fused schedule"],
            "fraction_of_roofline": times["roofline"] / times["pylr fused schedule"],
        }
    ]


def _bench_loops(quick: bool) -> list[dict[str, Any]]:
    """Whole iterations (zero_grad, forward, backward, step) with torch's fused AdamW and
    pylr's: the step must stay fast while torch's own threads are busy around it."""
    import torch

    from pylr import optim as pylr_optim

    def mlp() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(784, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def block() -> torch.nn.Module:
        return torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)

    cases = {
        "mlp 784-128-64-10, batch 64": (mlp, torch.randn(64, 784)),
        "transformer block d=256, 8x64 tokens": (block, torch.randn(8, 64, 256)),
    }
    rows = []
    for name, (make, x) in cases.items():
        iterations = {}
        step_totals: dict[str, list] = {}
        for impl in ("torch fused", "pylr"):
            torch.manual_seed(0)
            model = make()
            opt = (
                torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
                if impl == "torch fused"
                else pylr_optim.AdamW(model.parameters(), lr=1e-3)
            )

            step_seconds = step_totals.setdefault(impl, [0.0, 0])

            def iteration(
                model: torch.nn.Module = model, opt: Any = opt, x: Any = x, acc: list = step_seconds
            ) -> None:
                opt.zero_grad()
                model(x).float().square().mean().backward()
                start = time.perf_counter()
                opt.step()
                acc[0] += time.perf_counter() - start
                acc[1] += 1

            iteration()
            iterations[impl] = iteration
        # interleaved rounds, so that both see the same machine load
        times = {impl: math.inf for impl in iterations}
        for _ in range(3 if quick else 7):
            for impl, iteration in iterations.items():
                times[impl] = min(
                    times[impl], time_call(iteration, number=10 if quick else 40, repeat=1)
                )
        rows.append(
            {
                "loop": name,
                "torch_fused_ms": times["torch fused"] * 1e3,
                "pylr_ms": times["pylr"] * 1e3,
                "speedup": times["torch fused"] / times["pylr"],
                # the mean time of the step alone, measured inside those loops
                "torch_fused_step_ms": 1e3
                * step_totals["torch fused"][0]
                / step_totals["torch fused"][1],
                "pylr_step_ms": 1e3 * step_totals["pylr"][0] / step_totals["pylr"][1],
            }
        )
    return rows


def _bench_fit(quick: bool) -> list[dict[str, Any]]:
    """``pylr.fit_one_cycle`` against the loop a torch user writes by hand for the same job
    (torch's fused AdamW and OneCycleLR), on the demo's MLP shape: 64-128-64-10, 23 batches of 64
    per epoch, batches already in memory so that the loop, not the loader, is timed."""
    import torch

    from pylr import optim as pylr_optim
    from pylr.demo import digits_mlp
    from pylr.train import fit, fit_one_cycle

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23 * 64, 64, generator=gen)
    y = torch.randint(0, 10, (23 * 64,), generator=gen)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    loss_fn = torch.nn.functional.cross_entropy
    epochs = 2 if quick else 5
    steps = epochs * len(batches)

    def torch_loop() -> None:
        model = digits_mlp(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        for _ in range(epochs):
            for xb, yb in batches:
                loss_fn(model(xb), yb).backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)

    def pylr_loop() -> None:
        model = digits_mlp(0)
        opt = pylr_optim.AdamW(model.parameters(), lr=1e-3)
        fit(model, batches, loss_fn, opt, epochs=epochs, progress=False)

    def pylr_one_cycle() -> None:
        fit_one_cycle(digits_mlp(0), batches, loss_fn, epochs=epochs, lr_max=3e-3, progress=False)

    runs = {"torch loop": torch_loop, "pylr.fit": pylr_loop, "pylr.fit_one_cycle": pylr_one_cycle}
    for fn in runs.values():
        fn()
    times = {name: math.inf for name in runs}
    for _ in range(3 if quick else 7):
        for name, fn in runs.items():
            times[name] = min(times[name], time_call(fn, number=1, repeat=1) / steps)
    return [
        {
            "run": name,
            "us_per_step": t * 1e6,
            "speedup_vs_torch_loop": times["torch loop"] / t,
        }
        for name, t in times.items()
    ]


def _print_optimizers(rows: list[dict[str, Any]]) -> None:
    impls = list(rows[0]["ms_per_step"])
    print("Optimizer step, ms/step (float32; each implementation timed in this run)")
    head = "".join(f"{k:>16}" for k in impls)
    print(
        f"  {'workload':<11} {'algo':<6}{head} {'pylr GB/s':>10} {'x fused':>8} "
        f"{'x fused (F)':>12} {'% roofline':>11}"
    )
    for r in rows:
        cells = "".join(f"{r['ms_per_step'][k]:>16.3f}" for k in impls)
        print(
            f"  {r['workload']:<11} {r['algorithm']:<6}{cells} {r['gb_per_s']['pylr']:>10.1f} "
            f"{r['speedup_vs_fused']:>7.2f}x {r['functional_speedup_vs_fused']:>11.2f}x "
            f"{100 * r['fraction_of_roofline']:>10.0f}%"
        )


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
        "kernel_isa": _core.kernel_isa(),
        "schedules": _bench_schedules(quick),
        "schedulers": _bench_schedulers(quick),
        "optimizers": _bench_optimizers(quick),
        "clip_and_step": _bench_clip(quick),
        "scheduled_step": _bench_scheduled(quick),
        "loops": _bench_loops(quick),
        "fit": _bench_fit(quick),
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
    _print_optimizers(results["optimizers"])
    for r in results["clip_and_step"]:
        print(
            f"Gradient clipping + AdamW step, {r['workload']} ({r['elements'] / 1e6:.0f}M), "
            "ms/step (torch: clip_grad_norm_ + fused AdamW)"
        )
        print("  " + "".join(f"{k:>22}" for k in r["ms_per_step"]))
        print("  " + "".join(f"{v:>22.3f}" for v in r["ms_per_step"].values()))
        print(
            f"  pylr {r['speedup_fp32_state']:.2f}x torch with float32 state "
            f"({100 * r['fraction_of_roofline_fp32']:.0f}% of its roofline), "
            f"{r['speedup_bf16_state']:.2f}x with bfloat16 state "
            f"({100 * r['fraction_of_roofline_bf16']:.0f}%)"
        )
    for r in results["scheduled_step"]:
        cells = ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in r["ms_per_step"].items())
        print(f"AdamW step under a OneCycle schedule, {r['workload']}: {cells}")
        print(
            f"  pylr {r['speedup']:.2f}x torch ({100 * r['fraction_of_roofline']:.0f}% of the "
            "roofline)"
        )
    print("Whole training iteration (zero_grad, forward, backward, AdamW step), ms/iteration")
    print(
        f"  {'':<38} {'torch fused':>11} {'pylr':>8} {'speedup':>8}   step inside the loop:"
        f" {'torch fused':>11} {'pylr':>8}"
    )
    for r in results["loops"]:
        print(
            f"  {r['loop']:<38} {r['torch_fused_ms']:>11.3f} {r['pylr_ms']:>8.3f} "
            f"{r['speedup']:>7.2f}x   {'':<21}{r['torch_fused_step_ms']:>11.3f} "
            f"{r['pylr_step_ms']:>8.3f}"
        )
    print(
        "Training loop, MLP 64-128-64-10, batch 64, us/step (torch loop: fused AdamW + OneCycleLR"
        " by hand)"
    )
    for r in results["fit"]:
        print(f"  {r['run']:<20} {r['us_per_step']:>8.1f} {r['speedup_vs_torch_loop']:>7.2f}x")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {json_path}")
    return results


if __name__ == "__main__":  # pragma: no cover
    run_bench()
