"""Dropout in numpy float64, direct and inverted (seed 001), for the ``dropout`` suite.

Seed 001 gives both forms, with ``p`` the probability of *dropping* a unit:

* direct: training ``y = x * mask``; test ``y = (1 - p) x`` (scale at test time);
* inverted: training ``y = x * mask / (1 - p)``; test ``y = x`` (scale in training),
  which is what ``torch.nn.Dropout``, Keras and Flax do.

``mask`` keeps each element independently with probability ``1 - p``.  With
``p = 1`` every unit is dropped and the output is 0 (torch's convention).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Scaling = Literal["inverted", "direct"]

__all__ = ["Scaling", "make_mask", "dropout_train", "dropout_eval"]


def make_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Boolean keep-mask: each element kept independently with probability ``1 - p``."""
    return rng.random(shape) >= p


def dropout_train(x: np.ndarray, keep: np.ndarray, p: float, scaling: Scaling = "inverted") -> np.ndarray:
    """Training-mode dropout with a given keep-mask."""
    x = np.asarray(x, dtype=np.float64)
    if p >= 1.0:
        return np.zeros_like(x)
    scale = 1.0 / (1.0 - p) if scaling == "inverted" else 1.0
    return np.where(keep, x * scale, 0.0)


def dropout_eval(x: np.ndarray, p: float, scaling: Scaling = "inverted") -> np.ndarray:
    """Test-mode dropout: identity (inverted) or ``(1 - p) x`` (direct)."""
    x = np.asarray(x, dtype=np.float64)
    return x.copy() if scaling == "inverted" else (1.0 - p) * x
