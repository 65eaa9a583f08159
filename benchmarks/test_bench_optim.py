"""Optimizer step speed, pylr against torch in the same run (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_optim.py --benchmark-columns=min,median``; each group holds
torch (foreach, fused) and pylr (optimizer, functional) on the same workload. Every case first
checks one step against torch's for-loop reference.
"""

from __future__ import annotations

import pytest
import torch

from pylr.bench import _make_params, _steppers, load_workloads

WORKLOADS = {
    k: v for k, v in load_workloads().items() if k in ("tiny_mlp", "many_small", "one_large")
}
IMPLS = ["torch foreach", "torch fused", "pylr", "pylr functional"]


def _one_step(algo, shapes, impl):
    params = _make_params(shapes)
    _steppers(algo, params, impl)()
    return params


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("algo", ["AdamW", "SGD"])
def test_step(benchmark, algo, workload, impl):
    shapes = WORKLOADS[workload]["shapes"]
    benchmark.group = f"{algo} step, {workload}"
    ref = _one_step(algo, shapes, "torch for-loop")
    got = _one_step(algo, shapes, impl)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-7)
    del ref, got
    params = _make_params(shapes)
    step = _steppers(algo, params, impl)
    step()
    benchmark(step)
