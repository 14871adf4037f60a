"""Hypothesis strategies for batch-norm cases: shapes, hyper-parameters and conditioned inputs.

Input values come from a numpy generator seeded by a drawn integer: far
faster than drawing every element through hypothesis, still fully
determined by the hypothesis seed, and hypothesis still shrinks the shape,
dtype and hyper-parameters of a failing case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

RANKS = (2, 3, 4, 5)
"""Input ranks the suites try: (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W)."""
DTYPES = (torch.float64, torch.float32)
HALF = (torch.float16, torch.bfloat16)


def dtype_id(d: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: the parametrize id."""
    return str(d).replace("torch.", "")


CONDITIONINGS = ("normal", "large_mean", "tiny_var", "constant_channel", "half_overflow")


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

    def describe(self) -> str:
        mu = np.abs(self.x.mean(axis=(0,) + tuple(range(2, self.x.ndim)))).max()
        sd = self.x.std(axis=(0,) + tuple(range(2, self.x.ndim))).min()
        ratio = mu / sd if sd > 0 else math.inf
        return (
            f"shape {self.shape}, {str(self.dtype).replace('torch.', '')}, eps={self.eps:.3g}, "
            f"{'affine' if self.affine else 'affine=False'}, input {self.conditioning} "
            f"(max |mean|/min std {ratio:.3g}), m={self.m} values per channel, data seed {self.seed}"
        )


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
    """Per-channel mean and spread chosen by ``conditioning``; float64 values."""
    c = shape[1]
    cshape = (1, c) + (1,) * (len(shape) - 2)
    z = rng.standard_normal(shape)
    if conditioning == "normal":
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
    cond = draw(st.sampled_from(conditionings), label="conditioning")
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
