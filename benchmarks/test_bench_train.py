"""Training-loop speed: pylr.fit / fit_one_cycle against the loop a torch user writes by hand
(fused AdamW + OneCycleLR), and lr_find, on the demo's MLP shape (pytest-benchmark).

Run: ``pytest benchmarks/test_bench_train.py --benchmark-columns=min,median``. Each case first
checks that the loop trains (the loss falls) before it is timed.
"""

from __future__ import annotations

import pytest
import torch

import pylr
from pylr import optim as PO
from pylr.demo import digits_mlp

CE = torch.nn.functional.cross_entropy
EPOCHS = 3


@pytest.fixture(scope="module")
def batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(23 * 64, 64, generator=gen)
    y = (x[:, :10].argmax(1)).long()  # learnable labels
    return [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]


def torch_loop(batches):
    model = digits_mlp(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=EPOCHS * len(batches))
    losses = []
    for _ in range(EPOCHS):
        for x, y in batches:
            loss = CE(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return losses


def pylr_fit(batches):
    model = digits_mlp(0)
    opt = PO.AdamW(model.parameters(), lr=1e-3)
    sched = pylr.schedules.OneCycle(3e-3, EPOCHS * len(batches))
    return pylr.fit(model, batches, CE, opt, epochs=EPOCHS, schedule=[sched], progress=False)


def pylr_fit_one_cycle(batches):
    return pylr.fit_one_cycle(
        digits_mlp(0), batches, CE, epochs=EPOCHS, lr_max=3e-3, progress=False
    )


RUNS = {"torch loop": torch_loop, "pylr.fit": pylr_fit, "pylr.fit_one_cycle": pylr_fit_one_cycle}


@pytest.mark.parametrize("name", list(RUNS))
def test_training_loop(benchmark, batches, name):
    benchmark.group = f"training loop, MLP 64-128-64-10, {EPOCHS} epochs x 23 batches"
    out = RUNS[name](batches)
    losses = out if isinstance(out, list) else out.loss.tolist()
    assert sum(losses[-5:]) < sum(losses[:5])
    benchmark(RUNS[name], batches)


def test_lr_find(benchmark, batches):
    benchmark.group = "lr_find, 100 steps"
    result = pylr.lr_find(digits_mlp(0), batches, CE)
    assert result.lrs[0] <= result.suggested <= result.lrs[-1]
    benchmark(pylr.lr_find, digits_mlp(0), batches, CE)
