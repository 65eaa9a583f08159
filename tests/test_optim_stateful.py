"""pylr.optim and torch.optim (foreach=False) driven side by side through random sequences of
what users do between steps — new and accumulated grads, zero_grad both ways, ``.data`` swaps of
grads, params and state, state replaced / popped / deleted / cleared, params truncated in place,
groups added, state dicts loaded, float and tensor lrs filled in place, hyperparameter changes —
compared after every step: equal params and state, or both raise (and then pylr changed nothing).

PYLR_STATEFUL_EXAMPLES sets the number of examples (default 500); with CI set the run is
derandomized so that it is reproducible.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from pylr import optim as PO

SHAPES = [(3,), (4, 5), (1,), (17,), (0,), (2, 3, 4), (33,)]
ALGOS = ["Adam", "AdamW", "SGD"]
TOL = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-10, 1e-12)}


def _random(shape, seed, dtype, positive=False):
    gen = torch.Generator().manual_seed(seed)
    t = (
        torch.rand(shape, generator=gen, dtype=torch.float64)
        if positive
        else torch.randn(shape, generator=gen, dtype=torch.float64)
    )
    return t.to(dtype)


class OptimizerPair(RuleBasedStateMachine):
    """One torch optimizer and one pylr optimizer over twin params."""

    def __init__(self) -> None:
        super().__init__()
        self.torch_params: list[torch.nn.Parameter] = []
        self.pylr_params: list[torch.nn.Parameter] = []

    # -- set-up ------------------------------------------------------------------------------

    @initialize(
        algo=st.sampled_from(ALGOS),
        dtype=st.sampled_from([torch.float32, torch.float64]),
        shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4),
        two_groups=st.booleans(),
        flag=st.booleans(),
        tensor_lr=st.booleans(),
        seed=st.integers(0, 2**30),
    )
    def setup(self, algo, dtype, shapes, two_groups, flag, tensor_lr, seed):
        self.algo, self.dtype = algo, dtype
        for i, s in enumerate(shapes):
            t = _random(s, seed + i, dtype)
            self.torch_params.append(torch.nn.Parameter(t.clone()))
            self.pylr_params.append(torch.nn.Parameter(t.clone()))
        if algo == "SGD":
            kwargs = {"lr": 0.05, "momentum": 0.9 if flag else 0.0, "weight_decay": 0.01}
        else:
            kwargs = {"lr": 0.01, "amsgrad": flag, "weight_decay": 0.02}
        if tensor_lr:
            kwargs["lr"] = torch.tensor(kwargs["lr"], dtype=torch.float64)
        cut = len(shapes) // 2 if two_groups and len(shapes) > 1 else len(shapes)

        def groups(params):
            out = [{"params": params[:cut]}]
            if cut < len(params):
                out.append({"params": params[cut:], "lr": 0.02})
            return out

        kw_t = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        self.torch_opt = getattr(torch.optim, algo)(
            groups(self.torch_params), foreach=False, **kw_t
        )
        self.pylr_opt = getattr(PO, algo)(groups(self.pylr_params), **kwargs)

    # -- helpers -----------------------------------------------------------------------------

    def pairs(self):
        return list(zip(self.torch_params, self.pylr_params, strict=True))

    def _states(self, i):
        a, b = self.pairs()[i]
        return self.torch_opt.state.get(a), self.pylr_opt.state.get(b)

    def _snapshot(self):
        return (
            [p.detach().clone() for p in self.pylr_params],
            {
                id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                for p, s in self.pylr_opt.state.items()
            },
        )

    def _resync_torch(self):
        """After a step both refused, make torch's side equal pylr's again (torch's for-loop may
        have updated the params before the one it refused)."""
        for a, b in self.pairs():
            with torch.no_grad():
                a.data = b.detach().clone()
            state = self.pylr_opt.state.get(b)
            self.torch_opt.state.pop(a, None)
            if state is not None:
                self.torch_opt.state[a] = {
                    k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()
                }

    # -- rules: gradients --------------------------------------------------------------------

    @rule(data=st.data())
    def set_grads(self, data):
        for i, (a, b) in enumerate(self.pairs()):
            kind = data.draw(st.sampled_from(["new", "new", "none", "keep"]), label=f"grad {i}")
            if kind == "new":
                g = _random(a.shape, data.draw(st.integers(0, 2**30)), self.dtype)
                a.grad, b.grad = g.clone(), g.clone()
            elif kind == "none":
                a.grad = b.grad = None

    @rule(seed=st.integers(0, 2**30))
    def accumulate_grads(self, seed):
        for i, (a, b) in enumerate(self.pairs()):
            if a.grad is not None and a.grad.shape == a.shape:
                g = _random(a.shape, seed + i, self.dtype)
                a.grad.add_(g)
                b.grad.add_(g)

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none):
        self.torch_opt.zero_grad(set_to_none=set_to_none)
        self.pylr_opt.zero_grad(set_to_none=set_to_none)

    @rule(i=st.integers(0, 10), seed=st.integers(0, 2**30))
    def grad_data_swap(self, i, seed):
        a, b = self.pairs()[i % len(self.torch_params)]
        if a.grad is not None:
            g = _random(a.grad.shape, seed, self.dtype)
            a.grad.data, b.grad.data = g.clone(), g.clone()

    # -- rules: params -----------------------------------------------------------------------

    @rule(i=st.integers(0, 10), seed=st.integers(0, 2**30))
    def param_data_swap(self, i, seed):
        a, b = self.pairs()[i % len(self.torch_params)]
        t = _random(a.shape, seed, self.dtype)
        a.data, b.data = t.clone(), t.clone()

    @rule(i=st.integers(0, 10), keep=st.integers(1, 5))
    def param_truncate(self, i, keep):
        """``p.data = p.data[:k]``: the same data pointer, fewer elements."""
        a, b = self.pairs()[i % len(self.torch_params)]
        if a.dim() >= 1 and a.shape[0] > keep:
            a.data, b.data = a.data[:keep], b.data[:keep]

    @rule(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**30), lr=st.floats(0.0, 0.1))
    def add_param_group(self, shape, seed, lr):
        t = _random(shape, seed, self.dtype)
        a, b = torch.nn.Parameter(t.clone()), torch.nn.Parameter(t.clone())
        self.torch_opt.add_param_group({"params": [a], "lr": lr})
        self.pylr_opt.add_param_group({"params": [b], "lr": lr})
        self.torch_params.append(a)
        self.pylr_params.append(b)

    # -- rules: optimizer state --------------------------------------------------------------

    def _state_key(self, state, k):
        keys = sorted(state)
        return keys[k % len(keys)] if keys else None

    @rule(i=st.integers(0, 10), k=st.integers(0, 3), seed=st.integers(0, 2**30))
    def state_data_swap(self, i, k, seed):
        sa, sb = self._states(i % len(self.torch_params))
        if sa and sb and set(sa) == set(sb):
            key = self._state_key(sa, k)
            t = _random(sa[key].shape, seed, sa[key].dtype, positive=True)
            if key == "step":
                t = torch.tensor(float(seed % 50 + 1))
            sa[key].data, sb[key].data = t.clone(), t.clone()

    @rule(i=st.integers(0, 10), k=st.integers(0, 3), seed=st.integers(0, 2**30))
    def state_replace(self, i, k, seed):
        sa, sb = self._states(i % len(self.torch_params))
        if sa and sb and set(sa) == set(sb):
            key = self._state_key(sa, k)
            if key == "step":
                t = torch.tensor(float(seed % 50 + 1))
            else:
                t = _random(sa[key].shape, seed, sa[key].dtype, positive=True)
            sa[key], sb[key] = t.clone(), t.clone()

    @rule(i=st.integers(0, 10), k=st.integers(0, 3))
    def state_pop(self, i, k):
        sa, sb = self._states(i % len(self.torch_params))
        if sa and sb and set(sa) == set(sb):
            key = self._state_key(sa, k)
            sa.pop(key)
            sb.pop(key)

    @rule(i=st.integers(0, 10))
    def state_delete(self, i):
        a, b = self.pairs()[i % len(self.torch_params)]
        self.torch_opt.state.pop(a, None)
        self.pylr_opt.state.pop(b, None)

    @rule()
    def state_clear(self):
        self.torch_opt.state.clear()
        self.pylr_opt.state.clear()

    @rule(cross=st.booleans())
    def load_state_dict(self, cross):
        sd_t = copy.deepcopy(self.torch_opt.state_dict())
        sd_p = copy.deepcopy(self.pylr_opt.state_dict())
        try:
            # torch's Adam refuses a state without 'step' here (after replacing its state with
            # an equal copy); pylr accepts it and refuses at the next step, as torch does then
            self.torch_opt.load_state_dict(sd_p if cross else sd_t)
        except KeyError:
            return
        self.pylr_opt.load_state_dict(sd_t if cross else sd_p)

    # -- rules: hyperparameters --------------------------------------------------------------

    def _groups(self, g):
        n = len(self.torch_opt.param_groups)
        return self.torch_opt.param_groups[g % n], self.pylr_opt.param_groups[g % n]

    @rule(g=st.integers(0, 5), lr=st.floats(0.0, 0.1), as_tensor=st.booleans())
    def set_lr(self, g, lr, as_tensor):
        ga, gb = self._groups(g)
        if as_tensor:
            # both kinds of tensor lr; with float64 params a float32 lr makes torch round the
            # step's scalars to float32 where pylr keeps the lr's value in double
            wide = lr > 0.05 or self.dtype == torch.float64
            dtype = torch.float64 if wide else torch.float32
            ga["lr"], gb["lr"] = torch.tensor(lr, dtype=dtype), torch.tensor(lr, dtype=dtype)
        else:
            ga["lr"] = gb["lr"] = lr

    @rule(g=st.integers(0, 5), lr=st.floats(0.0, 0.1))
    def fill_tensor_lr(self, g, lr):
        ga, gb = self._groups(g)
        if isinstance(ga["lr"], torch.Tensor):
            ga["lr"].fill_(lr)
            gb["lr"].fill_(lr)

    @rule(g=st.integers(0, 5), data=st.data())
    def set_hyperparameter(self, g, data):
        ga, gb = self._groups(g)
        if self.algo == "SGD":
            key = data.draw(st.sampled_from(["momentum", "dampening", "weight_decay", "maximize"]))
            if key == "momentum":
                value = data.draw(st.sampled_from([0.0, 0.5, 0.9]))
                if ga["nesterov"] and value == 0:
                    return
            elif key == "dampening":
                if ga["nesterov"]:
                    return
                value = data.draw(st.sampled_from([0.0, 0.3]))
            elif key == "weight_decay":
                value = data.draw(st.floats(0.0, 0.1))
            else:
                value = data.draw(st.booleans())
        else:
            key = data.draw(
                st.sampled_from(["betas", "eps", "weight_decay", "maximize", "amsgrad"])
            )
            if key == "betas":
                value = (data.draw(st.floats(0.0, 0.99)), data.draw(st.floats(0.0, 0.999)))
            elif key == "eps":
                value = data.draw(st.sampled_from([1e-8, 1e-6, 1e-3]))
            elif key == "weight_decay":
                value = data.draw(st.floats(0.0, 0.1))
            else:
                value = data.draw(st.booleans())
        ga[key] = gb[key] = value

    # -- the step ----------------------------------------------------------------------------

    @rule()
    def step(self):
        before = self._snapshot()
        torch_error = pylr_error = None
        try:
            self.torch_opt.step()
        except Exception as e:  # any refusal by the oracle
            torch_error = e
        try:
            self.pylr_opt.step()
        except Exception as e:
            pylr_error = e
        if torch_error is None and pylr_error is not None:
            raise AssertionError(f"pylr raised where torch stepped: {pylr_error!r}")
        if torch_error is not None and pylr_error is None:
            raise AssertionError(f"pylr stepped where torch raised {torch_error!r}")
        if pylr_error is not None:
            params, states = before
            for p, v in zip(self.pylr_params, params, strict=True):
                assert torch.equal(p.detach(), v), "a refused step modified a param"
            now = self.pylr_opt.state
            assert {id(p) for p in now if now[p]} == {i for i, s in states.items() if s}
            for p, s in now.items():
                for k, v in s.items():
                    old = states[id(p)][k]
                    assert v.shape == old.shape and torch.equal(v, old), f"refused step changed {k}"
            self._resync_torch()

    @invariant()
    def same_params_and_state(self):
        if not self.torch_params:
            return
        rtol, atol = TOL[self.dtype]
        for i, (a, b) in enumerate(self.pairs()):
            assert a.shape == b.shape
            torch.testing.assert_close(
                b.detach(), a.detach(), rtol=rtol, atol=atol, equal_nan=True, msg=f"param {i}"
            )
            sa = self.torch_opt.state.get(a, {})
            sb = self.pylr_opt.state.get(b, {})
            assert set(sa) == set(sb), (i, sorted(sa), sorted(sb))
            for k in sa:
                ta, tb = sa[k], sb[k]
                assert ta.shape == tb.shape, (i, k)
                torch.testing.assert_close(
                    tb, ta.to(tb.dtype), rtol=rtol, atol=atol, equal_nan=True, msg=f"{i} {k}"
                )


_CI = bool(os.environ.get("CI"))
OptimizerPair.TestCase.settings = settings(
    max_examples=int(os.environ.get("PYLR_STATEFUL_EXAMPLES", "500")),
    stateful_step_count=40,
    deadline=None,
    database=None,
    derandomize=_CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestOptimizerPair = OptimizerPair.TestCase
pytestmark = pytest.mark.filterwarnings(
    # torch warns once per optimizer when a tensor lr meets foreach=False; irrelevant here
    "ignore::UserWarning"
)
