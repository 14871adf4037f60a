"""Meta-tests of the initializer family: loading, conventions, the gallery of buggy initialisers (each caught by
its check, with a message naming the mistake), torch.nn.init's own functions passing, and the false-failure
sweep (every correct initialiser x 50 seeds through the suite's checks)."""

from __future__ import annotations

import math
import re
import time

import pytest
import torch
from torch.nn.init import calculate_gain

from bnverify import init_check as ic
from bnverify import tolerances as tols
from bnverify.families import init as fam
from bnverify.loading import load_target
from bnverify.runner import check
from bnverify.target import TargetLoadError

GALLERY = "tests.gallery.buggy_init"


# --------------------------------------------------------------------------- correct initialisers of other conventions

def keras_he_normal(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Keras's HeNormal/VarianceScaling for (*k, in, out) kernels, with torch's keywords: truncated at 2 sd, std / 0.8796."""
    receptive = math.prod(tensor.shape[:-2])
    fan_in, fan_out = tensor.shape[-2] * receptive, tensor.shape[-1] * receptive
    std = calculate_gain(nonlinearity, a) / math.sqrt(max(1, fan_in if mode == "fan_in" else fan_out))
    std /= 0.87962566103423978
    return torch.nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std, generator=generator)


def seed_kaiming_normal(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Seed 001's He init for (in, out) weights, ``randn(fan_in, fan_out) / sqrt(fan_in / 2)``, with torch's keywords."""
    receptive = math.prod(tensor.shape[:-2])
    fan_in, fan_out = tensor.shape[-2] * receptive, tensor.shape[-1] * receptive
    fan = max(1, fan_in if mode == "fan_in" else fan_out)
    with torch.no_grad():
        return tensor.normal_(0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator=generator)


def my_he_normal(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """A correct user implementation under its own name (so --reference is required)."""
    return torch.nn.init.kaiming_normal_(tensor, a, mode, nonlinearity, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """A user's function named like torch's: the reference is inferred from the name (with --kind)."""
    return torch.nn.init.kaiming_normal_(tensor, a, mode, nonlinearity, generator)


# --------------------------------------------------------------------------- loading

def test_torch_init_functions_are_detected_and_their_reference_inferred():
    for name in fam.REFERENCES:
        t = load_target(f"torch.nn.init:{name}")
        assert (t.kind, t.reference, t.kind_detected, t.family.name) == ("torch-init", name, True, "init")
        assert t.reproduce_flags() == []
        assert t.convention.name == "torch"


def test_a_plain_function_needs_kind_and_a_reference():
    with pytest.raises(TargetLoadError, match="pass --kind, one of: .*torch-init"):
        load_target("tests.test_init:my_he_normal")
    with pytest.raises(TargetLoadError, match="pass --reference, one of: kaiming_normal_, kaiming_uniform_"):
        load_target("tests.test_init:my_he_normal", kind="torch-init")
    t = load_target("tests.test_init:my_he_normal", kind="torch-init", reference="kaiming_normal_")
    assert t.reproduce_flags() == ["--kind", "torch-init", "--reference", "kaiming_normal_"]
    t = load_target("tests.test_init:kaiming_normal_", kind="torch-init")
    assert t.reference == "kaiming_normal_" and t.reproduce_flags() == ["--kind", "torch-init"]
    assert fam.infer_reference(torch.nn.init.kaiming_normal, "torch-init") == "kaiming_normal_"  # deprecated name
    with pytest.raises(TargetLoadError, match="not a function"):
        load_target("torch.nn:Linear", kind="torch-init", reference="kaiming_normal_")
    with pytest.raises(TargetLoadError, match="unknown reference 'orthogonal_'"):
        load_target("torch.nn.init:orthogonal_", kind="torch-init", reference="orthogonal_")


def test_convention_names():
    t = load_target("torch.nn.init:kaiming_normal_", convention="flax")
    assert t.convention.name == "keras" and t.convention.normal == "truncated_normal"
    assert load_target("torch.nn.init:kaiming_normal_", convention="cs231n").convention.name == "seed"
    with pytest.raises(TargetLoadError, match="does not apply to initializer targets"):
        load_target("torch.nn.init:kaiming_normal_", convention="inverted")


# --------------------------------------------------------------------------- the suite on correct targets

def _run(target, **kw):
    kw.setdefault("kind", None)
    code, summary = check(target, suites=["init"], seed=kw.pop("seed", 0), **kw)
    assert summary is not None, f"no summary (exit {code})"
    return code, summary


@pytest.mark.parametrize("reference", fam.REFERENCES)
def test_torch_nn_init_passes_and_stays_within_the_test_budget(reference, monkeypatch):
    """torch.nn.init's own functions pass every check; the run's statistical tests stay below INIT_MAX_TESTS."""
    code, summary = _run(f"torch.nn.init:{reference}")
    failed = [f"{r.check}: {r.message}" for r in summary.results if r.failed]
    assert code == 0 and not failed, failed
    assert len(summary.results) == 16
    n_tests = sum(r.metrics.get("statistical tests", 0) for r in summary.results)
    assert 0 < n_tests <= tols.INIT_MAX_TESTS, n_tests
    # every init verdict is a statistical test or a contract, none an error over a tolerance: no err/tol
    assert all(r.worst_ratio is None for r in summary.results), [(r.check, r.worst_ratio) for r in summary.results]
    assert all(r.metrics.get("alpha", 0) > 0 for r in summary.results if "ks_D" in r.metrics)


@pytest.mark.parametrize("target,convention", [("tests.test_init:keras_he_normal", "keras"),
                                               ("tests.test_init:seed_kaiming_normal", "seed")])
def test_other_conventions_pass_under_their_name_and_are_named_under_torch(target, convention):
    code, summary = _run(target, kind="torch-init", reference="kaiming_normal_", convention=convention)
    failed = [f"{r.check}: {r.message}" for r in summary.results if r.failed]
    assert code == 0 and not failed, failed
    code, summary = _run(target, kind="torch-init", reference="kaiming_normal_", extra=["-k", "test_fan_axes"])
    msgs = [r.message for r in summary.results if r.failed]
    assert code == 1 and msgs and f"pass --convention {convention}" in msgs[0], msgs


# --------------------------------------------------------------------------- the gallery

GALLERY_BUGS = [
    # (function, reference, convention, the check meant to catch it, its message, bug class)
    ("kaiming_normal_in_out_layout_", "kaiming_normal_", None, "test_fan_axes",
     r"std matches fan_out \(25\), not fan_in \(400\): kernel laid out as \(in, out\)", "I4"),
    ("kaiming_uniform_fans_unpacked_swapped_", "kaiming_uniform_", None, "test_fan_axes",
     r"std matches fan_out \(25\), not fan_in \(400\)", "seed 001: fan_out for fan_in"),
    ("kaiming_normal_no_gain_", "kaiming_normal_", None, "test_arguments",
     r"gain 1 instead of 1.414: the relu gain is missing", "ReLU gain missing"),
    ("kaiming_uniform_no_sqrt3_", "kaiming_uniform_", None, "test_bounds_and_tails",
     r"0 samples above .*the sqrt\(3\) of the uniform bound is missing \(I3\)", "I3"),
    ("kaiming_normal_truncated_", "kaiming_normal_", None, "test_bounds_and_tails",
     r"truncated at 2 sd with the 0.8796 correction: Keras/JAX variance_scaling; torch's normal initialisers are "
     r"untruncated", "I5 (truncation where torch has none)"),
    ("keras_he_normal_uncorrected_", "kaiming_normal_", "keras", "test_bounds_and_tails",
     r"truncated at 2 sd without the 0.8796 correction: std 0.88x what it should be \(I5\)", "I5"),
    ("kaiming_normal_not_in_place_", "kaiming_normal_", None, "test_contract",
     r"is not in place: the tensor passed in is left unfilled", "not in place"),
    ("kaiming_normal_ignores_generator_", "kaiming_normal_", None, "test_generator",
     r"generator= is ignored and the global RNG is used", "ignores generator"),
    ("kaiming_normal_std_as_variance_", "kaiming_normal_", None, "test_law",
     r"the variance gain\^2 / fan used as the standard deviation", "std where variance is meant"),
    ("kaiming_uniform_a_not_squared_", "kaiming_uniform_", None, "test_arguments", r"a not squared", "I2"),
    ("kaiming_uniform_always_he_", "kaiming_uniform_", None, "test_arguments",
     r"a ignored: He's ReLU gain sqrt\(2\)", "I1"),
    ("kaiming_normal_no_checks_", "kaiming_normal_", None, "test_low_rank",
     r"a 1-D tensor of shape \(64,\) was accepted", "no rank check"),
    ("kaiming_normal_no_checks_", "kaiming_normal_", None, "test_zero_element",
     r"ZeroDivisionError.*a division by a zero fan", "zero-element tensor"),
    ("kaiming_normal_no_grad_missing_", "kaiming_normal_", None, "test_contract",
     r"leaf that requires grad outside torch.no_grad", "no torch.no_grad"),
    ("kaiming_uniform_reshaped_copy_", "kaiming_uniform_", None, "test_contract",
     r"non-contiguous view .* fills a contiguous copy", "fills a copy"),
    ("xavier_uniform_ignores_gain_", "xavier_uniform_", None, "test_arguments", r"gain ignored \(1 instead of 0.5\)",
     "gain ignored"),
    ("xavier_normal_fan_in_only_", "xavier_normal_", None, "test_law", r"LeCun, seed 001's randn / sqrt\(fan_in\)",
     "seed 001's Xavier under torch's name"),
    ("trunc_normal_bounds_in_std_units_", "trunc_normal_", None, "test_arguments",
     r"a, b taken as multiples of std", "I5 (trunc_normal_ bounds)"),
    ("uniform_loc_scale_", "uniform_", None, "test_arguments", r"b used as the width", "loc/scale"),
]


@pytest.mark.parametrize("bug", GALLERY_BUGS, ids=lambda b: f"{b[0]}-{b[3]}")
def test_gallery_bug_is_caught_with_its_cause(bug):
    name, reference, convention, check_name, pattern, _ = bug
    code, summary = _run(f"{GALLERY}:{name}", kind="torch-init", reference=reference, convention=convention,
                         extra=["-k", check_name])
    failed = {r.check.split("[")[0]: r.message for r in summary.results if r.failed}
    assert check_name in failed, f"{name}: {check_name} passed; failed: {sorted(failed)}"
    assert re.search(pattern, failed[check_name], re.S), failed[check_name]
    assert code == 1


def test_gallery_has_the_required_bug_classes():
    classes = " ".join(b[5] for b in GALLERY_BUGS)
    for needed in ("I1", "I2", "I3", "I4", "I5", "fan_out for fan_in", "ReLU gain", "not in place",
                   "ignores generator", "std where variance"):
        assert needed in classes, needed


# --------------------------------------------------------------------------- the false-failure sweep

SWEEP_SEEDS = 50


def _sweep_one(target, seed: int, n: int) -> tuple[int, float]:
    """Every statistical check of the suite on one correct target and seed; returns (tests, worst ratio)."""
    worst = [0.0]

    def observe(r: float) -> None:
        worst[0] = max(worst[0], r)

    ref = target.reference
    lay = fam.conv_of(target).layout
    tests = 0
    for g in ic.LAW_GEOMETRIES:
        tests += ic.check_law(target, ic.GEOMETRIES[g].shape(lay), {}, seed=ic.derive_seed(seed, "law", g), n=n,
                              context="sweep", observe=observe)
    for g, kw in ic.fan_cases(ref):
        tests += ic.check_law(target, ic.GEOMETRIES[g].shape(lay), kw, seed=ic.derive_seed(seed, "fan", g, str(kw)),
                              n=n, context="sweep", observe=observe)
    for label, kw in ic.ARG_CASES[ref]:
        tests += ic.check_law(target, ic.GEOMETRIES[ic.ARG_GEOMETRY].shape(lay), kw,
                              seed=ic.derive_seed(seed, "args", label), n=n, context="sweep", observe=observe)
    for label, g, kw in ic.support_cases(ref):
        tests += ic.check_support(target, ic.GEOMETRIES[g].shape(lay), kw, seed=ic.derive_seed(seed, "support", label),
                                  n=n, context="sweep", observe=observe)
    return tests, worst[0]


@pytest.mark.slow
def test_correct_initialisers_never_fail_false_failure_sweep(capsys):
    """torch.nn.init's 7 functions x 50 seeds and the two other conventions' correct forms x 10 seeds, every
    statistical check at n = INIT_MIN_SAMPLES (where the thresholds' derivation is tightest): no failure.

    Expected false failures: tests x INIT_ALPHA (about 1e-4 for the whole sweep)."""
    targets = [load_target(f"torch.nn.init:{r}") for r in fam.REFERENCES]
    targets += [load_target("tests.test_init:keras_he_normal", kind="torch-init", reference="kaiming_normal_",
                            convention="keras"),
                load_target("tests.test_init:seed_kaiming_normal", kind="torch-init", reference="kaiming_normal_",
                            convention="seed")]
    t0 = time.perf_counter()
    total, failures, worst = 0, [], 0.0
    for target in targets:
        for seed in range(SWEEP_SEEDS if target.spec.startswith("torch.nn.init:") else SWEEP_SEEDS // 5):
            try:
                tests, w = _sweep_one(target, seed, tols.INIT_MIN_SAMPLES)
            except AssertionError as exc:
                failures.append(f"{target.spec} seed {seed}: {str(exc).splitlines()[0]}")
                continue
            total += tests
            worst = max(worst, w)
    with capsys.disabled():
        print(f"\nfalse-failure sweep: {len(targets)} correct initialisers (7 x {SWEEP_SEEDS} seeds, 2 x {SWEEP_SEEDS // 5}), {total} statistical "
              f"tests at n={tols.INIT_MIN_SAMPLES}: {len(failures)} failures (expected {total * tols.INIT_ALPHA:.1e}); "
              f"worst statistic/threshold {worst:.3f}; {time.perf_counter() - t0:.1f} s")
    assert not failures, failures
    assert worst < 1.0


# --------------------------------------------------------------------------- the six-layer study (opt-in)
# A training-free study, but a long one (seed 001's network under the reference's band of seeds): marked
# slow with the other studies (pytest -m slow; .ci/run runs it).

@pytest.mark.slow
def test_six_layer_study_passes_torch_and_records_table_and_plot():
    code, summary = check("torch.nn.init:kaiming_normal_", suites=["init-study"], seed=0)
    assert summary is not None and code == 0, [r.message for r in summary.results]
    (r,) = summary.results
    assert r.check == "test_six_layer_study" and r.passed
    text = r.details["console"]
    for name in ("target", "reference", "band low", "small", "large", "xavier-seed", "he-seed"):
        assert name in text
    from pathlib import Path

    assert Path(r.details["artifacts"]["plots/init_study.png"]).stat().st_size > 10_000
    assert r.metrics["relu layer6 std target"] > 0.3  # He keeps the ReLU spread


@pytest.mark.slow
def test_six_layer_study_fails_a_missing_relu_gain():
    code, summary = check(f"{GALLERY}:kaiming_normal_no_gain_", kind="torch-init", reference="kaiming_normal_",
                          suites=["init-study"], seed=0)
    assert summary is not None and code == 1
    (r,) = summary.results
    assert r.failed and "leave the reference's band" in r.message and "relu layer 6" in r.message, r.message
    assert re.search(r"x0\.7[01]\d \(ReLU\)", r.message), r.message  # layer 1 std is 1/sqrt(2) of He's (ReLU)


def test_study_is_opt_in():
    code, summary = check("torch.nn.init:kaiming_normal_", tier="full", seed=0, extra=["-k", "six_layer"])
    assert summary is not None and not summary.results  # never by tier, only with --suite init-study


# --------------------------------------------------------------------------- fingerprint

def test_fingerprint_names_the_convention_or_the_mistake():
    import json

    res = json.loads(fam.fingerprint(load_target("torch.nn.init:kaiming_normal_"), as_json=True))
    assert res["matching convention"] == "torch" and res["normal law"].endswith("untruncated")
    assert res["1-D tensor"] == "raises ValueError" and "zero-element" in res["zero-element tensor"]
    res = json.loads(fam.fingerprint(load_target("tests.test_init:keras_he_normal", kind="torch-init",
                                                 reference="kaiming_normal_"), as_json=True))
    assert res["matching convention"] == "keras" and res["normal law"].endswith("; truncated")
    res = json.loads(fam.fingerprint(load_target(f"{GALLERY}:kaiming_normal_no_gain_", kind="torch-init",
                                                 reference="kaiming_normal_"), as_json=True))
    assert res["matching convention"] == "none" and res["explained by"].startswith("gain 1 instead of 1.414")
