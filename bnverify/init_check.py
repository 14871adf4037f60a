"""The initializer checks' engine: draw samples from a target, test them against a law, explain a failure.

``suites/test_init.py`` calls these functions; so do the meta-tests and the false-failure sweep
(``tests/test_init.py``), with fewer samples.  A statistical verdict is one of three tests of the
samples against the law the target claims (``bnverify.reference.initializers``):

* Kolmogorov-Smirnov: the statistic ``D`` against the exact one-sample critical value at
  ``INIT_ALPHA`` (``scipy.stats.kstwo``);
* the mean: ``z = (mean - mu) sqrt(n) / sd``;
* the second moment about the law's mean: ``z = (m2 - sd^2) / sqrt((mu4 - sd^4) / n)``;

each with the thresholds of ``bnverify.tolerances`` (initializer section), whose derivation bounds
the family-wise false-failure rate of a whole run.  These are statistical tests, not errors over a
tolerance, so the suite reports no err/tol for them: ``record`` receives the statistics under their
own names (``Assessment.metrics``: ``ks_D`` against ``ks_critical``, ``z_mean`` and
``z_second_moment`` against ``z_bound``, ``outside_support``; for the tails ``p_value`` against
``alpha``).  ``observe`` receives how near a case came to its thresholds (the largest of
``D / D_crit`` and ``|z| / INIT_Z``, or ``log p / log alpha``; above 1 fails), which orders the cases
and summarises a sweep.  When samples fail their law, every law of
``bnverify.families.init.hypotheses`` that can be told apart from it is tested the same way, and
the ones the samples do follow are named as the likely cause.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.compare import CheckFailure
from bnverify.families import init as fam
from bnverify.families.init import Geometry, InitTarget
from bnverify.target import TargetError

GEOMETRIES = {g.name: g for g in (
    Geometry("linear-400-25", 400, 25),
    Geometry("linear-25-400", 25, 400),
    Geometry("conv2d-4-24-k3x5", 4, 24, (3, 5)),
    Geometry("conv1d-12-3-k7", 12, 3, (7,)),
    Geometry("conv3d-2-6-k3x1x2", 2, 6, (3, 1, 2)),
    Geometry("conv2d-16-8-k3x3", 16, 8, (3, 3)),
    Geometry("linear-1-1", 1, 1),
    Geometry("conv2d-1-2-k1x1", 1, 2, (1, 1)),
)}
"""Layers by name ``kind-in-out[-k...]``: fan_in and fan_out differ wherever that can be arranged."""

LAW_GEOMETRIES = ("linear-400-25", "linear-25-400", "conv2d-4-24-k3x5", "conv1d-12-3-k7", "linear-1-1",
                  "conv2d-1-2-k1x1")
ARG_GEOMETRY = "conv2d-16-8-k3x3"

SQRT5 = math.sqrt(5.0)
_KAIMING_ARGS: list[tuple[str, dict[str, Any]]] = [
    ("ReLU", {"nonlinearity": "relu"}),
    ("leaky_relu a=0.2", {"a": 0.2}),
    ("a=sqrt(5): nn.Linear/Conv's default", {"a": SQRT5}),
    ("leaky_relu a=3", {"a": 3.0}),
    ("tanh", {"nonlinearity": "tanh"}),
    ("selu", {"nonlinearity": "selu"}),
    ("ReLU, mode=fan_out", {"mode": "fan_out", "nonlinearity": "relu"}),
]
_XAVIER_ARGS: list[tuple[str, dict[str, Any]]] = [
    ("gain 0.5", {"gain": 0.5}), ("gain sqrt(2) (ReLU)", {"gain": math.sqrt(2.0)}), ("gain 5/3 (tanh)", {"gain": 5 / 3})]
ARG_CASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "kaiming_normal_": _KAIMING_ARGS,
    "kaiming_uniform_": _KAIMING_ARGS,
    "xavier_normal_": _XAVIER_ARGS,
    "xavier_uniform_": _XAVIER_ARGS,
    "normal_": [("mean 1, std 0.5", {"mean": 1.0, "std": 0.5}), ("mean -2, std 3", {"mean": -2.0, "std": 3.0}),
                ("std 0.02", {"std": 0.02})],
    "uniform_": [("a=-0.5, b=2", {"a": -0.5, "b": 2.0}), ("a=-1, b=1", {"a": -1.0, "b": 1.0}),
                 ("a=2, b=3", {"a": 2.0, "b": 3.0})],
    "trunc_normal_": [("std 0.02: bounds at 100 sd", {"std": 0.02}),
                      ("mean 0.5, std 1, [-1, 1.5]", {"mean": 0.5, "std": 1.0, "a": -1.0, "b": 1.5}),
                      ("std 2: bounds at 1 sd", {"std": 2.0}),
                      ("one-sided [0, 3]", {"a": 0.0, "b": 3.0})],
}
"""Keyword cases of ``test_arguments`` per reference (gain, a, nonlinearity, mode; mean, std, bounds)."""

FAN_CASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "kaiming": [("linear-400-25", {"mode": "fan_in"}), ("linear-400-25", {"mode": "fan_out"}),
                ("conv2d-4-24-k3x5", {"mode": "fan_in"}), ("conv2d-4-24-k3x5", {"mode": "fan_out"})],
    "xavier": [("linear-400-25", {}), ("conv2d-4-24-k3x5", {}), ("conv3d-2-6-k3x1x2", {})],
    "plain": [("linear-400-25", {}), ("conv2d-4-24-k3x5", {})],
}


def fan_cases(reference: str) -> list[tuple[str, dict[str, Any]]]:
    if reference in fam.KAIMING:
        return FAN_CASES["kaiming"]
    return FAN_CASES["xavier" if reference in fam.FAN_BASED else "plain"]


def support_cases(reference: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, geometry, keywords)`` of ``test_bounds_and_tails``."""
    cases: list[tuple[str, str, dict[str, Any]]] = [("defaults", "linear-400-25", {})]
    if reference in fam.KAIMING:
        cases.append(("ReLU", "linear-400-25", {"nonlinearity": "relu"}))
    if reference == "trunc_normal_":
        cases += [(label, "linear-400-25", kw) for label, kw in ARG_CASES["trunc_normal_"]]
    return cases


def derive_seed(base: int, *parts: Any) -> int:
    """A fixed seed per check and case, derived from ``--seed``: results reproduce, cases stay independent."""
    h = hashlib.blake2b(repr((int(base), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % (2**62)


# --------------------------------------------------------------------------- drawing

def draw(target: InitTarget, shape: tuple[int, ...], n: int, seed: int, kwargs: dict[str, Any], *,
         dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[np.ndarray, int]:
    """At least ``min(n, INIT_MAX_CALLS * numel)`` samples from fresh tensors of ``shape``; ``(samples, calls)``.

    Samples are read from the tensor the target returns (if it returned one of the right shape),
    else from the tensor passed in: the in-place contract is ``test_contract``'s business.
    """
    torch.manual_seed(seed)
    numel = math.prod(shape)
    calls = max(1, min(math.ceil(n / numel), tols.INIT_MAX_CALLS))
    pairs = target.fill_many(lambda: torch.full(shape, float("nan"), dtype=dtype, device=device), calls, **kwargs)
    chunks = [(out if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(shape) else t).detach().reshape(-1)
              for t, out in pairs]
    v = torch.cat(chunks).to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(v)):
        bad = int((~np.isfinite(v)).sum())
        raise TargetError(f"{target.name} left {bad} of {v.size} elements of {calls} {tuple(shape)} tensors NaN or inf "
                          "(each tensor is filled with NaN before the call, so these were never written)")
    return v, calls


# --------------------------------------------------------------------------- testing samples against a law

@functools.lru_cache(maxsize=256)
def ks_critical(n: int) -> float:
    """The one-sample KS statistic a correct sample of ``n`` exceeds with probability ``INIT_ALPHA``."""
    from scipy import stats

    return float(stats.kstwo.isf(tols.INIT_ALPHA, n))


class Assessment(NamedTuple):
    n: int
    ks: float
    ks_crit: float
    mean: float
    std: float
    z_mean: float
    z_var: float
    outside: int

    @property
    def nearness(self) -> float:
        """The largest statistic over its critical value (inf with samples outside the support): above 1 fails."""
        if self.outside:
            return math.inf
        return max(self.ks / self.ks_crit, abs(self.z_mean) / tols.INIT_Z, abs(self.z_var) / tols.INIT_Z)

    @property
    def ok(self) -> bool:
        return self.nearness <= 1.0

    def metrics(self) -> dict[str, float]:
        """The tests' statistics and critical values, each under its own name."""
        return {"samples": float(self.n), "ks_D": self.ks, "ks_critical": self.ks_crit, "z_mean": self.z_mean,
                "z_second_moment": self.z_var, "z_bound": tols.INIT_Z, "alpha": tols.INIT_ALPHA,
                "outside_support": float(self.outside)}


def assess(x: np.ndarray, law: Any) -> Assessment:
    n = int(x.size)
    xs = np.sort(x)
    f = law.cdf(xs)
    i = np.arange(1, n + 1) / n
    d = float(max(np.max(i - f), np.max(f - (i - 1.0 / n))))
    mu, sd = law.mean, law.std
    z_mean = (float(x.mean()) - mu) * math.sqrt(n) / sd
    m2 = float(np.mean((x - mu) ** 2))
    z_var = (m2 - sd * sd) / math.sqrt(max(law.central_moment4 - sd**4, 1e-300) / n)
    lo, hi = law.support
    slack = tols.INIT_SUPPORT_ULPS * float(np.finfo(np.float32).eps)
    outside = int(np.sum((x < lo - slack * abs(lo)) | (x > hi + slack * abs(hi)))) if math.isfinite(lo + hi) else 0
    return Assessment(n, d, ks_critical(n), float(x.mean()), float(x.std()), z_mean, z_var, outside)


def fits(x: np.ndarray, law: Any) -> bool:
    return assess(x, law).ok


def distance(a: Any, b: Any) -> float:
    """sup |F_a - F_b| over the quantiles of both laws."""
    q = np.linspace(1e-4, 1 - 1e-4, 401)
    pts = np.concatenate([a.dist.ppf(q), b.dist.ppf(q)])
    return float(np.max(np.abs(a.cdf(pts) - b.cdf(pts))))


def distinguishable(claimed: Any, other: Any, n: int) -> bool:
    """Whether ``n`` samples can tell ``other`` from ``claimed``: by KS, or by mass one puts outside the other's support."""
    if distance(claimed, other) > ks_critical(n):
        return True

    def outside(a: Any, b: Any) -> float:
        lo, hi = b.support
        return float(a.cdf(np.array([lo]))[0]) + 1.0 - float(a.cdf(np.array([hi]))[0])

    return max(outside(other, claimed), outside(claimed, other)) * n > tols.INIT_SUPPORT_COUNT


def explain(x: np.ndarray, claimed: Any, hyps: list[fam.Hypothesis]) -> list[str]:
    """The known mistakes and conventions whose law the samples follow (told apart from the claimed law)."""
    n = x.size
    found: list[tuple[fam.Hypothesis, list[str]]] = []
    for h in hyps:
        if not distinguishable(claimed, h.law, n) or not fits(x, h.law):
            continue
        same = next((f for f in found if distance(f[0].law, h.law) <= 1e-9), None)
        if same is not None:
            same[1].append(h.label + (f": {h.hint}" if h.hint else ""))
        else:
            found.append((h, [h.label + (f": {h.hint}" if h.hint else "")]))
    lines = []
    for k, (h, labels) in enumerate(found):
        lines.append(("likely cause: " if k == 0 else "also consistent with: ")
                     + " / ".join(labels) + f" [{h.law.describe()}]")
    return lines


def _implied_fan(reference: str, std: float, kwargs: dict[str, Any], shape: tuple[int, ...], layout: str) -> str:
    from bnverify.reference import initializers as ref

    if reference not in fam.FAN_BASED or std <= 0:
        return ""
    kw = {**ref.DEFAULTS[reference], **kwargs}
    fi, fo = ref.fans(shape, layout)
    if reference in fam.KAIMING:
        gain = ref.calculate_gain(kw["nonlinearity"], kw["a"])
        return (f"\n  the measured std is that of fan {gain * gain / std**2:.4g} (gain {gain:.4g}); this weight's "
                f"fan_in is {fi}, fan_out {fo}")
    return (f"\n  the measured std is that of fan_in + fan_out = {2 * kw['gain'] ** 2 / std**2:.4g} (gain "
            f"{kw['gain']:.4g}); this weight's is {fi} + {fo} = {fi + fo}")


def describe_call(reference: str, kwargs: dict[str, Any]) -> str:
    from bnverify.reference import initializers as ref

    kw = {**ref.DEFAULTS.get(reference, {}), **kwargs}
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in kw.items())
    return f"{reference}(tensor{', ' + shown if shown else ''})" + ("" if kwargs else " (torch's defaults)")


Record = Callable[[float, dict[str, float], str], None]
"""``record(nearness, metrics, context)``: a case's statistics (see the module docstring)."""


def check_law(target: InitTarget, shape: tuple[int, ...], kwargs: dict[str, Any], *, seed: int, n: int,
              context: str, observe: Callable[[float], None] | None = None, record: Record | None = None,
              dtype: torch.dtype = torch.float32, device: str = "cpu") -> int:
    """The samples of ``target(tensor, **kwargs)`` on fresh tensors of ``shape`` follow the claimed law.

    Returns the number of statistical tests made (3); raises ``CheckFailure`` with the explanation.
    ``observe`` gets the case's nearness to its thresholds, ``record`` its statistics (before any raise).
    """
    reference = target.reference or ""
    conv = fam.conv_of(target)
    law = target.law(shape, **kwargs)
    x, calls = draw(target, shape, n, seed, kwargs, dtype=dtype, device=device)
    a = assess(x, law)
    if observe is not None:
        observe(a.nearness)
    if record is not None:
        record(a.nearness, a.metrics(), context)
    if a.ok:
        return 3
    raise CheckFailure(
        f"{context}: samples of {describe_call(reference, kwargs)} on a {tuple(shape)} tensor do not follow "
        f"{law.describe()}\n"
        f"  expected ({conv.name} convention): {law.note}\n"
        f"  measured: mean {a.mean:.4g} (expected {law.mean:.4g}, z = {a.z_mean:.3g}), std {a.std:.4g} (expected "
        f"{law.std:.4g}, x{a.std / law.std:.4g}, z = {a.z_var:.3g}), KS D = {a.ks:.4g} (critical {a.ks_crit:.4g})"
        + (f", {a.outside} samples outside the support [{law.support[0]:.4g}, {law.support[1]:.4g}]"
           if a.outside else "")
        + f"{_implied_fan(reference, a.std, kwargs, shape, conv.layout)}\n"
        f"  n = {a.n} samples from {calls} call(s), {str(dtype).replace('torch.', '')}; thresholds: |z| <= "
        f"{tols.INIT_Z:g} and D <= critical at alpha = {tols.INIT_ALPHA:.1g} per test ({tols.INIT_FAMILY_ALPHA:g} "
        f"family-wise over at most {tols.INIT_MAX_TESTS} tests per run; bnverify.tolerances, initializer section)"
        + _explanation(x, law, reference, shape, kwargs, conv))


def _explanation(x: np.ndarray, law: Any, reference: str, shape: tuple[int, ...], kwargs: dict[str, Any],
                 conv: fam.InitConvention) -> str:
    lines = explain(x, law, fam.hypotheses(reference, shape, kwargs, conv))
    if not lines:
        lines = ["likely cause: none of the known mistakes (fan axes, mode, gain, a, sqrt(3), truncation, "
                 "conventions) explains these samples"]
    return "".join(f"\n  {line}" for line in lines)


def tails(x: np.ndarray, law: Any) -> tuple[int, int, int, float, float, float, float]:
    """``(outside, k_low, k_high, q_low, q_high, p_low, p_high)``: samples outside the support, counts in the
    outer ``INIT_TAIL_MASS`` tails and their exact binomial p-values."""
    lo, hi = law.support
    slack = tols.INIT_SUPPORT_ULPS * float(np.finfo(np.float32).eps)
    outside = int(np.sum((x < lo - slack * abs(lo)) | (x > hi + slack * abs(hi))))
    q = tols.INIT_TAIL_MASS
    ql, qh = float(law.dist.ppf(q)), float(law.dist.ppf(1 - q))
    kl, kh = int(np.sum(x < ql)), int(np.sum(x > qh))
    return outside, kl, kh, ql, qh, binom_p(kl, x.size, q), binom_p(kh, x.size, q)


def tails_ok(x: np.ndarray, law: Any) -> bool:
    outside, _, _, _, _, pl, ph = tails(x, law)
    return not outside and min(pl, ph) >= tols.INIT_ALPHA


def binom_p(k: int, n: int, p: float) -> float:
    """Two-sided exact binomial p-value of ``k`` successes in ``n`` trials of probability ``p``."""
    from scipy import stats

    lo = float(stats.binom.cdf(k, n, p))
    hi = float(stats.binom.sf(k - 1, n, p))
    return min(1.0, 2 * min(lo, hi))


def check_support(target: InitTarget, shape: tuple[int, ...], kwargs: dict[str, Any], *, seed: int, n: int,
                  context: str, observe: Callable[[float], None] | None = None, record: Record | None = None,
                  device: str = "cpu") -> int:
    """No sample outside the law's support; the outer ``INIT_TAIL_MASS`` on each side holds as many as it should.

    For a uniform law the outer tails are the edges ``[0.98 b, b]``: a bound without its sqrt(3) leaves
    them empty.  For a normal law they are the points beyond 2.33 sd: truncation empties them.
    """
    reference = target.reference or ""
    conv = fam.conv_of(target)
    law = target.law(shape, **kwargs)
    x, calls = draw(target, shape, n, seed, kwargs, device=device)
    lo, hi = law.support
    q = tols.INIT_TAIL_MASS
    outside, kl, kh, ql, qh, pl, ph = tails(x, law)
    nearness = max(math.log(max(p, 1e-300)) / math.log(tols.INIT_ALPHA) for p in (pl, ph))
    if observe is not None:
        observe(math.inf if outside else nearness)
    if record is not None:  # p-values against alpha and a count: no err/tol
        record(math.inf if outside else nearness,
               {"samples": float(x.size), "outside_support": float(outside), "samples_below": float(kl),
                "samples_above": float(kh), "expected_per_tail": q * x.size, "p_value": min(pl, ph),
                "alpha": tols.INIT_ALPHA}, context)
    if not outside and nearness <= 1:
        return 2
    what = []
    if outside:
        what.append(f"{outside} samples outside the support [{lo:.4g}, {hi:.4g}] (smallest {x.min():.4g}, largest "
                    f"{x.max():.4g})")
    for side, k, edge, p in (("below", kl, ql, pl), ("above", kh, qh, ph)):
        if math.log(max(p, 1e-300)) / math.log(tols.INIT_ALPHA) > 1:
            what.append(f"{k} samples {side} {edge:.4g} where the law puts {q:.0%} of them ({q * x.size:.0f} +- "
                        f"{math.sqrt(x.size * q * (1 - q)):.1f}; exact binomial p = {p:.2g} < {tols.INIT_ALPHA:.1g})")
    shape_word = {"uniform": "bounds", "truncnorm": "truncation points", "normal": "tails"}[law.family]
    raise CheckFailure(
        f"{context}: {describe_call(reference, kwargs)} on a {tuple(shape)} tensor: the {shape_word} of "
        f"{law.describe()} are not respected\n  " + "\n  ".join(what) + "\n"
        f"  expected ({conv.name} convention): {law.note}; smallest sample {x.min():.4g}, largest {x.max():.4g}, "
        f"n = {x.size} from {calls} call(s)" + _explanation(x, law, reference, shape, kwargs, conv))


# --------------------------------------------------------------------------- contract and generator

def _fail(msg: str) -> None:
    raise CheckFailure(msg)


def check_contract(target: InitTarget, dtype: torch.dtype, device: str, *, seed: int, full: bool = True) -> None:
    """In place, returns its tensor, keeps dtype, shape and device; with ``full``: a Parameter and a strided view."""
    ref = target.reference
    conv = fam.conv_of(target)
    geo = GEOMETRIES["conv2d-4-24-k3x5"]
    shape = geo.shape(conv.layout)
    torch.manual_seed(seed)
    dname = str(dtype).replace("torch.", "")
    t = torch.full(shape, float("nan"), dtype=dtype, device=device)
    res = target.fill(t)
    out = res.out
    where = f"init[{ref}] {target.name}(tensor {shape} {dname} on {device})"
    unfilled = int(t.isnan().sum())
    if out is None:
        _fail(f"{where} returned None: torch.nn.init's functions return the tensor they fill "
              "(w = init(w) and init(w).mul_(0.1) rely on it)"
              + ("; and the tensor was not filled in place" if unfilled else ""))
    if not isinstance(out, torch.Tensor):
        _fail(f"{where} returned {type(out).__name__}, not the tensor it filled")
    if out is not t:
        if unfilled == t.numel():
            _fail(f"{where} is not in place: the tensor passed in is left unfilled and a new tensor is returned\n"
                  "  likely cause: torch.randn(shape) * std (or tensor.normal() / a copy) instead of filling "
                  "tensor in place; nn.Module.reset_parameters ignores the return value, so the layer keeps its "
                  "old weights")
        _fail(f"{where} fills in place but returns a different tensor object (shape {tuple(out.shape)}): "
              "init(w).mul_(0.1) would scale the copy, not w; return the tensor passed in")
    if unfilled:
        _fail(f"{where} left {unfilled} of {t.numel()} elements unfilled (NaN before the call)")
    if out.dtype != dtype or tuple(out.shape) != tuple(shape) or out.device != t.device:
        _fail(f"{where} returned {tuple(out.shape)} {out.dtype} on {out.device}")
    vals = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(vals).all()):
        _fail(f"{where} wrote non-finite values ({int((~torch.isfinite(vals)).sum())} of {vals.numel()})")
    if vals.numel() > 1 and float(vals.std()) == 0.0:
        _fail(f"{where} wrote one value, {float(vals.reshape(-1)[0]):.4g}, into every element")
    if not full:
        return
    # nn.Linear/Conv's reset_parameters call the init functions on Parameters that require grad
    p = torch.nn.Parameter(torch.full(shape, float("nan"), dtype=dtype, device=device))
    try:
        pres = target.fill(p)
    except TargetError as exc:
        hint = ("\n  likely cause: an in-place operation on a leaf that requires grad outside torch.no_grad(); "
                "torch.nn.init fills under torch.no_grad()" if "requires grad" in str(exc) else "")
        raise CheckFailure(f"init[{ref}] filling an nn.Parameter (as nn.Linear.reset_parameters does) raised: "
                           f"{exc}{hint}") from None
    if bool(p.detach().isnan().any()):
        _fail(f"init[{ref}] an nn.Parameter of shape {shape} was not filled in place")
    if not p.requires_grad or p.grad is not None:
        _fail(f"init[{ref}] filling an nn.Parameter changed it: requires_grad {p.requires_grad}, grad "
              f"{'set' if p.grad is not None else 'None'}")
    if isinstance(pres.out, torch.Tensor) and pres.out.grad_fn is not None:
        _fail(f"init[{ref}] filling an nn.Parameter was recorded by autograd (grad_fn {pres.out.grad_fn}); "
              "initialisation must run under torch.no_grad()")
    # a transposed (non-contiguous) view: the base must be filled through it
    base = torch.full(tuple(reversed(shape)), float("nan"), dtype=dtype, device=device)
    view = base.permute(*reversed(range(base.dim())))
    try:
        target.fill(view)
    except TargetError as exc:
        raise CheckFailure(f"init[{ref}] filling a non-contiguous view {tuple(view.shape)} (strides "
                           f"{view.stride()}) raised: {exc}") from None
    left = int(base.isnan().sum())
    if left:
        _fail(f"init[{ref}] filling a non-contiguous view {tuple(view.shape)} (strides {view.stride()}) left "
              f"{left} of {base.numel()} elements of its base unfilled: the function fills a contiguous copy "
              "(.contiguous(), .reshape()) instead of the tensor itself")


def check_generator(target: InitTarget, device: str, *, seed: int) -> None:
    """Equal generators give equal tensors; one generator advances; the global RNG is not consumed."""
    ref = target.reference
    conv = fam.conv_of(target)
    shape = GEOMETRIES["linear-400-25"].shape(conv.layout)

    def gen(s: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(s)

    def fill(g: torch.Generator) -> torch.Tensor:
        t = torch.full(shape, float("nan"), device=device)
        out = target.fill(t, generator=g).out
        return (out if isinstance(out, torch.Tensor) and tuple(out.shape) == shape else t).detach().clone()

    def rng_states() -> list[torch.Tensor]:
        states = [torch.get_rng_state()]
        if str(device).startswith("cuda") and torch.cuda.is_available():
            states.append(torch.cuda.get_rng_state())
        return states

    torch.manual_seed(seed)
    a = fill(gen(seed))
    state = rng_states()
    g = gen(seed)
    b = fill(g)
    global_used = not all(torch.equal(x, y) for x, y in zip(state, rng_states()))
    c = fill(g)
    d = fill(gen(seed + 1))
    where = f"init[{ref}] {target.name}(tensor {shape}, generator=...)"
    if not torch.equal(a, b):
        _fail(f"{where}: two generators seeded with {seed} gave different tensors (max |difference| "
              f"{float((a - b).abs().max()):.3g})\n  likely cause: generator= is ignored and the global RNG is "
              "used: pass generator=generator to tensor.normal_/uniform_ (torch.nn.init does)")
    if global_used:
        _fail(f"{where}: the call consumed the global RNG (torch.get_rng_state() changed) although a generator "
              "was passed\n  likely cause: a draw without generator= (torch.randn, tensor.normal_()) besides the "
              "generator's")
    if torch.equal(b, c):
        _fail(f"{where}: two successive calls with one generator gave the same tensor: the generator does not "
              "advance\n  likely cause: a fresh generator seeded from generator.initial_seed() on every call")
    if torch.equal(a, d):
        _fail(f"{where}: generators seeded {seed} and {seed + 1} gave the same tensor")
