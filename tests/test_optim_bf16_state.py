"""bfloat16 optimizer state (``state_dtype=torch.bfloat16``): half the state memory, float32
arithmetic, stochastic rounding from a counter-based hash — deterministic whatever the thread
count, unbiased where round-to-nearest stalls, and training like float32 state."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

import pylr
from pylr import functional as F
from pylr import optim as PO

M32 = 0xFFFFFFFF


def mix32(x: np.ndarray) -> np.ndarray:
    """csrc/optim/kernel_api.hpp's mix32 (lowbias32), on uint64 arrays holding uint32 values."""
    x = x & M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def stream(seed: int, salt: int, step: int, j: int) -> int:
    tensor = int(mix32(np.array([seed ^ int(mix32(np.array([salt], np.uint64))[0])], np.uint64))[0])
    t = (step + 0x9E3779B9 * (j + 1)) & M32
    return int(mix32(np.array([tensor ^ int(mix32(np.array([t], np.uint64))[0])], np.uint64))[0])


def stochastic_bf16(
    values: torch.Tensor, seed: int, salt: int, step: int, j: int, high: bool = False
) -> torch.Tensor:
    """The documented rounding: add 16 bits of stream j's hash (its low half, or its high half
    for Adam's exp_avg_sq, which shares exp_avg's hash) below the kept ones, truncate."""
    u = values.float().view(torch.int32).numpy().astype(np.uint64) & M32
    k = np.arange(u.size, dtype=np.uint64)
    h = mix32(k ^ stream(seed, salt, step, j))
    r = (h >> 16) if high else (h & 0xFFFF)
    bits = ((u + r) >> 16).astype(np.uint16)
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)


def params_and_grads(n=3, size=5000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(size + i, generator=gen)) for i in range(n)]
    grads = [[torch.randn(p.shape, generator=gen) for p in ps] for _ in range(4)]
    return ps, grads


def test_state_is_bfloat16_and_half_the_memory():
    ps, grads = params_and_grads()
    opt = PO.AdamW(ps, lr=1e-3, state_dtype=torch.bfloat16, amsgrad=True)
    for p, g in zip(ps, grads[0], strict=True):
        p.grad = g
    opt.step()
    for p in ps:
        st = opt.state[p]
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.bfloat16
        assert st["max_exp_avg_sq"].dtype == torch.bfloat16
        assert st["step"].dtype == torch.float32
        assert st["exp_avg"].nbytes * 2 == p.nbytes
    sgd = PO.SGD(ps, lr=0.1, momentum=0.9, state_dtype=torch.bfloat16)
    sgd.step()
    assert all(sgd.state[p]["momentum_buffer"].dtype == torch.bfloat16 for p in ps)


def test_first_step_is_the_documented_stochastic_rounding():
    """Adam's first step: m = (1 - beta1) g and v = (1 - beta2) g^2 exactly in float32, then
    rounded with the hash of (seed, tensor's place, step 1, element): bit for bit."""
    ps, grads = params_and_grads(n=2, size=70_001)  # several chunks per tensor on 2 threads
    seed = 1234
    opt = PO.Adam(ps, lr=1e-3, betas=(0.9, 0.999), state_dtype=torch.bfloat16, rounding_seed=seed)
    for p, g in zip(ps, grads[0], strict=True):
        p.grad = g
    opt.step()
    for salt, (p, g) in enumerate(zip(ps, grads[0], strict=True)):
        m = g * torch.tensor(1 - 0.9, dtype=torch.float32)
        v = g * g * torch.tensor(1 - 0.999, dtype=torch.float32)
        assert torch.equal(opt.state[p]["exp_avg"], stochastic_bf16(m, seed, salt, 1, 0))
        assert torch.equal(
            opt.state[p]["exp_avg_sq"], stochastic_bf16(v, seed, salt, 1, 0, high=True)
        )


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_results_do_not_depend_on_the_thread_count(cls):
    runs = []
    before = pylr.get_num_threads()
    try:
        for threads in (1, 2, 3):
            pylr.set_num_threads(threads)
            ps, grads = params_and_grads(size=100_000)
            kw = {"momentum": 0.9} if cls == "SGD" else {}
            opt = getattr(PO, cls)(ps, lr=1e-2, state_dtype=torch.bfloat16, **kw)
            for gs in grads:
                for p, g in zip(ps, gs, strict=True):
                    p.grad = g
                opt.step()
            runs.append([p.detach().clone() for p in ps])
    finally:
        pylr.set_num_threads(before)
    for a, b, c in zip(*runs, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_stochastic_rounding_keeps_updates_below_bfloat16_resolution():
    """v = beta2 v + (1 - beta2) g^2 with g = 1: v -> 1 - beta2^t. Rounded to nearest, bfloat16
    v stalls once the 0.1% increment is under half a bfloat16 ulp; rounded stochastically it
    follows float32 in expectation."""
    n, steps = 20_000, 2000
    exact = 1 - 0.999**steps
    means = {}
    for mode in ("fp32", "bf16-nearest", "bf16-stochastic"):
        p = torch.nn.Parameter(torch.zeros(n))
        state_dtype = None if mode == "fp32" else torch.bfloat16
        opt = PO.Adam([p], lr=0.0, state_dtype=state_dtype)
        p.grad = torch.ones(n)
        opt.step()
        if mode == "bf16-nearest":
            # the same bfloat16 storage, rounded to nearest: via the functional API
            st = opt.state[p]
            m, v, step = st["exp_avg"], st["exp_avg_sq"], st["step"]
            for _ in range(steps - 1):
                F.adam_([p], [p.grad], [m], [v], None, [step], lr=0.0)
        else:
            for _ in range(steps - 1):
                opt.step()
        means[mode] = float(opt.state[p]["exp_avg_sq"].float().mean())
    assert math.isclose(means["fp32"], exact, rel_tol=1e-4)
    assert math.isclose(means["bf16-stochastic"], exact, rel_tol=5e-3)
    assert means["bf16-nearest"] < 0.8 * exact  # stalled


def test_state_dicts_carry_bfloat16_and_loading_float32_converts():
    ps, grads = params_and_grads(n=2, size=300)
    opt = PO.AdamW(ps, lr=1e-2, state_dtype=torch.bfloat16)
    for p, g in zip(ps, grads[0], strict=True):
        p.grad = g
    opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert sd["param_groups"][0]["state_dtype"] == torch.bfloat16
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["state"][1]["exp_avg_sq"].dtype == torch.bfloat16
    # torch's AdamW takes it (as float32), and pylr's takes torch's float32 back as bfloat16
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ref = torch.optim.AdamW(twins, lr=1e-2, foreach=False)
    ref.load_state_dict(copy.deepcopy(sd))
    assert ref.state[twins[0]]["exp_avg"].dtype == torch.float32
    back = PO.AdamW(
        [torch.nn.Parameter(p.detach().clone()) for p in ps], lr=1e-2, state_dtype=torch.bfloat16
    )
    back.load_state_dict(ref.state_dict())
    for p, q in zip(back.param_groups[0]["params"], ps, strict=True):
        assert back.state[p]["exp_avg"].dtype == torch.bfloat16
        assert torch.equal(back.state[p]["exp_avg"], opt.state[q]["exp_avg"])


def test_half_params_with_float32_state():
    """state_dtype=torch.float32 beside bfloat16 params: float32 arithmetic and float32 state,
    the param rounded once per step (a float32 reference stepped on widened copies)."""
    gen = torch.Generator().manual_seed(3)
    init = torch.randn(4097, generator=gen)
    p = torch.nn.Parameter(init.to(torch.bfloat16))
    opt = PO.AdamW([p], lr=1e-2, state_dtype=torch.float32)
    ref_p = torch.nn.Parameter(init.to(torch.bfloat16).float())
    ref = torch.optim.AdamW([ref_p], lr=1e-2, foreach=False)
    for _ in range(5):
        g = torch.randn(4097, generator=gen).to(torch.bfloat16)
        p.grad = g
        ref_p.grad = g.float()
        opt.step()
        ref.step()
        with torch.no_grad():
            ref_p.copy_(ref_p.to(torch.bfloat16).float())  # the param is stored in bf16
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[ref_p]["exp_avg"])
    torch.testing.assert_close(p.detach().float(), ref_p.detach(), rtol=2**-7, atol=1e-6)


def test_bad_state_options():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="state_dtype"):
        PO.AdamW([p], state_dtype=torch.float16)
    with pytest.raises(ValueError, match="rounding_seed"):
        PO.SGD([p], lr=0.1, rounding_seed=-1)
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    q.grad = torch.ones(3, dtype=torch.float64)
    opt = PO.AdamW([q], state_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['state_dtype'\].*float64"):
        opt.step()
    assert torch.equal(q.detach(), torch.ones(3, dtype=torch.float64)) and len(opt.state[q]) == 0
    # a state tensor of a dtype the param cannot use
    p.grad = torch.ones(3)
    opt = PO.Adam([p])
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"exp_avg has dtype torch\.float64"):
        opt.step()


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    return x, torch.tensor(y)


def _train_mlp(state_dtype, seed, epochs=15):
    x, y = _digits()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = PO.AdamW(model.parameters(), lr=3e-3, state_dtype=state_dtype)
    gen = torch.Generator().manual_seed(seed)
    train, test = slice(0, 1400), slice(1400, None)
    for _ in range(epochs):
        order = torch.randperm(1400, generator=gen)
        for i in range(0, 1400, 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[train][idx]), y[train][idx]).backward()
            opt.step()
    with torch.no_grad():
        return float((model(x[test]).argmax(1) == y[test]).float().mean())


def test_digits_mlp_trains_like_float32_state():
    fp32 = [_train_mlp(None, s) for s in range(3)]
    bf16 = [_train_mlp(torch.bfloat16, s) for s in range(3)]
    assert min(bf16) > 0.9
    # within the spread seeds give float32 state (noise), plus a point
    assert abs(np.mean(bf16) - np.mean(fp32)) <= max(np.ptp(fp32), 0.01) + 0.01


def _train_transformer(state_dtype, steps=400):
    """A tiny transformer learns to reverse sequences of 8 tokens (vocabulary 16)."""
    torch.manual_seed(0)
    vocab, length, d = 16, 8, 32
    emb = torch.nn.Embedding(vocab, d)
    pos = torch.nn.Parameter(torch.randn(length, d) * 0.1)
    layer = torch.nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    head = torch.nn.Linear(d, vocab)
    params = [*emb.parameters(), pos, *enc.parameters(), *head.parameters()]
    opt = PO.AdamW(params, lr=3e-3, state_dtype=state_dtype)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        seq = torch.randint(0, vocab, (32, length), generator=gen)
        logits = head(enc(emb(seq) + pos))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), seq.flip(1).reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses[-20:])), losses[0]


def test_tiny_transformer_trains_like_float32_state():
    fp32, start = _train_transformer(None)
    bf16, _ = _train_transformer(torch.bfloat16)
    assert fp32 < 0.05 * start  # it learns the task
    assert abs(bf16 - fp32) <= 0.15 * fp32 + 0.01


def test_functional_stochastic_rounding_matches_the_optimizer():
    ps, grads = params_and_grads(n=2, size=2000)
    twins = [p.detach().clone() for p in ps]
    opt = PO.Adam(ps, lr=1e-2, state_dtype=torch.bfloat16, rounding_seed=7)
    m = [torch.zeros_like(p, dtype=torch.bfloat16) for p in ps]
    v = [torch.zeros_like(p, dtype=torch.bfloat16) for p in ps]
    steps = [torch.tensor(0.0) for _ in ps]
    for gs in grads:
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        opt.step()
        F.adam_(twins, gs, m, v, None, steps, lr=1e-2, stochastic_rounding=True, rounding_seed=7)
    for p, t in zip(ps, twins, strict=True):
        assert torch.equal(p.detach(), t)
