"""Backward pass: dx, dgamma, dbeta against the float64 oracle with random upstream gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import bncheck
from bnverify.strategies import DTYPES, HALF, RANKS, cases
from bnverify.strategies import dtype_id as _id

pytestmark = [pytest.mark.bnverify_suite("backward"), pytest.mark.bnverify_tier("quick")]



@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rank", RANKS, ids=lambda r: f"rank{r}")
@given(data=st.data())
def test_backward_train(bn_target, bn_device, bn_check, rank, dtype, data):
    """Training-mode dx, dgamma, dbeta equal the oracle for a random upstream gradient."""
    bncheck.require_rank(bn_target, rank, bn_device)
    case = data.draw(cases(rank, dtype), label="case")
    bncheck.backward_train(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_backward_ill_conditioned(bn_target, bn_device, bn_check, dtype, data):
    """Gradients with |mean|/std up to 1e4, variances near eps and constant channels."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype, conditionings=("large_mean", "tiny_var", "constant_channel")), label="case")
    bncheck.backward_train(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", HALF, ids=_id)
@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_backward_half(bn_target, bn_device, bn_check, dtype, data):
    """16-bit gradients over >= 4096 values per channel (float32 accumulation expected)."""
    rank = bncheck.require_dtype(bn_target, dtype, bn_device)
    case = data.draw(cases(rank, dtype, conditionings=("half_overflow", "normal"), min_m=4096, max_numel=20000),
                     label="case")
    bncheck.backward_train(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_backward_eval(bn_target, bn_device, bn_check, dtype, data):
    """Eval-mode gradients treat the running statistics as constants: dx = gamma / sqrt(running_var + eps) * dy."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype), label="case")
    bncheck.backward_eval(bn_target, case, bn_device, bn_check)


@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_gradcheck(bn_target, bn_device, bn_check, data):
    """The backward agrees with float64 finite differences of the target's own forward."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    bncheck.require_dtype(bn_target, torch.float64, bn_device)
    case = data.draw(cases(rank, torch.float64, max_numel=64), label="case")
    bncheck.gradcheck(bn_target, case, bn_device, bn_check)
