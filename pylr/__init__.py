"""pylr: a high-performance training-loop engine for PyTorch.

Schedules are evaluated in closed form in C++ (``pylr.schedules``) and drive any optimizer through
drop-in replacements for ``torch.optim.lr_scheduler`` (``pylr.lr_scheduler``); ``pylr.optim`` has
fused SGD/Adam/AdamW (``pylr.functional`` the same steps on tensor lists); ``lr_find``, ``fit`` and
``fit_one_cycle`` run the LR range test and train.

Importing ``pylr`` does not import torch: ``pylr.optim``, ``pylr.lr_scheduler``,
``pylr.functional`` and the training helpers load on first use (``import pylr`` is enough).
"""

from __future__ import annotations

from typing import Any

from pylr import schedules
from pylr._core import get_num_threads
from pylr.plot import plot_schedule

__version__ = "0.1.0"

# Whether set_num_threads was called; until then pylr.optim sizes the pool like torch's.
_threads_set_by_user = False

# name -> module, imported when first asked for (they import torch)
_LAZY = {
    "Callback": "pylr.train",
    "EarlyStopping": "pylr.train",
    "History": "pylr.train",
    "StopTraining": "pylr.train",
    "fit": "pylr.train",
    "fit_one_cycle": "pylr.train",
    "LRFindResult": "pylr.lr_finder",
    "lr_find": "pylr.lr_finder",
    "accuracy": "pylr._loop",
    "evaluate": "pylr._loop",
    "norm_bias_params": "pylr._loop",
    "weight_decay_groups": "pylr._loop",
}

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "LRFindResult",
    "StopTraining",
    "__version__",
    "accuracy",
    "evaluate",
    "fit",
    "fit_one_cycle",
    "functional",
    "get_num_threads",
    "lr_find",
    "lr_scheduler",
    "norm_bias_params",
    "optim",
    "plot_schedule",
    "schedules",
    "set_num_threads",
    "weight_decay_groups",
]


# submodules that import torch, loaded on first access: `import pylr; pylr.optim.AdamW(...)`
_SUBMODULES = ("functional", "lr_scheduler", "optim")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"pylr.{name}")  # (the import binds it on the package)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pylr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


def set_num_threads(n: int) -> None:
    """Set the number of threads pylr's C++ pool uses (the calling thread included)."""
    from pylr import _core

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _core.MAX_THREADS:
        raise ValueError(
            f"set_num_threads: n must be an integer in [1, {_core.MAX_THREADS}], got {n!r}"
        )
    global _threads_set_by_user
    got = _core.set_num_threads(n)
    _threads_set_by_user = True
    if got < n:
        raise RuntimeError(
            f"set_num_threads: the system started only {got} of {n} threads; pylr uses {got}"
        )
