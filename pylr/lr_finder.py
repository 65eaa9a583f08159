"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``; torch-lr-finder).

``lr_find`` trains for a few steps while the lr of every param group rises from ``start_lr`` to
``end_lr``, records the loss, and suggests an lr from the curve. The model and the optimizer are
restored bit for bit afterwards — also when the sweep raises or is interrupted. Under
torch.distributed every rank sweeps: the recorded loss is the mean over the ranks, so every rank
records, stops and suggests the same.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from pylr import _loop
from pylr.schedules import Exponential, Linear, Schedule

__all__ = [
    "SUGGESTIONS",
    "LRFindResult",
    "loss_ylim",
    "lr_find",
    "minimum",
    "slide",
    "steep",
    "valley",
]


# --------------------------------------------------------------------------------------------
# Suggestion rules. Each takes the lrs and the (smoothed) losses of the sweep — already trimmed
# of its first and last points — and returns an lr.


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's ``valley``: the longest run over which the loss keeps decreasing — the longest
    strictly decreasing subsequence, ending at its first possible end — and the lr about half-way
    down it (``start + int(L/3) + int(L/6)`` for a run of length ``L``)."""
    n = len(losses)
    run = np.ones(n, dtype=np.int64)  # run[i]: longest decreasing subsequence ending at i
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            run[i] = run[:i][higher].max() + 1
    end = int(np.argmax(run))  # the first index with the longest run
    start = end - int(run[end])
    third = (end - start) / 3
    idx = start + int(third) + int(third / 2)
    return float(lrs[min(max(idx, 0), n - 1)])


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's ``slide``: walking an interval of ``lr_diff`` points back from the end of the
    curve, the lr at its left edge once the loss gradients at the two edges differ by no more
    than ``thresh``."""
    n = len(losses)
    if n < 2:
        return float(lrs[0])
    grad = np.gradient(losses)
    diff = min(lr_diff, n - 1)
    right, left = n - 1, n - 1 - diff
    best = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        best = lrs[left]
        right -= 1
        left -= 1
    return float(best)


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The lr at the lowest loss, divided by 10 (Smith's and fastai's rule of thumb)."""
    return float(lrs[int(np.argmin(losses))]) / 10.0


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's ``steep`` — the lr where the loss falls fastest against log(lr), the left end
    of the segment with the most negative ``(loss[i+1] - loss[i]) / (log lr[i+1] - log lr[i])``
    — on the curve up to its lowest loss.

    The one change from fastai: fastai searches the whole curve. Where the sweep stops at the
    divergence (the loss above 4x its best) and the last 5 points are dropped, the steepest
    fall is before the lowest loss anyway and both agree. Where the loss jumps up but stays
    below the stop (the model broken, settling at a high loss), fastai's rule picks the fall
    *after* the jump — an lr past the divergence (0.63 on fastai's own run of the digits demo)
    — which the lowest-loss bound excludes.
    """
    if len(losses) < 2:
        return float(lrs[0])
    end = int(np.argmin(losses)) + 1
    if end < 2:  # the lowest loss comes first: no fall before it, fastai's rule on all of it
        end = len(losses)
    slopes = np.diff(losses[:end]) / np.diff(np.log(lrs[:end]))
    return float(lrs[int(np.argmin(slopes))])


SUGGESTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "valley": valley,
    "slide": slide,
    "minimum": minimum,
    "steep": steep,
}


def _trim(n_iter: int, n: int, skip_start: int | None, skip_end: int | None) -> slice:
    """The points the suggestions and the plot use: by default fastai's, without the first
    tenth of ``num_iter`` and the last 5 points; all of them when that would leave fewer than 3."""
    lo = n_iter // 10 if skip_start is None else skip_start
    hi = n - (5 if skip_end is None else skip_end)
    if hi - lo < 3:
        return slice(0, n)
    return slice(lo, hi)


def loss_ylim(losses: np.ndarray, headroom: float = 0.5) -> tuple[float, float] | None:
    """y limits that show the range test's useful part: from the lowest loss ``lo`` up to the
    highest loss before it, ``hi`` (where the sweep started), plus ``headroom`` of that range
    above and a twentieth below: ``(lo - (hi - lo) / 20, hi + headroom * (hi - lo))``.

    The loss after the lowest point rises into the divergence; fastai's sweep stops there
    (at 4x the best loss) and drops the last points, so its plot shows the descent at full
    height. Where a blow-up is recorded — pylr keeps the diverged step, and a loss that jumps
    without reaching the stop goes on for the rest of the sweep — it would flatten the descent
    into the bottom tenth of an autoscaled plot; this clips it instead. None (autoscale) when
    nothing rises above that top, or when the curve has no descent (``hi == lo``)."""
    y = np.asarray(losses, dtype=np.float64)
    if len(y) < 2:
        return None
    low = int(np.argmin(y))
    lo, hi = float(y[low]), float(np.max(y[: low + 1]))
    span = hi - lo
    top = hi + headroom * span
    if not span > 0 or not float(np.max(y)) > top:
        return None
    return lo - span / 20, top


def _json_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class LRFindResult:
    """The outcome of :func:`lr_find`.

    Attributes:
        lrs: the lr of each recorded step (of the last param group, as fastai records it).
        group_lrs: every group's lr at each step, shape ``(steps, groups)``.
        losses: the smoothed loss (bias-corrected exponential moving average).
        raw_losses: the loss of each step (the validation loss with ``val_loader``).
        suggestions: ``{"valley", "slide", "minimum", "steep"}`` -> lr.
        method: the rule behind :attr:`suggested` (``"valley"`` unless you pick another).
        stopped_early: whether the sweep stopped at divergence before ``num_iter`` steps.
    """

    def __init__(
        self,
        group_lrs: np.ndarray,
        raw_losses: np.ndarray,
        losses: np.ndarray,
        *,
        num_iter: int,
        step_mode: str,
        stopped_early: bool,
        method: str = "valley",
    ) -> None:
        self.group_lrs = group_lrs
        self.lrs = group_lrs[:, -1].copy() if group_lrs.size else np.zeros(0)
        self.raw_losses = raw_losses
        self.losses = losses
        self.num_iter = num_iter
        self.step_mode = step_mode
        self.stopped_early = stopped_early
        self.suggestions = self._suggest()
        self.method = method

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        if value not in SUGGESTIONS:
            raise ValueError(f"method must be one of {list(SUGGESTIONS)}, got {value!r}")
        self._method = value

    @property
    def suggested(self) -> float:
        """The suggestion of :attr:`method`."""
        return self.suggestions[self._method]

    def _curve(self, skip_start: int | None, skip_end: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The points the suggestions and the plot use, picked as fastai's ``lr_find`` picks
        them: the recorded points (the diverged step included) without the first
        ``num_iter // 10`` and the last 5, then cut at the first non-finite loss."""
        part = _trim(self.num_iter, len(self.losses), skip_start, skip_end)
        lrs, losses = self.lrs[part], self.losses[part]
        bad = np.flatnonzero(~np.isfinite(losses))
        n = int(bad[0]) if bad.size else len(losses)
        return lrs[:n], losses[:n]

    def _suggest(self) -> dict[str, float]:
        lrs, losses = self._curve(None, None)
        if len(lrs) == 0:
            return dict.fromkeys(SUGGESTIONS, math.nan)
        return {name: rule(lrs, losses) for name, rule in SUGGESTIONS.items()}

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        ax: Any = None,
        skip_start: int | None = None,
        skip_end: int | None = None,
        suggestions: bool = True,
    ) -> Any:
        """Plot the smoothed loss against the lr on a log axis, with the suggestions marked.

        ``skip_start``/``skip_end`` drop points at either end (default: the first tenth of
        ``num_iter`` and the last 5, as the suggestions do). The y axis shows the useful part
        of the curve (:func:`loss_ylim`): a blow-up at the end leaves the plot at the top
        instead of squeezing the descent into the bottom of it. With ``path`` the figure is
        saved there. Returns the Axes.
        """
        from pylr import plot

        ax = plot.axes(ax, path)
        x, y = self._curve(skip_start, skip_end)
        ax.plot(x, y, color="C0", label="smoothed loss")
        if suggestions and len(x):
            for i, (name, lr) in enumerate(self.suggestions.items()):
                if not math.isfinite(lr):
                    continue
                loss_at = float(np.interp(np.log(lr), np.log(x), y))
                star = name == self._method
                ax.plot(
                    [lr],
                    [loss_at],
                    marker="*" if star else "o",
                    markersize=12 if star else 7,
                    linestyle="none",
                    color=f"C{i + 1}",
                    label=f"{name}: {lr:.2e}",
                )
        ylim = loss_ylim(y)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        return plot.save(ax, path)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite losses become None)."""
        return {
            "lrs": [float(x) for x in self.lrs],
            "group_lrs": [[float(x) for x in row] for row in self.group_lrs],
            "losses": [_json_float(x) for x in self.losses],
            "raw_losses": [_json_float(x) for x in self.raw_losses],
            "suggestions": {k: _json_float(v) for k, v in self.suggestions.items()},
            "method": self._method,
            "suggested": _json_float(self.suggested),
            "num_iter": self.num_iter,
            "step_mode": self.step_mode,
            "stopped_early": self.stopped_early,
        }

    def __repr__(self) -> str:
        tips = ", ".join(f"{k}={v:.3g}" for k, v in self.suggestions.items())
        return (
            f"LRFindResult(steps={len(self.lrs)}, stopped_early={self.stopped_early}, "
            f"suggested={self.suggested:.3g} ({self._method}); {tips})"
        )


# --------------------------------------------------------------------------------------------
# The snapshot: everything lr_find may change, restored in place.


class _Snapshot:
    """The model's parameters, buffers, grads and train/eval flags, and the optimizer's state
    and hyperparameters; :meth:`restore` writes them back into the same tensor objects. With
    ``cache_dir`` the copies wait on disk instead of in memory."""

    def __init__(self, model: nn.Module, optimizer: Optimizer, cache_dir: Any) -> None:
        self.model = model
        self.optimizer = optimizer
        seen: set[int] = set()
        self.tensors: list[Tensor] = []
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                self.tensors.append(t)
        self.params = [p for p in self.tensors if isinstance(p, nn.Parameter)]
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    self.params.append(p)
                    self.tensors.append(p)
        self.modes = [(m, m.training) for m in model.modules()]
        self.groups = [
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            for g in optimizer.param_groups
        ]
        state_params = [p for p in optimizer.state if optimizer.state[p]]
        self.state_params = state_params
        self.state_other: list[dict[str, Any]] = []
        # on disk, the live tensors are written as they are (no copy in memory first)
        keep = (lambda t: t.detach()) if cache_dir is not None else (lambda t: t.detach().clone())
        state_tensors: list[dict[str, Tensor]] = []
        for p in state_params:
            tensors, other = {}, {}
            for k, v in optimizer.state[p].items():
                if isinstance(v, Tensor):
                    tensors[k] = keep(v)
                else:
                    other[k] = copy.deepcopy(v)
            state_tensors.append(tensors)
            self.state_other.append(other)
        data = {
            "tensors": [keep(t) for t in self.tensors],
            "grads": [None if p.grad is None else keep(p.grad) for p in self.params],
            "state": state_tensors,
        }
        self.path: str | None = None
        self.data: dict[str, Any] | None = data
        if cache_dir is not None:
            os.makedirs(cache_dir, exist_ok=True)
            fd, self.path = tempfile.mkstemp(prefix="pylr-lr-find-", suffix=".pt", dir=cache_dir)
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
            self.data = None

    def _load(self) -> dict[str, Any]:
        if self.data is not None:
            return self.data
        assert self.path is not None
        # memory-mapped: restoring streams from the file instead of loading it all first; each
        # tensor comes back on the device it was saved from
        return torch.load(self.path, weights_only=True, mmap=True)

    @torch.no_grad()
    def restore(self) -> None:
        data = self._load()
        # a tensor put back whole (not copied into a live one) must not stay mapped to the file
        own = (lambda t: t.clone()) if self.path is not None else (lambda t: t)
        for t, saved in zip(self.tensors, data["tensors"], strict=True):
            t.copy_(saved)
        for p, g in zip(self.params, data["grads"], strict=True):
            if g is None:
                p.grad = None
            elif p.grad is not None and p.grad.shape == g.shape and p.grad.dtype == g.dtype:
                p.grad.copy_(g)
            else:
                p.grad = own(g)
        for m, mode in self.modes:
            m.training = mode
        opt = self.optimizer
        for group, saved in zip(opt.param_groups, self.groups, strict=True):
            for k in [k for k in group if k != "params" and k not in saved]:
                del group[k]
            for k, v in saved.items():
                cur = group.get(k)
                if isinstance(cur, Tensor) and isinstance(v, Tensor) and cur.shape == v.shape:
                    cur.copy_(v)
                else:
                    group[k] = copy.deepcopy(v)
        keep = {id(p) for p in self.state_params}
        for p in [p for p in opt.state if id(p) not in keep]:
            del opt.state[p]
        saved_state = zip(self.state_params, data["state"], self.state_other, strict=True)
        for p, tensors, other in saved_state:
            state = opt.state[p]
            for k in [k for k in state if k not in tensors and k not in other]:
                del state[k]
            for k, v in tensors.items():
                cur = state.get(k)
                if isinstance(cur, Tensor) and cur.shape == v.shape and cur.dtype == v.dtype:
                    cur.copy_(v)
                else:
                    state[k] = own(v)
            for k, v in other.items():
                state[k] = copy.deepcopy(v)

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self.path = None
        self.data = None


# --------------------------------------------------------------------------------------------
# lr_find


def _per_group_lrs(name: str, value: Any, n_groups: int) -> list[float]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} has {len(value)} values but the optimizer has {n_groups} param groups"
            )
        items = list(value)
    else:
        items = [value] * n_groups
    out = []
    for i, v in enumerate(items):
        label = name if n_groups == 1 or not isinstance(value, Sequence) else f"{name}[{i}]"
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise TypeError(f"{label} must be a number, got {type(v).__name__}")
        f = float(v)
        if not math.isfinite(f) or f <= 0:
            raise ValueError(f"{label} must be a finite number > 0, got {v!r}")
        out.append(f)
    return out


def sweep_schedule(start_lr: float, end_lr: float, num_iter: int, step_mode: str) -> Schedule:
    """The lr of the range test at steps ``0 .. num_iter - 1``: from ``start_lr`` to ``end_lr``,
    geometric (``start * (end / start) ** (t / (num_iter - 1))``) or linear."""
    if step_mode == "exp":
        return Exponential(gamma=(end_lr / start_lr) ** (1.0 / (num_iter - 1)), base_lr=start_lr)
    return Linear(
        start_factor=start_lr / end_lr, end_factor=1.0, total_iters=num_iter - 1, base_lr=end_lr
    )


def lr_find(
    model: nn.Module,
    train_loader: Iterable[Any],
    loss_fn: Callable[..., Tensor],
    optimizer: Optimizer | None = None,
    *,
    start_lr: float | Sequence[float] = 1e-7,
    end_lr: float | Sequence[float] = 10.0,
    num_iter: int = 100,
    step_mode: str = "exp",
    smooth: float = 0.98,
    diverge_th: float = 4.0,
    val_loader: Iterable[Any] | None = None,
    accumulation_steps: int = 1,
    wd: float | None = None,
    wd_bn_bias: bool | None = None,
    device: Any = None,
    amp: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    suggest: str = "valley",
    progress: bool | str = True,
) -> LRFindResult:
    """Run the learning-rate range test and suggest an lr.

    For ``t = 0 .. num_iter - 1`` every param group trains one step (``accumulation_steps``
    batches) at ``lr_t = start * (end / start) ** (t / (num_iter - 1))`` (``step_mode="exp"``) or
    ``start + (end - start) * t / (num_iter - 1)`` (``"linear"``); the sweep is a
    :mod:`pylr.schedules` schedule. The loader starts over when it runs out. The recorded loss
    is the training loss of the step — or, with ``val_loader``, the validation loss after it
    (Smith's variant, slower) — smoothed as ``avg_t = smooth * avg_{t-1} + (1 - smooth) * loss_t``,
    ``smoothed_t = avg_t / (1 - smooth ** (t + 1))``. The sweep stops once the smoothed loss is
    not finite or exceeds ``diverge_th`` times the best so far (for a loss that can be negative:
    ``best + (diverge_th - 1) * |best|``).

    Afterwards the model's parameters, buffers, grads and train/eval modes and the optimizer's
    state and hyperparameters are exactly (bitwise) as before — also when the loop raises or
    is interrupted (Ctrl-C), in which case the exception propagates after the restore. The copy
    is kept in memory, or in ``cache_dir`` on disk for large models.

    Under torch.distributed (a ``DistributedDataParallel`` or FSDP2 model, launched by
    ``torchrun``) every rank of the model's process group (else the default group) calls
    ``lr_find``: each rank's recorded loss is all-reduced to the mean over the ranks (with
    ``val_loader``: the validation loss over the union of the ranks' batches), so the smoothed
    curve, the stop at divergence or at a non-finite loss on any rank, and the suggestions are
    the same on every rank; each rank restores its own model and optimizer. A Ctrl-C on any rank
    ends the sweep on all of them after the same step (KeyboardInterrupt on every rank, after
    the restore). The bar shows on rank 0 only.

    Args:
        model: any ``nn.Module``; batches are ``(inputs..., target)`` and the loss is
            ``loss_fn(model(*inputs), target)``.
        optimizer: any torch optimizer over the model's parameters. The default is
            ``fit_one_cycle``'s, fastai's ``Adam``, so that the lr is found for the optimizer
            it is then used with: ``pylr.optim.AdamW(pylr.train.weight_decay_groups(model, wd,
            wd_bn_bias), betas=(0.9, 0.99), eps=1e-5)`` with ``wd = 0.01`` unless given, not
            decaying biases and normalisation params unless ``wd_bn_bias=True``; beta1 is
            fastai's ``mom=0.9`` (the sweep schedules no momentum). Its two param groups follow
            the one sweep.
        start_lr, end_lr: the range, one value or one per param group.
        wd: the default optimizer's weight decay; with your own optimizer, the
            ``weight_decay`` of its groups during the sweep (except groups marked
            ``do_wd: False``), restored afterwards like everything else.
        wd_bn_bias: decay biases and normalisation params too (default optimizer only).
        device: run there (the model is moved there); default the model's device.
        amp: mixed precision (``True``, ``torch.float16``/``"fp16"``, ``torch.bfloat16``/
            ``"bf16"``); float16 uses a ``GradScaler``.
        suggest: which rule :attr:`LRFindResult.suggested` follows.
        progress: a tqdm bar with the loss and lr in a terminal or notebook (``"bar"`` forces
            it, ``False`` hides it).

    Returns:
        an :class:`LRFindResult` with ``lrs``, ``losses``, ``raw_losses``, ``suggestions``,
        ``suggested``, ``plot()`` and ``to_dict()``.
    """
    _loop.check_model(model)
    _loop.check_loader("train_loader", train_loader)
    _loop.check_callable("loss_fn", loss_fn)
    if optimizer is not None:
        _loop.check_optimizer(optimizer)
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 2:
        raise ValueError(f"num_iter must be an integer >= 2, got {num_iter!r}")
    if step_mode not in ("exp", "linear"):
        raise ValueError(f"step_mode must be 'exp' or 'linear', got {step_mode!r}")
    if not isinstance(smooth, (int, float)) or not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    if not isinstance(diverge_th, (int, float)) or not diverge_th > 1.0:
        raise ValueError(f"diverge_th must be > 1 (math.inf never stops), got {diverge_th!r}")
    if (
        isinstance(accumulation_steps, bool)
        or not isinstance(accumulation_steps, int)
        or accumulation_steps < 1
    ):
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
    if val_loader is not None:
        _loop.check_loader("val_loader", val_loader)
    if suggest not in SUGGESTIONS:
        raise ValueError(f"suggest must be one of {list(SUGGESTIONS)}, got {suggest!r}")
    if progress not in (True, False, "bar"):
        raise ValueError(f"progress must be True, False or 'bar', got {progress!r}")
    _loop.check_wd(wd, wd_bn_bias, optimizer)
    n_groups = 1 if optimizer is None else len(optimizer.param_groups)
    starts = _per_group_lrs("start_lr", start_lr, n_groups)
    ends = _per_group_lrs("end_lr", end_lr, n_groups)
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if s >= e:
            where = "" if n_groups == 1 else f" (param group {i})"
            raise ValueError(f"start_lr must be < end_lr{where}, got {s} >= {e}")

    dev = _loop.resolve_device(model, device)
    amp_ = _loop.Amp(amp, dev)
    ranks = _loop.Ranks(model, dev)
    show = progress == "bar" or (progress is True and _loop.interactive())
    bar = _loop.Progress("bar" if show else False, num_iter, show=ranks.main)
    _loop.move_to(model, dev)  # everything checked: the one lasting change lr_find makes
    own_optimizer = optimizer is not None
    if optimizer is None:
        optimizer = _loop.fastai_adamw(model, starts[0], 0.9, wd, wd_bn_bias)
        columns = [0] * len(optimizer.param_groups)  # every group follows the one sweep
    else:
        columns = list(range(n_groups))
    sweeps = [sweep_schedule(s, e, num_iter, step_mode) for s, e in zip(starts, ends, strict=True)]
    table = np.stack([s.values(num_iter) for s in sweeps], axis=1)  # (num_iter, groups)

    snapshot = _Snapshot(model, optimizer, cache_dir)
    try:
        if own_optimizer and wd is not None:
            _loop.set_weight_decay(optimizer, wd)
        bar.start("lr_find")
        # under torch.distributed a Ctrl-C waits for the end of the step, where the ranks agree
        message = "pylr.lr_find: stopping every rank after this step (Ctrl-C again to abort)"
        stop = _loop.StopFlag(message, announce=ranks.main) if ranks.distributed else None
        with stop if stop is not None else contextlib.nullcontext():
            raw, smoothed, stopped = _sweep(
                model,
                train_loader,
                loss_fn,
                optimizer,
                table[:, columns],
                smooth,
                diverge_th,
                val_loader,
                accumulation_steps,
                dev,
                amp_,
                bar,
                ranks,
                stop,
            )
    finally:
        bar.close()
        with _loop.sigint_deferred():  # a Ctrl-C now waits until the restore is complete
            try:
                snapshot.restore()
            finally:
                snapshot.discard()
    return LRFindResult(
        table[: len(raw)],
        np.asarray(raw, dtype=np.float64),
        np.asarray(smoothed, dtype=np.float64),
        num_iter=num_iter,
        step_mode=step_mode,
        stopped_early=stopped,
        method=suggest,
    )


def _sweep(
    model: nn.Module,
    train_loader: Iterable[Any],
    loss_fn: Callable[..., Tensor],
    optimizer: Optimizer,
    table: np.ndarray,
    smooth: float,
    diverge_th: float,
    val_loader: Iterable[Any] | None,
    accumulation_steps: int,
    device: torch.device,
    amp: _loop.Amp,
    bar: _loop.Progress,
    ranks: _loop.Ranks,
    stop: _loop.StopFlag | None,
) -> tuple[list[float], list[float], bool]:
    """The training steps of the range test: the raw and smoothed losses, and whether it
    stopped early at divergence. Under torch.distributed (``stop`` given) each step's loss is
    the ranks' mean, and a Ctrl-C on any rank ends the sweep on all after the same step."""
    groups = optimizer.param_groups
    for group in groups:
        if group.get("schedule") is not None:  # a pylr optimizer's fused schedule steps aside
            group["schedule"] = None
    batches = _loop.cycle(train_loader, "train_loader")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    raw: list[float] = []
    smoothed: list[float] = []
    ema, best = _loop.SmoothedLoss(smooth), math.inf
    for t, lrs in enumerate(table.tolist()):
        for group, lr in zip(groups, lrs, strict=True):
            _loop.set_group_value(group, "lr", lr)
        losses = _loop.train_step(
            model,
            loss_fn,
            optimizer,
            batches,
            amp,
            device,
            accumulation_steps=accumulation_steps,
            check_loss=t == 0,
            ranks=ranks,
        )
        value = sum(float(loss) for loss in losses) / accumulation_steps
        if stop is not None:
            # every rank's loss, and whether a rank was interrupted, in one all_reduce
            total, interrupted = ranks.sum([value, stop.requested])
            if interrupted:
                raise KeyboardInterrupt
            value = total / ranks.size
        if val_loader is not None:
            scores = _loop._evaluate(
                model, val_loader, loss_fn, {}, device, amp, "val_loader", ranks
            )
            value = scores["loss"]
        raw.append(value)
        smoothed.append(ema.update(value))
        bar.update(smoothed[-1], lrs[-1])
        # diverge_th * best, written so that it also means "far above" for a negative loss
        limit = best + (diverge_th - 1.0) * abs(best)
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > limit:
            return raw, smoothed, t < len(table) - 1
        best = min(best, smoothed[-1])
    return raw, smoothed, False
