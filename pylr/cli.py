"""The ``pylr`` command (also ``python -m pylr``).

    pylr plot SPEC --steps N -o out.png     plot a schedule (lr, and momentum where defined)
    pylr values SPEC --steps N              print step,lr[,momentum] as CSV
    pylr bench [--json PATH] [--quick]      time schedules and schedulers against torch

SPEC is the JSON of ``Schedule.to_dict()`` or an expression such as
``OneCycle(max_lr=0.1, total_steps=1000)`` or ``warmup(Cosine(T_max=900), steps=100)``,
parsed with ``ast`` and never evaluated: only schedule constructors, the combinators
``sequence``, ``chain`` and ``warmup``, literals, lists and ``*`` are accepted.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from typing import Any

from pylr import schedules
from pylr.schedules import Schedule

__all__ = ["main", "parse_spec"]

_COMBINATORS = {
    "sequence": schedules.sequence,
    "chain": schedules.chain,
    "warmup": schedules.warmup,
}


class SpecError(ValueError):
    """A schedule spec that cannot be parsed or built."""


def _callables() -> dict[str, Any]:
    names = {n: getattr(schedules, n) for n in schedules.__all__}
    return {
        n: f
        for n, f in names.items()
        if isinstance(f, type) and issubclass(f, Schedule) and f is not Schedule
    } | _COMBINATORS


def _eval(node: ast.AST, table: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, table) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, table)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise SpecError("a sign may only stand before a number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _eval(node.left, table), _eval(node.right, table)
        if not (isinstance(left, Schedule) or isinstance(right, Schedule)):
            raise SpecError("'*' needs a schedule on at least one side")
        return left * right
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in table:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise SpecError(f"unknown schedule {name!r}; expected one of {sorted(table)}")
        if any(k.arg is None for k in node.keywords):
            raise SpecError("'**' is not allowed in a spec")
        args = [_eval(a, table) for a in node.args]
        kwargs = {k.arg: _eval(k.value, table) for k in node.keywords}
        try:
            return table[node.func.id](*args, **kwargs)
        except TypeError as e:
            raise SpecError(f"{node.func.id}: {e}") from None
    raise SpecError(f"not allowed in a spec: {ast.unparse(node)!r}")


def parse_spec(spec: str) -> Schedule:
    """Build a schedule from JSON (``to_dict`` output) or a constructor expression.

    Raises ``ValueError`` (or ``TypeError``) with a one-line message for a bad spec.
    """
    text = spec.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"invalid JSON: {e}") from None
        return schedules.from_dict(data)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise SpecError(f"cannot parse {text!r}: {e.msg}") from None
    result = _eval(tree.body, _callables())
    if not isinstance(result, Schedule):
        raise SpecError(f"{text!r} is not a schedule")
    return result


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pylr", description="Closed-form learning-rate schedules and fused optimizers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plot", help="plot a schedule to an image file")
    p.add_argument(
        "spec", help="JSON from to_dict() or e.g. 'OneCycle(max_lr=0.1, total_steps=1000)'"
    )
    p.add_argument("--steps", type=_positive_int, required=True, help="plot steps 0..N-1")
    p.add_argument(
        "-o", "--output", default="schedule.png", help="image path (default %(default)s)"
    )
    v = sub.add_parser("values", help="print step,lr[,momentum] as CSV")
    v.add_argument("spec")
    v.add_argument("--steps", type=_positive_int, required=True, help="steps 0..N-1")
    b = sub.add_parser("bench", help="time pylr against torch in one run")
    b.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke tests)")
    d = sub.add_parser(
        "demo", help="lr_find + fit_one_cycle on scikit-learn's bundled digits, with plots"
    )
    d.add_argument("-o", "--out-dir", default=".", help="where the PNGs go (default: here)")
    d.add_argument("--epochs", type=_positive_int, default=10, help="default %(default)s")
    d.add_argument(
        "--num-iter", type=_positive_int, default=100, help="lr_find steps (default %(default)s)"
    )
    d.add_argument("--seed", type=int, default=0, help="default %(default)s")
    d.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    return parser


def _write_values(schedule: Schedule, steps: int) -> None:
    lrs = schedule.values(steps)
    out = sys.stdout
    if schedule.has_momentum:
        moms = schedule.momentum_values(steps)
        out.write("step,lr,momentum\n")
        out.writelines(
            f"{i},{lr!r},{m!r}\n"
            for i, (lr, m) in enumerate(zip(lrs.tolist(), moms.tolist(), strict=True))
        )
    else:
        out.write("step,lr\n")
        out.writelines(f"{i},{lr!r}\n" for i, lr in enumerate(lrs.tolist()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a bad spec or bad arguments)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "bench":
            from pylr.bench import run_bench

            run_bench(json_path=args.json, quick=args.quick)
            return 0
        if args.command == "demo":
            from pylr.demo import run

            run(
                args.out_dir,
                epochs=args.epochs,
                num_iter=args.num_iter,
                seed=args.seed,
                progress=not args.no_progress,
            )
            return 0
        schedule = parse_spec(args.spec)
        if args.command == "plot":
            from pylr.plot import plot_schedule

            plot_schedule(schedule, args.steps, path=args.output)
            print(f"wrote {args.output}")
        else:
            _write_values(schedule, args.steps)
    except (ValueError, TypeError) as e:
        print(f"pylr: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"pylr: error: {e}", file=sys.stderr)
        return 1
    return 0
