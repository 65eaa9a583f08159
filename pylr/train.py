"""A lean training loop: ``fit`` and ``fit_one_cycle``, with a ``History`` of every step.

The loop is the lr (and momentum) of a :mod:`pylr.schedules` schedule, then one
:func:`pylr._loop.train_step` (the one ``lr_find`` takes too): forward, backward, optional
gradient clipping, the optimizer step and ``zero_grad``. With pylr's own optimizers
the schedule is fused into the step (evaluated in C++ inside it); with any other optimizer the
loop writes the schedule's values into the param groups before each step.

Under torch.distributed (``torchrun``, a ``DistributedDataParallel`` or FSDP2 model) every rank
runs ``fit``: a ``DistributedSampler`` gets ``set_epoch`` each epoch, the history holds the
ranks' means (the same on every rank), the ranks stop after the same step, and only rank 0
prints.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from pylr import _loop
from pylr._loop import NORM_TYPES, norm_bias_params, weight_decay_groups
from pylr.schedules import FastaiOneCycle, Schedule

__all__ = [
    "NORM_TYPES",
    "Callback",
    "EarlyStopping",
    "History",
    "StopTraining",
    "fit",
    "fit_one_cycle",
    "norm_bias_params",
    "spread_lrs",
    "weight_decay_groups",
]


class StopTraining(Exception):
    """Raise from a callback to end ``fit`` cleanly after the current step."""


class Callback:
    """Hooks into :func:`fit`; override the ones you need. ``history`` is the live
    :class:`History`; raise :class:`StopTraining` from any hook to stop after the current step.

    - ``on_train_begin(history)``, ``on_train_end(history)``
    - ``on_epoch_begin(epoch, history)``, ``on_epoch_end(epoch, logs, history)`` — ``logs`` is
      the epoch's row of ``history.epochs`` (train/validation loss, metrics, time).
    - ``on_step_end(step, loss, history)`` — ``loss`` as a float (only hooks that are
      overridden are called, so the loop does not pay for ``.item()`` otherwise).

    ``fit`` sets ``self.model`` and ``self.optimizer`` before ``on_train_begin``.
    """

    def on_train_begin(self, history: History) -> None:
        pass

    def on_epoch_begin(self, epoch: int, history: History) -> None:
        pass

    def on_step_end(self, step: int, loss: float, history: History) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float], history: History) -> None:
        pass

    def on_train_end(self, history: History) -> None:
        pass

    # set by fit before on_train_begin
    model: nn.Module
    optimizer: Optimizer


class EarlyStopping(Callback):
    """Stop when an epoch value stops improving, and optionally go back to the best weights.

    After each epoch ``logs[monitor]`` improves when it is below ``best - min_delta``
    (``mode="min"``) or above ``best + min_delta`` (``"max"``); after ``patience`` epochs
    without improvement the run stops (:class:`StopTraining`). With ``restore_best`` the model's
    state dict of the best epoch is loaded back at the end of the run. ``best``, ``best_epoch``
    and ``stopped_epoch`` tell what happened.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best = float(min_delta), bool(restore_best)

    def on_train_begin(self, history: History) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.stopped_epoch: int | None = None
        self._best_state: dict[str, Tensor] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float], history: History) -> None:
        if self.monitor not in logs:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which fit does not record; "
                f"the epoch logs have {sorted(logs)}"
            )
        value = logs[self.monitor]
        if self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch = value, epoch
            if self.restore_best:
                self._best_state = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        elif epoch - self.best_epoch >= self.patience:
            self.stopped_epoch = epoch
            raise StopTraining(
                f"early stopping: {self.monitor} has not improved for {self.patience} epochs "
                f"(best {self.best:.4g} at epoch {self.best_epoch})"
            )

    def on_train_end(self, history: History) -> None:
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)


_HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_end", "on_epoch_end", "on_train_end")


def _bound_hooks(
    callbacks: Any, model: nn.Module, optimizer: Optimizer
) -> dict[str, list[Callable[..., Any]]]:
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, Sequence) or isinstance(callbacks, str):
        callbacks = [callbacks]
    for cb in callbacks:
        if isinstance(cb, Callback):
            cb.model, cb.optimizer = model, optimizer
    hooks: dict[str, list[Callable[..., Any]]] = {name: [] for name in _HOOKS}
    for i, cb in enumerate(callbacks):
        found = False
        for name in _HOOKS:
            fn = getattr(cb, name, None)
            if fn is None:
                continue
            found = True
            if getattr(type(cb), name, None) is getattr(Callback, name):
                continue  # the base class's no-op
            hooks[name].append(fn)
        if not found:
            raise TypeError(
                f"callbacks[{i}] ({type(cb).__name__}) has none of the hooks {list(_HOOKS)}; "
                "subclass pylr.Callback"
            )
    return hooks


class History:
    """What :func:`fit` recorded.

    Attributes:
        lr: shape ``(steps, groups)``, the lr each step used.
        momentum: shape ``(steps, groups)``, the momentum (SGD) or beta1 (Adam) each step used;
            NaN for optimizers without one.
        momentum_name: ``"beta1"`` (Adam-like), ``"momentum"`` (SGD-like) or None.
        loss: shape ``(steps,)``, the training loss of each step — under torch.distributed the
            mean over the ranks of each rank's loss (the loss whose gradient DDP's averaged
            gradient is).
        epochs: one dict per finished epoch: ``epoch``, ``train_loss`` (mean of its steps),
            ``val_loss`` and each metric (with a ``val_loader``; under torch.distributed over
            the union of the ranks' validation batches, each sample counted once), ``time``
            (seconds; the slowest rank's).
        steps_per_epoch: batches per epoch (None until the first epoch ends if the loader has
            no ``len``).
        interrupted: True when Ctrl-C (or :class:`StopTraining`) ended the run early.
    """

    def __init__(
        self, n_groups: int, steps_per_epoch: int | None, momentum_name: str | None = None
    ) -> None:
        self.n_groups = n_groups
        self.steps_per_epoch = steps_per_epoch
        self.momentum_name = momentum_name
        self._lr: list[list[float]] = []
        self._momentum: list[list[float]] = []
        self._loss: list[Tensor] = []  # this process's losses not read yet
        self._votes: list[_Vote] = []  # torch.distributed: the same steps' all-rank means
        self._loss_done: list[float] = []
        self.epochs: list[dict[str, float]] = []
        self.interrupted = False
        self.stop_reason: str | None = None

    @property
    def lr(self) -> np.ndarray:
        return np.asarray(self._lr, dtype=np.float64).reshape(-1, self.n_groups)

    @property
    def momentum(self) -> np.ndarray:
        return np.asarray(self._momentum, dtype=np.float64).reshape(-1, self.n_groups)

    @property
    def loss(self) -> np.ndarray:
        self._flush()
        return np.asarray(self._loss_done, dtype=np.float64)

    @property
    def steps(self) -> int:
        return len(self._lr)

    def epoch_values(self, key: str) -> np.ndarray:
        """One value per finished epoch, e.g. ``history.epoch_values("val_loss")``."""
        if self.epochs and key not in self.epochs[0]:
            raise KeyError(f"{key!r} was not recorded; keys: {sorted(self.epochs[0])}")
        return np.asarray([e[key] for e in self.epochs], dtype=np.float64)

    def _flush(self, wait: bool = True) -> None:
        """Read the losses recorded since the last flush: the ranks' means where fit runs under
        torch.distributed — with ``wait=False`` (after an abort) this rank's own loss where the
        all_reduce has not completed."""
        if self._votes:  # one vote per loss of this process
            self._loss_done.extend(
                v.loss if wait or v.done() else float(mine)
                for v, mine in zip(self._votes, self._loss, strict=True)
            )
            self._votes.clear()
            self._loss.clear()
        elif self._loss:
            self._loss_done.extend(torch.stack(self._loss).float().tolist())
            self._loss.clear()

    def plot_loss(self, path: str | os.PathLike[str] | None = None, ax: Any = None) -> Any:
        """The training loss per step (and its moving average), with the per-epoch training
        and validation losses at the end of each epoch. Returns the Axes; saved to ``path``."""
        from pylr import plot

        ax = plot.axes(ax, path)
        loss = self.loss
        x = np.arange(len(loss))
        ax.plot(x, loss, color="C0", alpha=0.3, linewidth=0.8, label="train loss (step)")
        if len(loss) > 1:
            smooth = _loop.SmoothedLoss(0.9)
            ax.plot(
                x,
                [smooth.update(v) for v in loss.tolist()],
                color="C0",
                label="train loss (smoothed)",
            )
        if self.epochs and self.steps_per_epoch:
            ends = np.asarray([e["epoch"] for e in self.epochs]) * self.steps_per_epoch - 1
            ax.plot(ends, self.epoch_values("train_loss"), "o-", color="C1", label="train (epoch)")
            if "val_loss" in self.epochs[0]:
                ax.plot(ends, self.epoch_values("val_loss"), "s-", color="C2", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        return plot.save(ax, path)

    def plot_lr(self, path: str | os.PathLike[str] | None = None, ax: Any = None) -> Any:
        """Each param group's lr per step, and its momentum (dashed, right axis) where the
        optimizer has one; groups that used the same values at every step (the default
        optimizer's decayed and not-decayed params) share one line. The legend, above the
        plot, names every line. Returns the lr Axes; saved to ``path``."""
        from pylr import plot

        ax = plot.axes(ax, path)
        lr, mom = self.lr, self.momentum
        x = np.arange(len(lr))
        mom_name = "momentum (beta1)" if self.momentum_name == "beta1" else "momentum"
        has_mom = [g for g in range(self.n_groups) if len(mom) and np.isfinite(mom[:, g]).any()]
        lr_sets = _same_columns(lr, range(self.n_groups))
        mom_sets = _same_columns(mom, has_mom)
        single = len(lr_sets) == 1 and len(mom_sets) <= 1
        color = {g: f"C{i % 10}" for i, groups in enumerate(lr_sets) for g in groups}
        for groups in lr_sets:
            label = "lr" + _which_groups(groups, single)
            ax.plot(x, lr[:, groups[0]], color=color[groups[0]], label=label)
        mom_ax = ax.twinx() if mom_sets else None
        for groups in mom_sets:
            g = groups[0]
            label = mom_name + _which_groups(groups, single)
            mom_ax.plot(x, mom[:, g], color=color[g], linestyle="--", alpha=0.7, label=label)
        if mom_ax is not None:
            mom_ax.set_ylabel(f"{mom_name} (dashed)")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.grid(True, alpha=0.3)
        plot.legend_above(ax, mom_ax)
        return plot.save(ax, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: per-step lr, momentum (None where there is none) and loss; the epochs."""

        def clean(rows: Any) -> Any:
            return [[v if math.isfinite(v) else None for v in row] for row in rows]

        return {
            "lr": self.lr.tolist(),
            "momentum": clean(self.momentum.tolist()),
            "loss": [v if math.isfinite(v) else None for v in self.loss.tolist()],
            "epochs": [dict(e) for e in self.epochs],
            "steps_per_epoch": self.steps_per_epoch,
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
        }

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        tail = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("epoch", "time"))
        return (
            f"History(steps={self.steps}, epochs={len(self.epochs)}"
            f"{', ' + tail if tail else ''}{', interrupted' if self.interrupted else ''})"
        )


def _same_columns(values: np.ndarray, columns: Iterable[int]) -> list[list[int]]:
    """``columns`` gathered where ``values[:, c]`` is the same at every step."""
    sets: list[list[int]] = []
    for c in columns:
        for same in sets:
            if np.array_equal(values[:, c], values[:, same[0]], equal_nan=True):
                same.append(c)
                break
        else:
            sets.append([c])
    return sets


def _which_groups(groups: list[int], single: bool) -> str:
    """The legend's note of which param groups a line is: none when one line says it all."""
    if single:
        return ""
    if len(groups) == 1:
        return f" (group {groups[0]})"
    return f" (groups {', '.join(map(str, groups))})"


_MOMENTUM_NAMES = {"betas": "beta1", "momentum": "momentum", None: None}


# --------------------------------------------------------------------------------------------
# Stopping: Ctrl-C, StopTraining, and under torch.distributed the ranks' agreement


class _Vote:
    """One step under torch.distributed: an all_reduce of (this rank's loss, whether it asks to
    stop) over the ranks, started after the step and read later."""

    __slots__ = ("_pending", "_size")

    def __init__(self, ranks: _loop.Ranks, loss: Tensor, stop: bool) -> None:
        self._pending = ranks.start_sum([loss, 1.0 if stop else 0.0])
        self._size = ranks.size

    @property
    def loss(self) -> float:
        """The mean over the ranks of their losses."""
        return self._pending.result()[0] / self._size

    @property
    def stop(self) -> bool:
        """Whether any rank asked to stop by the time it cast its vote."""
        return self._pending.result()[1] > 0

    def done(self) -> bool:
        return self._pending.done()


class _Stops:
    """Where ``fit`` stops. In one process a stop (Ctrl-C, a callback's StopTraining) takes
    effect at the next check: after the step, or after the hooks that raised it.

    Under torch.distributed every rank has to stop after the same step — a rank that went on
    alone would wait in DDP's all_reduce for ever. After each step every rank casts a
    :class:`_Vote` (its loss, its stop flag), one all_reduce that overlaps the next step: the
    votes are counted after that step, and every vote left at an epoch's end is counted there,
    so all ranks count the same votes at the same points. A stop asked for during step ``t``
    ends the run after step ``t + 1``; one from ``on_step_end`` (which gets the step's mean loss)
    after ``t + 2``; either at the epoch's end if that comes first. After ``on_train_begin``,
    ``on_epoch_begin`` and ``on_epoch_end`` the ranks agree in one all_reduce. The reason
    recorded is the lowest stopping rank's, on every rank."""

    def __init__(self, flag: _loop.StopFlag, ranks: _loop.Ranks, history: History) -> None:
        self.flag, self.ranks, self.history = flag, ranks, history
        self._uncounted: list[_Vote] = []

    def run_hooks(self, fns: list[Callable[..., Any]], *args: Any) -> None:
        """Call the hooks; a StopTraining asks to stop (and skips the hooks after it)."""
        for fn in fns:
            try:
                fn(*args)
            except StopTraining as e:
                self.flag.request(str(e) or "StopTraining")
                return

    def record(self, loss: Tensor) -> None:
        """A step's loss: into the history, and under torch.distributed into the step's vote."""
        self.history._loss.append(loss)
        if self.ranks.distributed:
            vote = _Vote(self.ranks, loss, self.flag.requested)
            self.history._votes.append(vote)
            self._uncounted.append(vote)

    def step_loss(self) -> float:
        """The last step's loss for ``on_step_end``: the ranks' mean under torch.distributed."""
        if self.ranks.distributed:
            return self._uncounted[-1].loss
        return float(self.history._loss[-1])

    def after_step(self) -> str | None:
        """The reason to stop after this step, or None; the latest vote stays in flight."""
        if not self.ranks.distributed:
            return self.flag.reason
        return self._count(len(self._uncounted) - 1)

    def after_epoch_steps(self) -> str | None:
        """The reason to stop at the end of an epoch's steps (every vote counted), or None."""
        if not self.ranks.distributed:
            return self.flag.reason
        return self._count(len(self._uncounted))

    def after_hooks(self) -> str | None:
        """The reason to stop after a hook point, or None: agreed in one all_reduce."""
        return self.ranks.first(self.flag.reason)

    def _count(self, n: int) -> str | None:
        votes, self._uncounted = self._uncounted[:n], self._uncounted[n:]
        if any(v.stop for v in votes):
            return self.ranks.first(self.flag.reason)
        return None


# --------------------------------------------------------------------------------------------
# fit


def _torch_scheduler(optimizer: Optimizer, schedule: Any) -> Any:
    """``schedule`` if it is a torch (or pylr.lr_scheduler) scheduler object of ``optimizer``."""
    if not isinstance(schedule, (LRScheduler, ReduceLROnPlateau)):
        return None
    if schedule.optimizer is not optimizer:
        raise ValueError("schedule is a scheduler of another optimizer than the one fit trains")
    return schedule


def _group_schedules(optimizer: Optimizer, schedule: Any) -> list[Schedule | None] | None:
    """Absolute per-group schedules: one schedule scales each group's current lr, a list gives
    one per group (None leaves a group alone)."""
    if schedule is None or _torch_scheduler(optimizer, schedule) is not None:
        return None
    groups = optimizer.param_groups
    if isinstance(schedule, Schedule):
        return [float(g["lr"]) * schedule for g in groups]
    if isinstance(schedule, Sequence) and not isinstance(schedule, str):
        if len(schedule) != len(groups):
            raise ValueError(
                f"schedule has {len(schedule)} schedules but the optimizer has {len(groups)} "
                "param groups"
            )
        for i, s in enumerate(schedule):
            if s is not None and not isinstance(s, Schedule):
                raise TypeError(f"schedule[{i}] must be a Schedule or None, not {type(s).__name__}")
        return list(schedule)
    raise TypeError(
        "schedule must be a pylr.schedules.Schedule (a factor on each group's lr), a list with "
        "one per param group, or a torch.optim.lr_scheduler scheduler of the optimizer, got "
        f"{type(schedule).__name__}"
    )


class _Driver:
    """Puts the schedules' values into the param groups before each step: fused into the step
    for pylr's optimizers (their groups carry the schedule and its step), written from Python
    for any other optimizer. A torch scheduler object is stepped after every optimizer step
    (``ReduceLROnPlateau`` after every epoch, on the validation loss if there is one)."""

    def __init__(
        self, optimizer: Optimizer, schedules: list[Schedule | None] | None, torch_scheduler: Any
    ) -> None:
        from pylr.optim import _FusedOptimizer

        self.optimizer = optimizer
        self.plateau = torch_scheduler if isinstance(torch_scheduler, ReduceLROnPlateau) else None
        self.per_step = None if self.plateau is not None else torch_scheduler
        self.groups = optimizer.param_groups
        self.key = _loop.momentum_key(optimizer)
        # without a schedule, fit leaves the lr alone (a schedule fused earlier keeps running)
        pairs = [(g, s) for g, s in zip(self.groups, schedules or [], strict=False) if s]
        # a schedule's momentum drives only groups that have one: not an SGD with momentum 0
        cycled = [s.has_momentum and _loop.has_momentum(g, self.key) for g, s in pairs]
        self.items = [(g, s._node, c) for (g, s), c in zip(pairs, cycled, strict=True)]
        withheld = any(s.has_momentum for (_, s), c in zip(pairs, cycled, strict=True) if not c)
        own = schedules is not None and isinstance(optimizer, _FusedOptimizer)
        # a fused schedule always writes its momentum, so a withheld one is driven from here
        self.fused = own and not withheld
        self.saved = [(g["schedule"], g["schedule_step"]) for g in self.groups] if own else []
        if own:
            for g, s in zip(self.groups, schedules or [], strict=True):
                g["schedule"] = s if self.fused else None

    def before_step(self, t: int) -> None:
        if self.fused:
            for g, _, _ in self.items:
                g["schedule_step"] = t
            return
        key = self.key
        for g, node, cycled in self.items:
            _loop.set_group_value(g, "lr", node.value(t))
            if cycled:
                _loop.set_group_value(g, key, node.momentum(t))  # type: ignore[arg-type]

    def after_step(self) -> None:
        if self.per_step is not None:
            self.per_step.step()

    def after_epoch(self, logs: dict[str, float]) -> None:
        if self.plateau is not None:
            self.plateau.step(logs.get("val_loss", logs["train_loss"]))

    def close(self) -> None:
        """Leave the groups at the values of the last step, with the optimizer's own fused
        schedules (if any) back in place."""
        if self.saved:
            for g, (schedule, step) in zip(self.groups, self.saved, strict=True):
                g["schedule"], g["schedule_step"] = schedule, step


def _check_grad_clip(grad_clip: Any) -> float | None:
    if grad_clip is None:
        return None
    if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)):
        raise TypeError(f"grad_clip must be a number or None, got {type(grad_clip).__name__}")
    if not grad_clip > 0 or not math.isfinite(grad_clip):
        raise ValueError(f"grad_clip must be a finite number > 0, got {grad_clip!r}")
    return float(grad_clip)


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    loss_fn: Callable[..., Tensor],
    optimizer: Optimizer,
    *,
    epochs: int,
    schedule: Schedule | Sequence[Schedule | None] | LRScheduler | ReduceLROnPlateau | None = None,
    val_loader: Iterable[Any] | None = None,
    metrics: Any = None,
    callbacks: Any = None,
    device: Any = None,
    progress: bool | str = True,
    grad_clip: float | None = None,
    amp: Any = None,
) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; returns a :class:`History`.

    Each step: ``loss = loss_fn(model(*inputs), target)`` for a batch ``(inputs..., target)``,
    ``backward``, gradients clipped to a total norm of ``grad_clip`` if given, the optimizer
    step, ``zero_grad(set_to_none=True)``. Step ``t`` (counted from 0 over the whole run) uses
    ``lr = schedule(t)`` — a :mod:`pylr.schedules` schedule scales each group's lr at the start,
    a list gives each group its absolute schedule — and, where the schedule defines one, its
    momentum as Adam's ``betas[0]`` or SGD's ``momentum``, except in an SGD group whose
    momentum is 0: that stays plain SGD, as in fastai. With pylr's optimizers the schedule is
    evaluated in C++ inside the step (driven from Python where a momentum is withheld); the
    groups keep the last step's values afterwards.
    ``schedule`` may also be a torch scheduler object of ``optimizer`` (any
    ``torch.optim.lr_scheduler`` or ``pylr.lr_scheduler`` class): it is stepped after every
    optimizer step, or after every epoch on the validation (else training) loss for
    ``ReduceLROnPlateau``.

    After each epoch, with ``val_loader``, the validation loss and ``metrics`` (a dict of
    name -> ``fn(output, target)`` or a list of functions, e.g. ``[pylr.accuracy]``) are
    computed in eval mode, weighted by batch size.

    ``progress``: True shows a tqdm bar per epoch (the epoch's mean loss so far, the lr) in a
    terminal or notebook and one line per epoch elsewhere; ``"bar"``/``"lines"`` force either;
    False is silent. ``amp`` as in :func:`pylr.lr_find`. ``callbacks``: :class:`Callback`
    objects.

    Ctrl-C stops the run after the current step: the history so far is returned with
    ``interrupted=True`` and the model is left in its original train/eval mode with no grads.

    Under torch.distributed (``torchrun``; a ``DistributedDataParallel`` or FSDP2 model) every
    rank of the model's process group (else the default group) calls ``fit``, and each rank's
    loader yields the same number of batches (a ``DistributedSampler`` sees to it). Each epoch
    starts with ``set_epoch(epoch - 1)`` on the loader's ``sampler``, ``batch_sampler`` or
    ``batch_sampler.sampler`` where it has one (a ``DistributedSampler`` reshuffles by it; also
    in one process). The history is the same on every rank: each step's loss is the mean over
    the ranks of their losses (one float64 all_reduce per step, overlapping the next step), the
    validation loss and metrics are over the union of the ranks' validation batches, weighted
    by their sizes, ``time`` is the slowest rank's; callbacks such as :class:`EarlyStopping`
    therefore decide alike everywhere. A stop on any rank — Ctrl-C, or StopTraining from a
    callback — ends the run on every rank after the same step: the step after the one it came
    in (two after, from ``on_step_end``, whose ``loss`` is the ranks' mean), or at the end of
    the epoch if that comes first; a stop from the other hooks right after them. Bars, epoch
    lines and messages come from rank 0 only (its bar shows its own running loss).
    """
    _loop.check_model(model)
    _loop.check_loader("train_loader", train_loader)
    _loop.check_callable("loss_fn", loss_fn)
    _loop.check_optimizer(optimizer)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    schedules = _group_schedules(optimizer, schedule)
    named_metrics = _loop.normalize_metrics(metrics)
    if named_metrics and val_loader is None:
        raise ValueError("metrics are computed on val_loader; pass val_loader too")
    if val_loader is not None:
        _loop.check_loader("val_loader", val_loader)
    clip = _check_grad_clip(grad_clip)
    hooks = _bound_hooks(callbacks, model, optimizer)
    try:
        steps_per_epoch: int | None = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    dev = _loop.resolve_device(model, device)
    amp_ = _loop.Amp(amp, dev)
    ranks = _loop.Ranks(model, dev)
    progress_ = _loop.Progress(progress, steps_per_epoch, show=ranks.main)
    samplers = _loop.epoch_samplers(train_loader)
    _loop.move_to(model, dev)

    driver = _Driver(optimizer, schedules, _torch_scheduler(optimizer, schedule))
    history = History(len(optimizer.param_groups), steps_per_epoch, _MOMENTUM_NAMES[driver.key])
    when = "after the next step" if ranks.distributed else "after this step"
    flag = _loop.StopFlag(f"pylr.fit: stopping {when} (Ctrl-C again to abort)", ranks.main)
    stops = _Stops(flag, ranks, history)
    was_training = model.training
    aborted = False
    t = 0
    try:
        with flag:
            stops.run_hooks(hooks["on_train_begin"], history)
            reason = stops.after_hooks()
            for epoch in range(1, epochs + 1):
                if reason is not None:
                    break
                model.train()
                for sampler in samplers:  # a DistributedSampler's shuffle of this epoch
                    sampler.set_epoch(epoch - 1)
                stops.run_hooks(hooks["on_epoch_begin"], epoch, history)
                if (reason := stops.after_hooks()) is not None:
                    break
                progress_.start(f"epoch {epoch}/{epochs}")
                start, first = time.perf_counter(), len(history._lr)
                for batch in train_loader:
                    driver.before_step(t)
                    (loss,) = _loop.train_step(
                        model,
                        loss_fn,
                        optimizer,
                        iter((batch,)),
                        amp_,
                        dev,
                        grad_clip=clip,
                        check_loss=t == 0,
                        ranks=ranks,
                    )
                    _record_step(history, optimizer, driver, loss, progress_, stops, first)
                    if hooks["on_step_end"]:
                        stops.run_hooks(hooks["on_step_end"], t, stops.step_loss(), history)
                    t += 1
                    if (reason := stops.after_step()) is not None:
                        break
                n = len(history._lr) - first
                if (reason := stops.after_epoch_steps()) is not None:
                    break
                if history.steps_per_epoch is None:
                    history.steps_per_epoch = n
                if n == 0:
                    raise ValueError("train_loader is empty")
                logs = _epoch_logs(
                    epoch,
                    history,
                    first,
                    model,
                    val_loader,
                    loss_fn,
                    named_metrics,
                    dev,
                    amp_,
                    ranks,
                )
                logs["time"] = ranks.max(time.perf_counter() - start)
                history.epochs.append(logs)
                driver.after_epoch(logs)
                progress_.close()
                progress_.line(_epoch_line(logs, epochs))
                stops.run_hooks(hooks["on_epoch_end"], epoch, logs, history)
                reason = stops.after_hooks()
            if reason is not None:
                _interrupt(history, reason)
    except StopTraining as e:
        _interrupt(history, str(e) or "StopTraining")
    except KeyboardInterrupt:
        aborted = True
        _interrupt(history, "Ctrl-C")
        if ranks.main:
            print("\npylr.fit: interrupted; returning the history so far", file=sys.stderr)
    finally:
        with _loop.sigint_deferred():  # the clean-up runs whole, even under a late Ctrl-C
            progress_.close()
            driver.close()
            optimizer.zero_grad(set_to_none=True)
            model.train(was_training)
    # after an abort another rank may never cast the votes this one waits for
    history._flush(wait=not aborted)
    for fn in hooks["on_train_end"]:
        fn(history)
    return history


def _interrupt(history: History, reason: str) -> None:
    history.interrupted = True
    history.stop_reason = reason


def _record_step(
    history: History,
    optimizer: Optimizer,
    driver: _Driver,
    loss: Tensor,
    progress: _loop.Progress,
    stops: _Stops,
    first: int,
) -> None:
    """The lr and momentum the step used, its loss; then a torch scheduler object steps."""
    groups = optimizer.param_groups
    history._lr.append([float(g["lr"]) for g in groups])
    history._momentum.append([_loop.group_momentum(g, driver.key) for g in groups])
    driver.after_step()
    stops.record(loss)
    # the bar shows the epoch's mean loss so far (this process's, on rank 0)
    progress.update(lambda: _epoch_mean(history, first), history._lr[-1][-1])


def _epoch_mean(history: History, first: int) -> float:
    """The mean loss of this process's steps from ``first`` on, without waiting for the
    ranks' all_reduces: what the bar shows."""
    done = history._loss_done[first:]
    pending = torch.stack(history._loss).float().sum().item() if history._loss else 0.0
    return (sum(done) + pending) / (len(done) + len(history._loss))


def _epoch_line(logs: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(logs['epoch'])}/{epochs}"]
    parts += [f"{k} {v:.4f}" for k, v in logs.items() if k not in ("epoch", "time")]
    parts.append(f"{logs['time']:.2f}s")
    return "  ".join(parts)


def _epoch_logs(
    epoch: int,
    history: History,
    first: int,
    model: nn.Module,
    val_loader: Iterable[Any] | None,
    loss_fn: Callable[..., Tensor],
    metrics: dict[str, _loop.Metric],
    device: torch.device,
    amp: _loop.Amp,
    ranks: _loop.Ranks,
) -> dict[str, float]:
    history._flush()
    logs: dict[str, float] = {
        "epoch": epoch,
        "train_loss": float(np.mean(history._loss_done[first:])),
    }
    if val_loader is not None:
        scores = _loop._evaluate(
            model, val_loader, loss_fn, metrics, device, amp, "val_loader", ranks
        )
        logs["val_loss"] = scores.pop("loss")
        logs.update(scores)
    return logs


# --------------------------------------------------------------------------------------------
# fit_one_cycle


def spread_lrs(lr_max: Any, n_groups: int) -> list[float]:
    """One lr per param group from ``lr_max``, as fastai's ``set_hyper`` spreads it:

    - a number: the same lr for every group;
    - a list with one lr per group;
    - ``slice(high)``: ``[high / 10] * (n - 1) + [high]`` — the last group (the head) at
      ``high``, all others ten times lower;
    - ``slice(low, high)`` or a ``(low, high)`` tuple: geometric from the first group to the
      last, ``low * step ** i`` with ``step = (high / low) ** (1 / (n - 1))`` (fastai's
      ``even_mults``); ``high`` for a single group.
    """
    if isinstance(lr_max, slice):
        if lr_max.step is not None:
            raise ValueError(f"lr_max: a slice of lrs has no step, got {lr_max!r}")
        high_ = _positive("lr_max high (the slice's stop)", lr_max.stop)
        if lr_max.start is None:
            return [high_ / 10] * (n_groups - 1) + [high_]
        return _even_mults(
            _positive("lr_max low (the slice's start)", lr_max.start), high_, n_groups
        )
    if isinstance(lr_max, tuple) and len(lr_max) == 2:
        low, high = lr_max
        return _even_mults(_positive("lr_max low", low), _positive("lr_max high", high), n_groups)
    if isinstance(lr_max, (list, tuple, np.ndarray)):
        if len(lr_max) != n_groups:
            raise ValueError(
                f"lr_max has {len(lr_max)} values but the optimizer has {n_groups} param groups "
                "(pass slice(low, high) to spread a range across them)"
            )
        return [_positive(f"lr_max[{i}]", v) for i, v in enumerate(lr_max)]
    return [_positive("lr_max", lr_max)] * n_groups


def _even_mults(low: float, high: float, n: int) -> list[float]:
    """fastai's ``even_mults``: ``n`` lrs from ``low`` to ``high`` in equal ratios."""
    if low > high:
        raise ValueError(f"lr_max: low must be <= high, got ({low}, {high})")
    if n == 1:
        return [high]
    step = (high / low) ** (1 / (n - 1))
    return [low * step**i for i in range(n)]


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return f


def fit_one_cycle(
    model: nn.Module,
    train_loader: Iterable[Any],
    loss_fn: Callable[..., Tensor],
    *,
    epochs: int,
    lr_max: float | Sequence[float] | slice,
    optimizer: Optimizer | None = None,
    pct_start: float = 0.25,
    div: float = 25.0,
    div_final: float = 1e5,
    moms: Sequence[float] = (0.95, 0.85, 0.95),
    wd: float | None = None,
    wd_bn_bias: bool | None = None,
    **fit_kwargs: Any,
) -> History:
    """Train with fastai's one-cycle policy (:class:`pylr.schedules.FastaiOneCycle`).

    Over ``total = epochs * len(train_loader)`` steps each group's lr rises along a cosine from
    ``lr_max / div`` to ``lr_max`` during the first ``pct_start`` of training, then anneals
    along a cosine to ``lr_max / div_final``; the momentum goes ``moms[0] -> moms[1] ->
    moms[2]`` the other way: Adam's ``beta1`` always, SGD's ``momentum`` only where it is not 0
    (an SGD without momentum stays plain SGD, as fastai's does). ``lr_max`` is a number, one
    per param group, ``slice(high)`` (``high / 10`` for all groups but the last) or
    ``slice(low, high)`` / ``(low, high)`` spread geometrically — see :func:`spread_lrs`.

    The default optimizer is fastai's ``Adam`` (what a fastai ``Learner`` uses):
    ``pylr.optim.AdamW(pylr.train.weight_decay_groups(model, wd, wd_bn_bias), betas=(moms[0],
    0.99), eps=1e-5)`` with ``wd = 0.01`` unless given — decoupled weight decay
    ``p *= 1 - lr * wd`` on every parameter except biases and the parameters of normalisation
    layers (:func:`pylr.train.norm_bias_params`), which are not decayed unless ``wd_bn_bias=True``
    (fastai's ``wd_bn_bias=False`` default). It has two param groups (decayed, not decayed)
    with the same schedule. With your own optimizer, ``wd`` (if given) sets ``weight_decay``
    in every group not marked ``do_wd: False``, and ``wd_bn_bias`` is refused (the groups are
    yours). Other keyword arguments go to :func:`fit`.
    """
    _loop.check_model(model)
    if "schedule" in fit_kwargs:
        raise TypeError("fit_one_cycle makes its own schedule; use fit(schedule=...) instead")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    _loop.check_loader("train_loader", train_loader)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "fit_one_cycle needs len(train_loader) to lay out the cycle; use fit() with a "
            "schedule of your own for loaders without a length"
        ) from None
    if optimizer is not None:
        _loop.check_optimizer(optimizer)
    _loop.check_wd(wd, wd_bn_bias, optimizer)
    n_groups = 1 if optimizer is None else len(optimizer.param_groups)
    lrs = spread_lrs(lr_max, n_groups)
    # every argument is checked (by the schedules) before anything changes
    total = epochs * steps_per_epoch
    schedules: list[Schedule | None] = [
        FastaiOneCycle(lr, total, pct_start=pct_start, div=div, div_final=div_final, moms=moms)
        for lr in lrs
    ]
    if optimizer is None:
        beta1 = schedules[0].moms[0]  # type: ignore[union-attr]
        optimizer = _loop.fastai_adamw(model, lrs[0], beta1, wd, wd_bn_bias)
        schedules = schedules * len(optimizer.param_groups)
    elif wd is not None:
        _loop.set_weight_decay(optimizer, wd)
    return fit(
        model, train_loader, loss_fn, optimizer, epochs=epochs, schedule=schedules, **fit_kwargs
    )
