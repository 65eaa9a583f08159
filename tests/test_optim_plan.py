"""The plan contract: a cached step plan is proved current before every step, or rebuilt.

Each case is a user edit between steps that a stale pointer table would miss (reading freed memory,
writing past a tensor, stepping a state the optimizer no longer holds); pylr must end where
torch.optim (foreach=False) ends, or raise a clear error with nothing modified.
"""

from __future__ import annotations

import copy
import gc
import os
import socket
import threading
import weakref
from typing import ClassVar

import pytest
import torch
from torch.overrides import TorchFunctionMode

from pylr import _plan
from pylr import functional as F
from pylr import optim as PO

ADAM = (torch.optim.Adam, PO.Adam, {"lr": 0.1})
ADAMW_AMS = (torch.optim.AdamW, PO.AdamW, {"lr": 0.1, "amsgrad": True})
SGD_MOM = (torch.optim.SGD, PO.SGD, {"lr": 0.1, "momentum": 0.9})
SGD = (torch.optim.SGD, PO.SGD, {"lr": 0.1})
ALL = [ADAM, ADAMW_AMS, SGD_MOM, SGD]
IDS = ["Adam", "AdamW-amsgrad", "SGD-momentum", "SGD"]


def twins(spec, shapes=((3,), (4, 5)), seed=0):
    """The same params under torch's optimizer and pylr's."""
    torch_cls, pylr_cls, kwargs = spec
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen) for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    return a, b, torch_cls(a, foreach=False, **kwargs), pylr_cls(b, **kwargs)


def set_grads(a, b, step):
    for x, y in zip(a, b, strict=True):
        g = torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape) * (step + 1) - 2.0
        x.grad, y.grad = g.clone(), g.clone()


def assert_same(a, b, ot, op):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y.detach(), x.detach(), rtol=1e-6, atol=1e-7)
        sa, sb = ot.state.get(x, {}), op.state.get(y, {})
        assert set(sa) == set(sb)
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-6, atol=1e-7, msg=k)


def run_with_edit(spec, edit, steps=4, at=2):
    """Step both optimizers ``steps`` times, applying ``edit(params, opt)`` to each side before
    step ``at``; the two must agree after every step."""
    a, b, ot, op = twins(spec)
    for i in range(steps):
        set_grads(a, b, i)
        if i == at:
            edit(a, ot)
            edit(b, op)
        ot.step()
        op.step()
        assert_same(a, b, ot, op)
    return a, b, ot, op


# --------------------------------------------------------------------------------------------
# 1. storage swapped behind the plan's back (use-after-free before the contract)

STATE_KEYS = {id(ADAM): "exp_avg", id(ADAMW_AMS): "max_exp_avg_sq", id(SGD_MOM): "momentum_buffer"}


@pytest.mark.parametrize("spec", [ADAM, ADAMW_AMS, SGD_MOM], ids=IDS[:3])
@pytest.mark.parametrize("how", ["data", "set_", "resize_", "replace"])
def test_state_tensor_swapped_is_what_the_step_updates(spec, how):
    key = STATE_KEYS[id(spec)]

    def edit(params, opt):
        for p in params:
            t = opt.state[p][key]
            fresh = torch.full_like(t, 0.5)
            if how == "data":
                t.data = fresh
            elif how == "set_":
                t.set_(fresh)
            elif how == "resize_":  # grow (a new allocation), then back to the shape
                t.resize_(10_000).resize_(fresh.shape).copy_(fresh)
            else:
                opt.state[p][key] = fresh
        gc.collect()  # the old storage is gone: a stale pointer would now read freed memory

    run_with_edit(spec, edit)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_step_counter_and_grad_swapped(spec):
    def edit(params, opt):
        for p in params:
            p.grad.data = p.grad.data * 3.0  # same grad object, new storage
            if "step" in opt.state[p]:
                opt.state[p]["step"].data = torch.tensor(7.0)
        gc.collect()

    run_with_edit(spec, edit)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_param_storage_swapped(spec):
    def edit(params, opt):
        for p in params:
            p.data = p.data * 2.0
        gc.collect()

    run_with_edit(spec, edit)


def test_functional_state_swapped_and_nothing_kept_alive():
    params = [torch.randn(5), torch.randn(3, 3)]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.Adam(ref, lr=0.1, foreach=False)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    for i in range(4):
        grads = [torch.full_like(p, float(i + 1)) for p in params]
        for r, g in zip(ref, grads, strict=True):
            r.grad = g.clone()
        if i == 2:
            for t, r in zip(m, ref, strict=True):
                t.data = torch.full_like(t, 0.25)
                opt.state[r]["exp_avg"].data = torch.full_like(t, 0.25)
            gc.collect()
        opt.step()
        F.adam_(params, grads, m, v, None, steps, lr=0.1)
        for p, r in zip(params, ref, strict=True):
            torch.testing.assert_close(p, r.detach(), rtol=1e-6, atol=1e-7)
    # the module-level cache holds no tensor: dropping ours frees them
    refs = [weakref.ref(t) for t in (*params, *m, *v, *steps)]
    del params, m, v, steps, grads, p, t  # (the loops' last items too)
    gc.collect()
    assert all(r() is None for r in refs)


# --------------------------------------------------------------------------------------------
# 2. same data pointer, fewer elements (the vocabulary-truncation idiom)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_param_truncated_in_place(spec):
    big = 1 << 20
    a, b, ot, op = twins(spec, shapes=((big,),))
    set_grads(a, b, 0)
    ot.step()
    op.step()
    for p in (a[0], b[0]):
        p.data = p.data[:10]  # same data pointer, 10 elements
        p.grad = torch.ones(10)
    try:
        ot.step()
    except RuntimeError:
        # torch refuses (its state still has the old size): pylr must too, changing nothing
        before = b[0].detach().clone()
        with pytest.raises(ValueError, match=r"has shape \(1048576,\), the parameter \(10,\)"):
            op.step()
        assert torch.equal(b[0].detach(), before)
        return
    op.step()
    assert_same(a, b, ot, op)


# --------------------------------------------------------------------------------------------
# 3. state replaced, popped, deleted, cleared


@pytest.mark.parametrize("spec", ALL, ids=IDS)
@pytest.mark.parametrize("how", ["del", "clear", "zeros"])
def test_state_entries_edited(spec, how):
    def edit(params, opt):
        if how == "del":
            opt.state.pop(params[0], None)
        elif how == "clear":
            opt.state.clear()
        else:
            for p in params:
                for k, t in list(opt.state[p].items()):
                    if k != "step":
                        opt.state[p][k] = torch.zeros_like(t)

    run_with_edit(spec, edit)


def test_state_dict_after_clear_is_what_the_step_used():
    a, b, ot, op = twins(ADAM)
    for i in range(2):
        set_grads(a, b, i)
        ot.step()
        op.step()
    ot.state.clear()
    op.state.clear()
    assert op.state_dict()["state"] == {}
    set_grads(a, b, 2)
    ot.step()
    op.step()
    sd_t, sd_p = ot.state_dict(), op.state_dict()
    assert sd_t["state"].keys() == sd_p["state"].keys()
    for k in sd_t["state"]:
        assert float(sd_p["state"][k]["step"]) == 1.0
        torch.testing.assert_close(sd_p["state"][k]["exp_avg"], sd_t["state"][k]["exp_avg"])


def test_momentum_buffer_popped_starts_from_the_grad():
    def edit(params, opt):
        opt.state[params[1]].pop("momentum_buffer")

    run_with_edit(SGD_MOM, edit)


def test_partial_adam_state_raises_like_torch_and_changes_nothing():
    a, b, ot, op = twins(ADAM)
    set_grads(a, b, 0)
    ot.step()
    op.step()
    ot.state[a[0]].pop("exp_avg")
    op.state[b[0]].pop("exp_avg")
    set_grads(a, b, 1)
    with pytest.raises(KeyError):
        ot.step()
    before = [p.detach().clone() for p in b]
    sd = copy.deepcopy(op.state_dict())
    with pytest.raises(KeyError, match=r"param_groups\[0\]\['params'\]\[0\].*'exp_avg'"):
        op.step()
    assert all(torch.equal(p.detach(), q) for p, q in zip(b, before, strict=True))
    assert float(op.state[b[1]]["step"]) == float(sd["state"][1]["step"]) == 1.0


def test_amsgrad_switched_on_mid_run_raises_like_torch():
    a, b, ot, op = twins(ADAM)
    set_grads(a, b, 0)
    ot.step()
    op.step()
    ot.param_groups[0]["amsgrad"] = op.param_groups[0]["amsgrad"] = True
    with pytest.raises(KeyError):
        ot.step()
    with pytest.raises(KeyError, match="max_exp_avg_sq"):
        op.step()


# --------------------------------------------------------------------------------------------
# 4. hyperparameters by value


@pytest.mark.parametrize("cls", ["AdamW", "Adam", "SGD"])
def test_tensor_lr_filled_in_place(cls):
    a = [torch.nn.Parameter(torch.ones(3))]
    b = [torch.nn.Parameter(torch.ones(3))]
    ot = getattr(torch.optim, cls)(a, lr=torch.tensor(0.1), foreach=False)
    op = getattr(PO, cls)(b, lr=torch.tensor(0.1))
    for i in range(4):
        set_grads(a, b, i)
        ot.step()
        op.step()
        ot.param_groups[0]["lr"].fill_(0.05 * i)
        op.param_groups[0]["lr"].fill_(0.05 * i)
        assert_same(a, b, ot, op)


def test_torch_scheduler_on_a_tensor_lr():
    a, b, ot, op = twins((torch.optim.AdamW, PO.AdamW, {"lr": torch.tensor(0.1)}))
    st = torch.optim.lr_scheduler.StepLR(ot, step_size=2, gamma=0.1)
    sp = torch.optim.lr_scheduler.StepLR(op, step_size=2, gamma=0.1)
    for i in range(6):
        set_grads(a, b, i)
        ot.step()
        op.step()
        st.step()
        sp.step()
        assert_same(a, b, ot, op)


def test_hyperparameter_changes_between_steps():
    def edit(params, opt):
        g = opt.param_groups[0]
        g["lr"] = 0.03
        if "betas" in g:
            g["betas"] = (0.5, 0.9)
            g["weight_decay"] = 0.2
        else:
            g["momentum"] = 0.5
            g["weight_decay"] = 0.1

    for spec in (ADAM, SGD_MOM):
        run_with_edit(spec, edit, steps=5)


# --------------------------------------------------------------------------------------------
# 5. tensors that are not plain memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Wrapper(torch.Tensor):
    """A wrapper subclass (as DTensor is): its data pointer is 0, its data lives in ``elem``."""

    @staticmethod
    def __new__(cls, elem):
        t = torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype)
        t.elem = elem
        return t

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            return x.elem if isinstance(x, _Wrapper) else x

        out = func(*map(unwrap, args), **{k: unwrap(v) for k, v in (kwargs or {}).items()})
        return cls(out) if isinstance(out, torch.Tensor) else out


def _wrapper():
    p = torch.nn.Parameter(_Wrapper(torch.ones(1000)))
    return p, _Wrapper(torch.ones(1000))


def _storage_freed():
    p = torch.nn.Parameter(torch.ones(1000))
    p.untyped_storage().resize_(0)  # FSDP1's way of freeing a param between uses
    return p, torch.ones(1000)


def _fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        p = torch.nn.Parameter(torch.ones(1000))
        return p, torch.ones(1000)


def _meta():
    return torch.nn.Parameter(torch.empty(1000, device="meta")), torch.empty(1000, device="meta")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_wrapper, "tensor subclass"),
        (_fake, "tensor subclass"),
        (_storage_freed, "storage was freed"),
        (_meta, "meta"),
    ],
    ids=["wrapper-subclass", "fake", "freed-storage", "meta"],
)
@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_tensors_without_plain_memory_are_rejected(make, match, cls):
    ok = torch.nn.Parameter(torch.ones(4))
    bad, grad = make()
    opt = getattr(PO, cls)([ok, bad], lr=0.1, **({"momentum": 0.9} if cls == "SGD" else {}))
    ok.grad = torch.ones(4)
    bad.grad = grad
    with pytest.raises((TypeError, RuntimeError), match=match):
        opt.step()
    assert torch.equal(ok.detach(), torch.ones(4))
    assert len(opt.state) == 0


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_dtensor_params_step_their_local_shards_like_torch():
    """FSDP2's fully_shard makes params DTensors (they segfaulted): pylr steps their local
    shards in its C++ call and keeps DTensor state with the params' placements, as torch does.
    (The multi-process runs are in test_distributed.py; here one process, one shard.)"""
    import torch.distributed as dist
    from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = DeviceMesh("cpu", [0])
        for torch_cls, pylr_cls in ((torch.optim.AdamW, PO.AdamW), (torch.optim.SGD, PO.SGD)):
            kw = {"lr": 0.1} if pylr_cls is PO.AdamW else {"lr": 0.1, "momentum": 0.9}
            ours = [
                torch.nn.Parameter(distribute_tensor(torch.arange(8.0) - i, mesh, [Shard(0)]))
                for i in range(2)
            ]
            theirs = [
                torch.nn.Parameter(distribute_tensor(p.full_tensor().detach(), mesh, [Shard(0)]))
                for p in ours
            ]
            opt, ref = pylr_cls(ours, **kw), torch_cls(theirs, foreach=False, **kw)
            for step in range(3):
                for a, b in zip(ours, theirs, strict=True):
                    g = distribute_tensor(torch.full((8,), step + 1.0), mesh, [Shard(0)])
                    a.grad, b.grad = g, g.clone()
                opt.step()
                ref.step()
                for a, b in zip(ours, theirs, strict=True):
                    torch.testing.assert_close(a.full_tensor(), b.full_tensor())
            for a, b in zip(ours, theirs, strict=True):
                for key, v in ref.state[b].items():
                    w = opt.state[a][key]
                    assert type(w) is type(v) and getattr(w, "placements", None) == getattr(
                        v, "placements", None
                    )
            # a plain grad for a DTensor param is refused, nothing changed
            before = ours[0].full_tensor().clone()
            ours[0].grad = torch.ones(8)
            with pytest.raises(TypeError, match="DTensor"):
                opt.step()
            assert torch.equal(ours[0].full_tensor(), before)
    finally:
        dist.destroy_process_group()


def test_check_tensor_names_storage_problems():
    t = torch.ones(10)
    t.untyped_storage().resize_(0)
    with pytest.raises(TypeError, match=r"x has storage of 0 bytes for 10 elements"):
        _plan.check_tensor("x", t)


# --------------------------------------------------------------------------------------------
# 6. memory: the plan keeps no grad alive


def test_zero_grad_set_to_none_frees_the_grads():
    model = torch.nn.Linear(256, 256)
    opt = PO.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    refs = [weakref.ref(p.grad) for p in model.parameters()]
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert all(r() is None for r in refs)
    # and the next step with new grads is right
    model(torch.randn(4, 256)).sum().backward()
    opt.step()


def test_dropped_state_is_freed():
    p = torch.nn.Parameter(torch.ones(100))
    opt = PO.Adam([p], lr=0.1)
    p.grad = torch.ones(100)
    opt.step()
    refs = [weakref.ref(t) for t in opt.state[p].values()]
    opt.state.clear()
    gc.collect()
    assert all(r() is None for r in refs)


# --------------------------------------------------------------------------------------------
# 10. duplicates, zero-size params, groups changed after construction


def test_duplicate_params_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(3))
    for cls in (PO.SGD, PO.Adam):
        with pytest.raises(ValueError, match="same tensor twice"):
            cls([p, q, p], lr=0.1)
        opt = cls([p], lr=0.1)
        with pytest.raises(ValueError, match="same tensor twice"):
            opt.add_param_group({"params": [q, q]})
        # appended behind the optimizer's back: refused at the step, nothing modified
        opt.param_groups[0]["params"].append(p)
        p.grad = torch.ones(3)
        with pytest.raises(ValueError, match="the same tensor"):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(3)) and len(opt.state) == 0


def test_params_sharing_memory_are_refused():
    base = torch.zeros(10)
    p = torch.nn.Parameter(base[:6])
    q = torch.nn.Parameter(base[4:])
    p.grad, q.grad = torch.ones(6), torch.ones(6)
    with pytest.raises(ValueError, match="overlapping memory"):
        PO.SGD([p, q], lr=0.1).step()
    assert torch.equal(base, torch.zeros(10))


def test_one_grad_shared_by_two_params_is_fine():
    a, b, ot, op = twins(SGD_MOM, shapes=((4,), (4,)))
    for i in range(3):
        g = torch.full((4,), float(i + 1))
        a[0].grad = a[1].grad = g.clone()
        g2 = g.clone()
        b[0].grad = b[1].grad = g2
        ot.step()
        op.step()
        assert_same(a, b, ot, op)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_zero_size_params_step_like_torch(spec):
    a, b, ot, op = twins(spec, shapes=((5, 0), (3,), (0,)))
    for i in range(3):
        set_grads(a, b, i)
        ot.step()
        op.step()
        assert_same(a, b, ot, op)


@pytest.mark.parametrize("spec", ALL, ids=IDS)
def test_group_added_and_grads_appearing_later(spec):
    a, b, ot, op = twins(spec)
    extra_a = torch.nn.Parameter(torch.ones(6))
    extra_b = torch.nn.Parameter(torch.ones(6))
    for i in range(5):
        set_grads(a, b, i)
        if i == 1:
            ot.add_param_group({"params": [extra_a], "lr": 0.3})
            op.add_param_group({"params": [extra_b], "lr": 0.3})
        if i >= 3:  # the new param gets a grad only from step 3
            extra_a.grad = torch.full((6,), float(i))
            extra_b.grad = torch.full((6,), float(i))
        if i == 4:  # and a param loses its grad
            a[0].grad = b[0].grad = None
        ot.step()
        op.step()
        assert_same([*a, extra_a], [*b, extra_b], ot, op)


def test_fused_schedule_step_must_be_finite():
    from pylr import schedules as S

    p = torch.nn.Parameter(torch.ones(3))
    opt = PO.SGD([p], lr=0.1, schedule=S.CosineWarmRestarts(T_0=10))
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["schedule_step"] = float("inf")
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['schedule_step'\]"):
        opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))


class _EditsStateInside(TorchFunctionMode):
    """A torch function mode that, the first time a tensor method runs on a state tensor,
    drops that param's state (and allocates, so freed memory is reused): Python code that a
    torch method runs between the proof of a pointer and the write through it."""

    def __init__(self, opt, victim):
        super().__init__()
        self.opt, self.victim, self.calls = opt, victim, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append(func)
        if args and any(args[0] is t for t in self.opt.state.get(self.victim, {}).values()):
            del self.opt.state[self.victim]
            self.junk = [torch.empty(1000) for _ in range(50)]
        return func(*args, **(kwargs or {}))


class _PythonTorchFunction(torch.Tensor):
    """A subclass with a Python __torch_function__ (as_subclass keeps plain memory)."""

    seen: ClassVar[list] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("functional", [False, True], ids=["optimizer", "functional"])
@pytest.mark.parametrize("spec", [ADAM, SGD_MOM], ids=["Adam", "SGD-momentum"])
def test_no_python_code_runs_inside_the_step(spec, functional):
    """A torch function mode around step() sees nothing of the step (as of a fused torch kernel):
    code it would run inside the proof's torch calls could free what was just proved. The step
    equals torch's, and the closure still runs under the mode."""
    a, b, ot, op = twins(spec, shapes=((1000,), (1000,), (1000,)))
    for i in range(3):
        set_grads(a, b, i)
        ot.step()
        mode = _EditsStateInside(op, b[1])
        with mode:
            if functional:
                bufs = [op.state[p].get("momentum_buffer") for p in b]
                if spec is ADAM:
                    steps = [op.state[p].setdefault("step", torch.tensor(0.0)) for p in b]
                    ms = [op.state[p].setdefault("exp_avg", torch.zeros(1000)) for p in b]
                    vs = [op.state[p].setdefault("exp_avg_sq", torch.zeros(1000)) for p in b]
                    F.adam_(
                        b,
                        [p.grad for p in b],
                        ms,
                        vs,
                        None,
                        steps,
                        lr=0.1,
                        beta1=0.9,
                        beta2=0.999,
                        eps=1e-8,
                        weight_decay=0.0,
                    )
                else:
                    F.sgd_(b, [p.grad for p in b], bufs, lr=0.1, momentum=0.9)
                    for p, buf in zip(b, bufs, strict=True):
                        op.state[p]["momentum_buffer"] = buf
            else:
                op.step(closure=lambda: torch.zeros(()).sum())
        assert torch.Tensor.data_ptr not in mode.calls
        if not functional:
            assert torch.Tensor.sum in mode.calls  # the closure ran under the mode
        assert op.state.get(b[1])  # nothing dropped the state
        assert_same(a, b, ot, op)


def test_a_python_torch_function_subclass_param_is_not_called_inside_the_step():
    a, b, ot, op = twins(ADAM)
    b2 = [p.detach().as_subclass(_PythonTorchFunction).requires_grad_() for p in b]
    op = PO.Adam(b2, lr=0.1)
    for i in range(3):
        set_grads(a, b2, i)
        ot.step()
        _PythonTorchFunction.seen.clear()
        op.step()
        assert torch.Tensor.data_ptr not in _PythonTorchFunction.seen
        for x, y in zip(a, b2, strict=True):
            torch.testing.assert_close(torch.Tensor(y).detach(), x.detach(), rtol=1e-6, atol=1e-7)


class _SwapsStateWhenCollected:
    """Cyclic garbage whose finaliser replaces a param's state tensors by zeros (the old ones are
    freed): it logs whether it ran inside a sealed step (torch function overrides off there)."""

    def __init__(self, opt: torch.optim.Optimizer, p: torch.Tensor, log: list[bool]) -> None:
        self.cycle = self
        self.opt, self.p, self.log = opt, p, log

    def __del__(self) -> None:
        self.log.append(torch._C._is_torch_function_enabled())
        zero_state(self.opt, self.p)


def zero_state(opt: torch.optim.Optimizer, p: torch.Tensor) -> None:
    state = opt.state[p]
    for k, v in list(state.items()):
        if k != "step" and isinstance(v, torch.Tensor):
            state[k] = torch.zeros_like(v)


@pytest.mark.parametrize("spec", [ADAM, SGD_MOM], ids=["Adam", "SGD-momentum"])
def test_no_finaliser_runs_between_the_proof_and_the_update(spec, monkeypatch):
    """The garbage collector is paused inside the step: a collection that pylr's own allocations
    would trigger between the proof and the update (here forced there, where the clip
    coefficient is read) would run a finaliser that frees the state just proved. It runs after
    the step instead, and the step equals torch's with the same edit made after torch's step."""
    a, b, ot, op = twins(spec, shapes=((1000,), (1000,), (1000,)))
    set_grads(a, b, 0)
    ot.step()
    op.step()
    pending = type(op)._pending_clip

    def collect_here(self, plan, *, clipping=False):  # allocations that trigger a collection
        gc.set_threshold(1)
        _ = [[] for _ in range(50)]
        return pending(self, plan, clipping=clipping)

    monkeypatch.setattr(type(op), "_pending_clip", collect_here)
    thresholds = gc.get_threshold()
    try:
        for i in range(1, 4):
            set_grads(a, b, i)
            log: list[bool] = []
            gc.collect()
            gc.set_threshold(10**6)
            _SwapsStateWhenCollected(op, b[1], log)  # garbage, found by the next collection
            ot.step()
            op.step()
            gc.set_threshold(*thresholds)
            gc.collect()
            assert log == [True]  # the finaliser ran, outside the sealed step
            zero_state(ot, a[1])
            assert_same(a, b, ot, op)
    finally:
        gc.set_threshold(*thresholds)


def test_the_seal_restores_the_collector_as_it_found_it():
    assert gc.isenabled()
    with _plan.sealed_step():
        assert not gc.isenabled() and not torch._C._is_torch_function_enabled()
        with _plan.sealed_step():  # nested: the outer one turns it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled() and torch._C._is_torch_function_enabled()
    with pytest.raises(KeyError), _plan.sealed_step():
        raise KeyError("inside")
    assert gc.isenabled() and torch._C._is_torch_function_enabled()
    gc.disable()  # the user's choice stays
    try:
        with _plan.sealed_step():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_stays_paused_while_any_thread_is_in_a_sealed_step():
    """Steps sealed in two threads at once: the first to finish leaves the collector off for the
    other, and the last turns it back on."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with _plan.sealed_step():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with _plan.sealed_step():
            b_in.set()
            a_out.wait(10)
            seen["inside the second after the first left"] = gc.isenabled()
        seen["after both"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"inside the second after the first left": False, "after both": True}
