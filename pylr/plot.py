"""Plots of schedules. matplotlib is imported only when a plot is asked for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pylr.schedules import Schedule

__all__ = ["plot_schedule"]


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - exercised by hiding matplotlib in a test
        raise ImportError(
            "pylr's plots need matplotlib: pip install matplotlib (from a checkout of pylr: "
            "pip install '.[plot]')"
        ) from e
    return matplotlib


def axes(ax: Any, path: Any) -> Any:
    """``ax``, or the Axes of a new figure: a pyplot figure when it is for showing, a plain
    ``Figure`` (no GUI backend, nothing left open) when it only goes to ``path``."""
    _matplotlib()
    if ax is not None:
        return ax
    if path is not None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.5), layout="constrained")
    else:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(8, 4.5), layout="constrained")
    return fig.add_subplot()


def save(ax: Any, path: Any) -> Any:
    """Save ``ax``'s figure to ``path`` (format by extension) when a path is given; returns ax."""
    if path is not None:
        ax.figure.savefig(path, dpi=120)
    return ax


def legend_above(ax: Any, *twins: Any) -> Any:
    """One legend for ``ax`` and its twin axes (a momentum axis), above the plot: outside the
    data area, so it hides no curve's start or end whichever axis the curve is on. (Inside,
    matplotlib's ``loc="best"`` would avoid only the lines of the axes it belongs to.)"""
    handles, labels = ax.get_legend_handles_labels()
    for twin in twins:
        if twin is not None:
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
    return ax.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=max(1, min(len(labels), 4)),
        fontsize="small",
        frameon=False,
    )


def _named(schedules: Schedule | Sequence[Schedule] | Mapping[str, Schedule]) -> dict[str, Any]:
    if isinstance(schedules, Schedule):
        return {repr(schedules): schedules}
    if isinstance(schedules, Mapping):
        items = dict(schedules)
    elif isinstance(schedules, Sequence) and not isinstance(schedules, str):
        items = {repr(s): s for s in schedules}
    else:
        raise TypeError(
            "schedules must be a Schedule, a list of them or a dict of name -> Schedule, "
            f"got {type(schedules).__name__}"
        )
    if not items:
        raise ValueError("schedules must not be empty")
    for name, s in items.items():
        if not isinstance(s, Schedule):
            raise TypeError(f"schedules[{name!r}] is a {type(s).__name__}, not a Schedule")
    return items


def plot_schedule(
    schedules: Schedule | Sequence[Schedule] | Mapping[str, Schedule],
    steps: int,
    ax: Any = None,
    path: str | None = None,
) -> Any:
    """Plot the lr of one or more schedules against the step, overlaid with a legend.

    Momentum, where a schedule defines it, goes on a second y axis (dashed). The legend, above
    the plot, names each lr line and each momentum line (``momentum``, or ``momentum (name)``
    with several schedules). With ``path`` the figure is also saved there (PNG, PDF, SVG, ...
    by extension). Returns the lr Axes.

    Args:
        schedules: a schedule, a list of schedules, or a dict of legend label -> schedule.
        steps: plot steps ``0 .. steps - 1``.
        ax: a matplotlib Axes to draw on; a new figure is made when None.
        path: where to save the figure, if anywhere.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    named = _named(schedules)
    ax = axes(ax, path)
    x = np.arange(steps)
    mom_ax = None
    for i, (label, s) in enumerate(named.items()):
        color = f"C{i % 10}"
        ax.plot(x, s.values(steps), color=color, label=label)
        if s.has_momentum:
            if mom_ax is None:
                mom_ax = ax.twinx()
                mom_ax.set_ylabel("momentum (dashed)")
            mom_ax.plot(
                x,
                s.momentum_values(steps),
                color=color,
                linestyle="--",
                alpha=0.7,
                label="momentum" if len(named) == 1 else f"momentum ({label})",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    legend_above(ax, mom_ax)
    return save(ax, path)
