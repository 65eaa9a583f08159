"""pylr's optional CUDA kernels (the extension ``pylr._cuda``).

When pylr is built with a CUDA toolkit (``PYLR_CUDA=AUTO`` finds ``nvcc``, or
``pip install -C cmake.define.PYLR_CUDA=ON .`` requires it), ``pylr.optim.SGD``, ``Adam`` and
``AdamW`` and ``pylr.functional`` step CUDA parameters with fused multi-tensor kernels — every
tensor of every param group in a few launches, on torch's current stream — built from the same
per-element math as the CPU step (``csrc/optim/math.hpp``).

- :func:`built`: whether this installation has the extension.
- :func:`is_available`: whether it has it *and* a CUDA device is usable (a driver, a device).
- :func:`unavailable_reason`: why not, in words (None when available).

Importing this module (or ``pylr._cuda``) needs no GPU and no driver, and does not import torch.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

__all__ = ["built", "device_count", "is_available", "unavailable_reason"]

_REBUILD_HINT = (
    "reinstall pylr from its source where CMake finds a CUDA toolkit (nvcc, CUDA >= 12.1; "
    "`pip install -C cmake.define.PYLR_CUDA=ON .` fails loudly if it does not)"
)
_DRIVER_HINT = "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
_TORCH_HINT = "or step these parameters with torch's optimizer (torch.optim.AdamW(..., fused=True))"


@functools.cache
def _module() -> ModuleType | None:
    try:
        from pylr import _cuda
    except ImportError:
        return None
    return _cuda


def built() -> bool:
    """Whether this pylr was built with its CUDA extension (``pylr._cuda``)."""
    return _module() is not None


@functools.cache
def _device_count() -> tuple[int, str | None]:
    module = _module()
    if module is None:
        return 0, None
    return module.device_count()


def device_count() -> int:
    """CUDA devices pylr's kernels can use (0 without the extension, a driver or a device)."""
    return _device_count()[0]


def is_available() -> bool:
    """Whether CUDA parameters get pylr's fused kernels: the extension is built and a device is
    usable."""
    return device_count() > 0


def unavailable_reason() -> str | None:
    """Why :func:`is_available` is False, or None."""
    if not built():
        return "this pylr build has no CUDA extension (pylr._cuda)"
    count, why = _device_count()
    if count == 0:
        return f"pylr._cuda finds no usable CUDA device ({why or 'no device'})"
    return None


class _Backend:
    """What a step on CUDA tensors needs: pylr._cuda's launches and torch's stream of the
    device. pylr.optim and pylr.functional reach it through ``pylr._plan.backend_for``."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.adam_step = module.adam_step
        self.sgd_step = module.sgd_step
        self.grad_norm = module.grad_norm
        self.norm_partials = module.norm_partials

    @staticmethod
    def stream(device: Any) -> int:
        import torch

        return torch.cuda.current_stream(device).cuda_stream

    @staticmethod
    def capturing(device: Any) -> bool:
        import torch

        return torch.cuda.is_current_stream_capturing()


@functools.cache
def _backend() -> _Backend | None:
    module = _module()
    return None if module is None or not is_available() else _Backend(module)


def backend(label: str, device: Any) -> _Backend:
    """The CUDA backend for tensors on ``device`` (``label`` names the first of them), or a
    RuntimeError that says what to do."""
    b = _backend()
    if b is None:
        hint = _REBUILD_HINT if not built() else _DRIVER_HINT
        raise RuntimeError(
            f"{label} is on {device}, but {unavailable_reason()}, so pylr cannot step CUDA "
            f"tensors: {hint}, {_TORCH_HINT}"
        )
    return b
