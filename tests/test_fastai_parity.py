"""fit_one_cycle and lr_find against fastai: the default optimizer (fastai's Adam, no weight
decay on biases and normalisation params), slice lrs, SGD without momentum, and lr_find's
defaults.

Two oracles. An independent reference written here from fastai's documented formulas — its
Adam step, its weight-decay exemption and its one-cycle schedule — always runs. fastai itself
(2.8, installed with ``--no-deps`` beside torch; see the README) checks pylr and the reference
where it is installed.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pylr
from pylr import optim as PO
from pylr.demo import digits_loaders, digits_mlp
from pylr.train import norm_bias_params, spread_lrs, weight_decay_groups

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def batches():
    """The digits' training batches, fixed: every run sees the same batches in the same order."""
    train, _ = digits_loaders(seed=0)
    return [(x, y) for x, y in train]


def mlp(batch_norm: bool) -> nn.Sequential:
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(64)] if batch_norm else []
    return nn.Sequential(
        nn.Linear(64, 64), *norm, nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def exempt_by_name(model: nn.Sequential) -> set[int]:
    """What fastai does not decay in these MLPs, by name: every bias and the BatchNorm's
    weight (it is layer 1 where there is one)."""
    bn = isinstance(model[1], nn.BatchNorm1d)
    return {
        id(p)
        for name, p in model.named_parameters()
        if name.endswith(".bias") or (bn and name.startswith("1."))
    }


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def relative(ours: nn.Module, ref: nn.Module, init: nn.Module) -> tuple[float, float]:
    """||w - w_ref|| / ||w_ref|| over all parameters, and the same relative to the distance
    training moved the reference, ||w - w_ref|| / ||w_ref - w_0||."""
    a, b, c = flat(ours), flat(ref), flat(init)
    diff = float((a - b).norm())
    return diff / float(b.norm()), diff / float((b - c).norm())


# ---------------------------------------------------------------------------------------------
# the reference, from fastai's formulas


def combined_cos(pos, pct, start, middle, end):
    """fastai's combined_cos: cosine start -> middle over the first pct, middle -> end after."""

    def cos_anneal(a, b, x):
        return a + (1 + math.cos(math.pi * (1 - x))) * (b - a) / 2

    if pos < pct:
        return cos_anneal(start, middle, pos / pct)
    return cos_anneal(middle, end, (pos - pct) / (1 - pct))


class ReferenceAdam:
    """fastai's Adam (``decouple_wd=True``), per parameter with a grad, in this order:
    ``p *= 1 - lr * wd`` (unless exempt); ``avg = mom * avg + (1 - mom) * g``;
    ``sqr = sqr_mom * sqr + (1 - sqr_mom) * g^2``; ``n += 1``;
    ``p -= lr / (1 - mom^n) * avg / (sqrt(sqr / (1 - sqr_mom^n)) + eps)``."""

    def __init__(self, params, exempt, wd=0.01, sqr_mom=0.99, eps=1e-5):
        self.params, self.exempt = list(params), exempt
        self.wd, self.sqr_mom, self.eps = wd, sqr_mom, eps
        self.state: dict[int, dict] = {}

    @torch.no_grad()
    def step(self, lr, mom):
        for p in self.params:
            if p.grad is None:
                continue
            if self.wd and id(p) not in self.exempt:
                p.mul_(1 - lr * self.wd)
            s = self.state.setdefault(
                id(p), {"avg": torch.zeros_like(p), "sqr": torch.zeros_like(p), "n": 0}
            )
            s["avg"].mul_(mom).add_(p.grad, alpha=1 - mom)
            s["sqr"].mul_(self.sqr_mom).addcmul_(p.grad, p.grad, value=1 - self.sqr_mom)
            s["n"] += 1
            debias1, debias2 = 1 - mom ** s["n"], 1 - self.sqr_mom ** s["n"]
            p.addcdiv_(s["avg"], (s["sqr"] / debias2).sqrt() + self.eps, value=-lr / debias1)


class ReferenceSGD:
    """fastai's SGD with ``mom=0``: ``p -= lr * g``, whatever momentum is scheduled."""

    def __init__(self, params):
        self.params = list(params)

    @torch.no_grad()
    def step(self, lr, mom):
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def reference_train(model, batches, opt, lrs, moms):
    """fastai's training loop: step ``t`` on batch ``t mod len(batches)`` at ``lrs[t]`` and
    ``moms[t]``; the raw loss of each step."""
    model.train()
    losses = []
    for t, (lr, mom) in enumerate(zip(lrs, moms, strict=True)):
        x, y = batches[t % len(batches)]
        loss = CE(model(x), y)
        loss.backward()
        opt.step(lr, mom)
        for p in model.parameters():
            p.grad = None
        losses.append(float(loss.detach()))
    return losses


def one_cycle(lr_max, total, moms=(0.95, 0.85, 0.95)):
    """fastai's fit_one_cycle: step t at pos = t / total."""
    lrs = [combined_cos(t / total, 0.25, lr_max / 25, lr_max, lr_max / 1e5) for t in range(total)]
    return lrs, [combined_cos(t / total, 0.25, *moms) for t in range(total)]


# ---------------------------------------------------------------------------------------------
# fit_one_cycle's defaults train like fastai


CASES = {
    # name: (batch norm, fit_one_cycle kwargs, the reference's wd and exemption, tolerance)
    "mlp-batchnorm": (True, {}, 0.01, True, 1e-3),
    "mlp": (False, {}, 0.01, True, 1e-5),
    "mlp-batchnorm-wd0.1": (True, {"wd": 0.1}, 0.1, True, 1e-3),
    "mlp-batchnorm-wd_bn_bias": (True, {"wd_bn_bias": True}, 0.01, False, 1e-3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_one_cycle_defaults_train_to_the_fastai_reference(batches, case):
    """3 epochs at lr_max=1e-2 from the same init over the same batches. With BatchNorm the
    two drift apart through rounding alone (fastai's Adam rounds sqrt(v / bc2), torch's
    sqrt(v) / sqrt(bc2)); decaying the biases and the BatchNorm's weight, as pylr once did,
    puts them ~3e-3 apart (~6e-3 of the distance trained)."""
    batch_norm, kwargs, wd, exempt, tol = CASES[case]
    init = mlp(batch_norm)
    ours, ref = copy.deepcopy(init), copy.deepcopy(init)
    epochs, lr_max = 3, 1e-2
    history = pylr.fit_one_cycle(
        ours, batches, CE, epochs=epochs, lr_max=lr_max, progress=False, **kwargs
    )
    lrs, moms = one_cycle(lr_max, epochs * len(batches))
    skip = exempt_by_name(ref) if exempt else set()
    reference_train(ref, batches, ReferenceAdam(ref.parameters(), skip, wd=wd), lrs, moms)
    np.testing.assert_allclose(history.lr[:, -1], lrs, rtol=1e-12)
    np.testing.assert_allclose(history.momentum[:, -1], moms, rtol=1e-12)
    weights, trained = relative(ours, ref, init)
    assert weights < tol and trained < tol, (weights, trained)


def test_the_default_optimizer_is_fastais_adam_with_the_exemption():
    model = mlp(True)
    seen = []
    original = PO.AdamW.__init__

    def spy(self, params, **kwargs):
        params = list(params)
        seen.append(([(list(g["params"]), g["weight_decay"]) for g in params], kwargs))
        original(self, params, **kwargs)

    PO.AdamW.__init__ = spy
    try:
        loader = [(torch.randn(8, 64), torch.randint(0, 10, (8,)))]
        pylr.fit_one_cycle(model, loader, CE, epochs=1, lr_max=1e-3, progress=False)
        pylr.lr_find(model, loader, CE, num_iter=3, progress=False)
        pylr.fit_one_cycle(
            model, loader, CE, epochs=1, lr_max=1e-3, wd_bn_bias=True, progress=False
        )
    finally:
        PO.AdamW.__init__ = original
    (fit_groups, fit_kw), (find_groups, find_kw), (all_groups, _) = seen
    skip = exempt_by_name(model)
    params = list(model.parameters())
    expected = [
        ([p for p in params if id(p) not in skip], 0.01),
        ([p for p in params if id(p) in skip], 0.0),
    ]
    for groups in (fit_groups, find_groups):
        assert [([id(p) for p in g], wd) for g, wd in groups] == [
            ([id(p) for p in g], wd) for g, wd in expected
        ]
    assert [([id(p) for p in g], wd) for g, wd in all_groups] == [([id(p) for p in params], 0.01)]
    # lr_find's optimizer is fit_one_cycle's, with fastai's mom=0.9 where the cycle starts at
    # moms[0] (and then schedules beta1 anyway)
    assert fit_kw["betas"] == (0.95, 0.99) and find_kw["betas"] == (0.9, 0.99)
    assert fit_kw["eps"] == find_kw["eps"] == 1e-5
    assert fit_kw["weight_decay"] == find_kw["weight_decay"] == 0.01


def test_norm_bias_params_and_weight_decay_groups():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 3)
            self.gn = nn.GroupNorm(2, 4)
            self.bias = nn.Parameter(torch.zeros(4))  # a module's own `bias`
            self.scale = nn.Parameter(torch.ones(4))  # not a bias: decayed

    model = nn.Sequential(
        nn.Embedding(10, 2),
        nn.Linear(2, 3, bias=False),
        nn.BatchNorm1d(3),
        nn.LayerNorm(3),
        nn.InstanceNorm1d(3, affine=True),
        Block(),
        nn.Linear(3, 3),
    )
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = [names[id(p)] for p in norm_bias_params(model)]
    assert exempt == [
        "2.weight",
        "2.bias",
        "3.weight",
        "3.bias",
        "4.weight",
        "4.bias",
        "5.bias",
        "5.conv.bias",
        "5.gn.weight",
        "5.gn.bias",
        "6.bias",
    ]
    decayed, free = weight_decay_groups(model, 0.05)
    assert [names[id(p)] for p in free["params"]] == exempt
    assert free["weight_decay"] == 0.0 and free["do_wd"] is False
    assert [names[id(p)] for p in decayed["params"]] == [
        "0.weight",
        "1.weight",
        "5.scale",
        "5.conv.weight",
        "6.weight",
    ]
    assert decayed["weight_decay"] == 0.05
    (every,) = weight_decay_groups(model, 0.05, wd_bn_bias=True)
    assert len(every["params"]) == len(list(model.parameters()))
    # no bias or norm at all: one group
    assert len(weight_decay_groups(nn.Linear(3, 3, bias=False), 0.01)) == 1
    with pytest.raises(TypeError, match="wd_bn_bias must be True or False"):
        weight_decay_groups(model, 0.01, wd_bn_bias="yes")


def test_wd_with_your_own_optimizer_keeps_exempt_groups_at_zero():
    model = mlp(True)
    opt = torch.optim.AdamW(weight_decay_groups(model, 0.01))
    loader = [(torch.randn(8, 64), torch.randint(0, 10, (8,)))]
    pylr.fit_one_cycle(
        model, loader, CE, epochs=1, lr_max=1e-3, optimizer=opt, wd=0.2, progress=False
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    with pytest.raises(ValueError, match="wd_bn_bias groups the default optimizer"):
        pylr.fit_one_cycle(
            model, loader, CE, epochs=1, lr_max=1e-3, optimizer=opt, wd_bn_bias=False
        )
    with pytest.raises(TypeError, match="wd_bn_bias must be True, False or None"):
        pylr.fit_one_cycle(model, loader, CE, epochs=1, lr_max=1e-3, wd_bn_bias=1)
    with pytest.raises(ValueError, match="wd_bn_bias groups the default optimizer"):
        pylr.lr_find(model, loader, CE, opt, wd_bn_bias=True)
    with pytest.raises(ValueError, match="wd must be a finite number >= 0"):
        pylr.lr_find(model, loader, CE, wd=-1.0)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]  # untouched
    # lr_find(wd=...) sweeps at that wd, then restores the optimizer's own
    loader = [(torch.randn(16, 64), torch.randint(0, 10, (16,))) for _ in range(4)]
    swept = pylr.lr_find(model, loader, CE, opt, wd=0.5, num_iter=8, end_lr=1.0)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    for g in opt.param_groups[:1]:
        g["weight_decay"] = 0.5
    same = pylr.lr_find(model, loader, CE, opt, num_iter=8, end_lr=1.0)
    np.testing.assert_array_equal(swept.raw_losses, same.raw_losses)
    opt.param_groups[0]["weight_decay"] = 0.2
    other = pylr.lr_find(model, loader, CE, opt, num_iter=8, end_lr=1.0)
    assert not np.array_equal(swept.raw_losses, other.raw_losses)


# ---------------------------------------------------------------------------------------------
# slice(high), SGD without momentum


def test_slice_high_spreads_like_fastai():
    high = 1e-2
    assert spread_lrs(slice(high), 3) == [high / 10, high / 10, high]
    assert spread_lrs(slice(high), 1) == [high]
    step = (1e-2 / 1e-5) ** (1 / 3)
    assert spread_lrs(slice(1e-5, 1e-2), 4) == [1e-5 * step**i for i in range(4)]
    for bad, match in [
        (slice(1e-3, 1e-2, 2), "has no step"),
        (slice(None), r"lr_max high \(the slice's stop\) must be a number"),
        (slice(0.0, 1e-2), r"lr_max low \(the slice's start\) must be a finite number > 0"),
        (slice(-1.0), "must be a finite number > 0"),
    ]:
        with pytest.raises((TypeError, ValueError), match=match):
            spread_lrs(bad, 3)

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD([{"params": model[i].parameters()} for i in (0, 2, 4)], lr=1.0)
    loader = [(torch.randn(8, 8), torch.randint(0, 2, (8,))) for _ in range(4)]
    history = pylr.fit_one_cycle(
        model, loader, CE, epochs=2, lr_max=slice(high), optimizer=opt, progress=False
    )
    np.testing.assert_allclose(history.lr.max(axis=0), [high / 10, high / 10, high], rtol=1e-12)


@pytest.mark.parametrize("kind", ["torch", "pylr"])
def test_sgd_without_momentum_stays_without(batches, kind):
    """fastai's SGD(mom=0) has no momentum step, so the cycled momentum changes nothing; pylr
    does not write it into an SGD whose momentum is 0 (fused or not)."""
    init = mlp(False)
    ours, ref = copy.deepcopy(init), copy.deepcopy(init)
    make = torch.optim.SGD if kind == "torch" else PO.SGD
    opt = make(ours.parameters(), lr=0.1)
    history = pylr.fit_one_cycle(
        ours, batches, CE, epochs=1, lr_max=0.1, optimizer=opt, progress=False
    )
    lrs, moms = one_cycle(0.1, len(batches))
    reference_train(ref, batches, ReferenceSGD(ref.parameters()), lrs, moms)
    assert (history.momentum == 0).all() and opt.param_groups[0]["momentum"] == 0
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    if kind == "pylr":  # the fused schedule was set aside for the run and is back
        assert opt.param_groups[0]["schedule"] is None
    # with momentum, the cycle drives it
    opt = make(ours.parameters(), lr=0.1, momentum=0.9)
    history = pylr.fit_one_cycle(
        ours, batches, CE, epochs=1, lr_max=0.1, optimizer=opt, progress=False
    )
    np.testing.assert_allclose(history.momentum[:, 0], moms, rtol=1e-12)


def test_a_schedule_keeps_its_place_on_a_pylr_sgd_without_momentum():
    """fit sets a pylr optimizer's own fused schedule aside while it drives the lr from
    Python (an SGD without momentum), and puts it back afterwards."""
    model = nn.Linear(4, 2)
    own = pylr.schedules.Cosine(10)
    opt = PO.SGD(model.parameters(), lr=0.1, schedule=own)
    loader = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    fused, step = opt.param_groups[0]["schedule"], opt.param_groups[0]["schedule_step"]
    assert fused == 0.1 * own
    pylr.fit_one_cycle(model, loader, CE, epochs=1, lr_max=0.1, optimizer=opt, progress=False)
    assert opt.param_groups[0]["schedule"] is fused
    assert opt.param_groups[0]["schedule_step"] == step
    assert opt.param_groups[0]["momentum"] == 0


# ---------------------------------------------------------------------------------------------
# lr_find's defaults are fit_one_cycle's


def test_lr_find_default_sweep_is_the_fastai_reference(batches):
    """The default sweep's raw losses against the reference Adam (mom=0.9, no momentum
    schedule) at the same lrs, up to the lowest loss (after it the loss blows up, where
    rounding differences grow without bound)."""
    init = digits_mlp(0)
    model, ref = copy.deepcopy(init), copy.deepcopy(init)
    n, start, end = 100, 1e-7, 10.0
    result = pylr.lr_find(model, batches, CE, start_lr=start, end_lr=end, num_iter=n)
    lrs = [start * (end / start) ** (t / (n - 1)) for t in range(n)][: len(result.raw_losses)]
    skip = {id(p) for name, p in ref.named_parameters() if name.endswith(".bias")}
    raw = reference_train(ref, batches, ReferenceAdam(ref.parameters(), skip), lrs, [0.9] * n)
    low = int(np.argmin(result.losses))
    assert low > n // 2  # the sweep went well past the descent
    np.testing.assert_allclose(result.raw_losses[: low + 1], raw[: low + 1], rtol=1e-4)


def test_lr_find_with_its_default_equals_the_same_optimizer_passed_in(batches):
    model = digits_mlp(0)
    default = pylr.lr_find(model, batches, CE, num_iter=30)
    opt = PO.AdamW(weight_decay_groups(model, 0.01), betas=(0.9, 0.99), eps=1e-5)
    given = pylr.lr_find(model, batches, CE, opt, num_iter=30)
    np.testing.assert_array_equal(default.raw_losses, given.raw_losses)
    np.testing.assert_array_equal(default.lrs, given.lrs)
    torch_defaults = pylr.lr_find(model, batches, CE, PO.AdamW(model.parameters()), num_iter=30)
    assert not np.array_equal(default.raw_losses, torch_defaults.raw_losses)
    assert default.group_lrs.shape == (30, 1)  # the two groups follow one sweep


# ---------------------------------------------------------------------------------------------
# fastai itself, where it is installed


@pytest.fixture(scope="module")
def fastai():
    with warnings.catch_warnings():
        # fastai's imports use torch.jit.script, which torch 2.13 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("fastai", minversion="2.8")
        import fastai.callback.progress
        import fastai.callback.schedule
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.optimizer import SGD, Adam
        from fastai.torch_core import norm_bias_params as fastai_norm_bias_params

    return {
        "Learner": Learner,
        "DataLoaders": DataLoaders,
        "Adam": Adam,
        "SGD": SGD,
        "Optimizer": fastai.optimizer.Optimizer,
        "schedule": fastai.callback.schedule,
        "norm_bias_params": fastai_norm_bias_params,
    }


def fastai_learner(fastai, model, batches, tmp_path, opt_func=None, **kwargs):
    dls = fastai["DataLoaders"](batches, batches[:1])
    opt_func = opt_func or fastai["Adam"]
    return fastai["Learner"](
        dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=opt_func, path=tmp_path, **kwargs
    )


@pytest.mark.parametrize("case", list(CASES))
def test_fit_one_cycle_trains_to_fastais_weights(fastai, batches, tmp_path, case):
    batch_norm, kwargs, wd, exempt, tol = CASES[case]
    init = mlp(batch_norm)
    ours, theirs, ref = copy.deepcopy(init), copy.deepcopy(init), copy.deepcopy(init)
    learn = fastai_learner(fastai, theirs, batches, tmp_path, **kwargs)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(3, 1e-2)
    pylr.fit_one_cycle(ours, batches, CE, epochs=3, lr_max=1e-2, progress=False, **kwargs)
    weights, trained = relative(ours, theirs, init)
    assert weights < tol and trained < tol, (weights, trained)
    # the reference is fastai, to its rounding
    lrs, moms = one_cycle(1e-2, 3 * len(batches))
    skip = exempt_by_name(ref) if exempt else set()
    reference_train(ref, batches, ReferenceAdam(ref.parameters(), skip, wd=wd), lrs, moms)
    weights, trained = relative(ref, theirs, init)
    assert weights < tol and trained < tol, (weights, trained)


def test_sgd_without_momentum_trains_like_fastais(fastai, batches, tmp_path):
    init = mlp(False)
    ours, theirs = copy.deepcopy(init), copy.deepcopy(init)
    learn = fastai_learner(fastai, theirs, batches, tmp_path, opt_func=fastai["SGD"])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 0.1)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    pylr.fit_one_cycle(ours, batches, CE, epochs=1, lr_max=0.1, optimizer=opt, progress=False)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_slices_spread_as_fastais_set_hyper(fastai):
    for n in (1, 2, 3, 5):
        params = [[nn.Parameter(torch.zeros(1))] for _ in range(n)]
        opt = fastai["Optimizer"](params, [], lr=1.0)
        for lr in (slice(1e-2), slice(1e-5, 1e-2), slice(3e-4, 3e-4)):
            opt.set_hyper("lr", lr)
            assert spread_lrs(lr, n) == [float(h["lr"]) for h in opt.hypers], (n, lr)


def test_norm_bias_params_is_fastais_plus_groupnorm_and_rmsnorm(fastai):
    layers = [nn.Linear(4, 4), nn.BatchNorm1d(4), nn.LayerNorm(4), nn.Linear(4, 4, bias=False)]
    layers += [nn.InstanceNorm1d(4, affine=True), nn.GroupNorm(2, 4)]
    if hasattr(nn, "RMSNorm"):
        layers.append(nn.RMSNorm(4))
    model = nn.Sequential(*layers)
    ours = {id(p) for p in norm_bias_params(model)}
    theirs = {id(p) for p in fastai["norm_bias_params"](model)}
    weights_only_here = tuple(
        getattr(nn, name) for name in ("GroupNorm", "RMSNorm") if hasattr(nn, name)
    )
    extra = {id(m.weight) for m in model if isinstance(m, weights_only_here)}
    assert theirs <= ours and ours - theirs == extra


def test_lr_find_reproduces_fastais_lr_find(fastai, batches, tmp_path):
    """Same model, batches and lrs (fastai's sweep stops one step short of end_lr: step t at
    start * (end / start) ** (t / num_it)): the same curve up to the lowest loss, the same
    valley, slide and minimum; steep is fastai's rule on the curve up to the lowest loss,
    where fastai's own may land past the blow-up."""
    init = digits_mlp(0)
    ours, theirs = copy.deepcopy(init), copy.deepcopy(init)
    learn = fastai_learner(fastai, theirs, batches, tmp_path)
    sched = fastai["schedule"]
    rules = (sched.valley, sched.slide, sched.minimum, sched.steep)
    with learn.no_bar(), warnings.catch_warnings():
        # its restore pickles numpy arrays the old way (numpy.core), which numpy 2 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        found = learn.lr_find(suggest_funcs=rules, show_plot=False)
    n = 100
    result = pylr.lr_find(ours, batches, CE, end_lr=1e-7 * 1e8 ** ((n - 1) / n), num_iter=n)
    their_losses = np.array([float(x) for x in learn.recorder.losses])
    np.testing.assert_allclose(result.lrs, learn.recorder.lrs, rtol=1e-12)
    low = int(np.argmin(their_losses))
    assert int(np.argmin(result.losses)) == low
    np.testing.assert_allclose(result.losses[: low + 1], their_losses[: low + 1], rtol=1e-4)
    # fastai's suggestions come from float32 tensors of the lrs
    for name in ("valley", "slide", "minimum"):
        assert result.suggestions[name] == pytest.approx(getattr(found, name), rel=1e-6), name
    lrs = torch.tensor(learn.recorder.lrs[n // 10 : -5])
    losses = torch.tensor(learn.recorder.losses[n // 10 : -5])
    end = int(torch.argmin(losses)) + 1
    steep_before_the_lowest, _ = sched.steep(lrs[:end], losses[:end], n)
    assert result.suggestions["steep"] == pytest.approx(steep_before_the_lowest, rel=1e-6)
    assert result.suggestions["steep"] < result.lrs[low] < found.steep
