"""``pylr bench --device cuda``: pylr's CUDA step against torch's fused and foreach CUDA
optimizers on ``pylr bench``'s workloads, with a copy-kernel roofline measured in the same run.

Each workload and algorithm is first stepped once by pylr and by torch's fused optimizer from the
same params and grads, and the results compared, before anything is timed. Times come from CUDA
events around ``number`` back-to-back steps (the best of a few repetitions); GB/s counts the
bytes a step must move (params, grads and state, read and written: 28 bytes per float32 element
for Adam, 20 for SGD with momentum); the roofline is pylr's copy kernel moving the same bytes
(half read, half written) in one launch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from pylr.bench import ALGORITHMS, load_workloads

__all__ = ["CudaBenchUnavailable", "run_cuda_bench"]

IMPLS = ("torch foreach", "torch fused", "pylr", "copy roofline")
# the bandwidth target: fp32 AdamW on one 256M-element tensor
LARGE_ELEMENTS = 1 << 28


class CudaBenchUnavailable(RuntimeError):
    """No CUDA device usable by both torch and pylr: the message says why."""


def _check_available() -> None:
    import torch

    import pylr.cuda

    if not pylr.cuda.is_available():
        raise CudaBenchUnavailable(
            f"pylr bench --device cuda needs a CUDA GPU: {pylr.cuda.unavailable_reason()}"
        )
    if not torch.cuda.is_available():
        raise CudaBenchUnavailable(
            f"pylr bench --device cuda needs a CUDA build of torch (torch {torch.__version__} "
            "sees no CUDA device)"
        )


def _make_params(shapes: list[list[int]]) -> list[Any]:
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen, device="cuda") * 0.02)
        p.grad = torch.randn(s, generator=gen, device="cuda") * 1e-3
        params.append(p)
    return params


def _stepper(algo: str, params: list[Any], impl: str) -> Callable[[], Any]:
    import torch

    from pylr import optim as pylr_optim

    bytes_per_elem, _, kwargs = ALGORITHMS[algo]
    if impl == "torch fused":
        return getattr(torch.optim, algo)(params, **kwargs, fused=True).step
    if impl == "torch foreach":
        return getattr(torch.optim, algo)(params, **kwargs, foreach=True).step
    if impl == "pylr":
        return getattr(pylr_optim, algo)(params, **kwargs).step
    if impl == "copy roofline":
        from pylr import _cuda

        elements = sum(p.numel() for p in params)
        half = (elements * bytes_per_elem // 2 + 15) // 16 * 16
        src = torch.empty(half, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        stream = torch.cuda.current_stream().cuda_stream
        device = torch.cuda.current_device()
        return lambda: _cuda.copy(dst.data_ptr(), src.data_ptr(), half, stream, device)
    raise ValueError(f"unknown implementation {impl!r}")


def _check_one_step(algo: str, shapes: list[list[int]]) -> None:
    """pylr's first step equals torch fused's (its own formula, so within float32 rounding)."""
    import torch

    ref = _make_params(shapes)
    _stepper(algo, ref, "torch fused")()
    ours = _make_params(shapes)
    _stepper(algo, ours, "pylr")()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)


def _time_ms(step: Callable[[], Any], budget_ms: float, repeat: int = 3) -> float:
    """Milliseconds per call: CUDA events around back-to-back calls, best of ``repeat``."""
    import torch

    step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    number = max(1, min(1000, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
    best = math.inf
    for _ in range(repeat):
        start.record()
        for _ in range(number):
            step()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / number)
    return best


def _workloads(quick: bool) -> dict[str, dict[str, Any]]:
    workloads = dict(load_workloads(quick))
    if not quick:
        workloads["one_256M"] = {
            "about": "one tensor of 256M elements",
            "shapes": [[LARGE_ELEMENTS]],
        }
    return workloads


def _bench(quick: bool) -> list[dict[str, Any]]:
    import gc

    import torch

    algos = ["AdamW", "SGD"] if quick else list(ALGORITHMS)
    rows = []
    for name, w in _workloads(quick).items():
        shapes = w["shapes"]
        elements = sum(math.prod(s) for s in shapes)
        for algo in algos:
            _check_one_step(algo, shapes)
            times = {}
            for impl in IMPLS:
                params = _make_params(shapes)
                step = _stepper(algo, params, impl)
                times[impl] = _time_ms(step, budget_ms=20.0 if quick else 200.0)
                del step, params
                gc.collect()
                torch.cuda.empty_cache()
            moved = elements * ALGORITHMS[algo][0]
            rows.append(
                {
                    "workload": name,
                    "algorithm": algo,
                    "tensors": len(shapes),
                    "elements": elements,
                    "ms_per_step": times,
                    "gb_per_s": {k: moved / (t * 1e-3) / 1e9 for k, t in times.items()},
                    "speedup_vs_fused": times["torch fused"] / times["pylr"],
                    "speedup_vs_foreach": times["torch foreach"] / times["pylr"],
                    "fraction_of_roofline": times["copy roofline"] / times["pylr"],
                }
            )
    return rows


def run_cuda_bench(json_path: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Time pylr's CUDA step against torch's on the current CUDA device, print a table,
    optionally write JSON; returns the results. Raises :class:`CudaBenchUnavailable` (one line)
    without a usable GPU."""
    _check_available()
    import torch

    from pylr import _cuda

    results = {
        "machine": {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "pylr_cuda_runtime": _cuda.RUNTIME_VERSION,
        },
        "optimizers": _bench(quick),
    }
    print(f"Optimizer step on {results['machine']['gpu']}, ms/step (float32; timed in this run)")
    head = "".join(f"{k:>15}" for k in IMPLS)
    print(
        f"  {'workload':<11} {'algo':<6}{head} {'pylr GB/s':>10} {'x fused':>8} "
        f"{'x foreach':>10} {'% roofline':>11}"
    )
    for r in results["optimizers"]:
        cells = "".join(f"{r['ms_per_step'][k]:>15.4f}" for k in IMPLS)
        print(
            f"  {r['workload']:<11} {r['algorithm']:<6}{cells} {r['gb_per_s']['pylr']:>10.1f} "
            f"{r['speedup_vs_fused']:>7.2f}x {r['speedup_vs_foreach']:>9.2f}x "
            f"{100 * r['fraction_of_roofline']:>10.0f}%"
        )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results
