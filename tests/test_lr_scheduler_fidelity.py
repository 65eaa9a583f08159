"""pylr.lr_scheduler where torch's recursion shows: schedulers stepped back to back on one
optimizer, lrs and T_cur edited by hand, CyclicLR after an optimizer checkpoint, tensor
hyperparameters, ChainedScheduler members, state dicts and ``__dict__`` as torch's own suite
compares them — each against torch 2.13, step by step.

Tolerances: float lrs agree to 1e-12 relative (the closed form and torch's recursion round
differently); a float32 tensor lr to a few float32 ulps.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import types
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as T

from pylr import lr_scheduler as P

LRS = (0.1, 0.03)
REL = 1e-12
REL_F32 = 8 * torch.finfo(torch.float32).eps


def make_opt(tensor_lr: bool = False, kind: str = "sgd") -> torch.optim.Optimizer:
    """Two groups; with ``tensor_lr`` the second group's lr is a float32 tensor (as in torch's
    suite)."""
    groups = []
    for i, lr in enumerate(LRS):
        value = torch.tensor(lr) if tensor_lr and i == 1 else lr
        groups.append({"params": [torch.zeros(2, requires_grad=True)], "lr": value})
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def momentum_of(group: dict[str, Any]) -> Any:
    return group["betas"][0] if "betas" in group else group["momentum"]


def rel_for(value: Any) -> float:
    return REL_F32 if isinstance(value, torch.Tensor) else REL


def assert_groups_match(ref: torch.optim.Optimizer, ours: torch.optim.Optimizer, where: str):
    assert len(ref.param_groups) == len(ours.param_groups), where
    for i, (a, b) in enumerate(zip(ref.param_groups, ours.param_groups, strict=True)):
        for x, y in ((a["lr"], b["lr"]), (momentum_of(a), momentum_of(b))):
            assert isinstance(y, torch.Tensor) == isinstance(x, torch.Tensor), (where, i)
            assert float(y) == pytest.approx(float(x), rel=rel_for(x), abs=1e-300), (where, i)


def assert_lrs_match(ref: list[Any], ours: list[Any], where: str) -> None:
    assert len(ref) == len(ours), where
    for a, b in zip(ref, ours, strict=True):
        assert float(b) == pytest.approx(float(a), rel=rel_for(a), abs=1e-300), where


# name -> builder(module, optimizer); the same arguments for torch's class and pylr's
CHAINABLE: dict[str, Callable[[Any, torch.optim.Optimizer], Any]] = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.5),
    "ConstantLR": lambda m, o: m.ConstantLR(o, factor=0.25, total_iters=4),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=6),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=8, power=1.5),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=5, eta_min=0.001),
}
ABSOLUTE: dict[str, Callable[[Any, torch.optim.Optimizer], Any]] = {
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=2, eta_min=0.001
    ),
    "CyclicLR": lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=60),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 0.95**e),
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lambda e: 0.97),
}
BUILDERS = {**CHAINABLE, **ABSOLUTE}
STEPS = 25


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize(
    ("first", "second"),
    [
        *itertools.product(CHAINABLE, CHAINABLE),
        *itertools.product(CHAINABLE, ABSOLUTE),
        *itertools.product(ABSOLUTE, CHAINABLE),
    ],
)
def test_two_schedulers_stepped_back_to_back_match_torch(first, second, tensor_lr):
    """torch documents back-to-back schedulers on one optimizer: each steps from the lrs the
    other one wrote."""
    runs = {}
    for mod in (T, P):
        opt = make_opt(tensor_lr)
        runs[mod] = (opt, BUILDERS[first](mod, opt), BUILDERS[second](mod, opt))
    (opt_t, *ref), (opt_p, *ours) = runs[T], runs[P]
    assert_groups_match(opt_t, opt_p, "built")
    for step in range(STEPS):
        for r, o in zip(ref, ours, strict=True):
            r.step()
            o.step()
            assert_lrs_match(r.get_last_lr(), o.get_last_lr(), f"{type(o).__name__} {step}")
        assert_groups_match(opt_t, opt_p, f"{first} then {second}, step {step}")


def _edit(opt: torch.optim.Optimizer, step: int) -> None:
    """Hand edits as users make them: a float lr replaced or scaled, a tensor lr scaled in
    place or replaced by another tensor."""
    g0, g1 = opt.param_groups
    if step == 0:
        g0["lr"] = 0.5
    elif step == 4:
        g0["lr"] *= 0.3
        if isinstance(g1["lr"], torch.Tensor):
            g1["lr"].mul_(2.0)
        else:
            g1["lr"] = 0.07
    elif step == 9:
        g1["lr"] = torch.tensor(0.02) if isinstance(g1["lr"], torch.Tensor) else 0.02


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_hand_edited_lrs_go_on_as_in_torch(name, tensor_lr):
    """The chainable schedulers carry an edited lr forward, the others overwrite it, in pylr as
    in torch; an edit before the first step counts too."""
    runs = {}
    for mod in (T, P):
        opt = make_opt(tensor_lr)
        runs[mod] = (opt, BUILDERS[name](mod, opt))
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(STEPS):
        _edit(opt_t, step)
        _edit(opt_p, step)
        ref.step()
        ours.step()
        assert_groups_match(opt_t, opt_p, f"{name} step {step}")
        assert_lrs_match(ref.get_last_lr(), ours.get_last_lr(), f"{name} step {step}")


@pytest.mark.parametrize("name", list(CHAINABLE))
def test_step_with_an_epoch_takes_the_closed_form_after_an_edit_as_torch(name):
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        runs[mod] = (opt, CHAINABLE[name](mod, opt))
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(1, 12):
        for opt in (opt_t, opt_p):
            opt.param_groups[0]["lr"] *= 1.5
        if step % 3 == 0:
            ref.step(step)
            ours.step(step)
        else:
            ref.step()
            ours.step()
        assert_groups_match(opt_t, opt_p, f"{name} step {step}")


def test_the_back_to_back_example_of_the_issue():
    """ExponentialLR(0.9) then MultiStepLR([2], 0.1) on lr 1.0: the second decays the lr the
    first wrote."""
    seen = {}
    for mod in (T, P):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        a, b = mod.ExponentialLR(opt, gamma=0.9), mod.MultiStepLR(opt, [2], gamma=0.1)
        seen[mod] = []
        for _ in range(4):
            a.step()
            b.step()
            seen[mod].append(opt.param_groups[0]["lr"])
    assert seen[P] == pytest.approx(seen[T], rel=REL)
    assert seen[P][1] != pytest.approx(seen[P][0])  # the milestone applied to 0.81, not to 1.0


@pytest.mark.parametrize(
    "members",
    [
        ("StepLR", "ExponentialLR"),
        ("LinearLR", "MultiStepLR", "CosineAnnealingLR"),
        ("CyclicLR", "ExponentialLR"),
        ("ExponentialLR", "CyclicLR"),
        ("CosineAnnealingWarmRestarts", "ConstantLR"),
        ("OneCycleLR", "StepLR", "LambdaLR"),
    ],
)
def test_chained_scheduler_and_its_members_report_what_torch_reports(members):
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        scheds = [BUILDERS[n](mod, opt) for n in members]
        runs[mod] = (opt, scheds, mod.ChainedScheduler(scheds))
    (opt_t, ref_members, ref), (opt_p, our_members, ours) = runs[T], runs[P]
    assert_lrs_match(ref.get_last_lr(), ours.get_last_lr(), "built")
    for step in range(STEPS):
        ref.step()
        ours.step()
        assert_groups_match(opt_t, opt_p, f"{members} step {step}")
        assert ours.get_last_lr() == our_members[-1].get_last_lr()
        for r, o in zip(ref_members, our_members, strict=True):
            assert_lrs_match(r.get_last_lr(), o.get_last_lr(), f"member {type(o).__name__}")


@pytest.mark.parametrize("last_epoch", [-1, 5])
def test_cyclic_lr_after_an_optimizer_checkpoint_starts_from_initial_lr_as_torch(last_epoch):
    """Groups that carry initial_lr (an optimizer state was loaded): torch's first step runs
    from it, the later ones from base_lr; base_lrs reports base_lr."""
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        for group in opt.param_groups:
            group["initial_lr"] = 0.1
        sched = mod.CyclicLR(opt, base_lr=0.001, max_lr=0.01, step_size_up=1, last_epoch=last_epoch)
        runs[mod] = (opt, sched)
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(8):
        assert_groups_match(opt_t, opt_p, f"step {step}")
        assert ours.base_lrs == ref.base_lrs
        ref.step()
        ours.step()


def _tensor_hypers(cls: str) -> dict[str, torch.Tensor]:
    if cls == "CyclicLR":
        return {
            "base_lr": torch.tensor(0.01),
            "max_lr": torch.tensor(0.2),
            "base_momentum": torch.tensor(0.8),
            "max_momentum": torch.tensor(0.9),
        }
    return {
        "max_lr": torch.tensor(0.1),
        "base_momentum": torch.tensor(0.85),
        "max_momentum": torch.tensor(0.95),
    }


def _build_with_tensors(mod: Any, cls: str, opt: torch.optim.Optimizer, hypers: dict) -> Any:
    if cls == "CyclicLR":
        return mod.CyclicLR(opt, step_size_up=3, **hypers)
    return mod.OneCycleLR(opt, total_steps=30, **hypers)


def _group_keys(opt: torch.optim.Optimizer) -> list[dict[str, float]]:
    keys = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
    return [{k: float(g[k]) for k in keys if k in g} for g in opt.param_groups]


@pytest.mark.parametrize("cls", ["CyclicLR", "OneCycleLR"])
def test_tensor_hyperparameters_are_copied_as_torch_copies_them(cls):
    """Tensor base_lr/max_lr/momenta are accepted and copied: changing the caller's tensors
    afterwards changes nothing, in the lrs, base_lrs, max_lrs or the groups' keys."""
    runs = {}
    for mod in (T, P):
        # tensor lrs, as in torch's suite: torch's CyclicLR stores a tensor base_lr itself as a
        # float group's lr, which then drifts with it (pylr stores a copy)
        opt = make_opt(tensor_lr=True)
        opt.param_groups[0]["lr"] = torch.tensor(LRS[0])
        hypers = _tensor_hypers(cls)
        sched = _build_with_tensors(mod, cls, opt, hypers)
        for tensor in hypers.values():
            tensor.mul_(0.5)
        runs[mod] = (opt, sched)
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(20):
        assert_groups_match(opt_t, opt_p, f"{cls} step {step}")
        for keys_p, keys_t in zip(_group_keys(opt_p), _group_keys(opt_t), strict=True):
            assert keys_p == pytest.approx(keys_t, rel=REL_F32)
        for key in ("base_lrs", "max_lrs", "base_momentums", "max_momentums"):
            if hasattr(ref, key):
                assert [float(v) for v in getattr(ours, key)] == [
                    float(v) for v in getattr(ref, key)
                ], key
        ref.step()
        ours.step()

    # a state dict with those tensors loads and goes on as torch's does
    for mod, (opt, sched) in runs.items():
        fresh = _build_with_tensors(mod, cls, opt, _tensor_hypers(cls))
        fresh.load_state_dict(copy.deepcopy(sched.state_dict()))
        runs[mod] = (opt, fresh)
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(5):
        ref.step()
        ours.step()
        assert_groups_match(opt_t, opt_p, f"{cls} after load, step {step}")


def test_tensor_hyperparameters_of_the_wrong_shape_are_refused_by_name():
    opt = make_opt()
    with pytest.raises(ValueError, match=r"max_lr\[0\] must be a number, got a tensor of shape"):
        P.CyclicLR(opt, 0.01, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"base_momentum\[1\] must be finite"):
        P.OneCycleLR(opt, 0.1, total_steps=10, base_momentum=[0.8, torch.tensor(math.nan)])


@pytest.mark.parametrize("t_mult", [1, 2])
def test_a_hand_edited_t_cur_goes_on_as_in_torch(t_mult):
    """torch's warm restarts step T_cur recursively: an edited T_cur (or T_i) is carried
    forward, wrapping at T_i; step(epoch) puts the scheduler back on the exact schedule."""
    edits = {3: ("T_cur", 7), 6: ("T_cur", 2.5), 11: ("T_i", 5), 15: ("T_cur", 0)}
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        runs[mod] = (opt, mod.CosineAnnealingWarmRestarts(opt, T_0=4, T_mult=t_mult))
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(30):
        if step in edits:
            key, value = edits[step]
            setattr(ref, key, value)
            setattr(ours, key, value)
        if step == 20:
            ref.step(13)
            ours.step(13)
        else:
            ref.step()
            ours.step()
        where = f"T_mult={t_mult} step {step}"
        assert ours.last_epoch == ref.last_epoch, where
        assert ours.T_i == ref.T_i and ours.T_cur == pytest.approx(ref.T_cur), where
        assert_groups_match(opt_t, opt_p, where)


def _set_attribute(sched: Any, key: str, value: Any) -> None:
    """An attribute edit as users make them: assigned, or (a container) changed in place."""
    if key == "milestones":
        sched.milestones[7] += 1
    elif key == "group max_lr":  # OneCycleLR reads its lrs from the groups
        sched.optimizer.param_groups[0]["max_lr"] = value
    elif key in ("base_lrs", "max_lrs"):
        getattr(sched, key)[0] = value
    else:
        setattr(sched, key, value)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("StepLR", "gamma", 0.8),
        ("StepLR", "step_size", 2),
        ("MultiStepLR", "milestones", None),
        ("ConstantLR", "total_iters", 9),
        ("LinearLR", "end_factor", 0.5),
        ("ExponentialLR", "gamma", 0.7),
        ("ExponentialLR", "base_lrs", 0.4),
        ("PolynomialLR", "power", 3.0),
        ("CosineAnnealingLR", "T_max", 9),
        ("CosineAnnealingLR", "base_lrs", 0.3),
        ("CosineAnnealingWarmRestarts", "T_mult", 3),
        ("CosineAnnealingWarmRestarts", "eta_min", 0.01),
        ("CyclicLR", "max_lrs", 0.5),
        ("CyclicLR", "gamma", 0.9),
        ("OneCycleLR", "total_steps", 80),
        ("OneCycleLR", "group max_lr", 0.5),
    ],
)
def test_a_scheduler_attribute_edited_mid_run_takes_effect_as_in_torch(name, key, value):
    """torch reads its attributes at every step; pylr builds its closed forms again when they
    changed, and goes on as torch's recursion does from there."""
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        runs[mod] = (opt, BUILDERS[name](mod, opt))
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(STEPS):
        if step == 5:
            _set_attribute(ref, key, value)
            _set_attribute(ours, key, value)
        if step == 15 and name in CHAINABLE:
            ref.step(step)  # the closed form, from the edited attributes
            ours.step(step)
        else:
            ref.step()
            ours.step()
        assert_groups_match(opt_t, opt_p, f"{name}.{key} step {step}")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_get_lr_outside_step_returns_what_torch_s_returns(name):
    """torch warns that get_lr() is not the lr in use; what it returns still is torch's."""
    runs = {}
    for mod in (T, P):
        opt = make_opt(tensor_lr=True)
        runs[mod] = (opt, BUILDERS[name](mod, opt))
    (opt_t, ref), (opt_p, ours) = runs[T], runs[P]
    for step in range(12):
        with pytest.warns(UserWarning, match="please use `get_last_lr"):
            expected = ref.get_lr()
        with pytest.warns(UserWarning, match="please use `get_last_lr"):
            got = ours.get_lr()
        assert_lrs_match(expected, got, f"{name} get_lr at {step}")
        assert_groups_match(opt_t, opt_p, f"{name} step {step}")  # and it changed no lr
        ref.step()
        ours.step()


# ------------------------------------------------------------------------------------------
# state dicts and __dict__, as torch's suite compares them

STATEFUL = {
    **CHAINABLE,
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "CyclicLR": lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="exp_range"),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=60, three_phase=True),
    "ReduceLROnPlateau": lambda m, o: m.ReduceLROnPlateau(o, patience=1),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, total_iters=3), m.ExponentialLR(o, 0.9)], milestones=[3]
    ),
    "ChainedScheduler": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, total_iters=2), m.StepLR(o, 2)]
    ),
}
# a second set of arguments, for the scheduler a state is loaded into
OTHER = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=1, gamma=0.25),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[1, 4]),
    "ConstantLR": lambda m, o: m.ConstantLR(o, factor=0.5, total_iters=9),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.5),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.5),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=3),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=50),
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=100),
    "CyclicLR": lambda m, o: m.CyclicLR(o, 0.02, 0.3, step_size_up=7),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, 0.5, total_steps=90),
    "ReduceLROnPlateau": lambda m, o: m.ReduceLROnPlateau(o, mode="max", patience=9),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, total_iters=5), m.ExponentialLR(o, 0.5)], milestones=[5]
    ),
    "ChainedScheduler": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, total_iters=7), m.StepLR(o, 5)]
    ),
}
# pylr's SequentialLR also takes a ReduceLROnPlateau last (beyond torch); it keeps two more keys
PYLR_ONLY_KEYS = {"SequentialLR": {"_plateau", "_plateau_start"}}


def _step(sched: Any, k: int) -> None:
    if isinstance(sched, T.ReduceLROnPlateau):
        sched.step(1.0 + k % 3)
    else:
        sched.step()


def _same_value(a: Any, b: Any) -> bool:
    """Equality as torch's TestCase sees it, for the values a scheduler's __dict__ holds."""
    if isinstance(a, (types.FunctionType, partial, types.MethodType)):
        return type(a) is type(b)
    if isinstance(a, float) and isinstance(b, float):
        return b == pytest.approx(a, rel=REL, abs=1e-300) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, T.LRScheduler) or isinstance(a, T.ReduceLROnPlateau):
        return type(a).__name__ == type(b).__name__
    return a == b


@pytest.mark.parametrize("name", list(STATEFUL))
def test_attributes_are_torch_s(name):
    """The same __dict__ keys as torch's class — no caches — with the same values, built and
    after some steps."""
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        runs[mod] = (opt, STATEFUL[name](mod, opt))
    (_, ref), (_, ours) = runs[T], runs[P]
    extra = PYLR_ONLY_KEYS.get(name, set())
    for k in range(12):
        assert set(ours.__dict__) - extra == set(ref.__dict__), name
        for key, value in ref.__dict__.items():
            if key not in ("optimizer", "is_better", "_schedulers"):
                assert _same_value(value, ours.__dict__[key]), (name, key, k)
        _step(ref, k)
        _step(ours, k)


@pytest.mark.parametrize("source", ["torch", "pylr"])
@pytest.mark.parametrize("name", list(STATEFUL))
def test_a_loaded_state_makes_the_same_scheduler(name, source):
    """torch's suite: a scheduler built with other arguments and loaded with a state dict has
    the same __dict__ as the one the state came from, and goes on like it."""
    src_mod = T if source == "torch" else P
    opt_src, opt_dst = make_opt(), make_opt()
    first = STATEFUL[name](src_mod, opt_src)
    for k in range(10):
        _step(first, k)
    second = OTHER[name](P, opt_dst)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    extra = PYLR_ONLY_KEYS.get(name, set())
    assert set(second.__dict__) - extra == set(first.__dict__) - extra
    for key, value in first.__dict__.items():
        if key not in ("optimizer", "is_better", "_schedulers") and key not in extra:
            assert _same_value(value, second.__dict__[key]), (name, key)
    assert_lrs_match(first.get_last_lr(), second.get_last_lr(), name)
    if source == "pylr":
        assert second.state_dict().keys() == first.state_dict().keys()
    # with the optimizer's groups as the first one left them (the lr, and the keys OneCycleLR
    # keeps there), both go on alike
    keys = ("lr", "initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
    for g_src, g_dst in zip(opt_src.param_groups, opt_dst.param_groups, strict=True):
        g_dst.update({k: g_src[k] for k in keys if k in g_src})
    for k in range(10, 20):
        _step(first, k)
        _step(second, k)
        assert_groups_match(opt_src, opt_dst, f"{name} from {source}, step {k}")


def test_a_pylr_state_without_an_optimizer_state_continues_from_the_groups_lrs_as_torch():
    """Loading only the scheduler's state: torch's chainable schedulers go on from the lrs the
    optimizer has, and so does pylr."""
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        sched = mod.ExponentialLR(opt, gamma=0.8)
        for _ in range(5):
            sched.step()
        fresh_opt = make_opt()
        fresh = mod.ExponentialLR(fresh_opt, gamma=0.8)
        fresh.load_state_dict(sched.state_dict())
        runs[mod] = (fresh_opt, fresh)
    for step in range(6):
        for _, sched in runs.values():
            sched.step()
        assert_groups_match(runs[T][0], runs[P][0], f"step {step}")


@pytest.mark.parametrize("fn_owner", [T.OneCycleLR, P.OneCycleLR])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_a_legacy_one_cycle_state_with_anneal_func_loads(fn_owner, anneal):
    """torch before 2.2 saved the anneal function itself (``anneal_func``)."""
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        sched = mod.OneCycleLR(opt, max_lr=0.1, total_steps=20, anneal_strategy=anneal)
        for _ in range(4):
            sched.step()
        del sched._anneal_func_type
        state = sched.state_dict()
        assert "_anneal_func_type" not in state
        state["anneal_func"] = getattr(fn_owner, f"_annealing_{anneal}")
        sched.load_state_dict(state)
        runs[mod] = (opt, sched)
    for step in range(10):
        for _, sched in runs.values():
            sched.step()
        assert_groups_match(runs[T][0], runs[P][0], f"{anneal} step {step}")
    assert runs[P][1]._anneal_func_type == anneal


def test_a_legacy_one_cycle_state_with_an_unknown_anneal_func_is_refused_by_name():
    sched = P.OneCycleLR(make_opt(), max_lr=0.1, total_steps=20)
    state = sched.state_dict()
    del state["_anneal_func_type"]
    state["anneal_func"] = lambda start, end, pct: start
    before = copy.deepcopy(sched.state_dict())
    with pytest.raises(ValueError, match=r"state_dict\['anneal_func'\] must be OneCycleLR's"):
        sched.load_state_dict(state)
    assert sched.state_dict() == before


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_lr_keeps_torch_s_scale_fn_ref_out_of_its_state(mode):
    for mod in (T, P):
        sched = mod.CyclicLR(make_opt(), 0.01, 0.1, mode=mode)
        state = sched.state_dict()
        assert "_scale_fn_ref" not in state and state["_scale_fn_custom"] is None
        pickle.dumps(state)
    ref = T.CyclicLR(make_opt(), 0.01, 0.1, mode=mode)
    ours = P.CyclicLR(make_opt(), 0.01, 0.1)
    ours.load_state_dict(ref.state_dict())
    assert ours.mode == mode and type(ours._scale_fn_ref) is type(ref._scale_fn_ref)
    assert ours.scale_fn(3) == ref.scale_fn(3)


def test_state_keys_of_earlier_pylr_versions_are_dropped():
    opt = make_opt()
    sched = P.StepLR(opt, 2)
    sched.load_state_dict({**sched.state_dict(), "_held_lrs": {2: 0.1}})
    assert "_held_lrs" not in sched.__dict__
    chained = P.ChainedScheduler([P.StepLR(opt, 2), P.ExponentialLR(opt, 0.9)])
    chained.load_state_dict({**chained.state_dict(), "_group_bases": [0.1, 0.03]})
    assert "_group_bases" not in chained.__dict__


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_scheduler_deep_copies_and_pickles_with_its_optimizer(name):
    """The derived C++ state is not part of the object's state: a copy rebuilds it."""
    opt = make_opt()
    sched = BUILDERS[name](P, opt)
    for _ in range(3):
        sched.step()
    copies = [copy.deepcopy((opt, sched))]
    if name not in ("LambdaLR", "MultiplicativeLR"):  # lambdas do not pickle
        copies.append(pickle.loads(pickle.dumps((opt, sched))))
    twin_opt = make_opt()
    twin = BUILDERS[name](P, twin_opt)
    for _ in range(9):
        twin.step()
    for opt_copy, sched_copy in copies:
        for _ in range(6):
            sched_copy.step()
        assert_groups_match(twin_opt, opt_copy, name)
