"""Meta-tests of the invariance suite: its bugs are caught (some by it alone), correct targets pass,
the exactness it relies on holds, and failures name the breaking scale and a likely cause."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.compare import CheckFailure
from bnverify.loading import load_target
from bnverify.strategies import Case, LayerCase, make_input, to_dtype_values
from bnverify.suites import test_bn_invariance as suite
from tests.gallery.registry_invariance import INVARIANCE_BUGS, INVARIANCE_CHECKS, ONLY_INVARIANCE


class Recorder:
    """Stands in for the plugin's ``bn_check``."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def observe(self, ratio: float, max_abs_err: float | None = None) -> None:
        if self.data.get("worst_ratio") is None or ratio > self.data["worst_ratio"]:
            self.data["worst_ratio"] = ratio

    def metric(self, name: str, value: float) -> None:
        self.data.setdefault("metrics", {})[name] = value

    def detail(self, name: str, value: Any) -> None:
        self.data.setdefault("details", {})[name] = value


class Draws:
    """Stands in for hypothesis' ``st.data()`` in a suite check: each draw returns the value given for its label."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        return self.values[label]


def run_check(check_fn, target, rec, **draws) -> None:
    """Run a suite check's body (without hypothesis) on the CPU with the given draws."""
    check_fn.hypothesis.inner_test(bn_target=target, bn_device="cpu", bn_check=rec, data=Draws(**draws))


def _failed(summary):
    return {r.check.split("[")[0]: r.message for r in summary.results if r.failed}


def _case(shape=(8, 3), dtype=torch.float32, eps=1e-5, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    x = to_dtype_values(make_input(rng, shape, "normal", eps), dtype)
    c = shape[1]
    gamma = to_dtype_values(rng.uniform(0.2, 3.0, c) * rng.choice([-1.0, 1.0], c), dtype)
    beta = to_dtype_values(rng.uniform(-3.0, 3.0, c), dtype)
    return Case(x, dtype, eps, True, gamma, beta, 0.1, "normal", seed)


# --------------------------------------------------------------------------- gallery

def test_registry_names_real_checks():
    for bug in INVARIANCE_BUGS:
        assert "invariance" in bug.suites
        assert any(c in INVARIANCE_CHECKS for c in bug.catches), bug.id
    assert len({b.id for b in INVARIANCE_BUGS}) == len(INVARIANCE_BUGS) >= 5
    assert ONLY_INVARIANCE <= {b.id for b in INVARIANCE_BUGS}


@pytest.mark.parametrize("bug", INVARIANCE_BUGS, ids=lambda b: b.id)
def test_bug_is_caught(bug, check_runs):
    """Read from the bug's one run of the session (``tests/conftest.py``, shared with ``tests/test_broken_targets.py``)."""
    code, summary = check_runs.bug(bug)
    assert summary is not None
    failed = _failed(summary)
    missing = [c for c in bug.catches if c not in failed]
    assert code == 1 and not missing, f"{bug.id}: {missing} did not fail; failed: {sorted(failed)}"
    for name in bug.catches:
        assert failed[name].strip(), f"{bug.id}: {name} failed without a message"


@pytest.mark.parametrize("bug", [b for b in INVARIANCE_BUGS if b.id in ONLY_INVARIANCE], ids=lambda b: b.id)
def test_only_invariance_catches(bug, check_runs):
    """These bugs are right at ordinary magnitudes: the forward and backward suites pass them (the bug's one
    run includes those suites for this test)."""
    code, summary = check_runs.bug(bug)
    assert summary is not None
    ran = {r.suite for r in summary.results if r.passed}
    assert {"forward", "backward"} <= ran, f"{bug.id}: the run did not include forward and backward ({sorted(ran)})"
    outside = sorted(r.check for r in summary.results if r.failed and r.suite != "invariance")
    assert not outside, f"{bug.id} fails {outside} outside the invariance suite"


# Correct targets pass the invariance suite: the false-failure sweep (tests/test_false_failures.py) runs
# the quick tier on every correct target (seed 0 by default, seeds 1-4 marked slow) and asserts that torch,
# the reference, F.batch_norm and the gallery's BatchNorm and cs231n module pass every invariance check.


# --------------------------------------------------------------------------- the exactness relied on

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_torch_is_bitwise_scale_equivariant(dtype):
    """The premise of the exact checks: power-of-two scaling (eps * a^2) changes no bit of torch's output."""
    case = _case(shape=(16, 4, 3), dtype=dtype)
    x = torch.from_numpy(case.x).to(dtype)
    for k in (-20, -3, 5, 30):
        a = 2.0**k
        y0 = torch.nn.functional.batch_norm(x, None, None, training=True, eps=case.eps)
        ya = torch.nn.functional.batch_norm(x * a, None, None, training=True, eps=case.eps * a * a)
        assert torch.equal(y0, ya), k


def test_scale_window_is_derived_from_the_dtype():
    lo, hi = tols.scale_window(torch.float32)
    assert lo == pytest.approx(float(torch.finfo(torch.float32).max) ** -0.5)
    assert lo * hi == pytest.approx(1.0)
    assert tols.scale_window(torch.float64)[0] < 1e-150


def test_exact_tolerance_is_ulps_not_a_forward_bound():
    case = _case()
    exact = tols.scale_exact_forward(case.x, case.gamma, case.beta, case.eps, case.dtype).bound
    fwd = tols.forward_train(case.x, case.gamma, case.beta, case.eps, case.dtype).bound
    assert np.all(exact < fwd)
    assert np.all(exact <= tols.SAFETY * tols.EXACT_ULPS * 2.0**-24 * 40)


# --------------------------------------------------------------------------- reports

def test_failure_names_breaking_scale_and_cause():
    target = load_target("tests.gallery.buggy_invariance:StdFloorBatchNorm")
    rec = Recorder()
    with pytest.raises(CheckFailure) as exc:
        suite._check_scale_exact(target, _case(), "cpu", rec)
    msg = str(exc.value)
    assert "breaks at scale" in msg and "holds for scales" in msg
    assert "floor or clamp" in msg
    assert 0 < rec.data["metrics"]["breaking_scale"] < 1


def test_correct_target_records_worst_scale():
    rec = Recorder()
    suite._check_scale_exact(load_target("torch"), _case(), "cpu", rec)
    assert rec.data["worst_ratio"] <= 1
    assert "worst_scale" in rec.data["metrics"]


def test_permutation_diagnoses_prefix_statistics():
    target = load_target("tests.gallery.buggy_invariance:batch_norm_first_samples")
    case = _case(shape=(48, 2))
    with pytest.raises(CheckFailure) as exc:
        run_check(suite.test_batch_permutation, target, Recorder(), dtype=case.dtype, rank=2, case=case)
    assert "first 32 of the 48 samples" in str(exc.value)


def test_bias_grad_diagnoses_missing_mean_term():
    target = load_target("tests.gallery.buggy_invariance:Cs231nBackwardNoMeanTerm", kind="numpy-cs231n")
    rng = np.random.default_rng(0)
    lc = LayerCase("linear", rng.standard_normal((12, 4)) + 1.0, rng.standard_normal((3, 4)) / 2,
                   rng.uniform(-3, 3, 3), torch.float64, 1e-5, np.ones(3), np.zeros(3), 0)
    with pytest.raises(CheckFailure) as exc:
        run_check(suite.test_linear_bias_grad, target, Recorder(), dtype=lc.dtype, layer=lc)
    assert "-mean(dy) term" in str(exc.value)


def test_sgd_metrics_show_norm_growth_and_shrinking_effective_lr():
    rng = np.random.default_rng(1)
    lc = LayerCase("linear", rng.standard_normal((16, 5)), rng.standard_normal((3, 5)) / 2, None,
                   torch.float64, 1e-5, np.ones(3), np.zeros(3), 1)
    rec = Recorder()
    run_check(suite.test_weight_orthogonality, load_target("torch"), rec, dtype=lc.dtype, bias=False, layer=lc)
    m = rec.data["metrics"]
    assert m["norm_growth"] > 1
    assert 0 < m["effective_lr_ratio"] < 1
    assert m["max_cosine_w_grad"] < 1e-3


def test_scale_break_patterns():
    small = diagnose.invariance.scale_break(1e-6, [(0.5, True), (2.0, True), (1e-6, False), (1e6, True)])
    large = diagnose.invariance.scale_break(1e9, [(0.5, True), (2.0, True), (1e-6, True), (1e9, False)])
    sign = diagnose.invariance.scale_break(-2.0, [(-0.5, True), (2.0, True), (-2.0, False)])  # +2 held, -2 broke
    assert "floor or clamp" in small[0]
    assert "overflow" in large[0]
    assert "sign" in sign[0]
