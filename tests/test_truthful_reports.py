"""Failing runs that report the truth: distinct failures each with their own report, no err/tol for a
verdict that is not a ratio, NaN never judged as order dependence, a cause only with its evidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bnverify.suites import test_bn_invariance as inv

from bnverify import diagnose
from bnverify.compare import NO_KNOWN_CAUSE, CheckFailure
from bnverify.loading import load_target
from bnverify.plugin import format_table
from bnverify.runner import check
from bnverify.strategies import Case, make_input, to_dtype_values
from bnverify.tracking.plan import _check_metrics
from tests.test_invariance import Recorder, run_check

REPO = Path(__file__).resolve().parents[1]


def test_hypothesis_multiple_failures_each_get_their_own_report(monkeypatch):
    """A target wrong two ways: hypothesis reports both, and so does the check, each with its numbers."""
    monkeypatch.chdir(REPO)
    # A run without shrinking first: its hypothesis profile must not leak into the next run (it did, and
    # the next run then stopped at its first failure; which test ran first decided the outcome).
    check("tests.gallery.buggy_truth:TwoWayBatchNorm", suites=("forward",), seed=0,
          extra=("-k", "test_forward_train and rank4 and float64"))
    code, summary = check("tests.gallery.buggy_truth:TwoWayBatchNorm", suites=("forward",), seed=0, shrink=True,
                          extra=("-k", "test_forward_train and rank4 and float64"))
    assert code == 1 and summary is not None
    (r,) = [r for r in summary.results if r.failed]
    msg = r.message
    assert msg.startswith("2 distinct failures"), msg
    assert "Hypothesis found" not in msg
    value, crash = msg.split("failure 2 of 2: ") if "failure 2 of 2: " in msg else ("", "")
    assert "failure 1 of 2: " in value
    parts = {"value": value, "crash": crash}
    if "raised RuntimeError" in value:  # hypothesis orders them by its own rules
        parts = {"value": crash, "crash": value}
    assert "x tolerance" in parts["value"] and "expected" in parts["value"] and "got" in parts["value"]
    assert NO_KNOWN_CAUSE.split(":")[0] in parts["value"]  # nothing in the hypotheses explains the skipped affine
    assert "raised RuntimeError: my paired reduction needs an even number of values per channel" in parts["crash"]
    assert r.worst_ratio is not None and r.worst_ratio > 1
    table = format_table(summary)
    assert "failure 1 of 2" in table and "failure 2 of 2" in table


def test_a_verdict_that_is_not_a_ratio_has_no_err_over_tol(monkeypatch):
    """The output contract (dtype, in place) is a list of problems: no err/tol in the table or in MLflow."""
    monkeypatch.chdir(REPO)
    code, summary = check("tests.gallery.buggy_modules:Float32OutputBatchNorm", suites=("forward",), seed=0,
                          extra=("-k", "test_forward_contract"))
    assert code == 1 and summary is not None
    failed = [r for r in summary.results if r.failed]
    assert failed and all(r.worst_ratio is None for r in failed)
    assert all(name != "worst_ratio" for r in failed for name, _, _ in _check_metrics(r))
    assert all(r.metrics.get("problems", 0) >= 1 for r in failed)
    row = next(ln for ln in format_table(summary).splitlines() if "test_forward_contract" in ln and "FAILED" in ln)
    assert row.split("FAILED", 1)[1].split()[0].endswith("s")  # the next cell is the time: err/tol is empty


def _wide_case(n: int) -> Case:
    rng = np.random.default_rng(0)
    x = to_dtype_values(make_input(rng, (n, 2), "normal", 1e-5), torch.float32)
    return Case(x, torch.float32, 1e-5, True, np.array([1.5, -0.7]), np.array([0.2, 1.0]), 0.1, "normal", 0)


def test_nan_is_not_judged_as_order_dependence():
    """NaN for batches over 64: the permutation check names the NaN as observed, not "expected nan, got nan"."""
    target = load_target("tests.gallery.buggy_truth:NaNAboveBatch64BatchNorm")
    with pytest.raises(CheckFailure) as exc:
        run_check(inv.test_batch_permutation, target, Recorder(), dtype=torch.float32, rank=2, case=_wide_case(80))
    msg = str(exc.value)
    assert "cannot be judged" in msg and "returned NaN/inf for 160 of 160 values" in msg
    assert "expected nan" not in msg and "order of the samples" not in msg and "16-bit" not in msg
    run_check(inv.test_batch_permutation, target, Recorder(), dtype=torch.float32, rank=2, case=_wide_case(64))


def test_scale_break_names_the_sign_only_with_evidence():
    only_negative = diagnose.invariance.scale_break(-2.0, [(-0.5, False), (-2.0, False), (-8.0, False)])
    assert only_negative == []  # nothing held: nothing says where or why it breaks
    paired = diagnose.invariance.scale_break(-2.0, [(2.0, True), (-2.0, False), (0.5, True)])
    assert "depends on the sign" in paired[0] and len(paired) == 1
    small = diagnose.invariance.scale_break(1e-6, [(0.5, True), (1e-6, False), (1e6, True)])
    assert "floor or clamp" in small[0]


def test_order_dependence_without_a_matching_prefix_names_nothing():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2))
    y = rng.standard_normal((6, 2))  # unrelated to any prefix's statistics
    from bnverify import tolerances as tols

    tol = tols.forward_train(x, None, None, 1e-5, torch.float64)
    assert diagnose.invariance.order_dependence(y, y, x, x, None, None, 1e-5, tol, np.arange(6)) == []


def test_one_pass_cancellation_is_named_only_within_its_envelope():
    """The E[x^2] - E[x]^2 sentence needs the implied variance to be off by what one pass loses, no more."""
    from bnverify import tolerances as tols

    rng = np.random.default_rng(1)
    x = (1e3 + rng.standard_normal((256, 2))).astype(np.float32).astype(np.float64)
    mu = x.mean(0)
    xf = x.astype(np.float32)
    one_pass = np.maximum((xf * xf).mean(0) - xf.mean(0) ** 2, 0).astype(np.float64)
    tol = tols.forward_train(x, None, None, 1e-5, torch.float32)
    y_onepass = (x - mu) / np.sqrt(one_pass + 1e-5)
    causes = diagnose.forward.train_output(y_onepass, x, None, None, 1e-5, tol, torch.float32)
    assert causes and "E[x^2] - E[x]^2" in causes[0], causes
    # at |mean|/std 1e3 one float32 pass can lose the whole variance; at 0.5 it cannot lose a factor of 4
    z = (0.5 + rng.standard_normal((256, 2))).astype(np.float32).astype(np.float64)
    y_far = (z - z.mean(0)) / np.sqrt(4 * z.var(0) + 1e-5)
    tz = tols.forward_train(z, None, None, 1e-5, torch.float32)
    assert diagnose.forward.train_output(y_far, z, None, None, 1e-5, tz, torch.float32) == []
