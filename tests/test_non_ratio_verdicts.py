"""err/tol means an error over its tolerance, in the dropout, optimizer, initializer and training suites.

A check compared with the reference within a derived bound keeps its err/tol (``worst_ratio``), and the
table shows the ratio its failure report states.  A verdict that is not such a ratio (a z-test, a KS test,
a p-value against alpha, a band, an exact count) leaves the err/tol cell empty and MLflow without a
``worst_ratio``; its numbers are metrics under their own names, and the table's note (the first line of
the report) states them.  An infinite value is logged through the tracking plan's inf handling.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bnverify.plugin import format_table
from bnverify.runner import check
from bnverify.tracking.plan import TAG_INFINITE, _check_metrics, plan_invocation
from tests.gallery.buggy_optim import TorchStyleAdam

REPO = Path(__file__).resolve().parents[1]
_T = "tests.test_non_ratio_verdicts:"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _row(summary, check_name: str) -> list[str]:
    """The cells after the result of ``check_name``'s row: ``[err/tol or time, ...]``."""
    line = next(ln for ln in format_table(summary).splitlines() if ln.split()[1:2] == [check_name])
    return line.split()[3:]


def _no_ratio(r, summary) -> None:
    """No err/tol anywhere: the result, MLflow's metrics, the table's cell (the next cell is the time)."""
    assert r.worst_ratio is None and r.max_abs_err is None, (r.check, r.worst_ratio)
    assert "worst_ratio" not in {name for name, _, _ in _check_metrics(r)}
    assert re.fullmatch(r"[0-9.]+s", _row(summary, r.check)[0]), _row(summary, r.check)


def _note(r) -> str:
    return r.message.strip().splitlines()[0]


# --------------------------------------------------------------------------- dropout


class NaNTrainDropout(nn.Module):
    """Bug: inverted dropout whose training output is NaN where the input is above 1.4 (an overflowing
    rescale): every value the reference compares is NaN there."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        y = x * (torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p)
        return torch.where(x > 1.4, torch.full_like(x, math.nan), y)


class LastBitEvalDropout(nn.Module):
    """Bug: eval output differs between calls in the last bit of random elements (a nondeterministic
    kernel): each call is within the rounding tolerance, but two calls on one input differ."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x * (torch.rand_like(x) >= self.p).to(x.dtype) / (1 - self.p)
        return torch.where(torch.rand_like(x) < 0.5, torch.nextafter(x, torch.full_like(x, math.inf)), x)


def test_dropout_z_tests_record_counts_and_z_not_err_over_tol():
    """Drop rate: a binomial z-test (KeepProbDropout keeps with probability p); the p=0 count is exact."""
    code, summary = check("tests.test_dropout:KeepProbDropout", kind="torch-dropout", seed=0,
                          extra=("-k", "test_drop_rate"))
    assert code == 1 and summary is not None
    for r in summary.results:  # passed (p=0, 1 exactly, 0.5 by chance of the swap) and failed alike
        _no_ratio(r, summary)
    r = next(r for r in summary.results if r.check == "test_drop_rate[0.1]")
    assert r.failed
    m = r.metrics
    assert m["z_bound"] == 5.0 and m["z"] > 100 and m["expected_dropped"] == 10_000 and m["dropped"] > 80_000
    assert _note(r).startswith(f"dropout with p=0.1 dropped {m['dropped']:.0f} of 100000 elements "
                               f"(|z| = {m['z']:.1f} > 5)")
    row = " ".join(_row(summary, r.check))  # the note column: the report's first line, cut after a word
    assert f"(|z| = {m['z']:.1f} > 5)" in row and row.endswith("…") and _note(r).startswith(row[row.index("dropout"):-1])
    exact = next(r for r in summary.results if r.check == "test_drop_rate[0.0]")
    assert exact.passed and exact.metrics == {"dropped": 0.0, "expected_dropped": 0.0}


def test_dropout_mask_overlap_records_the_failing_test():
    code, summary = check("tests.test_dropout:FixedSeedDropout", kind="torch-dropout", seed=0,
                          extra=("-k", "test_independent_masks"))
    assert code == 1 and summary is not None
    for r in summary.results:
        assert r.failed
        _no_ratio(r, summary)
        m = r.metrics
        assert m["z"] > m["z_bound"] == 5.0 and m["overlap"] > m["expected_overlap"]
        assert f"(|z| = {m['z']:.1f} > 5): both dropped {m['overlap']:.0f} of 100000 positions" in _note(r)


def test_dropout_scaling_keeps_its_ratio_and_the_table_shows_the_reported_one():
    """Values against the reference within a rounding bound: the err/tol the report states is the table's."""
    code, summary = check("tests.test_dropout:NoScaleDropout", kind="torch-dropout", seed=0,
                          extra=("-k", "test_scaling"))
    assert code == 1 and summary is not None
    for r in summary.results:
        assert r.failed and r.worst_ratio is not None and r.worst_ratio > 1
        shown = _row(summary, r.check)[0]
        assert f"= {shown} x tolerance" in r.message, (shown, r.message)
        assert ("worst_ratio", r.worst_ratio, 0) in _check_metrics(r)


def test_dropout_nan_is_inf_times_the_tolerance_in_the_table_and_in_mlflow():
    """A NaN output never passes (np.max of NaN ratios did): inf x tolerance, logged as inf."""
    code, summary = check(_T + "NaNTrainDropout", kind="torch-dropout", seed=0,
                          extra=("-k", "test_scaling and 0.5"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and r.worst_ratio == math.inf
    assert _row(summary, r.check)[0] == "inf" and "got nan" in r.message and "= inf x tolerance" in r.message
    plan = plan_invocation(summary, "inv")
    child = plan.children["dropout"]
    (key,) = [k for k, v, _ in child.metrics if k.startswith("test_scaling") and k.endswith(".worst_ratio")]
    assert (key, math.inf, 0) in child.metrics and key in child.tags[TAG_INFINITE].split(",")
    assert f"dropout/{key}" in plan.parent.tags[TAG_INFINITE].split(",")


def test_dropout_eval_that_differs_within_tolerance_fails_without_err_over_tol():
    code, summary = check(_T + "LastBitEvalDropout", kind="torch-dropout", seed=0,
                          extra=("-k", "test_scaling and 0.5"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and "not deterministic" in _note(r)
    _no_ratio(r, summary)  # the training comparison's ratio (below 1) is not the verdict
    assert r.metrics["eval_calls_differ"] > 1000
    assert f"differ in {r.metrics['eval_calls_differ']:.0f} of" in _note(r)


# --------------------------------------------------------------------------- optimizer


class AdamStepStoredBeforeAdvance(TorchStyleAdam):
    """Bug: state['step'] is written before it is advanced (it lags by one); the update uses the right t."""

    def update(self, p, m, v, t, lr, b1, b2, eps, group):
        super().update(p, m, v, t, lr, b1, b2, eps, group)
        self.state[p]["step"] = torch.tensor(t - 1, dtype=torch.float64)


def test_optim_parameter_without_gradient_that_moves_has_no_err_over_tol():
    """Exact: steps 1-3 compared within their bounds (ratios below 1), then a parameter without gradient
    moved; the check's err/tol is not those earlier ratios, nor inf."""
    code, summary = check("tests.gallery.buggy_optim:SGDNoneGradAsZero", reference="sgd", seed=0,
                          extra=("-k", "test_missing_gradients"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and "had no gradient (grad is None) but changed" in r.message
    _no_ratio(r, summary)
    assert r.metrics["changed_without_grad"] == 3  # the bias has 3 elements, all moved by weight decay


def test_optim_step_counter_is_an_exact_verdict():
    code, summary = check(_T + "AdamStepStoredBeforeAdvance", reference="adam", seed=0,
                          extra=("-k", "test_trajectory and quadratic"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and "state['step'] of parameter weight is 0; expected 1" in r.message, r.message
    _no_ratio(r, summary)
    assert (r.metrics["state_step"], r.metrics["expected_step"]) == (0.0, 1.0)


def test_optim_lockstep_comparison_keeps_its_ratio():
    code, summary = check("tests.gallery.buggy_optim:AdamNoBiasCorrection", reference="adam", seed=0,
                          extra=("-k", "test_trajectory and quadratic"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and r.worst_ratio is not None and r.worst_ratio > 1e10 and r.max_abs_err is not None
    shown = _row(summary, r.check)[0]
    assert f"= {shown} x tolerance" in r.message


# --------------------------------------------------------------------------- initializer


def test_init_law_records_its_statistics_not_err_over_tol():
    """KS and moment z-tests (a missing ReLU gain: std x0.71): statistics against critical values."""
    code, summary = check("tests.gallery.buggy_init:kaiming_normal_no_gain_", kind="torch-init",
                          reference="kaiming_normal_", seed=0, extra=("-k", "test_law and linear-400-25"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed
    _no_ratio(r, summary)
    m = r.metrics
    assert m["ks_D"] > m["ks_critical"] and abs(m["z_second_moment"]) > m["z_bound"] == 6.5
    assert m["samples"] == 20_000 and m["outside_support"] == 0 and m["alpha"] < 1e-8
    assert f"z = {m['z_second_moment']:.3g}), KS D = {m['ks_D']:.4g} (critical {m['ks_critical']:.4g})" in r.message
    assert _note(r).endswith("do not follow N(0, 0.07071^2)")


def test_init_tails_record_p_value_against_alpha():
    code, summary = check("tests.gallery.buggy_init:kaiming_normal_truncated_", kind="torch-init",
                          reference="kaiming_normal_", seed=0, extra=("-k", "test_bounds_and_tails"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed
    _no_ratio(r, summary)
    m = r.metrics
    assert m["p_value"] < m["alpha"] and m["samples_below"] == m["samples_above"] == 0
    assert m["expected_per_tail"] == 200 and f"exact binomial p = {m['p_value']:.2g}" in r.message


def test_init_correct_function_has_statistics_and_no_err_over_tol():
    """torch's own function: passing statistical and exact checks, none with an err/tol; the statistics of
    the case nearest its thresholds are there, within their bounds."""
    code, summary = check("torch.nn.init:kaiming_normal_", seed=0,
                          extra=("-k", "test_fan_axes or test_contract and float32 or test_zero_element"))
    assert code == 0 and summary is not None and len(summary.results) == 3
    for r in summary.results:
        _no_ratio(r, summary)
    fan = next(r for r in summary.results if r.check == "test_fan_axes")
    m = fan.metrics
    assert m["statistical tests"] == 12 and m["ks_D"] <= m["ks_critical"] and abs(m["z_mean"]) <= m["z_bound"]
    assert fan.details["statistics of"].startswith("init[kaiming_normal_] fan axes")


def test_init_exact_contract_failure_has_no_err_over_tol():
    code, summary = check("tests.gallery.buggy_init:kaiming_normal_not_in_place_", kind="torch-init",
                          reference="kaiming_normal_", seed=0, extra=("-k", "test_contract and float32"))
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and "is not in place" in _note(r)
    _no_ratio(r, summary)


def test_init_study_band_verdict_records_the_band(monkeypatch):
    """The six-layer study on a smaller network (100 x 50; the band comes from the reference's measured
    spread at that size) and without its plot: a band verdict, with each layer's band as metrics."""
    from bnverify import init_study

    monkeypatch.setattr(init_study, "BATCH", 100)
    monkeypatch.setattr(init_study, "WIDTH", 50)
    monkeypatch.setattr(init_study, "plot", lambda st, path: Path(path).write_bytes(b"png"))
    code, summary = check("tests.gallery.buggy_init:kaiming_normal_no_gain_", kind="torch-init",
                          reference="kaiming_normal_", suites=["init-study"], seed=0)
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed
    _no_ratio(r, summary)
    m = r.metrics
    assert m["layers outside band"] == 12
    assert m["relu layer6 std target"] < m["relu layer6 band low"] < m["relu layer6 std reference"]
    assert m["relu layer6 band low"] < m["relu layer6 band high"]
    assert _note(r).startswith(f"six-layer study: {m['layers outside band']:.0f} of 12 layer activations leave")


# --------------------------------------------------------------------------- training suites


def test_convergence_verdict_keeps_infinite_metrics_and_drops_nan():
    from bnverify.convergence.protocol import Protocol
    from bnverify.convergence.verdict import ConvergenceVerdict

    v = ConvergenceVerdict(outcome="fail", explanation="", reasons=[], protocol=Protocol(), n_test=1000, target=[],
                           reference=[], nobn=[], final={"band_high": math.inf, "band_low": -math.inf,
                                                          "target": math.nan})
    m = v.metrics()
    assert m["final_band_high"] == math.inf and m["final_band_low"] == -math.inf and "final_target" not in m


def test_seed_claim_band_without_bound_is_logged_as_inf(monkeypatch):
    """A claim's band that nothing bounds (one seed, no twin, no floor) has infinite edges: they are metrics
    (logged through the plan's inf handling) and the report shows inf; a band verdict has no err/tol."""
    from bnverify import convergence as cv
    from bnverify.convergence import bands
    from bnverify.convergence.claims import _claim

    def fake_claims(split, device, *, only, **kw):
        b = bands.band("accuracy", [0.4], 0.5)
        return [_claim(name, "a test", b.outcome, [b], {"accuracy": 0.4}, "one seed", 0.0) for name in only]

    monkeypatch.setattr(cv, "seed_claims", fake_claims)
    code, summary = check("torch", suites=["seed-claims"], seed=0, extra=("-k", "overfit-batch"))
    assert code == 0 and summary is not None
    (r,) = summary.results
    assert r.outcome == "xfailed" and "accuracy 0.400 [-inf, inf]" in r.message
    _no_ratio(r, summary)
    m = r.metrics
    assert m["bands.accuracy.high"] == math.inf and m["bands.accuracy.low"] == -math.inf
    assert m["bands.accuracy.half_width"] == math.inf and m["inconclusive"] == 1.0
    child = plan_invocation(summary, "inv").children["seed-claims"]
    infinite = child.tags[TAG_INFINITE].split(",")
    high = [k for k, v, _ in child.metrics if k.endswith("bands_accuracy_high")]
    assert high and all((k, math.inf, 0) in child.metrics and k in infinite for k in high), (high, infinite)


@pytest.mark.slow
def test_convergence_failure_is_a_band_not_err_over_tol():
    """The gallery's batch statistics treated as constants in the backward, 10 epochs (the convergence
    meta-tests' setting): 27 points below the reference's band."""
    code, summary = check("tests.gallery.buggy_modules:StatsAsConstantsBatchNorm", suites=["convergence"],
                          tier="full", extra=["--bn-convergence-epochs", "10"])
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed
    _no_ratio(r, summary)
    m = r.metrics
    assert m["final_target"] < m["final_band_low"] < m["final_reference"]
    assert f"bug impact {m['bug_impact_points']:.1f} points of test accuracy" in _note(r)


@pytest.mark.slow
def test_optim_convergence_failure_is_a_band_not_err_over_tol():
    """A momentum buffer never stored, 2 epochs x 3 seeds: 38-42 points below a band of [47, 67] %."""
    code, summary = check("tests.gallery.buggy_optim_training:SGDMomentumOutOfPlace", reference="sgd",
                          suites=["optim-convergence"], tier="full",
                          extra=["--bn-convergence-epochs", "2", "--bn-convergence-seeds", "3"])
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed
    _no_ratio(r, summary)
    m = r.metrics
    assert m["final_target"] < m["final_band_low"] and m["epochs_below_band"] == 2
    assert f"bug impact {m['bug_impact_points']:.1f} points of test accuracy" in _note(r)


@pytest.mark.slow
def test_seed_claim_failure_is_a_band_not_err_over_tol():
    code, summary = check("tests.gallery.buggy_modules:StatsAsConstantsBatchNorm", suites=["seed-claims"],
                          extra=["-k", "overfit-batch"])
    assert code == 1 and summary is not None
    (r,) = summary.results
    assert r.failed and _note(r).startswith("claim not reproduced with StatsAsConstantsBatchNorm")
    _no_ratio(r, summary)
    m = r.metrics
    key = "bands.log10_last_loss___first_loss"
    assert m["reproduced"] == 0.0 and m["reference_reproduced"] == 1.0
    assert m[f"{key}.low"] > m[f"{key}.threshold"]  # the claim: below the threshold; the whole band is above
