"""What ``lr_find`` and ``fit`` share: batches and devices, autocast, loss checks, loaders,
the training step, fastai's default optimizer, param-group writes and evaluation, and what they
need under ``torch.distributed`` (the ranks of the model's process group, the few small
all_reduces that keep the ranks' decisions and records the same, output on rank 0 only)."""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

__all__ = ["NORM_TYPES", "accuracy", "evaluate", "norm_bias_params", "weight_decay_groups"]

Metric = Callable[[Any, Any], Any]


def check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_callable(name: str, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")


def check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )


def check_loader(name: str, loader: Any) -> None:
    """A loader must be iterable. (One that reports ``len() == 0`` is refused by
    :func:`refuse_empty`, on every rank alike: the ranks' shards may differ.)"""
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name} must be an iterable of batches, got {type(loader).__name__}")


def refuse_empty(ranks: Ranks | None, loaders: Sequence[tuple[str, Any]]) -> None:
    """Raise ValueError on every rank of ``ranks`` (this process alone with None) when any
    rank's loader reports ``len() == 0`` — agreed in one all_reduce, so that no rank is left
    waiting in a collective for one that refused."""
    distributed = ranks is not None and ranks.distributed
    reason = None
    for name, loader in loaders:
        try:
            n = len(loader)
        except TypeError:
            continue
        if n == 0:
            reason = f"{name} is empty" + (f" (on rank {ranks.rank})" if distributed else "")
            break
    if distributed:
        reason = ranks.first(reason)
    if reason is not None:
        raise ValueError(reason)


def device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_device(model: nn.Module, device: Any) -> torch.device:
    """The device to run on: the model's own, or ``device`` (checked here; :func:`move_to`
    moves the model once every other argument has been checked too)."""
    if device is None:
        return device_of(model)
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device must be a torch.device or a device string, got {device!r}") from e


def move_to(model: nn.Module, device: torch.device) -> None:
    if device != device_of(model):
        model.to(device)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors, also inside tuples, lists and dicts, moved to ``device``; the rest as it is."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True) if obj.device != device else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def split_batch(batch: Any, name: str) -> tuple[tuple[Any, ...], Any]:
    """``(inputs..., target)``: everything but the last item goes to the model."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return tuple(batch[:-1]), batch[-1]
    length = f" of length {len(batch)}" if isinstance(batch, Sequence) else ""
    raise TypeError(
        f"{name} must yield (inputs, target) pairs (or (input1, ..., target) tuples); got a "
        f"{type(batch).__name__}{length}"
    )


def batch_size(target: Any) -> int:
    if isinstance(target, Tensor) and target.dim() > 0:
        return int(target.shape[0])
    return 1


def cycle(loader: Iterable[Any], name: str) -> Iterator[Any]:
    """The loader's batches, starting over (a new epoch) whenever it runs out."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"{name} is empty")


class Amp:
    """Mixed precision: ``None``/``False`` off; ``True`` float16 on CUDA, bfloat16 elsewhere;
    or a dtype (``torch.float16``/``"float16"``/``"fp16"``, ``torch.bfloat16``/``"bfloat16"``/
    ``"bf16"``). float16 comes with a ``torch.amp.GradScaler``."""

    _NAMES: dict[str, torch.dtype] = {  # noqa: RUF012
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }

    def __init__(self, amp: Any, device: torch.device) -> None:
        self.device_type = device.type
        if amp is None or amp is False:
            dtype = None
        elif amp is True:
            dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        elif isinstance(amp, torch.dtype) and amp in (torch.float16, torch.bfloat16):
            dtype = amp
        elif isinstance(amp, str) and amp.lower() in self._NAMES:
            dtype = self._NAMES[amp.lower()]
        else:
            raise ValueError(
                f"amp must be None, a bool, torch.float16 or torch.bfloat16 (or 'fp16'/'bf16'), "
                f"got {amp!r}"
            )
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def unscale(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)


def interactive() -> bool:
    """A terminal on stderr, or a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """``progress=True``: a tqdm bar (with the running loss and lr) in a terminal or notebook,
    summary lines only elsewhere; ``"bar"``/``"lines"`` force either; ``False`` shows nothing.
    ``show=False`` (every rank but rank 0 under torch.distributed) shows nothing either."""

    def __init__(self, progress: Any, total: int | None, show: bool = True) -> None:
        if progress not in (True, False, "bar", "lines"):
            raise ValueError(f"progress must be True, False, 'bar' or 'lines', got {progress!r}")
        self.total = total
        self.enabled = progress is not False and show
        mode = progress if isinstance(progress, str) else ("bar" if interactive() else "lines")
        self.tqdm: Any = None
        if self.enabled and mode == "bar":
            from tqdm.auto import tqdm

            self.tqdm = tqdm
        self.bar: Any = None
        self.last = 0.0

    def start(self, desc: str) -> None:
        if self.tqdm is not None:
            self.bar = self.tqdm(
                total=self.total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr
            )
        self.last = 0.0

    def update(self, loss: float | Callable[[], Any], lr: float) -> None:
        """One step done; ``loss`` (a number, or a function computing it, called only when the
        bar is redrawn — a few times a second at most) and ``lr`` go into the postfix."""
        bar = self.bar
        if bar is None:
            return
        bar.update(1)
        now = time.perf_counter()
        if now - self.last > 0.2:
            self.last = now
            value = float(loss() if callable(loss) else loss)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}")

    def line(self, text: str) -> None:
        """A summary line: above the bars (on stderr) with tqdm, else on stdout."""
        if not self.enabled:
            return
        if self.tqdm is not None:
            self.tqdm.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) inside the block; one that arrived meanwhile raises
    KeyboardInterrupt as the block ends. Only the main thread receives signals: elsewhere this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class StopFlag:
    """While the loop runs in the main thread, the first Ctrl-C only asks it to stop at its next
    check (``requested``, ``reason = "Ctrl-C"``, ``message`` printed on stderr when ``announce``);
    a second one raises KeyboardInterrupt at once. :meth:`request` asks the same from code (a
    callback's StopTraining). The first reason given is kept."""

    def __init__(self, message: str, announce: bool = True) -> None:
        self.message = message
        self.announce = announce
        self.requested = False
        self.reason: str | None = None
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # pragma: no cover - e.g. signals unavailable
                self._previous = None
        return self

    def request(self, reason: str) -> None:
        if not self.requested:
            self.requested, self.reason = True, reason

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.request("Ctrl-C")
        if self.announce:
            print(f"\n{self.message}", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------------------------
# Several processes (torch.distributed)


class Pending:
    """An all_reduce in flight (or done); :meth:`result` waits for it once and returns its
    values. On a CUDA device the result is copied to pinned host memory behind the collective,
    so waiting for it later does not wait for the work queued after it."""

    __slots__ = ("_buf", "_event", "_host", "_values", "_work")

    def __init__(self, work: Any, buf: Tensor) -> None:
        self._work, self._buf = work, buf
        self._host: Tensor | None = None
        self._event: Any = None
        self._values: list[float] | None = None
        if work is not None and buf.device.type == "cuda":
            work.wait()  # with NCCL: the current stream waits for the collective, the host not
            self._host = buf.to("cpu", non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def done(self) -> bool:
        """Whether :meth:`result` would return without waiting."""
        if self._values is not None or self._work is None:
            return True
        if self._event is not None:
            return bool(self._event.query())
        return bool(self._work.is_completed())

    def result(self) -> list[float]:
        if self._values is None:
            if self._event is not None:
                self._event.synchronize()
                self._values = self._host.tolist()  # type: ignore[union-attr]
            else:
                if self._work is not None:
                    self._work.wait()
                self._values = self._buf.tolist()
            # the collective's handles go as soon as it is read: a gloo work freed only at
            # interpreter exit, after destroy_process_group, can abort the process
            self._work = self._event = self._host = None
        return self._values


class Ranks:
    """The processes that run ``lr_find``/``fit``/``evaluate`` together. With torch.distributed
    initialized: the model's process group (a ``DistributedDataParallel`` model's
    ``process_group``), else the default group; otherwise this process alone (``size == 1``, and
    nothing here communicates).

    Every rank of the group makes the same calls in the same order: these small all_reduces are
    the only communication pylr adds. Values are reduced in float64 on the CPU when the group's
    backend is gloo, on the model's device otherwise (NCCL). An all_reduce hands every rank the
    same bits — what DDP relies on to keep its replicas identical — so a decision taken from a
    reduced value (stop the sweep, stop training, the best epoch) is the same on every rank."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.group: Any = None
        self.size, self.rank = 1, 0
        self.device = torch.device("cpu")
        if dist.is_available() and dist.is_initialized():
            if isinstance(model, DistributedDataParallel):
                self.group = model.process_group
            self.size = dist.get_world_size(self.group)
            self.rank = dist.get_rank(self.group)
            if device.type != "cpu" and str(dist.get_backend(self.group)) != "gloo":
                self.device = device
        self.distributed = self.size > 1
        self.main = self.rank == 0

    def _buffer(self, values: Sequence[float | Tensor]) -> Tensor:
        """``values`` in one float64 tensor on the reduce device; a tensor already on that
        device is copied in without a host sync."""
        buf = torch.empty(len(values), dtype=torch.float64, device=self.device)
        for i, v in enumerate(values):
            if isinstance(v, Tensor):
                buf[i].copy_(v.detach().reshape(()))
            else:
                buf[i].fill_(float(v))
        return buf

    def start_sum(self, values: Sequence[float | Tensor]) -> Pending:
        """Begin adding up ``values`` over the ranks; the sums come from ``.result()``."""
        buf = self._buffer(values)
        if not self.distributed:
            return Pending(None, buf)
        return Pending(dist.all_reduce(buf, group=self.group, async_op=True), buf)

    def sum(self, values: Sequence[float | Tensor]) -> list[float]:
        """``values`` added up over the ranks (element-wise), the same on every rank."""
        return self.start_sum(values).result()

    def max(self, value: float) -> float:
        if not self.distributed:
            return value
        buf = self._buffer([value])
        dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=self.group)
        return float(buf.item())

    def first(self, reason: str | None) -> str | None:
        """The ``reason`` of the lowest rank that has one — the same string on every rank — or
        None when no rank has one: an all_reduce (the lowest such rank), and a broadcast of its
        string only when there is one."""
        if not self.distributed:
            return reason
        buf = self._buffer([self.rank if reason is not None else self.size])
        dist.all_reduce(buf, op=dist.ReduceOp.MIN, group=self.group)
        src = int(buf.item())
        if src >= self.size:
            return None
        box = [reason]
        group_src = src if self.group is None else dist.get_global_rank(self.group, src)
        device = self.device if self.device.type != "cpu" else None
        dist.broadcast_object_list(box, src=group_src, group=self.group, device=device)
        return box[0]


def epoch_samplers(loader: Any) -> list[Any]:
    """What reshuffles ``loader`` per epoch through ``set_epoch(epoch)``: its ``sampler`` (a
    ``DistributedSampler``), its ``batch_sampler`` or the ``batch_sampler``'s ``sampler`` — each
    object once."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    found: list[Any] = []
    for obj in (
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        if callable(getattr(obj, "set_epoch", None)) and all(obj is not f for f in found):
            found.append(obj)
    return found


def check_first_loss(loss: Any, where: str, ranks: Ranks | None = None) -> None:
    """The loss of the first batch must be a finite scalar tensor that can be backpropagated.
    Under torch.distributed the ranks agree on the finiteness (a rank that stopped alone would
    leave the others waiting in the backward's all_reduce): every rank raises, naming the first
    rank whose loss is not finite."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__} on {where}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)} on {where}"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"the loss on {where} does not require grad: the model has no trainable parameter "
            "in the graph, or the loss was computed under torch.no_grad()"
        )
    value = float(loss.detach().float())
    bad = None if math.isfinite(value) else f"the loss on {where} is {value}, not a finite number"
    if ranks is not None and ranks.distributed:
        bad = ranks.first(None if bad is None else f"{bad} (on rank {ranks.rank})")
    if bad is not None:
        raise ValueError(bad)


class SmoothedLoss:
    """Bias-corrected exponential moving average: ``avg = beta * avg + (1 - beta) * x``,
    reported as ``avg / (1 - beta ** n)`` after ``n`` values (fastai's smoothing)."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.avg = 0.0
        self.n = 0

    def update(self, x: float) -> float:
        self.n += 1
        self.avg = self.beta * self.avg + (1.0 - self.beta) * x
        return self.avg / (1.0 - self.beta**self.n)


def momentum_key(optimizer: Optimizer) -> str | None:
    """'betas' (Adam-like: beta1 is the momentum), 'momentum' (SGD-like) or None."""
    group = optimizer.param_groups[0]
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    return None


def set_group_value(group: dict[str, Any], key: str, value: float) -> None:
    """Write an lr or momentum (``betas[0]`` for key 'betas') into a param group; a Tensor
    hyperparameter is filled in place, as torch's schedulers do."""
    if key == "betas":
        beta1, *rest = group["betas"]
        if isinstance(beta1, Tensor):
            beta1.fill_(value)
        else:
            group["betas"] = (value, *rest)
    elif isinstance(group[key], Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def has_momentum(group: dict[str, Any], key: str | None) -> bool:
    """Whether a schedule's momentum may drive this group: Adam's ``betas[0]`` always (fastai
    cycles Adam's ``mom`` too); SGD's ``momentum`` only where it is not 0 — an SGD without
    momentum stays without, as fastai's ``SGD(mom=0)`` (no momentum step at all) does."""
    if key == "betas":
        return True
    return key == "momentum" and float(group["momentum"]) != 0.0


def group_momentum(group: dict[str, Any], key: str | None) -> float:
    if key is None:
        return math.nan
    value = group["betas"][0] if key == "betas" else group[key]
    return float(value)


def normalize_metrics(metrics: Any) -> dict[str, Metric]:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        items = dict(metrics)
    elif isinstance(metrics, Sequence) and not isinstance(metrics, str):
        items = {}
        for m in metrics:
            name = getattr(m, "__name__", None) or type(m).__name__
            items[name] = m
    elif callable(metrics):
        items = {getattr(metrics, "__name__", None) or type(metrics).__name__: metrics}
    else:
        raise TypeError(
            f"metrics must be a dict of name -> fn(output, target) or a list of such functions, "
            f"got {type(metrics).__name__}"
        )
    for name, fn in items.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, got {name!r}")
        check_callable(f"metrics[{name!r}]", fn)
    return items


def accuracy(output: Tensor, target: Tensor) -> Tensor:
    """Top-1 accuracy: the fraction of rows where ``output.argmax(-1) == target``."""
    return (output.argmax(dim=-1) == target).float().mean()


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` has DTensor params (FSDP2, tensor parallelism): its forward is a
    collective (an all-gather of each sharded module's params), so every rank must run it."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _in_step(loader: Iterable[Any], ranks: Ranks, name: str) -> Iterator[Any]:
    """``loader``'s batches, each taken only once every rank has one too: for a sharded model,
    whose forward the ranks must run the same number of times. A rank that runs out while
    another has a batch left would wait forever in that rank's all-gather; instead every rank
    raises the same ValueError (one small all_reduce a batch)."""
    for index, batch in enumerate(itertools.chain(loader, [_END])):
        have = ranks.sum([0.0 if batch is _END else 1.0])[0]
        if have == 0:
            return
        if have < ranks.size:
            raise ValueError(
                f"{name}: under FSDP2 (DTensor params) every rank needs the same number of "
                f"batches, as the model's forward is a collective; {ranks.size - int(have)} of "
                f"{ranks.size} ranks had {index} and the others more (a DistributedSampler "
                "gives every rank the same count)"
            )
        yield batch


_END = object()


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[..., Any],
    metrics: dict[str, Metric],
    device: torch.device,
    amp: Amp,
    name: str,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """The sums of ``loss * batch size`` and ``metric * batch size`` and the sample count, over
    ``loader`` — and with ``ranks`` over every rank's loader — then divided: the mean over all
    the samples every rank saw, as one process would compute it over their union."""
    was_training = model.training
    model.eval()
    try:
        totals = {"loss": 0.0, **dict.fromkeys(metrics, 0.0)}
        count = 0
        batches: Iterable[Any] = loader
        if ranks is not None and ranks.distributed and is_sharded(model):
            batches = _in_step(loader, ranks, name)
        for batch in batches:
            inputs, target = split_batch(to_device(batch, device), name)
            with amp.autocast():
                output = model(*inputs)
                loss = loss_fn(output, target)
            n = batch_size(target)
            count += n
            totals["loss"] += float(loss) * n
            for key, fn in metrics.items():
                totals[key] += float(fn(output, target)) * n
        if ranks is not None and ranks.distributed:
            *sums, total = ranks.sum([*totals.values(), count])
            totals, count = dict(zip(totals, sums, strict=True)), int(total)
        if count == 0:
            raise ValueError(f"{name} is empty")
        return {k: v / count for k, v in totals.items()}
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[..., Any],
    metrics: Any = None,
    *,
    device: Any = None,
    amp: Any = None,
    all_ranks: bool = True,
) -> dict[str, float]:
    """The mean loss and metrics of ``model`` over ``loader``, in eval mode without gradients.

    Each batch counts with its size (the target's first dimension), so with a mean-reducing
    ``loss_fn`` the result is the mean over all samples. Returns ``{"loss": ..., name: ...}``;
    ``metrics`` is a dict of name -> ``fn(output, target)`` or a list of functions (named by
    ``__name__``), e.g. ``[pylr.accuracy]``. The model's train/eval mode is restored.

    Under torch.distributed (``all_ranks=True``) the sums and sample counts of every rank of the
    model's process group are added up — every rank must call ``evaluate`` — so each rank gets
    the mean over the union of the ranks' loaders (a shard each, say, through a
    ``DistributedSampler``), as one process over all of them would. ``all_ranks=False``
    evaluates this process's loader alone, e.g. on rank 0 only.
    """
    check_model(model)
    check_loader("loader", loader)
    check_callable("loss_fn", loss_fn)
    if not isinstance(all_ranks, bool):
        raise TypeError(f"all_ranks must be True or False, got {all_ranks!r}")
    dev = resolve_device(model, device)
    named = normalize_metrics(metrics)
    amp_ = Amp(amp, dev)
    ranks = Ranks(model, dev) if all_ranks else None
    if ranks is None or not ranks.distributed:
        refuse_empty(None, [("loader", loader)])
    # (under torch.distributed a rank's shard may be empty: only the union must not be)
    move_to(model, dev)
    return _evaluate(model, loader, loss_fn, named, dev, amp_, "loader", ranks)


# --------------------------------------------------------------------------------------------
# One training step


def train_step(
    model: nn.Module,
    loss_fn: Callable[..., Any],
    optimizer: Optimizer,
    batches: Iterator[Any],
    amp: Amp,
    device: torch.device,
    *,
    accumulation_steps: int = 1,
    grad_clip: float | None = None,
    check_loss: bool = False,
    ranks: Ranks | None = None,
) -> list[Tensor]:
    """One optimizer step over ``accumulation_steps`` batches taken from ``batches``; returns
    each batch's loss, detached.

    For each batch ``(inputs..., target)``: ``loss = loss_fn(model(*inputs), target)`` under
    ``amp``'s autocast, and ``backward`` of ``loss / accumulation_steps`` (through the
    ``GradScaler`` for float16), so the grads are those of the mean loss. Then, with
    ``grad_clip``, the grads (unscaled first) are clipped to a total norm
    ``||g||_2 <= grad_clip`` (by a pylr optimizer's ``clip_grad_norm_``, folded into its step,
    or torch's ``clip_grad_norm_``); the optimizer steps (the scaler skips a step with inf/NaN
    grads) and the grads are set to None. ``check_loss`` checks the first batch's loss
    (:func:`check_first_loss`, agreed over ``ranks``). lr and momentum are the caller's business,
    written before. A ``DistributedDataParallel`` model averages the grads over the ranks in the
    last batch's backward only (``no_sync`` before it): the same grads, one all_reduce per step.
    """
    losses: list[Tensor] = []
    for k in range(accumulation_steps):
        inputs, target = split_batch(to_device(next(batches), device), "train_loader")
        deferred = isinstance(model, DistributedDataParallel) and k < accumulation_steps - 1
        with model.no_sync() if deferred else contextlib.nullcontext():  # type: ignore[operator]
            with amp.autocast():
                loss = loss_fn(model(*inputs), target)
            if check_loss and k == 0:
                check_first_loss(loss, "the first batch", ranks)
            amp.backward(loss / accumulation_steps if accumulation_steps > 1 else loss)
        losses.append(loss.detach())
    if grad_clip is not None:
        amp.unscale(optimizer)
        if hasattr(optimizer, "clip_grad_norm_"):
            # pylr's optimizers: the coefficient folded into the step, no pass rewriting grads
            optimizer.clip_grad_norm_(grad_clip)
        else:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    amp.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return losses


# --------------------------------------------------------------------------------------------
# fastai's default optimizer: weight decay on everything but biases and normalisation params

NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, name)
    for name in (
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "LazyBatchNorm1d",
        "LazyBatchNorm2d",
        "LazyBatchNorm3d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LazyInstanceNorm1d",
        "LazyInstanceNorm2d",
        "LazyInstanceNorm3d",
        "LayerNorm",
        "GroupNorm",
        "RMSNorm",  # torch >= 2.4
    )
    if hasattr(nn, name)
)
"""The normalisation layers whose parameters (weight and bias) are not decayed by default.
fastai's ``norm_types`` are BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d and LayerNorm; pylr adds
their lazy and synchronised variants, GroupNorm and RMSNorm (fastai decays the weights of those
three, and their biases only as biases). Subclasses count too."""


def norm_bias_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters fastai does not decay (``wd_bn_bias=False``): every parameter of a
    normalisation layer (an instance of :data:`NORM_TYPES`), and the ``bias`` parameter of
    every other module — fastai's ``norm_bias_params``. In ``model.parameters()`` order, each
    once."""
    chosen: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            chosen.update(id(p) for p in module.parameters())
        elif isinstance(getattr(module, "bias", None), nn.Parameter):
            chosen.add(id(module.bias))
    return [p for p in model.parameters() if id(p) in chosen]


def weight_decay_groups(
    model: nn.Module, weight_decay: float, wd_bn_bias: bool = False
) -> list[dict[str, Any]]:
    """Param groups for fastai's weight decay: ``[{"params": decayed, "weight_decay": wd},
    {"params": norm_bias_params(model), "weight_decay": 0.0, "do_wd": False}]`` — or one group
    of all parameters with ``wd_bn_bias=True`` (fastai's option of that name). An empty group
    is left out. ``do_wd: False`` marks the group that ``fit_one_cycle(wd=...)`` and
    ``lr_find(wd=...)`` leave at zero."""
    if not isinstance(wd_bn_bias, bool):
        raise TypeError(f"wd_bn_bias must be True or False, got {type(wd_bn_bias).__name__}")
    params = list(model.parameters())
    if wd_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    exempt = {id(p) for p in norm_bias_params(model)}
    groups = [
        {"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
        {
            "params": [p for p in params if id(p) in exempt],
            "weight_decay": 0.0,
            "do_wd": False,
        },
    ]
    return [g for g in groups if g["params"]]


def check_wd(wd: Any, wd_bn_bias: Any, optimizer: Optimizer | None) -> None:
    """``wd``: None or a finite number >= 0; ``wd_bn_bias``: None or a bool, and only for the
    default optimizer (which is the one it groups)."""
    if wd is not None:
        if isinstance(wd, bool) or not isinstance(wd, (int, float)):
            raise TypeError(f"wd must be a number, got {type(wd).__name__}")
        if not math.isfinite(wd) or wd < 0:
            raise ValueError(f"wd must be a finite number >= 0, got {wd!r}")
    if wd_bn_bias is not None:
        if not isinstance(wd_bn_bias, bool):
            raise TypeError(f"wd_bn_bias must be True, False or None, got {wd_bn_bias!r}")
        if optimizer is not None:
            raise ValueError(
                "wd_bn_bias groups the default optimizer's params; with your own optimizer, "
                "build its groups with pylr.train.weight_decay_groups(model, wd, wd_bn_bias=...)"
            )


def set_weight_decay(optimizer: Optimizer, wd: float) -> None:
    """``weight_decay = wd`` in every group but those marked ``do_wd: False``."""
    for group in optimizer.param_groups:
        if group.get("do_wd", True):
            group["weight_decay"] = float(wd)


def fastai_adamw(
    model: nn.Module, lr: float, beta1: float, wd: float | None, wd_bn_bias: bool | None
) -> Optimizer:
    """fastai's ``Adam`` as ``fit_one_cycle`` and ``lr_find`` use it by default:
    ``pylr.optim.AdamW(weight_decay_groups(model, 0.01 if wd is None else wd, wd_bn_bias),
    lr, betas=(beta1, 0.99), eps=1e-5)`` — fastai's ``mom``, ``sqr_mom=0.99``, ``eps=1e-5``,
    ``wd=0.01``, decoupled (``p *= 1 - lr * wd``), not on biases and normalisation params."""
    from pylr.optim import AdamW

    weight_decay = 0.01 if wd is None else float(wd)
    groups = weight_decay_groups(model, weight_decay, bool(wd_bn_bias))
    return AdamW(groups, lr=lr, betas=(beta1, 0.99), eps=1e-5, weight_decay=weight_decay)
