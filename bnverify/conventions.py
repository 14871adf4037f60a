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
"""

from __future__ import annotations

from typing import Literal, NamedTuple

MomentumKind = Literal["update_fraction", "keep_fraction"]


class Convention(NamedTuple):
    """What a target means by each batch-norm knob: declared by the user, never guessed."""

    name: str
    momentum_kind: MomentumKind
    default_momentum: float
    unbiased_running_var: bool
    default_eps: float
    supports_momentum_none: bool

    def to_update_fraction(self, momentum: float) -> float:
        """The weight given to the new batch for a momentum value in this convention."""
        return momentum if self.momentum_kind == "update_fraction" else 1.0 - momentum

    def from_update_fraction(self, weight_new: float) -> float:
        """The momentum value that gives the new batch weight ``weight_new`` in this convention."""
        return weight_new if self.momentum_kind == "update_fraction" else 1.0 - weight_new

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
