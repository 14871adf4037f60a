"""Invariances: scale (eps scaled exactly, eps fixed, negative scales), shift, gradients through a
preceding Linear/Conv (seed 003), weight/gradient orthogonality under SGD, batch permutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import bncheck, invariance
from bnverify.strategies import Case, cases, make_input, to_dtype_values, upstream_grad

pytestmark = [pytest.mark.bnverify_suite("invariance"), pytest.mark.bnverify_tier("quick")]

DTYPES = [torch.float64, torch.float32]
"""Each example sweeps up to 14 scales: a fifth of the tier's examples covers as many evaluations as the forward suite."""


def _id(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _rank(target, device, data) -> int:
    ranks = target.supported_ranks(device) or [2]
    return data.draw(st.sampled_from(ranks), label="rank")


@st.composite
def layer_cases(draw, layer: str, dtype: torch.dtype, *, bias: bool = False) -> invariance.LayerCase:
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
    return invariance.LayerCase(layer, u, W, b, dtype, eps, gamma, beta, seed)


def _dy(lc: invariance.LayerCase) -> np.ndarray:
    z = invariance.layer_forward(lc, lc.W)
    return upstream_grad(np.random.default_rng(lc.seed + 2), z.shape, lc.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_scale_exact(bn_target, bn_device, bn_check, dtype, data):
    """t(a x; eps a^2) = t(x; eps) for a = 2^k over the dtype's range: exact in binary floating point."""
    case = data.draw(cases(_rank(bn_target, bn_device, data), dtype), label="case")
    invariance.scale_exact(bn_target, case, bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_scale_negative(bn_target, bn_device, bn_check, data):
    """For a = -2^k the normalised output flips sign exactly: t(a x; eps a^2) - beta = -(t(x; eps) - beta)."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    case = data.draw(cases(_rank(bn_target, bn_device, data), dtype), label="case")
    invariance.scale_exact(bn_target, case, bn_device, bn_check, negative=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_scale_fixed_eps(bn_target, bn_device, bn_check, dtype, data):
    """With eps held fixed, t(a x) = t(x) up to eps's exact effect wherever a^2 var >> eps (a = 10^s)."""
    case = data.draw(cases(_rank(bn_target, bn_device, data), dtype), label="case")
    invariance.scale_fixed_eps(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_shift(bn_target, bn_device, bn_check, dtype, data):
    """t(x + b) = t(x) for per-channel shifts b from 0.1 to 1e6 standard deviations."""
    case = data.draw(cases(_rank(bn_target, bn_device, data), dtype), label="case")
    direction = np.random.default_rng(case.seed + 5).choice([-1.0, 1.0], case.shape[1])
    invariance.shift(bn_target, case, bn_device, bn_check, direction)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_linear_bias_grad(bn_target, bn_device, bn_check, data):
    """In Linear(bias=True) -> target, no gradient reaches the Linear's bias: sum over the batch of dL/dz = 0."""
    bncheck.require_rank(bn_target, 2, bn_device)
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    lc = data.draw(layer_cases("linear", dtype, bias=True), label="layer")
    invariance.linear_bias_grad(bn_target, lc, _dy(lc), bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_grad_scale_linear(bn_target, bn_device, bn_check, dtype, data):
    """Linear -> target: W -> a W leaves dL/du unchanged and scales dL/dW by 1/a (seed 003)."""
    bncheck.require_rank(bn_target, 2, bn_device)
    lc = data.draw(layer_cases("linear", dtype), label="layer")
    invariance.grad_scale(bn_target, lc, _dy(lc), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_grad_scale_conv(bn_target, bn_device, bn_check, data):
    """Conv2d -> target (rank 4): W -> a W leaves dL/du unchanged and scales dL/dW by 1/a (seed 003)."""
    bncheck.require_rank(bn_target, 4, bn_device)
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    lc = data.draw(layer_cases("conv", dtype), label="layer")
    invariance.grad_scale(bn_target, lc, _dy(lc), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_weight_orthogonality(bn_target, bn_device, bn_check, data):
    """<w_k, dL/dw_k> = 0 up to eps's exact term, so plain SGD only grows ||w_k||; reports the norm growth
    and the effective learning rate lr/||w||^2 over 3 steps."""
    bncheck.require_rank(bn_target, 2, bn_device)
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    lc = data.draw(layer_cases("linear", dtype, bias=data.draw(st.booleans(), label="bias")), label="layer")
    invariance.weight_orthogonality(bn_target, lc, _dy(lc), bn_device, bn_check)


@st.composite
def permutation_cases(draw, rank: int, dtype: torch.dtype) -> Case:
    """Batches larger than the other suites draw (up to 96 samples), so a statistic of part of the batch shows."""
    n = draw(st.integers(33, 96) if rank == 2 else st.integers(9, 40), label="N")
    c = draw(st.integers(1, 4), label="C")
    shape = (n, c) + tuple(draw(st.integers(1, 3), label=f"S{i}") for i in range(rank - 2))
    base = draw(cases(rank, dtype, max_numel=2), label="hyper")
    rng = np.random.default_rng(base.seed)
    x = to_dtype_values(make_input(rng, shape, "normal", base.eps), dtype)
    gamma = beta = None
    if base.affine:
        gamma = to_dtype_values(rng.uniform(0.2, 3.0, c) * rng.choice([-1.0, 1.0], c), dtype)
        beta = to_dtype_values(rng.uniform(-3.0, 3.0, c), dtype)
    return Case(x, dtype, base.eps, base.affine, gamma, beta, base.momentum, "normal", base.seed)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_batch_permutation(bn_target, bn_device, bn_check, data):
    """In training, permuting the batch permutes the output and dx; dgamma, dbeta, running stats unchanged."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    case = data.draw(permutation_cases(_rank(bn_target, bn_device, data), dtype), label="case")
    rng = np.random.default_rng(case.seed + 7)
    perm = rng.permutation(case.shape[0])
    dy = upstream_grad(rng, case.shape, dtype)
    invariance.permutation(bn_target, case, bn_device, bn_check, perm, dy)
