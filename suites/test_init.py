"""Initializers (seed 001): does the function draw from the law it claims, with the right fan, gain and bounds?

Runs against targets of the initializer family (kind ``torch-init``: a function with the signature of
the ``torch.nn.init`` function it implements, ``--reference`` naming it).  The law is
``bnverify.reference.initializers.law_of`` under the target's convention (``--convention
torch|keras|seed``: weight layout and truncation).  Statistical checks sample fresh tensors until
``INIT_SAMPLES`` values and test them (``bnverify.init_check``): Kolmogorov-Smirnov, mean and second
moment, tail counts, with the thresholds of ``bnverify.tolerances`` (initializer section) that keep
a correct initialiser's chance of failing a run below 1e-6.  Each check draws from its own seed,
derived from ``--seed``.  A failure names the law the samples follow when a known mistake explains them.

No check of this suite is an error over a tolerance, so none has an err/tol.  The statistical checks
record the statistics of the case nearest its thresholds (the failing case when one fails):
``ks_D``/``ks_critical``, ``z_mean``/``z_second_moment`` against ``z_bound``, ``outside_support``, and
for the tails ``p_value`` against ``alpha``; the contract, generator, low-rank and zero-element
checks are exact (pass or fail).
"""

from __future__ import annotations

import math

import pytest
import torch

from bnverify import init_check as ic
from bnverify import tolerances as tols
from bnverify.compare import CheckFailure
from bnverify.families import init as fam
from bnverify.target import TargetError

pytestmark = [pytest.mark.bnverify_suite("init"), pytest.mark.bnverify_tier("quick")]


@pytest.fixture
def seed(request):
    return int(request.config.getoption("bn_seed") or 0) % (2**31)


def _layout(target) -> str:
    return fam.conv_of(target).layout


class _Count:
    """Counts a check's statistical tests; ``record`` keeps the statistics of the case nearest its thresholds."""

    def __init__(self, bn_check):
        self.bn_check = bn_check
        self.n = 0
        self.nearest = -math.inf

    def __iadd__(self, k: int):
        self.n += k
        self.bn_check.metric("statistical tests", self.n)
        return self

    def record(self, nearness: float, metrics: dict[str, float], context: str) -> None:
        if nearness >= self.nearest:  # a failing case (above 1) is always the nearest: it raises next
            self.nearest = nearness
            for name, value in metrics.items():
                self.bn_check.metric(name, value)
            self.bn_check.detail("statistics of", context)


@pytest.mark.parametrize("geometry", ic.LAW_GEOMETRIES)
def test_law(bn_target, bn_check, bn_device, seed, geometry):
    """torch's defaults on linear and conv weights (non-square, receptive fields, 1 -> 1): KS, mean, std."""
    geo = ic.GEOMETRIES[geometry]
    shape = geo.shape(_layout(bn_target))
    count = _Count(bn_check)
    count += ic.check_law(bn_target, shape, {}, seed=ic.derive_seed(seed, "law", geometry), n=tols.INIT_SAMPLES,
                          context=f"init[{bn_target.reference}] {geo.describe(_layout(bn_target))}",
                          record=count.record, device=bn_device)


def test_fan_axes(bn_target, bn_check, bn_device, seed):
    """fan_in and fan_out from the right axes, mode honoured, on non-square linear and conv weights (I4)."""
    ref = bn_target.reference
    count = _Count(bn_check)
    for geometry, kw in ic.fan_cases(ref):
        geo = ic.GEOMETRIES[geometry]
        shape = geo.shape(_layout(bn_target))
        count += ic.check_law(bn_target, shape, kw, seed=ic.derive_seed(seed, "fan", geometry, sorted(kw.items())),
                              n=tols.INIT_SAMPLES, context=f"init[{ref}] fan axes, {geo.describe(_layout(bn_target))}",
                              record=count.record, device=bn_device)


def test_arguments(bn_target, bn_check, bn_device, seed):
    """gain; a, mode and nonlinearity (a=sqrt(5) is nn.Linear's default, I1/I2); mean, std and bounds."""
    ref = bn_target.reference
    geo = ic.GEOMETRIES[ic.ARG_GEOMETRY]
    shape = geo.shape(_layout(bn_target))
    count = _Count(bn_check)
    for label, kw in ic.ARG_CASES[ref]:
        count += ic.check_law(bn_target, shape, kw, seed=ic.derive_seed(seed, "args", label), n=tols.INIT_SAMPLES,
                              context=f"init[{ref}] {label}, {geo.describe(_layout(bn_target))}",
                              record=count.record, device=bn_device)


def test_bounds_and_tails(bn_target, bn_check, bn_device, seed):
    """Uniform bounds reached and never exceeded (I3); truncation where the law has it and only there (I5)."""
    ref = bn_target.reference
    count = _Count(bn_check)
    for label, geometry, kw in ic.support_cases(ref):
        geo = ic.GEOMETRIES[geometry]
        shape = geo.shape(_layout(bn_target))
        count += ic.check_support(bn_target, shape, kw, seed=ic.derive_seed(seed, "support", label),
                                  n=tols.INIT_SAMPLES, context=f"init[{ref}] bounds and tails, {label}",
                                  record=count.record, device=bn_device)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_contract(bn_target, bn_check, bn_device, seed, dtype):
    """Fills in place and returns that tensor, keeps dtype, shape and device; a Parameter and a strided view too."""
    ic.check_contract(bn_target, getattr(torch, dtype), bn_device, seed=ic.derive_seed(seed, "contract", dtype),
                      full=dtype == "float32")


def test_generator(bn_target, bn_check, bn_device, seed):
    """generator= reproduces: equal seeds give equal tensors, the generator advances, the global RNG is untouched."""
    if not bn_target.accepts("generator"):
        pytest.skip(f"{bn_target.name}'s signature has no generator= (torch.nn.init's has it since torch 2.1)")
    ic.check_generator(bn_target, bn_device, seed=ic.derive_seed(seed, "generator"))


def test_low_rank(bn_target, bn_check, seed):
    """0-D and 1-D tensors: a ValueError for fan-based laws (torch); filled from the law otherwise."""
    ref = bn_target.reference
    conv = fam.conv_of(bn_target)
    if ref in fam.FAN_BASED:
        outcomes = {}
        for shape in ((), (64,)):
            try:
                res = bn_target.fill(torch.full(shape, float("nan")))
                outcomes[shape] = None
                out = res.out if isinstance(res.out, torch.Tensor) else None
                if conv.name == "torch":
                    bn_check.observe(math.inf)
                    raise CheckFailure(
                        f"init[{ref}] a {len(shape)}-D tensor of shape {shape} was accepted"
                        + (f" and filled ({out.reshape(-1)[:3].tolist()}...)" if out is not None and out.numel() else "")
                        + ": fan_in and fan_out are not defined below 2 dimensions; torch.nn.init raises ValueError "
                        "('Fan in and fan out can not be computed for tensor with fewer than 2 dimensions')\n"
                        "  likely cause: fans computed without a rank check (a bias vector initialised with a weight "
                        "initialiser gets an arbitrary scale)")
            except TargetError as exc:
                cause = exc.__cause__
                outcomes[shape] = type(cause).__name__ if cause is not None else str(exc).splitlines()[0]
        bn_check.detail("low-rank errors", {str(k): v for k, v in outcomes.items()})
        return
    res = bn_target.fill(torch.full((), float("nan")))
    out = res.out if isinstance(res.out, torch.Tensor) else None
    if out is None or not bool(torch.isfinite(out).all()):
        raise CheckFailure(f"init[{ref}] a 0-D tensor was not filled (returned {res.out!r}); torch.nn.init.{ref} "
                           "fills tensors of any rank")
    count = _Count(bn_check)
    count += ic.check_law(bn_target, (64,), {}, seed=ic.derive_seed(seed, "rank1"), n=tols.INIT_SAMPLES,
                          context=f"init[{ref}] a 1-D tensor (a bias of 64)", record=count.record)


def test_zero_element(bn_target, bn_check):
    """A zero-element weight is returned untouched, no exception; kaiming_* warns (torch) that it is a no-op."""
    ref = bn_target.reference
    conv = fam.conv_of(bn_target)
    geo = fam.Geometry("empty", 3, 0, (3, 3))
    for shape in (fam.Geometry("empty", 3, 0).shape(conv.layout), geo.shape(conv.layout)):
        t = torch.empty(shape)
        try:
            res = bn_target.fill(t)
        except TargetError as exc:
            raise CheckFailure(f"init[{ref}] a zero-element tensor {shape} (a layer with 0 outputs) raised: {exc}\n"
                               "  torch returns it untouched (kaiming_* after a warning that it is a no-op); "
                               "likely cause: a division by a zero fan") from None
        if not (isinstance(res.out, torch.Tensor) and tuple(res.out.shape) == shape):
            raise CheckFailure(f"init[{ref}] a zero-element tensor {shape}: returned {type(res.out).__name__}, not "
                               "the tensor")
        warned = [w for w in res.warnings if "zero-element" in w]
        bn_check.detail(f"warnings for {shape}", res.warnings)
        if ref in fam.KAIMING and conv.zero_warning and not warned:
            raise CheckFailure(
                f"init[{ref}] a zero-element tensor {shape} was returned without torch's warning (UserWarning: "
                "Initializing zero-element tensors is a no-op); warnings seen: "
                f"{'; '.join(res.warnings) or 'none'}\n  likely cause: no zero-element check before the fan is "
                "computed (torch warns and returns; a zero fan would divide by zero)")

