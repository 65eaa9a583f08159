"""pylr.lr_find: the sweep, the suggestions, the exact restore and bad input."""

from __future__ import annotations

import copy
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pylr
from pylr import lr_finder
from pylr import optim as PO
from pylr.demo import digits_loaders, digits_mlp

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def digits():
    return digits_loaders(seed=0)


def small_data(n=96, batch=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class Net(nn.Module):
    """Parameters, BatchNorm buffers and dropout: everything a restore must cover."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def snapshot(model, opt):
    """Everything that must come back, with the identity of each state tensor."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    state = {
        id(p): {
            k: (v.clone(), id(v)) if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()
        }
        for p, s in opt.state.items()
        if s
    }
    groups = [
        {k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups
    ]
    modes = [m.training for m in model.modules()]
    return tensors, grads, state, groups, modes


def assert_same(before, model, opt):
    tensors, grads, state, groups, modes = before
    now = model.state_dict()
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    for g, p in zip(grads, model.parameters(), strict=True):
        assert (g is None) == (p.grad is None)
        if g is not None:
            assert torch.equal(g, p.grad)
    now_state = {id(p): s for p, s in opt.state.items() if s}
    assert now_state.keys() == state.keys()
    for pid, s in state.items():
        assert now_state[pid].keys() == s.keys()
        for k, v in s.items():
            if isinstance(v, tuple):
                value, ident = v
                assert torch.equal(now_state[pid][k], value), k
                assert id(now_state[pid][k]) == ident, f"state tensor {k} was replaced"
            else:
                assert now_state[pid][k] == v
    for g, saved in zip(opt.param_groups, groups, strict=True):
        assert {k: v for k, v in g.items() if k != "params"} == saved
    assert [m.training for m in model.modules()] == modes


def trained(opt_factory, steps=3, seed=0):
    """A model and optimizer with state from a few real steps, grads left in place."""
    torch.manual_seed(seed)
    model = Net()
    opt = opt_factory(model)
    data = small_data()
    for x, y in data[:steps]:
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    x, y = data[0]
    CE(model(x), y).backward()  # leave grads, as a user mid-training would
    model.eval()  # and an unusual mode, which must come back too
    return model, opt, data


OPTIMIZERS = {
    "pylr-AdamW": lambda m: PO.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1),
    "torch-SGD": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "torch-Adam-groups": lambda m: torch.optim.Adam(
        [{"params": m.fc1.parameters()}, {"params": [*m.bn.parameters(), *m.fc2.parameters()]}],
        lr=1e-3,
        amsgrad=True,
    ),
}


# ---------------------------------------------------------------------------------------------
# the digits


def test_digits_sweep_and_suggestions(digits, tmp_path):
    train, _ = digits
    model = digits_mlp(0)
    result = pylr.lr_find(model, train, CE)
    n = len(result.lrs)
    assert 10 < n <= 100
    assert result.lrs[0] == 1e-7
    ratios = result.lrs[1:] / result.lrs[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-7) ** (1 / 99), rtol=1e-12)
    assert set(result.suggestions) == {"valley", "slide", "minimum", "steep"}
    for name, lr in result.suggestions.items():
        assert 1e-7 <= lr <= 10.0, name
        assert result.lrs.min() <= lr <= result.lrs.max(), name
    assert result.suggested == result.suggestions["valley"] and result.method == "valley"
    result.method = "steep"
    assert result.suggested == result.suggestions["steep"]
    with pytest.raises(ValueError, match="method must be one of"):
        result.method = "best"
    # the smoothing: a bias-corrected EMA of the raw losses with beta 0.98
    avg, expect = 0.0, []
    for i, x in enumerate(result.raw_losses):
        avg = 0.98 * avg + 0.02 * x
        expect.append(avg / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(result.losses, expect, rtol=1e-12)
    # JSON and the plot
    d = json.loads(json.dumps(result.to_dict()))
    assert d["suggested"] == result.suggested and len(d["lrs"]) == n
    path = tmp_path / "lr.png"
    ax = result.plot(path)
    assert path.stat().st_size > 10_000
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("valley") for t in labels) and any(
        t.startswith("steep") for t in labels
    )
    assert "suggested=" in repr(result)


def test_fit_one_cycle_at_the_suggestion_beats_the_range_ends(digits):
    train, val = digits
    found = pylr.lr_find(digits_mlp(0), train, CE)
    accuracy = {}
    for name, lr in [("suggested", found.suggested), ("start", 1e-7), ("end", 10.0)]:
        history = pylr.fit_one_cycle(
            digits_mlp(0),
            train,
            CE,
            epochs=10,
            lr_max=lr,
            val_loader=val,
            metrics=[pylr.accuracy],
            progress=False,
        )
        accuracy[name] = history.epochs[-1]["accuracy"]
    assert accuracy["suggested"] >= 0.90, accuracy
    assert accuracy["suggested"] > accuracy["start"] and accuracy["suggested"] > accuracy["end"]


# ---------------------------------------------------------------------------------------------
# the exact restore


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_model_and_optimizer_are_restored_bitwise(name):
    model, opt, data = trained(OPTIMIZERS[name])
    before = snapshot(model, opt)
    result = pylr.lr_find(model, data, CE, opt, num_iter=20, end_lr=1.0)
    assert len(result.lrs) >= 2
    assert_same(before, model, opt)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_restored_after_an_exception_mid_sweep(name, error):
    model, opt, data = trained(OPTIMIZERS[name])
    before = snapshot(model, opt)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if len(calls) == 7:
            raise error
        return CE(out, y)

    with pytest.raises(type(error)):
        pylr.lr_find(model, data, loss_fn, opt, num_iter=20)
    assert len(calls) == 7
    assert_same(before, model, opt)


def test_a_real_ctrl_c_mid_sweep_and_during_the_restore(monkeypatch):
    model, opt, data = trained(OPTIMIZERS["torch-SGD"])
    before = snapshot(model, opt)
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return CE(out, y)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        pylr.lr_find(model, data, loss_fn, opt, num_iter=20)
    assert len(calls) == 7
    assert_same(before, model, opt)
    # a Ctrl-C that lands while the restore runs waits for it to finish
    original = lr_finder._Snapshot.restore

    def interrupted_restore(self):
        os.kill(os.getpid(), signal.SIGINT)
        original(self)

    monkeypatch.setattr(lr_finder._Snapshot, "restore", interrupted_restore)
    with pytest.raises(KeyboardInterrupt):
        pylr.lr_find(model, data, CE, opt, num_iter=5)
    assert_same(before, model, opt)
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_restore_from_disk_with_cache_dir(tmp_path, name):
    model, opt, data = trained(OPTIMIZERS[name])
    before = snapshot(model, opt)
    seen = []

    def loss_fn(out, y):
        seen.append(os.listdir(tmp_path))
        return CE(out, y)

    pylr.lr_find(model, data, loss_fn, opt, num_iter=10, cache_dir=tmp_path)
    assert all(len(files) == 1 and files[0].endswith(".pt") for files in seen)
    assert os.listdir(tmp_path) == []  # the snapshot file is gone afterwards
    assert_same(before, model, opt)
    # the restored optimizer trains on exactly like an untouched copy
    twin_model, twin_opt, _ = trained(OPTIMIZERS[name])
    for m, o in [(model, opt), (twin_model, twin_opt)]:
        m.train()
        o.step()
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_default_optimizer_is_pylr_adamw_and_leaves_no_trace():
    torch.manual_seed(0)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    used = []
    original = PO.AdamW.step

    def spy(self, *a, **k):
        used.append(type(self))
        return original(self, *a, **k)

    PO.AdamW.step = spy
    try:
        pylr.lr_find(model, small_data(), CE, num_iter=5)
    finally:
        PO.AdamW.step = original
    assert used and set(used) == {PO.AdamW}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# the sweep's options


def test_divergence_stops_early():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = pylr.lr_find(model, small_data(), CE, opt, start_lr=1e-3, end_lr=1e4, num_iter=200)
    assert result.stopped_early and len(result.lrs) < 200
    best = np.minimum.accumulate(result.losses[:-1])
    last = result.losses[-1]
    assert not math.isfinite(last) or last > 4.0 * best[-1]
    # with an infinite threshold it runs to the end unless the loss stops being finite
    calls = []

    def nan_after_5(out, y):
        calls.append(1)
        loss = CE(out, y)
        return loss * math.nan if len(calls) > 5 else loss

    result = pylr.lr_find(Net(), small_data(), nan_after_5, num_iter=50, diverge_th=math.inf)
    assert result.stopped_early and len(result.lrs) == 6
    assert all(math.isfinite(v) for v in result.suggestions.values())
    assert json.dumps(result.to_dict())  # NaN written as null


def test_a_negative_loss_does_not_look_like_divergence():
    def shifted(out, y):  # the same curve, 100 lower: best is negative
        return CE(out, y) - 100.0

    torch.manual_seed(0)
    result = pylr.lr_find(Net(), small_data(), shifted, start_lr=1e-6, end_lr=1e-3, num_iter=30)
    assert not result.stopped_early and len(result.lrs) == 30
    assert (result.raw_losses < 0).all()


def test_linear_mode_and_loader_cycling():
    data = small_data()  # 6 batches, fewer than num_iter
    batches = []

    class Counting:
        def __iter__(self):
            for b in data:
                batches.append(1)
                yield b

        def __len__(self):
            return len(data)

    result = pylr.lr_find(
        Net(),
        Counting(),
        CE,
        start_lr=1e-4,
        end_lr=1e-1,
        num_iter=25,
        step_mode="linear",
        diverge_th=math.inf,
    )
    assert len(result.lrs) == 25 and len(batches) == 25
    np.testing.assert_allclose(np.diff(result.lrs), (1e-1 - 1e-4) / 24, rtol=1e-9)
    assert result.lrs[0] == pytest.approx(1e-4, rel=1e-12)
    assert result.lrs[-1] == pytest.approx(1e-1, rel=1e-12)
    assert result.step_mode == "linear"


def test_accumulation_steps():
    data = small_data()
    seen, steps = [], []
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_pre_hook(lambda o, a, k: steps.append(1))

    def loss_fn(out, y):
        loss = CE(out, y)
        seen.append(float(loss.detach()))
        return loss

    result = pylr.lr_find(
        model, data, loss_fn, opt, num_iter=8, accumulation_steps=3, diverge_th=math.inf
    )
    assert len(steps) == 8 and len(seen) == 24
    np.testing.assert_allclose(
        result.raw_losses, np.asarray(seen).reshape(8, 3).mean(1), rtol=1e-12
    )


def test_val_loader_records_the_validation_loss():
    train, val = small_data(seed=0), small_data(n=32, seed=1)
    val_batches = []

    class CountingVal:
        def __iter__(self):
            for b in val:
                val_batches.append(1)
                yield b

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recorded = []

    def hook(o, a, k):  # the validation loss after each step, computed independently
        model.eval()
        with torch.no_grad():
            n = sum(len(y) for _, y in val)
            recorded.append(sum(float(CE(model(x), y)) * len(y) for x, y in val) / n)
        model.train()

    opt.register_step_post_hook(hook)
    result = pylr.lr_find(
        model, train, CE, opt, val_loader=CountingVal(), num_iter=6, diverge_th=math.inf
    )
    assert len(val_batches) == 6 * len(val)
    np.testing.assert_allclose(result.raw_losses, recorded, rtol=1e-6)


def test_per_group_start_and_end_lrs():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters()},
            {"params": [*model.bn.parameters(), *model.fc2.parameters()]},
        ]
    )
    result = pylr.lr_find(
        model,
        small_data(),
        CE,
        opt,
        start_lr=[1e-6, 1e-5],
        end_lr=[1e-2, 1e-1],
        num_iter=12,
        diverge_th=math.inf,
    )
    assert result.group_lrs.shape == (12, 2)
    for g, (s, e) in enumerate([(1e-6, 1e-2), (1e-5, 1e-1)]):
        np.testing.assert_allclose(
            result.group_lrs[:, g], s * (e / s) ** (np.arange(12) / 11), rtol=1e-12
        )
    np.testing.assert_array_equal(result.lrs, result.group_lrs[:, 1])  # the last group's
    with pytest.raises(ValueError, match="2 param groups"):
        pylr.lr_find(model, small_data(), CE, opt, start_lr=[1e-6])


def test_amp_bfloat16_and_float16_with_a_grad_scaler():
    for amp in ["bf16", torch.float16]:
        model, opt, data = trained(OPTIMIZERS["torch-SGD"])
        before = snapshot(model, opt)
        result = pylr.lr_find(model, data, CE, opt, num_iter=8, amp=amp, diverge_th=math.inf)
        assert len(result.lrs) == 8 and np.isfinite(result.raw_losses).all()
        assert_same(before, model, opt)
    with pytest.raises(ValueError, match="amp must be"):
        pylr.lr_find(Net(), small_data(), CE, amp="fp8")


def test_a_fused_schedule_steps_aside_and_comes_back():
    from pylr.schedules import Cosine

    torch.manual_seed(0)
    model = Net()
    opt = PO.SGD(model.parameters(), lr=0.1, momentum=0.9, schedule=Cosine(T_max=10))
    before = snapshot(model, opt)
    result = pylr.lr_find(model, small_data(), CE, opt, num_iter=6, diverge_th=math.inf)
    assert result.lrs[0] == 1e-7  # the sweep's lr, not the schedule's
    assert_same(before, model, opt)
    assert opt.param_groups[0]["schedule"] == 0.1 * Cosine(T_max=10)


def test_progress_bar(capsys):
    pylr.lr_find(Net(), small_data(), CE, num_iter=5, progress="bar", diverge_th=math.inf)
    err = capsys.readouterr().err
    assert "lr_find" in err and "loss=" in err and "lr=1e-07" in err
    pylr.lr_find(Net(), small_data(), CE, num_iter=5)  # not a terminal: silent
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="progress must be"):
        pylr.lr_find(Net(), small_data(), CE, progress="lines")


# ---------------------------------------------------------------------------------------------
# the suggestion rules on known curves


def test_suggestion_rules():
    lrs = np.logspace(-6, 0, 61)
    # flat, a long descent from index 20 to 45, then a blow-up
    losses = np.concatenate(
        [np.full(20, 2.0), np.linspace(2.0, 0.5, 26)[1:], np.linspace(0.6, 5, 16)]
    )
    losses[:20] += np.linspace(0, 1e-3, 20)  # a slight rise, so the run starts at 19
    assert lr_finder.minimum(lrs, losses) == pytest.approx(lrs[44] / 10)
    # the longest decreasing run is 19..44 (length 26): 19 - 1 + int(26/3) + int(26/6) = 30
    start = 19 - 1
    assert lr_finder.valley(lrs, losses) == lrs[start + 8 + 4]
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    assert lr_finder.steep(lrs, losses) == lrs[int(np.argmin(slopes))]
    s = lr_finder.slide(lrs, losses)
    assert lrs[0] <= s <= lrs[-1]
    # degenerate inputs stay inside the range
    assert lr_finder.valley(lrs[:1], losses[:1]) == lrs[0]
    assert lr_finder.slide(lrs[:2], losses[:2]) in lrs[:2]
    assert lr_finder.steep(lrs[:1], losses[:1]) == lrs[0]


def _valley_reference(lrs, losses):
    """The valley rule by its definition, with plain loops: the longest strictly decreasing
    subsequence (the first one found of that length), and a point half-way down it."""
    n = len(losses)
    best_len, best_end = 1, 0
    longest = [1] * n
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i]:
                longest[i] = max(longest[i], longest[j] + 1)
        if longest[i] > best_len:
            best_len, best_end = longest[i], i
    start = best_end - best_len
    third = (best_end - start) / 3
    return lrs[min(max(start + int(third) + int(third / 2), 0), n - 1)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.01, 10.0, allow_nan=False), min_size=1, max_size=60),
    st.floats(1e-8, 1e-3),
    st.floats(1.01, 2.0),
)
def test_suggestion_rules_on_random_curves(losses, lr0, ratio):
    losses = np.asarray(losses)
    lrs = lr0 * ratio ** np.arange(len(losses))
    assert lr_finder.valley(lrs, losses) == _valley_reference(lrs, losses)
    for rule in (lr_finder.valley, lr_finder.slide, lr_finder.steep):
        assert lrs[0] <= rule(lrs, losses) <= lrs[-1]
    assert lr_finder.minimum(lrs, losses) == lrs[int(np.argmin(losses))] / 10
    # steep is fastai's rule on the curve up to the lowest loss: the same lr whenever the
    # steepest fall of the whole curve comes before it; an lr before it otherwise
    if len(losses) >= 2:
        steepest = int(np.argmin(np.diff(losses) / np.diff(np.log(lrs))))
        low = int(np.argmin(losses))
        if steepest < low or low == 0:
            assert lr_finder.steep(lrs, losses) == lrs[steepest]
        else:
            assert lr_finder.steep(lrs, losses) < lrs[low]


def blow_up_curve(n=100):
    """A range test whose loss jumps without reaching the 4x stop: flat at 2.3, down to 1.9
    at step 80, up to 6 over three steps, then a slow fall for the rest of the sweep."""
    lrs = 1e-7 * (1e8) ** (np.arange(n) / (n - 1))
    losses = np.concatenate(
        [
            np.full(40, 2.3) + np.linspace(0, 1e-3, 40)[::-1],
            np.linspace(2.3, 1.9, 41)[1:],
            [3.0, 4.5, 6.0],
            np.linspace(6.0, 5.0, n - 83),
        ]
    )
    return lrs, losses


def result_of(lrs, losses):
    return lr_finder.LRFindResult(
        lrs[:, None], losses, losses, num_iter=len(lrs), step_mode="exp", stopped_early=False
    )


@pytest.mark.parametrize("last", [math.inf, math.nan])
def test_suggestions_use_fastais_points_of_a_sweep_that_ended_in_a_non_finite_loss(last):
    """fastai drops the first num_iter // 10 and the last 5 recorded points — the diverged
    one among them — then cuts at the first NaN; pylr picks the same points."""
    num_iter, n = 100, 50
    lrs = 1e-7 * (1e8) ** (np.arange(n) / (num_iter - 1))
    losses = np.append(np.linspace(3.0, 1.0, n - 1), last)  # falling up to the last step
    result = lr_finder.LRFindResult(
        lrs[:, None], losses, losses, num_iter=num_iter, step_mode="exp", stopped_early=True
    )
    kept = slice(num_iter // 10, n - 5)
    for name, rule in lr_finder.SUGGESTIONS.items():
        assert result.suggestions[name] == rule(lrs[kept], losses[kept]), name
    assert result.suggestions["minimum"] == lrs[n - 6] / 10
    from matplotlib.figure import Figure

    ax = result.plot(ax=Figure().add_subplot())
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), lrs[kept])


def test_steep_stays_before_a_blow_up():
    lrs, losses = blow_up_curve()
    result = result_of(lrs, losses)
    low = int(np.argmin(losses))
    part = slice(len(lrs) // 10, len(lrs) - 5)  # the points the suggestions use
    x, y = lrs[part], losses[part]
    whole = x[int(np.argmin(np.diff(y) / np.diff(np.log(x))))]  # fastai's rule on all of it
    assert whole > lrs[low]  # ... falls on the slope after the jump
    assert result.suggestions["steep"] < lrs[low]
    before = slice(part.start, low + 1)
    slopes = np.diff(losses[before]) / np.diff(np.log(lrs[before]))
    assert result.suggestions["steep"] == lrs[before][int(np.argmin(slopes))]


def test_plot_shows_the_descent_not_the_blow_up(tmp_path):
    from matplotlib.figure import Figure

    lrs, losses = blow_up_curve()
    result = result_of(lrs, losses)
    ax = result.plot(ax=Figure().add_subplot())
    bottom, top = ax.get_ylim()
    y = losses[len(lrs) // 10 : len(lrs) - 5]
    low = int(np.argmin(y))
    descent = y[0] - y[low]
    assert bottom <= y[low] and y[: low + 1].max() < top < y.max()
    assert top - bottom < 2 * descent  # the descent fills at least half the height
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "smoothed loss"
    assert [label.split(":")[0] for label in labels[1:]] == list(lr_finder.SUGGESTIONS)
    # every suggestion's marker is inside the limits
    for line in ax.get_lines()[1:]:
        assert bottom <= line.get_ydata()[0] <= top

    # a curve that does not blow up keeps matplotlib's limits, all of it in view
    calm = np.concatenate([losses[:80], np.full(20, losses[79])])
    assert lr_finder.loss_ylim(calm) is None
    ax = result_of(lrs, calm).plot(ax=Figure().add_subplot())
    assert ax.get_ylim()[0] <= calm.min() and calm.max() <= ax.get_ylim()[1]
    assert lr_finder.loss_ylim(np.linspace(1.0, 2.0, 20)) is None  # no descent at all
    assert lr_finder.loss_ylim(np.array([1.0])) is None


def test_batches_with_several_inputs_and_an_explicit_device():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 2), nn.Linear(3, 2)

        def forward(self, x, z):
            return self.a(x) + self.b(z)

    gen = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(16, 8, generator=gen),
            torch.randn(16, 3, generator=gen),
            torch.randint(0, 2, (16,), generator=gen),
        )
        for _ in range(4)
    ]
    model = TwoInputs()
    result = pylr.lr_find(model, data, CE, num_iter=6, device="cpu", diverge_th=math.inf)
    assert len(result.lrs) == 6
    history = pylr.fit(
        model,
        data,
        CE,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        device=torch.device("cpu"),
        progress=False,
    )
    assert history.steps == 4


# ---------------------------------------------------------------------------------------------
# bad input: a clear error, nothing touched


def bad_calls(model, opt, data):
    return [
        (dict(train_loader=[]), ValueError, "train_loader is empty"),
        (dict(num_iter=1), ValueError, "num_iter must be an integer >= 2"),
        (dict(start_lr=1.0, end_lr=1.0), ValueError, "start_lr must be < end_lr"),
        (dict(start_lr=-1.0), ValueError, "start_lr must be a finite number > 0"),
        (dict(end_lr=math.inf), ValueError, "end_lr must be a finite number > 0"),
        (dict(step_mode="log"), ValueError, "step_mode must be"),
        (dict(smooth=1.0), ValueError, "smooth must be in"),
        (dict(diverge_th=1.0), ValueError, "diverge_th must be > 1"),
        (dict(accumulation_steps=0), ValueError, "accumulation_steps"),
        (dict(loss_fn=lambda o, y: CE(o, y, reduction="none")), ValueError, "scalar tensor"),
        (dict(loss_fn=lambda o, y: CE(o, y) * math.nan), ValueError, "not a finite number"),
        (dict(loss_fn=lambda o, y: 1.0), TypeError, "must return a tensor"),
        (dict(loss_fn=lambda o, y: CE(o.detach(), y)), ValueError, "does not require grad"),
        (dict(train_loader=[torch.zeros(4, 8)]), TypeError, "must yield"),
        (dict(optimizer="sgd"), TypeError, "optimizer must be a torch.optim.Optimizer"),
        (dict(model=lambda x: x), TypeError, "model must be a torch.nn.Module"),
        (dict(val_loader=[]), ValueError, "val_loader is empty"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls(None, None, None))))
def test_bad_input_raises_clearly_and_touches_nothing(case):
    model, opt, data = trained(OPTIMIZERS["torch-SGD"])
    before = snapshot(model, opt)
    change, exc, match = bad_calls(model, opt, data)[case]
    kwargs = dict(model=model, train_loader=data, loss_fn=CE, optimizer=opt, num_iter=5)
    kwargs.update(change)
    with pytest.raises(exc, match=match):
        pylr.lr_find(**kwargs)
    assert_same(before, model, opt)
