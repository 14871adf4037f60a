"""Dropout (seed 001): drop rate, scaling in training (inverted) or at test time (direct), eval, independence.

Runs against targets of kind ``torch-dropout`` only (``--kind torch-dropout``); ``--convention direct``
selects seed 001's direct dropout, the default is inverted (torch, Keras, Flax).
"""

from __future__ import annotations

import pytest

from bnverify import dropout

pytestmark = [pytest.mark.bnverify_suite("dropout"), pytest.mark.bnverify_tier("quick")]


@pytest.fixture
def seed(request):
    return int(request.config.getoption("bn_seed") or 0) % (2**31)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.8, 1.0])
def test_drop_rate(bn_target, bn_check, seed, p):
    """The fraction of dropped elements is p (binomial z-test); p=0 is the identity, p=1 drops everything."""
    dropout.drop_rate(bn_target, p, seed, bn_check)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_scaling(bn_target, bn_check, seed, p):
    """Inverted: kept x/(1-p) in training, identity in eval; direct: kept x, eval (1-p) x; eval deterministic."""
    dropout.scaling(bn_target, p, seed, bn_check)


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_independent_masks(bn_target, bn_check, seed, p):
    """Masks of successive calls, and of different positions, are independent."""
    dropout.independence(bn_target, p, seed, bn_check)
