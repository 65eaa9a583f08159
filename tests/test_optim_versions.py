"""A step tells autograd it changed the params (their version counters), as torch's in-place
updates do, and only when it changed them.

pylr bumps the versions on the calling thread while the pool's other threads update (see
``_FusedOptimizer._run``): these tests hold it to "once the step returns, a graph that saved a
param before the step refuses to backward; a skipped or refused step leaves it usable", on one
thread and on two, through the optimizers and the functional API.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import pytest
import torch

import pylr
from pylr import _core
from pylr import functional as F
from pylr import optim as PO
from pylr import schedules as S

# a large step (>= WAKE_MIN_ELEMENTS in all: the versions are bumped while the pool's other threads
# update) and a small one (bumped after the update)
N = 1 << 19
SIZES = {"large": (N, 7, N + 3), "small": (7, 33, 5)}

MODIFIED = "modified by an inplace operation"

MAKERS = {
    "SGD": lambda ps: PO.SGD(ps, lr=0.1),
    "SGD momentum": lambda ps: PO.SGD(ps, lr=0.1, momentum=0.9),
    "Adam": lambda ps: PO.Adam(ps, lr=0.1),
    "AdamW": lambda ps: PO.AdamW(ps, lr=0.1),
}


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request: pytest.FixtureRequest):
    assert sum(SIZES["large"]) >= _core.WAKE_MIN_ELEMENTS > sum(SIZES["small"])
    before = pylr.get_num_threads()
    pylr.set_num_threads(request.param)
    yield request.param
    pylr.set_num_threads(before)


@pytest.fixture(params=list(SIZES))
def sizes(request: pytest.FixtureRequest) -> tuple[int, ...]:
    return SIZES[request.param]


def _params(sizes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(n, generator=g, requires_grad=True) for n in sizes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


def _saved_graph(ps: list[torch.Tensor]) -> torch.Tensor:
    """A loss whose backward needs every param's value as it was (x * x saves x)."""
    return sum((p * p).sum() for p in ps)  # type: ignore[return-value]


@pytest.mark.parametrize("name", MAKERS)
def test_a_step_taken_bumps_every_param_once(name: str, threads: int, sizes: tuple[int, ...]):
    ps = _params(sizes)
    opt = MAKERS[name](ps)
    for step in range(3):  # the first step (plan built, state created) and the cached ones
        loss = _saved_graph(ps)
        before = [p._version for p in ps]
        opt.step()
        assert [p._version for p in ps] == [v + 1 for v in before], step
        with pytest.raises(RuntimeError, match=MODIFIED):
            loss.backward()


@pytest.mark.parametrize("name", MAKERS)
def test_a_skipped_step_bumps_nothing(name: str, threads: int, sizes: tuple[int, ...]):
    ps = _params(sizes)
    opt = MAKERS[name](ps)
    opt.step()
    opt.grad_scale = torch.ones(())
    opt.found_inf = torch.ones(())
    loss = _saved_graph(ps)
    before = [(p._version, p.detach().clone()) for p in ps]
    opt.step()  # found_inf: skipped
    for p, (v, value) in zip(ps, before, strict=True):
        assert p._version == v and torch.equal(p.detach(), value)
    loss.backward()  # the saved values are current


def test_a_refused_step_bumps_nothing(threads: int, sizes: tuple[int, ...]):
    ps = _params(sizes)
    opt = PO.SGD(ps, lr=1.0, schedule=S.Constant(-0.5))
    loss = _saved_graph(ps)
    before = [p._version for p in ps]
    with pytest.raises(ValueError, match="nothing was changed"):
        opt.step()
    assert [p._version for p in ps] == before
    loss.backward()


def test_functional_steps_bump_the_tensors_they_write(threads: int, sizes: tuple[int, ...]):
    ps = _params(sizes)
    grads = [p.grad for p in ps]
    exp_avgs = [torch.zeros_like(p) for p in ps]
    exp_avg_sqs = [torch.zeros_like(p) for p in ps]
    steps = [torch.zeros(()) for _ in ps]
    with torch.no_grad():
        written = [*ps, *exp_avgs, *exp_avg_sqs, *steps]
        before = [t._version for t in written]
        assert F.adamw_(ps, grads, exp_avgs, exp_avg_sqs, None, steps, lr=0.1)
        assert [t._version for t in written] == [v + 1 for v in before]

        bufs: list[torch.Tensor | None] = [None] * len(ps)
        before = [p._version for p in ps]
        assert F.sgd_(ps, grads, bufs, lr=0.1, momentum=0.9)
        assert [p._version for p in ps] == [v + 1 for v in before]
        written = [*ps, *bufs]
        before = [t._version for t in written]  # type: ignore[union-attr]
        assert F.sgd_(ps, grads, bufs, lr=0.1, momentum=0.9)  # the cached table
        assert [t._version for t in written] == [v + 1 for v in before]  # type: ignore[union-attr]

        before = [p._version for p in ps]
        assert not F.sgd_(ps, grads, bufs, lr=0.1, found_inf=torch.ones(()))
        assert [p._version for p in ps] == before


def _stepped_sgd(sizes: tuple[int, ...]) -> tuple[PO.SGD, list[torch.Tensor]]:
    ps = _params(sizes)
    opt = PO.SGD(ps, lr=0.5)
    opt.step()
    return opt, ps


def test_while_updating_runs_once_for_a_step_taken_and_never_for_one_skipped(
    threads: int, sizes: tuple[int, ...]
):
    opt, _ = _stepped_sgd(sizes)
    plan = opt._plan
    calls: list[int] = []
    status = _core.sgd_step(plan.table.table, plan.groups, while_updating=lambda: calls.append(1))
    assert status == _core.STEP_TAKEN and calls == [1]
    found = torch.ones(())
    status = _core.sgd_step(
        plan.table.table, plan.groups, 0, found.data_ptr(), while_updating=lambda: calls.append(2)
    )
    assert status == _core.STEP_SKIPPED and calls == [1]


def test_an_error_in_while_updating_is_raised_once_the_update_is_done(
    threads: int, sizes: tuple[int, ...]
):
    opt, ps = _stepped_sgd(sizes)
    plan = opt._plan
    before = [p.detach().clone() for p in ps]

    def fails() -> None:
        raise KeyError("raised while updating")

    with pytest.raises(KeyError, match="raised while updating"):
        _core.sgd_step(plan.table.table, plan.groups, while_updating=fails)
    lr = opt.param_groups[0]["lr"]
    for p, b in zip(ps, before, strict=True):  # the whole update ran: p -= lr * grad
        torch.testing.assert_close(p.detach(), b - lr * p.grad, rtol=0, atol=1e-6)
    opt.step()  # and the next step runs as usual


def test_the_bump_inside_the_update_runs_no_bytecode(monkeypatch):
    """What runs while the pool writes is torch's C function itself: no Python frame, so no
    Python signal handler (which could free a state tensor being written) runs there."""
    ps = _params(SIZES["large"])
    opt = PO.AdamW(ps, lr=0.1)
    seen = []
    step = type(opt)._core_step

    def spy(*args, while_updating=None):
        seen.append(while_updating)
        return step(*args, while_updating=while_updating)

    monkeypatch.setattr(type(opt), "_core_step", staticmethod(spy))
    opt.step()
    opt.step()
    assert len(seen) == 2
    for bump in seen:
        assert isinstance(bump, functools.partial)
        assert bump.func is torch._C._increment_version and not bump.keywords
        assert bump.args[0] == ps


def test_set_num_threads_from_another_thread_waits_for_a_large_step():
    """A step of >= WAKE_MIN_ELEMENTS takes the GIL back inside the update (for the version
    bump) while it holds the pool; set_num_threads, which waits for the pool, lets the GIL go
    first (before, the two threads waited for each other forever)."""
    script = textwrap.dedent(
        f"""
        import threading
        import torch, pylr, pylr.optim
        pylr.set_num_threads(2)
        p = torch.nn.Parameter(torch.zeros({2 * _core.WAKE_MIN_ELEMENTS}))
        p.grad = torch.ones_like(p)
        opt = pylr.optim.Adam([p], lr=1e-3)
        stop = False
        def resize():
            while not stop:
                pylr.set_num_threads(2)
        t = threading.Thread(target=resize)
        t.start()
        for _ in range(100):
            opt.step()
        stop = True
        t.join()
        print("done")
        """
    )
    out = subprocess.run(  # from "/", where the source tree's pylr (without _core) is not found
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd="/"
    )
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
