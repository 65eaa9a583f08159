"""The pylr command line and plot_schedule."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pylr
from pylr import schedules as S
from pylr.cli import main, parse_spec


def test_parse_spec_expressions_and_json():
    assert parse_spec("OneCycle(max_lr=0.1, total_steps=1000)") == S.OneCycle(0.1, 1000)
    w = parse_spec("warmup(Cosine(T_max=900, base_lr=-(-0.1)), steps=100) * 0.5")
    assert w == 0.5 * S.warmup(S.Cosine(900, base_lr=0.1), 100)
    seq = parse_spec("sequence([Constant(1.0), Exponential(0.9)], milestones=[5])")
    assert seq == S.sequence([S.Constant(1.0), S.Exponential(0.9)], [5])
    assert parse_spec(json.dumps(seq.to_dict())) == seq


@pytest.mark.parametrize(
    "spec",
    [
        "__import__('os').system('echo hi')",
        "OneCycle.__class__",
        "Cosine(T_max=-1)",
        "Cosine(T_max=1, nope=2)",
        "Nope(1)",
        "Cosine(**{'T_max': 3})",
        "3 * 4",
        "Cosine(T_max=(lambda: 3)())",
        "{not json",
        '{"type": "Cosine"}',
        "Cosine(",
    ],
)
def test_bad_specs_print_one_line_and_exit_2(spec, capsys):
    assert main(["values", spec, "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pylr: error: ") and err.count("\n") == 1


def test_values_csv(capsys):
    assert main(["values", "OneCycle(max_lr=0.1, total_steps=10)", "--steps", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step,lr,momentum" and len(lines) == 11
    s = S.OneCycle(0.1, 10)
    step, lr, mom = lines[4].split(",")
    assert int(step) == 3 and float(lr) == s(3) and float(mom) == s.momentum(3)
    assert main(["values", "Step(step_size=2)", "--steps", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["step,lr", "0,1.0", "1,1.0", "2,0.1"]


def test_plot_command_writes_a_png(tmp_path):
    out = tmp_path / "oc.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pylr",
            "plot",
            "OneCycle(max_lr=0.1, total_steps=1000)",
            "--steps",
            "1000",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # not the checkout: no _core
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-m", "pylr", "plot", "Cosine(T_max=0)", "--steps", "10"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "pylr: error: T_max must be > 0.0, got 0.0"


def test_plot_schedule_overlays_and_momentum_axis(tmp_path):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    named = {"one-cycle": S.OneCycle(0.1, 100), "cosine": S.Cosine(100, base_lr=0.1)}
    out = pylr.plot_schedule(named, 100, ax=ax, path=str(tmp_path / "p.png"))
    assert out is ax
    assert [line.get_label() for line in ax.get_lines()] == list(named)
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), named["one-cycle"].values(100))
    twins = [a for a in ax.figure.axes if a is not ax]
    assert len(twins) == 1 and len(twins[0].get_lines()) == 1  # only one-cycle has momentum
    assert (tmp_path / "p.png").stat().st_size > 0
    # one legend for both axes, above the data area
    ax.figure.draw_without_rendering()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [*named, "momentum (one-cycle)"]
    assert legend.get_window_extent().y0 >= ax.get_window_extent().y1
    ax = pylr.plot_schedule(S.OneCycle(0.1, 100), 100, path=str(tmp_path / "q.png"))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        repr(S.OneCycle(0.1, 100)),
        "momentum",
    ]


def test_plot_schedule_errors(monkeypatch):
    with pytest.raises(ValueError, match="steps"):
        pylr.plot_schedule(S.Constant(), 0)
    with pytest.raises(TypeError, match="schedules"):
        pylr.plot_schedule([S.Constant(), 3], 10)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib \(from a checkout"):
        pylr.plot_schedule(S.Constant(), 10)


def test_bench_quick_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert {r["scheduler"] for r in data["schedulers"]} >= {"StepLR", "OneCycleLR"}
    assert all(r["speedup"] > 0 for r in data["schedulers"])
    assert "values(1M)" in capsys.readouterr().out


def test_version():
    assert isinstance(pylr.__version__, str) and pylr.__version__.count(".") == 2


def test_demo_runs_end_to_end_as_installed(tmp_path):
    """The README's main job, as a new user runs it: the installed `pylr` script."""
    exe = shutil.which("pylr")
    cmd = [exe] if exe else [sys.executable, "-m", "pylr"]
    proc = subprocess.run(
        [*cmd, "demo", "-o", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("valley", "slide", "minimum", "steep", "validation accuracy"):
        assert name in out
    accuracy = float(re.search(r"validation accuracy: ([\d.]+)%", out).group(1))
    assert accuracy >= 90.0
    assert out.count("epoch ") >= 10  # one line per epoch when not in a terminal
    for name in ("lr_find", "schedule", "loss"):
        path = tmp_path / "out" / f"{name}.png"
        assert path.stat().st_size > 10_000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_in_process_with_small_settings(tmp_path, capsys):
    assert (
        main(["demo", "-o", str(tmp_path), "--epochs", "2", "--num-iter", "20", "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"lr_find: \d+ steps", out)
    assert "epoch 1/2" not in out  # --no-progress
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "lr_find.png", "schedule.png"]
