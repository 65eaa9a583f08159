"""pylr.lr_scheduler against torch.optim.lr_scheduler (torch 2.13), step by step."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as T

from pylr import lr_scheduler as P
from pylr import schedules as S

LRS = (0.1, 0.03)


def make_opt(kind: str = "sgd") -> torch.optim.Optimizer:
    params = [torch.zeros(2, requires_grad=True) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)]
    if kind == "adam":
        return torch.optim.Adam(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def group_state(opt: torch.optim.Optimizer) -> list[tuple[float, float]]:
    return [
        (g["lr"], g["betas"][0] if "betas" in g else g.get("momentum", 0.0))
        for g in opt.param_groups
    ]


# Step-shaped schedulers ("exact", tolerance 0 in CASES) must change at exactly the same steps and
# agree to the last few bits: torch multiplies recursively (((b * g) * g) * g), the closed form
# computes b * g**k, and the two round differently by an ulp or so.
STEP_SHAPED_REL = 1e-15


def assert_same(ref: list, ours: list, rel: float, where: str) -> None:
    for (lr_a, m_a), (lr_b, m_b) in zip(ref, ours, strict=True):
        assert lr_b == pytest.approx(lr_a, rel=rel or STEP_SHAPED_REL, abs=1e-300), where
        assert m_b == pytest.approx(m_a, rel=1e-12, abs=1e-15), where


# (class name, kwargs, steps, relative tolerance; 0 means exactly equal)
CASES = [
    ("StepLR", {"step_size": 3, "gamma": 0.1}, 200, 0.0),
    ("StepLR", {"step_size": 1, "gamma": 0.97}, 2000, 1e-12),
    ("MultiStepLR", {"milestones": [2, 5, 5, 40], "gamma": 0.1}, 100, 0.0),
    ("MultiStepLR", {"milestones": [10, 20], "gamma": 0.5}, 100, 0.0),
    ("ConstantLR", {"factor": 0.25, "total_iters": 7}, 50, 0.0),
    ("ConstantLR", {}, 50, 0.0),
    ("LinearLR", {"start_factor": 0.01, "end_factor": 1.0, "total_iters": 100}, 300, 1e-12),
    ("LinearLR", {"start_factor": 1.0, "end_factor": 0.0, "total_iters": 17}, 60, 1e-12),
    ("ExponentialLR", {"gamma": 0.99}, 3000, 1e-12),
    ("PolynomialLR", {"total_iters": 40, "power": 2.0}, 100, 1e-12),
    ("PolynomialLR", {}, 20, 1e-12),
    ("CosineAnnealingLR", {"T_max": 100}, 10_000, 1e-9),
    ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.001}, 10_000, 1e-9),
    ("CosineAnnealingLR", {"T_max": 1}, 10_000, 1e-9),
    ("CosineAnnealingWarmRestarts", {"T_0": 10}, 10_000, 1e-12),
    ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2, "eta_min": 0.001}, 10_000, 1e-12),
    ("CyclicLR", {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 20}, 10_000, 1e-12),
    (
        "CyclicLR",
        {
            "base_lr": [0.01, 0.001],
            "max_lr": [0.1, 0.2],
            "step_size_up": 7,
            "step_size_down": 13,
            "mode": "triangular2",
        },
        10_000,
        1e-12,
    ),
    (
        "CyclicLR",
        {
            "base_lr": 0.01,
            "max_lr": 0.1,
            "step_size_up": 11,
            "mode": "exp_range",
            "gamma": 0.999,
            "base_momentum": 0.7,
            "max_momentum": 0.95,
        },
        10_000,
        1e-12,
    ),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 1000}, 1000, 1e-12),
    (
        "OneCycleLR",
        {"max_lr": [0.1, 0.5], "total_steps": 333, "anneal_strategy": "linear"},
        333,
        1e-12,
    ),
    (
        "OneCycleLR",
        {
            "max_lr": 0.1,
            "epochs": 4,
            "steps_per_epoch": 50,
            "three_phase": True,
            "pct_start": 0.25,
            "div_factor": 10.0,
            "final_div_factor": 100.0,
        },
        200,
        1e-12,
    ),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 7}, 7, 1e-12),
]


def _ids(case):
    return f"{case[0]}-{sorted(case[1].items())}"


# Momentum-cycling schedulers also run on Adam, where they cycle betas[0].
STEP_CASES = [(c, "sgd") for c in CASES] + [
    (c, "adam") for c in CASES if c[0] in ("CyclicLR", "OneCycleLR")
]


@pytest.mark.parametrize(
    ("case", "opt_kind"), STEP_CASES, ids=[f"{_ids(c)}-{k}" for c, k in STEP_CASES]
)
def test_matches_torch_step_by_step(case, opt_kind):
    name, kwargs, steps, rel = case
    opt_t, opt_p = make_opt(opt_kind), make_opt(opt_kind)
    ref = getattr(T, name)(opt_t, **kwargs)
    ours = getattr(P, name)(opt_p, **kwargs)
    assert isinstance(ours, T.LRScheduler)
    prev_t, prev_p = group_state(opt_t), group_state(opt_p)
    for step in range(steps):
        now_t, now_p = group_state(opt_t), group_state(opt_p)
        assert_same(now_t, now_p, rel, f"{name} step {step}")
        if rel == 0.0:  # the lr changes at exactly the same steps
            assert (now_t != prev_t) == (now_p != prev_p), f"{name} step {step}"
        prev_t, prev_p = now_t, now_p
        assert ours.last_epoch == ref.last_epoch
        opt_t.step()
        opt_p.step()
        ref.step()
        ours.step()
    assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=max(rel, 1e-300))


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_state_dicts_interchange_with_torch_mid_run(case):
    name, kwargs, steps, rel = case
    rel = rel or 1e-15
    k = min(steps // 2, 500)
    for src_mod, dst_mod in ((T, P), (P, T), (P, P)):
        opt_a = make_opt()
        first = getattr(src_mod, name)(opt_a, **kwargs)
        for _ in range(k):
            opt_a.step()
            first.step()
        # resume: a new optimizer and scheduler, loaded from the state dicts
        opt_b = make_opt()
        opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            second = getattr(dst_mod, name)(opt_b, **kwargs)
        second.load_state_dict(copy.deepcopy(first.state_dict()))
        for group_a, group_b in zip(opt_a.param_groups, opt_b.param_groups, strict=True):
            group_b["lr"] = group_a["lr"]
        for step in range(k, min(steps, k + 300)):
            opt_a.step()
            opt_b.step()
            first.step()
            second.step()
            where = f"{name} {src_mod.__name__}->{dst_mod.__name__} step {step}"
            assert_same(group_state(opt_a), group_state(opt_b), rel, where)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_resume_from_last_epoch(case):
    """Resumed with last_epoch=k on an optimizer a checkpoint at step k left, pylr continues as
    torch does: the absolute schedulers with the lrs of a fresh run at k+1, k+2, ...; torch's
    chainable ones from the group's lr, which ExponentialLR and CosineAnnealingLR keep for one
    step (they lag one step behind a fresh run from then on)."""
    name, kwargs, steps, rel = case
    rel = rel or 1e-15
    k = min(steps // 2, 400)
    opt_fresh = make_opt()
    fresh = getattr(P, name)(opt_fresh, **kwargs)
    lrs = [group_state(opt_fresh)]
    for _ in range(min(k + 50, steps)):
        fresh.step()
        lrs.append(group_state(opt_fresh))

    # the optimizer as a checkpoint taken at step k left it
    opt_p, opt_t = make_opt(), make_opt()
    for opt in (opt_p, opt_t):
        getattr(P, name)(opt, **kwargs)  # fills initial_lr (and max_lr, ...) as a first run did
        for group, (lr, momentum) in zip(opt.param_groups, lrs[k], strict=True):
            group["lr"] = lr
            group["momentum"] = momentum
    resumed = getattr(P, name)(opt_p, last_epoch=k, **kwargs)
    # torch's warm restarts wrap T_cur only once on resume, wrong when T_mult > 1 and k+1 spans
    # several periods; pylr computes the position exactly, as a fresh run has it
    exact = name == "CosineAnnealingWarmRestarts" and kwargs.get("T_mult", 1) > 1
    ref = None if exact else getattr(T, name)(opt_t, last_epoch=k, **kwargs)
    lagging = name in ("ExponentialLR", "CosineAnnealingLR")
    end = min(k + 40, len(lrs))
    for t in range(k + 1, end):
        assert resumed.last_epoch == t
        if ref is not None:
            assert_same(group_state(opt_t), group_state(opt_p), rel, f"{name} vs torch at {t}")
        if not lagging:
            assert_same(lrs[t], group_state(opt_p), rel, f"{name} resumed at {t}")
        if t + 1 < end:
            resumed.step()
            if ref is not None:
                ref.step()


def test_warm_restarts_fractional_epochs_match_torch():
    for t_mult in (1, 2, 3):
        opt_t, opt_p = make_opt(), make_opt()
        ref = T.CosineAnnealingWarmRestarts(opt_t, T_0=4, T_mult=t_mult, eta_min=1e-3)
        ours = P.CosineAnnealingWarmRestarts(opt_p, T_0=4, T_mult=t_mult, eta_min=1e-3)
        iters = 7
        for epoch in range(30):
            for i in range(iters):
                e = epoch + i / iters
                ref.step(e)
                ours.step(e)
                assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"epoch {e}")
                assert ours.T_i == ref.T_i and ours.T_cur == pytest.approx(ref.T_cur)
        # and plain steps continue from the fractional state as torch does
        for _ in range(50):
            ref.step()
            ours.step()
            assert_same(group_state(opt_t), group_state(opt_p), 1e-12, "after fractional")


def test_one_cycle_at_and_past_total_steps_like_torch():
    opt_t, opt_p = make_opt(), make_opt()
    ref = T.OneCycleLR(opt_t, max_lr=0.1, total_steps=10, anneal_strategy="linear")
    ours = P.OneCycleLR(opt_p, max_lr=0.1, total_steps=10, anneal_strategy="linear")
    for _ in range(10):
        ref.step()
        ours.step()
    assert ours.get_last_lr() == ref.get_last_lr()  # the extrapolated value at total_steps
    with pytest.raises(ValueError, match="Tried to step 11 times") as ours_err:
        ours.step()
    with pytest.raises(ValueError) as ref_err:
        ref.step()
    assert str(ours_err.value) == str(ref_err.value)


def test_cyclic_custom_scale_fn_matches_torch():
    for scale_mode in ("cycle", "iterations"):
        opt_t, opt_p = make_opt(), make_opt()
        kw = {
            "base_lr": 0.01,
            "max_lr": 0.1,
            "step_size_up": 5,
            "scale_fn": lambda x: 1 / (1 + 0.1 * x),
            "scale_mode": scale_mode,
        }
        ref, ours = T.CyclicLR(opt_t, **kw), P.CyclicLR(opt_p, **kw)
        for step in range(300):
            assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"{scale_mode} {step}")
            ref.step()
            ours.step()


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_reduce_on_plateau_matches_torch(mode, threshold_mode):
    gen = torch.Generator().manual_seed(0)
    metrics = (torch.rand(300, generator=gen) + torch.linspace(1, 0, 300)).tolist()
    kw = {
        "mode": mode,
        "factor": 0.5,
        "patience": 3,
        "threshold": 0.01,
        "threshold_mode": threshold_mode,
        "cooldown": 2,
        "min_lr": [1e-3, 1e-4],
        "eps": 1e-9,
    }
    opt_t, opt_p = make_opt(), make_opt()
    ref, ours = T.ReduceLROnPlateau(opt_t, **kw), P.ReduceLROnPlateau(opt_p, **kw)
    for m in metrics:
        ref.step(m)
        ours.step(m)
        assert group_state(opt_t) == group_state(opt_p)
    assert min(g["lr"] for g in opt_p.param_groups) < max(LRS)  # it did reduce


def test_sequential_matches_torch():
    def build(mod, opt):
        warm = mod.LinearLR(opt, start_factor=0.1, total_iters=5)
        cos = mod.CosineAnnealingLR(opt, T_max=50, eta_min=1e-4)
        ex = mod.ExponentialLR(opt, gamma=0.9)
        return mod.SequentialLR(opt, [warm, cos, ex], milestones=[5, 60])

    opt_t, opt_p = make_opt(), make_opt()
    ref, ours = build(T, opt_t), build(P, opt_p)
    for step in range(200):
        assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"step {step}")
        ref.step()
        ours.step()


def test_chained_matches_torch_for_multiplicative_members():
    def build(mod, opt):
        return mod.ChainedScheduler(
            [
                mod.ConstantLR(opt, factor=0.1, total_iters=2),
                mod.ExponentialLR(opt, gamma=0.9),
                mod.StepLR(opt, step_size=3, gamma=0.5),
            ]
        )

    opt_t, opt_p = make_opt(), make_opt()
    ref, ours = build(T, opt_t), build(P, opt_p)
    for step in range(100):
        assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"step {step}")
        ref.step()
        ours.step()


def test_lambda_and_multiplicative_match_torch():
    for name, fn in (("LambdaLR", lambda e: 0.95**e), ("MultiplicativeLR", lambda e: 0.97)):
        opt_t, opt_p = make_opt(), make_opt()
        ref, ours = getattr(T, name)(opt_t, fn), getattr(P, name)(opt_p, fn)
        for _ in range(50):
            assert group_state(opt_t) == group_state(opt_p)
            ref.step()
            ours.step()
    with pytest.raises(TypeError, match="lr_lambda"):
        P.LambdaLR(make_opt(), 3)


def test_plateau_after_warmup():
    opt = make_opt()
    warm = P.LinearLR(opt, start_factor=0.01, total_iters=4)
    plateau = P.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    sched = P.SequentialLR(opt, [warm, plateau], milestones=[4])
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.001, 0.02575, 0.0505, 0.07525])
    with pytest.raises(ValueError, match="needs metrics"):
        sched.step()
    sched.step(1.0)  # step 4: the plateau starts from the initial lr
    assert opt.param_groups[0]["lr"] == 0.1
    for _ in range(2):
        sched.step(1.0)  # no improvement for patience + 1 steps: halve
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.015)
    state = sched.state_dict()
    assert "_plateau_state" in state and "_plateau" not in state


def test_schedule_lr_relative_absolute_and_momentum():
    opt = make_opt()
    sched = P.ScheduleLR(opt, S.warmup(S.Cosine(T_max=100), steps=10))
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    for _ in range(10):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(list(LRS))

    opt = make_opt("adam")
    cycles = [S.OneCycle(0.1, 100), S.OneCycle(0.5, 100, base_momentum=0.8)]
    sched = P.ScheduleLR(opt, cycles)
    for t in range(1, 50):
        sched.step()
        for g, s in zip(opt.param_groups, cycles, strict=True):
            assert g["lr"] == s(t) and g["betas"][0] == s.momentum(t)

    with pytest.raises(ValueError, match="2 param groups"):
        P.ScheduleLR(make_opt(), [S.Constant()])
    with pytest.raises(ValueError, match="momentum"):
        P.ScheduleLR(torch.optim.Adagrad([torch.zeros(1, requires_grad=True)]), S.OneCycle(1, 9))
    with pytest.raises(TypeError, match="schedule"):
        P.ScheduleLR(make_opt(), [3, 4])


def test_schedule_lr_refuses_a_factor_too_deep_to_scale_before_touching_the_optimizer():
    deepest = S.Constant(1.0)
    for _ in range(S.MAX_DEPTH - 1):
        deepest = 1.0 * deepest
    opt = make_opt()
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises(ValueError, match=r"at most pylr\.schedules\.MAX_DEPTH - 1 = 255"):
        P.ScheduleLR(opt, deepest)
    assert str(opt.param_groups) == str(before)
    P.ScheduleLR(opt, deepest.schedule)  # 255 levels
    P.ScheduleLR(opt, [deepest, deepest])  # absolute lrs: not scaled


def test_tensor_lrs_are_filled_in_place():
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=torch.tensor(0.1))
    lr_tensor = opt.param_groups[0]["lr"]
    sched = P.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert opt.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("build", "exc", "match"),
    [
        (lambda o: P.StepLR(o, step_size=0), ValueError, "step_size"),
        (lambda o: P.StepLR(o, step_size=3, gamma=0), ValueError, "gamma"),
        (lambda o: P.MultiStepLR(o, milestones=[5, 2]), ValueError, "milestones"),
        (lambda o: P.ExponentialLR(o, gamma=-0.5), ValueError, "gamma"),
        (lambda o: P.ExponentialLR(o, gamma=math.nan), ValueError, "gamma"),
        (lambda o: P.ConstantLR(o, factor=2.0), ValueError, "factor"),
        (lambda o: P.LinearLR(o, start_factor=0.0), ValueError, "Starting"),
        (lambda o: P.LinearLR(o, total_iters=0), ValueError, "total_iters"),
        (lambda o: P.PolynomialLR(o, total_iters=0), ValueError, "total_iters"),
        (lambda o: P.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
        (lambda o: P.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0"),
        (lambda o: P.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=0), ValueError, "T_mult"),
        (lambda o: P.CyclicLR(o, 0.01, 0.1, step_size_up=0), ValueError, "step_size_up"),
        (lambda o: P.CyclicLR(o, 0.01, 0.1, mode="x"), ValueError, "mode"),
        (lambda o: P.CyclicLR(o, [0.01], 0.1), ValueError, "base_lr"),
        (lambda o: P.OneCycleLR(o, 0.1, total_steps=10, pct_start=0.1), ValueError, "zero length"),
        (lambda o: P.OneCycleLR(o, 0.1, total_steps=100, pct_start=1.0), ValueError, "pct_start"),
        (lambda o: P.OneCycleLR(o, 0.1, total_steps=100, pct_start=0.0), ValueError, "pct_start"),
        (lambda o: P.OneCycleLR(o, 0.1), ValueError, "total_steps"),
        (lambda o: P.OneCycleLR(o, math.inf, total_steps=100), ValueError, "max_lr"),
        (lambda o: P.ReduceLROnPlateau(o, factor=0.0), ValueError, "factor"),
        (lambda o: P.ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
        (lambda o: P.ReduceLROnPlateau(o, mode="up"), ValueError, "mode"),
        (lambda o: P.StepLR("not an optimizer", 3), TypeError, "Optimizer"),
    ],
)
def test_bad_arguments_raise_and_leave_the_optimizer_alone(build, exc, match):
    opt = make_opt()
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(exc, match=match):
        build(opt)
    assert [dict(g) for g in opt.param_groups] == before


def test_negative_epoch_for_warm_restarts():
    sched = P.CosineAnnealingWarmRestarts(make_opt(), T_0=5)
    with pytest.raises(ValueError, match="non-negative epoch"):
        sched.step(-1)


# ------------------------------------------------------------------------------------------
# Bad values through every path: constructors, step(epoch) and load_state_dict check before they
# evaluate, and a rejected load leaves the scheduler as it was.


def test_bad_warm_restart_states_raise_instead_of_hanging():
    """These reached a C++ loop that never ended, holding the GIL. A fresh interpreter runs them
    so that a regression fails here instead of stopping the suite; the timeout only detects a
    hang (each case takes milliseconds)."""
    code = textwrap.dedent(
        """
        import math, torch
        from pylr import lr_scheduler as P, schedules as S

        def opt():
            return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

        for key, value in [("T_mult", 0), ("T_0", 0), ("last_epoch", math.inf),
                           ("last_epoch", math.nan), ("T_cur", math.inf), ("T_i", 0)]:
            s = P.CosineAnnealingWarmRestarts(opt(), T_0=3, T_mult=2)
            for _ in range(5):  # past T_0, where the restart walk begins
                s.step()
            state = s.state_dict()
            state[key] = value
            try:
                s.load_state_dict(state)
                s.step()
                print("accepted", key)
            except ValueError as e:
                print("ValueError", key in str(e))
        o = opt()
        o.param_groups[0]["initial_lr"] = 0.1
        try:
            P.ScheduleLR(o, S.CosineWarmRestarts(10, 2), last_epoch=math.inf)
            print("accepted last_epoch")
        except ValueError as e:
            print("ValueError", "last_epoch" in str(e))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",  # not the checkout, whose pylr/ has no compiled _core
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == ["ValueError True"] * 7


def opt_with_initial_lr() -> torch.optim.Optimizer:
    opt = make_opt()
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
        group.update(max_lr=0.1, min_lr=1e-5, max_momentum=0.95, base_momentum=0.85)
    return opt


BUILDERS = {
    "StepLR": lambda o, **kw: P.StepLR(o, step_size=3, **kw),
    "MultiStepLR": lambda o, **kw: P.MultiStepLR(o, milestones=[2, 5], **kw),
    "ConstantLR": lambda o, **kw: P.ConstantLR(o, factor=0.5, total_iters=4, **kw),
    "LinearLR": lambda o, **kw: P.LinearLR(o, total_iters=6, **kw),
    "ExponentialLR": lambda o, **kw: P.ExponentialLR(o, gamma=0.9, **kw),
    "PolynomialLR": lambda o, **kw: P.PolynomialLR(o, total_iters=6, power=2.0, **kw),
    "CosineAnnealingLR": lambda o, **kw: P.CosineAnnealingLR(o, T_max=5, **kw),
    "CosineAnnealingWarmRestarts": lambda o, **kw: P.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=2, **kw
    ),
    "CyclicLR": lambda o, **kw: P.CyclicLR(o, 0.01, 0.1, step_size_up=2, **kw),
    "OneCycleLR": lambda o, **kw: P.OneCycleLR(o, 0.1, total_steps=20, **kw),
    "ScheduleLR": lambda o, **kw: P.ScheduleLR(o, S.OneCycle(1.0, 50), **kw),
    "LambdaLR": lambda o, **kw: P.LambdaLR(o, lambda e: 0.9**e, **kw),
    "MultiplicativeLR": lambda o, **kw: P.MultiplicativeLR(o, lambda e: 0.9, **kw),
    "SequentialLR": lambda o, **kw: P.SequentialLR(o, sequential_members(o), milestones=[3], **kw),
}


def sequential_members(opt: torch.optim.Optimizer) -> list[Any]:
    return [P.LinearLR(opt, total_iters=3), P.StepLR(opt, step_size=2)]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize(
    ("last_epoch", "exc"),
    [
        (math.inf, OverflowError),  # what torch's warm restarts raise; a ValueError too
        (-math.inf, ValueError),
        (math.nan, ValueError),
        (-5, ValueError),
        (2**60, ValueError),
        (10**400, ValueError),
        ("3", TypeError),
    ],
)
def test_bad_last_epoch_raises_before_anything_changes(name, last_epoch, exc):
    opt = opt_with_initial_lr()
    # SequentialLR's members are built first (they set the lrs, as torch's do)
    members = sequential_members(opt) if name == "SequentialLR" else None
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises(exc, match="last_epoch") as info:
        if members is None:
            BUILDERS[name](opt, last_epoch=last_epoch)
        else:
            P.SequentialLR(opt, members, milestones=[3], last_epoch=last_epoch)
    assert isinstance(info.value, (ValueError, TypeError))
    assert str(opt.param_groups) == str(before)


def test_infinite_last_epoch_raises_overflow_error_like_torch():
    opt = opt_with_initial_lr()
    with pytest.raises(OverflowError):
        T.CosineAnnealingWarmRestarts(opt, T_0=3, last_epoch=math.inf)
    with pytest.raises(OverflowError):
        P.CosineAnnealingWarmRestarts(opt, T_0=3, last_epoch=math.inf)


TAKE_AN_EPOCH = [n for n in BUILDERS if n not in ("LambdaLR", "MultiplicativeLR", "SequentialLR")]


@pytest.mark.parametrize("name", TAKE_AN_EPOCH)
@pytest.mark.parametrize("epoch", [math.nan, math.inf, -1, 10**400])
def test_bad_step_epoch_raises_before_anything_changes(name, epoch):
    sched = BUILDERS[name](make_opt())
    sched.step()
    state = copy.deepcopy(sched.state_dict())
    lrs = [g["lr"] for g in sched.optimizer.param_groups]
    with pytest.raises(ValueError, match="epoch"):
        sched.step(epoch)
    assert sched.state_dict() == state and [g["lr"] for g in sched.optimizer.param_groups] == lrs


# (scheduler, key, bad value, what the message names)
BAD_STATES = [
    ("CosineAnnealingWarmRestarts", "T_0", 0, "['T_0'] must be >= 1"),
    ("CosineAnnealingWarmRestarts", "T_0", -3, "['T_0'] must be >= 1"),
    ("CosineAnnealingWarmRestarts", "T_0", 2.5, "['T_0'] must be an integer"),
    ("CosineAnnealingWarmRestarts", "T_mult", 0, "['T_mult'] must be >= 1"),
    ("CosineAnnealingWarmRestarts", "T_mult", 0.5, "['T_mult'] must be an integer"),
    ("CosineAnnealingWarmRestarts", "T_i", 0, "['T_i'] must be > 0"),
    ("CosineAnnealingWarmRestarts", "T_cur", math.nan, "['T_cur'] must be finite"),
    ("CosineAnnealingWarmRestarts", "eta_min", math.inf, "['eta_min'] must be finite"),
    ("CosineAnnealingWarmRestarts", "last_epoch", -5, "['last_epoch'] must be >= -1"),
    ("CosineAnnealingWarmRestarts", "last_epoch", math.inf, "['last_epoch'] must be finite"),
    ("CosineAnnealingWarmRestarts", "last_epoch", math.nan, "['last_epoch'] must be finite"),
    ("CosineAnnealingWarmRestarts", "last_epoch", "7", "['last_epoch'] must be a real number"),
    ("StepLR", "step_size", 0, "['step_size'] must be >= 1"),
    ("StepLR", "gamma", -1.0, "['gamma'] must be > 0"),
    ("StepLR", "last_epoch", 10**400, "['last_epoch'] must be finite"),
    ("StepLR", "base_lrs", [math.nan, 0.1], "['base_lrs'][0] must be finite"),
    ("StepLR", "base_lrs", [0.1, 0.1, 0.1], "['base_lrs'] has 3 entries, more than"),
    ("StepLR", "base_lrs", "0.1", "['base_lrs'] must be a list"),
    ("StepLR", "_step_count", -1, "['_step_count'] must be >= 0"),
    ("MultiStepLR", "milestones", [5, 2], "['milestones'] must be a Counter"),
    ("MultiStepLR", "milestones", Counter({-1: 1}), "['milestones'] key must be >= 0"),
    ("MultiStepLR", "milestones", Counter({5: 10**9}), "['milestones'] counts 1000000000"),
    ("MultiStepLR", "gamma", math.nan, "['gamma'] must be finite"),
    ("ConstantLR", "factor", 2.0, "['factor'] must be <= 1"),
    ("ConstantLR", "total_iters", -1, "['total_iters'] must be >= 0"),
    ("LinearLR", "start_factor", 0.0, "['start_factor'] must be > 0"),
    ("LinearLR", "end_factor", 2.0, "['end_factor'] must be <= 1"),
    ("LinearLR", "total_iters", 0, "['total_iters'] must be >= 1"),
    ("ExponentialLR", "gamma", 0.0, "['gamma'] must be > 0"),
    ("PolynomialLR", "power", -1.0, "['power'] must be >= 0"),
    ("PolynomialLR", "total_iters", 0, "['total_iters'] must be >= 1"),
    ("CosineAnnealingLR", "T_max", 0, "['T_max'] must be > 0"),
    ("CosineAnnealingLR", "eta_min", math.nan, "['eta_min'] must be finite"),
    ("CyclicLR", "total_size", 0.0, "['total_size'] must be > 0"),
    ("CyclicLR", "step_ratio", 1.5, "['step_ratio'] must be < 1"),
    ("CyclicLR", "mode", "sideways", "['mode'] must be one of"),
    ("CyclicLR", "max_lrs", [0.1], "['max_lrs'] must have 2 entries"),
    ("CyclicLR", "base_momentums", [math.nan, 0.8], "['base_momentums'][0] must be finite"),
    ("CyclicLR", "scale_mode", "daily", "['scale_mode'] must be one of"),
    ("CyclicLR", "cycle_momentum", "yes", "['cycle_momentum'] must be True or False"),
    ("CyclicLR", "_scale_fn_custom", 3, "['_scale_fn_custom'] must be None or a dict"),
    ("OneCycleLR", "total_steps", 0, "['total_steps'] must be >= 1"),
    ("OneCycleLR", "_anneal_func_type", "cosh", "['_anneal_func_type'] must be one of"),
    ("OneCycleLR", "_schedule_phases", [], "['_schedule_phases'] must be a list of 2 or 3"),
    (
        "OneCycleLR",
        "_schedule_phases",
        [{"end_step": 0.0}, {"end_step": 19}],
        "['_schedule_phases'][0] has zero length",
    ),
    ("OneCycleLR", "last_epoch", 21, "['last_epoch'] is 21, past"),
    ("ScheduleLR", "_relative", "yes", "['_relative'] must be True or False"),
    ("ScheduleLR", "last_epoch", math.nan, "['last_epoch'] must be finite"),
    ("LambdaLR", "lr_lambdas", [None], "['lr_lambdas'] must have 2 entries"),
    ("LambdaLR", "lr_lambdas", [3, None], "['lr_lambdas'][0] must be None or a dict"),
    ("LambdaLR", "last_epoch", math.inf, "['last_epoch'] must be finite"),
    ("MultiplicativeLR", "base_lrs", [math.inf, 0.1], "['base_lrs'][0] must be finite"),
    ("SequentialLR", "_milestones", [3, 1], "['_milestones'] must be increasing"),
    ("SequentialLR", "_milestones", [3, 5], "['_milestones'] must have 1 entries"),
    ("SequentialLR", "last_epoch", -9, "['last_epoch'] must be >= -1"),
]


def _bad_state(name: str, key: str, value: Any) -> tuple[Any, dict[str, Any]]:
    sched = BUILDERS[name](make_opt())
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    state[key] = value
    return sched, state


@pytest.mark.parametrize(("name", "key", "value", "match"), BAD_STATES)
def test_bad_state_dict_values_are_refused_and_change_nothing(name, key, value, match):
    sched, bad = _bad_state(name, key, value)
    twin, _ = _bad_state(name, key, value)
    before = copy.deepcopy(sched.state_dict())
    with pytest.raises(ValueError, match=re.escape("state_dict" + match)):
        sched.load_state_dict(bad)
    assert sched.state_dict().keys() == before.keys()
    assert str(sched.state_dict()) == str(before)
    for _ in range(5):  # and it goes on exactly like one that never saw the bad state
        sched.step()
        twin.step()
        assert sched.get_last_lr() == twin.get_last_lr()
        assert group_state(sched.optimizer) == group_state(twin.optimizer)


def test_nested_states_are_checked_before_anything_loads():
    opt = make_opt()
    seq = BUILDERS["SequentialLR"](opt)
    seq.step()
    state = seq.state_dict()
    state["_schedulers"] = copy.deepcopy(state["_schedulers"])
    state["_schedulers"][1]["step_size"] = 0
    state["last_epoch"] = 2
    before = str(seq.state_dict())
    with pytest.raises(ValueError, match=re.escape("state_dict['_schedulers'][1]['step_size']")):
        seq.load_state_dict(state)
    assert str(seq.state_dict()) == before  # the first member was not loaded either
    with pytest.raises(ValueError, match=re.escape("state_dict['_schedulers'] must have 2")):
        seq.load_state_dict({**seq.state_dict(), "_schedulers": [state["_schedulers"][0]]})
    with pytest.raises(ValueError, match="lacks '_schedulers'"):
        seq.load_state_dict({k: v for k, v in seq.state_dict().items() if k != "_schedulers"})

    chained = P.ChainedScheduler([P.StepLR(opt, 2), P.ExponentialLR(opt, 0.9)])
    state = chained.state_dict()
    state["_schedulers"][1] = {**state["_schedulers"][1], "gamma": -1.0}
    with pytest.raises(ValueError, match=re.escape("state_dict['_schedulers'][1]['gamma']")):
        chained.load_state_dict(state)

    warm = P.LinearLR(opt, total_iters=2)
    plateau = P.ReduceLROnPlateau(opt)
    seq = P.SequentialLR(opt, [warm, plateau], milestones=[2])
    state = seq.state_dict()
    state["_plateau_state"] = {**state["_plateau_state"], "mode": "sideways"}
    with pytest.raises(ValueError, match=re.escape("state_dict['_plateau_state']['mode']")):
        seq.load_state_dict(state)
    assert plateau.mode == "min"


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("mode", "sideways", "['mode'] must be one of"),
        ("threshold_mode", "both", "['threshold_mode'] must be one of"),
        ("factor", 1.5, "['factor'] must be < 1"),
        ("patience", -1, "['patience'] must be >= 0"),
        ("best", math.nan, "['best'] must not be NaN"),
        ("min_lrs", [-1.0, 0.0], "['min_lrs'][0] must be >= 0"),
        ("cooldown_counter", 2.5, "['cooldown_counter'] must be an integer"),
    ],
)
def test_plateau_state_is_checked_before_it_loads(key, value, match):
    """torch's own load raises for a bad mode only after it changed the scheduler."""
    sched = P.ReduceLROnPlateau(make_opt())
    sched.step(1.0)
    before = copy.deepcopy(sched.state_dict())
    with pytest.raises(ValueError, match=re.escape("state_dict" + match)):
        sched.load_state_dict({**sched.state_dict(), key: value})
    assert sched.state_dict() == before


def test_state_dict_must_be_a_dict():
    sched = P.StepLR(make_opt(), 2)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        sched.load_state_dict([("last_epoch", 3)])
    with pytest.raises(ValueError, match="must not hold 'optimizer'"):
        sched.load_state_dict({**sched.state_dict(), "optimizer": make_opt()})


# ------------------------------------------------------------------------------------------
# A param group added after the scheduler was built (optimizer.add_param_group)


def add_group(opt: torch.optim.Optimizer, lr: float = 0.2, **keys: Any) -> None:
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": lr, **keys})


GROWING = [
    ("StepLR", {"step_size": 3, "gamma": 0.5}),
    ("MultiStepLR", {"milestones": [2, 5, 5, 9], "gamma": 0.5}),
    ("ConstantLR", {"factor": 0.25, "total_iters": 6}),
    ("LinearLR", {"start_factor": 0.1, "total_iters": 8}),
    ("LinearLR", {"start_factor": 0.5, "end_factor": 0.0, "total_iters": 4}),
    ("ExponentialLR", {"gamma": 0.9}),
    ("PolynomialLR", {"total_iters": 8, "power": 2.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), GROWING, ids=[f"{n}-{k}" for n, k in GROWING])
@pytest.mark.parametrize("added_at", [0, 1, 4, 10])
def test_a_group_added_later_follows_torch(name, kwargs, added_at):
    """The new group's lr is taken from the group and carried forward by the schedule, as
    torch's chainable form does — past the end of a decay to 0 it stays as it was."""
    opt_t, opt_p = make_opt(), make_opt()
    ref, ours = getattr(T, name)(opt_t, **kwargs), getattr(P, name)(opt_p, **kwargs)
    for step in range(30):
        if step == added_at:
            add_group(opt_t)
            add_group(opt_p)
        assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"{name} step {step}")
        ref.step()
        ours.step()
    assert len(ours.base_lrs) == len(ref.base_lrs) == 2  # the new group has none, as in torch


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("StepLR", {"step_size": 2, "gamma": 0.5}), ("PolynomialLR", {"total_iters": 3})],
)
def test_a_state_dict_with_an_added_group_round_trips(name, kwargs):
    """A group added mid-run (for PolynomialLR: after the decay ended, where torch keeps its lr)
    survives a checkpoint: optimizer and scheduler state, loaded into fresh ones, go on as the
    original does, and as torch's do."""
    runs = {}
    for mod in (T, P):
        opt = make_opt()
        sched = getattr(mod, name)(opt, **kwargs)
        for _ in range(4):
            sched.step()
        taken = copy.deepcopy(sched.state_dict())
        add_group(opt, lr=0.4)
        for _ in range(3):
            sched.step()
        runs[mod] = (opt, sched, taken)
    opt, sched, taken = runs[P]
    assert sched.state_dict()["base_lrs"] == runs[T][1].state_dict()["base_lrs"] == [0.1, 0.03]
    assert_same(group_state(runs[T][0]), group_state(opt), 1e-15, "before the checkpoint")

    opt2 = make_opt()
    add_group(opt2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = getattr(P, name)(opt2, **kwargs)
    again.load_state_dict(copy.deepcopy(sched.state_dict()))
    for _ in range(6):
        for o, s_ in (runs[T][:2], (opt, sched), (opt2, again)):
            o.step()
            s_.step()
        assert group_state(opt2) == group_state(opt)
        assert_same(group_state(runs[T][0]), group_state(opt), 1e-14, "after the checkpoint")
    # an earlier state (fewer base lrs than groups) loads; one with more is refused
    again.load_state_dict(copy.deepcopy(taken))
    with pytest.raises(ValueError, match=re.escape("['base_lrs'] has 2 entries, more than")):
        opt1 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        getattr(P, name)(opt1, **kwargs).load_state_dict(copy.deepcopy(taken))


def test_one_cycle_drives_an_added_group_that_has_its_keys_like_torch():
    opt_t, opt_p = make_opt(), make_opt()
    ref = T.OneCycleLR(opt_t, max_lr=0.1, total_steps=40)
    ours = P.OneCycleLR(opt_p, max_lr=0.1, total_steps=40)
    keys = {"initial_lr": 0.02, "max_lr": 0.5, "min_lr": 1e-4, "max_momentum": 0.9}
    keys["base_momentum"] = 0.8
    for step in range(40):
        if step == 5:
            add_group(opt_t, **keys)
            add_group(opt_p, **keys)
        assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"step {step}")
        ref.step()
        ours.step()


def test_one_cycle_names_the_added_group_and_the_keys_it_lacks():
    opt_t, opt_p = make_opt(), make_opt()
    ref = T.OneCycleLR(opt_t, max_lr=0.1, total_steps=40)
    ours = P.OneCycleLR(opt_p, max_lr=0.1, total_steps=40)
    add_group(opt_t)
    add_group(opt_p, initial_lr=0.01)
    with pytest.raises(KeyError):
        ref.step()
    state = copy.deepcopy(ours.state_dict())
    with pytest.raises(KeyError) as info:
        ours.step()
    message = str(info.value)
    assert "param_groups[2]" in message and "'initial_lr'" not in message
    assert "'max_lr', 'min_lr', 'max_momentum', 'base_momentum'" in message
    assert ours.state_dict() == state  # nothing moved


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("CosineAnnealingLR", {"T_max": 5}),
        ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2}),
        ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}),
    ],
)
def test_schedulers_that_need_per_group_values_refuse_an_added_group_like_torch(name, kwargs):
    opt_t, opt_p = make_opt(), make_opt()
    ref, ours = getattr(T, name)(opt_t, **kwargs), getattr(P, name)(opt_p, **kwargs)
    add_group(opt_t)
    add_group(opt_p)
    with pytest.raises(ValueError):  # torch: zip() at the first step that reads base_lrs
        for _ in range(12):
            ref.step()
    lrs = [g["lr"] for g in opt_p.param_groups]
    with pytest.raises(ValueError, match=r"cannot drive param_groups\[2\], which was added"):
        ours.step()
    assert [g["lr"] for g in opt_p.param_groups] == lrs and ours.last_epoch == 0


def test_schedule_lr_adopts_an_added_group_when_relative():
    opt = make_opt()
    s = S.warmup(S.Cosine(T_max=40), steps=4)
    sched = P.ScheduleLR(opt, s)
    add_group(opt, lr=0.3)  # at step 0, where the warmup's factor is 0: 0.3 is its initial lr
    for t in range(1, 10):
        sched.step()
        assert opt.param_groups[2]["lr"] == pytest.approx(0.3 * s(t), rel=1e-15)
    add_group(opt, lr=0.5)  # at step 9: carried forward from there
    for t in range(10, 30):
        sched.step()
        assert opt.param_groups[3]["lr"] == pytest.approx(0.5 * s(t) / s(9), rel=1e-14)

    opt = make_opt()
    sched = P.ScheduleLR(opt, [S.Constant(0.1), S.Constant(0.2)])
    add_group(opt)
    with pytest.raises(ValueError, match=r"param_groups\[2\], added .* has none"):
        sched.step()


def test_chained_scheduler_with_an_added_group_follows_torch():
    def build(mod, opt):
        return mod.ChainedScheduler(
            [
                mod.ConstantLR(opt, factor=0.5, total_iters=3),
                mod.ExponentialLR(opt, gamma=0.9),
                mod.StepLR(opt, step_size=4, gamma=0.5),
            ]
        )

    opt_t, opt_p = make_opt(), make_opt()
    ref, ours = build(T, opt_t), build(P, opt_p)
    for step in range(20):
        if step == 2:
            add_group(opt_t)
            add_group(opt_p)
        assert_same(group_state(opt_t), group_state(opt_p), 1e-12, f"step {step}")
        ref.step()
        ours.step()


def test_sequential_scheduler_carries_an_added_group_across_a_milestone():
    opt = make_opt()
    warm = P.LinearLR(opt, start_factor=0.1, total_iters=5)
    decay = P.ExponentialLR(opt, gamma=0.9)
    sched = P.SequentialLR(opt, [warm, decay], milestones=[5])
    sched.step()
    add_group(opt, lr=0.3)
    lrs = []
    for _ in range(8):
        sched.step()
        lrs.append(opt.param_groups[2]["lr"])
    # during the warmup: the linear ratios; at the milestone the decay takes the group from where
    # it stands; after it, x0.9 a step
    assert lrs[0] == pytest.approx(0.3 * (0.1 + 0.9 * 2 / 5) / (0.1 + 0.9 / 5))
    assert lrs[3] == pytest.approx(lrs[2])
    assert lrs[4:] == pytest.approx([lrs[3] * 0.9**k for k in range(1, 5)])


def test_a_removed_group_is_a_clear_error():
    opt = make_opt()
    sched = P.StepLR(opt, 2)
    del opt.param_groups[1]
    with pytest.raises(ValueError, match="2 base lrs but the optimizer has only 1 param group"):
        sched.step()
