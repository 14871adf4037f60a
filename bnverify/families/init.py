"""The initializer family (seed 001): a function that fills a weight in place, held to the law it claims.

Kind ``torch-init``: a function with the signature of the ``torch.nn.init`` function it implements
(``tensor`` first, then that function's keywords: ``gain``; ``a, mode, nonlinearity``; ``mean,
std``; ``a, b``; and ``generator`` where torch has it), which fills ``tensor`` in place and returns
it.  ``--reference`` names that function (``REFERENCES``); the law it must draw from is
``bnverify.reference.initializers.law_of``.

Detection.  A plain function is ambiguous (a batch-norm functional is a function too), so the kind
is detected only for the ``torch.nn.init`` functions themselves (``bnverify check
torch.nn.init:kaiming_normal_``); any other function needs ``--kind torch-init``.  The reference is
inferred from the function's ``__name__`` when that is one of the ``torch.nn.init`` names (also
without the trailing underscore, torch's deprecated spelling); otherwise ``--reference`` is
required.

Conventions (``--convention``).  Each cell was read in the framework's source:

=================  ===========================  ===============================  ==========================
aspect             ``torch`` (default)          ``keras`` (also ``flax``)        ``seed`` (also ``cs231n``)
=================  ===========================  ===============================  ==========================
weight layout      ``(out, in, *k)``:           ``(*k, in, out)``: fans from     ``(in, out)``: seed 001's
                   ``fan_in = size(1) * rf``    the last two axes                ``randn(fan_in, fan_out)``
normal laws        untruncated                  truncated at 2 sd, std divided   untruncated
(He/Glorot)                                     by 0.87962566103423978
zero-element       ``UserWarning`` "Initializing  no warning (``max(1, fan)``)   no warning
tensor (kaiming)   zero-element tensors is a
                   no-op", tensor returned
=================  ===========================  ===============================  ==========================

Sources: torch 2.13 ``torch/nn/init.py`` (``_calculate_fan_in_and_fan_out``: ``num_input_fmaps =
tensor.size(1)``, ``num_output_fmaps = tensor.size(0)``, receptive field ``tensor.shape[2:]``;
``kaiming_normal_``: ``tensor.normal_(0, std, generator=generator)``, untruncated; the zero-element
warning in ``kaiming_uniform_``/``kaiming_normal_``); Keras 3 ``keras/src/initializers/
random_initializers.py`` (commit 107f5a80: ``compute_fans`` takes ``fan_in = shape[-2] *
receptive_field_size``, ``fan_out = shape[-1] * ...`` with ``receptive_field_size`` the product of
``shape[:-2]``; ``VarianceScaling.__call__``: ``scale /= max(1.0, fan_in)`` and for
``"truncated_normal"`` (the default, also for ``GlorotNormal``, ``HeNormal``, ``LecunNormal``)
``stddev = math.sqrt(scale) / 0.87962566103423978`` with ``random.truncated_normal``, which re-draws
values more than two standard deviations from the mean); JAX ``jax/_src/nn/initializers.py`` (commit
04f6bfa4: ``variance_scaling(..., in_axis=-2, out_axis=-1)``, "constant is stddev of standard normal
truncated to (-2, 2)", ``random.truncated_normal(key, -2, 2, ...) * stddev``), which Flax's
``flax.linen.initializers`` re-export.  Seed 001: ``Wi = np.random.randn(fan_in, fan_out) /
np.sqrt(fan_in)`` and ``/ np.sqrt(fan_in / 2.)`` (untruncated, ``(in, out)``).  ``normal_``,
``uniform_`` and ``trunc_normal_`` have no fans; their law is the same under every convention.

The checks are ``suites/test_init.py`` (quick tier) and the six-layer study
``suites/test_init_study.py`` (opt-in ``--suite init-study``).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from bnverify.families import Family, Kind, Suite
from bnverify.target import Target, TargetError, TargetLoadError

REFERENCES = ("kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "trunc_normal_",
              "normal_", "uniform_")
FAN_BASED = ("kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_")
KAIMING = ("kaiming_normal_", "kaiming_uniform_")
UNIFORM = ("kaiming_uniform_", "xavier_uniform_", "uniform_")


class InitConvention(NamedTuple):
    """How a framework lays out a weight and which normal law its He/Glorot initialisers draw."""

    name: str
    title: str
    layout: str = "torch"
    """``"torch"``: (out, in, *k); ``"keras"``: (*k, in, out)."""
    normal: str = "normal"
    """``"normal"`` (untruncated) or ``"truncated_normal"`` (at 2 sd, with the 0.8796 correction)."""
    zero_warning: bool = True
    """kaiming_* warns "Initializing zero-element tensors is a no-op" (torch)."""

    @property
    def aspects(self) -> tuple[str, str]:
        return self.layout, self.normal

    def describe(self) -> str:
        lay = "(out, in, *k) weights" if self.layout == "torch" else "(*k, in, out) kernels"
        norm = "untruncated normals" if self.normal == "normal" else "normals truncated at 2 sd with the 0.8796 correction"
        return f"{lay}, {norm}"


CONVENTIONS = {
    "torch": InitConvention("torch", "torch"),
    "keras": InitConvention("keras", "Keras/JAX/Flax", "keras", "truncated_normal", False),
    "seed": InitConvention("seed", "seed 001 (numpy, cs231n)", "keras", "normal", False),
}
CONVENTION_ALIASES = {"flax": "keras", "cs231n": "seed"}


class Geometry(NamedTuple):
    """A layer whose weight an initialiser fills: channels in and out and the kernel size."""

    name: str
    fan_in_ch: int
    fan_out_ch: int
    kernel: tuple[int, ...] = ()

    def shape(self, layout: str) -> tuple[int, ...]:
        if layout == "torch":
            return (self.fan_out_ch, self.fan_in_ch, *self.kernel)
        return (*self.kernel, self.fan_in_ch, self.fan_out_ch)

    def describe(self, layout: str) -> str:
        lay = "(out, in, *k)" if layout == "torch" else "(*k, in, out)"
        return f"{self.name}, tensor {self.shape(layout)} {lay}"


def conv_of(target: Target) -> InitConvention:
    conv = target.convention
    return conv if isinstance(conv, InitConvention) else CONVENTIONS["torch"]


# --------------------------------------------------------------------------- the target

class Filled(NamedTuple):
    out: Any
    warnings: list[str]


@dataclass
class InitTarget(Target):
    """A loaded initialiser: every call goes through ``Target.call``; warnings are recorded."""

    def parameters(self) -> dict[str, Any] | None:
        try:
            return dict(inspect.signature(self.obj).parameters)
        except (TypeError, ValueError):
            return None

    def accepts(self, keyword: str) -> bool:
        params = self.parameters()
        if params is None:
            return True
        return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def fill(self, tensor: Any, **kwargs: Any) -> Filled:
        """``obj(tensor, **kwargs)`` with the warnings it raised."""
        import warnings

        shown = ", ".join(f"{k}={v!r}" if k != "generator" else "generator=<Generator>" for k, v in kwargs.items())
        what = (f"{self.name}(tensor {tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"
                f"{', ' + shown if shown else ''})")

        def run() -> Filled:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = self.obj(tensor, **kwargs)
            return Filled(out, [f"{w.category.__name__}: {w.message}" for w in caught])

        return self.call(what, run)

    def fill_many(self, make: Any, calls: int, **kwargs: Any) -> list[tuple[Any, Any]]:
        """``calls`` fills of fresh tensors ``make()`` in one guarded call (one watchdog for the batch):
        ``[(tensor passed, value returned)]``.  Warnings are recorded and dropped (``fill`` reports them)."""
        import warnings

        probe = make()
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        what = (f"{self.name}(tensor {tuple(probe.shape)} {str(probe.dtype).replace('torch.', '')}"
                f"{', ' + shown if shown else ''}) [{calls} calls]")

        def run() -> list[tuple[Any, Any]]:
            out = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = probe
                for i in range(calls):
                    if i:
                        t = make()
                    out.append((t, self.obj(t, **kwargs)))
            return out

        return self.call(what, run)

    def law(self, shape: tuple[int, ...], convention: InitConvention | None = None, **kwargs: Any) -> Any:
        """The law the reference draws from for a tensor of ``shape`` under ``convention`` (default: the target's)."""
        from bnverify.reference import initializers as ref

        conv = convention or conv_of(self)
        return ref.law_of(self.reference or "", shape, layout=conv.layout,
                          normal_distribution=conv.normal, **kwargs)


# --------------------------------------------------------------------------- what a wrong law may be

class Hypothesis(NamedTuple):
    label: str
    law: Any
    hint: str = ""


def hypotheses(reference: str, shape: tuple[int, ...], kwargs: dict[str, Any], conv: InitConvention) -> list[Hypothesis]:
    """Laws of the known mistakes (bug classes I1-I5, seed 001's slips) and of the other conventions."""
    from bnverify.reference import initializers as ref

    kw = {**ref.DEFAULTS[reference], **kwargs}
    claimed = ref.law_of(reference, shape, layout=conv.layout, normal_distribution=conv.normal,
                         **kwargs)
    hs: list[Hypothesis] = []

    def law(**over: Any) -> Any:
        lay = over.pop("layout", conv.layout)
        dist = over.pop("normal_distribution", conv.normal)
        try:
            return ref.law_of(reference, shape, layout=lay, normal_distribution=dist, **{**kwargs, **over})
        except (ValueError, ZeroDivisionError):
            return None

    def add(label: str, lw: Any, hint: str = "") -> None:
        if lw is not None:
            hs.append(Hypothesis(label, lw, hint))

    if reference in FAN_BASED:
        fi, fo = ref.fans(shape, conv.layout)
        other_layout = "keras" if conv.layout == "torch" else "torch"
        try:
            ofi, ofo = ref.fans(shape, other_layout)
        except ValueError:
            ofi = ofo = -1
        here = "(out, in, *k)" if conv.layout == "torch" else "(*k, in, out)"
        there = "(in, out) / (*k, in, out)" if conv.layout == "torch" else "(out, in, *k)"
        if reference in KAIMING:
            mode = kw["mode"]
            swapped = "fan_out" if mode == "fan_in" else "fan_in"
            n_mode, n_other = (fi, fo) if mode == "fan_in" else (fo, fi)
            add(f"std matches {swapped} ({n_other}), not {mode} ({n_mode}): kernel laid out as {there}? the "
                f"{conv.name} convention's weights are {here}; or mode ignored", law(mode=swapped))
            gain = ref.calculate_gain(kw["nonlinearity"], kw["a"])
            if gain != 1:
                add(f"gain 1 instead of {gain:.4g}: the {kw['nonlinearity']} gain is missing (ReLU's is sqrt 2)",
                    law(nonlinearity="linear"))
            if kw["a"] and kw["nonlinearity"] == "leaky_relu":
                add("a ignored: He's ReLU gain sqrt(2) instead of sqrt(2 / (1 + a^2))"
                    + (" (I1: a=sqrt(5) is nn.Linear/Conv's default, U(+-1/sqrt(fan_in)), not He init)"
                       if abs(kw["a"] - math.sqrt(5)) < 1e-9 else ""), law(a=0.0))
                wrong = math.sqrt(2.0 / (1 + abs(kw["a"])))
                add("gain sqrt(2 / (1 + a)) instead of sqrt(2 / (1 + a^2)): a not squared", _scale(claimed, wrong / gain))
                add("a used as a scale on the weights (I2), not as leaky_relu's negative slope",
                    _scale(claimed, kw["a"] * math.sqrt(2.0) / gain))
            if reference == "kaiming_uniform_" and not kw["a"] and kw["nonlinearity"] == "leaky_relu":
                add("U(+-1/sqrt(fan_in)): torch's Linear/Conv default (a=sqrt(5)), not He initialisation (I1)",
                    law(a=math.sqrt(5.0)))
        else:
            gain = kw["gain"]
            if gain != 1:
                add(f"gain ignored (1 instead of {gain:.4g})", law(gain=1.0))
            add("std = gain / sqrt(fan_in) (LeCun, seed 001's randn / sqrt(fan_in)), not gain sqrt(2 / (fan_in + "
                "fan_out))", _scale(claimed, math.sqrt((fi + fo) / (2 * fi))) if fi else None)
            add("std = gain sqrt(1 / (fan_in + fan_out)): the 2 is missing", _scale(claimed, math.sqrt(0.5)))
        if ofi >= 0 and (ofi, ofo) != (fi, fo):
            add(f"fans taken from a {there} layout (fan_in {ofi}, fan_out {ofo} instead of {fi}, {fo}): the "
                f"{conv.name} convention's weights are {here}", law(layout=other_layout))
        std = claimed.std
        add(f"std = {std * std:.4g}: the variance gain^2 / fan used as the standard deviation (square root missing)",
            _scale(claimed, std))
    if reference in UNIFORM:
        add("bound = std: the sqrt(3) of the uniform bound is missing (I3)", _scale(claimed, 1 / math.sqrt(3.0)))
        add("bound sqrt(3) times too wide (sqrt(3) applied twice)", _scale(claimed, math.sqrt(3.0)))
        add("a normal law with the right std where a uniform one is meant", ref.normal(claimed.mean, claimed.std))
    if reference == "uniform_":
        a, b = kw["a"], kw["b"]
        add("U(a, a + b): b used as the width (scipy's loc/scale)", ref.uniform(a, a + b) if b > 0 else None)
        if a != -b and b > 0:
            add("a ignored: U(-b, b)", ref.uniform(-b, b))
    if reference in ("kaiming_normal_", "xavier_normal_"):
        std = claimed.std
        if conv.normal == "normal":
            add("truncated at 2 sd without a correction (std 0.88x)", ref.trunc_normal(0.0, std, -2 * std, 2 * std))
            add("truncated at 2 sd with the 0.8796 correction: Keras/JAX variance_scaling; torch's normal "
                "initialisers are untruncated", law(normal_distribution="truncated_normal"))
        else:
            pre = claimed.scale * ref.TRUNC_STD_2
            add("truncated at 2 sd without the 0.8796 correction: std 0.88x what it should be (I5)",
                ref.trunc_normal(0.0, pre, -2 * pre, 2 * pre))
            add("untruncated normal: Keras/JAX truncate at 2 sd (and correct the std by 0.8796)",
                law(normal_distribution="normal"))
        add("a uniform law with the right std where a normal one is meant", ref.uniform(-math.sqrt(3) * std,
                                                                                         math.sqrt(3) * std))
    if reference == "normal_":
        mean, std = kw["mean"], kw["std"]
        if mean:
            add("mean ignored", ref.normal(0.0, std))
        if std != 1:
            add("std used as the variance (std = sqrt(std))", ref.normal(mean, math.sqrt(std)))
            add("std squared (the variance drawn as the std)", ref.normal(mean, std * std))
    if reference == "trunc_normal_":
        mean, std, a, b = kw["mean"], kw["std"], kw["a"], kw["b"]
        add("a, b taken as multiples of std (they are absolute values in torch's trunc_normal_)",
            ref.trunc_normal(mean, std, mean + a * std, mean + b * std))
        add("not truncated: N(mean, std^2)", ref.normal(mean, std))
        if mean:
            add("mean ignored", ref.trunc_normal(0.0, std, a, b))
    for other in CONVENTIONS.values():
        if other.aspects != conv.aspects:
            add(f"the {other.title} convention ({other.describe()})", law(layout=other.layout,
                normal_distribution=other.normal), f"pass --convention {other.name}")
    return hs


def _scale(law: Any, factor: float) -> Any:
    return law.scaled(factor) if factor > 0 and math.isfinite(factor) else None


# --------------------------------------------------------------------------- loading

def _torch_init_name(obj: Any) -> str | None:
    """The torch.nn.init name of ``obj`` if it *is* that torch.nn.init function."""
    import torch.nn.init

    name = getattr(obj, "__name__", None)
    if not isinstance(name, str) or name not in REFERENCES:
        return None
    return name if getattr(torch.nn.init, name, None) is obj else None


def _detect(obj: Any) -> bool:
    """Only torch.nn.init's own functions are detected; a user's function needs ``--kind torch-init``."""
    try:
        return _torch_init_name(obj) is not None
    except Exception:
        return False


def _validate(obj: Any, spec: str) -> None:
    if inspect.isclass(obj) or inspect.ismodule(obj) or not callable(obj):
        raise TargetLoadError(f"{spec!r} is not a function, so it cannot be of kind torch-init (a function "
                              "that fills a tensor in place and returns it, with the signature of the "
                              "torch.nn.init function it implements)")
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            inspect.Parameter.VAR_POSITIONAL):
        raise TargetLoadError(f"{spec!r} takes no positional tensor argument; a torch-init target is called as "
                              "fn(tensor, **keywords) like torch.nn.init's functions")


def infer_reference(obj: Any, kind: str) -> str | None:
    """The function's own name when it is a torch.nn.init name (``kaiming_normal_``, or ``kaiming_normal``)."""
    name = getattr(obj, "__name__", "")
    if not isinstance(name, str):
        return None
    if name in REFERENCES:
        return name
    return name + "_" if name + "_" in REFERENCES else None


def make_target(obj: Any, kind: str, spec: str, name: str, convention: Any) -> InitTarget:
    return InitTarget(name=name, kind=kind, obj=obj, spec=spec, convention=convention)


# --------------------------------------------------------------------------- fingerprint

def probe(target: InitTarget) -> dict[str, str]:
    """What the initialiser does, measured: the convention its law follows (layout and truncation), the
    mistake that explains it otherwise, and its contract (in place, generator, low rank, zero elements)."""
    import torch

    from bnverify import init_check as ic

    out: dict[str, str] = {}
    reference = target.reference or ""
    n = 8192
    geos = (ic.GEOMETRIES["linear-400-25"], ic.GEOMETRIES["conv2d-4-24-k3x5"])
    matching = []
    for c in CONVENTIONS.values():
        ok = True
        for geo in geos:
            shape = geo.shape(c.layout)
            try:
                x, _ = ic.draw(target, shape, n, ic.derive_seed(0, "fingerprint", geo.name, c.name), {})
            except TargetError as exc:
                out["error"] = str(exc).splitlines()[0]
                ok = False
                break
            law = target.law(shape, c)
            ok = ok and ic.fits(x, law) and ic.tails_ok(x, law)
        if ok:
            matching.append(c)
    shape = geos[0].shape("torch")
    if "error" not in out:
        x, _ = ic.draw(target, shape, n, ic.derive_seed(0, "fingerprint", "torch-layout"), {})
        law = target.law(shape, CONVENTIONS["torch"])
        out["samples on a (25, 400) tensor"] = (f"mean {x.mean():.3g}, std {x.std():.4g} (torch's law: {law.std:.4g}), "
                                                f"max |x| {abs(x).max():.4g} = {abs(x).max() / x.std():.3g} sd")
        if reference in FAN_BASED:
            layouts = {c.layout for c in matching}
            out["weight layout"] = (" and ".join("(out, in, *k), fans from size(1) and size(0)" if lay == "torch" else
                                                 "(*k, in, out), fans from the last two axes" for lay in sorted(layouts))
                                    or "neither (see below)")
        if reference in ("kaiming_normal_", "xavier_normal_"):
            beyond = float(np.mean(np.abs(x - x.mean()) > 2.33 * x.std()))
            out["normal law"] = (f"{beyond:.2%} of samples beyond 2.33 sd (untruncated: 1.98%); "
                                 + ("untruncated" if beyond > 0.01 else "truncated"))
        if not matching:
            hyps = [h.label for h in hypotheses(reference, shape, {}, CONVENTIONS["torch"])
                    if ic.fits(x, h.law) and ic.tails_ok(x, h.law)]
            out["explained by"] = "; ".join(hyps[:2]) if hyps else "none of the known laws"
    out["matching convention"] = ", ".join(c.name for c in matching) if matching else "none"
    t = torch.full((8, 4), float("nan"))
    try:
        res = target.fill(t)
        out["in place, returns its tensor"] = ("yes" if res.out is t and not bool(t.isnan().any()) else
                                               "returns a new tensor" if res.out is not t else "no")
    except TargetError as exc:
        out["in place, returns its tensor"] = f"error: {str(exc).splitlines()[0]}"
    if target.accepts("generator"):
        try:
            a = target.fill(torch.empty(8, 4), generator=torch.Generator().manual_seed(5)).out
            b = target.fill(torch.empty(8, 4), generator=torch.Generator().manual_seed(5)).out
            out["generator"] = "reproduces" if torch.equal(a, b) else "ignored (two equal generators, different values)"
        except TargetError as exc:
            out["generator"] = f"error: {str(exc).splitlines()[0]}"
    else:
        out["generator"] = "not in the signature"
    if reference in FAN_BASED:
        try:
            target.fill(torch.empty(5))
            out["1-D tensor"] = "filled (torch raises ValueError)"
        except TargetError as exc:
            out["1-D tensor"] = f"raises {type(exc.__cause__).__name__ if exc.__cause__ else 'an error'}"
    try:
        res = target.fill(torch.empty(0, 3))
        out["zero-element tensor"] = "; ".join(res.warnings) or "no warning"
    except TargetError as exc:
        out["zero-element tensor"] = f"raises {type(exc.__cause__).__name__ if exc.__cause__ else 'an error'}"
    return out


def fingerprint(target: InitTarget, device: str = "cpu", as_json: bool = False) -> str:
    """``bnverify fingerprint`` for an initialiser: its law, layout and truncation, measured by sampling it."""
    res = {"target": target.spec, "reference": target.reference, **probe(target)}
    if as_json:
        return json.dumps(res, indent=2)
    from bnverify.tables import key_values

    return key_values(res.items())


FAMILY = Family(
    name="init",
    title="initializer",
    kinds=(Kind("torch-init", "a function that fills a tensor in place and returns it, with the signature of the "
                "torch.nn.init function it implements (detected only for torch.nn.init's own functions; "
                "otherwise pass --kind torch-init)", _detect, _validate, usually_named=True),),
    suites=(Suite("init", "quick", summary="the claimed law (KS and moments) over linear and conv shapes, fan axes "
                  "and mode, gain and a, uniform bounds and truncation, in place, dtype, generator, errors"),
            Suite("init-study", "full", opt_in=True,
                  summary="seed 001's six-layer study: per-layer activation std and histograms, tanh and ReLU, "
                          "beside the reference and the seed's four initialisations")),
    conventions=dict(CONVENTIONS),
    convention_aliases=dict(CONVENTION_ALIASES),
    make_target=make_target,
    references=REFERENCES,
    infer_reference_from=infer_reference,
    fingerprint=fingerprint,
)
