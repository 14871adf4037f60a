"""The reference initialisers: fans and gains against torch's own functions, laws against closed forms."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bnverify.reference import initializers as ref

SHAPES = [(3, 5), (5, 3), (1, 1), (4, 2, 3), (6, 3, 3, 5), (2, 7, 1, 2, 3), (8, 4, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_torch_fans_match_torch(shape):
    assert ref.fans(shape, "torch") == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("shape", [(), (4,)], ids=str)
def test_torch_fans_reject_low_rank_like_torch(shape):
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        ref.fans(shape, "torch")


def test_keras_fans_are_the_last_two_axes():
    """Keras ``compute_fans`` / JAX ``_compute_fans(in_axis=-2, out_axis=-1)``: (*k, in, out)."""
    assert ref.fans((300, 100), "keras") == (300, 100)
    assert ref.fans((3, 5, 16, 32), "keras") == (16 * 15, 32 * 15)
    assert ref.fans((), "keras") == (1, 1) and ref.fans((7,), "keras") == (7, 7)
    # the same layer in the two layouts has the same fans
    for out_, in_, k in ((32, 16, (3, 5)), (25, 400, ()), (6, 3, (7,))):
        torch_shape = (out_, in_, *k)
        keras_shape = (*k, in_, out_)
        assert ref.fans(torch_shape, "torch") == ref.fans(keras_shape, "keras")


@pytest.mark.parametrize("nonlinearity,param", [
    ("linear", None), ("conv1d", None), ("conv2d", None), ("conv3d", None), ("conv_transpose1d", None),
    ("conv_transpose2d", None), ("conv_transpose3d", None), ("sigmoid", None), ("tanh", None), ("relu", None),
    ("leaky_relu", None), ("leaky_relu", 0.2), ("leaky_relu", 10), ("leaky_relu", math.sqrt(5)), ("selu", None)])
def test_gains_match_torch(nonlinearity, param):
    assert ref.calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(nonlinearity, param)


def test_gain_values_and_errors_as_torch_tests_them():
    """torch's own test: leaky_relu default 1.4141428569978354, param 10 -> 0.14071950894605836."""
    assert ref.calculate_gain("leaky_relu") == 1.4141428569978354
    assert ref.calculate_gain("leaky_relu", 10) == 0.14071950894605836
    for bad in (True, "0.2", [1]):
        with pytest.raises(ValueError):
            ref.calculate_gain("leaky_relu", bad)
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        ref.calculate_gain("gelu")


def test_defaults_are_torchs_signatures():
    for name, kw in ref.DEFAULTS.items():
        params = inspect.signature(getattr(torch.nn.init, name)).parameters
        assert set(params) == {"tensor", "generator", *kw}, name
        for k, v in kw.items():
            assert params[k].default == v, (name, k)


def test_glorot_and_he_closed_forms():
    shape = (25, 400)  # torch: out 25, in 400
    s = math.sqrt(2 / 425)
    assert ref.xavier_normal(shape).std == pytest.approx(s, rel=1e-15)
    assert ref.xavier_uniform(shape, gain=2.0).support == pytest.approx((-2 * math.sqrt(6 / 425),
                                                                         2 * math.sqrt(6 / 425)), rel=1e-15)
    assert ref.kaiming_normal(shape).std == pytest.approx(ref.calculate_gain("leaky_relu", 0) / 20, rel=1e-15)
    assert ref.kaiming_normal(shape, nonlinearity="relu").std == pytest.approx(math.sqrt(2 / 400), rel=1e-15)
    assert ref.kaiming_normal(shape, mode="fan_out", nonlinearity="relu").std == pytest.approx(math.sqrt(2 / 25))
    assert ref.kaiming_uniform(shape, nonlinearity="relu").support[1] == pytest.approx(math.sqrt(6 / 400))
    a = 0.2
    assert ref.kaiming_uniform(shape, a=a).std == pytest.approx(math.sqrt(2 / ((1 + a * a) * 400)), rel=1e-15)
    # the same weight laid out (in, out) has the same law under the keras layout
    assert ref.kaiming_normal((400, 25), layout="keras").std == pytest.approx(ref.kaiming_normal(shape).std)


def test_linear_default_is_one_over_sqrt_fan_in_not_he():
    """I1: nn.Linear's kaiming_uniform_(a=sqrt(5)) is U(+-1/sqrt(fan_in)); He uniform is sqrt(6/fan_in)."""
    law = ref.linear_default((10, 36))
    assert law.support[1] == pytest.approx(1 / 6, rel=1e-14)
    assert ref.kaiming_uniform((10, 36), nonlinearity="relu").support[1] == pytest.approx(math.sqrt(6 / 36))
    lin = torch.nn.Linear(36, 10)
    assert float(lin.weight.detach().abs().max()) <= 1 / 6


def test_truncation_constant_and_corrected_std():
    """0.87962566103423978 is the std of N(0,1) truncated to [-2, 2]; with it the samples have std s."""
    assert stats.truncnorm(-2, 2).std() == pytest.approx(ref.TRUNC_STD_2, rel=1e-14)
    law = ref.kaiming_normal((25, 400), nonlinearity="relu", distribution="truncated_normal")
    assert law.family == "truncnorm"
    assert law.std == pytest.approx(math.sqrt(2 / 400), rel=1e-12)
    assert law.support[1] == pytest.approx(2 * math.sqrt(2 / 400) / ref.TRUNC_STD_2, rel=1e-14)
    vs = ref.variance_scaling((400, 25), 2.0, "fan_in", "truncated_normal")
    assert vs.std == pytest.approx(law.std, rel=1e-12)
    assert ref.variance_scaling((400, 25), 1.0, "fan_avg", "uniform").support[1] == pytest.approx(math.sqrt(6 / 425))
    assert ref.variance_scaling((0, 3), 1.0, "fan_in", "untruncated_normal").std == 1.0  # max(1, fan)


def test_trunc_normal_bounds_are_absolute():
    law = ref.trunc_normal(0.0, 0.02, -2.0, 2.0)
    assert law.std == pytest.approx(0.02, rel=1e-12)  # bounds at 100 sd: practically untruncated
    law = ref.trunc_normal(0.5, 1.0, -1.0, 1.5)
    d = stats.truncnorm(-1.5, 1.0, loc=0.5, scale=1.0)
    assert law.mean == pytest.approx(d.mean()) and law.std == pytest.approx(d.std())
    assert law.support == (-1.0, 1.5)


def test_seed_forms():
    shape = (500, 300)  # seed 001: randn(fan_in, fan_out)
    assert ref.seed_form("small", shape).std == 0.01
    assert ref.seed_form("large", shape).std == 1.0
    assert ref.seed_form("xavier-seed", shape).std == pytest.approx(1 / math.sqrt(500))
    assert ref.seed_form("he-seed", shape).std == pytest.approx(math.sqrt(2 / 500))


@pytest.mark.parametrize("law", [ref.normal(1.0, 0.5), ref.uniform(-0.5, 2.0), ref.trunc_normal(0.5, 1.0, -1.0, 1.5),
                                 ref.kaiming_uniform((3, 4)), ref.xavier_normal((3, 4), distribution="truncated_normal")],
                         ids=lambda law: law.family)
def test_law_moments_cdf_and_sampling_agree_with_scipy(law):
    d = law.dist
    assert law.mean == pytest.approx(d.mean(), abs=1e-12) and law.std == pytest.approx(d.std(), rel=1e-12)
    x = np.linspace(law.mean - 4 * law.std, law.mean + 4 * law.std, 101)
    np.testing.assert_allclose(law.cdf(x), d.cdf(x), rtol=1e-12, atol=1e-15)
    mu4 = d.expect(lambda v: (v - d.mean()) ** 4)
    assert law.central_moment4 == pytest.approx(mu4, rel=1e-6)
    s = ref.sample(law, (4000,), np.random.default_rng(0))
    assert stats.kstest(s, d.cdf).pvalue > 1e-4
    scaled = law.scaled(2.0)
    assert scaled.std == pytest.approx(2 * law.std, rel=1e-12)


def test_law_of_dispatches_with_torch_defaults():
    shape = (8, 3, 3, 3)
    assert ref.law_of("kaiming_normal_", shape) == ref.kaiming_normal(shape)
    assert ref.law_of("kaiming_uniform_", shape, a=math.sqrt(5)) == ref.linear_default(shape)
    assert ref.law_of("xavier_normal_", shape, normal_distribution="truncated_normal").family == "truncnorm"
    assert ref.law_of("uniform_", shape).support == (0.0, 1.0)
    assert ref.law_of("he-seed", (500, 300), layout="keras").std == pytest.approx(math.sqrt(2 / 500))
    with pytest.raises(ValueError):
        ref.law_of("orthogonal_", shape)


def test_reference_does_not_import_the_harness():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(ref.__file__).read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("bnverify") for m in mods)
