"""Diverse minimal examples: a failure on a drawn case is reported on ordinary input when ordinary input
fails too, and ill-conditioning is named as the trigger only when it passes (``strategies.ordinary_first``).

The helper is tested on its own first; then the backward, modes and invariance checks are run (their
bodies, without hypothesis, as ``tests/test_invariance.py`` does) on a fixed ill-conditioned case against
gallery bugs of both sorts, and the backward suite end to end; last, the one-value-per-channel check under
a composed torch convention.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings

from bnverify import tolerances as tols
from bnverify.compare import CheckFailure
from bnverify.loading import load_target
from bnverify.runner import check
from bnverify.strategies import (Case, Unrecorded, batches, cases, make_input, mean_over_std, ordinary_first,
                                 to_dtype_values)
from bnverify.suites import test_bn_backward as backward
from bnverify.suites import test_bn_forward as forward
from bnverify.suites import test_bn_invariance as invariance
from bnverify.suites import test_bn_modes as modes
from bnverify.target import TargetLoadError
from tests.gallery.correct import BatchNorm
from tests.test_invariance import Draws, Recorder

ORDINARY_TOO = "fails at ordinary conditioning too"
TRIGGER = f"ill-conditioning is the trigger: the same check passes on {tols.ORDINARY_RETRIES} ordinary inputs"
M = "tests.gallery.buggy_modules:"
B = "tests.gallery.buggy_modes:"
INV = "tests.gallery.buggy_invariance:"


def _case(shape=(8, 3), dtype=torch.float32, conditioning="large_mean", seed=3, eps=1e-5) -> Case:
    rng = np.random.default_rng(seed)
    x = to_dtype_values(make_input(rng, shape, conditioning, eps), dtype)
    c = shape[1]
    gamma = to_dtype_values(rng.uniform(0.2, 3.0, c) * rng.choice([-1.0, 1.0], c), dtype)
    beta = to_dtype_values(rng.uniform(-3.0, 3.0, c), dtype)
    return Case(x, dtype, eps, True, gamma, beta, 0.1, conditioning, seed)


def _run(check_fn, target, params: dict[str, Any] | None = None, **draws) -> str | None:
    """A suite check's body on the CPU with the given draws and parameters; its failure message, or None."""
    try:
        check_fn.hypothesis.inner_test(bn_target=target, bn_device="cpu", bn_check=Recorder(), data=Draws(**draws),
                                       **(params or {}))
    except CheckFailure as exc:
        return str(exc)
    return None


def _reported_case(msg: str) -> str:
    return next(ln for ln in msg.splitlines() if ln.strip().startswith("case:"))


# --------------------------------------------------------------------------- the helper

class _Body:
    """A check body that fails where ``fails(case)`` says, naming the case; counts its calls and recorders."""

    def __init__(self, fails) -> None:
        self.fails = fails
        self.recorders: list[Any] = []

    def __call__(self, case: Case, chk: Any) -> None:
        self.recorders.append(chk)
        chk.observe(2.0 if self.fails(case) else 0.5)
        if self.fails(case):
            raise CheckFailure(f"wrong\n  case: {case.describe()}")


def test_well_conditioned_failure_is_reported_as_found():
    case = _case(conditioning="ordinary")
    body = _Body(lambda c: True)
    with pytest.raises(CheckFailure) as exc:
        ordinary_first(case, Recorder(), body)
    assert len(body.recorders) == 1
    assert ORDINARY_TOO not in str(exc.value) and "trigger" not in str(exc.value)
    assert "input ordinary" in str(exc.value)


def test_failure_everywhere_is_reported_on_ordinary_input_and_recorded_once():
    case = _case()
    assert case.mean_over_std > tols.ILL_CONDITIONED_MEAN_OVER_STD
    rec = Recorder()
    body = _Body(lambda c: True)
    with pytest.raises(CheckFailure) as exc:
        ordinary_first(case, rec, body)
    msg = str(exc.value)
    assert ORDINARY_TOO in msg and "input ordinary" in _reported_case(msg)
    assert f"the example found first was large_mean input with |mean|/std up to {case.mean_over_std:.3g}" in msg
    # the first ordinary input failed: one re-run, which records nothing on the check
    assert len(body.recorders) == 2 and body.recorders[0] is rec and isinstance(body.recorders[1], Unrecorded)
    assert rec.data == {"worst_ratio": 2.0}


def test_failure_on_ill_conditioned_input_only_names_the_trigger():
    case = _case()
    body = _Body(lambda c: c.mean_over_std > tols.ILL_CONDITIONED_MEAN_OVER_STD)
    with pytest.raises(CheckFailure) as exc:
        ordinary_first(case, Recorder(), body)
    msg = str(exc.value)
    assert TRIGGER in msg and ORDINARY_TOO not in msg
    assert "input large_mean" in _reported_case(msg)
    assert len(body.recorders) == 1 + tols.ORDINARY_RETRIES


def test_derived_batches_count_and_are_ordinary_for_an_ordinary_case():
    """A check that trains on batches derived from the case: their conditioning counts, and an ordinary
    case's derived batches are ordinary (so the re-runs are ordinary throughout)."""
    normal = next(c for s in range(50) for c in [_case(conditioning="normal", seed=s)]
                  if c.mean_over_std < 5 and max(mean_over_std(b) for b in batches(c, 4)) > 10)
    body = _Body(lambda c: max(mean_over_std(b) for b in batches(c, 4)) > 10)
    with pytest.raises(CheckFailure) as exc:
        ordinary_first(normal, Recorder(), body)
    assert "ill-conditioning is the trigger" not in str(exc.value)  # measured on the case's own batch only
    with pytest.raises(CheckFailure) as exc:
        ordinary_first(normal, Recorder(), body, inputs=lambda c: batches(c, 4))
    assert TRIGGER in str(exc.value) and "in the batches the check ran" in str(exc.value)
    ordinary = _case(conditioning="ordinary")
    assert max(mean_over_std(b) for b in batches(ordinary, 4)) <= tols.ORDINARY_MEAN_OVER_STD


def test_skipped_reruns_say_nothing():
    """A re-run that skips neither passes nor fails: with no ordinary verdict the report stays as found."""
    case = _case()

    def body(c: Case, chk: Any) -> None:
        if c.conditioning == "ordinary":
            pytest.skip("not on this input")
        raise CheckFailure(f"wrong\n  case: {c.describe()}")

    with pytest.raises(CheckFailure) as exc:
        ordinary_first(case, Recorder(), body)
    assert str(exc.value) == f"wrong\n  case: {case.describe()}"


def test_hypothesis_reports_the_ordinary_example_of_its_final_run():
    """Under hypothesis the re-runs happen on the example it reports, and its one failure stays one failure."""
    calls = {"ordinary": 0}

    def body(c: Case, chk: Any) -> None:
        calls["ordinary"] += c.conditioning == "ordinary"
        raise CheckFailure(f"wrong\n  case: {c.describe()}")

    @settings(max_examples=5, database=None, deadline=None, derandomize=True,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(case=cases(2, torch.float32, conditionings=("large_mean",)))
    def t(case):
        ordinary_first(case, Recorder(), body)

    with pytest.raises(CheckFailure) as exc:
        t()
    assert ORDINARY_TOO in str(exc.value) and "input ordinary" in _reported_case(str(exc.value))
    assert calls["ordinary"] == 1  # the final example only, never while searching or shrinking


# --------------------------------------------------------------------------- the suites, on gallery bugs

F32 = {"dtype": torch.float32}
ILL = _case()
ILL64 = _case(dtype=torch.float64)
PERM = _case(shape=(40, 2))

SUITE_CASES = [
    # (id, check, target, parameters, draws, expected)
    ("backward-ill-no-variance-term", backward.test_backward_ill_conditioned, M + "NoVarianceTermBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("backward-ill-one-pass-recompute", backward.test_backward_ill_conditioned,
     M + "OnePassRecomputeBackwardBatchNorm", F32, {"rank": 2, "case": ILL}, TRIGGER),
    ("backward-train-no-variance-term", backward.test_backward_train, M + "NoVarianceTermBatchNorm",
     {"rank": 2, "dtype": torch.float32}, {"case": ILL}, ORDINARY_TOO),
    ("backward-eval-train-formula", backward.test_backward_eval, M + "EvalTrainBackwardBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("gradcheck-no-variance-term", backward.test_gradcheck, M + "NoVarianceTermBatchNorm", {},
     {"rank": 2, "case": ILL64}, ORDINARY_TOO),
    ("forward-eval-batch-stats", forward.test_forward_eval, M + "EvalBatchStatsBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-running-stats-biased", modes.test_running_stats, B + "BiasedRunningVarBatchNorm",
     {"dtype": torch.float32, "which": "default"}, {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-running-stats-one-pass", modes.test_running_stats, M + "OnePassVarianceBatchNorm",
     {"dtype": torch.float32, "which": "default"}, {"rank": 2, "case": ILL}, TRIGGER),
    ("modes-momentum-none", modes.test_momentum_none, B + "MomentumNoneAsDefaultBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-toggling-inverted", modes.test_mode_toggling, B + "InvertedMomentumBatchNorm", {},
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-toggling-one-pass", modes.test_mode_toggling, M + "OnePassVarianceBatchNorm", {},
     {"rank": 2, "case": ILL}, TRIGGER),
    ("modes-eval-updates", modes.test_eval_uses_running_stats, B + "EvalUpdatesStatsBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-eval-per-sample", modes.test_eval_per_sample, B + "EvalBatchStatsUnlessSingleBatchNorm", {},
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-counter", modes.test_num_batches_tracked, B + "CounterNotIncrementedBatchNorm", {},
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-state-dict", modes.test_state_dict_roundtrip, B + "StatsNotBuffersBatchNorm", {},
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-no-tracking", modes.test_no_tracking, B + "NoTrackKeepsBuffersBatchNorm", {},
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-affine-false", modes.test_affine_false, B + "AffineFalseParamsBatchNorm", {},
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("modes-fold", modes.test_fold, B + "EvalHardcodedEpsBatchNorm", F32,
     {"rank": 2, "case": _case(eps=0.1)}, ORDINARY_TOO),
    ("invariance-scale-std-floor", invariance.test_scale_exact, INV + "StdFloorBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("invariance-negative-prescale", invariance.test_scale_negative, INV + "PrescaleForgetsEpsBatchNorm", {},
     {"rank": 2, "dtype": torch.float64, "case": ILL64}, ORDINARY_TOO),
    ("invariance-fixed-eps-one-pass", invariance.test_scale_fixed_eps, M + "OnePassVarianceBatchNorm", F32,
     {"rank": 2, "case": ILL}, TRIGGER),
    ("invariance-shift-ema-mean", invariance.test_shift, INV + "EmaMeanBatchNorm", F32,
     {"rank": 2, "case": ILL}, ORDINARY_TOO),
    ("invariance-permutation-first-samples", invariance.test_batch_permutation, INV + "batch_norm_first_samples", {},
     {"rank": 2, "dtype": torch.float32, "case": PERM}, ORDINARY_TOO),
]


@pytest.mark.parametrize("check_fn, spec, params, draws, expected", [c[1:] for c in SUITE_CASES],
                         ids=[c[0] for c in SUITE_CASES])
def test_suite_failure_on_ill_conditioned_case(check_fn, spec, params, draws, expected):
    """The check fails on the ill-conditioned case; a bug that fails everywhere is reported on an ordinary
    case (the example it was found on named), a bug that fails only there names ill-conditioning."""
    case = draws["case"]
    assert case.mean_over_std > tols.ILL_CONDITIONED_MEAN_OVER_STD
    msg = _run(check_fn, load_target(spec), params, **draws)
    assert msg is not None, f"{spec} passed {check_fn.__name__} on {case.describe()}"
    assert expected in msg, msg
    if expected == ORDINARY_TOO:
        assert TRIGGER not in msg
        assert "input ordinary" in _reported_case(msg), msg
        assert f"the example found first was large_mean input with |mean|/std up to {case.mean_over_std:.3g}" in msg
    else:
        assert ORDINARY_TOO not in msg
        assert "input large_mean" in _reported_case(msg), msg


def test_correct_target_passes_the_ill_conditioned_cases():
    """The same cases on a correct batch norm pass (the re-runs are never reached)."""
    target = load_target("tests.gallery.correct:BatchNorm")
    for _id, check_fn, _spec, params, draws, _ in SUITE_CASES:
        assert _run(check_fn, target, params, **draws) is None, _id


@pytest.mark.parametrize("bug, expected", [("NoVarianceTermBatchNorm", ORDINARY_TOO),
                                           ("OnePassRecomputeBackwardBatchNorm", TRIGGER)])
def test_backward_suite_reports_ill_conditioned_failures_as_the_issue_asks(bug, expected):
    """End to end (hypothesis, seed 0): test_backward_ill_conditioned draws only ill-conditioned input; a
    backward that drops a term is reported on ordinary input, a one-pass recomputation names the trigger."""
    code, summary = check(M + bug, suites=["backward"], seed=0, max_examples=10,
                          extra=["-k", "test_backward_ill_conditioned"])
    assert code == 1 and summary is not None
    failed = [r for r in summary.results if r.failed]
    assert len(failed) == 2  # float32 and float64
    for r in failed:
        assert expected in r.message, r.message
        assert ("input ordinary" if expected == ORDINARY_TOO else "input large_mean") in _reported_case(r.message)


# --------------------------------------------------------------------------- one value per channel

class SingleValueBiasedBatchNorm(BatchNorm):
    """Correct, except that one value per channel in training raises nothing: the batch variance 0 is
    averaged into running_var (the biased update) and the output is beta."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        m = input.numel() // input.shape[1]
        if self.training and self.track_running_stats and m == 1:
            w = self.momentum if self.momentum is not None else 1.0
            self.num_batches_tracked.add_(1)
            with torch.no_grad():
                self.running_mean.mul_(1 - w).add_(input.detach().reshape(-1).to(self.running_mean.dtype), alpha=w)
                self.running_var.mul_(1 - w)
            shape = (1, -1) + (1,) * (input.dim() - 2)
            return torch.zeros_like(input) + (0 if self.bias is None else self.bias.reshape(shape))
        return super().forward(input)


SINGLE = "tests.test_minimal_examples:SingleValueBiasedBatchNorm"


@pytest.mark.parametrize("aspects, name, fails", [
    ({}, "torch", True),
    ({"eps": 1e-6}, "torch+eps=1e-6", True),
    ({"momentum": 0.2}, "torch+momentum=0.2", True),
    ({"running_var": "biased"}, "torch+running-var=biased", False),
])
def test_single_value_per_channel_follows_the_running_variance_aspect(aspects, name, fails):
    """An unbiased running variance (torch's, composed or not) has no value for one sample, so the target must
    raise; a biased one (any base) takes the biased update.  Branching on the name ``torch`` let
    ``torch+eps=1e-6`` take the lenient branch."""
    target = load_target(SINGLE, aspects=aspects)
    assert target.convention.name == name
    case = _case(conditioning="ordinary")
    msg = _run(modes.test_single_value_per_channel, target, rank=2, case=case)
    if fails:
        assert msg is not None and "returned without an error" in msg and f"({name} convention)" in msg, msg
    else:
        assert msg is None, msg
    # torch itself raises, under every one of these conventions
    assert _run(modes.test_single_value_per_channel, load_target("torch", aspects=aspects), rank=2, case=case) is None


def test_init_conventions_have_no_composed_names():
    """``suites/test_init.py`` branches on ``conv.name == "torch"`` too: initializer conventions take no aspect
    flags, so no composed name can miss that branch."""
    with pytest.raises(TargetLoadError, match="does not apply"):
        load_target("torch.nn.init:kaiming_normal_", aspects={"eps": 1e-6})


# --------------------------------------------------------------------------- the gallery's own runs

def _gallery_runs() -> list[Any]:
    from tests.test_broken_targets import BUGS

    return [b for b in BUGS if set(b.suites) & {"backward", "modes", "invariance"}
            and not getattr(b, "expect", ()) and not getattr(b, "passes", ())]


@pytest.mark.parametrize("bug", _gallery_runs(), ids=lambda b: b.id)
def test_gallery_reports_no_unexplained_ill_conditioned_case(bug, check_runs):
    """In each gallery bug's one run (seed 0, no shrinking: the first failing example), a backward, modes or
    invariance failure reported on an ill-conditioned case says that ordinary input passes.  (Before the
    re-runs, 23 of these failures were reported on |mean|/std 11 to inf without saying so.)"""
    code, summary = check_runs.bug(bug)
    assert summary is not None
    for r in summary.results:
        if not r.failed or r.suite not in ("backward", "modes", "invariance") or "case:" not in r.message:
            continue
        if r.check.split("[")[0] in ("test_eps_honoured", "test_bn_param_defaults"):
            continue  # ill-conditioned on purpose (see suites/test_bn_modes.py)
        line = _reported_case(r.message)
        if "|mean|/std up to " not in line:
            continue  # a LayerCase (the preceding layer's u and W)
        ratio = float(line.split("|mean|/std up to ")[1].split(")")[0])
        if ratio > tols.ILL_CONDITIONED_MEAN_OVER_STD:
            assert TRIGGER in r.message, f"{bug.id} {r.check}:\n{r.message}"
