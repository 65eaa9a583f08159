"""pylr.optim and pylr.functional against torch.optim (foreach=False), the oracle."""

from __future__ import annotations

import copy
import itertools
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import pylr
from pylr import functional as F
from pylr import lr_scheduler as P_sched
from pylr import optim as PO
from pylr import schedules as S

SHAPES = [(0,), (1,), (7,), (17,), (4097,), (33, 65)]
BIG = (1 << 20,)
TOL = {torch.float32: (1e-5, 1e-7), torch.float64: (1e-12, 1e-14)}


def make_params(dtype, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def grouped(params, group_kwargs):
    """Three groups over the params, each with its own hyperparameters."""
    n = len(params)
    cuts = [0, n // 3, 2 * n // 3, n]
    return [{"params": params[cuts[i] : cuts[i + 1]], **group_kwargs[i]} for i in range(3)]


def run_pair(torch_cls, pylr_cls, kwargs, group_kwargs, dtype, steps=100, shapes=SHAPES):
    """Train the same params with torch (foreach=False) and pylr on the same random grads."""
    init = make_params(dtype, shapes)
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    opt_ref = torch_cls(grouped(ref, group_kwargs), foreach=False, **kwargs)
    opt_ours = pylr_cls(grouped(ours, group_kwargs), **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for a, b in zip(ref, ours, strict=True):
            g = torch.randn(a.shape, generator=gen, dtype=torch.float64).to(dtype)
            a.grad = g.clone()
            b.grad = g.clone()
        opt_ref.step()
        opt_ours.step()
    return ref, ours, opt_ref, opt_ours


def assert_close(ref, ours, dtype):
    rtol, atol = TOL[dtype]
    for i, (a, b) in enumerate(zip(ref, ours, strict=True)):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=rtol, atol=atol, msg=f"tensor {i}")


def assert_states_close(opt_ref, opt_ours, ref, ours, dtype):
    rtol, atol = TOL[dtype]
    for a, b in zip(ref, ours, strict=True):
        sa, sb = opt_ref.state[a], opt_ours.state[b]
        assert set(sa) == set(sb)
        for key in sa:
            assert sb[key].dtype == sa[key].dtype and sb[key].shape == sa[key].shape, key
            torch.testing.assert_close(sb[key], sa[key], rtol=rtol, atol=atol, msg=key)


ADAM_GRID = [
    dict(amsgrad=a, maximize=m, weight_decay=w, betas=b)
    for a, m, w, b in itertools.product(
        (False, True), (False, True), (0.0, 0.1), ((0.9, 0.999), (0.3, 0.9))
    )
]
ADAM_GROUPS = [
    {"lr": 1e-2},
    {"lr": 3e-3, "eps": 1e-6, "weight_decay": 0.05},
    {"lr": 2e-2, "betas": (0.8, 0.99)},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kwargs", ADAM_GRID, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items())
)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_matches_torch(cls, kwargs, dtype):
    ref, ours, opt_ref, opt_ours = run_pair(
        getattr(torch.optim, cls), getattr(PO, cls), kwargs, ADAM_GROUPS, dtype
    )
    assert_close(ref, ours, dtype)
    assert_states_close(opt_ref, opt_ours, ref, ours, dtype)


SGD_GRID = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=w, maximize=x)
    for m, d, n, w, x in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.01), (False, True)
    )
    if not (n and (m == 0 or d != 0))
]
SGD_GROUPS = [{"lr": 1e-2}, {"lr": 3e-3, "weight_decay": 0.02}, {"lr": 5e-2, "dampening": 0.0}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kwargs", SGD_GRID, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items())
)
def test_sgd_matches_torch(kwargs, dtype):
    groups = [dict(g) for g in SGD_GROUPS]
    if kwargs["nesterov"]:
        for g in groups:
            g.pop("dampening", None)
    ref, ours, opt_ref, opt_ours = run_pair(torch.optim.SGD, PO.SGD, kwargs, groups, dtype)
    assert_close(ref, ours, dtype)
    assert_states_close(opt_ref, opt_ours, ref, ours, dtype)


@pytest.mark.parametrize(
    ("torch_cls", "pylr_cls", "kwargs"),
    [
        (torch.optim.AdamW, PO.AdamW, {"amsgrad": True}),
        (torch.optim.Adam, PO.Adam, {"weight_decay": 0.01}),
        (torch.optim.SGD, PO.SGD, {"momentum": 0.9, "nesterov": True}),
    ],
)
def test_a_million_elements(torch_cls, pylr_cls, kwargs):
    groups = [{"lr": 1e-2}, {"lr": 1e-3}, {"lr": 3e-3}]
    shapes = [BIG, (3,), (5, 5)]
    ref, ours, *_ = run_pair(torch_cls, pylr_cls, kwargs, groups, torch.float32, 100, shapes)
    assert_close(ref, ours, torch.float32)


# --------------------------------------------------------------------------------------------
# half precision: fp32 arithmetic, one rounding per stored value


def reference_half_step(cls_name, params, grads, states, kwargs, lr):
    """torch's algorithm in float32 on widened copies, narrowed back once per step."""
    wide = [torch.nn.Parameter(p.float()) for p in params]
    opt = getattr(torch.optim, cls_name)(wide, lr=lr, foreach=False, **kwargs)
    for w, g, st in zip(wide, grads, states, strict=True):
        w.grad = g.float()
        if st:
            opt.state[w] = {k: (v.float() if k != "step" else v.clone()) for k, v in st.items()}
    opt.step()
    for p, w, st in zip(params, wide, states, strict=True):
        p.data.copy_(w.detach().to(p.dtype))
        st.clear()
        st.update({k: (v.to(p.dtype) if k != "step" else v) for k, v in opt.state[w].items()})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize(
    ("cls_name", "kwargs"),
    [
        ("AdamW", {"weight_decay": 0.1}),
        ("Adam", {"amsgrad": True}),
        ("SGD", {"momentum": 0.9, "weight_decay": 0.01}),
    ],
)
def test_half_precision_against_fp32_arithmetic(cls_name, kwargs, dtype):
    params = make_params(dtype, [(7,), (17,), (4097,), (31, 33)])
    ref_params = [p.clone() for p in params]
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    opt = getattr(PO, cls_name)(ours, lr=1e-2, **kwargs)
    states = [{} for _ in params]
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen).to(dtype) for p in params]
        for p, g in zip(ours, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        reference_half_step(cls_name, ref_params, grads, states, kwargs, 1e-2)
    # the only differences left are fp32 rounding inside an element's update (fma vs not) that
    # flip a final rounding: at most one unit in the last place of the stored type
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    for a, b in zip(ref_params, ours, strict=True):
        torch.testing.assert_close(b.detach().float(), a.float(), rtol=ulp, atol=1e-6)
    for st, p in zip(states, ours, strict=True):
        for key, v in st.items():
            if key != "step":
                torch.testing.assert_close(
                    opt.state[p][key].float(), v.float(), rtol=ulp, atol=1e-6
                )


def test_bf16_sgd_updates_every_element():
    """torch 2.13's fused CPU SGD skips bf16/fp16 updates in its vector loop; pylr must not."""
    for dtype in (torch.bfloat16, torch.float16):
        p = torch.nn.Parameter(torch.ones(100, dtype=dtype))
        p.grad = torch.ones(100, dtype=dtype)
        PO.SGD([p], lr=0.5).step()
        assert torch.all(p.detach() == 0.5)


# --------------------------------------------------------------------------------------------
# state dicts, AMP, threads, schedule fusion


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("AdamW", {"amsgrad": True}), ("Adam", {"weight_decay": 0.01}), ("SGD", {"momentum": 0.9})],
)
def test_state_dicts_interchange_with_torch_mid_training(name, kwargs):
    def train(opt, params, gen, steps):
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()

    init = make_params(torch.float32, [(7,), (4097,)])
    for first, second in ((PO, torch.optim), (torch.optim, PO)):
        a = [torch.nn.Parameter(t.clone()) for t in init]
        opt_a = getattr(first, name)(a, lr=1e-2, **kwargs)
        train(opt_a, a, torch.Generator().manual_seed(0), 10)
        # continue once in the same optimizer, once in the other library's, from a copy
        b = [torch.nn.Parameter(t.detach().clone()) for t in a]
        opt_b = getattr(second, name)(b, lr=1e-2, **kwargs)
        opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
        train(opt_a, a, torch.Generator().manual_seed(1), 10)
        train(opt_b, b, torch.Generator().manual_seed(1), 10)
        assert_close(a, b, torch.float32)
        for pa, pb in zip(a, b, strict=True):
            for key, va in opt_a.state[pa].items():
                torch.testing.assert_close(opt_b.state[pb][key], va, rtol=1e-5, atol=1e-7)
        assert opt_b.state[b[0]].get("step", torch.tensor(0.0)).dtype == torch.float32


def test_grad_scaler_skips_inf_steps_and_unscales_finite_ones():
    model = torch.nn.Linear(4, 3)
    opt = PO.AdamW(model.parameters(), lr=1e-2)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(8, 4)

    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(model(x).sum() * math.inf).backward()
    scaler.step(opt)
    scaler.update()
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
        assert not opt.state[p] or float(opt.state[p]["step"]) == 0.0
    assert scaler.get_scale() == 2.0**9

    # a finite step: same as torch's AdamW on the unscaled gradient
    ref = copy.deepcopy(model)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2, foreach=False)
    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    ref(x).square().mean().backward()
    scaler.step(opt)
    opt_ref.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
        assert float(opt.state[p]["step"]) == 1.0


def test_one_and_two_threads_give_identical_results():
    results = []
    before = pylr.get_num_threads()
    try:
        for threads in (1, 2):
            pylr.set_num_threads(threads)
            *_, ours = run_pair(
                torch.optim.AdamW, PO.AdamW, {}, ADAM_GROUPS, torch.float32, 5, [*SHAPES, (70_001,)]
            )[:2]
            results.append([p.detach().clone() for p in ours])
    finally:
        pylr.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def fused_vs_scheduler(make, sched, steps, key):
    """The same params trained by ``make(params, schedule=sched)`` and by ``make(params)`` driven
    by ScheduleLR; after every step ``key`` of every group and the params agree exactly.
    Returns the fused optimizer, its params, and group 0's ``key`` per step."""
    init = make_params(torch.float32, [(17,), (300,)])
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    fused, plain = make(a, schedule=sched), make(b)
    driver = P_sched.ScheduleLR(plain, sched)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(steps):
        for x, y in zip(a, b, strict=True):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = x.grad.clone()
        fused.step()
        plain.step()
        assert [g[key] for g in fused.param_groups] == [g[key] for g in plain.param_groups]
        seen.append(fused.param_groups[0][key])
        driver.step()
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    return fused, a, seen


def test_schedule_fusion_equals_a_scheduler():
    def make(p, **kw):
        return PO.AdamW([{"params": p[:1], "lr": 0.1}, {"params": p[1:], "lr": 0.01}], **kw)

    fused, a, _ = fused_vs_scheduler(make, S.warmup(S.Cosine(T_max=40), steps=10), 60, "lr")
    # the state dict keeps the schedule as JSON-safe data and restores it
    sd = fused.state_dict()
    assert sd["param_groups"][0]["schedule"]["type"] == "Scaled"
    other = PO.AdamW([{"params": a[:1], "lr": 0.1}, {"params": a[1:], "lr": 0.01}])
    other.load_state_dict(sd)
    assert other.param_groups[1]["schedule"] == fused.param_groups[1]["schedule"]
    assert other.param_groups[1]["schedule_step"] == 60

    per_group = PO.SGD(
        [{"params": a[:1]}, {"params": a[1:]}], lr=1.0, schedule=[S.Constant(0.5), None]
    )
    assert per_group.param_groups[0]["lr"] == 0.5 and per_group.param_groups[1]["lr"] == 1.0
    with pytest.raises(ValueError, match="one per param"):
        PO.SGD([{"params": a[:1]}, {"params": a[1:]}], lr=1.0, schedule=[S.Constant(0.5)])


@pytest.mark.parametrize(
    "cls,kwargs,key",
    [(PO.SGD, {"momentum": 0.9, "nesterov": True}, "momentum"), (PO.Adam, {}, "betas")],
)
def test_fused_schedule_with_momentum_equals_schedule_lr(cls, kwargs, key):
    """A schedule with momentum (OneCycle) drives SGD's momentum / Adam's beta1 when fused,
    as ScheduleLR (cycle_momentum=True) does."""
    sched = S.OneCycle(max_lr=0.05, total_steps=40)
    _, _, moms = fused_vs_scheduler(lambda p, **kw: cls(p, lr=1.0, **kwargs, **kw), sched, 40, key)
    first = [m[0] if key == "betas" else m for m in moms]
    np.testing.assert_array_equal(first, sched.momentum_values(40))


def test_torch_schedulers_and_hand_edits_drive_the_lr():
    init = make_params(torch.float32, [(50,)])
    a = [torch.nn.Parameter(init[0].clone())]
    b = [torch.nn.Parameter(init[0].clone())]
    opt_a = PO.SGD(a, lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b, lr=0.1, momentum=0.9, foreach=False)
    sa = torch.optim.lr_scheduler.StepLR(opt_a, step_size=3, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(opt_b, step_size=3, gamma=0.5)
    for i in range(12):
        g = torch.randn(50)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        if i == 7:
            opt_a.param_groups[0]["lr"] = opt_b.param_groups[0]["lr"] = 0.3
        opt_a.step()
        opt_b.step()
        sa.step()
        sb.step()
    assert torch.equal(a[0], b[0])


def test_real_training_loop_with_zero_grad_set_to_none_matches_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    twin = copy.deepcopy(model)
    opt = PO.AdamW(model.parameters(), lr=1e-2)
    opt_t = torch.optim.AdamW(twin.parameters(), lr=1e-2, foreach=False)
    x, y = torch.randn(64, 10), torch.randint(0, 2, (64,))
    for _ in range(30):
        for m, o in ((model, opt), (twin, opt_t)):
            o.zero_grad()  # set_to_none=True: new grad tensors every iteration
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_closure_none_grads_add_param_group_and_deepcopy():
    w = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = PO.Adam([w, frozen], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * 2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 6.0
    assert frozen.grad is None and len(opt.state[frozen]) == 0
    assert torch.all(w < 1)

    extra = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    extra.grad = torch.ones(2)
    opt.step()
    assert torch.allclose(extra.detach(), torch.full((2,), -0.5))

    clone = copy.deepcopy(opt)
    p2 = clone.param_groups[0]["params"][0]
    assert p2 is not w
    before = w.detach().clone()
    p2.grad = torch.ones(3)
    clone.step()
    assert torch.equal(w.detach(), before) and not torch.equal(p2.detach(), before)

    # a parameter whose storage is swapped (p.data = ...) is picked up, not written behind
    w.data = torch.zeros(3)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.all(w.detach() < 0)


def test_step_hooks_run():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    opt = PO.SGD([p], lr=1.0)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.step()
    assert calls == ["pre", "post"] and torch.equal(p.detach(), torch.zeros(2))


def test_nan_and_inf_gradients_propagate_like_torch():
    for torch_cls, pylr_cls in ((torch.optim.Adam, PO.Adam), (torch.optim.SGD, PO.SGD)):
        a = torch.nn.Parameter(torch.ones(20))
        b = torch.nn.Parameter(torch.ones(20))
        g = torch.ones(20)
        g[3], g[11] = math.nan, math.inf
        a.grad, b.grad = g.clone(), g.clone()
        torch_cls([a], lr=0.1, foreach=False).step()
        pylr_cls([b], lr=0.1).step()
        torch.testing.assert_close(b, a, equal_nan=True)


# --------------------------------------------------------------------------------------------
# bad input: a clear error naming the tensor, and nothing modified


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_untouched(opt, params, snap):
    values, sd = snap
    for p, v in zip(params, values, strict=True):
        assert torch.equal(p.detach(), v)
    now = opt.state_dict()
    assert now["state"].keys() == sd["state"].keys()
    for k, st in sd["state"].items():
        for key, v in st.items():
            assert torch.equal(now["state"][k][key], v)


@pytest.mark.parametrize(
    ("setup", "exc", "match"),
    [
        (
            lambda ps: setattr(ps[1], "grad", torch.randn(5, 4).t()),
            ValueError,
            r"param_groups\[0\]\['params'\]\[1\].*strides",
        ),
        (lambda ps: ps[0].__setattr__("grad", torch.randn(4).to_sparse()), RuntimeError, "sparse"),
    ],
    ids=["grad-strides", "sparse-grad"],
)
def test_bad_grads_rejected_before_anything_changes(setup, exc, match):
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4, 5))]
    opt = PO.AdamW(params, lr=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    snap = snapshot(opt, params)
    for p in params:
        p.grad = torch.randn_like(p)
    setup(params)
    with pytest.raises(exc, match=match):
        opt.step()
    assert_untouched(opt, params, snap)


def test_non_finite_hyperparameters_rejected_before_anything_changes():
    params = [torch.nn.Parameter(torch.randn(4))]
    for cls in (PO.AdamW, PO.SGD):
        opt = cls(params, lr=0.1)
        params[0].grad = torch.randn(4)
        opt.step()
        snap = snapshot(opt, params)
        opt.param_groups[0]["lr"] = math.nan
        with pytest.raises(ValueError, match="lr"):
            opt.step()
        assert_untouched(opt, params, snap)


@pytest.mark.parametrize(
    ("build", "exc", "match"),
    [
        (lambda p: PO.Adam(p, lr=-1.0), ValueError, "Invalid learning rate: -1.0"),
        (lambda p: PO.Adam(p, betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0"),
        (lambda p: PO.AdamW(p, eps=-1), ValueError, "Invalid epsilon value"),
        (lambda p: PO.AdamW(p, weight_decay=-0.1), ValueError, "Invalid weight_decay value"),
        (lambda p: PO.AdamW(p, lr=math.inf), ValueError, "lr"),
        (lambda p: PO.SGD(p, lr=0.1, momentum=-1), ValueError, "Invalid momentum value"),
        (lambda p: PO.SGD(p, lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
        (lambda p: PO.SGD(p, lr=math.nan), ValueError, "lr"),
        (lambda p: PO.Adam(p, differentiable=True), ValueError, "differentiable"),
        (lambda p: PO.SGD(p, differentiable=True), ValueError, "differentiable"),
        (lambda p: PO.Adam([], lr=0.1), ValueError, "empty parameter list"),
    ],
)
def test_bad_constructor_arguments(build, exc, match):
    with pytest.raises(exc, match=match):
        build([torch.nn.Parameter(torch.ones(2))])


def test_unsupported_tensors_are_named():
    complex_param = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    complex_param.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\].*complex"):
        PO.Adam([complex_param]).step()
    half_int = torch.nn.Parameter(torch.ones(3, dtype=torch.float32))
    opt = PO.SGD([half_int], lr=0.1)
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    meta.grad = torch.empty(3, device="meta")
    with pytest.raises(RuntimeError, match=r"meta.*CPU and CUDA tensors only"):
        PO.SGD([meta], lr=0.1).step()
    del opt


def test_functional_api_matches_torch_and_checks_input():
    init = make_params(torch.float32, SHAPES)
    ours = [t.clone() for t in init]
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    m = [torch.zeros_like(t) for t in init]
    v = [torch.zeros_like(t) for t in init]
    vmax = [torch.zeros_like(t) for t in init]
    steps = [torch.tensor(0.0) for _ in init]
    opt = torch.optim.AdamW(ref, lr=1e-2, amsgrad=True, foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        for r, g in zip(ref, grads, strict=True):
            r.grad = g.clone()
        opt.step()
        assert F.adamw_(ours, grads, m, v, vmax, steps, lr=1e-2, amsgrad=True)
    assert_close(ref, ours, torch.float32)
    assert all(float(s) == 20 for s in steps)

    bufs = [None] * len(init)
    sgd_ours = [t.clone() for t in init]
    sgd_ref = [torch.nn.Parameter(t.clone()) for t in init]
    opt = torch.optim.SGD(sgd_ref, lr=1e-2, momentum=0.9, foreach=False)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=gen) for t in init]
        for r, g in zip(sgd_ref, grads, strict=True):
            r.grad = g.clone()
        opt.step()
        F.sgd_(sgd_ours, grads, bufs, lr=1e-2, momentum=0.9)
    assert_close(sgd_ref, sgd_ours, torch.float32)

    p = [torch.ones(3)]
    with pytest.raises(ValueError, match=r"params\[0\]: grads has shape \(4,\)"):
        F.sgd_(p, [torch.ones(4)], [None], lr=0.1)
    with pytest.raises(TypeError, match="dtype"):
        F.sgd_(p, [torch.ones(3, dtype=torch.float64)], [None], lr=0.1)
    with pytest.raises(ValueError, match="beta1"):
        F.adam_(
            p,
            [torch.ones(3)],
            [torch.zeros(3)],
            [torch.zeros(3)],
            None,
            [torch.tensor(0.0)],
            beta1=1.5,
        )
    with pytest.raises(TypeError, match="state_steps"):
        F.adam_(
            p,
            [torch.ones(3)],
            [torch.zeros(3)],
            [torch.zeros(3)],
            None,
            [torch.tensor(0, dtype=torch.int64)],
        )
    assert torch.equal(p[0], torch.ones(3))
    found = torch.tensor(1.0)
    assert not F.sgd_(p, [torch.ones(3)], [None], lr=0.1, found_inf=found)
    assert torch.equal(p[0], torch.ones(3))


@pytest.mark.skipif(
    pylr._core.kernel_isa() == "generic", reason="this CPU runs only the generic kernels"
)
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_every_instruction_set_computes_the_same(isa):
    """PYLR_KERNELS narrows the kernel choice; each set must agree with torch. The generic set is
    compiled without FMA, so it rounds torch's fused multiply-adds twice: a looser tolerance."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys; sys.path.insert(0, {tests_dir!r})\n"
        "import torch, pylr._core as c\n"
        "from test_optim import run_pair, assert_close, ADAM_GROUPS, SGD_GROUPS, TOL\n"
        "from pylr import optim as PO\n"
        f"if {isa!r} == 'generic':\n"
        "    TOL.update({torch.float32: (1e-4, 1e-6), torch.float64: (1e-10, 1e-12)})\n"
        "for dt in (torch.float32, torch.float64):\n"
        "    kw = {'amsgrad': True}\n"
        "    r, o, *_ = run_pair(torch.optim.AdamW, PO.AdamW, kw, ADAM_GROUPS, dt, 20)\n"
        "    assert_close(r, o, dt)\n"
        "    r, o, *_ = run_pair(torch.optim.SGD, PO.SGD, {'momentum': 0.9}, SGD_GROUPS, dt, 20)\n"
        "    assert_close(r, o, dt)\n"
        "print(c.kernel_isa())\n"
    )
    env = dict(os.environ, PYLR_KERNELS=isa)
    # run outside the checkout, so that the installed pylr (with its _core) is imported
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


HALF_STEPS_CODE = """
import sys, torch, pylr._core as c
from pylr import optim as PO
out = {"isa": c.kernel_isa()}
# sizes around the 16-element blocks half-precision params are converted in
sizes = [0, 1, 15, 16, 17, 31, 33, 1000, 4099]
cases = [
    ("adamw", torch.float16, None), ("adamw", torch.float16, torch.float32),
    ("adamw", torch.float16, torch.bfloat16), ("amsgrad", torch.float16, torch.float32),
    ("sgd", torch.float16, None), ("sgd", torch.float16, torch.bfloat16),
    ("nesterov", torch.float16, torch.float32),
    ("adamw", torch.bfloat16, None),
]
for name, dtype, state_dtype in cases:
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(n, generator=g).to(dtype).requires_grad_() for n in sizes]
    kw = {} if state_dtype is None else {"state_dtype": state_dtype}
    if name == "adamw":
        opt = PO.AdamW(ps, lr=1e-2, weight_decay=0.1, **kw)
    elif name == "amsgrad":
        opt = PO.Adam(ps, lr=1e-2, amsgrad=True, **kw)
    else:
        nesterov = name == "nesterov"
        opt = PO.SGD(ps, lr=1e-2, momentum=0.9, nesterov=nesterov, weight_decay=0.01, **kw)
    norms = []
    for _ in range(4):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        norms.append(opt.clip_grad_norm_(5.0))  # folded into the step
        opt.step()
    out[name + str(dtype) + str(state_dtype)] = [torch.stack(norms)] + [
        p.detach().clone() for p in ps
    ] + [
        t.clone() for st in opt.state.values() for t in st.values() if t.dim() > 0
    ]
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (PO.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
        (PO.Adam, {"lr": 1e-2, "amsgrad": True, "state_dtype": torch.float32}),
        (PO.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
        (PO.SGD, {"lr": 1e-2, "momentum": 0.9, "state_dtype": torch.float32}),
    ],
    ids=["AdamW", "Adam-amsgrad-f32-state", "SGD-nesterov", "SGD-f32-state"],
)
def test_float16_blocks_step_as_single_elements(cls, kwargs):
    """On any instruction set: a float16 tensor of n elements (stepped 16 at a time, the tail one
    by one) ends bit for bit where the same values as n one-element tensors end (each stepped
    by the one-element conversions), over steps. (bfloat16 state rounds stochastically with
    bits salted by each tensor's place: the emulation tests in test_cuda_host cover it.)"""
    n = 53  # three blocks and a tail
    gen = torch.Generator().manual_seed(1)
    init = (torch.randn(n, generator=gen) * 3).to(torch.float16)
    whole = torch.nn.Parameter(init.clone())
    single = [torch.nn.Parameter(init[i : i + 1].clone()) for i in range(n)]
    ow, os_ = cls([whole], **kwargs), cls(single, **kwargs)
    for _ in range(4):
        g = torch.randn(n, generator=gen).to(torch.float16)
        whole.grad = g.clone()
        for i, p in enumerate(single):
            p.grad = g[i : i + 1].clone()
        ow.step()
        os_.step()
    as_int = torch.int16
    assert torch.equal(
        whole.detach().view(as_int), torch.cat([p.detach() for p in single]).view(as_int)
    )
    for key, value in ow.state[whole].items():
        if value.dim() == 0:
            continue
        pieces = torch.cat([os_.state[p][key] for p in single])
        wide = {2: torch.int16, 4: torch.int32}[value.element_size()]
        assert torch.equal(value.view(wide), pieces.view(wide)), key


def test_half_precision_params_step_to_the_same_bits_on_every_instruction_set(tmp_path):
    """float16 params (and float16 / bfloat16 grads in the norm of clip_grad_norm_) are widened
    and narrowed 16 elements at a time with F16C (AVX2) or AVX-512 conversions, elsewhere one
    element at a time: every set with FMA gives the same bits (the generic set, without FMA,
    rounds the update differently and is not compared)."""
    if pylr._core.kernel_isa() != "avx512":
        pytest.skip("this CPU has no AVX-512 kernels to compare the AVX2 ones with")
    results = {}
    for isa in ("avx2", "avx512"):
        path = tmp_path / f"{isa}.pt"
        env = dict(os.environ, PYLR_KERNELS=isa)
        run = subprocess.run(
            [sys.executable, "-c", HALF_STEPS_CODE, str(path)],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        results[isa] = torch.load(path)
        assert results[isa].pop("isa") == isa
    a, b = results["avx2"], results["avx512"]
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key])
        for i, (x, y) in enumerate(zip(a[key], b[key], strict=True)):
            as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
            assert x.dtype == y.dtype and torch.equal(x.view(as_int), y.view(as_int)), (key, i)


def test_torch_compile_takes_the_step_as_a_silent_graph_break():
    """Dynamo cannot trace the C++ step; it must run it eagerly without a warning per call."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        opt = PO.AdamW(model.parameters(), lr=1e-2)

        def train_step(x, model=model, opt=opt):
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.detach()

        fn = torch.compile(train_step, backend="eager") if compiled else train_step
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for i in range(3):
                fn(torch.randn(16, 8, generator=torch.Generator().manual_seed(i)))
        assert [str(w.message) for w in seen] == []
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_fused_schedule_values_are_checked_before_anything_changes():
    """The step evaluates fused schedules in C++; a value no optimizer can take (a negative lr,
    Adam's beta1 >= 1) is refused naming the group, with nothing modified."""
    p = torch.nn.Parameter(torch.ones(5))
    q = torch.nn.Parameter(torch.ones(5))
    opt = PO.SGD([{"params": [p]}, {"params": [q]}], lr=0.1, schedule=[None, S.Constant(-0.5)])
    p.grad, q.grad = torch.ones(5), torch.ones(5)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['schedule'\] gives lr -0.5"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(5)) and torch.equal(q.detach(), torch.ones(5))
    assert opt.param_groups[1]["schedule_step"] == 0
    cyc = S.Cyclic(base_lr=0.01, max_lr=0.1, step_size_up=4, base_momentum=0.9, max_momentum=1.2)
    adam = PO.Adam([p], lr=1.0, schedule=cyc)
    with pytest.raises(ValueError, match=r"momentum 1\.2"):
        adam.step()
    assert torch.equal(p.detach(), torch.ones(5)) and len(adam.state[p]) == 0


def test_fused_schedule_swapped_or_removed_mid_run():
    a = [torch.nn.Parameter(torch.ones(4))]
    b = [torch.nn.Parameter(torch.ones(4))]
    fused = PO.SGD(a, lr=1.0, momentum=0.9, schedule=S.Exponential(0.5))
    plain = torch.optim.SGD(b, lr=1.0, momentum=0.9, foreach=False)
    lrs = [1.0, 0.5, 0.25, 0.3, 0.3, 0.05, 0.05]
    for i, lr in enumerate(lrs):
        if i == 3:  # a new schedule, from its own step 0
            fused.param_groups[0]["schedule"] = S.Constant(0.3)
            fused.param_groups[0]["schedule_step"] = 0
        if i == 5:  # no schedule: the group's own lr
            fused.param_groups[0]["schedule"] = None
            fused.param_groups[0]["lr"] = 0.05
        plain.param_groups[0]["lr"] = lr
        a[0].grad = torch.full((4,), float(i + 1))
        b[0].grad = torch.full((4,), float(i + 1))
        fused.step()
        plain.step()
        assert fused.param_groups[0]["lr"] == lr
        assert torch.equal(a[0], b[0])
