"""pylr's optimizers under torch.distributed, 2 gloo processes on the CPU: DDP,
ZeroRedundancyOptimizer, FSDP2 (fully_shard: DTensor params and state) and distributed
checkpoints, each against torch's same optimizer on the same model and batches."""

from __future__ import annotations

import os
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ranks import free_port, leave_passed_worker

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo"
)

WORLD = 2


def _worker(rank: int, port: int, fn_name: str, errors: mp.Queue, tmp: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        globals()[fn_name](rank, tmp)
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()
    leave_passed_worker()


def run_distributed(fn_name: str) -> None:
    """Run ``fn_name(rank, tmp_dir)`` in WORLD processes; re-raise a worker's failure."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            ctx.Process(target=_worker, args=(r, port, fn_name, errors, tmp)) for r in range(WORLD)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        for p in procs:
            if p.is_alive():
                p.kill()
                failures.append(f"pid {p.pid} timed out")
            elif p.exitcode != 0 and not failures:
                failures.append(f"pid {p.pid} exited with {p.exitcode}")
        if failures:
            raise AssertionError("\n".join(failures))


# --------------------------------------------------------------------------------------------
# what the workers run (module-level, so that spawn can find them)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 7), torch.nn.Linear(7, 3)
    )


def _batches(rank: int, n: int = 6):
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    return [
        (torch.randn(16, 12, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(n)
    ]


def _train(model, opt, batches, clip=None, sched=None):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if clip is not None:
            if hasattr(opt, "clip_grad_norm_"):
                opt.clip_grad_norm_(clip)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _assert_same_models(a, b, rtol=1e-5, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(
            _full(p.detach()), _full(q.detach()), rtol=rtol, atol=atol, msg=name
        )


def _sharded(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _cases():
    from pylr import optim as PO
    from pylr import schedules as S

    return [
        (
            "AdamW",
            lambda p: PO.AdamW(p, lr=1e-2, weight_decay=0.1),
            lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False),
            None,
        ),
        (
            "Adam-amsgrad",
            lambda p: PO.Adam(p, lr=1e-2, amsgrad=True),
            lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, foreach=False),
            None,
        ),
        (
            "SGD-momentum",
            lambda p: PO.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, foreach=False),
            None,
        ),
        (
            "AdamW-clip",
            lambda p: PO.AdamW(p, lr=1e-2),
            lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False),
            0.05,
        ),
        (
            "AdamW-fused-OneCycle",
            lambda p: PO.AdamW(p, lr=1.0, schedule=S.OneCycle(max_lr=1e-2, total_steps=6)),
            "onecycle",
            None,
        ),
    ]


def _reference(kind, params):
    if kind == "onecycle":
        from pylr import schedules as S
        from pylr.lr_scheduler import ScheduleLR

        opt = torch.optim.AdamW(params, lr=1.0, foreach=False)
        return opt, ScheduleLR(opt, S.OneCycle(max_lr=1e-2, total_steps=6))
    return kind(params), None


def fsdp2(rank: int, tmp: str) -> None:
    batches = _batches(rank)
    for name, make_ours, make_ref, clip in _cases():
        ours = _sharded(_model())
        theirs = _sharded(_model())
        opt = make_ours(ours.parameters())
        ref, sched = _reference(make_ref, theirs.parameters())
        _train(ours, opt, batches, clip=clip)
        _train(theirs, ref, batches, clip=clip, sched=sched)
        _assert_same_models(ours, theirs)
        p = next(ours.parameters())
        assert type(p).__name__ == "DTensor", name
        for key, v in opt.state[p].items():
            if key != "step":
                assert type(v).__name__ == "DTensor" and v.placements == p.placements, (name, key)


def ddp_and_zero(rank: int, tmp: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pylr import optim as PO

    batches = _batches(rank)
    ours, theirs = DDP(_model()), DDP(_model())
    _train(ours, PO.AdamW(ours.parameters(), lr=1e-2), batches, clip=0.1)
    _train(
        theirs, torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False), batches, clip=0.1
    )
    _assert_same_models(ours, theirs)
    ours, theirs = DDP(_model()), DDP(_model())
    z1 = ZeroRedundancyOptimizer(ours.parameters(), optimizer_class=PO.AdamW, lr=1e-2)
    z2 = ZeroRedundancyOptimizer(
        theirs.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-2, foreach=False
    )
    _train(ours, z1, batches)
    _train(theirs, z2, batches)
    _assert_same_models(ours, theirs)


def dcp_round_trip(rank: int, tmp: str) -> None:
    """Save with pylr through DCP, load into torch's AdamW (and torch's into pylr's); both
    continue exactly as an uninterrupted run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from pylr import optim as PO

    batches = _batches(rank, 8)
    first, second = batches[:4], batches[4:]
    makers = {
        "pylr": lambda p: PO.AdamW(p, lr=1e-2, weight_decay=0.05),
        "torch": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, foreach=False),
    }
    for saver, loader in (("pylr", "torch"), ("torch", "pylr")):
        path = os.path.join(tmp, f"{saver}-to-{loader}")
        model = _sharded(_model())
        opt = makers[saver](model.parameters())
        _train(model, opt, first)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
        # the uninterrupted run
        _train(model, opt, second)
        # a fresh model and the other library's optimizer, from the checkpoint
        fresh = _sharded(_model(seed=1))
        other = makers[loader](fresh.parameters())
        _train(fresh, other, first[:1])  # state exists, to be overwritten
        msd2, osd2 = get_state_dict(fresh, other)
        state = {"model": msd2, "optim": osd2}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(
            fresh, other, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        _train(fresh, other, second)
        _assert_same_models(model, fresh)


@pytest.mark.parametrize("scenario", ["fsdp2", "ddp_and_zero", "dcp_round_trip"])
def test_distributed(scenario):
    run_distributed(scenario)


def test_the_runner_reports_a_worker_failure():
    with pytest.raises(AssertionError, match="rank"):
        run_distributed("_fails")


def _fails(rank: int, tmp: str) -> None:
    raise RuntimeError("deliberate")
