"""Diagnoses are right or silent: each cause sentence of ``bnverify.diagnose`` is printed only where its
hypothesis, simulated, reproduces the evidence, and a look-alike that it does not reproduce gets none.

Three layers:

* every fixed sentence (a module-level constant) either says what was observed, ending "observed, not a
  diagnosis", or is in ``EVIDENCED``, where the check's own observation is the cause;
* each reproducing function, on numbers made by the bug it names (the sentence is returned) and on a
  near miss (it is not);
* the gallery pairs of ``tests/gallery/registry_truth.py`` (``AUDIT_BUGS``), run as a user runs them:
  ``tests/test_broken_targets.py`` holds each failure to its phrases; here, once a suite hands the
  evidence to the function that reproduces it (``CausedBug.wired``), the failure must name the cause
  itself instead of the observation.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from bnverify import diagnose
from bnverify import tolerances as tols
from bnverify.compare import NO_KNOWN_CAUSE
from bnverify.conventions import CONVENTIONS
from bnverify.diagnose.common import OBSERVED, cause_lines
from bnverify.reference import batchnorm as oracle
from tests.gallery.registry_truth import AUDIT_BUGS, NEUTRAL, CausedBug

REPO = Path(__file__).resolve().parents[1]
TORCH, CS231N = CONVENTIONS["torch"], CONVENTIONS["cs231n"]

# --------------------------------------------------------------------------- fixed sentences

EVIDENCED = {
    "modes.FROZEN": "running_statistics simulates it (buffers kept as constructed) before naming it",
    "forward.NO_EPS": "train_output's hypothesis list simulates it (g (x - mean) / sqrt(var) + b) before naming it",
    "modes.SINGLE_VALUE_CORRUPTS": "the check saw the call raise after the buffers changed: that order is the cause",
    "modes.SINGLE_VALUE_NO_ERROR": "what torch does instead (ValueError), and why; not a guess at the target's code",
    "modes.GRAD_MODE_DESIGN": "probe_mode_source classified each output by the statistics that reproduce it",
    "modes.MODE_SOURCE[always-train]": "probe_mode_source: the output under .eval() is the batch-statistics one",
    "modes.MODE_SOURCE[always-eval]": "probe_mode_source: the output under .train() is the running-statistics one",
    "modes.GRAPH_IN_BUFFERS": "a buffer with a grad_fn is the graph attached to it, seen directly",
}
"""Fixed sentences whose cause is the check's own observation, with why."""


def _fixed_sentences() -> dict[str, str]:
    out = {}
    for name in ("backward", "common", "conventions", "forward", "invariance", "modes"):
        mod = importlib.import_module(f"bnverify.diagnose.{name}")
        for attr, value in vars(mod).items():
            if attr.isupper() and isinstance(value, str) and attr not in ("OBSERVED", "NO_KNOWN_CAUSE"):
                out[f"{name}.{attr}"] = value
            elif attr.isupper() and isinstance(value, dict):
                out.update({f"{name}.{attr}[{k}]": v for k, v in value.items() if isinstance(v, str)})
    return out


def test_every_fixed_sentence_is_an_observation_or_its_own_evidence():
    sentences = _fixed_sentences()
    assert len(sentences) >= 15, sorted(sentences)
    guesses = [k for k, v in sentences.items() if not v.endswith(OBSERVED) and k not in EVIDENCED]
    assert not guesses, f"fixed sentences that name a cause no simulation backs: {guesses}"
    assert set(EVIDENCED) <= set(sentences), "stale EVIDENCED entries"


def test_observations_from_the_formerly_guessing_functions():
    assert diagnose.forward.layout("strided").endswith(OBSERVED)
    assert "counts eval calls" not in diagnose.modes.num_batches_tracked(["after call 3 (eval): expected 2, got 0"])
    for line in (diagnose.invariance.scale_break(1e-6, [(0.5, True), (1e-6, False), (1e6, True)])
                 + diagnose.invariance.scale_break(1e9, [(0.5, True), (1e-6, True), (1e9, False)])
                 + diagnose.invariance.scale_break(-2.0, [(2.0, True), (-2.0, False)])
                 + diagnose.invariance.scale_break(1e-6, [(0.5, True), (1e-6, False), (1e9, False)])):
        assert line.endswith(OBSERVED) and "none was simulated" in line
    assert cause_lines([]) == f"\n  {NO_KNOWN_CAUSE}"
    assert cause_lines(["a", "b"]) == "\n  likely cause: a\n  likely cause: b"


# --------------------------------------------------------------------------- each reproduction and its near miss

MODES = [True, True, False, True, False, False]


def test_counter_names_the_sequence_it_reproduces():
    never = diagnose.modes.counter([0, 0, 0, 0, 0, 0, 0], MODES)
    every = diagnose.modes.counter([0, 1, 2, 3, 4, 5, 6], MODES)
    assert len(never) == 1 and "never incremented" in never[0]
    assert len(every) == 1 and "counts every forward call" in every[0]
    assert "twice" in diagnose.modes.counter([0, 2, 4, 4, 6, 6, 6], MODES)[0]
    assert "starts at 5" in diagnose.modes.counter([5, 6, 7, 7, 8, 8, 8], MODES)[0]
    # near misses: counts that stop after two calls, or count eval calls only after the first
    assert diagnose.modes.counter([0, 1, 2, 2, 2, 2, 2], MODES) == []
    assert diagnose.modes.counter([0, 1, 2, 2, 4, 5, 6], MODES) == []


def test_fresh_defaults_names_a_fill_only_if_it_gives_every_value():
    z, o = np.zeros(3), np.ones(3)
    assert "filled with zeros like running_mean" in diagnose.modes.fresh_defaults(o, z, z, z)[0]
    assert "swapped" in diagnose.modes.fresh_defaults(o, z, o, z)[0]
    assert "swapped" in diagnose.modes.fresh_defaults(z, o, z, o)[0]
    assert diagnose.modes.fresh_defaults(o, z, z, np.full(3, 0.5)) == []
    assert diagnose.modes.fresh_defaults(o, z, z, np.array([0.0, 0.0, 1.0])) == []  # one channel right
    rng = np.random.default_rng(0)
    assert diagnose.modes.fresh_defaults(o, z, rng.standard_normal(3), rng.standard_normal(3)) == []  # empty memory


def _course_step(momentum: float, x: np.ndarray, rv0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    mu, var, _ = oracle.batch_stats(x)
    return (1 - momentum) * mu, momentum * rv0 + (1 - momentum) * var


@pytest.mark.parametrize("shape", [(2, 1), (5, 3), (64, 8)])
def test_bn_param_defaults_names_the_momentum_and_the_flag_that_reproduce(shape):
    x = np.random.default_rng(shape[0]).standard_normal(shape) + 0.3
    (cause,) = diagnose.modes.bn_param_defaults(CS231N, x, *_course_step(0.1, x))
    assert "default momentum of 0.1 " in cause and "pass --momentum 0.1 (momentum as the decay of the old value)" in cause
    assert "read as the weight of the new batch" in cause  # 0.9 as the new weight gives the same step
    (cause,) = diagnose.modes.bn_param_defaults(CS231N, x, *_course_step(0.99, x))
    assert "pass --momentum 0.99 " in cause and "--convention flax" in cause and "keras" not in cause
    assert "B4" not in cause
    (cause,) = diagnose.modes.bn_param_defaults(CS231N, x, *_course_step(0.87654321, x))
    assert "pass --momentum 0.87654321 " in cause  # as exact as the check needs, not 0.8765
    (cause,) = diagnose.modes.bn_param_defaults(CS231N, x, *_course_step(0.9, x, rv0=1.0))
    assert "start at running_mean 0, running_var 1" in cause


def test_bn_param_defaults_names_nothing_that_does_not_reproduce():
    x = np.random.default_rng(3).standard_normal((6, 3)) + 0.3
    rm, rv = _course_step(0.1, x)
    assert diagnose.modes.bn_param_defaults(CS231N, x, rm, rv + 1e-5) == []  # the course's var + eps bug
    assert diagnose.modes.bn_param_defaults(CS231N, x, rm, 0.5 * rv) == []  # mean and variance disagree
    assert diagnose.modes.bn_param_defaults(CS231N, x, rm + 1e-9, rv) == []  # off by more than rounding
    assert diagnose.modes.bn_param_defaults(CS231N, x, *_course_step(0.9, x)) == []  # correct


def test_default_momentum_calls_it_inverted_only_when_it_is():
    assert "bug class B4" in diagnose.modes.default_momentum(0.9, TORCH)
    assert "pass --momentum 0.9 " in diagnose.modes.default_momentum(0.9, TORCH)
    assert "B4" not in diagnose.modes.default_momentum(0.3, TORCH)
    assert "--momentum 0.3 " in diagnose.modes.default_momentum(0.3, TORCH)


def test_eps_flag_is_a_value_the_default_eps_check_accepts():
    for measured in (1e-6, 1.0000003e-6, 1.234567e-3, 1.005e-3, 9.9995e-4, 3.3e-7):
        hint = diagnose.conventions.eps_hint(measured, TORCH)
        value = float(hint.split("--eps ")[1].split()[0])
        assert abs(value - measured) <= 0.5 * tols.DEFAULT_EPS_RTOL * value, hint
    assert "--eps 1e-6" in diagnose.conventions.eps_hint(1.0000003e-6, TORCH)


def _life(xs, rm, rv, momentum=0.1, unbiased=True):
    for x in xs:
        rm, rv, _ = oracle.update_running(rm, rv, x, momentum=momentum, unbiased=unbiased)
    return rm, rv


def test_eval_updates_named_only_for_a_training_update_per_call():
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((8, 3)) for _ in range(2)]
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    got = _life(xs, rm, rv)
    assert "on every eval call" in diagnose.modes.eval_updates(TORCH, 0.1, rm, rv, xs, *got, torch.float32)[0]
    assert "first 1 of the 2" in diagnose.modes.eval_updates(TORCH, 0.1, rm, rv, xs, *_life(xs[:1], rm, rv),
                                                            torch.float32)[0]
    assert diagnose.modes.eval_updates(TORCH, 0.1, rm, rv, xs, *_life(xs, rm, rv, momentum=0.5), torch.float32) == []
    assert diagnose.modes.eval_updates(TORCH, 0.1, rm, rv, xs, rm, rv * 1.01, torch.float32) == []


PLAN = [(True, 0), (False, 1), (True, 2), (False, 3), (False, 0), (True, 3), (False, 2)]


def test_mode_switch_names_the_sequence_it_reproduces():
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((6, 2)) for _ in range(4)]
    rm0, rv0 = np.zeros(2), np.ones(2)
    step = 3  # the eval before which the statistics are read: after train 0, eval 1, train 2

    def run(updates):
        return _life([xs[b] for i, (t, b) in enumerate(PLAN[:step]) if updates(i, t)], rm0, rv0)

    def causes(got):
        return diagnose.modes.mode_switch(TORCH, 0.1, PLAN, xs, rm0, rv0, step, *got, torch.float32)

    assert "every eval call too" in causes(run(lambda i, t: True))[0]
    assert "skipped" in causes(run(lambda i, t: t and i != 2))[0]
    half = _life([xs[2]], *_life([xs[0]], rm0, rv0), momentum=0.05)  # the step after eval with half the momentum
    assert causes(half) == []


def test_eval_cache_and_eval_updates_output():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 2))
    g, b = np.array([1.5, 0.5]), np.array([0.1, -0.2])
    early = (rng.standard_normal(2), rng.uniform(0.5, 2, 2))
    now = (rng.standard_normal(2), rng.uniform(0.5, 2, 2))
    tol = tols.forward_eval(x, g, b, *now, 1e-5, torch.float32)
    cached = oracle.forward_eval(x, g, b, *early, 1e-5)
    assert "eval step 2" in diagnose.modes.eval_cache(cached, x, g, b, [(2, *early)], 1e-5, tol)[0]
    blend = oracle.forward_eval(x, g, b, (early[0] + now[0]) / 2, (early[1] + now[1]) / 2, 1e-5)
    assert diagnose.modes.eval_cache(blend, x, g, b, [(2, *early)], 1e-5, tol) == []
    updated = oracle.forward_eval(x, g, b, *_life([x], *now), 1e-5)
    assert "updated on this batch first" in diagnose.modes.eval_updates_output(
        TORCH, 0.1, updated, x, g, b, *now, 1e-5, torch.float32)[0]
    assert diagnose.modes.eval_updates_output(TORCH, 0.1, blend, x, g, b, *now, 1e-5, torch.float32) == []


def test_single_value_nonfinite_needs_the_mean_right_and_the_variance_nonfinite():
    x = np.array([[0.7, -1.2]])
    rm0, rv0 = np.zeros(2), np.ones(2)
    rm = 0.1 * x[0]
    assert "m/(m-1) with m=1" in diagnose.modes.single_value_nonfinite(TORCH, 0.1, x, rm0, rv0, rm, np.full(2, np.nan))[0]
    assert diagnose.modes.single_value_nonfinite(TORCH, 0.1, x, rm0, rv0, np.full(2, np.nan), np.full(2, np.nan)) == []
    assert diagnose.modes.single_value_nonfinite(TORCH, 0.1, x, rm0, rv0, rm, np.array([np.nan, 1.0])) == []


def test_no_tracking_eval():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 3)) + 1.0
    g, b = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    tol = tols.forward_train(x, g, b, 1e-5, torch.float32)
    fresh = oracle.forward_eval(x, g, b, np.zeros(3), np.ones(3), 1e-5)
    assert "fresh module" in diagnose.modes.no_tracking_eval(fresh, x, g, b, 1e-5, tol)[0]
    mu, var, _ = oracle.batch_stats(x)
    double = oracle.forward_eval(x, g, b, mu, 2 * var, 1e-5)
    assert diagnose.modes.no_tracking_eval(double, x, g, b, 1e-5, tol) == []


def test_state_dict_buffers_by_inspection():
    from tests.gallery.buggy_modes import StatsNotBuffersBatchNorm
    from tests.gallery.buggy_truth import NonPersistentStatsBatchNorm, StateDictFilterBatchNorm

    for cls, phrase in ((StatsNotBuffersBatchNorm, "plain tensor attributes"),
                        (NonPersistentStatsBatchNorm, "persistent=False")):
        m = cls(3)
        (cause,) = diagnose.modes.state_dict_buffers(m, m.state_dict())
        assert phrase in cause
    m = StateDictFilterBatchNorm(3)
    assert diagnose.modes.state_dict_buffers(m, m.state_dict()) == []
    wrapped = torch.nn.Sequential(NonPersistentStatsBatchNorm(3))
    assert "0.running_mean" in diagnose.modes.state_dict_buffers(wrapped, wrapped.state_dict())[0]


def test_folded_layer_uses_the_eval_hypotheses_on_the_layer_output():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((4, 3))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    mu, var, _ = oracle.batch_stats(z)
    batch_stats_out = oracle.forward_eval(z, None, None, mu, var, 1e-5)
    assert "batch's own statistics" in diagnose.modes.folded_layer(batch_stats_out, z, None, None, rm, rv, 1e-5,
                                                                   torch.float32)[0]
    assert diagnose.modes.folded_layer(batch_stats_out * 1.01, z, None, None, rm, rv, 1e-5, torch.float32) == []


def test_layout_output_simulates_the_storage_read_as_contiguous():
    rng = np.random.default_rng(9)
    base = torch.from_numpy(rng.standard_normal((4, 3, 2, 5)))
    x = base.contiguous(memory_format=torch.channels_last)
    tol = tols.forward_train(base.numpy(), None, None, 1e-5, torch.float64)
    misread = x.as_strided(tuple(x.shape), base.stride(), x.storage_offset()).numpy()
    out = oracle.forward_train(misread, None, None, 1e-5)[0]
    assert "storage read with contiguous" in diagnose.forward.layout_output(out, x, None, None, 1e-5, tol,
                                                                            "channels_last")[0]
    no_eps = (base.numpy() - base.numpy().mean((0, 2, 3), keepdims=True)) / base.numpy().std((0, 2, 3), keepdims=True)
    assert diagnose.forward.layout_output(no_eps, x, None, None, 1e-5, tol, "channels_last") == []


def test_std_floor_named_only_for_a_clamp():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 4)) * np.array([1e-4, 3e-4, 1.0, 2.0])  # two channels below the floor
    mu, var, _ = oracle.batch_stats(x)
    tol = tols.forward_train(x, None, None, 1e-8, torch.float64)
    clamped = (x - mu) / np.maximum(np.sqrt(var + 1e-8), 1e-3)
    causes = diagnose.forward.train_output(clamped, x, None, None, 1e-8, tol, torch.float64)
    assert any("max(sqrt(var + eps), 0.001)" in c for c in causes), causes
    plus = (x - mu) / (np.sqrt(var + 1e-8) + 1e-3)
    assert not any("clamped" in c for c in diagnose.forward.train_output(plus, x, None, None, 1e-8, tol, torch.float64))


# --------------------------------------------------------------------------- the gallery pairs, end to end

def _wired(function: str, suite: str) -> bool:
    """Does the suite hand its evidence to ``diagnose.<function>``?"""
    return f"diagnose.{function}(" in (REPO / "suites" / f"test_bn_{suite}.py").read_text()


def _cases() -> list[tuple[CausedBug, str, str, str | None]]:
    return [(b, c, f, p) for b in AUDIT_BUGS if isinstance(b, CausedBug) for c, f, p in b.wired]


@pytest.mark.parametrize("bug,check_name,function,phrase", _cases(), ids=lambda v: getattr(v, "id", None))
def test_a_wired_check_names_the_reproduced_cause(bug, check_name, function, phrase, check_runs):
    """The same run as ``tests/test_broken_targets.py``'s (shared through ``check_runs``)."""
    if not _wired(function, bug.suites[0]):
        pytest.skip(f"suites/test_bn_{bug.suites[0]}.py does not call diagnose.{function} yet: the failure says "
                    "what was observed (tests/test_broken_targets.py holds it to that)")
    names = sorted({*bug.catches, *bug.passes, *(c for c, _, _ in bug.expect)})
    code, summary = check_runs.get(bug.target, kind=bug.kind, suites=tuple(bug.suites), seed=0,
                                   extra=("-k", " or ".join(names)))
    assert summary is not None, f"no summary (exit {code})"
    msgs = [r.message for r in summary.results if r.failed and r.check.split("[")[0] == check_name]
    assert msgs, f"{bug.id}: {check_name} did not fail"
    for msg in msgs:
        if phrase is None:  # a look-alike: the sentence is absent (test_broken_targets), and the report says so
            assert NEUTRAL in msg or "likely cause:" in msg, f"{bug.id}: {check_name} says nothing about a cause:\n{msg}"
        else:
            assert phrase in msg, f"{bug.id}: {check_name} does not name {phrase!r}:\n{msg}"


# --------------------------------------------------------------------------- sentences that were simulated already

def _bounds(xs, rm0, rv0, w, dtype=torch.float64):
    bm, bv = np.zeros_like(rm0), np.zeros_like(rv0)
    rm, rv = rm0, rv0
    out = ([], [])
    for x in xs:
        bm, bv = tols.running_update(x, rm, rv, w, True, dtype, bm, bv)
        rm, rv = _life([x], rm, rv, momentum=w)
        out[0].append(bm)
        out[1].append(bv)
    return out


def test_running_statistics_frozen_and_inverted_only_when_simulated():
    """The sentences the audit started from: each is a simulated life matched against the check's bounds."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((6, 2)) + 0.5 for _ in range(3)]
    rm0, rv0 = np.zeros(2), np.ones(2)
    mb, vb = _bounds(xs, rm0, rv0, 0.1)

    def causes(means, vars_):
        return diagnose.modes.running_statistics(TORCH, xs, rm0, rv0, 0.1, means, vars_, mb, vb, eps=1e-5)

    frozen = causes([rm0] * 3, [rv0] * 3)
    assert any("never change in training" in c for c in frozen), frozen
    barely = [_life(xs[:k + 1], rm0, rv0, momentum=1e-3) for k in range(3)]
    assert not any("never change" in c for c in causes([b[0] for b in barely], [b[1] for b in barely]))
    inverted = [_life(xs[:k + 1], rm0, rv0, momentum=0.9) for k in range(3)]
    assert any("bug class B4" in c for c in causes([b[0] for b in inverted], [b[1] for b in inverted]))
    near = [_life(xs[:k + 1], rm0, rv0, momentum=0.85) for k in range(3)]
    assert causes([b[0] for b in near], [b[1] for b in near]) == []


def test_train_output_with_running_statistics_only_when_it_is_them():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 2)) + 1.0
    rm, rv = np.array([0.3, -0.2]), np.array([1.5, 0.7])
    tol = tols.forward_train(x, None, None, 1e-5, torch.float64)
    with_running = oracle.forward_eval(x, None, None, rm, rv, 1e-5)
    assert any("running statistics" in c for c in diagnose.forward.train_output(
        with_running, x, None, None, 1e-5, tol, torch.float64, (rm, rv)))
    other = oracle.forward_eval(x, None, None, rm + 0.01, rv, 1e-5)
    assert not any("running statistics" in c for c in diagnose.forward.train_output(
        other, x, None, None, 1e-5, tol, torch.float64, (rm, rv)))


def test_no_eps_and_a_written_in_eps_are_named_together_when_both_reproduce():
    """Variances that dwarf eps: no eps and eps = 1e-6 give the same output within the tolerance, so the
    report names both in one sentence; at variances near eps only the one that reproduces is named."""
    rng = np.random.default_rng(0)
    g, b = np.ones(3), np.zeros(3)
    wide = rng.normal(3, 2, (16, 3))
    narrow = rng.normal(0, 1e-3, (16, 3))
    for x, merged in ((wide, True), (narrow, False)):
        mu, var = x.mean(0), x.var(0)
        tol = tols.forward_train(x, g, b, 1e-5, torch.float32)
        for e in (1e-6, 0.0):
            causes = diagnose.forward.train_output((x - mu) / np.sqrt(var + e), x, g, b, 1e-5, tol, torch.float32)
            text = " | ".join(causes)
            if merged:
                assert "normalisation without eps, or eps = 1e-06" in text and diagnose.forward.NO_EPS not in causes
            elif e:
                assert "matches eps = 1e-06 everywhere" in text and "without eps" not in text, text
            else:  # 1e-12 is still indistinguishable from none here, 1e-6 is not
                assert "normalisation without eps" in text and "1e-06" not in text, text


def test_frozen_buffers_under_momentum_one_name_both_causes_in_one_sentence():
    """With momentum 1 passed, momentum read as the decay of the old value also keeps the buffers as they
    were: the numbers cannot tell that from buffers never updated, so one sentence names both (a correct
    Keras module under torch's convention, and modes-no-running-update, get the same line)."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((6, 2)) + 0.5 for _ in range(3)]
    rm0, rv0 = np.zeros(2), np.ones(2)
    mb, vb = _bounds(xs, rm0, rv0, 1.0)
    causes = diagnose.modes.running_statistics(TORCH, xs, rm0, rv0, 1.0, [rm0] * 3, [rv0] * 3, mb, vb, eps=1e-5)
    # one sentence per estimator the meaning comes with (frozen buffers cannot show the estimator)
    assert causes and all(c.startswith("the running statistics did not change with momentum=1 passed") for c in causes)
    assert any("--momentum-meaning old-decay" in c for c in causes) and any("--convention keras" in c for c in causes)
    assert all("decay of the old value" in c and "never updated (bug class B8)" in c for c in causes), causes
    frozen = diagnose.modes.running_statistics(TORCH, xs, rm0, rv0, 0.1, [rm0] * 3, [rv0] * 3,
                                               *_bounds(xs, rm0, rv0, 0.1), eps=1e-5)
    assert diagnose.modes.FROZEN in frozen and not any("did not change with momentum" in c for c in frozen)


def test_a_default_momentum_that_moves_nothing_is_named_as_no_update():
    line = diagnose.modes.default_momentum(0.0, TORCH)
    assert "did not change" in line and "B8" in line and "pass --momentum" not in line
    assert "pass --momentum-meaning" in diagnose.modes.default_momentum(0.9, TORCH) or "B4" in \
        diagnose.modes.default_momentum(0.9, TORCH)
