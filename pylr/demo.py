"""``pylr demo``: the LR range test and one-cycle training of a small MLP on scikit-learn's
bundled handwritten digits (1,797 8x8 images; no download)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pylr

__all__ = ["digits_loaders", "digits_mlp", "run"]


def digits_loaders(
    batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Train and validation loaders over the digits: pixels scaled to [0, 1], a seeded split
    and seeded shuffling."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the demo uses scikit-learn's bundled digits: pip install scikit-learn (from a "
            "checkout of pylr: pip install '.[demo]')"
        ) from e
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    train_loader = DataLoader(
        TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True, generator=gen
    )
    val_loader = DataLoader(TensorDataset(x[val], y[val]), batch_size=512)
    return train_loader, val_loader


def digits_mlp(seed: int = 0, hidden: int = 128) -> nn.Module:
    """64 -> hidden -> hidden/2 -> 10, ReLU."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden // 2),
        nn.ReLU(),
        nn.Linear(hidden // 2, 10),
    )


def run(
    out_dir: str | os.PathLike[str] = ".",
    *,
    epochs: int = 10,
    num_iter: int = 100,
    seed: int = 0,
    progress: bool | str = True,
    file: Any = None,
) -> dict[str, Any]:
    """lr_find, then fit_one_cycle at the suggested lr; prints the suggestions and the validation
    accuracy and writes ``lr_find.png``, ``schedule.png`` and ``loss.png`` to ``out_dir``.
    Returns the suggestions, the accuracy, the paths and the timings."""
    out = sys.stdout if file is None else file
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.png") for name in ("lr_find", "schedule", "loss")}
    start = time.perf_counter()
    train_loader, val_loader = digits_loaders(seed=seed)
    model = digits_mlp(seed)
    loss_fn = nn.CrossEntropyLoss()
    n_train = len(train_loader.dataset)  # type: ignore[arg-type]
    n_val = len(val_loader.dataset)  # type: ignore[arg-type]
    print(
        f"pylr demo: scikit-learn digits ({n_train} train / {n_val} validation images, 8x8), "
        f"MLP with {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{pylr.get_num_threads()} threads",
        file=out,
    )

    t0 = time.perf_counter()
    found = pylr.lr_find(model, train_loader, loss_fn, num_iter=num_iter)
    t_find = time.perf_counter() - t0
    print(
        f"\nlr_find: {len(found.lrs)} steps in {t_find:.2f}s"
        f"{' (stopped at divergence)' if found.stopped_early else ''}; suggestions:",
        file=out,
    )
    for name, lr in found.suggestions.items():
        mark = "  <- used" if name == found.method else ""
        print(f"  {name:<8} {lr:.3e}{mark}", file=out)
    found.plot(paths["lr_find"])

    lr_max = found.suggested
    print(f"\nfit_one_cycle: {epochs} epochs at lr_max={lr_max:.3e}", file=out, flush=True)
    t0 = time.perf_counter()
    history = pylr.fit_one_cycle(
        model,
        train_loader,
        loss_fn,
        epochs=epochs,
        lr_max=lr_max,
        val_loader=val_loader,
        metrics=[pylr.accuracy],
        progress=progress,
    )
    t_fit = time.perf_counter() - t0
    accuracy = history.epochs[-1]["accuracy"] if history.epochs else float("nan")
    history.plot_lr(paths["schedule"])
    history.plot_loss(paths["loss"])
    total = time.perf_counter() - start
    print(
        f"\nvalidation accuracy: {accuracy:.2%} after {len(history.epochs)} epochs "
        f"({history.steps} steps, {t_fit:.2f}s)",
        file=out,
    )
    print(f"wrote {', '.join(paths.values())}  (total {total:.1f}s)", file=out)
    return {
        "suggestions": found.suggestions,
        "suggested": lr_max,
        "accuracy": accuracy,
        "paths": paths,
        "seconds": {"lr_find": t_find, "fit": t_fit, "total": total},
        "history": history,
        "lr_find": found,
    }
