"""Conventions composed from aspects (SPEC sections 3-4): the flags, their names in reports, the hints
that name them, the fingerprint's flags line, and the causes added with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnverify import cli
from bnverify.conventions import CONVENTIONS, flags_for
from bnverify.fingerprint import fingerprint
from bnverify.loading import load_target
from bnverify.runner import check
from bnverify.target import TargetLoadError
from tests.gallery.registry_aspects import CAUSE_BUGS, CORRECT_ASPECTS

REPO = Path(__file__).resolve().parents[1]


def _run(target, kind, suite, test, flags=()):
    code, summary = check(target, kind=kind, suites=[suite], seed=0, max_examples=3,
                          extra=[*(f"--bn-{f[2:]}" if f.startswith("--") else f for f in flags), "-k", test])
    assert summary is not None, f"no summary (exit {code})"
    return code, summary


def test_composed_names_and_flags():
    torch_ = CONVENTIONS["torch"]
    c = torch_.with_aspects(running_var="biased")
    assert c.name == "torch+running-var=biased" and c.base_name == "torch" and not c.unbiased_running_var
    assert c.aspect_flags == ("--running-var", "biased")
    c = CONVENTIONS["cs231n"].with_aspects(eps=1e-6, momentum=0.9, momentum_meaning="new-weight")
    assert c.name == "cs231n+momentum-meaning=new-weight+eps=1e-6"  # momentum 0.9 is cs231n's own: not shown
    assert c.to_update_fraction(0.9) == 0.9 and c.default_eps == 1e-6
    assert torch_.with_aspects(running_var="unbiased", eps=1e-5) is CONVENTIONS["torch"]
    with pytest.raises(ValueError, match="--running-var 'maybe'"):
        torch_.with_aspects(running_var="maybe")


def test_loading_applies_aspects_and_the_reproduce_command_carries_them(monkeypatch):
    monkeypatch.chdir(REPO)
    t = load_target("torch", convention="keras", aspects={"eps": 1e-6, "running_var": "unbiased"})
    assert t.convention.name == "keras+running-var=unbiased+eps=1e-6"
    assert t.reproduce_flags() == ["--convention", "keras", "--running-var", "unbiased", "--eps", "1e-6"]
    t = load_target("tests.gallery.course.staged", aspects={"momentum": 0.5})
    assert t.convention.name == "cs231n+momentum=0.5" and t.reproduce_flags() == ["--momentum", "0.5"]
    with pytest.raises(TargetLoadError, match="--eps sets an aspect of a batch-norm convention; it does not apply "
                                              "to optimizer targets"):
        load_target("torch.optim:Adam", aspects={"eps": 1e-6})


@pytest.mark.parametrize("argv, words", [
    (["--eps", "-1"], "eps must be a positive finite number"),
    (["--eps", "tiny"], "expected a positive number"),
    (["--momentum", "1.5"], "momentum must lie in [0, 1]"),
    (["--running-var", "maybe"], "invalid choice: 'maybe'"),
    (["--momentum-meaning", "new"], "invalid choice: 'new'"),
])
def test_a_bad_value_is_a_usage_error(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "torch", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1]


def test_an_aspect_flag_on_another_family_is_a_usage_error(capsys):
    assert cli.main(["check", "torch.optim:Adam", "--running-var", "biased", "--no-tracking"]) == 2
    assert "does not apply to optimizer targets" in capsys.readouterr().err


@pytest.mark.parametrize("aspect", CORRECT_ASPECTS, ids=lambda a: a.target.split(":")[-1].split(".")[-1])
def test_correct_target_passes_with_its_flags_and_is_named_without(aspect, monkeypatch):
    monkeypatch.chdir(REPO)
    code, summary = _run(aspect.target, aspect.kind, aspect.suite, aspect.check)
    failed = [r for r in summary.results if r.failed]
    assert code == 1 and failed, "the target must fail without its flags"
    assert any(aspect.named in r.message for r in failed), [r.message for r in failed]
    code, summary = _run(aspect.target, aspect.kind, aspect.suite, aspect.check, aspect.flags)
    assert code == 0, [r.message for r in summary.results if r.failed]
    assert summary.convention.count("+") >= 1
    assert " ".join(aspect.flags) in summary.reproduce
    assert summary.tags["convention"] == summary.convention


@pytest.mark.parametrize("bug, cause", CAUSE_BUGS, ids=lambda b: getattr(b, "id", ""))
def test_new_cause_is_named(bug, cause, monkeypatch):
    monkeypatch.chdir(REPO)
    (check_name,) = bug.catches
    code, summary = _run(bug.target, bug.kind, bug.suites[0], check_name)
    failed = [r for r in summary.results if r.failed and r.check.startswith(check_name)]
    assert code == 1 and failed, f"{bug.id}: {check_name} must fail"
    assert any(cause in r.message for r in failed), [r.message for r in failed]
    assert not any("Given weight of size" in r.message for r in summary.results)


def test_channel_mixing_is_not_named_for_another_bug(monkeypatch):
    """The channel-mixing hypothesis does not reproduce the output of an unrelated bug: the unbiased
    normalisation is named, never the mixing."""
    monkeypatch.chdir(REPO)
    code, summary = _run("tests.gallery.buggy_modules:UnbiasedVarianceBatchNorm", None, "forward", "test_forward_train")
    msgs = " ".join(r.message for r in summary.results if r.failed)
    assert code == 1 and "unbiased (m-1) variance" in msgs and "without moving the channel axis" not in msgs


@pytest.mark.parametrize("target, kind, flags", [
    ("tests.gallery.correct_aspects:BiasedVarBatchNorm", None, "--convention torch --running-var biased"),
    ("tests.gallery.correct_aspects:Eps1e6BatchNorm", None, "--convention torch --eps 1e-6"),
    # decay 0.9 with an unbiased running variance: one flag from cs231n, two from torch
    ("tests.gallery.correct_aspects:DecayMomentumBatchNorm", None, "--convention cs231n --running-var unbiased"),
    ("tests.gallery.correct_conventions:KerasBatchNorm", None, "--convention keras"),
    ("tests.gallery.course.staged", None, "--convention cs231n"),
])
def test_fingerprint_prints_the_flags_that_describe_the_target(target, kind, flags, monkeypatch):
    monkeypatch.chdir(REPO)
    fp = fingerprint(load_target(target, kind=kind))
    assert fp.entries["check_flags"] == flags
    assert "check flags" in fp.table() and '"check_flags"' in fp.to_json()


def test_flags_for_leaves_out_what_was_not_measured():
    assert flags_for({"momentum_kind": "keep_fraction", "unbiased": False}, "torch") == ["--convention", "keras"]
    assert flags_for({}, "cs231n") == ["--convention", "cs231n"]
