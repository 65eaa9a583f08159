"""Gradient clipping folded into the step: ``opt.clip_grad_norm_`` against
``torch.nn.utils.clip_grad_norm_`` followed by torch's optimizer (foreach=False)."""

from __future__ import annotations

import math

import pytest
import torch

import pylr
from pylr import optim as PO
from pylr import schedules as S
from pylr.lr_scheduler import ScheduleLR

NORMS = [2.0, 1.0, math.inf, -math.inf, 0.0, 3.0, 0.5, -1.0]
# 1 << 16 is the C++ pass's chunk: sizes around it and several chunks
SHAPES = [(1,), (7,), (33, 65), (1 << 16,), ((1 << 16) + 3,), (3, 1 << 16)]


def grads_pair(dtype, shapes=SHAPES, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    for x, y in zip(a, b, strict=True):
        g = (torch.randn(x.shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        x.grad, y.grad = g.clone(), g.clone()
    return a, b


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.bfloat16, torch.float16],
    ids=["f32", "f64", "bf16", "f16"],
)
@pytest.mark.parametrize("norm_type", NORMS, ids=str)
def test_total_norm_equals_torch(norm_type, dtype):
    a, b = grads_pair(dtype)
    exact = torch.linalg.vector_norm(
        torch.cat([p.grad.double().flatten() for p in a]), norm_type
    ).item()
    before = [p.grad.clone() for p in a]
    opt = PO.SGD(a, lr=0.1)
    ours = opt.clip_grad_norm_(1.0, norm_type=norm_type)
    ref = torch.nn.utils.clip_grad_norm_(b, 1.0, norm_type=norm_type)
    # the call reads the grads and leaves them as they were (the step applies the coefficient)
    assert all(torch.equal(p.grad, g) for p, g in zip(a, before, strict=True))
    assert ours.dtype == ref.dtype and ours.shape == ()
    if norm_type == 0:
        # torch's 0-"norm" is over the per-tensor norms: the grads with a nonzero element
        assert float(ours) == float(ref) == len(a)
        return
    # pylr accumulates in double: the exact norm rounded to the dtype, within its rounding (a
    # half-precision norm is returned in that dtype, as torch's: float16 overflows to inf and
    # rounds tiny norms to subnormals), and close to torch's (which accumulates half-precision
    # grads in float, per tensor)
    rtol, torch_rtol = {
        torch.float32: (1e-6, 2e-5),
        torch.float64: (1e-13, 1e-13),
        torch.bfloat16: (2.0**-8, 2.0**-6),
        torch.float16: (2.0**-10, 2.0**-8),
    }[dtype]
    tiny = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the least subnormal
    expected = float(torch.tensor(exact, dtype=torch.float64).to(dtype))
    if math.isinf(expected):
        assert float(ours) == float(ref) == expected
        return
    assert math.isclose(float(ours), expected, rel_tol=rtol, abs_tol=tiny)
    assert math.isclose(float(ours), float(ref), rel_tol=torch_rtol, abs_tol=4 * tiny)


@pytest.mark.parametrize(
    ("torch_cls", "pylr_cls", "kwargs"),
    [
        (torch.optim.AdamW, PO.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
        (torch.optim.Adam, PO.Adam, {"lr": 1e-2, "amsgrad": True}),
        (torch.optim.SGD, PO.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    ],
    ids=["AdamW", "Adam-amsgrad", "SGD-nesterov"],
)
@pytest.mark.parametrize("max_norm", [0.5, 50.0, math.inf])
def test_clip_then_step_equals_torch(torch_cls, pylr_cls, kwargs, max_norm):
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(s, generator=gen) for s in SHAPES[:4]]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    ours = pylr_cls([{"params": a[:2]}, {"params": a[2:], "lr": 3e-3}], **kwargs)
    ref = torch_cls([{"params": b[:2]}, {"params": b[2:], "lr": 3e-3}], foreach=False, **kwargs)
    for step in range(6):
        for x, y in zip(a, b, strict=True):
            g = torch.randn(x.shape, generator=gen) * (step + 1)
            x.grad, y.grad = g.clone(), g.clone()
        n_ours = ours.clip_grad_norm_(max_norm)
        n_ref = torch.nn.utils.clip_grad_norm_(b, max_norm)
        torch.testing.assert_close(n_ours, n_ref, rtol=2e-6, atol=0)
        ours.step()
        ref.step()
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-5, atol=1e-6)


def test_grads_are_read_unclipped_between_clip_and_step():
    a, _ = grads_pair(torch.float32, shapes=[(100,)], scale=10.0)
    before = a[0].grad.clone()
    opt = PO.SGD(a, lr=1.0)
    norm = opt.clip_grad_norm_(1.0)
    assert float(norm) > 1.0 and torch.equal(a[0].grad, before)
    p_before = a[0].detach().clone()
    opt.step()
    step = p_before - a[0].detach()
    # the step used the clipped grad: norm of the update = max_norm (lr 1, plain SGD)
    assert math.isclose(float(step.norm()), 1.0, rel_tol=1e-5)


def test_repeated_clipping_and_zero_grad():
    a, b = grads_pair(torch.float32, shapes=[(50,), (7, 3)], scale=5.0)
    opt = PO.SGD(a, lr=1.0)
    first = opt.clip_grad_norm_(2.0)
    second = opt.clip_grad_norm_(1.0)  # sees the grads as the first clip left them
    t1 = torch.nn.utils.clip_grad_norm_(b, 2.0)
    t2 = torch.nn.utils.clip_grad_norm_(b, 1.0)
    torch.testing.assert_close(first, t1)
    torch.testing.assert_close(second, t2, rtol=1e-5, atol=0)
    # zero_grad drops what is pending: new grads step unclipped
    opt.zero_grad()
    for p in a:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in a]
    opt.step()
    for p, q in zip(a, before, strict=True):
        assert torch.equal(p.detach(), q - 1.0)


def test_a_step_consumes_the_coefficient():
    a, _ = grads_pair(torch.float32, shapes=[(10,)], scale=100.0)
    opt = PO.SGD(a, lr=1.0)
    opt.clip_grad_norm_(1e-3)
    opt.step()
    a[0].grad = torch.ones(10)
    before = a[0].detach().clone()
    opt.step()  # no clip this time: the full grad
    assert torch.equal(a[0].detach(), before - 1.0)


def test_grad_scaler_unscale_clip_step_equals_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    opt = PO.AdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, foreach=False)
    s1 = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    s2 = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        x = torch.randn(32, 6, generator=gen)
        blow_up = step == 2  # an inf loss: both skip the step, and the pending clip goes too
        for m, o, sc in ((model, opt, s1), (twin, ref, s2)):
            o.zero_grad()
            loss = m(x).square().mean() * (math.inf if blow_up else 30.0)
            sc.scale(loss).backward()
            sc.unscale_(o)
            if o is opt:
                norm = opt.clip_grad_norm_(0.1)
            else:
                norm_ref = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
            sc.step(o)
            sc.update()
        if not blow_up:
            torch.testing.assert_close(norm, norm_ref, rtol=1e-5, atol=0)
        assert opt._clip is None
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert s1.get_scale() == s2.get_scale()


def test_clip_with_a_fused_schedule_equals_schedule_lr():
    a, b = grads_pair(torch.float32, shapes=[(40,), (3, 9)])
    sched = S.OneCycle(max_lr=0.1, total_steps=10)
    fused = PO.SGD(a, lr=1.0, momentum=0.9, schedule=sched)
    plain = PO.SGD(b, lr=1.0, momentum=0.9)
    driver = ScheduleLR(plain, sched)
    gen = torch.Generator().manual_seed(5)
    for _ in range(8):
        for x, y in zip(a, b, strict=True):
            x.grad = torch.randn(x.shape, generator=gen) * 4
            y.grad = x.grad.clone()
        fused.clip_grad_norm_(1.0)
        plain.clip_grad_norm_(1.0)
        fused.step()
        plain.step()
        driver.step()
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_non_finite_norms():
    a, b = grads_pair(torch.float32, shapes=[(5,), (4,)])
    a[1].grad[2] = b[1].grad[2] = math.nan
    opt = PO.SGD(a, lr=0.1)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.clip_grad_norm_(1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(b, 1.0, error_if_nonfinite=True)
    assert opt._clip is None  # nothing pending after the refusal
    norm = opt.clip_grad_norm_(1.0)
    ref = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert math.isnan(float(norm)) and math.isnan(float(ref))
    opt.step()  # torch scales the grads by NaN: so does the folded coefficient
    torch.optim.SGD(b, lr=0.1, foreach=False).step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.detach(), y.detach(), equal_nan=True)
    # an infinite norm: torch's coefficient is 0
    c, d = grads_pair(torch.float32, shapes=[(6,)])
    c[0].grad[0] = d[0].grad[0] = math.inf
    assert float(PO.SGD(c, lr=1.0).clip_grad_norm_(1.0, norm_type=math.inf)) == math.inf


def test_the_norm_does_not_depend_on_the_thread_count():
    a, _ = grads_pair(torch.float32, shapes=[(3, 1 << 17), (1000,)])
    before = pylr.get_num_threads()
    norms = []
    try:
        for threads in (1, 2, 3):
            pylr.set_num_threads(threads)
            norms.append(float(PO.SGD(a, lr=0.1).clip_grad_norm_(1.0)))
    finally:
        pylr.set_num_threads(before)
    assert norms[0] == norms[1] == norms[2]


def test_no_grads_and_bad_arguments():
    p = torch.nn.Parameter(torch.ones(3))
    opt = PO.AdamW([p])
    assert torch.equal(opt.clip_grad_norm_(1.0), torch.tensor(0.0))
    p.grad = torch.ones(3)
    for bad, exc, match in [
        (-1.0, ValueError, "max_norm must be >= 0"),
        (math.nan, ValueError, "max_norm"),
        ("x", TypeError, "max_norm"),
    ]:
        with pytest.raises(exc, match=match):
            opt.clip_grad_norm_(bad)
    with pytest.raises(ValueError, match="norm_type"):
        opt.clip_grad_norm_(1.0, norm_type=math.nan)
    assert opt._clip is None
    # an empty grad has no infinity norm, as in torch
    q = torch.nn.Parameter(torch.ones(0))
    q.grad = torch.ones(0)
    with pytest.raises(RuntimeError, match="empty"):
        PO.SGD([p, q], lr=0.1).clip_grad_norm_(1.0, norm_type="inf")
    with pytest.raises(RuntimeError, match="empty"):
        torch.nn.utils.clip_grad_norm_([p, q], 1.0, norm_type="inf")
