"""pylr's CUDA kernels, tested on the host (no GPU, no CUDA toolkit needed): the chunk planner
and launch metadata the launcher and the device share, the kernels' bodies run over every
(block, thread) by ``pylr._core``'s emulation and compared bit for bit with the CPU optimizer,
the Python CUDA path of ``pylr.optim`` driven through that emulation, and what a machine
without a usable GPU says.

Bitwise comparisons need the emulation and the CPU loops to agree on ``madd``: both use a fused
multiply-add where the CPU kernels are AVX2 / AVX-512 (or any aarch64 build), as the device
does. Where the CPU loops are the generic ones on x86 (no FMA; ``PYLR_KERNELS=generic`` or an
old CPU), those comparisons allow a few ulps instead, and say so.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import itertools
import math
import os
import pathlib
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pylr
import pylr.cuda
from pylr import _core, _plan
from pylr import functional as F
from pylr import optim as PO
from pylr import schedules as S
from pylr.functional import adam_group_row, sgd_group_row

PROOFS_ADAM = (_core.Proof.PARAM, _core.Proof.GRAD) + (_core.Proof.STATE,) * 4
PROOFS_SGD = (_core.Proof.PARAM, _core.Proof.GRAD, _core.Proof.STATE)
ISA = _core.kernel_isa()
# the CPU loops fuse madd where the emulation (and the device) do
BITWISE = _core._CUDA_EMULATION_FMA and (ISA != "generic" or os.uname().machine == "aarch64")
BITWISE_REASON = (
    f"CPU kernels '{ISA}' compute madd without FMA; the emulation (like the device) fuses it"
)
CHUNK = _core._CUDA_CHUNK_ELEMENTS


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern (NaNs compare equal to themselves)."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_same(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Bit for bit where the ISAs agree on FMA, else within a few ulps of the compute type."""
    if BITWISE:
        assert torch.equal(bits(ours), bits(ref)), f"{what}: not bitwise equal (CPU ISA {ISA})"
    else:
        # a few ulps of the compute type, at least one of a half-precision storage type; float32
        # beside bfloat16 state: an element whose update lands on the other side of a rounding
        # boundary rounds its state one bfloat16 ulp apart, and its param then moves by up to
        # lr * 2^-8 of a step (seen: 4.3e-5 at lr 1e-2, one element in 196,608)
        tols = {torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
        tol = tols.get(ref.dtype, 1e-4)
        torch.testing.assert_close(ours.double(), ref.double(), rtol=tol, atol=tol, msg=what)


# ---------------------------------------------------------------------------------------------
# The planner: which block of which launch handles which tensor and elements


def check_plan(numels, groups, *, max_slots, max_groups, max_blocks, chunk):
    """Every element of every tensor is visited by exactly one block, within the limits."""
    launches = _core._cuda_plan_chunks(
        numels,
        groups,
        max_slots=max_slots,
        max_groups=max_groups,
        max_blocks=max_blocks,
        chunk=chunk,
    )
    spans: dict[int, list[tuple[int, int]]] = {}
    last_row = -1
    for n_slots, n_groups, blocks in launches:
        assert 1 <= n_slots <= max_slots
        assert 1 <= n_groups <= max_groups
        assert 1 <= len(blocks) <= max_blocks
        rows = blocks[:, 0]
        # rows in order, each launch's groups are the groups of its rows
        assert (np.diff(rows) >= 0).all() and rows[0] >= last_row
        last_row = int(rows[-1])
        assert len(np.unique(rows)) <= n_slots
        if groups:
            assert len({groups[r] for r in rows}) == n_groups
        for row, begin, end in blocks.tolist():
            assert 0 <= begin < end <= numels[row], (row, begin, end)
            assert begin % chunk == 0 and end - begin <= chunk
            spans.setdefault(row, []).append((begin, end))
    for row, n in enumerate(numels):
        got = sorted(spans.get(row, []))
        if n == 0:
            assert got == [], f"tensor {row} has no elements but gets blocks"
            continue
        # sorted spans tile [0, n): each starts where the previous ended
        assert got[0][0] == 0 and got[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(got)), row
    return launches


@settings(max_examples=300, deadline=None)
@given(
    numels=st.lists(
        st.one_of(st.integers(0, 3), st.integers(0, 2000), st.sampled_from([0, 1, 63, 64, 65])),
        max_size=14,
    ),
    group_seed=st.integers(0, 5),
    max_slots=st.integers(1, 6),
    max_groups=st.integers(1, 4),
    max_blocks=st.integers(1, 40),
    chunk=st.integers(1, 130),
)
def test_cuda_planner_visits_every_element_exactly_once(
    numels, group_seed, max_slots, max_groups, max_blocks, chunk
):
    groups = [(i * group_seed) // 3 % 5 for i in range(len(numels))]
    check_plan(
        numels,
        groups,
        max_slots=max_slots,
        max_groups=max_groups,
        max_blocks=max_blocks,
        chunk=chunk,
    )


@pytest.mark.parametrize(
    ("numels", "limits", "expected_launches"),
    [
        ([], (4, 2, 100, 8), 0),
        ([0, 0, 0], (4, 2, 100, 8), 0),
        ([1], (4, 2, 100, 8), 1),
        ([7, 17, 4097, 1, 3], (4, 2, 10_000, 16), 2),  # five tensors, four slots
        ([1000], (4, 2, 3, 100), 4),  # one tensor over four launches (10 chunks, 3 a launch)
        ([5] * 9, (100, 100, 4, 8), 3),  # a block budget of 4
        ([CHUNK * 3 + 1, 0, CHUNK], (320, 32, 1 << 30, CHUNK), 1),  # production-like
    ],
    ids=["empty", "zero-size", "one", "more-tensors-than-slots", "spanning", "blocks", "large"],
)
def test_cuda_planner_edge_cases(numels, limits, expected_launches):
    max_slots, max_groups, max_blocks, chunk = limits
    launches = check_plan(
        numels, [], max_slots=max_slots, max_groups=max_groups, max_blocks=max_blocks, chunk=chunk
    )
    assert len(launches) == expected_launches


def test_cuda_planner_starts_a_launch_when_its_group_table_fills():
    launches = check_plan(
        [10] * 6, [0, 1, 2, 2, 3, 0], max_slots=100, max_groups=2, max_blocks=100, chunk=4
    )
    assert [n_groups for _, n_groups, _ in launches] == [2, 2, 1]


def test_cuda_planner_packs_the_benchmark_workloads_in_few_launches():
    """Production limits: 4000 x 4096 in ceil(4000 / slots) launches, a 256M-element tensor in
    one (the metadata is bounded by the slots, not by the blocks)."""
    slots = _core._CUDA_ADAM_SLOTS
    many = check_plan(
        [4096] * 4000, [], max_slots=slots, max_groups=32, max_blocks=1 << 30, chunk=CHUNK
    )
    assert len(many) == math.ceil(4000 / slots)
    big = _core._cuda_plan_chunks(
        [1 << 28], max_slots=slots, max_groups=32, max_blocks=1 << 30, chunk=CHUNK
    )
    assert len(big) == 1 and len(big[0][2]) == (1 << 28) // CHUNK


# ---------------------------------------------------------------------------------------------
# The kernels' bodies on the host against the CPU optimizer


SIZES = [0, 1, 7, 17, 4097, 3 * 1000 + 5]


def make_tensors(sizes, dtype, state_dtype, *, amsgrad=True, seed=0, offset=0):
    """Params, grads and Adam states (random, as after a few steps); offset > 0 makes every
    tensor a view starting `offset` elements into its storage (unaligned for vector loads)."""
    gen = torch.Generator().manual_seed(seed)

    def make(n, scale, dt, positive=False):
        base = torch.randn(n + offset, generator=gen, dtype=torch.float64) * scale
        base = base.abs() if positive else base
        return base.to(dt)[offset:]

    params = [make(n, 1.0, dtype) for n in sizes]
    grads = [make(n, 0.1, dtype) for n in sizes]
    exp_avgs = [make(n, 0.01, state_dtype) for n in sizes]
    exp_avg_sqs = [make(n, 1e-3, state_dtype, positive=True) for n in sizes]
    maxes = [make(n, 1e-3, state_dtype, positive=True) if amsgrad else None for n in sizes]
    steps = [torch.tensor(float(3 + i % 2)) for i in range(len(sizes))]
    return [params, grads, exp_avgs, exp_avg_sqs, maxes, steps]


def clone(columns):
    return [[None if t is None else t.clone() for t in col] for col in columns]


def table_of(columns, groups_of_rows, proofs):
    return _plan.PointerTable(columns, groups_of_rows, proofs)


def assert_columns_same(ours, ref, names):
    for name, a_col, b_col in zip(names, ours, ref, strict=True):
        for i, (a, b) in enumerate(zip(a_col, b_col, strict=True)):
            if a is not None:
                assert_same(a, b, f"{name}[{i}]")


ADAM_NAMES = ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")
STORAGE = [
    (torch.float32, torch.float32, False),
    (torch.float32, torch.bfloat16, False),
    (torch.float32, torch.bfloat16, True),
    (torch.float64, torch.float64, False),
    (torch.bfloat16, torch.bfloat16, False),
    (torch.bfloat16, torch.bfloat16, True),
    (torch.bfloat16, torch.float32, False),
    (torch.float16, torch.float16, False),
    (torch.float16, torch.float32, False),
    (torch.float16, torch.bfloat16, True),
]
STORAGE_IDS = [
    f"{str(p)[6:]}-{str(s)[6:]}{'-sr' if sr else ''}" for p, s, sr in STORAGE
]  # e.g. float32-bfloat16-sr


def run_adam_both(columns, group_rows, rows_group, emulate_kwargs=(), cpu_kwargs=()):
    """One Adam step of the CPU driver and of the emulated CUDA kernels on copies of columns."""
    ref, ours = clone(columns), clone(columns)
    groups_ref = np.array(group_rows, dtype=np.float64)
    groups_ours = groups_ref.copy()
    ref_table = table_of(ref, rows_group, PROOFS_ADAM)
    ours_table = table_of(ours, rows_group, PROOFS_ADAM)
    status = _core.adam_step(ref_table.table, groups_ref, **dict(cpu_kwargs))
    assert status == _core.STEP_TAKEN
    _core._cuda_emulate_adam(ours_table.table, groups_ours, **dict(emulate_kwargs))
    return ours, ref


@pytest.mark.parametrize(("dtype", "state_dtype", "stochastic"), STORAGE, ids=STORAGE_IDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_cuda_emulated_adam_is_bitwise_the_cpu_step(
    dtype, state_dtype, stochastic, amsgrad, decoupled
):
    """Two groups (maximize and weight decay differ), tensors of every tail size and several
    chunks, small launches (several per step) and blocks of 64 threads."""
    columns = make_tensors(SIZES, dtype, state_dtype, amsgrad=amsgrad)
    rows_group = [i % 2 for i in range(len(SIZES))]
    group_rows = [
        adam_group_row(1e-2, (0.9, 0.999), 1e-8, 0.1, amsgrad, False, decoupled, stochastic, 5),
        adam_group_row(3e-3, (0.8, 0.99), 1e-6, 0.0, amsgrad, True, decoupled, stochastic, 9),
    ]
    ours, ref = run_adam_both(
        columns,
        group_rows,
        rows_group,
        {"block_size": 64, "chunk": 1000, "max_slots": 3, "max_groups": 1},
    )
    assert_columns_same(ours, ref, ADAM_NAMES)
    # the step did something: params moved (all but the smallest, whose updates may be below
    # half precision's resolution), step counters counted
    moved = [
        not torch.equal(a, b) for a, b in zip(ours[0], columns[0], strict=True) if a.numel() > 7
    ]
    assert all(moved)
    assert [float(s) for s in ours[5]] == [float(s) + 1 for s in columns[5]]


@pytest.mark.parametrize("block_size", [1, 32, 512])
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
def test_cuda_emulated_adam_any_block_size_and_alignment(block_size, offset):
    """Vector loads (aligned views) and element loads (views one element in) alike; chunks of
    odd length start groups of kILP elements off their alignment too."""
    sizes = [5, 4099, 70_001]
    columns = make_tensors(sizes, torch.float32, torch.float32, offset=offset)
    row = adam_group_row(1e-3, (0.9, 0.999), 1e-8, 0.01, True, False, True)
    for chunk in (0, 1001):
        ours, ref = run_adam_both(
            columns, [row], [0] * len(sizes), {"block_size": block_size, "chunk": chunk}
        )
        assert_columns_same(ours, ref, ADAM_NAMES)


def scalar(value, dtype=torch.float32):
    return torch.tensor(value, dtype=dtype)


@pytest.mark.parametrize("found", [0.0, 1.0], ids=["finite", "found_inf"])
def test_cuda_emulated_amp_reads_grad_scale_and_found_inf(found):
    """grad_scale divides the grads in the step; found_inf set changes nothing, step counters
    included — read by the kernels, as the device reads them."""
    columns = make_tensors(SIZES, torch.float16, torch.float32)
    grad_scale, found_inf = scalar(1024.0), scalar(found)
    row = adam_group_row(1e-3, (0.9, 0.999), 1e-8, 0.0, True, False, False)
    before = clone(columns)
    ours = clone(columns)
    table = table_of(ours, [0] * len(SIZES), PROOFS_ADAM)
    _core._cuda_emulate_adam(
        table.table,
        np.array([row]),
        grad_scale=grad_scale.data_ptr(),
        found_inf=found_inf.data_ptr(),
    )
    if found:
        assert_columns_same(ours, before, ADAM_NAMES)
        return
    ref = clone(columns)
    ref_table = table_of(ref, [0] * len(SIZES), PROOFS_ADAM)
    status = _core.adam_step(
        ref_table.table, np.array([row]), grad_scale.data_ptr(), found_inf.data_ptr()
    )
    assert status == _core.STEP_TAKEN
    assert_columns_same(ours, ref, ADAM_NAMES)
    assert not torch.equal(ours[0][-1], before[0][-1])


def test_cuda_emulated_clip_coefficient_and_device_lr():
    """clip_grad_norm_'s coefficient (a device double) scales every grad as the CPU's
    grad_coef; a capturable lr (a float32 on the device) is read as the group's lr."""
    columns = make_tensors(SIZES, torch.float32, torch.float32)
    coef = scalar(0.37, torch.float64)
    lr = scalar(2.5e-3)
    rows = [adam_group_row(0.0, (0.9, 0.999), 1e-8, 0.1, False, False, True)]
    ref_rows = [adam_group_row(float(lr), (0.9, 0.999), 1e-8, 0.1, False, False, True)]
    ref, ours = clone(columns), clone(columns)
    ref_table = table_of(ref, [0] * len(SIZES), PROOFS_ADAM)
    ours_table = table_of(ours, [0] * len(SIZES), PROOFS_ADAM)
    _core.adam_step(ref_table.table, np.array(ref_rows), 0, 0, float(coef))
    _core._cuda_emulate_adam(
        ours_table.table,
        np.array(rows),
        lr_on_device=np.array([lr.data_ptr()], dtype=np.int64),
        grad_coef=coef.data_ptr(),
    )
    assert_columns_same(ours, ref, ADAM_NAMES)


SGD_CASES = [
    # momentum, dampening, nesterov, weight_decay, maximize
    (0.0, 0.0, False, 0.0, False),
    (0.0, 0.0, False, 0.1, True),
    (0.9, 0.0, False, 0.0, False),
    (0.9, 0.3, False, 0.01, True),
    (0.9, 0.0, True, 0.01, False),
    (0.5, 0.0, True, 0.0, True),
]


@pytest.mark.parametrize(("dtype", "state_dtype", "stochastic"), STORAGE, ids=STORAGE_IDS)
@pytest.mark.parametrize(
    ("momentum", "dampening", "nesterov", "weight_decay", "maximize"),
    SGD_CASES,
    ids=["plain", "wd-max", "mom", "damp-wd-max", "nesterov-wd", "nesterov-max"],
)
def test_cuda_emulated_sgd_is_bitwise_the_cpu_step(
    dtype, state_dtype, stochastic, momentum, dampening, nesterov, weight_decay, maximize
):
    """Two steps: the first takes the grad into new buffers (some rows), the second updates
    them; AMP's grad_scale and a clip coefficient on the second."""
    sizes = SIZES
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n in sizes]
    grads = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n in sizes]
    has_buffers = momentum != 0
    buffers = [
        (
            torch.randn(n, generator=gen).to(state_dtype)
            if i % 2
            else torch.empty(n, dtype=state_dtype)
        )
        if has_buffers
        else None
        for i, n in enumerate(sizes)
    ]
    first = [has_buffers and i % 2 == 0 for i in range(len(sizes))]
    row = sgd_group_row(
        0.05, momentum, dampening, weight_decay, nesterov, maximize, stochastic, 3, 11
    )
    columns = [params, grads, buffers]
    ref, ours = clone(columns), clone(columns)
    ref_t = _plan.PointerTable(ref, [0] * len(sizes), PROOFS_SGD, first_step=first)
    ours_t = _plan.PointerTable(ours, [0] * len(sizes), PROOFS_SGD, first_step=first)
    scale, coef = scalar(64.0), scalar(0.5, torch.float64)
    for step in range(2):
        kwargs = {"grad_scale": scale.data_ptr(), "grad_coef": coef.data_ptr()} if step else {}
        status = _core.sgd_step(
            ref_t.table,
            np.array([row]),
            kwargs.get("grad_scale", 0),
            0,
            float(coef) if step else 1.0,
        )
        assert status == _core.STEP_TAKEN
        _core._cuda_emulate_sgd(ours_t.table, np.array([row]), block_size=128, chunk=999, **kwargs)
        assert_columns_same(ours, ref, ("param", "grad", "momentum_buffer"))
    assert (ours_t.table[:, _plan.COL_FIRST] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("kind", "p"),
    [
        (_core.NORM_TWO, 2.0),
        (_core.NORM_ONE, 1.0),
        (_core.NORM_INF, math.inf),
        (_core.NORM_NEG_INF, -math.inf),
        (_core.NORM_P, 3.0),
        (_core.NORM_P, 0.5),
    ],
    ids=["2", "1", "inf", "-inf", "3", "0.5"],
)
def test_cuda_emulated_grad_norm_matches_the_cpu_norm(dtype, kind, p):
    """The device's norm (block partials in double, fixed-order trees) against the CPU's (other
    chunks, other order: equal to double rounding; max / min exactly) and torch's."""
    gen = torch.Generator().manual_seed(2)
    sizes = [1, 7, 4097, 3 * 1000 + 5, 70_001]
    grads = [torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) for n in sizes]
    params = [torch.empty_like(g) for g in grads]
    table = _plan.PointerTable([params, grads], [0] * len(sizes), PROOFS_SGD[:2])
    cpu = _core.grad_norm(table.table, kind, p, np.empty(max(1, _core.norm_chunks(table.table))))
    ours = _core._cuda_emulate_grad_norm(table.table, kind, p, block_size=64, chunk=1000)
    exact = torch.linalg.vector_norm(torch.cat([g.double() for g in grads]), p).item()
    if kind in (_core.NORM_INF, _core.NORM_NEG_INF):
        assert ours == cpu == exact
    else:
        assert math.isclose(ours, cpu, rel_tol=1e-13)
        assert math.isclose(ours, exact, rel_tol=1e-12)


def test_cuda_emulated_grad_norm_propagates_nan_and_empty_is_zero():
    g = torch.ones(5000)
    g[4321] = math.nan
    table = _plan.PointerTable([[torch.empty(5000)], [g]], [0], PROOFS_SGD[:2])
    for kind, p in ((_core.NORM_TWO, 2.0), (_core.NORM_INF, math.inf)):
        assert math.isnan(_core._cuda_emulate_grad_norm(table.table, kind, p, chunk=700))
    empty = _plan.PointerTable([[torch.empty(0)], [torch.empty(0)]], [0], PROOFS_SGD[:2])
    assert _core._cuda_emulate_grad_norm(empty.table, _core.NORM_TWO, 2.0) == 0.0


# ---------------------------------------------------------------------------------------------
# pylr.optim's CUDA path, driven through the emulation: CPU tensors stepped by the Python code
# that steps CUDA ones (state on the params' device, group rows, lr tensors read by the
# kernels, host-evaluated schedules, the clip on the device, AMP without waiting), compared
# with pylr's CPU path


class EmulatedBackend:
    """pylr.cuda's backend with the kernels run on the host (CPU tensors' addresses)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @staticmethod
    def stream(device):
        return 0

    @staticmethod
    def capturing(device):
        return False

    def adam_step(self, table, groups, lr_on_device, gs, fi, coef, stream, device):
        self.calls.append("adam")
        _core._cuda_emulate_adam(
            table, groups, lr_on_device=lr_on_device, grad_scale=gs, found_inf=fi, grad_coef=coef
        )

    def sgd_step(self, table, groups, lr_on_device, gs, fi, coef, stream, device):
        self.calls.append("sgd")
        _core._cuda_emulate_sgd(
            table, groups, lr_on_device=lr_on_device, grad_scale=gs, found_inf=fi, grad_coef=coef
        )

    @staticmethod
    def norm_partials(table):
        return 1

    def grad_norm(self, table, kind, p, partials, n_partials, out, stream, device):
        self.calls.append("norm")
        ctypes.c_double.from_address(out).value = _core._cuda_emulate_grad_norm(table, kind, p)


@pytest.fixture
def emulated(monkeypatch):
    """CPU tensors go through pylr's CUDA code path, with the emulated kernels."""
    backend = EmulatedBackend()
    monkeypatch.setattr(_plan, "backend_for", lambda device, label="": backend)
    return backend


def model_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(33, 65), (65,), (7,), (4097,), (3, 1 << 16)]
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


def grads_for(params, step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in params]


def train(
    make_opt,
    dtype,
    steps,
    monkeypatch=None,
    backend=None,
    clip=None,
    lr_tensor=False,
    amp_inf_at=None,
):
    init = model_params(dtype)
    params = [torch.nn.Parameter(t.clone()) for t in init]
    groups = [
        {"params": params[:2]},
        {"params": params[2:], "weight_decay": 0.0},
    ]
    opt = make_opt(groups)
    if lr_tensor:
        for g in opt.param_groups:
            g["lr"] = torch.tensor(float(g["lr"]))
    scale, found = torch.tensor(256.0), torch.tensor(0.0)
    norms = []
    for k in range(steps):
        for p, g in zip(params, grads_for(params, k, dtype), strict=True):
            p.grad = g * 256.0 if amp_inf_at is not None else g
        if clip is not None:
            # twice: the second clips the grads the first left pending (torch's repeated clip)
            norms.append(opt.clip_grad_norm_(clip))
            norms.append(opt.clip_grad_norm_(clip * 0.5, norm_type=1.0 if k % 2 else math.inf))
        if amp_inf_at is not None:
            found.fill_(1.0 if k == amp_inf_at else 0.0)
            opt.grad_scale, opt.found_inf = scale, found
        opt.step()
        if lr_tensor:
            for g in opt.param_groups:
                g["lr"].mul_(0.9)  # a scheduler's fill_, seen by the kernels
    opt.norms = norms
    return params, opt


OPTIMIZERS = {
    "AdamW-amsgrad": lambda g: PO.AdamW(g, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "Adam-maximize": lambda g: PO.Adam(g, lr=1e-2, weight_decay=0.01, maximize=True),
    "AdamW-bf16-state": lambda g: PO.AdamW(g, lr=1e-2, state_dtype=torch.bfloat16, rounding_seed=3),
    "SGD-nesterov": lambda g: PO.SGD(g, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "SGD-dampening": lambda g: PO.SGD(g, lr=0.05, momentum=0.9, dampening=0.2),
    "SGD-bf16-state": lambda g: PO.SGD(g, lr=0.05, momentum=0.9, state_dtype=torch.bfloat16),
    "AdamW-onecycle": lambda g: PO.AdamW(
        g, lr=1e-2, schedule=S.OneCycle(max_lr=1.0, total_steps=10)
    ),
}


# (a fused schedule sets the lr itself: no lr tensor beside it)
PATH_CASES = [
    (name, variant)
    for name in OPTIMIZERS
    for variant in ("plain", "clip", "lr-tensor", "amp")
    if not (variant == "lr-tensor" and "onecycle" in name)
]


@pytest.mark.parametrize(("name", "variant"), PATH_CASES)
def test_cuda_optimizer_path_through_the_emulation_equals_the_cpu_path(name, variant, monkeypatch):
    """Four steps of pylr.optim on its CUDA code path (emulated kernels) and on its CPU path:
    the same params and state, bit for bit; the CUDA path launched the kernels (with AMP, a
    found_inf step skipped)."""
    dtype = torch.float16 if variant == "amp" else torch.float32
    kwargs = {
        "clip": 0.5 if variant == "clip" else None,
        "lr_tensor": variant == "lr-tensor",
        "amp_inf_at": 1 if variant == "amp" else None,
    }
    make = OPTIMIZERS[name]
    ref_params, ref_opt = train(make, dtype, 4, **kwargs)
    backend = EmulatedBackend()
    monkeypatch.setattr(_plan, "backend_for", lambda device, label="": backend)
    params, opt = train(make, dtype, 4, **kwargs)
    monkeypatch.undo()
    assert {"adam", "sgd"} & set(backend.calls)
    if variant == "clip":
        assert "norm" in backend.calls
    for i, (a, b) in enumerate(zip(params, ref_params, strict=True)):
        assert_same(a.detach(), b.detach(), f"param {i}")
        for key, value in ref_opt.state[b].items():
            assert_same(opt.state[a][key], value, f"param {i} state {key}")
    for ours_norm, ref_norm in zip(opt.norms, ref_opt.norms, strict=True):
        assert ours_norm.dtype == ref_norm.dtype
        assert math.isclose(float(ours_norm), float(ref_norm), rel_tol=1e-6), "clip's norm"
    for g, ref_g in zip(opt.param_groups, ref_opt.param_groups, strict=True):
        assert g["schedule_step"] == ref_g["schedule_step"]
        assert scalar_of(g["lr"]) == scalar_of(ref_g["lr"])


def scalar_of(v):
    return float(v) if isinstance(v, torch.Tensor) else v


def test_cuda_functional_path_through_the_emulation_equals_the_cpu_path(emulated):
    def run(use_emulation):
        params = model_params()
        grads = grads_for(params, 0, torch.float32)
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        steps = [torch.tensor(0.0) for _ in params]
        bufs = [None] * len(params)
        for _ in range(3):
            assert F.adamw_(params, grads, m, v, None, steps, lr=1e-2, weight_decay=0.1)
            assert F.sgd_(params, grads, bufs, lr=1e-2, momentum=0.9, nesterov=True)
        return params + m + v + bufs + steps

    ours = run(True)
    assert emulated.calls.count("adam") == emulated.calls.count("sgd") == 3
    emulated.calls.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_plan, "backend_for", lambda device, label="": None)
        ref = run(False)
    assert not emulated.calls
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert_same(a, b, f"tensor {i}")


def test_cuda_sgd_first_step_skipped_by_found_inf_creates_no_buffer(emulated):
    """On a device the kernels skip a found_inf step without the host waiting — except a step
    that would create momentum buffers: it reads found_inf, and a skipped one creates none (the
    next step is the first)."""
    p = torch.nn.Parameter(torch.ones(10))
    opt = PO.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.full((10,), 2.0)
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    opt.step()
    assert "momentum_buffer" not in opt.state[p] and not emulated.calls
    assert torch.equal(p.detach(), torch.ones(10))
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.full((10,), 2.0))
    assert emulated.calls == ["sgd"]


# ---------------------------------------------------------------------------------------------
# What a machine without a usable GPU says


def test_cuda_module_reports_unavailable_without_a_gpu():
    has_module = importlib.util.find_spec("pylr._cuda") is not None
    assert pylr.cuda.built() is has_module
    if os.environ.get("PYLR_EXPECT_CUDA_BUILD") == "1":
        assert pylr.cuda.built(), "CI builds pylr._cuda (nvcc is installed): it is missing"
    if not torch.cuda.is_available():
        assert pylr.cuda.is_available() is False
        assert pylr.cuda.device_count() == 0
        assert "pylr._cuda" in pylr.cuda.unavailable_reason()
    if has_module:
        from pylr import _cuda

        count, why = _cuda.device_count()
        assert count == pylr.cuda.device_count()
        assert (why is None) == (count > 0)


def fatbin_entries(path: pathlib.Path) -> list[tuple[str, int]]:
    """(kind, sm) of every entry of the ELF's .nv_fatbin section: ('elf', 80) is SASS for
    sm_80, ('ptx', 90) PTX for compute_90."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF"
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]

    def name(entry):
        start = names_at + entry[0]
        return data[start : data.index(b"\0", start)].decode()

    fat = next(s for s in sections if name(s) == ".nv_fatbin")
    off, end = fat[4], fat[4] + fat[5]
    entries = []
    while off < end:
        magic, _, header, size = struct.unpack_from("<IHHQ", data, off)
        if magic != 0xBA55ED50:  # padding between the per-file fatbinaries
            off += 8
            continue
        e, stop = off + header, off + header + size
        while e < stop:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, e)
            arch = struct.unpack_from("<I", data, e + 28)[0]
            entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            e += entry_header + payload
        off = stop
    return entries


@pytest.mark.skipif(not pylr.cuda.built(), reason="this build has no pylr._cuda")
@pytest.mark.skipif(os.uname().sysname != "Linux", reason="reads the Linux ELF")
def test_cuda_module_carries_sm80_to_sm90_code_and_compute90_ptx():
    from pylr import _cuda

    entries = fatbin_entries(pathlib.Path(_cuda.__file__))
    assert {a for k, a in entries if k == "elf"} == {80, 86, 89, 90}
    assert {a for k, a in entries if k == "ptx"} == {90}
    # every kernel file carries all of them
    assert len(entries) % 5 == 0 and len(entries) >= 15


@functools.cache
def _fake_cuda_param():
    """A parameter and grad that say they are on cuda:0 (torch's FakeTensorMode makes them
    without a GPU): the device rules run on them as on real CUDA tensors, and run first."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        p = torch.nn.Parameter(torch.ones(8, device="cuda"))
        p.grad = torch.ones(8, device="cuda")
    return p


@pytest.fixture
def without_cuda_module(monkeypatch):
    """pylr as built without pylr._cuda (its cached answers dropped before and after)."""
    caches = (pylr.cuda._device_count, pylr.cuda._backend)
    for fn in caches:
        fn.cache_clear()
    monkeypatch.setattr(pylr.cuda, "_module", lambda: None)
    yield
    monkeypatch.undo()
    for fn in caches:
        fn.cache_clear()


@pytest.mark.parametrize("build", ["built-no-device", "not-built"])
@pytest.mark.parametrize("api", ["AdamW", "SGD", "functional"])
def test_cuda_params_without_usable_kernels_raise_a_clear_error(build, api, request):
    """CUDA params where pylr cannot step them: a RuntimeError naming the param, the reason, and
    what to do — before anything changes."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if build == "not-built":
        request.getfixturevalue("without_cuda_module")
        assert not pylr.cuda.built()
        want = r"no CUDA extension.*PYLR_CUDA=ON.*torch\.optim"
    else:
        if not pylr.cuda.built():
            pytest.skip("this build has no pylr._cuda")
        want = r"no usable CUDA device.*nvidia-smi.*torch\.optim"
    p = _fake_cuda_param()
    if api == "functional":
        with pytest.raises(RuntimeError, match=r"params\[0\] is on cuda:0.*" + want):
            F.sgd_([p], [p.grad], [None], lr=0.1)
        return
    opt = getattr(PO, api)([p], lr=0.1)
    with pytest.raises(RuntimeError, match=r"\['params'\]\[0\] is on cuda:0.*" + want):
        opt.step()
    assert len(opt.state) == 0 and opt._plan is None


def test_cuda_mixed_devices_raise_a_value_error_naming_the_tensors():
    cpu = torch.nn.Parameter(torch.ones(8))
    cpu.grad = torch.ones(8)
    opt = PO.AdamW([cpu, _fake_cuda_param()], lr=0.1)
    with pytest.raises(
        ValueError, match=r"\['params'\]\[1\] is on cuda:0 but .*\['params'\]\[0\] on cpu"
    ):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(cpu.detach(), torch.ones(8))
    # a grad on another device than its param (the functional API takes any lists)
    with pytest.raises(
        ValueError, match=r"params\[0\]: grads is on cuda:0 but its parameter on cpu"
    ):
        F.adam_(
            [cpu],
            [_fake_cuda_param().grad],
            [torch.zeros(8)],
            [torch.zeros(8)],
            None,
            [torch.tensor(0.0)],
        )
    assert torch.equal(cpu.detach(), torch.ones(8))
    # AMP's scalars must be where the step reads them
    with pytest.raises(
        ValueError, match=r"found_inf is on meta, but the step's tensors are on cpu"
    ):
        F.sgd_([cpu], [cpu.grad], [None], lr=0.1, found_inf=torch.zeros((), device="meta"))


@pytest.mark.skipif(not pylr.cuda.built(), reason="this build has no pylr._cuda")
@pytest.mark.skipif(os.uname().sysname != "Linux", reason="ldd is Linux's")
def test_cuda_module_links_no_torch_and_the_cuda_runtime_statically():
    import subprocess

    from pylr import _cuda

    out = subprocess.run(["ldd", _cuda.__file__], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert not [n for n in names if "torch" in n or "c10" in n or "cudart" in n], names


def test_cuda_bench_without_a_gpu_exits_2_with_one_line(monkeypatch, capsys):
    """`pylr bench --device cuda` where pylr cannot use a GPU: one line on stderr, exit 2,
    nothing timed (the reason reported as pylr.cuda words it)."""
    from pylr import cli

    monkeypatch.setattr(pylr.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pylr.cuda, "unavailable_reason", lambda: "no device in this test")
    assert cli.main(["bench", "--device", "cuda", "--quick"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "pylr: error: pylr bench --device cuda needs a CUDA GPU: no device in this test\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the bench runs")
def test_cuda_bench_command_on_this_machine_exits_2(tmp_path):
    """The installed command, from outside the checkout, on a machine without a GPU."""
    import subprocess
    import sys

    script = "import sys; from pylr.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-c", script, "bench", "--device", "cuda", "--json", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pylr: error: pylr bench --device cuda needs")
    assert pylr.cuda.unavailable_reason() in lines[0]
    assert not (tmp_path / "o").exists()


def test_cuda_path_plan_keeps_no_grad_alive_and_proves_each_step(emulated):
    """The plan contract on the CUDA code path: no strong reference to a grad between steps; a
    new grad tensor is taken over after the proof, a replaced state tensor rebuilds the plan,
    and each step points the kernels at the tensors of that step."""
    import gc
    import weakref

    params = [torch.nn.Parameter(torch.ones(17)), torch.nn.Parameter(torch.ones(4097))]
    ref_params = [torch.nn.Parameter(torch.ones(17)), torch.nn.Parameter(torch.ones(4097))]
    opt = PO.AdamW(params, lr=0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_plan, "backend_for", lambda device, label="": None)
        ref = PO.AdamW(ref_params, lr=0.1)
    for k in range(3):
        for p, q in zip(params, ref_params, strict=True):
            p.grad = torch.full_like(p, float(k + 1))  # a new grad tensor each step
            q.grad = torch.full_like(q, float(k + 1))
        dead = weakref.ref(params[0].grad)
        opt.step()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_plan, "backend_for", lambda device, label="": None)
            ref.step()
        params[0].grad = None
        gc.collect()
        assert dead() is None, "the plan kept a grad alive"
        params[0].grad = torch.full_like(params[0], float(k + 1))
    plan = opt._plan
    opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].clone()
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt._plan is not plan, "a replaced state tensor must rebuild the table"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_plan, "backend_for", lambda device, label="": None)
        ref.state[ref_params[1]]["exp_avg"] = ref.state[ref_params[1]]["exp_avg"].clone()
        for q in ref_params:
            q.grad = torch.ones_like(q)
        ref.step()
    assert emulated.calls.count("adam") == 4
    for p, q in zip(params, ref_params, strict=True):
        assert_same(p.detach(), q.detach(), "param")
        assert_same(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"], "exp_avg")
