"""pylr's CUDA optimizer step against torch's fused and foreach CUDA optimizers, on a GPU.

Two ways to run it:

- ``python benchmarks/gpu_bench.py [--quick] [--json PATH]`` prints the table of
  ``pylr bench --device cuda`` (ms/step, GB/s, ratios to torch fused and foreach, fraction of
  a copy kernel's bandwidth measured in the same run) on every ``pylr bench`` workload plus one
  256M-element tensor.
- ``pytest benchmarks/gpu_bench.py`` times the same steps with pytest-benchmark (each group:
  torch foreach, torch fused, pylr on one workload), each case first checking pylr's step
  against torch fused's.

Without a CUDA GPU usable by both torch and pylr the script exits with one line (status 2) and
the pytest cases skip.
"""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

import pylr.cuda
from pylr.bench import load_workloads
from pylr.bench_cuda import CudaBenchUnavailable, _check_one_step, _make_params, _stepper

GPU = pylr.cuda.is_available() and torch.cuda.is_available()
WORKLOADS = {k: v["shapes"] for k, v in load_workloads().items()}


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU usable by torch and pylr._cuda")
@pytest.mark.parametrize("impl", ["torch foreach", "torch fused", "pylr"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("algo", ["AdamW", "SGD"])
def test_gpu_step(benchmark, algo, workload, impl):
    shapes = WORKLOADS[workload]
    benchmark.group = f"CUDA {algo} step, {workload}"
    _check_one_step(algo, shapes)
    step = _stepper(algo, _make_params(shapes), impl)
    step()

    def synced_step():
        step()
        torch.cuda.synchronize()

    benchmark(synced_step)


def main(argv: list[str] | None = None) -> int:
    from pylr.bench_cuda import run_cuda_bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, fewer steps")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        run_cuda_bench(json_path=args.json, quick=args.quick)
    except CudaBenchUnavailable as e:
        print(f"gpu_bench: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
