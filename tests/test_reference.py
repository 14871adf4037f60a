"""The references are held to hand-computed values, to each other, and to finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnverify.reference import batchnorm as ref
from bnverify.reference.batchnorm_torch import BatchNorm, batch_norm


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """cs231n's relative error: max |a-b| / max(1e-8, |a|+|b|)."""
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_grad(f, x: np.ndarray, dout: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Centred finite differences of sum(f(x) * dout) with respect to x."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f(x).copy()
        x[i] = old - h
        fm = f(x).copy()
        x[i] = old
        grad[i] = ((fp - fm) * dout).sum() / (2 * h)
    return grad


def test_forward_hand_computed():
    # one channel, values 1, 2, 3, 4: mean 2.5, biased var 1.25
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    out, cache = ref.forward_train(x, np.array([2.0]), np.array([0.5]), eps=0.0)
    expected = 2.0 * (x - 2.5) / np.sqrt(1.25) + 0.5
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)
    assert cache.m == 4
    mean, var, m = ref.batch_stats(x)
    assert (mean[0], var[0], m) == (2.5, 1.25, 4)


def test_forward_eval_and_fold_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 4))
    g, b = rng.normal(size=3), rng.normal(size=3)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    y = ref.forward_eval(x, g, b, rm, rv, 1e-3)
    scale, shift = ref.fold(g, b, rm, rv, 1e-3)
    np.testing.assert_allclose(y, scale[None, :, None] * x + shift[None, :, None], rtol=1e-13, atol=1e-13)


def test_fold_into_linear():
    rng = np.random.default_rng(1)
    u = rng.normal(size=(6, 4))
    w, bias = rng.normal(size=(3, 4)), rng.normal(size=3)
    g, b, rm, rv = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)
    z = u @ w.T + bias
    wf, bf = ref.fold_into_linear(w, bias, g, b, rm, rv, 1e-5)
    np.testing.assert_allclose(u @ wf.T + bf, ref.forward_eval(z, g, b, rm, rv, 1e-5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 3), (4, 2, 5), (3, 2, 3, 2), (2, 2, 2, 2, 3)])
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_backward_staged_equals_compact_equals_numerical(shape, eps):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * 2 + 1
    g, b = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dout = rng.normal(size=shape)
    _, cache = ref.forward_train(x, g, b, eps)
    dx1, dg1, db1 = ref.backward_staged(dout, cache)
    dx2, dg2, db2 = ref.backward(dout, cache)
    assert rel_error(dx1, dx2) < 1e-10 and rel_error(dg1, dg2) < 1e-12 and rel_error(db1, db2) < 1e-12
    dx_num = numerical_grad(lambda v: ref.forward_train(v, g, b, eps)[0], x.copy(), dout)
    assert rel_error(dx2, dx_num) < 1e-6
    shp = (1, -1) + (1,) * (len(shape) - 2)
    dg_num = numerical_grad(lambda gg: ref.forward_train(x, gg, b, eps)[0], g.copy(), dout)
    db_num = numerical_grad(lambda bb: ref.forward_train(x, g, bb, eps)[0], b.copy(), dout)
    assert rel_error(dg2, dg_num) < 1e-7 and rel_error(db2, db_num) < 1e-7
    # properties: sum of dx per channel is 0, and dx is orthogonal to xhat
    axes = ref.reduction_axes(len(shape))
    assert np.abs(dx2.sum(axis=axes)).max() < 1e-10
    # and <dx, xhat> = gamma/sigma * sum(dout*xhat) * eps/(var+eps): orthogonal exactly when eps = 0
    var = cache.var.reshape(-1)
    expect = (g * (dout * cache.xhat).sum(axis=axes) / np.sqrt(var + eps) * eps / (var + eps))
    np.testing.assert_allclose((dx2 * cache.xhat).sum(axis=axes), expect, rtol=1e-8, atol=1e-10)
    del shp


def test_sum_loss_gradient_is_zero():
    """Why the suites never use sum(): with constant beta, d sum(BN(x))/dx is identically zero."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 2))
    _, cache = ref.forward_train(x, np.array([1.5, -2.0]), np.zeros(2), 1e-5)
    dx, _, _ = ref.backward(np.ones_like(x), cache)
    assert np.abs(dx).max() < 1e-14


@pytest.mark.parametrize("kind,momentum,expected_w", [("update_fraction", 0.1, 0.1), ("keep_fraction", 0.9, 0.1),
                                                      ("update_fraction", None, 1.0)])
def test_update_running_conventions(kind, momentum, expected_w):
    x = np.array([[1.0], [2.0], [3.0], [4.0]])  # mean 2.5, biased var 1.25, unbiased 5/3
    for unbiased, v in ((True, 5.0 / 3.0), (False, 1.25)):
        m, var, n = ref.update_running(np.zeros(1), np.ones(1), x, momentum=momentum, momentum_kind=kind,
                                       unbiased=unbiased, num_batches_tracked=0)
        assert n == 1
        np.testing.assert_allclose(m, expected_w * 2.5, rtol=1e-15)
        np.testing.assert_allclose(var, (1 - expected_w) * 1.0 + expected_w * v, rtol=1e-15)


def test_cumulative_average_is_population_statistics():
    """momentum=None: after k batches the running mean is the mean of the k batch means (seed 000)."""
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(6, 3)) for _ in range(5)]
    rm, rv, n = np.zeros(3), np.ones(3), 0
    for xb in batches:
        rm, rv, n = ref.update_running(rm, rv, xb, momentum=None, num_batches_tracked=n)
    np.testing.assert_allclose(rm, np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-13)
    np.testing.assert_allclose(rv, np.mean([b.var(0, ddof=1) for b in batches], axis=0), rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(9, 4), (5, 3, 7), (4, 3, 5, 2), (2, 3, 2, 3, 2)])
def test_torch_twin_matches_oracle(dtype, shape):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=shape) * 3 + 2
    bn = BatchNorm(shape[1], eps=1e-3, momentum=0.3, dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.normal(size=shape[1])))
        bn.bias.copy_(torch.from_numpy(rng.normal(size=shape[1])))
    g, b = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    xt = torch.from_numpy(x).to(dtype).requires_grad_(True)
    x64 = xt.detach().double().numpy()
    out = bn(xt)
    dout = rng.normal(size=shape)
    out.backward(torch.from_numpy(dout).to(dtype))
    ref_out, cache = ref.forward_train(x64, g, b, 1e-3)
    dx, dg, db = ref.backward(torch.from_numpy(dout).to(dtype).double().numpy(), cache)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(out.detach().double().numpy(), ref_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(xt.grad.double().numpy(), dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.weight.grad.double().numpy(), dg, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(bn.bias.grad.double().numpy(), db, rtol=tol, atol=tol * 10)
    rm, rv, _ = ref.update_running(np.zeros(shape[1]), np.ones(shape[1]), x64, momentum=0.3)
    np.testing.assert_allclose(bn.running_mean.double().numpy(), rm, rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.running_var.double().numpy(), rv, rtol=tol, atol=tol)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    ev = bn(xt.detach()).detach().double().numpy()
    np.testing.assert_allclose(ev, ref.forward_eval(x64, g, b, rm, rv, 1e-3), rtol=tol * 10, atol=tol * 10)


def test_torch_twin_matches_torch_module():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    a, b = BatchNorm(3, momentum=None, dtype=torch.float64), torch.nn.BatchNorm2d(3, momentum=None, dtype=torch.float64)
    for _ in range(3):
        torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.running_var, b.running_var)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_torch_twin_half_uses_float32_statistics():
    x = (torch.randn(8192, 2) + 30).half()  # sums overflow float16
    out = batch_norm(x, None, None, training=True)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    expected = torch.nn.functional.batch_norm(x.float(), None, None, training=True)
    torch.testing.assert_close(out.float(), expected, atol=4e-3, rtol=4e-3)


def test_torch_twin_errors():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="eps must be positive"):
        batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0)
    with pytest.raises(RuntimeError, match="should contain 3 elements"):
        batch_norm(torch.randn(4, 3), torch.zeros(2), torch.ones(2), training=False)
    bn = BatchNorm(3, track_running_stats=False).eval()
    x = torch.randn(5, 3)
    torch.testing.assert_close(bn(x), bn.train()(x))
