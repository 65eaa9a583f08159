"""The pylr command on bad input: exactly one line on stderr, ``pylr: error: ...``, and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from pylr import schedules as S
from pylr.cli import MAX_STEPS, main, parse_spec


def nested_json(levels: int) -> str:
    return (
        '{"type": "Scaled", "factor": 1.0, "schedule": ' * levels
        + '{"type": "Constant"}'
        + ("}" * levels)
    )


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("pylr: error: ")
    return err.strip()


BAD_COMMANDS = [
    (["values", "Step(step_size=1" + "0" * 400 + ")", "--steps", "3"], "step_size must be <="),
    (["values", nested_json(3000), "--steps", "3"], "nests too deeply"),
    (["values", nested_json(S.MAX_DEPTH), "--steps", "3"], "MAX_DEPTH = 256"),
    (["values", "Cosine(3)" + "*1.0" * 1000, "--steps", "3"], "nests more than 528 levels"),
    (["values", "Cosine(3)" + "*1.0" * 300, "--steps", "3"], "MAX_DEPTH = 256"),
    (["values", "Constant(" + "-" * 1000 + "1)", "--steps", "3"], "nests more than"),
    (["values", "Constant(" + "-" * 100_000 + "1)", "--steps", "3"], "nests too deeply"),
    (["values", "[" * 300 + "]" * 300, "--steps", "3"], "too many nested parentheses"),
    (["values", "Constant(1) + " + "[" * 150 + "]" * 150, "--steps", "3"], "not allowed"),
    (["values", "Constant(" + "9" * 5000 + ")", "--steps", "3"], "cannot parse"),
    (["values", '{"type": "Constant", "value": ' + "9" * 5000 + "}", "--steps", "3"], "JSON"),
    (["values", "Constant(1)", "--steps", "1000000000000"], "from 1 to 10,000,000"),
    (["values", "Constant(1)", "--steps", "99999999999999999999"], "from 1 to 10,000,000"),
    (["values", "Constant(1)", "--steps", str(MAX_STEPS + 1)], "argument --steps"),
    (["values", "Constant(1)", "--steps", "0"], "argument --steps"),
    (["values", "Constant(1)", "--steps", "many"], "argument --steps"),
    (["plot", "Constant(1)", "--steps", "10", "-o", "/missing-dir/x.png"], "/missing-dir/x.png"),
    (["values", "Constant(1)", "--steps", "3", "--nope"], "unrecognized arguments: --nope"),
    (["values", "Constant(1)"], "required: --steps (see 'pylr values --help')"),
    (["values"], "required: SPEC, --steps"),
    ([], "required: command (see 'pylr --help')"),
    (["nope"], "invalid choice: 'nope'"),
    (["demo", "--seed", "99999999999999999999999"], "argument --seed"),
    (["demo", "--epochs", "-3"], "argument --epochs"),
]


@pytest.mark.parametrize(("argv", "match"), BAD_COMMANDS, ids=lambda v: repr(v)[:40])
def test_bad_input_prints_one_line_and_exits_2(argv, match, capsys):
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert match in line, line
    assert len(line) < 400  # a long spec is shown cut short


def test_steps_limit_is_stated_in_the_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["values", "--help"])
    assert info.value.code == 0
    assert "at most 10,000,000" in capsys.readouterr().out


def test_the_steps_limit_itself_is_accepted(capsys):
    assert main(["values", "Constant(0.5)", "--steps", str(MAX_STEPS)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == MAX_STEPS + 1 and out.endswith(f"{MAX_STEPS - 1},0.5\n")


def test_deep_but_allowed_specs_still_work(capsys):
    spec = "Cosine(3)" + "*0.5" * (S.MAX_DEPTH - 1)
    assert parse_spec(spec).depth == S.MAX_DEPTH
    d = json.loads(nested_json(S.MAX_DEPTH - 1))
    assert parse_spec(nested_json(S.MAX_DEPTH - 1)) == S.from_dict(d)
    assert main(["values", spec, "--steps", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"0,{0.5 ** (S.MAX_DEPTH - 1)!r}"


def test_a_missing_matplotlib_still_exits_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", "Constant(1)", "--steps", "3", "-o", str(tmp_path / "x.png")]) == 1
    assert "pip install matplotlib" in one_error_line(capsys)


def pylr_command() -> list[str]:
    exe = shutil.which("pylr")
    return [exe] if exe else [sys.executable, "-m", "pylr"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        # 2000 levels: as deep as one argument may be long (128 KiB on Linux)
        (["values", nested_json(2000), "--steps", "3"], "nests too deeply"),
        (["values", "Constant(1)", "--steps", "1000000000000"], "from 1 to 10,000,000"),
        (["plot", "Constant(1)", "--steps", "3", "-o", "/missing-dir/x.png"], "cannot write"),
        (["values", "--nope"], "pylr values --help"),
    ],
)
def test_the_installed_script_prints_one_line_and_exits_2(args, match, tmp_path):
    proc = subprocess.run(
        [*pylr_command(), *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pylr: error: ")
    assert match in proc.stderr and proc.stdout == ""


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``pylr values ... | head -1``: no traceback when the reader goes away."""
    with subprocess.Popen(
        [*pylr_command(), "values", "Cosine(100)", "--steps", str(MAX_STEPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"step,lr\n"
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 1
    assert err == b""
