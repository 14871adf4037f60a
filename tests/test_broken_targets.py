"""The gallery: every deliberately wrong batch norm must be failed, by the check meant to catch it.

A check that cannot fail is a defect.  Each ``Bug`` in ``tests/gallery/registry*.py`` names the
suite checks that must fail on it; this runs exactly those suites against it, as a user would.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tests.gallery
from tests.gallery.registry import Bug

REPO = Path(__file__).resolve().parents[1]


def all_bugs() -> list[Bug]:
    bugs: list[Bug] = []
    for info in pkgutil.iter_modules(tests.gallery.__path__):
        if not info.name.startswith("registry"):
            continue
        mod = importlib.import_module(f"tests.gallery.{info.name}")
        for name, value in vars(mod).items():
            if name.endswith("_BUGS") and isinstance(value, tuple):
                bugs.extend(b for b in value if isinstance(b, Bug))
    return bugs


BUGS = all_bugs()


def test_gallery_is_large_enough():
    assert len({b.id for b in BUGS}) == len(BUGS), "bug ids must be unique"
    assert len(BUGS) >= 15


# Checks whose buggy implementations live beside their own meta-tests rather than in a registry.
CAUGHT_ELSEWHERE = {
    "test_drop_rate": "tests/test_dropout.py (KeepProb)",
    "test_scaling": "tests/test_dropout.py (NoScale, EvalDrops)",
    "test_independent_masks": "tests/test_dropout.py (FixedSeed, RowMask)",
    "test_convergence": "tests/test_convergence_suite.py (stats-as-constants, no-variance-term, cs231n dx bugs)",
    "test_seed_claim": "tests/test_convergence_suite.py (a bug fails a claim the reference reproduces)",
    "test_trajectory": "tests/test_optim.py (AdamNoBiasCorrection, SGDZeroBufferDampening, SGDNesterovOldBuffer)",
    "test_param_groups": "tests/test_optim.py (AdamGroupHyperparametersIgnored)",
    "test_weight_decay": "tests/test_optim.py (AdamWDecayAfterUpdate, AdamDecoupledDecay, SGDWeightDecayOnlyWithMomentum)",
    "test_large_eps": "tests/test_optim.py (RMSpropEpsInsideSqrt, AdamNoBiasCorrection)",
    "test_lr_change": "tests/test_optim.py (SGDCachedLR)",
    "test_missing_gradients": "tests/test_optim.py (SGDNoneGradAsZero, AdamRejectsZeroSize)",
    "test_state_dict": "tests/test_optim.py (AdamStateOutsideStateDict)",
    "test_float32": "tests/test_optim.py (AdamHalfSecondMoment)",
    "test_flags": "tests/test_optim.py (SGDForeachIgnoresMomentum)",
    "test_bench_forward_train": "tests/test_bench.py (WrongShapeBatchNorm)",
    "test_bench_backward": "tests/test_bench.py (CrashInBackwardBatchNorm)",
    "test_bench_train_step": "tests/test_bench.py (CrashInBackwardBatchNorm)",
    "test_bench_forward_eval": "tests/test_bench.py (CrashAfterCallsBatchNorm: a crash only timing reaches)",
    "test_bench_report": "tests/test_bench.py (a 2x slowdown against a baseline; ThriceForwardBatchNorm)",
    "test_optim_convergence": "tests/test_optim_convergence.py (SGDMomentumOutOfPlace)",
    "test_law": "tests/test_init.py (kaiming_normal_std_as_variance_, xavier_normal_fan_in_only_)",
    "test_fan_axes": "tests/test_init.py (kaiming_normal_in_out_layout_, kaiming_uniform_fans_unpacked_swapped_)",
    "test_arguments": "tests/test_init.py (kaiming_normal_no_gain_, kaiming_uniform_a_not_squared_, kaiming_uniform_always_he_, ...)",
    "test_bounds_and_tails": "tests/test_init.py (kaiming_uniform_no_sqrt3_, kaiming_normal_truncated_, keras_he_normal_uncorrected_)",
    "test_contract": "tests/test_init.py (kaiming_normal_not_in_place_, kaiming_normal_no_grad_missing_, kaiming_uniform_reshaped_copy_)",
    "test_generator": "tests/test_init.py (kaiming_normal_ignores_generator_)",
    "test_low_rank": "tests/test_init.py (kaiming_normal_no_checks_)",
    "test_zero_element": "tests/test_init.py (kaiming_normal_no_checks_)",
    "test_six_layer_study": "tests/test_init.py (kaiming_normal_no_gain_ leaves the reference's band)",
}


def test_every_check_has_a_bug_that_it_catches():
    """A check that cannot fail is a defect: each suite check is named in some bug's ``catches``."""
    checks = set()
    for path in (REPO / "suites").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                checks.add(node.name)
    caught = {c for b in BUGS for c in b.catches}
    uncaught = sorted(checks - caught - set(CAUGHT_ELSEWHERE))
    assert not uncaught, f"checks no gallery bug is registered to fail: {uncaught}"
    assert set(CAUGHT_ELSEWHERE) <= checks, "stale CAUGHT_ELSEWHERE entries"


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.id)
def test_bug_is_caught(bug: Bug, check_runs):
    # the bug's one run of the session (tests/conftest.py), shared with the suites' own meta-tests
    expect = getattr(bug, "expect", ())
    passes = getattr(bug, "passes", ())
    if expect or passes:  # registry_truth: only the checks whose messages are asserted
        names = sorted({*bug.catches, *passes, *(c for c, _, _ in expect)})
        code, summary = check_runs.get(bug.target, kind=bug.kind, suites=tuple(bug.suites), seed=0,
                                       extra=("-k", " or ".join(names)))
    else:
        code, summary = check_runs.bug(bug)
    assert summary is not None, f"no summary (exit {code})"
    failed = {r.check.split("[")[0] for r in summary.results if r.failed}
    missed = [c for c in bug.catches if c not in failed]
    assert not missed, (
        f"{bug.id} ({bug.bug_class}): {bug.description}\n"
        f"expected {missed} to fail; failed: {sorted(failed) or 'nothing'}"
    )
    assert code == 1
    # every failure explains itself: what was expected, and a tolerance or a reason
    for r in summary.results:
        if r.failed:
            assert r.message.strip(), f"{r.check} failed without a message"
    # right or silent: each failure names the cause its hypothesis reproduces, or says none does
    for check_name, present, absent in expect:
        msgs = [r.message for r in summary.results if r.failed and r.check.split("[")[0] == check_name]
        assert msgs, f"{bug.id}: {check_name} did not fail"
        for msg in msgs:
            assert any(p in msg for p in present), f"{bug.id}: {check_name} names none of {present}:\n{msg}"
            wrong = [a for a in absent if a in msg]
            assert not wrong, f"{bug.id}: {check_name} names a cause its numbers do not support {wrong}:\n{msg}"
    for check_name in passes:
        bad = [r.check for r in summary.results if r.failed and r.check.split("[")[0] == check_name]
        assert not bad, f"{bug.id}: {bad} failed, but the bug does not touch them"
