"""pylr: a high-performance training-loop engine for PyTorch.

Schedules are evaluated in closed form in C++ (``pylr.schedules``) and drive any optimizer through
drop-in replacements for ``torch.optim.lr_scheduler`` (``pylr.lr_scheduler``).
"""

from __future__ import annotations

from pylr import schedules
from pylr._core import get_num_threads
from pylr.plot import plot_schedule

__version__ = "0.1.0"

# Whether set_num_threads was called; until then pylr.optim sizes the pool like torch's.
_threads_set_by_user = False

__all__ = ["__version__", "get_num_threads", "plot_schedule", "schedules", "set_num_threads"]


def set_num_threads(n: int) -> None:
    """Set the number of threads pylr's C++ pool uses (the calling thread included)."""
    from pylr import _core

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    global _threads_set_by_user
    _core.set_num_threads(n)
    _threads_set_by_user = True
