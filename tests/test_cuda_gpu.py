"""pylr's CUDA step on a real GPU: conformance with torch's fused CUDA optimizers over the
dtype / flag grid, pylr's CUDA step bit for bit its CPU step, AMP through GradScaler, CUDA-graph
capture with ``capturable=True``, clipping, the functional API and the benchmark's first run.

Every test here needs a CUDA device usable by torch and by ``pylr._cuda``; without one the whole
module is skipped (the host-run tests of the same kernels are in test_cuda_host.py).
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

import pylr.cuda
from pylr import _core
from pylr import functional as F
from pylr import optim as PO

pytestmark = pytest.mark.skipif(
    not (pylr.cuda.is_available() and torch.cuda.is_available()),
    reason="needs a CUDA GPU usable by torch and pylr._cuda",
)

SIZES = [(0,), (1,), (7,), (17,), (4097,), (3, 65537)]
# the CPU loops fuse madd as the device does (see test_cuda_host.py)
BITWISE = _core._CUDA_EMULATION_FMA and (
    _core.kernel_isa() != "generic" or os.uname().machine == "aarch64"
)
# relative tolerance against torch's own CUDA formula: about two units of the dtype's last place
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def grads_at(step, params):
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def initial(dtype, sizes=SIZES, device="cuda"):
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device))
        for s in sizes
    ]


def two_groups(params, **second):
    half = len(params) // 2
    return [{"params": params[:half]}, {"params": params[half:], "lr": 3e-3, **second}]


def run(opt_cls, params, steps, **kwargs):
    opt = opt_cls(two_groups(params), **kwargs)
    for k in range(steps):
        for p, g in zip(params, grads_at(k, params), strict=True):
            p.grad = g.to(p.device)
        opt.step()
    return opt


def assert_close(ours, ref, what):
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    rtol = RTOL[ours.dtype if ours.dtype in RTOL else torch.float32]
    scale = ref.abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=rtol * scale + 1e-30, msg=what)


def assert_same_state(opt, ref_opt, params, ref_params, dtype):
    for i, (p, q) in enumerate(zip(params, ref_params, strict=True)):
        rtol = RTOL[dtype]
        a, b = p.detach().double().cpu(), q.detach().double().cpu()
        scale = b.abs().max().item() if b.numel() else 0.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=f"param {i}")
        for key, value in ref_opt.state[q].items():
            if key == "step":
                assert float(opt.state[p][key]) == float(value), f"param {i} step"
            else:
                v = value.detach().double().cpu()
                s = v.abs().max().item() if v.numel() else 0.0
                torch.testing.assert_close(
                    opt.state[p][key].detach().double().cpu(),
                    v,
                    rtol=rtol,
                    atol=rtol * s,
                    msg=f"param {i} state {key}",
                )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_cuda_adam_matches_torch_fused(name, weight_decay, maximize, amsgrad, dtype):
    kwargs = {"lr": 1e-3, "weight_decay": weight_decay, "maximize": maximize, "amsgrad": amsgrad}
    params, ref_params = initial(dtype), initial(dtype)
    opt = run(getattr(PO, name), params, 5, **kwargs)
    ref = run(getattr(torch.optim, name), ref_params, 5, fused=True, **kwargs)
    assert_same_state(opt, ref, params, ref_params, dtype)
    assert all(s["step"].device == p.device for p, s in opt.state.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "flags",
    [
        {"momentum": 0.0},
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"momentum": 0.9, "dampening": 0.3, "maximize": True},
        {"momentum": 0.0, "weight_decay": 1e-2, "maximize": True},
    ],
    ids=["plain", "momentum", "nesterov-wd", "dampening-maximize", "wd-maximize"],
)
def test_cuda_sgd_matches_torch_fused(flags, dtype):
    params, ref_params = initial(dtype), initial(dtype)
    opt = run(PO.SGD, params, 5, lr=1e-2, **flags)
    ref = run(torch.optim.SGD, ref_params, 5, lr=1e-2, fused=True, **flags)
    assert_same_state(opt, ref, params, ref_params, dtype)


OPTIMIZERS = {
    "AdamW-amsgrad": lambda g: PO.AdamW(g, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "Adam-maximize": lambda g: PO.Adam(g, lr=1e-2, weight_decay=0.01, maximize=True),
    "AdamW-bf16-state": lambda g: PO.AdamW(g, lr=1e-2, state_dtype=torch.bfloat16, rounding_seed=3),
    "SGD-nesterov": lambda g: PO.SGD(g, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "SGD-bf16-state": lambda g: PO.SGD(g, lr=0.05, momentum=0.9, state_dtype=torch.bfloat16),
}


# (bfloat16 state beside float32 and float16 params; float64 params keep float64 state)
BITWISE_CASES = [
    (name, dtype)
    for name in OPTIMIZERS
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    if "bf16-state" not in name or dtype in (torch.float32, torch.float16)
]


@pytest.mark.skipif(not BITWISE, reason="the CPU loops here compute madd without FMA")
@pytest.mark.parametrize(("name", "dtype"), BITWISE_CASES)
def test_cuda_step_is_bitwise_the_cpu_step(name, dtype):
    """One math header: pylr's CUDA kernels and its CPU loops give the same bits (the step's
    double scalars come from the device's pow, within an ulp of the host's, which moves a
    float32 scalar only at a rounding boundary)."""
    cuda_params, cpu_params = initial(dtype), initial(dtype, device="cpu")
    opt = run(lambda g, **_: OPTIMIZERS[name](g), cuda_params, 4)
    ref = run(lambda g, **_: OPTIMIZERS[name](g), cpu_params, 4)
    for i, (p, q) in enumerate(zip(cuda_params, cpu_params, strict=True)):
        assert torch.equal(p.detach().cpu(), q.detach()), f"param {i}"
        for key, value in ref.state[q].items():
            assert torch.equal(opt.state[p][key].cpu(), value), f"param {i} state {key}"


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_cuda_amp_grad_scaler_matches_torch_fused(name):
    """GradScaler hands pylr its grad_scale and found_inf on the device: unscaled in the step,
    a step with an inf skipped on the device (and the scale backed off), as with torch fused."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(33, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    model = model.cuda()
    ref_model = copy.deepcopy(model)
    kwargs = {"lr": 1e-2, "momentum": 0.9} if name == "SGD" else {"lr": 1e-2}
    opt = getattr(PO, name)(model.parameters(), **kwargs)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), fused=True, **kwargs)
    scalers = [torch.amp.GradScaler("cuda", init_scale=2.0**12) for _ in range(2)]
    gen = torch.Generator(device="cuda").manual_seed(1)
    for k in range(6):
        x = torch.randn(16, 33, device="cuda", generator=gen)
        for m, o, scaler in zip((model, ref_model), (opt, ref_opt), scalers, strict=True):
            o.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = m(x).float().pow(2).mean()
            scaler.scale(loss).backward()
            if k == 2:
                next(m.parameters()).grad[0, 0] = math.inf  # this step must change nothing
            scaler.step(o)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
    assert scalers[0].get_scale() < 2.0**12  # the inf step backed the scale off
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_cuda_graph_capture_with_capturable_replays_the_eager_steps():
    """A whole AdamW step captured in a CUDA graph (capturable=True, lr a device tensor a
    scheduler changes in place), replayed with new grads: the eager steps' bits."""
    static = initial(torch.float32, sizes=[(257,), (64, 33), (1 << 17,)])
    eager = initial(torch.float32, sizes=[(257,), (64, 33), (1 << 17,)])
    for p in static:
        p.grad = torch.zeros_like(p)

    def make(params):
        lr = torch.tensor(1e-2, device="cuda")
        return PO.AdamW(params, lr=lr, weight_decay=0.1, amsgrad=True, capturable=True), lr

    opt, lr = make(static)
    ref, ref_lr = make(eager)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up steps (state created) outside the graph
        for k in range(2):
            for p, g in zip(static, grads_at(k, static), strict=True):
                p.grad.copy_(g)
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    for k in range(2):
        for p, g in zip(eager, grads_at(k, eager), strict=True):
            p.grad = g.cuda()
        ref.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for k in range(2, 7):
        lr.mul_(0.8)
        ref_lr.mul_(0.8)
        for p, q, g in zip(static, eager, grads_at(k, static), strict=True):
            p.grad.copy_(g)
            q.grad = g.cuda()
        graph.replay()
        ref.step()
    torch.cuda.synchronize()
    for p, q in zip(static, eager, strict=True):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], ref.state[q][key]), key
    assert float(opt.state[static[0]]["step"]) == 7


def test_cuda_graph_capture_without_capturable_is_refused():
    params = initial(torch.float32, sizes=[(33,)])
    params[0].grad = torch.ones_like(params[0])
    opt = PO.AdamW(params, lr=1e-2)
    opt.step()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable is False"):
        with torch.cuda.graph(graph):
            opt.step()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 0.5])
def test_cuda_clip_grad_norm_matches_torch(norm_type):
    params, ref_params = initial(torch.float32), initial(torch.float32)
    opt = PO.AdamW(params, lr=1e-2)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, fused=True)
    for k in range(3):
        for p, q, g in zip(params, ref_params, grads_at(k, params), strict=True):
            p.grad, q.grad = g.cuda(), g.cuda()
        total = opt.clip_grad_norm_(0.5, norm_type=norm_type)
        ref_total = torch.nn.utils.clip_grad_norm_(ref_params, 0.5, norm_type=norm_type)
        assert total.device == ref_total.device
        torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=0)
        opt.step()
        ref.step()
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_cuda_functional_adamw_and_sgd_match_torch():
    params, ref_params = initial(torch.float32), initial(torch.float32)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), device="cuda") for _ in params]
    ref = torch.optim.AdamW(ref_params, lr=1e-2, weight_decay=0.1, fused=True)
    for k in range(3):
        grads = [g.cuda() for g in grads_at(k, params)]
        with torch.no_grad():
            assert F.adamw_(params, grads, m, v, None, steps, lr=1e-2, weight_decay=0.1)
        for q, g in zip(ref_params, grads, strict=True):
            q.grad = g
        ref.step()
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    bufs = [None] * len(params)
    grads = [g.cuda() for g in grads_at(0, params)]
    with torch.no_grad():
        assert F.sgd_(params, grads, bufs, lr=1e-2, momentum=0.9)
    assert all(b is not None and b.device == p.device for b, p in zip(bufs, params, strict=True))


def test_cuda_sgd_first_step_skipped_by_found_inf_creates_no_buffer():
    p = torch.nn.Parameter(torch.ones(10, device="cuda"))
    opt = PO.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.full((10,), 2.0, device="cuda")
    opt.grad_scale = torch.ones((), device="cuda")
    opt.found_inf = torch.ones((), device="cuda")
    opt.step()
    assert "momentum_buffer" not in opt.state[p]
    assert torch.equal(p.detach(), torch.ones(10, device="cuda"))
    opt.found_inf = torch.zeros((), device="cuda")
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], p.grad)


def test_cuda_and_cpu_params_in_one_optimizer_raise():
    cpu = torch.nn.Parameter(torch.ones(4))
    gpu = torch.nn.Parameter(torch.ones(4, device="cuda"))
    cpu.grad, gpu.grad = torch.ones(4), torch.ones(4, device="cuda")
    opt = PO.AdamW([cpu, gpu], lr=0.1)
    with pytest.raises(ValueError, match="one pylr step updates the tensors of one device"):
        opt.step()
    assert len(opt.state) == 0


def test_cuda_bench_quick_checks_and_times_every_workload():
    from pylr.bench_cuda import IMPLS, run_cuda_bench

    results = run_cuda_bench(quick=True)
    rows = results["optimizers"]
    assert {r["workload"] for r in rows} == {"tiny_mlp", "many_small", "one_large"}
    for r in rows:
        assert set(r["ms_per_step"]) == set(IMPLS)
        assert all(t > 0 and math.isfinite(t) for t in r["ms_per_step"].values())
