"""Typed stubs of pylr's C++ extension (pylr._core). Users call pylr.schedules instead."""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

class ScheduleNode:
    """An immutable schedule node: kind, scalar parameters, milestones and children."""

    def __init__(
        self, kind: int, params: list[float], points: list[float], children: list[ScheduleNode]
    ) -> None: ...
    def value(self, t: float) -> float: ...
    def momentum(self, t: float) -> float: ...
    @property
    def has_momentum(self) -> bool: ...
    @property
    def depth(self) -> int: ...
    @property
    def kind(self) -> int: ...
    @property
    def params(self) -> list[float]: ...
    @property
    def points(self) -> list[float]: ...
    def values(self, steps: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
    def momentum_values(self, steps: npt.ArrayLike) -> npt.NDArray[np.float64]: ...
    def values_range(self, n: int) -> npt.NDArray[np.float64]: ...
    def momentum_values_range(self, n: int) -> npt.NDArray[np.float64]: ...

MAX_SCHEDULE_DEPTH: int

TABLE_COLUMNS: int
ADAM_GROUP_COLUMNS: int
SGD_GROUP_COLUMNS: int

def adam_step(
    table: npt.NDArray[np.int64],
    groups: npt.NDArray[np.float64],
    grad_scale: int = 0,
    found_inf: int = 0,
    grad_coef: float = 1.0,
    schedules: object | None = None,
    schedule_steps: npt.NDArray[np.float64] | None = None,
    while_updating: Callable[[], object] | None = None,
) -> int: ...
def sgd_step(
    table: npt.NDArray[np.int64],
    groups: npt.NDArray[np.float64],
    grad_scale: int = 0,
    found_inf: int = 0,
    grad_coef: float = 1.0,
    schedules: object | None = None,
    schedule_steps: npt.NDArray[np.float64] | None = None,
    while_updating: Callable[[], object] | None = None,
) -> int: ...
def roofline_step(table: npt.NDArray[np.int64], n_states: int) -> None: ...
def kernel_isa() -> str: ...
def prepare_threads(elements: int) -> None: ...

WAKE_MIN_ELEMENTS: int

def pool_wake_requests() -> int: ...
def warm_restart_position(T_0: float, T_mult: float, t: float) -> tuple[float, float]:
    """(T_cur, T_i) at step t; (nan, nan) for T_0 <= 0, T_mult < 1 or a non-finite t."""

def get_num_threads() -> int: ...
def set_num_threads(n: int) -> int: ...

MAX_THREADS: int
