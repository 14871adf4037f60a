"""Framework conventions for batch norm (SPEC section 4), each cell cited from its source.

| aspect            | torch          | keras          | flax           | cs231n         |
|-------------------|----------------|----------------|----------------|----------------|
| momentum meaning  | update fraction| keep fraction  | keep fraction  | keep fraction  |
| default momentum  | 0.1            | 0.99           | 0.99           | 0.9            |
| running variance  | unbiased       | biased         | biased         | biased         |
| eps default       | 1e-5           | 1e-3           | 1e-5           | 1e-5           |
| momentum=None     | cumulative avg | n/a            | n/a            | n/a            |

Sources (read in the frameworks' own code):

* torch: ``torch/nn/modules/batchnorm.py`` (``_BatchNorm.__init__`` defaults
  ``eps=1e-5, momentum=0.1``; docstring: "the value stored in the moving
  average of the variance is calculated via the unbiased estimator";
  ``exponential_average_factor = 1.0 / float(self.num_batches_tracked)`` when
  ``momentum is None``) and ``torch/_decomp/decompositions.py::
  native_batch_norm_helper`` (``running_mean = momentum * save_mean + (1 -
  momentum) * running_mean``; ``unbiased_var = var * n / (n - 1)``).
* keras: ``keras/src/layers/normalization/batch_normalization.py``
  (``momentum=0.99, epsilon=1e-3``; ``moving_mean * momentum + mean * (1 -
  momentum)``; variance from ``ops.moments``, which is biased).
* flax: ``flax/linen/normalization.py`` (``BatchNorm`` ``momentum=0.99,
  epsilon=1e-5``; ``ra_mean.value = momentum * ra_mean.value + (1 -
  momentum) * mean``; variance ``E[x^2] - E[x]^2``, biased).
* cs231n: ``assignment2/cs231n/layers.py::batchnorm_forward`` (``momentum =
  bn_param.get("momentum", 0.9)``, ``eps = bn_param.get("eps", 1e-5)``;
  ``running_mean = momentum * running_mean + (1 - momentum) * sample_mean``;
  ``sample_var = np.var(x, axis=0)``, biased).

A named convention is the shorthand for its aspects; each aspect can also be set on its own
(``--eps``, ``--momentum``, ``--momentum-meaning``, ``--running-var``, see ``ASPECTS``), and
``Convention.with_aspects`` composes them.  The composed convention is named after its base and
the aspects that differ from it (``torch+running-var=biased``), and ``aspect_flags`` gives the
flags that rebuild it, so the report header, the tracking tags and the reproduce command all say
exactly what the target was held to.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

MomentumKind = Literal["update_fraction", "keep_fraction"]

MOMENTUM_MEANINGS: dict[str, MomentumKind] = {"new-weight": "update_fraction", "old-decay": "keep_fraction"}
"""``--momentum-meaning`` values: ``new-weight`` (m weighs the new batch, ``r = (1-m) r + m b``, torch) and
``old-decay`` (m is the decay of the old value, ``r = m r + (1-m) b``, keras, flax, cs231n)."""

RUNNING_VARS: dict[str, bool] = {"unbiased": True, "biased": False}
"""``--running-var`` values: ``unbiased`` (``m/(m-1) sigma_B^2`` is averaged, torch) or ``biased`` (``sigma_B^2``)."""

ASPECTS = ("momentum-meaning", "momentum", "running-var", "eps")
"""The aspects a flag can set on its own, in the order a composed name lists them."""


def format_number(x: float) -> str:
    """``1e-06`` -> ``1e-6``, ``0.1`` -> ``0.1``: a float as a flag value, short and exact to 4 digits."""
    text = f"{x:.4g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text


def meaning_name(kind: str) -> str:
    """The ``--momentum-meaning`` value of a momentum kind."""
    return next(k for k, v in MOMENTUM_MEANINGS.items() if v == kind)


def running_var_name(unbiased: bool) -> str:
    return "unbiased" if unbiased else "biased"


def parse_eps(text: str) -> float:
    """``--eps``: a positive finite number."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number such as 1e-5, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"eps must be a positive finite number (it is added to the variance "
                                         f"under the square root), got {text!r}")
    return value


def parse_momentum(text: str) -> float:
    """``--momentum``: a number in [0, 1] (either meaning weights two values that sum to 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] such as 0.1, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"momentum must lie in [0, 1] (it weighs the new batch or the old "
                                         f"value), got {text!r}")
    return value


class Convention(NamedTuple):
    """What a target means by each batch-norm knob: declared by the user, never guessed."""

    name: str
    momentum_kind: MomentumKind
    default_momentum: float
    unbiased_running_var: bool
    default_eps: float
    supports_momentum_none: bool
    base: str = ""
    """The named convention this one was composed from (``""``: it is a named convention itself)."""

    def to_update_fraction(self, momentum: float) -> float:
        """The weight given to the new batch for a momentum value in this convention."""
        return momentum if self.momentum_kind == "update_fraction" else 1.0 - momentum

    def from_update_fraction(self, weight_new: float) -> float:
        """The momentum value that gives the new batch weight ``weight_new`` in this convention."""
        return weight_new if self.momentum_kind == "update_fraction" else 1.0 - weight_new

    @property
    def base_name(self) -> str:
        """The named convention (``--convention``) this one is, or was composed from."""
        return self.base or self.name

    def aspect_values(self) -> dict[str, str]:
        """Each aspect as its flag value: ``{"momentum-meaning": "new-weight", "momentum": "0.1", ...}``."""
        return {"momentum-meaning": meaning_name(self.momentum_kind), "momentum": format_number(self.default_momentum),
                "running-var": running_var_name(self.unbiased_running_var), "eps": format_number(self.default_eps)}

    @property
    def aspect_flags(self) -> tuple[str, ...]:
        """The aspect flags that turn ``--convention BASE`` into this convention (none for a named one)."""
        base = CONVENTIONS.get(self.base_name)
        if base is None:
            return ()
        mine, theirs = self.aspect_values(), base.aspect_values()
        out: list[str] = []
        for a in ASPECTS:
            if mine[a] != theirs[a]:
                out += ["--" + a, mine[a]]
        return tuple(out)

    def with_aspects(self, *, eps: float | None = None, momentum: float | None = None,
                     momentum_meaning: str | None = None, running_var: str | None = None) -> Convention:
        """This convention with some aspects set on their own; named ``BASE+aspect=value+...`` for the
        aspects that differ from the base (an aspect set to the base's own value changes nothing)."""
        if momentum_meaning is not None and momentum_meaning not in MOMENTUM_MEANINGS:
            raise ValueError(f"--momentum-meaning {momentum_meaning!r}: choose one of {', '.join(MOMENTUM_MEANINGS)}")
        if running_var is not None and running_var not in RUNNING_VARS:
            raise ValueError(f"--running-var {running_var!r}: choose one of {', '.join(RUNNING_VARS)}")
        conv = self._replace(
            momentum_kind=self.momentum_kind if momentum_meaning is None else MOMENTUM_MEANINGS[momentum_meaning],
            default_momentum=self.default_momentum if momentum is None else float(momentum),
            unbiased_running_var=self.unbiased_running_var if running_var is None else RUNNING_VARS[running_var],
            default_eps=self.default_eps if eps is None else float(eps),
            base=self.base_name,
        )
        flags = conv.aspect_flags
        if not flags:
            return CONVENTIONS[self.base_name]
        parts = [f"{flags[i][2:]}={flags[i + 1]}" for i in range(0, len(flags), 2)]
        return conv._replace(name="+".join([self.base_name, *parts]))

    def describe(self) -> str:
        rule = (
            "r = (1-m) r + m batch"
            if self.momentum_kind == "update_fraction"
            else "r = m r + (1-m) batch"
        )
        var = "unbiased m/(m-1)" if self.unbiased_running_var else "biased"
        return f"{self.name}: {rule}, m={self.default_momentum}, running var {var}, eps={self.default_eps:g}"


CONVENTIONS: dict[str, Convention] = {
    "torch": Convention("torch", "update_fraction", 0.1, True, 1e-5, True),
    "keras": Convention("keras", "keep_fraction", 0.99, False, 1e-3, False),
    "flax": Convention("flax", "keep_fraction", 0.99, False, 1e-5, False),
    "cs231n": Convention("cs231n", "keep_fraction", 0.9, False, 1e-5, False),
}


def get_convention(name: str) -> Convention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown convention {name!r}: choose one of {', '.join(CONVENTIONS)}"
        ) from None


def apply_aspects(convention: Any, aspects: dict[str, Any], family_title: str, kind: str) -> Any:
    """``convention`` with the aspect flags that were given (``{"eps": 1e-6, "running_var": "biased"}``;
    None values are ignored); ValueError for a family whose conventions have no such aspects."""
    given = {k: v for k, v in aspects.items() if v is not None}
    if not given:
        return convention
    if not isinstance(convention, Convention):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags} set{'s' if len(given) == 1 else ''} an aspect of a batch-norm convention; "
                         f"{'it does' if len(given) == 1 else 'they do'} not apply to {family_title} targets "
                         f"(kind {kind})")
    return convention.with_aspects(**given)


def flags_for(measured: dict[str, Any], default_convention: str) -> list[str]:
    """The ``bnverify check`` flags that hold a target to what it was measured to do.

    ``measured`` has any of ``momentum_kind``, ``unbiased``, ``default_eps``, ``default_momentum``
    (aspects that could not be measured are left out and not flagged).  The named convention that
    needs the fewest aspect flags is chosen (the kind's default first on a tie), then the aspect
    flags for what still differs.
    """
    from bnverify.tolerances import DEFAULT_EPS_RTOL, DEFAULT_MOMENTUM_ATOL

    def differing(conv: Convention) -> list[str]:
        out = []
        if "momentum_kind" in measured and measured["momentum_kind"] != conv.momentum_kind:
            out += ["--momentum-meaning", meaning_name(measured["momentum_kind"])]
        mom = measured.get("default_momentum")
        if mom is not None and abs(mom - conv.default_momentum) > DEFAULT_MOMENTUM_ATOL:
            out += ["--momentum", format_number(round(mom, 4))]
        if "unbiased" in measured and measured["unbiased"] != conv.unbiased_running_var:
            out += ["--running-var", running_var_name(measured["unbiased"])]
        e = measured.get("default_eps")
        if e is not None and abs(e - conv.default_eps) > DEFAULT_EPS_RTOL * conv.default_eps:
            out += ["--eps", format_number(float(f"{e:.3g}"))]
        return out

    order = [default_convention] + [n for n in CONVENTIONS if n != default_convention]
    best = min(order, key=lambda n: len(differing(CONVENTIONS[n])))
    return ["--convention", best, *differing(CONVENTIONS[best])]

