"""Weight initialisers as *laws*: the distribution a correct initialiser draws from, for a shape.

Every function here returns a ``Law`` (a distribution family and its parameters) instead of
samples, so that a check can compare a target's samples with it (Kolmogorov-Smirnov, moments,
support).  ``Law.dist`` is the scipy.stats frozen distribution; ``sample`` draws from a law in
float64 (the six-layer study uses it for the reference weights).

Shared interface: ``law = f(shape, <the torch.nn.init keywords>, *, layout=..., distribution=...)``.

Fans (``fans``).  A weight's fan-in is the number of inputs one output unit sums, its fan-out the
number of outputs one input reaches.  Two layouts:

* ``"torch"``: ``(out, in, *kernel)`` (``nn.Linear.weight``, ``nn.Conv*d.weight``);
  ``fan_in = in * prod(kernel)``, ``fan_out = out * prod(kernel)``.  Fewer than 2 dimensions is a
  ``ValueError`` (``torch/nn/init.py::_calculate_fan_in_and_fan_out``).
* ``"keras"``: ``(*kernel, in, out)`` (Keras/JAX kernels, and seed 001's ``randn(fan_in, fan_out)``);
  ``fan_in = in * prod(kernel)`` from the last two axes (``keras/src/initializers/random_initializers.py
  ::compute_fans``; ``jax/_src/nn/initializers.py::_compute_fans`` with ``in_axis=-2, out_axis=-1``).
  0-D gives (1, 1) and 1-D gives (n, n), as in Keras.

The laws (``gain`` from ``calculate_gain``, torch's table)::

    xavier_normal     N(0, s^2),   s = gain sqrt(2 / (fan_in + fan_out))        Glorot & Bengio (2010)
    xavier_uniform    U(-b, b),    b = sqrt(3) s
    kaiming_normal    N(0, s^2),   s = gain / sqrt(fan),  gain = sqrt(2 / (1 + a^2)) for leaky_relu
    kaiming_uniform   U(-b, b),    b = sqrt(3) s                                 He et al. (2015)
    linear_default    kaiming_uniform with a = sqrt(5):  b = 1 / sqrt(fan_in)     (nn.Linear / nn.Conv*d)
    trunc_normal      N(mean, std^2) conditioned on [a, b]  (a, b absolute values, std before truncation)
    variance_scaling  Keras/JAX: var = scale / max(1, n), n = fan_in | fan_out | (fan_in + fan_out) / 2

``distribution="truncated_normal"`` (Keras/Flax ``VarianceScaling``, their default for Glorot/He/
LeCun normal) draws N(0, (s / 0.8796...)^2) truncated at 2 of its own standard deviations: the
constant ``TRUNC_STD_2 = 0.87962566103423978`` is the standard deviation of a standard normal
truncated to [-2, 2], so the samples' standard deviation is ``s`` after truncation.

Seed 001's forms (``seed_form``): ``small`` ``0.01 * randn``, ``large`` ``1.00 * randn``,
``xavier-seed`` ``randn(fan_in, fan_out) / sqrt(fan_in)``, ``he-seed`` ``randn(...) / sqrt(fan_in / 2)``.

Warning:
    PyTorch's ``kaiming_normal_``/``xavier_normal_`` are *untruncated*; Keras's ``HeNormal``/
    ``GlorotNormal`` and JAX's ``he_normal``/``glorot_normal`` are truncated with the 0.8796
    correction; and ``torch.nn.init.trunc_normal_``'s ``a, b`` are absolute bounds, not multiples of
    ``std``, so ``trunc_normal_(w, std=0.02)`` is practically untruncated.  Linear's default
    ``kaiming_uniform_(w, a=sqrt(5))`` is U(+-1/sqrt(fan_in)), not He initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

Layout = Literal["torch", "keras"]
Normal = Literal["normal", "truncated_normal"]

TRUNC_STD_2 = 0.87962566103423978
"""Standard deviation of N(0, 1) truncated to [-2, 2] (Keras ``VarianceScaling``, JAX ``variance_scaling``)."""

SEED_FORMS = ("small", "large", "xavier-seed", "he-seed")

DEFAULTS: dict[str, dict[str, Any]] = {
    "xavier_uniform_": {"gain": 1.0},
    "xavier_normal_": {"gain": 1.0},
    "kaiming_uniform_": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "kaiming_normal_": {"a": 0.0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "trunc_normal_": {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0},
    "normal_": {"mean": 0.0, "std": 1.0},
    "uniform_": {"a": 0.0, "b": 1.0},
}
"""The keywords (besides ``tensor`` and ``generator``) of each torch.nn.init function, with torch's defaults."""

FAN_BASED = ("xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


@dataclass(frozen=True)
class Law:
    """A distribution an initialiser draws every element from, independently.

    ``family`` is ``"normal"`` (N(loc, scale^2)), ``"uniform"`` (U(loc - scale, loc + scale)) or
    ``"truncnorm"`` (N(loc, scale^2) conditioned on [low, high]).  ``note`` says how it was derived.
    """

    family: str
    loc: float = 0.0
    scale: float = 1.0
    low: float = -math.inf
    high: float = math.inf
    note: str = ""

    @property
    def dist(self) -> Any:
        """The scipy.stats frozen distribution."""
        from scipy import stats

        if self.family == "normal":
            return stats.norm(self.loc, self.scale)
        if self.family == "uniform":
            return stats.uniform(self.loc - self.scale, 2 * self.scale)
        return stats.truncnorm((self.low - self.loc) / self.scale, (self.high - self.loc) / self.scale,
                               self.loc, self.scale)

    @property
    def mean(self) -> float:
        return self.loc if self.family != "truncnorm" else float(self.dist.mean())

    @property
    def std(self) -> float:
        if self.family == "normal":
            return self.scale
        if self.family == "uniform":
            return self.scale / math.sqrt(3.0)
        return float(self.dist.std())

    @property
    def support(self) -> tuple[float, float]:
        if self.family == "uniform":
            return self.loc - self.scale, self.loc + self.scale
        if self.family == "truncnorm":
            return self.low, self.high
        return -math.inf, math.inf

    @property
    def central_moment4(self) -> float:
        """E[(x - mean)^4], for the sampling variance of the second moment."""
        if self.family == "normal":
            return 3 * self.scale**4
        if self.family == "uniform":
            return self.scale**4 / 5
        kurt = float(self.dist.stats(moments="k"))
        return (kurt + 3) * self.std**4

    def cdf(self, x: np.ndarray) -> np.ndarray:
        if self.family == "normal":
            from scipy.special import ndtr

            return np.asarray(ndtr((x - self.loc) / self.scale))
        if self.family == "uniform":
            return np.clip((x - self.loc + self.scale) / (2 * self.scale), 0.0, 1.0)
        from scipy.special import ndtr

        lo, hi = ndtr((self.low - self.loc) / self.scale), ndtr((self.high - self.loc) / self.scale)
        z = ndtr((np.clip(x, self.low, self.high) - self.loc) / self.scale)
        return np.asarray((z - lo) / (hi - lo))

    def scaled(self, factor: float, note: str = "") -> Law:
        """The law of ``loc + factor (x - loc)``."""
        lo, hi = self.low, self.high
        if self.family == "truncnorm":
            lo, hi = self.loc + factor * (lo - self.loc), self.loc + factor * (hi - self.loc)
        return replace(self, scale=self.scale * factor, low=lo, high=hi, note=note or self.note)

    def describe(self) -> str:
        if self.family == "normal":
            return f"N({self.loc:.4g}, {self.scale:.4g}^2)"
        if self.family == "uniform":
            lo, hi = self.support
            return f"U({lo:.4g}, {hi:.4g})"
        return (f"N({self.loc:.4g}, {self.scale:.4g}^2) truncated to [{self.low:.4g}, {self.high:.4g}] "
                f"(std {self.std:.4g})")


def normal(mean: float = 0.0, std: float = 1.0) -> Law:
    """``torch.nn.init.normal_``: N(mean, std^2)."""
    return Law("normal", mean, std, note=f"N(mean={mean:g}, std={std:g})")


def uniform(a: float = 0.0, b: float = 1.0) -> Law:
    """``torch.nn.init.uniform_``: U(a, b)."""
    return Law("uniform", (a + b) / 2, (b - a) / 2, note=f"U(a={a:g}, b={b:g})")


def trunc_normal(mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> Law:
    """``torch.nn.init.trunc_normal_``: N(mean, std^2) conditioned on [a, b]; no std correction."""
    return Law("truncnorm", mean, std, a, b,
               note=f"N(mean={mean:g}, std={std:g}) truncated to the absolute bounds [a={a:g}, b={b:g}]")


# --------------------------------------------------------------------------- fans and gains

def fans(shape: tuple[int, ...], layout: Layout = "torch") -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` in ``layout`` (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    if layout == "torch":
        if len(shape) < 2:
            raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
        rf = math.prod(shape[2:])
        return shape[1] * rf, shape[0] * rf
    if layout != "keras":
        raise ValueError(f"unknown layout {layout!r}: 'torch' (out, in, *k) or 'keras' (*k, in, out)")
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    rf = math.prod(shape[:-2])
    return shape[-2] * rf, shape[-1] * rf


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch's ``calculate_gain`` table (``torch/nn/init.py``, 2.13).

    ==========================================  ==============================
    linear, conv1d/2d/3d, conv_transpose1d/2d/3d, sigmoid   1
    tanh                                          5/3
    relu                                          sqrt(2)
    leaky_relu (negative slope ``param``, 0.01)  sqrt(2 / (1 + slope^2))
    selu                                          3/4 (found empirically, pytorch#50664)
    ==========================================  ==============================
    """
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
    if nonlinearity in linear or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif (not isinstance(param, bool) and isinstance(param, int)) or isinstance(param, float):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _scaled_normal(std: float, distribution: Normal, note: str) -> Law:
    if distribution == "normal":
        return Law("normal", 0.0, std, note=note)
    if distribution != "truncated_normal":
        raise ValueError(f"unknown distribution {distribution!r}: 'normal' or 'truncated_normal'")
    pre = std / TRUNC_STD_2
    return Law("truncnorm", 0.0, pre, -2 * pre, 2 * pre,
               note=f"{note}, truncated at 2 sd with the 0.8796 correction (Keras/JAX)")


def _uniform(std: float, note: str) -> Law:
    bound = math.sqrt(3.0) * std
    return Law("uniform", 0.0, bound, note=f"{note}, bound = sqrt(3) std = {bound:.4g}")


# --------------------------------------------------------------------------- Glorot / He

def xavier_std(shape: tuple[int, ...], gain: float = 1.0, *, layout: Layout = "torch") -> tuple[float, str]:
    fan_in, fan_out = fans(shape, layout)
    if fan_in + fan_out == 0:
        raise ValueError("fan_in + fan_out is 0: a zero-element tensor has no law")
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return std, (f"std = gain sqrt(2 / (fan_in + fan_out)) = {gain:.4g} sqrt(2 / ({fan_in} + {fan_out})) "
                 f"= {std:.4g}")


def xavier_normal(shape: tuple[int, ...], gain: float = 1.0, *, layout: Layout = "torch",
                  distribution: Normal = "normal") -> Law:
    """Glorot normal: N(0, s^2) with ``s = gain sqrt(2 / (fan_in + fan_out))`` (or truncated, corrected)."""
    std, note = xavier_std(shape, gain, layout=layout)
    return _scaled_normal(std, distribution, note)


def xavier_uniform(shape: tuple[int, ...], gain: float = 1.0, *, layout: Layout = "torch") -> Law:
    """Glorot uniform: U(-b, b) with ``b = gain sqrt(6 / (fan_in + fan_out))``."""
    std, note = xavier_std(shape, gain, layout=layout)
    return _uniform(std, note)


def kaiming_std(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                *, layout: Layout = "torch") -> tuple[float, str]:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of ['fan_in', 'fan_out']")
    fan_in, fan_out = fans(shape, layout)
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError("the fan is 0: a zero-element tensor has no law (torch warns and leaves it)")
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan)
    return std, f"std = gain / sqrt({mode}) = {gain:.4g} / sqrt({fan}) = {std:.4g} ({nonlinearity}, a={a:g})"


def kaiming_normal(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   *, layout: Layout = "torch", distribution: Normal = "normal") -> Law:
    """He normal: N(0, s^2), ``s = gain / sqrt(fan)`` (or truncated with the correction, Keras/JAX)."""
    std, note = kaiming_std(shape, a, mode, nonlinearity, layout=layout)
    return _scaled_normal(std, distribution, note)


def kaiming_uniform(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    *, layout: Layout = "torch") -> Law:
    """He uniform: U(-b, b), ``b = gain sqrt(3 / fan)``."""
    std, note = kaiming_std(shape, a, mode, nonlinearity, layout=layout)
    return _uniform(std, note)


def linear_default(shape: tuple[int, ...], *, layout: Layout = "torch") -> Law:
    """torch's ``nn.Linear``/``nn.Conv*d`` default weight: ``kaiming_uniform_(w, a=sqrt(5))`` = U(+-1/sqrt(fan_in)).

    ``torch/nn/modules/linear.py::reset_parameters`` and ``conv.py::_ConvNd.reset_parameters``.
    """
    return kaiming_uniform(shape, a=math.sqrt(5.0), layout=layout)


def variance_scaling(shape: tuple[int, ...], scale: float = 1.0, mode: str = "fan_in",
                     distribution: str = "truncated_normal", *, layout: Layout = "keras") -> Law:
    """Keras/JAX ``VarianceScaling``: variance ``scale / max(1, n)``; normal, truncated (corrected) or uniform."""
    fan_in, fan_out = fans(shape, layout)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    std = math.sqrt(scale / max(1.0, n))
    note = f"std = sqrt(scale / {mode}) = sqrt({scale:g} / {n:g}) = {std:.4g}"
    if distribution == "uniform":
        return _uniform(std, note)
    return _scaled_normal(std, "normal" if distribution == "untruncated_normal" else "truncated_normal", note)


def seed_form(name: str, shape: tuple[int, ...], *, layout: Layout = "keras") -> Law:
    """Seed 001's initialisations by name: ``small``, ``large``, ``xavier-seed``, ``he-seed``."""
    if name == "small":
        return Law("normal", 0.0, 0.01, note="0.01 * randn (seed 001: too small)")
    if name == "large":
        return Law("normal", 0.0, 1.0, note="1.00 * randn (seed 001: too large)")
    fan_in, _ = fans(shape, layout)
    if name == "xavier-seed":
        return Law("normal", 0.0, 1 / math.sqrt(fan_in), note=f"randn / sqrt(fan_in), fan_in = {fan_in}")
    if name == "he-seed":
        return Law("normal", 0.0, 1 / math.sqrt(fan_in / 2), note=f"randn / sqrt(fan_in / 2), fan_in = {fan_in}")
    raise ValueError(f"unknown seed form {name!r}: one of {', '.join(SEED_FORMS)}")


def law_of(name: str, shape: tuple[int, ...], *, layout: Layout = "torch", normal_distribution: Normal = "normal",
           **kwargs: Any) -> Law:
    """The law of the torch.nn.init function ``name`` (e.g. ``"kaiming_normal_"``) with torch's keywords."""
    kw = {**DEFAULTS[name], **kwargs} if name in DEFAULTS else dict(kwargs)
    if name == "xavier_uniform_":
        return xavier_uniform(shape, kw["gain"], layout=layout)
    if name == "xavier_normal_":
        return xavier_normal(shape, kw["gain"], layout=layout, distribution=normal_distribution)
    if name == "kaiming_uniform_":
        return kaiming_uniform(shape, kw["a"], kw["mode"], kw["nonlinearity"], layout=layout)
    if name == "kaiming_normal_":
        return kaiming_normal(shape, kw["a"], kw["mode"], kw["nonlinearity"], layout=layout,
                              distribution=normal_distribution)
    if name == "trunc_normal_":
        return trunc_normal(kw["mean"], kw["std"], kw["a"], kw["b"])
    if name == "normal_":
        return normal(kw["mean"], kw["std"])
    if name == "uniform_":
        return uniform(kw["a"], kw["b"])
    if name in SEED_FORMS:
        return seed_form(name, shape, layout=layout)
    raise ValueError(f"no law for {name!r}")


def sample(law: Law, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Float64 samples of ``law`` (the six-layer study's reference weights)."""
    if law.family == "normal":
        return rng.normal(law.loc, law.scale, size=shape)
    if law.family == "uniform":
        lo, hi = law.support
        return rng.uniform(lo, hi, size=shape)
    return np.asarray(law.dist.rvs(size=shape, random_state=rng), dtype=np.float64)
