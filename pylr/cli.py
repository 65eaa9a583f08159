"""The ``pylr`` command (also ``python -m pylr``).

    pylr plot SPEC --steps N -o out.png     plot a schedule (lr, and momentum where defined)
    pylr values SPEC --steps N              print step,lr[,momentum] as CSV
    pylr bench [--json PATH] [--quick]      time schedules and schedulers against torch

SPEC is the JSON of ``Schedule.to_dict()`` or an expression such as
``OneCycle(max_lr=0.1, total_steps=1000)`` or ``warmup(Cosine(T_max=900), steps=100)``,
parsed with ``ast`` and never evaluated: only schedule constructors, the combinators
``sequence``, ``chain`` and ``warmup``, literals, lists and ``*`` are accepted. ``--steps`` is
at most 10,000,000 (:data:`MAX_STEPS`).

Every error — a bad spec or argument, a file that cannot be written — is one line on stderr,
``pylr: error: ...``, and exit status 2 (1 where matplotlib is missing). Output cut short by a
closed pipe (``pylr values ... | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pylr import schedules
from pylr.schedules import Schedule

__all__ = ["MAX_STEPS", "main", "parse_spec"]

MAX_STEPS = 10_000_000
"""The most steps ``plot`` and ``values`` take (80 MB of values; a CSV of some 300 MB)."""

# The deepest expression a spec may be, in syntax-tree levels: room for a schedule of MAX_DEPTH
# levels written with '*' or calls, and shallow enough that evaluating it (one frame per level)
# stays far from Python's recursion limit.
_MAX_SPEC_NESTING = 2 * schedules.MAX_DEPTH + 16

_COMBINATORS = {
    "sequence": schedules.sequence,
    "chain": schedules.chain,
    "warmup": schedules.warmup,
}


class SpecError(ValueError):
    """A schedule spec that cannot be parsed or built."""


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _callables() -> dict[str, Any]:
    names = {n: getattr(schedules, n) for n in schedules.__all__}
    return {
        n: f
        for n, f in names.items()
        if isinstance(f, type) and issubclass(f, Schedule) and f is not Schedule
    } | _COMBINATORS


def _nesting(tree: ast.AST, limit: int) -> int:
    """How many levels deep ``tree`` goes (walked with a list, not recursion), counting no
    further than ``limit + 1``."""
    deepest = 0
    stack = [(tree, 1)]
    while stack and deepest <= limit:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Evaluator:
    """Builds the value of a parsed spec, allowing only literals, lists, signs, ``*`` and calls
    of the names in ``table``. One Python frame per level of the tree (loops, not
    comprehensions); ``parse_spec`` has bounded the depth."""

    def __init__(self, text: str, table: dict[str, Any]) -> None:
        self.text = text
        self.table = table

    def source(self, node: ast.AST) -> str:
        """The spec's text of ``node`` (no recursion, unlike ast.unparse), for a message."""
        return _shown(ast.get_source_segment(self.text, node) or type(node).__name__)

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.Constant) and node.value is None:
            return None
        if isinstance(node, (ast.List, ast.Tuple)):
            items = []
            for e in node.elts:
                items.append(self.eval(e))
            return items
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.eval(node.operand)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise SpecError("a sign may only stand before a number")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = self.eval(node.left), self.eval(node.right)
            if not (isinstance(left, Schedule) or isinstance(right, Schedule)):
                raise SpecError("'*' needs a schedule on at least one side")
            return left * right
        if isinstance(node, ast.Call):
            return self.call(node)
        raise SpecError(f"not allowed in a spec: {self.source(node)}")

    def call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in self.table:
            name = node.func.id if isinstance(node.func, ast.Name) else self.source(node.func)
            raise SpecError(f"unknown schedule {name!r}; expected one of {sorted(self.table)}")
        if any(k.arg is None for k in node.keywords):
            raise SpecError("'**' is not allowed in a spec")
        args = []
        for a in node.args:
            args.append(self.eval(a))
        kwargs = {}
        for k in node.keywords:
            kwargs[k.arg] = self.eval(k.value)
        try:
            return self.table[node.func.id](*args, **kwargs)
        except TypeError as e:
            raise SpecError(f"{node.func.id}: {e}") from None


def parse_spec(spec: str) -> Schedule:
    """Build a schedule from JSON (``to_dict`` output) or a constructor expression.

    Raises ``ValueError`` (or ``TypeError``) with a one-line message for a bad spec.
    """
    text = spec.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except RecursionError:
            raise SpecError(
                f"the JSON nests too deeply (a schedule nests at most {schedules.MAX_DEPTH} levels)"
            ) from None
        except ValueError as e:  # JSONDecodeError, or an integer of too many digits
            raise SpecError(f"invalid JSON: {e}") from None
        return schedules.from_dict(data)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise SpecError(f"cannot parse {_shown(text)}: {e.msg}") from None
    except (RecursionError, MemoryError):  # the parser's own limits on nesting
        raise SpecError(f"cannot parse {_shown(text)}: it nests too deeply") from None
    except ValueError as e:  # an integer literal of too many digits
        raise SpecError(f"cannot parse {_shown(text)}: {e}") from None
    if _nesting(tree.body, _MAX_SPEC_NESTING) > _MAX_SPEC_NESTING:
        raise SpecError(
            f"{_shown(text)} nests more than {_MAX_SPEC_NESTING} levels deep (a schedule nests "
            f"at most {schedules.MAX_DEPTH} levels)"
        )
    result = _Evaluator(text, _callables()).eval(tree.body)
    if not isinstance(result, Schedule):
        raise SpecError(f"{_shown(text)} is not a schedule")
    return result


def _integer(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:  # not an integer, or one of too many digits
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, sys.maxsize, "a positive integer")


def _steps(text: str) -> int:
    return _integer(text, 1, MAX_STEPS, f"a number of steps from 1 to {MAX_STEPS:,}")


def _seed(text: str) -> int:
    return _integer(text, -(2**63), 2**64 - 1, "an integer seed in [-2**63, 2**64 - 1]")


class _UsageError(Exception):
    """An argparse error, for ``main`` to print on one line."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


_SPEC_HELP = (
    "the schedule: an expression such as 'OneCycle(max_lr=0.1, total_steps=1000)' or "
    "'warmup(Cosine(T_max=900, base_lr=0.1), steps=100)' (schedule classes of pylr.schedules, "
    "sequence, chain, warmup, numbers, lists and *; parsed, never evaluated), or the JSON of "
    "Schedule.to_dict()"
)


class _Parser(argparse.ArgumentParser):
    """argparse, except that an error reaches ``main`` (one line, exit 2) instead of printing the
    usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, self.prog)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pylr", description="Closed-form learning-rate schedules and fused optimizers."
    )
    from pylr import __version__

    parser.add_argument("--version", action="version", version=f"pylr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plot", help="plot a schedule to an image file")
    p.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    p.add_argument(
        "--steps",
        type=_steps,
        required=True,
        metavar="N",
        help=f"plot steps 0..N-1 (N at most {MAX_STEPS:,})",
    )
    p.add_argument(
        "-o", "--output", default="schedule.png", help="image path (default %(default)s)"
    )
    v = sub.add_parser("values", help="print step,lr[,momentum] as CSV")
    v.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    v.add_argument(
        "--steps",
        type=_steps,
        required=True,
        metavar="N",
        help=f"steps 0..N-1 (N at most {MAX_STEPS:,})",
    )
    b = sub.add_parser("bench", help="time pylr against torch in one run")
    b.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke tests)")
    b.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: pylr's CUDA step against torch's fused and foreach (needs a GPU)",
    )
    d = sub.add_parser(
        "demo", help="lr_find + fit_one_cycle on scikit-learn's bundled digits, with plots"
    )
    d.add_argument("-o", "--out-dir", default=".", help="where the PNGs go (default: here)")
    d.add_argument("--epochs", type=_positive_int, default=10, help="default %(default)s")
    d.add_argument(
        "--num-iter", type=_positive_int, default=100, help="lr_find steps (default %(default)s)"
    )
    d.add_argument("--seed", type=_seed, default=0, help="default %(default)s")
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


def _error(message: str, status: int = 2) -> int:
    """Print ``pylr: error: message`` as one line on stderr; return the exit status."""
    print(f"pylr: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _os_error(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"cannot write {e.filename!s}: {e.strerror}"
    return str(e) or type(e).__name__


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so that the exit's flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code: 0, 2 for a bad spec, bad arguments or a file
    that cannot be written (one line on stderr), 1 without matplotlib."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        hint = f" (see '{e.prog} --help')" if e.prog else ""
        return _error(f"{e}{hint}")
    try:
        if args.command == "bench" and args.device == "cuda":
            from pylr.bench_cuda import CudaBenchUnavailable, run_cuda_bench

            try:
                run_cuda_bench(json_path=args.json, quick=args.quick)
            except CudaBenchUnavailable as e:
                return _error(str(e))
            return 0
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
        return _error(str(e))
    except RecursionError:  # a backstop: parse_spec bounds the nesting it walks
        return _error("the spec nests too deeply")
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except OSError as e:
        return _error(_os_error(e))
    except ImportError as e:
        return _error(str(e), status=1)
    return 0
