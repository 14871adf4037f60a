"""The convergence protocol: what is trained, for how long, how it is judged, and its random streams.

:class:`Protocol` holds the training fields (which key the cache of built-in curves) and the judging
fields; ``FULL_TIER_EPOCHS`` and ``FULL_MNIST_EPOCHS`` are the full tier's horizons; :func:`_derive_seed`
gives every run independent weight, bias, data and global-RNG streams derived from its one seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from bnverify.mnist import Split

#: Epochs of the full tier on the embedded digits: the seed's own horizon ("in fifty
#: epochs"), by which the reference has plateaued (95.1 +/- 0.4 % over 15 seeds) and the
#: plain network has not reached 90 % in any seed.  Measured on the 2-core machine:
#: 3 seeds x (target + reference + no-BN) plus one twin run, 29-34 s (about 0.05-0.07 s
#: an epoch per network), 55-68 s with two threads on a busy machine; a second target
#: reusing the cached reference and no-BN curves, 12-14 s.
FULL_TIER_EPOCHS = 50
#: Epochs on full MNIST (60,000 images, 600 steps an epoch): the reference reaches 98 %
#: in about 10 (seed 002); 20 leave room for a slower target.
FULL_MNIST_EPOCHS = 20

#: The activations a protocol may name, and the layer each one builds.
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
_INITS = ("torch", "normal", "xavier", "lecun", "he")

# Independent random streams derived from one seed.
_STREAM_WEIGHTS, _STREAM_BIASES, _STREAM_DATA, _STREAM_GLOBAL = 0, 1, 2, 3


def _derive_seed(seed: int, stream: int) -> int:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


@dataclass(frozen=True)
class Protocol:
    """What is trained and how it is judged.

    Training fields (they key the reference cache): ``hidden`` widths,
    ``activation``, norm ``placement`` ("before" or "after" the activation),
    weight ``init`` ("torch": U(+-1/sqrt(fan_in)) as ``nn.Linear``; "normal":
    N(0, init_scale^2); "xavier": Glorot normal, std sqrt(2/(fan_in+fan_out));
    "lecun": std 1/sqrt(fan_in), seed 001's "Xavier" formula; "he": std
    sqrt(2/fan_in)), ``lr``, ``batch_size``, ``momentum`` (0: plain SGD as in
    the seed), ``epochs``, ``eval_batch`` (test-set chunk size in eval mode),
    ``eval_train`` (also evaluate the whole training set each epoch).

    Judging fields: ``seeds``, ``target_accuracy`` (0.90 embedded, 0.98 full
    MNIST), ``confidence`` of the one-sided bounds, ``final_window`` (epochs
    averaged for the final accuracy).
    """

    hidden: tuple[int, ...] = (300, 50)
    lr: float = 0.01
    batch_size: int = 100
    epochs: int = FULL_TIER_EPOCHS
    seeds: tuple[int, ...] = (0, 1, 2)
    target_accuracy: float = 0.90
    optimizer: str = "sgd"
    momentum: float = 0.0
    activation: str = "relu"
    placement: str = "before"
    init: str = "torch"
    init_scale: float | None = None
    confidence: float = 0.99
    final_window: int = 5
    eval_batch: int = 1000
    eval_train: bool = False

    def __post_init__(self) -> None:
        if self.optimizer != "sgd":
            raise ValueError(f"optimizer must be 'sgd' (the seed's protocol), got {self.optimizer!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.placement not in ("before", "after"):
            raise ValueError(f"placement must be 'before' or 'after', got {self.placement!r}")
        if self.init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {self.init!r}")
        if self.init == "normal" and self.init_scale is None:
            raise ValueError("init='normal' needs init_scale")
        if self.epochs < 1 or self.batch_size < 2 or not self.seeds:
            raise ValueError("need epochs >= 1, batch_size >= 2 and at least one seed")
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0.5, 1), got {self.confidence}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))

    @classmethod
    def embedded(cls, **overrides: Any) -> Protocol:
        """The full tier on the embedded 5,000 digits: 50 epochs, 3 seeds, target 90 %."""
        return cls(**{"epochs": FULL_TIER_EPOCHS, "target_accuracy": 0.90, **overrides})

    @classmethod
    def full_mnist(cls, **overrides: Any) -> Protocol:
        """The full tier on full MNIST: 20 epochs, 3 seeds, target 98 %."""
        return cls(**{"epochs": FULL_MNIST_EPOCHS, "target_accuracy": 0.98, **overrides})

    @classmethod
    def for_split(cls, split: Split, **overrides: Any) -> Protocol:
        return cls.embedded(**overrides) if split.is_embedded else cls.full_mnist(**overrides)

    @classmethod
    def for_suite(cls, split: Split, epochs: int | None = None, seeds: int | None = None) -> Protocol:
        """The convergence suites' protocol on ``split``; ``epochs``/``seeds`` (seeds 0..n-1) shorten it.

        ``None`` keeps the full tier (:meth:`embedded` or :meth:`full_mnist`); the suites pass
        ``--bn-convergence-epochs``/``--bn-convergence-seeds``, which are for quick experiments.
        """
        overrides: dict[str, Any] = {}
        if epochs is not None:
            overrides["epochs"] = int(epochs)
        if seeds is not None:
            overrides["seeds"] = tuple(range(int(seeds)))
        return cls.for_split(split, **overrides)

    def replace(self, **changes: Any) -> Protocol:
        return dataclasses.replace(self, **changes)

    def training_key(self) -> tuple:
        """The fields that change a training run (the seed aside): the cache key."""
        return (
            self.hidden, self.lr, self.batch_size, self.epochs, self.optimizer, self.momentum,
            self.activation, self.placement, self.init, self.init_scale, self.eval_batch, self.eval_train,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
