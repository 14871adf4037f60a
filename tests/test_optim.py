"""Meta-tests of the optim suite: torch's optimizers and the seed's forms pass; every gallery bug is caught."""

from __future__ import annotations

import json

import pytest
import torch

from bnverify.families import detect_kind
from bnverify.loading import load_target
from bnverify.runner import check
from bnverify.target import TargetLoadError
from tests.gallery.buggy_optim import BUGS

_B = "tests.gallery.buggy_optim:"
_C = "tests.gallery.correct_optim:"


def _failed(summary):
    return {r.check.split("[")[0]: r.message for r in summary.results if r.failed}


def _run(target, **kw):
    code, summary = check(target, suites=["optim"], seed=kw.pop("seed", 0), **kw)
    assert summary is not None, f"no summary (exit {code})"
    return code, summary


TORCH_OK = ["torch.optim:SGD", "torch.optim:Adam", "torch.optim:AdamW", "torch.optim:RMSprop",
            _B + "TorchStyleSGD", _B + "TorchStyleAdam", _B + "TorchStyleAdamW", _B + "TorchStyleRMSprop"]


@pytest.mark.parametrize("seed", [0, pytest.param(7, marks=pytest.mark.slow)])
@pytest.mark.parametrize("target", TORCH_OK)
def test_correct_optimizers_pass(target, seed):
    """torch's SGD (plain, momentum, dampening, Nesterov, weight decay), Adam, AdamW, RMSprop (plain, centred),
    and the gallery's correct torch-style bases pass on more than one seed (seed 0 in the default run,
    seed 7 in the slow set)."""
    ref = None if target.startswith("torch") else target.split("TorchStyle")[1].lower()
    code, summary = _run(target, reference=ref, seed=seed)
    assert code == 0, _failed(summary)
    assert {r.suite for r in summary.results} == {"optim"}
    assert sum(r.passed for r in summary.results) >= 11


@pytest.mark.parametrize("target,reference,convention", [
    (_C + "SeedSGD", "sgd", "seed"), (_C + "SeedRMSprop", "rmsprop", "seed"), (_C + "SeedAdam", "adam", "seed"),
    (_C + "KerasAdam", "adam", "keras"), (_C + "KerasAdam", "adam", "tf")])
def test_seed_and_keras_forms_pass_under_their_convention(target, reference, convention):
    code, summary = _run(target, reference=reference, convention=convention)
    assert code == 0, _failed(summary)


@pytest.mark.parametrize("target,reference,flag", [
    (_C + "SeedSGD", "sgd", "--convention seed"), (_C + "SeedRMSprop", "rmsprop", "--convention seed"),
    (_C + "SeedAdam", "adam", "--convention seed"), (_C + "KerasAdam", "adam", "--convention tf")])
def test_other_convention_under_torch_names_it(target, reference, flag):
    code, summary = _run(target, reference=reference)
    assert code == 1
    assert any(flag in m for m in _failed(summary).values()), _failed(summary)


def test_seed_momentum_departs_only_after_an_lr_change():
    """Seed 001's momentum equals torch's at a constant learning rate: the lr-change check names the form."""
    code, summary = _run(_C + "SeedSGD", reference="sgd")
    failed = _failed(summary)
    assert "test_lr_change" in failed
    assert "learning rate inside the velocity" in failed["test_lr_change"]
    assert "--convention seed" in failed["test_lr_change"]


@pytest.mark.parametrize("name,reference,catches,word", BUGS, ids=[b[0] for b in BUGS])
def test_bug_is_caught(name, reference, catches, word):
    code, summary = _run(_B + name, reference=reference)
    failed = _failed(summary)
    missed = [c for c in catches if c not in failed]
    assert code == 1 and not missed, f"{name}: expected {missed} to fail; failed {sorted(failed)}"
    msgs = "\n".join(failed[c] for c in catches)
    assert word in msgs, f"{name}: {word!r} not in\n{msgs}"
    for c, m in failed.items():
        assert m.strip(), f"{name}: {c} failed without a message"


def test_gallery_is_large_enough():
    assert len({b[0] for b in BUGS}) == len(BUGS) >= 8


def test_kind_detection_and_reference_inference():
    assert detect_kind(torch.optim.Adam) == "torch-optimizer"
    assert load_target("torch.optim:AdamW").reference == "adamw"
    assert load_target("torch.optim:RMSprop").reference == "rmsprop"
    assert load_target(_B + "TorchStyleSGD", reference="sgd").reference == "sgd"
    with pytest.raises(TargetLoadError, match="pass --reference, one of: sgd, adam, adamw, rmsprop"):
        load_target(_B + "TorchStyleSGD")
    with pytest.raises(TargetLoadError, match="unknown reference"):
        load_target("torch.optim:Adam", reference="lion")


def test_inferred_from_a_torch_base_class():
    class MyAdam(torch.optim.Adam):
        pass

    from bnverify.families.optim import infer_reference

    assert infer_reference(MyAdam, "torch-optimizer") == "adam"


def test_fingerprint_of_torch_optimizers():
    from bnverify.families.optim import fingerprint

    adam = json.loads(fingerprint(load_target("torch.optim:Adam"), "cpu", True))
    assert "torch" in adam["bias correction and eps"] and "(torch" in adam["weight decay"]
    assert adam["matching convention"] == "torch"
    sgd = fingerprint(load_target("torch.optim:SGD"), "cpu", False)
    assert "lr after the buffer (torch)" in sgd and "first gradient (torch)" in sgd
    seed = json.loads(fingerprint(load_target(_C + "SeedSGD", reference="sgd"), "cpu", True))
    assert seed["matching convention"] == "seed", seed
