"""Meta-tests of the modes suite: every gallery bug is caught by its named checks; correct conventions pass."""

from __future__ import annotations

import pytest

from bnverify.runner import check
from tests.gallery.registry_modes import MODES_BUGS


def _failed(summary):
    return {r.check.split("[")[0]: r.message for r in summary.results if r.failed}


@pytest.mark.parametrize("bug", MODES_BUGS, ids=lambda b: b.id)
def test_bug_is_caught(bug, check_runs):
    """Read from the bug's one run of the session (``tests/conftest.py``, shared with ``tests/test_broken_targets.py``)."""
    code, summary = check_runs.bug(bug)
    assert summary is not None
    failed = _failed(summary)
    missing = [c for c in bug.catches if c not in failed]
    assert code == 1 and not missing, f"{bug.id}: {missing} did not fail; failed: {sorted(failed)}"
    for name in bug.catches:
        msg = failed[name]
        assert msg.strip(), f"{bug.id}: {name} failed without a message"


# Correct modules of each convention pass under it: the false-failure sweep (tests/test_false_failures.py)
# runs every entry of CORRECT_CONVENTIONS through the quick tier, seed 0 by default, seeds 1-4 marked slow.


def test_keras_under_torch_names_the_convention():
    """Under the default convention, a correct Keras-convention module fails with a message naming keras."""
    code, summary = check("tests.gallery.correct_conventions:KerasBatchNorm", suites=("modes",), seed=0,
                          max_examples=10)
    failed = _failed(summary)
    assert code == 1
    assert "--convention keras" in failed["test_running_stats"]
    assert "--convention keras" in failed["test_constructor_defaults"]


def test_biased_running_var_message(check_runs):
    bug = next(b for b in MODES_BUGS if b.id == "modes-biased-running-var")
    code, summary = check_runs.bug(bug)
    msg = _failed(summary)["test_running_stats"]
    assert "expected" in msg and "got" in msg and "x tolerance" in msg
    assert "biased estimator" in msg and "B1" in msg


def test_torch_under_keras_points_back_to_torch():
    code, summary = check("torch", convention="keras", suites=("modes",), seed=0, max_examples=10)
    assert code == 1
    assert "--convention torch" in _failed(summary)["test_running_stats"]
