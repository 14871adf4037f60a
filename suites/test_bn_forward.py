"""Forward pass: training and eval outputs against the float64 oracle, precision, layouts, contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import bncheck
from bnverify.strategies import DTYPES, HALF, RANKS, cases
from bnverify.strategies import dtype_id as _id

pytestmark = [pytest.mark.bnverify_suite("forward"), pytest.mark.bnverify_tier("quick")]



@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("rank", RANKS, ids=lambda r: f"rank{r}")
@given(data=st.data())
def test_forward_train(bn_target, bn_device, bn_check, rank, dtype, data):
    """Training-mode output equals the oracle: drawn shapes, eps, affine gamma/beta, well-conditioned input."""
    bncheck.require_rank(bn_target, rank, bn_device)
    case = data.draw(cases(rank, dtype), label="case")
    bncheck.forward_train(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_forward_ill_conditioned(bn_target, bn_device, bn_check, dtype, data):
    """|mean|/std up to 1e4, variances near and below eps, constant channels: where one-pass variance breaks."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype, conditionings=("large_mean", "tiny_var", "constant_channel")), label="case")
    bncheck.forward_train(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", HALF, ids=_id)
@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_forward_half(bn_target, bn_device, bn_check, dtype, data):
    """16-bit input with >= 4096 values per channel of magnitude ~30: sums kept in 16 bits overflow."""
    rank = bncheck.require_dtype(bn_target, dtype, bn_device)
    case = data.draw(cases(rank, dtype, conditionings=("half_overflow", "normal"), min_m=4096, max_numel=20000),
                     label="case")
    bncheck.forward_train(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "strided"])
@given(data=st.data())
def test_forward_layouts(bn_target, bn_device, bn_check, layout, data):
    """channels_last and non-contiguous views of the same values give the same output."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    if layout == "channels_last":
        ranks = [r for r in ranks if r in (4, 5)]
        if not ranks:
            pytest.skip("channels_last needs rank 4 or 5, which the target does not support")
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, torch.float32), label="case")
    if layout == "transposed" and case.shape[0] == 1:
        return
    bncheck.layouts(bn_target, case, bn_device, bn_check, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@given(data=st.data())
def test_forward_eval(bn_target, bn_device, bn_check, dtype, data):
    """Eval-mode output uses the running statistics: gamma (x - running_mean) / sqrt(running_var + eps) + beta."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype, conditionings=("normal", "large_mean", "tiny_var")), label="case")
    bncheck.forward_eval(bn_target, case, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.25)
@given(data=st.data())
def test_forward_contract(bn_target, bn_device, bn_check, dtype, data):
    """Output shape, dtype and device equal the input's; no call modifies its input."""
    ranks = bn_target.supported_ranks(bn_device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    case = data.draw(cases(rank, dtype), label="case")
    bncheck.contract(bn_target, case, bn_device, bn_check)
