"""The C++ core stands alone: no torch inside, memory-safe node construction, the thread pool."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

import pylr
from pylr import _core

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sources_include_no_torch_header():
    for path in (ROOT / "csrc").rglob("*"):
        if path.suffix in {".cpp", ".hpp", ".h", ".cu", ".cuh"}:
            text = path.read_text()
            for banned in ("<torch/", "<ATen/", "<c10/", '"torch/', "libtorch"):
                assert banned not in text, f"{path.name} mentions {banned}"


@pytest.mark.skipif(sys.platform != "linux", reason="ldd is Linux's")
def test_extension_links_no_torch_library():
    out = subprocess.run(["ldd", _core.__file__], capture_output=True, text=True, check=True)
    # library names only: a load address such as 0x7f3169ec1000 may contain "c10"
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert not [n for n in names if re.search(r"torch|c10", n)], names


def test_importing_schedules_does_not_import_torch():
    code = "import sys, pylr.schedules; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "False"


def test_import_pylr_is_enough_for_every_submodule():
    """As with torch.optim: `import pylr` then pylr.optim / lr_scheduler / functional."""
    code = (
        "import sys, pylr\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)\n"
        "opt = pylr.optim.AdamW([p], lr=0.1)\n"
        "sched = pylr.lr_scheduler.StepLR(opt, step_size=1)\n"
        "opt.step(); sched.step()\n"
        "assert callable(pylr.functional.adamw_) and 'optim' in dir(pylr)\n"
        "print(opt.param_groups[0]['lr'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert abs(float(out.stdout) - 0.01) < 1e-12


def test_version_flag():
    out = subprocess.run(
        [sys.executable, "-m", "pylr", "--version"], capture_output=True, text=True, cwd="/"
    )
    assert out.returncode == 0 and out.stdout.strip() == f"pylr {pylr.__version__}"
    help_text = subprocess.run(
        [sys.executable, "-m", "pylr", "values", "--help"], capture_output=True, text=True, cwd="/"
    ).stdout
    assert "SPEC" in help_text and "OneCycle(" in help_text and "to_dict" in help_text


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: _core.cosine(base_lr=1.0, T_max=5.0), "eta_min"),
        (lambda: _core.sequence(schedules=[], milestones=[5.0]), "child"),
        (lambda: _core.scale(schedule=None, factor=2.0), "None|incompatible"),
        (lambda: _core.product(schedules=[]), "child"),
        (
            lambda: _core.one_cycle(
                initial_lr=0.1,
                max_lr=1.0,
                min_lr=0.0,
                phase_ends=[3.0],
                anneal_strategy="cos",
                base_momentum=0.85,
                max_momentum=0.95,
                extrapolate=False,
            ),
            "phase_ends",
        ),
        (
            lambda: _core.warmup(
                schedule=_core.constant(value=1.0), steps=2.0, mode="linear?", start_factor=0.0
            ),
            "unknown warmup mode 'linear\\?'",
        ),
    ],
)
def test_node_factories_guard_memory_safety(build, match):
    """Nodes are built only by typed factories (each kind's parameters by name, in C++); what
    would make a node unsafe to evaluate raises there, whatever Python passes."""
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_mode_names_come_from_the_core():
    from pylr import schedules

    assert (
        schedules._CYCLIC_MODES == _core.CYCLIC_MODES == ("triangular", "triangular2", "exp_range")
    )
    assert _core.WARMUP_MODES == ("linear", "constant", "exponential")
    # no node by kind number and positional parameters: those layouts live in C++ alone
    with pytest.raises(TypeError):
        _core.ScheduleNode(6, [1.0, 2.0, 0.0], [], [])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pool_works_in_a_forked_child():
    """DataLoader workers fork; the child must rebuild the pool instead of deadlocking."""
    code = (
        "import os, pylr\n"
        "from pylr.schedules import Cosine\n"
        "s = Cosine(1000)\n"
        "a = s.values(200_000)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    b = s.values(200_000)\n"
        "    os._exit(0 if (a == b).all() else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", timeout=60, check=False)
    assert proc.returncode == 0


def test_pool_wakes_sleeping_workers_only_for_large_or_back_to_back_steps():
    """Inside a training loop (a pause before each step) a small step runs without waking the
    pool; a large one, or steps back to back, do wake it."""
    import time

    import torch

    from pylr import optim as PO

    def optimizer(n):
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.ones(n)
        return PO.AdamW([p])

    before = pylr.get_num_threads()
    pylr.set_num_threads(2)
    try:
        small, large = optimizer(100_000), optimizer(_core.WAKE_MIN_ELEMENTS)
        small.step()
        large.step()
        for _ in range(3):
            time.sleep(0.01)  # forward and backward would run here
            n = _core.pool_wake_requests()
            small.step()
            assert _core.pool_wake_requests() == n
        time.sleep(0.01)
        n = _core.pool_wake_requests()
        large.step()
        assert _core.pool_wake_requests() > n
        n = _core.pool_wake_requests()
        for _ in range(50):
            small.step()  # back to back
        assert _core.pool_wake_requests() > n
    finally:
        pylr.set_num_threads(before)
