"""pylr.fit and pylr.fit_one_cycle: the schedule each step used, the history, callbacks,
progress, Ctrl-C, clipping, AMP and bad input."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

import pylr
from pylr import optim as PO
from pylr import schedules as S
from pylr.train import spread_lrs

CE = nn.functional.cross_entropy


def data(n=96, batch=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def combined_cos(pos, pct, start, middle, end):
    """fastai's combined_cos, written from its definition: cosine start -> middle over the
    first pct of training, middle -> end over the rest."""

    def cos_anneal(a, b, x):
        return a + (1 + math.cos(math.pi * (1 - x))) * (b - a) / 2

    if pos < pct:
        return cos_anneal(start, middle, pos / pct)
    return cos_anneal(middle, end, (pos - pct) / (1 - pct))


# ---------------------------------------------------------------------------------------------
# the one-cycle schedule each step used


OPTS = {
    "pylr-AdamW (fused)": lambda m: PO.AdamW(m.parameters()),
    "pylr-SGD (fused)": lambda m: PO.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "torch-Adam": lambda m: torch.optim.Adam(m.parameters()),
    "torch-SGD": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_fit_one_cycle_records_the_closed_form_schedule(name):
    model = net()
    opt = OPTS[name](model)
    loader = data()
    epochs, lr_max = 3, 0.01
    history = pylr.fit_one_cycle(
        model, loader, CE, epochs=epochs, lr_max=lr_max, optimizer=opt, progress=False
    )
    total = epochs * len(loader)
    sched = S.FastaiOneCycle(lr_max, total)
    assert history.lr.shape == (total, 1) and history.momentum.shape == (total, 1)
    np.testing.assert_array_equal(history.lr[:, 0], sched.values(total))
    np.testing.assert_array_equal(history.momentum[:, 0], sched.momentum_values(total))
    # ... which is fastai's combined_cos
    for t in range(total):
        pos = t / total
        assert history.lr[t, 0] == pytest.approx(
            combined_cos(pos, 0.25, lr_max / 25, lr_max, lr_max / 1e5), rel=1e-9
        )
        assert history.momentum[t, 0] == pytest.approx(
            combined_cos(pos, 0.25, 0.95, 0.85, 0.95), rel=1e-12
        )
    assert history.loss.shape == (total,) and np.isfinite(history.loss).all()
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    assert history.steps_per_epoch == len(loader) and not history.interrupted
    if isinstance(opt, PO.SGD | PO.AdamW):  # the fused schedule is detached afterwards
        assert opt.param_groups[0]["schedule"] is None
    assert opt.param_groups[0]["lr"] == history.lr[-1, 0]


def test_fused_and_python_driven_schedules_train_alike():
    """pylr's AdamW with the schedule fused in C++ vs torch's AdamW driven from Python."""
    ours, ref = net(), net()
    sched = S.FastaiOneCycle(0.01, 18, moms=(0.9, 0.8, 0.85))
    opt_ours = PO.AdamW(ours.parameters(), weight_decay=0.05)
    opt_ref = torch.optim.AdamW(ref.parameters(), weight_decay=0.05, foreach=False)
    h1 = pylr.fit(ours, data(), CE, opt_ours, epochs=3, schedule=[sched], progress=False)
    h2 = pylr.fit(ref, data(), CE, opt_ref, epochs=3, schedule=[sched], progress=False)
    np.testing.assert_array_equal(h1.lr, h2.lr)
    np.testing.assert_array_equal(h1.momentum, h2.momentum)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fit_default_optimizer_is_fastais_adamw():
    model = net()
    seen = {}

    class Spy(pylr.Callback):
        def on_train_begin(self, history):
            pass

    original = PO.AdamW.__init__

    def init(self, params, **kwargs):
        seen.update(kwargs)
        original(self, params, **kwargs)

    PO.AdamW.__init__ = init
    try:
        pylr.fit_one_cycle(
            model, data(), CE, epochs=1, lr_max=1e-3, progress=False, callbacks=[Spy()]
        )
        assert seen["betas"] == (0.95, 0.99) and seen["eps"] == 1e-5
        assert seen["weight_decay"] == 0.01
        pylr.fit_one_cycle(model, data(), CE, epochs=1, lr_max=1e-3, wd=0.0, progress=False)
        assert seen["weight_decay"] == 0.0
    finally:
        PO.AdamW.__init__ = original


def test_discriminative_learning_rates():
    assert spread_lrs(slice(1e-4, 1e-2), 3) == pytest.approx([1e-4, 1e-3, 1e-2], rel=1e-12)
    assert spread_lrs((1e-5, 1e-2), 4) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2], rel=1e-12)
    assert spread_lrs(slice(1e-4, 1e-2), 1) == [1e-2]  # fastai: one group gets the top
    assert spread_lrs([0.1, 0.2, 0.3], 3) == [0.1, 0.2, 0.3]
    assert spread_lrs(0.5, 2) == [0.5, 0.5]
    with pytest.raises(ValueError, match="2 values but the optimizer has 3"):
        spread_lrs([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="low must be <= high"):
        spread_lrs(slice(1e-2, 1e-4), 3)
    with pytest.raises(ValueError, match=r"lr_max\[1\] must be a finite number > 0"):
        spread_lrs([0.1, -1.0], 2)

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = [{"params": model[i].parameters()} for i in (0, 2, 4)]
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    history = pylr.fit_one_cycle(
        model, data(), CE, epochs=2, lr_max=slice(1e-4, 1e-2), optimizer=opt, progress=False
    )
    total = 2 * len(data())
    peaks = history.lr.max(axis=0)
    np.testing.assert_allclose(peaks, [1e-4, 1e-3, 1e-2], rtol=1e-12)
    for g, lr in enumerate([1e-4, 1e-3, 1e-2]):
        np.testing.assert_array_equal(history.lr[:, g], S.FastaiOneCycle(lr, total).values(total))


def test_fit_with_a_relative_schedule_and_without_one():
    model = net()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[2].parameters(), "lr": 0.01},
        ]
    )
    sched = S.warmup(S.Cosine(T_max=10), steps=4)
    history = pylr.fit(model, data(), CE, opt, epochs=2, schedule=sched, progress=False)
    np.testing.assert_allclose(history.lr[:, 0], 0.1 * sched.values(12), rtol=1e-15)
    np.testing.assert_allclose(history.lr[:, 1], 0.01 * sched.values(12), rtol=1e-15)
    assert (history.momentum == 0.0).all()  # SGD's momentum, left at 0: the schedule has none
    history = pylr.fit(model, data(), CE, opt, epochs=1, progress=False)
    assert (history.lr[:, 0] == opt.param_groups[0]["lr"]).all()  # no schedule: lr untouched
    ada = torch.optim.Adagrad(model.parameters(), lr=0.1)
    h = pylr.fit(model, data(), CE, ada, epochs=1, schedule=S.OneCycle(1.0, 6), progress=False)
    assert np.isnan(h.momentum).all()  # no momentum to cycle: only the lr follows


def test_fit_steps_a_torch_scheduler_object():
    from pylr import lr_scheduler as P_sched

    for cls in (torch.optim.lr_scheduler.OneCycleLR, P_sched.OneCycleLR):
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = cls(opt, max_lr=0.1, total_steps=18)
        history = pylr.fit(model, data(), CE, opt, epochs=3, schedule=sched, progress=False)
        ref_opt = torch.optim.SGD(net().parameters(), lr=0.1, momentum=0.9)
        ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=18)
        lrs, moms = [], []
        for _ in range(18):
            lrs.append(ref_opt.param_groups[0]["lr"])
            moms.append(ref_opt.param_groups[0]["momentum"])
            ref_opt.step()
            ref.step()
        np.testing.assert_allclose(history.lr[:, 0], lrs, rtol=1e-12)
        np.testing.assert_allclose(history.momentum[:, 0], moms, rtol=1e-12)
    # ReduceLROnPlateau steps once an epoch, on the validation loss
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    seen = []
    original = plateau.step
    plateau.step = lambda metrics: (seen.append(metrics), original(metrics))
    history = pylr.fit(
        model, data(), CE, opt, epochs=3, schedule=plateau, val_loader=data(seed=1), progress=False
    )
    assert seen == list(history.epoch_values("val_loss"))
    other = torch.optim.SGD(net().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        pylr.fit(
            model,
            data(),
            CE,
            opt,
            epochs=1,
            schedule=torch.optim.lr_scheduler.StepLR(other, 2),
            progress=False,
        )


def test_digits_accuracy_with_fit_one_cycle_and_evaluate():
    from pylr.demo import digits_loaders, digits_mlp

    train, val = digits_loaders(seed=0)
    model = digits_mlp(0)
    history = pylr.fit_one_cycle(
        model,
        train,
        CE,
        epochs=10,
        lr_max=3e-3,
        val_loader=val,
        metrics={"acc": pylr.accuracy},
        progress=False,
    )
    assert history.epochs[-1]["acc"] >= 0.9
    scores = pylr.evaluate(model, val, CE, [pylr.accuracy])
    x = torch.cat([b[0] for b in val])
    y = torch.cat([b[1] for b in val])
    with torch.no_grad():
        out = model(x)
    assert scores["accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()), abs=1e-6)
    assert scores["loss"] == pytest.approx(float(CE(out, y)), rel=1e-5)
    assert scores["accuracy"] == pytest.approx(history.epochs[-1]["acc"], abs=1e-6)
    assert history.epoch_values("val_loss")[-1] == pytest.approx(scores["loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# history, callbacks, progress


def test_history_to_dict_and_plots(tmp_path):
    model = net()
    opt = PO.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = pylr.fit_one_cycle(
        model,
        data(),
        CE,
        epochs=2,
        lr_max=0.1,
        optimizer=opt,
        val_loader=data(seed=1),
        metrics=[pylr.accuracy],
        progress=False,
    )
    d = json.loads(json.dumps(history.to_dict()))
    assert len(d["lr"]) == len(d["loss"]) == len(d["momentum"]) == 12
    assert set(d["epochs"][0]) == {"epoch", "train_loss", "val_loss", "accuracy", "time"}
    assert d["epochs"][0]["train_loss"] == pytest.approx(float(np.mean(d["loss"][:6])))
    for name, fn in [("loss", history.plot_loss), ("lr", history.plot_lr)]:
        path = tmp_path / f"{name}.png"
        fn(path)
        assert path.stat().st_size > 10_000
    assert "epochs=2" in repr(history)
    with pytest.raises(KeyError, match="not recorded"):
        history.epoch_values("f1")


def legend_outside(ax):
    """The legend's labels, after checking that it lies above the data area and inside the
    figure (so it covers no curve, on either axis)."""
    fig = ax.figure
    fig.draw_without_rendering()
    legend = ax.get_legend()
    box, where = ax.get_window_extent(), legend.get_window_extent()
    assert where.y0 >= box.y1 and where.y1 <= fig.bbox.y1
    return [t.get_text() for t in legend.get_texts()]


def test_plot_lr_names_lr_and_momentum_and_shows_both_ends(tmp_path):
    from matplotlib.figure import Figure

    history = pylr.fit_one_cycle(net(), data(), CE, epochs=2, lr_max=0.01, progress=False)
    assert history.lr.shape[1] == 2  # the default optimizer: decayed and not-decayed params
    ax = history.plot_lr(tmp_path / "schedule.png")  # the figure pylr demo writes
    assert legend_outside(ax) == ["lr", "momentum (beta1)"]  # one schedule, one line each
    (mom_ax,) = [a for a in ax.figure.axes if a is not ax]
    mom = mom_ax.get_lines()[0].get_ydata()
    np.testing.assert_array_equal(mom, history.momentum[:, 0])
    low, high = mom_ax.get_ylim()
    assert low < mom.min() and mom.max() < high  # the cycle's end (0.95) inside, not on the edge
    left, right = ax.get_xlim()
    assert left < 0 and history.steps - 1 < right

    # groups with the same schedule are one line; SGD's momentum is "momentum"
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(
        [{"params": model[i].parameters()} for i in (0, 2, 4)], lr=1.0, momentum=0.9
    )
    history = pylr.fit_one_cycle(
        model, data(), CE, epochs=1, lr_max=slice(0.1), optimizer=opt, progress=False
    )
    ax = history.plot_lr(ax=Figure(layout="constrained").add_subplot())
    assert legend_outside(ax) == [
        "lr (groups 0, 1)",
        "lr (group 2)",
        "momentum (groups 0, 1, 2)",
    ]


def test_callbacks_are_called_in_order_and_can_stop():
    events = []

    class Log(pylr.Callback):
        def on_train_begin(self, history):
            events.append("begin")

        def on_epoch_begin(self, epoch, history):
            events.append(f"e{epoch}")

        def on_step_end(self, step, loss, history):
            assert isinstance(loss, float) and history.steps == step + 1
            events.append(step)

        def on_epoch_end(self, epoch, logs, history):
            events.append(f"end{epoch}:{logs['epoch']}")

        def on_train_end(self, history):
            events.append("done")

    pylr.fit(
        net(),
        data(n=32),
        CE,
        torch.optim.SGD(net().parameters(), lr=0.1),
        epochs=2,
        callbacks=[Log()],
        progress=False,
    )
    assert events == ["begin", "e1", 0, 1, "end1:1", "e2", 2, 3, "end2:2", "done"]

    class Stop(pylr.Callback):
        def on_step_end(self, step, loss, history):
            if step == 4:
                raise pylr.StopTraining("enough")

    model = net()
    history = pylr.fit(
        model,
        data(),
        CE,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=3,
        callbacks=[Stop()],
        progress=False,
    )
    assert history.steps == 5 and history.interrupted and history.stop_reason == "enough"
    with pytest.raises(TypeError, match="has none of the hooks"):
        pylr.fit(
            model, data(), CE, torch.optim.SGD(model.parameters()), epochs=1, callbacks=[object()]
        )


@pytest.mark.parametrize(
    ("hook", "when", "steps", "epochs"),
    [
        ("on_train_begin", None, 0, 0),
        ("on_epoch_begin", 2, 6, 1),  # before any step of epoch 2
        ("on_epoch_end", 1, 6, 1),  # epoch 1 recorded, then the stop
    ],
)
def test_stop_training_from_every_hook(hook, when, steps, epochs):
    ended = []

    class Stop(pylr.Callback):
        def on_train_end(self, history):
            ended.append(history.stop_reason)

    def stop(self, *args):
        if when is None or args[0] == when:
            raise pylr.StopTraining(hook)

    setattr(Stop, hook, stop)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = pylr.fit(model, data(), CE, opt, epochs=3, callbacks=[Stop()], progress=False)
    assert history.steps == steps and len(history.epochs) == epochs
    assert history.interrupted and history.stop_reason == hook and ended == [hook]


def test_fit_calls_set_epoch_on_a_distributed_sampler():
    """set_epoch(0), set_epoch(1), ... at the start of each epoch, whether the sampler is the
    loader's or its batch sampler's (no process group needed: the sampler is given its
    rank)."""
    from torch.utils.data import BatchSampler, DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    x = torch.randn(40, 8)
    data_ = TensorDataset(x, (x[:, 0] > 0).long())

    class Epochs(pylr.Callback):
        def __init__(self, sampler):
            self.sampler, self.seen = sampler, []

        def on_epoch_begin(self, epoch, history):
            self.seen.append(self.sampler.epoch)

    for batch_sampler in (False, True):
        sampler = DistributedSampler(data_, num_replicas=2, rank=1, shuffle=True, seed=5)
        if batch_sampler:
            loader = DataLoader(data_, batch_sampler=BatchSampler(sampler, 4, drop_last=False))
        else:
            loader = DataLoader(data_, batch_size=4, sampler=sampler)
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        watch = Epochs(sampler)
        pylr.fit(model, loader, CE, opt, epochs=3, callbacks=[watch], progress=False)
        assert watch.seen == [0, 1, 2]


def fit_sgd(model, lr, callbacks, **kwargs):
    """fit with plain SGD at ``lr`` for up to 10 epochs, validating on another sample."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    kwargs.setdefault("val_loader", data(seed=1))
    return pylr.fit(
        model, data(), CE, opt, epochs=10, callbacks=callbacks, progress=False, **kwargs
    )


def test_early_stopping_stops_and_restores_the_best_weights():
    # lr 0: the validation loss never improves after epoch 1, so patience 2 stops at epoch 3
    model = net()
    stop = pylr.EarlyStopping(patience=2)
    history = fit_sgd(model, 0.0, [stop])
    assert len(history.epochs) == 3 and history.interrupted
    assert stop.best_epoch == 1 and stop.stopped_epoch == 3
    assert history.stop_reason.startswith("early stopping: val_loss has not improved")
    # a learning rate that ruins the model after the first epoch: the best weights come back
    model = net()
    stop = pylr.EarlyStopping(patience=2)
    history = fit_sgd(model, 50.0, [stop])
    best = history.epochs[stop.best_epoch - 1]["val_loss"]
    assert best == min(history.epoch_values("val_loss"))
    assert not history.epochs[-1]["val_loss"] <= best  # worse, or NaN
    assert pylr.evaluate(model, data(seed=1), CE)["loss"] == pytest.approx(best, rel=1e-6)
    # mode="max" on a metric, and a key fit does not record
    model = net()
    up = pylr.EarlyStopping(monitor="accuracy", mode="max", patience=1, restore_best=False)
    fit_sgd(model, 0.0, [up], metrics=[pylr.accuracy])
    assert up.stopped_epoch == 2
    with pytest.raises(KeyError, match="the epoch logs have"):
        fit_sgd(model, 1e-3, [pylr.EarlyStopping()], val_loader=None)
    with pytest.raises(ValueError, match="patience must be"):
        pylr.EarlyStopping(patience=0)


def test_progress_bar_lines_and_silence(capsys):
    def run(progress):
        model = net()
        pylr.fit(
            model,
            data(),
            CE,
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=2,
            progress=progress,
            val_loader=data(seed=1),
        )
        return capsys.readouterr()

    out = run("lines")
    lines = out.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "val_loss" in lines[0]
    bar = run("bar")
    assert "epoch 1/2" in bar.err and ("it/s" in bar.err or "s/it" in bar.err)
    assert "epoch 2/2" in bar.err  # the epoch summary, written above the bars
    silent = run(False)
    assert silent.out == "" and silent.err == ""
    auto = run(True)  # not a terminal under pytest: lines
    assert auto.out.count("epoch ") == 2
    with pytest.raises(ValueError, match="progress must be"):
        run("fancy")


def test_progress_bar_shows_loss_and_lr(capsys, monkeypatch):
    import time as time_module

    clock = iter(range(0, 10_000))
    monkeypatch.setattr(time_module, "perf_counter", lambda: float(next(clock)))
    model = net()
    pylr.fit(
        model, data(), CE, torch.optim.SGD(model.parameters(), lr=0.1), epochs=1, progress="bar"
    )
    err = capsys.readouterr().err
    assert "loss=" in err and "lr=0.1" in err


# ---------------------------------------------------------------------------------------------
# Ctrl-C, clipping, AMP


def test_ctrl_c_stops_cleanly_after_the_current_step():
    model = net()
    opt = PO.AdamW(model.parameters())

    class Interrupt(pylr.Callback):
        def on_step_end(self, step, loss, history):
            if step == 7:
                os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    history = pylr.fit_one_cycle(
        model,
        data(),
        CE,
        epochs=3,
        lr_max=1e-2,
        optimizer=opt,
        callbacks=[Interrupt()],
        progress=False,
    )
    assert history.interrupted and history.stop_reason == "Ctrl-C"
    assert history.steps == 8 and len(history.epochs) == 1  # epoch 2 was cut short
    assert signal.getsignal(signal.SIGINT) is handler
    assert all(p.grad is None for p in model.parameters())
    assert opt.param_groups[0]["schedule"] is None
    # the model and optimizer go on training
    more = pylr.fit(model, data(), CE, opt, epochs=1, progress=False)
    assert more.steps == 6 and np.isfinite(more.loss).all()


def test_keyboard_interrupt_raised_inside_the_loop_keeps_the_history():
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return CE(out, y)

    model = net()
    history = pylr.fit(
        model,
        data(),
        loss_fn,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=3,
        progress=False,
    )
    assert history.interrupted and history.steps == 9 and len(history.epochs) == 1
    assert model.training and all(p.grad is None for p in model.parameters())


def test_grad_clip_bounds_the_norm_seen_by_the_step():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []

    def hook(o, a, k):
        norms.append(
            float(
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])
                )
            )
        )

    opt.register_step_pre_hook(hook)
    pylr.fit(model, data(), CE, opt, epochs=2, grad_clip=0.05, progress=False)
    assert len(norms) == 12 and max(norms) <= 0.05 * (1 + 1e-5)
    with pytest.raises(ValueError, match="grad_clip must be a finite number > 0"):
        pylr.fit(model, data(), CE, opt, epochs=1, grad_clip=0.0)


@pytest.mark.parametrize("amp", ["bf16", torch.float16])
def test_amp(amp):
    model = net()
    opt = PO.AdamW(model.parameters())
    history = pylr.fit_one_cycle(
        model,
        data(),
        CE,
        epochs=2,
        lr_max=1e-2,
        optimizer=opt,
        amp=amp,
        grad_clip=1.0,
        progress=False,
        val_loader=data(seed=1),
    )
    assert np.isfinite(history.loss).all() and history.steps == 12
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_loader_without_len():
    class Stream:
        def __iter__(self):
            yield from data()

    model = net()
    history = pylr.fit(
        model,
        Stream(),
        CE,
        torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        schedule=S.Cosine(T_max=12),
        progress="bar",
    )
    assert history.steps == 12 and history.steps_per_epoch == 6
    np.testing.assert_allclose(history.lr[:, 0], 0.1 * S.Cosine(T_max=12).values(12), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_input():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.clone() for p in model.parameters()]
    cases = [
        (dict(epochs=0), ValueError, "epochs must be an integer >= 1"),
        (dict(train_loader=[]), ValueError, "train_loader is empty"),
        (dict(metrics=[pylr.accuracy]), ValueError, "pass val_loader"),
        (dict(metrics=42, val_loader=data()), TypeError, "metrics must be"),
        (dict(schedule=[S.Constant(1.0)] * 2), ValueError, "2 schedules but the optimizer has 1"),
        (dict(schedule="cos"), TypeError, "schedule must be"),
        (dict(optimizer=None), TypeError, "optimizer must be"),
        (dict(loss_fn=lambda o, y: CE(o, y, reduction="none")), ValueError, "scalar tensor"),
        (dict(amp="int8"), ValueError, "amp must be"),
        (dict(train_loader=[torch.zeros(2, 8)]), TypeError, "must yield"),
        (dict(device="gpu0"), ValueError, "device must be"),
    ]
    for change, exc, match in cases:
        kwargs = dict(
            model=model, train_loader=data(), loss_fn=CE, optimizer=opt, epochs=1, progress=False
        )
        kwargs.update(change)
        with pytest.raises(exc, match=match):
            pylr.fit(**kwargs)
        for a, b in zip(before, model.parameters(), strict=True):
            assert torch.equal(a, b), change
    with pytest.raises(TypeError, match="makes its own schedule"):
        pylr.fit_one_cycle(model, data(), CE, epochs=1, lr_max=0.1, schedule=S.Constant(1.0))
    with pytest.raises(ValueError, match="moms must be three numbers"):
        pylr.fit_one_cycle(model, data(), CE, epochs=1, lr_max=0.1, moms=(0.9, 0.8))
    with pytest.raises(TypeError, match="needs len"):
        pylr.fit_one_cycle(model, iter(data()), CE, epochs=1, lr_max=0.1)
    with pytest.raises(TypeError, match="all_ranks must be True or False"):
        pylr.evaluate(model, data(), CE, all_ranks="yes")
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)
