"""Hypothesis strategies for batch-norm cases: shapes, hyper-parameters and conditioned inputs.

Also what checks derive from a drawn case's seed (further batches, running statistics, upstream
gradients), the larger cases of the invariance suite (permuted batches, a preceding layer), and how a
check's failure on a drawn case is reported (``ordinary_first``: on an ordinary input when one fails
too, with ill-conditioning named as the trigger only when ordinary inputs pass).

Input values come from a numpy generator seeded by a drawn integer: far
faster than drawing every element through hypothesis, still fully
determined by the hypothesis seed, and hypothesis still shrinks the shape,
dtype and hyper-parameters of a failing case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from bnverify import tolerances as tols
from bnverify.compare import CheckFailure
from bnverify.reference import batchnorm as oracle

RANKS = (2, 3, 4, 5)
"""Input ranks the suites try: (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W)."""
DTYPES = (torch.float64, torch.float32)
HALF = (torch.float16, torch.bfloat16)
LARGE_BATCH = 256
"""Smallest batch of the no-mutation contract's large case: memory-saving paths often start at 128 or 256."""


def dtype_id(d: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: the parametrize id."""
    return str(d).replace("torch.", "")


CONDITIONINGS = ("ordinary", "normal", "large_mean", "tiny_var", "constant_channel", "half_overflow")
"""How ``make_input`` sets each channel's mean and spread.  ``ordinary``: spreads in [0.5, 2] and
|mean|/std <= 1 in every channel;
``normal``: means in [-3, 3], spreads in [0.1, 10] (|mean|/std up to 30); the rest are the ill-conditioned
inputs of the named kind.  The batch's own statistics are exactly the chosen ones (see ``make_input``)."""


@dataclass(frozen=True)
class Case:
    """One drawn batch-norm input and its hyper-parameters (values as float64, cast on use)."""

    x: np.ndarray
    dtype: torch.dtype
    eps: float
    affine: bool
    gamma: np.ndarray | None
    beta: np.ndarray | None
    momentum: float
    conditioning: str
    seed: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def m(self) -> int:
        return self.x.size // self.x.shape[1]

    @property
    def mean_over_std(self) -> float:
        """The input's conditioning: the largest per-channel |mean|/std."""
        return mean_over_std(self.x)

    def describe(self) -> str:
        return (
            f"shape {self.shape}, {str(self.dtype).replace('torch.', '')}, eps={self.eps:.3g}, "
            f"{'affine' if self.affine else 'affine=False'}, input {self.conditioning} "
            f"(|mean|/std up to {self.mean_over_std:.3g}), m={self.m} values per channel, data seed {self.seed}"
        )


def mean_over_std(x: np.ndarray) -> float:
    """The largest per-channel |mean| / std of ``x`` (inf when a channel is constant)."""
    axes = (0,) + tuple(range(2, x.ndim))
    mu = np.abs(x.mean(axis=axes))
    sd = x.std(axis=axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sd > 0, mu / np.where(sd > 0, sd, 1.0), math.inf)
    return float(ratio.max())


@st.composite
def shapes(draw: Any, rank: int, *, max_numel: int = 1536, min_m: int = 2) -> tuple[int, ...]:
    """``(N, C, *spatial)`` with N >= 2, C >= 1, odd sizes welcome, at least ``min_m`` values per channel."""
    n = draw(st.integers(2, 17), label="N")
    c = draw(st.integers(1, 6), label="C")
    spatial = tuple(draw(st.integers(1, 6), label=f"S{i}") for i in range(rank - 2))
    shape = (n, c) + spatial
    while math.prod(shape) > max_numel and shape[0] > 2:
        shape = (max(2, shape[0] // 2),) + shape[1:]
    per_sample = math.prod(spatial)
    if n * per_sample < min_m:
        n = -(-min_m // per_sample)
        c = max(1, min(c, max_numel // (n * per_sample)))
        shape = (n, c) + spatial
    return shape


def make_input(rng: np.random.Generator, shape: tuple[int, ...], conditioning: str, eps: float) -> np.ndarray:
    """Per-channel mean and spread chosen by ``conditioning``; float64 values.

    The standard-normal draws are standardised per channel (when a channel has two values or more), so
    the batch's own mean and biased std are the chosen ones, not the chosen ones plus sampling noise:
    two raw draws can lie close together, and then even ``normal`` input has |mean|/std in the hundreds
    (data seed 0 with two values per channel gave 198, the example every shrunk failure ended on).
    """
    c = shape[1]
    cshape = (1, c) + (1,) * (len(shape) - 2)
    z = _standardised(rng.standard_normal(shape))
    if conditioning == "ordinary":
        std = np.exp(rng.uniform(np.log(0.5), np.log(2.0), c))
        mean = std * rng.uniform(-tols.ORDINARY_MEAN_OVER_STD, tols.ORDINARY_MEAN_OVER_STD, c)
    elif conditioning == "normal":
        mean = rng.uniform(-3, 3, c)
        std = np.exp(rng.uniform(np.log(0.1), np.log(10.0), c))
    elif conditioning == "large_mean":
        std = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), c))
        ratio = np.exp(rng.uniform(np.log(10.0), np.log(1e4), c))
        mean = std * ratio * rng.choice([-1.0, 1.0], c)
    elif conditioning == "half_overflow":
        # magnitude ~30 over thousands of values: sum and sum of squares exceed float16's 65504
        mean = rng.uniform(20, 40, c) * rng.choice([-1.0, 1.0], c)
        std = np.exp(rng.uniform(np.log(0.5), np.log(5.0), c))
    elif conditioning == "tiny_var":
        std = math.sqrt(eps) * np.exp(rng.uniform(np.log(1e-2), np.log(10.0), c))
        mean = rng.uniform(-2, 2, c)
    elif conditioning == "constant_channel":
        # constant channels hold a dyadic value (k/8): every sum of them is exact in any order and
        # dtype, so the check tests "var = 0 normalises to beta, never NaN" (ANCHORS B15) and not
        # the summation order, whose error on m identical values is deterministic, not random
        std = np.exp(rng.uniform(np.log(0.1), np.log(10.0), c))
        const = rng.random(c) < 0.5
        const[rng.integers(c)] = True
        mean = np.where(const, rng.integers(-24, 25, c) / 8.0, rng.uniform(-3, 3, c))
        std = np.where(const, 0.0, std)
    else:
        raise ValueError(conditioning)
    return z * std.reshape(cshape) + mean.reshape(cshape)


def _standardised(z: np.ndarray) -> np.ndarray:
    """``z`` with per-channel mean 0 and biased std 1 (unchanged where a channel holds fewer than two values)."""
    axes = (0,) + tuple(range(2, z.ndim))
    if z.size // z.shape[1] < 2:
        return z
    centred = z - z.mean(axis=axes, keepdims=True)
    sd = np.sqrt((centred**2).mean(axis=axes, keepdims=True))
    return np.where(sd > 0, centred / np.where(sd > 0, sd, 1.0), z)


def _with_ordinary(conditionings: tuple[str, ...]) -> tuple[str, ...]:
    """``normal`` preceded by ``ordinary``: hypothesis shrinks ``sampled_from`` toward its first element,
    so a failure that ordinary input shows too is reported on ordinary input."""
    out: list[str] = []
    for c in conditionings:
        out += ["ordinary", c] if c == "normal" and "ordinary" not in conditionings else [c]
    return tuple(out)


@st.composite
def cases(
    draw: Any,
    rank: int,
    dtype: torch.dtype,
    *,
    conditionings: tuple[str, ...] = ("normal",),
    max_numel: int = 1536,
    min_m: int = 2,
    affine: bool | None = None,
) -> Case:
    """A full batch-norm case: input, eps, affine with non-trivial gamma/beta, momentum."""
    shape = draw(shapes(rank, max_numel=max_numel, min_m=min_m), label="shape")
    eps = draw(st.sampled_from([1e-5, 1e-3, 1e-1]) | st.floats(1e-6, 0.5), label="eps")
    aff = draw(st.booleans(), label="affine") if affine is None else affine
    cond = draw(st.sampled_from(_with_ordinary(conditionings)), label="conditioning")
    momentum = draw(st.floats(0.01, 0.99), label="momentum")
    seed = draw(st.integers(0, 2**32 - 1), label="data_seed")
    rng = np.random.default_rng(seed)
    x = make_input(rng, shape, cond, eps)
    x = to_dtype_values(x, dtype)
    gamma = beta = None
    if aff:
        c = shape[1]
        gamma = to_dtype_values(rng.uniform(0.2, 3.0, c) * rng.choice([-1.0, 1.0], c), dtype)
        beta = to_dtype_values(rng.uniform(-3.0, 3.0, c), dtype)
    return Case(x, dtype, eps, aff, gamma, beta, momentum, cond, seed)


def ordinary_variants(case: Case, n: int) -> list[Case]:
    """``n`` cases like ``case`` (shape, dtype, eps, affine, gamma, beta, momentum) on ``ordinary`` input,
    with data seeds derived from the case's."""
    out = []
    for k in range(n):
        seed = (case.seed + 7919 * (k + 1)) % 2**32
        x = to_dtype_values(make_input(np.random.default_rng(seed), case.shape, "ordinary", case.eps), case.dtype)
        out.append(replace(case, x=x, conditioning="ordinary", seed=seed))
    return out


Inputs = Callable[[Case], Sequence[np.ndarray]]
"""The inputs a check feeds the target for a case (its own ``x`` first, then batches derived from its seed):
what the case's conditioning is measured on."""


def own_input(case: Case) -> Sequence[np.ndarray]:
    """``[case.x]``: the inputs of a check that feeds the target the case's own batch only."""
    return [case.x]


def conditioning_of(case: Case, inputs: Inputs = own_input) -> float:
    """The largest per-channel |mean|/std over the inputs a check feeds the target for ``case``."""
    return max(mean_over_std(a) for a in inputs(case))


class Inconclusive(Exception):
    """A re-run of a check on an ordinary input neither passed nor failed (it was skipped)."""


def reported_failure(case: Case, report: str, failure_of: Callable[[Case], str | None], *,
                     inputs: Inputs = own_input) -> str:
    """The report of a check that ``case`` failed: on an ordinary input when one fails too.

    Shrinking drives a failure toward small batches, where input is easily ill-conditioned; an
    ill-conditioned example (|mean|/std above ``tolerances.ILL_CONDITIONED_MEAN_OVER_STD`` in some
    channel of any of its ``inputs``) is therefore run again, on the example hypothesis finally reports
    only, on ``ORDINARY_RETRIES`` ordinary inputs of the same shape, dtype and eps (``failure_of`` runs the
    check on one and returns its report, or None when it passes; ``Inconclusive`` when it was skipped).
    The first ordinary failure is reported instead, saying so; when the ordinary inputs pass, the report
    says that ill-conditioning is the trigger.
    """
    if not _final_example():
        return report
    ratio = conditioning_of(case, inputs)
    if not ratio > tols.ILL_CONDITIONED_MEAN_OVER_STD:
        return report
    where = "" if inputs is own_input else " in the batches the check ran"
    passed: list[Case] = []
    for v in ordinary_variants(case, tols.ORDINARY_RETRIES):
        try:
            other = failure_of(v)
        except Inconclusive:
            continue
        if other is not None:
            return (f"{other}\n  fails at ordinary conditioning too: the example found first was {case.conditioning} "
                    f"input with |mean|/std up to {ratio:.3g}{where} (data seed {case.seed}); this one has the same "
                    f"shape, dtype and eps")
        passed.append(v)
    if not passed:
        return report
    worst = max(conditioning_of(v, inputs) for v in passed)
    return (f"{report}\n  ill-conditioning is the trigger: the same check passes on {len(passed)} ordinary inputs of "
            f"this shape, dtype and eps (|mean|/std up to {worst:.2g}) and fails at |mean|/std {ratio:.3g}{where} "
            f"({case.conditioning} input)")


def ordinary_first(case: Case, check: Any, run: Callable[[Case, Any], None], *, inputs: Inputs = own_input) -> None:
    """``run(case, check)``, a check on a drawn case, with its failure reported by ``reported_failure``.

    ``run`` raises ``CheckFailure`` when the target fails; the re-runs on ordinary input (on the example
    hypothesis reports, when it is ill-conditioned) record nothing on ``check``.  ``inputs`` names what the
    check feeds the target for a case when that is more than its own batch (``batches`` derived from its
    seed), so that their conditioning counts too.  A failure that is not a ``CheckFailure`` (the target
    raised or hung) is passed on as it is: its re-runs would say nothing about conditioning, and a hung
    target would cost a timeout each.
    """
    try:
        run(case, check)
    except CheckFailure as exc:
        # raised from here on every run, the final one too, so hypothesis sees one failure throughout
        raise CheckFailure(reported_failure(case, str(exc), lambda c: _failure_of(run, c), inputs=inputs)) from None


def _failure_of(run: Callable[[Case, Any], None], case: Case) -> str | None:
    """The report of ``case`` failing the check ``run`` (recording nothing), None when it passes."""
    try:
        run(case, Unrecorded())
    except AssertionError as exc:  # CheckFailure, or the target's own TargetError
        return str(exc)
    except pytest.skip.Exception:
        raise Inconclusive() from None
    return None


class Unrecorded:
    """A check recorder (the plugin's ``bn_check``) that records nothing: for re-runs that only inform a
    report."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def observe(self, ratio: float, max_abs_err: float | None = None) -> None:
        pass

    def metric(self, name: str, value: float) -> None:
        pass

    def series(self, name: str, values: list[float]) -> None:
        pass

    def detail(self, name: str, value: Any) -> None:
        pass


def _final_example() -> bool:
    """True while hypothesis runs the example it reports (and outside hypothesis): extra work is done there only."""
    from hypothesis.control import current_build_context
    from hypothesis.errors import InvalidArgument

    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:  # not inside a hypothesis test
        return True


def running_stats_for(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plausible running statistics near (not at) the batch's own, in the case's dtype (eval checks)."""
    mean, var, _ = oracle.batch_stats(case.x)
    c = case.shape[1]
    rm = mean + rng.normal(0, 1, c) * np.sqrt(var + case.eps) + rng.uniform(-1, 1, c)
    rv = (var + case.eps) * np.exp(rng.uniform(np.log(0.25), np.log(4.0), c)) + rng.uniform(0, 1, c)
    return to_dtype_values(rm, case.dtype), to_dtype_values(rv, case.dtype)


def derived_conditioning(case: Case) -> str:
    """The conditioning of further inputs a check derives from ``case``'s seed: ``ordinary`` for an ordinary
    case (so that an ordinary example is ordinary throughout), ``normal`` otherwise."""
    return "ordinary" if case.conditioning == "ordinary" else "normal"


def batches(case: Case, n: int) -> list[np.ndarray]:
    """``n`` batches of the case's shape with different per-channel statistics, in the case's dtype; the
    first is the case's own (the training steps of the modes checks), the others of its
    ``derived_conditioning``."""
    rng = np.random.default_rng(case.seed + 17)
    out = [case.x]
    while len(out) < n:
        out.append(to_dtype_values(make_input(rng, case.shape, derived_conditioning(case), case.eps), case.dtype))
    return out


@st.composite
def permutation_cases(draw: Any, rank: int, dtype: torch.dtype) -> Case:
    """Batches larger than the other suites draw (up to 96 samples), so a statistic of part of the batch shows;
    ordinary or normal input, as ``base`` drew it (hypothesis shrinks toward ordinary)."""
    n = draw(st.integers(33, 96) if rank == 2 else st.integers(9, 40), label="N")
    c = draw(st.integers(1, 4), label="C")
    shape = (n, c) + tuple(draw(st.integers(1, 3), label=f"S{i}") for i in range(rank - 2))
    base = draw(cases(rank, dtype, max_numel=2), label="hyper")
    rng = np.random.default_rng(base.seed)
    x = to_dtype_values(make_input(rng, shape, base.conditioning, base.eps), dtype)
    gamma = beta = None
    if base.affine:
        gamma = to_dtype_values(rng.uniform(0.2, 3.0, c) * rng.choice([-1.0, 1.0], c), dtype)
        beta = to_dtype_values(rng.uniform(-3.0, 3.0, c), dtype)
    return Case(x, dtype, base.eps, base.affine, gamma, beta, base.momentum, base.conditioning, base.seed)


@dataclass(frozen=True)
class LayerCase:
    """``u -> z = layer(u, W) (+ bias) -> target``; all values float64, cast to ``dtype`` for the target."""

    layer: str  # "linear" or "conv"
    u: np.ndarray
    W: np.ndarray
    bias: np.ndarray | None
    dtype: torch.dtype
    eps: float
    gamma: np.ndarray
    beta: np.ndarray
    seed: int

    def describe(self) -> str:
        shape = "Linear" if self.layer == "linear" else "Conv2d(3x3, padding=1)"
        return (f"{shape} u {self.u.shape} -> W {self.W.shape}{' + bias' if self.bias is not None else ''} -> target, "
                f"{dtype_id(self.dtype)}, eps={self.eps:.3g}, data seed {self.seed}")


@st.composite
def layer_cases(draw: Any, layer: str, dtype: torch.dtype, *, bias: bool = False) -> LayerCase:
    """``u``, ``W`` (and a bias) of a Linear or 3x3 Conv, and the target's eps, gamma, beta."""
    seed = draw(st.integers(0, 2**32 - 1), label="data_seed")
    eps = draw(st.sampled_from([1e-5, 1e-3, 1e-1]) | st.floats(1e-6, 0.5), label="eps")
    rng = np.random.default_rng(seed)
    c = draw(st.integers(1, 5), label="C")
    if layer == "linear":
        n, d = draw(st.integers(4, 24), label="N"), draw(st.integers(2, 8), label="d_in")
        u = rng.standard_normal((n, d)) + rng.uniform(-2, 2, d)
        W = rng.standard_normal((c, d)) / np.sqrt(d)
    else:
        n, cin = draw(st.integers(2, 4), label="N"), draw(st.integers(1, 3), label="C_in")
        h, w = draw(st.integers(3, 5), label="H"), draw(st.integers(3, 5), label="W")
        u = rng.standard_normal((n, cin, h, w)) + rng.uniform(-2, 2, (1, cin, 1, 1))
        W = rng.standard_normal((c, cin, 3, 3)) / np.sqrt(9 * cin)
    b = rng.uniform(-3, 3, c) if bias else None
    gamma = to_dtype_values(rng.uniform(0.2, 3.0, c) * rng.choice([-1.0, 1.0], c), dtype)
    beta = to_dtype_values(rng.uniform(-3.0, 3.0, c), dtype)
    return LayerCase(layer, u, W, b, dtype, eps, gamma, beta, seed)


def to_dtype_values(a: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Round float64 values to ``dtype`` and back: the exact values the target will see."""
    return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype).to(torch.float64).numpy()


def upstream_grad(rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """A random upstream gradient with a per-channel offset (never ``sum()``, whose dx is identically 0)."""
    c = shape[1]
    cshape = (1, c) + (1,) * (len(shape) - 2)
    dy = rng.standard_normal(shape) + rng.uniform(-1, 1, c).reshape(cshape)
    return to_dtype_values(dy, dtype)


def tensor(a: np.ndarray, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A fresh tensor (never sharing memory with ``a``: a target that writes into its input must
    not be able to change the values the oracle reads)."""
    return torch.tensor(np.asarray(a), dtype=dtype, device=device)
