"""Train/eval modes, running statistics and framework conventions (seeds 000, 002, 004; SPEC section 4).

The bugs that only show at inference: running statistics with the wrong
estimator or momentum, eval that still uses batch statistics, statistics
that drift in eval, population statistics computed wrong.  Every check runs
under the target's convention (``--convention``); a failure that another
convention explains names it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnverify import modes
from bnverify.strategies import cases

pytestmark = [pytest.mark.bnverify_suite("modes"), pytest.mark.bnverify_tier("quick")]

DTYPES = [torch.float64, torch.float32]


def _id(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _case(target, device, data, dtype=torch.float32, *, max_numel=600, min_m=2, affine=None):
    ranks = target.supported_ranks(device) or [2]
    rank = data.draw(st.sampled_from(ranks), label="rank")
    return data.draw(cases(rank, dtype, max_numel=max_numel, min_m=min_m, affine=affine), label="case")


@pytest.mark.parametrize("which", ["zero", "one", "drawn", "default"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_running_stats(bn_target, bn_device, bn_check, dtype, which, data):
    """Running mean/var after 3 training steps equal the oracle's for momentum 0, 1, a drawn value and the default."""
    case = _case(bn_target, bn_device, data, dtype)
    momentum = {"zero": 0.0, "one": 1.0, "drawn": case.momentum,
                "default": bn_target.convention.default_momentum}[which]
    modes.running_stats(bn_target, case, bn_device, bn_check, momentum=momentum)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_momentum_none(bn_target, bn_device, bn_check, dtype, data):
    """momentum=None: the cumulative average, seed 000's E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[sigma_B^2]."""
    if not bn_target.convention.supports_momentum_none:
        pytest.skip(f"momentum=None has no meaning under the {bn_target.convention.name} convention (SPEC section 4)")
    case = _case(bn_target, bn_device, data, dtype)
    modes.running_stats(bn_target, case, bn_device, bn_check, momentum=None, steps=4)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_num_batches_tracked(bn_target, bn_device, bn_check, data):
    """num_batches_tracked: int64 0 at construction, +1 per training forward, unchanged by eval."""
    modes.num_batches_tracked(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_fresh_defaults(bn_target, bn_device, bn_check, data):
    """A fresh instance holds gamma 1, beta 0, running mean 0, running variance 1."""
    modes.fresh_defaults(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


def test_constructor_defaults(bn_target, bn_device, bn_check):
    """cls(num_features) gets the convention's default eps and momentum, measured by probing."""
    modes.constructor_defaults(bn_target, bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_eval_uses_running_stats(bn_target, bn_device, bn_check, dtype, data):
    """After training, eval output uses the stored running statistics, and eval never changes them."""
    modes.eval_uses_running(bn_target, _case(bn_target, bn_device, data, dtype), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_eval_per_sample(bn_target, bn_device, bn_check, data):
    """Eval output of a sample is independent of the rest of the batch (even a batch of one); training's is not."""
    modes.eval_per_sample(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_no_tracking(bn_target, bn_device, bn_check, data):
    """track_running_stats=False keeps no buffers and normalises with batch statistics in eval."""
    modes.no_tracking(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_affine_false(bn_target, bn_device, bn_check, data):
    """affine=False has no parameters and applies no gamma/beta."""
    modes.affine_false(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_state_dict_roundtrip(bn_target, bn_device, bn_check, data):
    """A trained module's state_dict restores running statistics, counter and outputs exactly."""
    modes.state_dict_roundtrip(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_mode_toggling(bn_target, bn_device, bn_check, data):
    """train, eval, train, eval, eval, train, eval: every step matches the oracle run through the same sequence."""
    modes.mode_toggling(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.bnverify_examples(0.2)
@given(data=st.data())
def test_single_value_per_channel(bn_target, bn_device, bn_check, data):
    """One value per channel in training: a clear error (torch convention); running statistics never corrupted."""
    modes.single_value_per_channel(bn_target, _case(bn_target, bn_device, data), bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_eps_honoured(bn_target, bn_device, bn_check, dtype, data):
    """The constructor's (drawn) eps is used in eval and training: variances near eps make it visible."""
    modes.eps_honoured(bn_target, _case(bn_target, bn_device, data, dtype), bn_device, bn_check)


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.bnverify_examples(0.34)
@given(data=st.data())
def test_fold(bn_target, bn_device, bn_check, dtype, data):
    """Eval output equals seed 000's folded transform, and a batch norm folded into the preceding Linear/Conv."""
    modes.fold_equals_eval(bn_target, _case(bn_target, bn_device, data, dtype), bn_device, bn_check)
