"""Edges of the fused optimizers found by a hostile review, each against torch: None entries in
the functional lists, fused SGD momentum schedules through 0, half-precision state in state
dicts, the lifetime of a clip_grad_norm_ coefficient, checkpoints of torch's optimizers, grads
assigned onto memory the step writes, tensor betas, AMSGrad with NaN, refused steps leaving no
state, the thread-count bound, old checkpoints and string hyperparameters."""

from __future__ import annotations

import copy

import pytest
import torch

import pylr
from pylr import functional as F
from pylr import optim as PO
from pylr import schedules


def _pair(n=3, size=7, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(size + i, generator=gen).to(dtype)) for i in range(n)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    return ours, theirs


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _set_grads(ours, theirs, seed):
    for a, b, g in zip(ours, theirs, _grads(ours, seed), strict=True):
        a.grad = g.clone()
        b.grad = g.clone()


def _assert_same(ours, theirs, atol=0.0):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0 if atol == 0 else 1e-6, atol=atol)


# -- pylr.functional: None where a tensor is needed ---------------------------------------------


@pytest.mark.parametrize("where", ["grads", "exp_avgs", "exp_avg_sqs", "state_steps", "max"])
def test_functional_adam_refuses_none_entries(where):
    cols = {
        "params": [torch.zeros(5)],
        "grads": [torch.ones(5)],
        "exp_avgs": [torch.zeros(5)],
        "exp_avg_sqs": [torch.zeros(5)],
        "max": [torch.zeros(5)],
        "state_steps": [torch.tensor(0.0)],
    }
    cols[where] = [None]
    name = "max_exp_avg_sqs" if where == "max" else where
    before = copy.deepcopy(cols)
    with pytest.raises(TypeError, match=rf"{name}\[0\] is None; a tensor is needed"):
        F.adam_(
            cols["params"],
            cols["grads"],
            cols["exp_avgs"],
            cols["exp_avg_sqs"],
            cols["max"],
            cols["state_steps"],
            amsgrad=True,
        )
    for key, tensors in cols.items():
        for t, t0 in zip(tensors, before[key], strict=True):
            assert t is None or torch.equal(t, t0)


def test_functional_sgd_refuses_a_none_grad_and_restores_buffers_on_a_skipped_step():
    with pytest.raises(TypeError, match=r"grads\[0\] is None"):
        F.sgd_([torch.zeros(5)], [None], [None], lr=0.1, momentum=0.9)
    p, bufs = torch.zeros(5), [None]
    assert not F.sgd_([p], [torch.ones(5)], bufs, lr=0.1, momentum=0.9, found_inf=torch.ones(()))
    assert bufs == [None] and torch.equal(p, torch.zeros(5))
    # the next call starts the buffer from the grad, as torch's first step does
    assert F.sgd_([p], [torch.ones(5)], bufs, lr=0.1, momentum=0.9)
    assert torch.equal(bufs[0], torch.ones(5)) and torch.allclose(p, torch.full((5,), -0.1))


# -- SGD under a fused schedule whose momentum passes through 0 ---------------------------------


@pytest.mark.parametrize("start_momentum", [0.0, 0.9])
def test_sgd_cyclic_momentum_through_zero_equals_torch(start_momentum):
    ours, theirs = _pair()
    sched = schedules.Cyclic(0.01, 0.1, step_size_up=2, base_momentum=0.0, max_momentum=0.9)
    opt = PO.SGD(ours, lr=0.1, momentum=start_momentum, schedule=[sched])
    ref = torch.optim.SGD(theirs, lr=0.1, momentum=start_momentum, foreach=False)
    ref_sched = torch.optim.lr_scheduler.CyclicLR(
        ref, 0.01, 0.1, step_size_up=2, base_momentum=0.0, max_momentum=0.9
    )
    for i in range(9):
        _set_grads(ours, theirs, i)
        opt.step()
        ref.step()
        # the group shows the momentum the step used
        assert opt.param_groups[0]["momentum"] == pytest.approx(ref.param_groups[0]["momentum"])
        ref_sched.step()
        _assert_same(ours, theirs, atol=1e-7)
        for a, b in zip(ours, theirs, strict=True):
            assert ("momentum_buffer" in opt.state[a]) == ("momentum_buffer" in ref.state[b])


def test_sgd_built_without_momentum_under_one_cycle_equals_torch_one_cycle_lr():
    ours, theirs = _pair()
    opt = PO.SGD(ours, lr=0.1, schedule=[schedules.OneCycle(max_lr=0.1, total_steps=20)])
    ref = torch.optim.SGD(theirs, lr=0.1, foreach=False)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.1, total_steps=20)
    for i in range(6):
        _set_grads(ours, theirs, i)
        opt.step()
        ref.step()
        ref_sched.step()
        _assert_same(ours, theirs, atol=1e-7)
    # a momentum set by hand is the schedule's to overwrite
    opt.param_groups[0]["momentum"] = 0
    ref.param_groups[0]["momentum"] = 0
    _set_grads(ours, theirs, 99)
    opt.step()
    ref_sched.step()  # torch's scheduler writes its momentum before the step, as pylr's schedule
    ref.step()
    assert opt.param_groups[0]["momentum"] > 0


# -- state dicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "state_dtype"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
    ],
)
def test_half_params_load_their_state_in_its_own_dtype(dtype, state_dtype):
    p = torch.nn.Parameter(torch.randn(1000).to(dtype))
    opt = PO.Adam([p], lr=1e-3, state_dtype=state_dtype)
    for i in range(3):
        p.grad = (torch.randn(1000, generator=torch.Generator().manual_seed(i)) * 1e-3).to(dtype)
        opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    again = PO.Adam([q], lr=1e-3, state_dtype=state_dtype)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint file would
    for key in ("exp_avg", "exp_avg_sq"):
        assert again.state[q][key].dtype == state_dtype
        assert torch.equal(again.state[q][key], opt.state[p][key]), key
    g = torch.full((1000,), 1e-3).to(dtype)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    again.step()
    assert torch.equal(p, q)


def test_a_torch_checkpoint_keeps_pylr_settings():
    ours, theirs = _pair()
    ref = torch.optim.AdamW(theirs, lr=1e-3, foreach=False)
    _set_grads(ours, theirs, 0)
    ref.step()
    schedule = schedules.Cosine(T_max=100)
    opt = PO.AdamW(ours, lr=1e-3, state_dtype=torch.bfloat16, rounding_seed=5, schedule=schedule)
    opt.load_state_dict(ref.state_dict())
    group = opt.param_groups[0]
    assert group["state_dtype"] == torch.bfloat16 and group["rounding_seed"] == 5
    assert group["schedule"] is not None and group["schedule_step"] == 0
    assert all(opt.state[p]["exp_avg"].dtype == torch.bfloat16 for p in ours)


def test_a_step_saved_as_a_number_loads_as_torch_reads_it():
    ours, theirs = _pair()
    ref = torch.optim.Adam(theirs, lr=1e-3, foreach=False)
    _set_grads(ours, theirs, 0)
    ref.step()
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            a.copy_(b)
    sd = copy.deepcopy(ref.state_dict())
    for st in sd["state"].values():
        st["step"] = 1  # torch < 1.12 saved an int
    opt = PO.Adam(ours, lr=1e-3)
    opt.load_state_dict(copy.deepcopy(sd))
    ref.load_state_dict(copy.deepcopy(sd))
    for p in ours:
        assert opt.state[p]["step"].dtype == torch.float32 and opt.state[p]["step"].item() == 1
    _set_grads(ours, theirs, 1)
    opt.step()
    ref.step()
    _assert_same(ours, theirs, atol=1e-7)


# -- the lifetime of a clip_grad_norm_ coefficient -----------------------------------------------


def test_clip_coefficient_goes_with_grads_replaced_by_model_zero_grad():
    ours, theirs = _pair()
    model = torch.nn.Module()
    model.ps = torch.nn.ParameterList(ours)
    opt = PO.SGD(ours, lr=0.1)
    ref = torch.optim.SGD(theirs, lr=0.1, foreach=False)
    _set_grads(ours, theirs, 0)
    opt.clip_grad_norm_(0.01)
    torch.nn.utils.clip_grad_norm_(theirs, 0.01)
    model.zero_grad()  # skips the step: the clipped grads are gone
    for p in theirs:
        p.grad = None
    _set_grads(ours, theirs, 1)
    opt.step()
    ref.step()
    _assert_same(ours, theirs, atol=1e-7)


def test_clip_then_grads_changed_in_place_refuses_the_step():
    ours, theirs = _pair()
    opt = PO.AdamW(ours, lr=0.1)
    _set_grads(ours, theirs, 0)
    opt.clip_grad_norm_(0.01)
    ours[0].grad.mul_(2)
    before = [p.detach().clone() for p in ours]
    with pytest.raises(RuntimeError, match="grads changed after clip_grad_norm_"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ours, before, strict=True))
    assert not opt.state  # no state created by the refused step
    opt.zero_grad(set_to_none=False)  # drops the clip; the grads accumulate afresh
    ref = torch.optim.AdamW(theirs, lr=0.1, foreach=False)
    for p in theirs:
        p.grad.zero_()
    _set_grads_acc = _grads(ours, 5)
    for a, b, g in zip(ours, theirs, _set_grads_acc, strict=True):
        a.grad.add_(g)
        b.grad.add_(g)
    opt.step()
    ref.step()
    _assert_same(ours, theirs, atol=1e-6)


def test_a_clip_that_changes_nothing_needs_no_mark():
    ours, _ = _pair()
    opt = PO.SGD(ours, lr=0.1)
    for p, g in zip(ours, _grads(ours, 0), strict=True):
        p.grad = g
    opt.clip_grad_norm_(1e9)  # coefficient 1
    assert opt._clip is None
    ours[0].grad.mul_(2)
    opt.step()  # torch's clip did nothing either: the edited grads are stepped


def test_clip_alone_creates_no_state_and_a_refused_step_leaves_none():
    ours, _ = _pair()
    opt = PO.Adam(ours, lr=1e-3)
    for p, g in zip(ours, _grads(ours, 0), strict=True):
        p.grad = g
    opt.clip_grad_norm_(0.5)
    assert not opt.state
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert not opt.state
    opt.param_groups[0]["lr"] = 1e-3
    opt.param_groups[0]["schedule"] = "cosine"
    with pytest.raises(TypeError, match="schedule"):
        opt.step()
    assert not opt.state


# -- grads assigned onto memory the step writes, on a cached plan ---------------------------------


def test_a_grad_aliasing_another_param_is_refused_on_the_cached_path():
    a = torch.nn.Parameter(torch.randn(8))
    b = torch.nn.Parameter(torch.randn(8))
    opt = PO.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = torch.randn(8), torch.randn(8)
    opt.step()
    a.grad = b.detach()
    before = (a.detach().clone(), b.detach().clone())
    with pytest.raises(ValueError, match=r"same tensor|overlapping memory"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    a.grad = opt.state[b]["momentum_buffer"][:4].view(4).repeat(2)  # a copy: fine
    opt.step()


def test_a_negative_view_grad_is_refused_on_the_cached_path():
    a = torch.nn.Parameter(torch.randn(8))
    opt = PO.SGD([a], lr=0.1)
    a.grad = torch.randn(8)
    opt.step()
    a.grad = torch.randn(8)._neg_view()
    with pytest.raises(TypeError, match="negative bit"):
        opt.step()


# -- hyperparameters --------------------------------------------------------------------------


def test_tensor_betas_are_read_by_value_at_each_step_as_torch():
    ours, theirs = _pair()
    b_ours = (torch.tensor(0.9), torch.tensor(0.999))
    b_theirs = (torch.tensor(0.9), torch.tensor(0.999))
    opt = PO.Adam(ours, lr=1e-2, betas=b_ours)
    ref = torch.optim.Adam(theirs, lr=1e-2, betas=b_theirs, foreach=False)
    for i in range(5):
        _set_grads(ours, theirs, i)
        opt.step()
        ref.step()
        if i == 1:
            b_ours[0].fill_(0.5)
            b_theirs[0].fill_(0.5)
        _assert_same(ours, theirs, atol=1e-7)
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        PO.Adam(ours, betas=(torch.tensor(0.9), 0.999))


def _edit_group(group, i):
    """Hyperparameter edits a user makes between steps, some without a new object."""
    if i == 0:
        group["betas"] = [0.9, 0.999]  # a list: torch reads it at each step
    elif i == 1:
        group["betas"][0] = 0.5  # edited in place: the same list object
    elif i == 2:
        group["weight_decay"] = 0.5 * 0.2  # a new float object, a new value
    elif i == 3:
        group["weight_decay"] = float(group["weight_decay"])  # a new object, the same value
    elif i == 4:
        group["eps"] = torch.tensor(1e-3)
    elif i == 5:
        group["eps"].fill_(0.25)  # the same tensor, a new value
    elif i == 6:
        group["lr"] = 0.5


@pytest.mark.parametrize("schedule", [False, True])
def test_group_edits_in_place_or_by_new_objects_are_read_as_torch(schedule):
    ours, theirs = _pair()
    sched = schedules.Cosine(base_lr=0.05, T_max=10) if schedule else None
    opt = PO.AdamW(ours, lr=1.0 if schedule else 0.05, schedule=sched)  # the schedule's lr
    ref = torch.optim.AdamW(theirs, lr=0.05, foreach=False)
    for i in range(9):
        _set_grads(ours, theirs, i)
        if schedule:
            ref.param_groups[0]["lr"] = sched(i)
        opt.step()
        ref.step()
        _assert_same(ours, theirs, atol=1e-7)
        _edit_group(opt.param_groups[0], i)
        _edit_group(ref.param_groups[0], i)
        if schedule and i == 6:
            opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # the schedule owns lr


def test_amsgrad_keeps_a_nan_as_torch_maximum():
    ours, theirs = _pair(n=1, size=4)
    opt = PO.Adam(ours, amsgrad=True)
    ref = torch.optim.Adam(theirs, amsgrad=True, foreach=False)
    for g in (torch.ones(4), torch.tensor([1.0, float("nan"), 1.0, 1.0]), torch.ones(4)):
        ours[0].grad, theirs[0].grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(
        opt.state[ours[0]]["max_exp_avg_sq"], ref.state[theirs[0]]["max_exp_avg_sq"], equal_nan=True
    )


def test_string_hyperparameters_are_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        F.sgd_([p.detach()], [torch.ones(3)], [None], lr="0.1")  # type: ignore[arg-type]
    opt = PO.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.param_groups[0]["lr"] = "0.1"
    with pytest.raises(TypeError, match="lr must be a number"):
        opt.step()
    assert torch.equal(p, torch.zeros(3))


def test_set_num_threads_is_bounded():
    before = pylr.get_num_threads()
    try:
        for bad in (0, 2**31 - 1, pylr._core.MAX_THREADS + 1, 1.5, True):
            with pytest.raises(ValueError, match="set_num_threads: n must be an integer in"):
                pylr.set_num_threads(bad)  # type: ignore[arg-type]
        pylr.set_num_threads(3)
        assert pylr.get_num_threads() == 3
    finally:
        pylr.set_num_threads(before)
