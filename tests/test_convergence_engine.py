"""The convergence engine: deterministic training, identical starts, verdicts, robustness, plots.

Kept fast by training on a stratified subset of the embedded digits for a
few epochs (the full-tier protocol is measured, not tested, here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnverify import convergence as cv
from bnverify import mnist
from bnverify.convergence import training
from bnverify.reference.batchnorm_torch import BatchNorm as ReferenceBN

# 1,000 training / 500 test digits; lr 0.05 so a few epochs separate good from bad.
FAST = cv.Protocol(epochs=5, seeds=(0, 1, 2), lr=0.05, target_accuracy=0.80, final_window=2)


@pytest.fixture(scope="module")
def split() -> mnist.Split:
    return mnist.load_embedded().subset(1000, 500)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tiny matrices gain nothing from more, and a busy machine
    (pytest-xdist, other jobs) makes OpenMP's spinning threads many times slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def reference(split):
    """Reference, twin and no-BN curves for FAST (cached by the engine too)."""
    ref = cv.reference_curves(split, FAST)
    nobn = cv.reference_curves(split, FAST, kind="no-bn")
    twin = [cv.cached_curve("torch", split, FAST, FAST.seeds[0])]
    return ref, nobn, twin


def verdict_for(factory, split, reference) -> cv.ConvergenceVerdict:
    ref, nobn, twin = reference
    tgt = [cv.train(factory, split, FAST, s) for s in FAST.seeds]
    return cv.compare(tgt, ref, nobn, FAST, twin_curves=twin)


# ------------------------------------------------------------------------------ buggy batch norms


class _StatsAsConstants(torch.autograd.Function):
    """Normalise with batch statistics, but backpropagate as if they were constants (bug B24)."""

    @staticmethod
    def forward(ctx, x, eps):
        mean = x.mean(0)
        inv = torch.rsqrt(x.var(0, unbiased=False) + eps)
        ctx.save_for_backward(inv)
        return (x - mean) * inv

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad * inv, None  # the mean and variance terms are missing


class StatsGradBugBN(ReferenceBN):
    """A batch norm whose backward drops the gradient through the batch mean and variance."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        with torch.no_grad():  # keep the running statistics right: only the backward is wrong
            super().forward(x)
        return _StatsAsConstants.apply(x, self.eps) * self.weight + self.bias


class FrozenRunningStatsBN(ReferenceBN):
    """Never updates its running statistics (bug B8): eval normalises with mean 0, variance 1."""

    def forward(self, x):
        if self.training:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return super().forward(x)


class NaNAfterStepsBN(ReferenceBN):
    def __init__(self, n, *a, **k):
        super().__init__(n, *a, **k)
        self.calls = 0

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > 15:
                y = y * float("nan")
        return y


class RaisesInEvalBN(ReferenceBN):
    def forward(self, x):
        if not self.training:
            raise RuntimeError("eval mode is not implemented")
        return super().forward(x)


class RandomInitBN(nn.BatchNorm1d):
    """A correct batch norm whose constructor consumes the global RNG."""

    def __init__(self, n):
        super().__init__(n)
        torch.randn(1000)
        torch.rand(n)


# ------------------------------------------------------------------------------ network and training


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]


def test_build_mlp_matches_the_seed() -> None:
    bn = cv.build_mlp(nn.BatchNorm1d)
    kinds = [type(m).__name__ for m in bn]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    lin = [m for m in bn if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(784, 300), (300, 50), (50, 10)]
    assert all(m.bias is None for m in lin)  # seed 002: Linear' everywhere in the batch-norm net
    plain = cv.build_mlp(None)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))
    after = cv.build_mlp(nn.BatchNorm1d, placement="after")
    assert [type(m).__name__ for m in after][:3] == ["Linear", "ReLU", "BatchNorm1d"]
    assert after[0].bias is not None  # a bias before a ReLU is not cancelled
    sig = cv.build_mlp(nn.BatchNorm1d, hidden=(100, 100, 100), activation="sigmoid")
    assert sum(isinstance(m, nn.Sigmoid) for m in sig) == 3
    with pytest.raises(ValueError):
        cv.build_mlp(None, activation="gelu")


def test_identical_initial_weights_across_norm_layers() -> None:
    nets = [
        cv.build_mlp(nn.BatchNorm1d, seed=7),
        cv.build_mlp(ReferenceBN, seed=7),
        cv.build_mlp(RandomInitBN, seed=7),
        cv.build_mlp(None, seed=7),
    ]
    first = linear_weights(nets[0])
    for net in nets[1:]:
        for a, b in zip(first, linear_weights(net)):
            assert torch.equal(a, b)
    other = linear_weights(cv.build_mlp(nn.BatchNorm1d, seed=8))
    assert not torch.equal(first[0], other[0])
    w = first[0]
    assert w.abs().max() <= 1 / math.sqrt(784)  # torch's nn.Linear default range


@pytest.mark.parametrize(
    "init,scale,std",
    [("normal", 0.01, 0.01), ("normal", 1.0, 1.0), ("xavier", None, math.sqrt(2 / 1084)),
     ("he", None, math.sqrt(2 / 784)), ("lecun", None, 1 / math.sqrt(784))],
)
def test_init_scales(init, scale, std) -> None:
    net = cv.build_mlp(None, init=init, init_scale=scale, seed=1)
    w = net[0].weight.detach()
    assert abs(float(w.std()) / std - 1) < 0.02
    assert float(net[0].bias.detach().abs().max()) == 0.0


def test_train_is_deterministic_and_leaves_global_rng_alone(split) -> None:
    p = FAST.replace(epochs=2)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = cv.train(nn.BatchNorm1d, split, p, seed=3)
    after = torch.rand(3)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    b = cv.train(nn.BatchNorm1d, split, p, seed=3)
    assert a.ok and b.ok, (a.message, b.message)
    assert a.test_acc == b.test_acc and a.train_loss == b.train_loss and a.test_loss == b.test_loss
    assert len(a.test_acc) == 2 and len(a.epoch_time_s) == 2
    c = cv.train(nn.BatchNorm1d, split, p, seed=4)
    assert c.train_loss != a.train_loss
    assert abs(a.initial_loss - math.log(10)) < 0.25
    assert 0.0 <= a.initial_test_acc <= 1.0


def test_same_start_and_data_order_make_correct_batch_norms_agree(split, reference) -> None:
    """torch's BatchNorm1d and the reference differ only in rounding: their curves nearly coincide."""
    ref, _, twin = reference
    assert twin[0].seed == ref[0].seed
    diff = np.abs(np.asarray(twin[0].test_acc) - np.asarray(ref[0].test_acc))
    assert diff.max() <= 0.01, diff
    rng_bn = cv.train(RandomInitBN, split, FAST, FAST.seeds[0])
    assert np.abs(np.asarray(rng_bn.test_acc) - np.asarray(twin[0].test_acc)).max() <= 0.01


def test_cache_reuses_reference_curves(split, reference) -> None:
    ref, _, _ = reference
    again = cv.cached_curve("reference", split, FAST, FAST.seeds[0])
    assert again is not ref[0] and again.test_acc == ref[0].test_acc
    key = ("reference", FAST.training_key(), split.fingerprint(), FAST.seeds[0], "cpu")
    assert key in training._CURVE_CACHE
    # judging fields do not invalidate the cache; training fields do
    assert FAST.replace(confidence=0.95, target_accuracy=0.5).training_key() == FAST.training_key()
    assert FAST.replace(lr=0.1).training_key() != FAST.training_key()
    with pytest.raises(ValueError):
        cv.cached_curve("bogus", split, FAST, 0)


# ------------------------------------------------------------------------------ verdicts


@pytest.mark.parametrize("factory", [nn.BatchNorm1d, ReferenceBN], ids=["torch", "reference"])
def test_correct_batch_norm_passes(split, reference, factory) -> None:
    v = verdict_for(factory, split, reference)
    assert v.outcome == "pass", v.explanation
    assert v.passed is True and v.bug_impact_points is None
    assert v.final["band_low"] < v.final["target"] < v.final["band_high"]
    assert "trains like the reference" in v.explanation


def test_correct_batch_norm_passes_for_other_seeds(split) -> None:
    p = FAST.replace(seeds=(11, 12, 13))
    v = cv.run_convergence(nn.BatchNorm1d, split, p)
    assert v.outcome == "pass", v.explanation


def test_stats_gradient_bug_fails_with_bug_impact(split, reference) -> None:
    v = verdict_for(StatsGradBugBN, split, reference)
    assert v.outcome == "fail", v.explanation
    assert v.bug_impact_points is not None and v.bug_impact_points > 0
    assert v.final["target"] < v.final["band_low"]
    assert "points below the reference's" in v.explanation
    assert v.metrics()["bug_impact_points"] == pytest.approx(v.bug_impact_points)


def test_frozen_running_stats_fail(split, reference) -> None:
    v = verdict_for(FrozenRunningStatsBN, split, reference)
    assert v.outcome == "fail", v.explanation
    assert v.bug_impact_points > 0


def test_nan_is_reported_as_diverged_not_raised(split, reference) -> None:
    c = cv.train(NaNAfterStepsBN, split, FAST, 0)
    assert c.status == "diverged" and not c.ok
    assert "became nan at epoch" in c.message
    assert c.final_accuracy() == pytest.approx(0.1)
    v = verdict_for(NaNAfterStepsBN, split, reference)
    assert v.outcome == "fail"
    assert "diverged in 3 of 3 runs" in v.explanation
    assert v.bug_impact_points > 0


def test_exceptions_are_reported_as_crashed(split, reference) -> None:
    c = cv.train(RaisesInEvalBN, split, FAST, 0)
    assert c.status == "crashed" and "eval mode is not implemented" in c.message
    assert "evaluating the untrained network" in c.message

    def not_a_module(n):
        return lambda x: x

    c = cv.train(not_a_module, split, FAST, 0)
    assert c.status == "crashed" and "expected a torch.nn.Module" in c.message

    def wrong_shape(n):
        return nn.Linear(n, n + 1)

    c = cv.train(wrong_shape, split, FAST, 0)
    assert c.status == "crashed" and "cannot be multiplied" in c.message

    class RaisesOnThirdEpoch(ReferenceBN):
        calls = 0

        def forward(self, x):
            if self.training:
                RaisesOnThirdEpoch.calls += 1
                if RaisesOnThirdEpoch.calls > 2 * 2 * 10:  # 2 layers, 10 steps an epoch
                    raise FloatingPointError("overflow in my kernel")
            return super().forward(x)

    c = cv.train(RaisesOnThirdEpoch, split, FAST, 0)
    assert c.status == "crashed" and c.message.startswith("training, epoch 3: FloatingPointError")
    assert c.stopped_epoch == 3 and len(c.test_acc) == 2  # the measured epochs are kept
    v = verdict_for(RaisesInEvalBN, split, reference)
    assert v.outcome == "fail" and "crashed in 3 of 3 runs" in v.explanation


def test_huge_learning_rate_diverges_without_batch_norm(split) -> None:
    c = cv.train(None, split, FAST.replace(lr=1000.0, epochs=2), 0)
    assert c.status == "diverged" and "training loss became" in c.message, c.message
    assert c.test_acc == [] and c.final_accuracy() == pytest.approx(0.1)


# ------------------------------------------------------------------------------ compare on synthetic curves


def synthetic(label: str, seed: int, accs, n_test: int = 1000, status: str = "ok") -> cv.Curve:
    return cv.Curve(
        label=label, seed=seed, device="cpu", n_test=n_test, num_classes=10, test_acc=list(accs),
        train_loss=[1.0] * len(accs), initial_test_acc=0.1, status=status,
        stopped_epoch=None if status == "ok" else len(accs) + 1,
    )


def ramp(top: float, rate: float, epochs: int = 20) -> list[float]:
    return [0.1 + (top - 0.1) * (1 - math.exp(-rate * e)) for e in range(1, epochs + 1)]


def test_band_never_collapses_and_identical_curves_pass() -> None:
    p = cv.Protocol(epochs=20, seeds=(0, 1, 2), target_accuracy=0.9)
    curve = ramp(0.95, 0.4)
    ref = [synthetic("reference", s, curve) for s in range(3)]  # zero seed-to-seed spread
    v = cv.compare([synthetic("target", s, curve) for s in range(3)], ref, [], p)
    assert v.outcome == "pass"
    p_ref = v.final["reference"]
    floor = 2.3263 * math.sqrt(p_ref * (1 - p_ref) / 1000)
    assert v.final["band_half_width"] == pytest.approx(floor, rel=1e-4)
    assert all(h - lo > 0 for lo, h in zip(v.band_low, v.band_high))
    # a target 1 floor below passes; 2 floors below fails, with the difference as bug impact
    shifted = lambda d: [synthetic("target", s, [a - d for a in curve]) for s in range(3)]  # noqa: E731
    assert cv.compare(shifted(0.5 * floor), ref, [], p).outcome == "pass"
    bad = cv.compare(shifted(2 * floor), ref, [], p)
    assert bad.outcome == "fail" and bad.bug_impact_points == pytest.approx(200 * floor, rel=1e-6)


def test_band_uses_t_quantile_of_seed_spread() -> None:
    from scipy import stats

    p = cv.Protocol(epochs=10, seeds=(0, 1, 2), final_window=1, target_accuracy=0.5, confidence=0.99)
    ref = [synthetic("reference", s, ramp(top, 0.5, 10), n_test=100000) for s, top in enumerate((0.90, 0.92, 0.94))]
    v = cv.compare([synthetic("target", 0, ramp(0.92, 0.5, 10), n_test=100000)], ref, [], p)
    finals = [c.test_acc[-1] for c in ref]
    expected = stats.t.ppf(0.99, 2) * np.std(finals, ddof=1) * math.sqrt(1 / 3 + 1 / 1)
    assert v.final["band_half_width"] == pytest.approx(expected)
    assert v.final["t_quantile"] == pytest.approx(6.9646, abs=1e-3)


def test_olympic_mean_and_nonconverging_runs() -> None:
    assert cv.olympic_mean([5, 6, 100]) == 6
    assert cv.olympic_mean([5, 6, 7, 8]) == 6.5
    assert cv.olympic_mean([5, None, 7]) == 7  # one non-converging run is dropped as the slowest
    assert cv.olympic_mean([5, None, None]) is None
    assert cv.olympic_mean([]) is None
    p = cv.Protocol(epochs=20, seeds=(0, 1, 2), target_accuracy=0.9)
    ref = [synthetic("reference", s, ramp(0.95, 0.4 + 0.02 * s)) for s in range(3)]
    slow = [synthetic("target", s, ramp(0.95, 0.4) if s == 0 else ramp(0.89, 0.4)) for s in range(3)]
    v = cv.compare(slow, ref, [], p)
    assert v.outcome == "fail" and any("never reached 90%" in r for r in v.reasons)
    assert v.epochs_to_target["target_nonconverged"] == 2


def test_speedup_and_its_lower_bound() -> None:
    p = cv.Protocol(epochs=20, seeds=(0, 1, 2), target_accuracy=0.9)
    ref = [synthetic("reference", s, ramp(0.95, 0.5 + 0.01 * s)) for s in range(3)]
    tgt = [synthetic("target", s, ramp(0.95, 0.5 + 0.01 * s)) for s in range(3)]
    slow_plain = [synthetic("no-bn", s, ramp(0.95, 0.2)) for s in range(3)]
    v = cv.compare(tgt, ref, slow_plain, p)
    e_ref, e_plain = v.epochs_to_target["reference"], v.epochs_to_target["nobn"]
    assert v.speedup == pytest.approx(e_plain / e_ref) and not v.speedup_is_lower_bound
    never = [synthetic("no-bn", s, ramp(0.85, 0.1)) for s in range(3)]
    v = cv.compare(tgt, ref, never, p)
    assert v.speedup_is_lower_bound and v.speedup == pytest.approx(20 / e_ref)
    assert "at least" in v.explanation and "never reached 90% in 20 epochs" in v.explanation


def test_slower_target_fails_on_speed() -> None:
    p = cv.Protocol(epochs=40, seeds=(0, 1, 2), target_accuracy=0.9, final_window=3)
    ref = [synthetic("reference", s, ramp(0.95, 0.5 + 0.01 * s, 40)) for s in range(3)]
    slow = [synthetic("target", s, ramp(0.95, 0.15 + 0.001 * s, 40)) for s in range(3)]
    v = cv.compare(slow, ref, [], p)
    assert v.outcome == "fail" and v.reasons == [f"slower to 90%: {v.epochs_to_target['target']:.1f} epochs against at most {v.epochs_to_target['allowed']:.1f}"]
    assert v.final["band_low"] <= v.final["target"]  # it gets there in the end
    assert v.bug_impact_at.startswith("epoch") and v.bug_impact_points > 10
    rows = v.table().splitlines()
    assert rows[0].split() == ["epoch", "target", "reference", "(band)", "no-BN"]
    assert rows[2].split()[0] == "1" and rows[2].endswith("<")  # epoch 1 below the band, marked


def test_reference_failure_is_an_error_not_a_verdict() -> None:
    p = cv.Protocol(epochs=5, seeds=(0, 1), target_accuracy=0.9)
    ref = [synthetic("reference", 0, ramp(0.95, 0.5, 5)), synthetic("reference", 1, [0.5, 0.6], status="diverged")]
    v = cv.compare([synthetic("target", 0, ramp(0.95, 0.5, 5))], ref, [], p)
    assert v.outcome == "error" and v.passed is None and "reference batch norm itself" in v.explanation


def test_protocol_validation_and_defaults() -> None:
    p = cv.Protocol.embedded()
    assert (p.hidden, p.lr, p.batch_size, p.epochs, p.target_accuracy) == ((300, 50), 0.01, 100, 50, 0.90)
    assert len(p.seeds) >= 3 and p.optimizer == "sgd"
    assert cv.Protocol.full_mnist().target_accuracy == 0.98
    for bad in ({"optimizer": "adam"}, {"placement": "middle"}, {"init": "normal"}, {"seeds": ()}, {"confidence": 1.2}):
        with pytest.raises(ValueError):
            cv.Protocol(**bad)


# ------------------------------------------------------------------------------ report and plot


def test_metrics_series_table_and_plot(split, reference, tmp_path) -> None:
    v = verdict_for(nn.BatchNorm1d, split, reference)
    m = v.metrics()
    assert m["passed"] == 1.0 and all(math.isfinite(x) for x in m.values())
    assert {"final_target", "final_reference", "final_band_low", "epochs_to_target_reference"} <= set(m)
    s = v.series()
    assert len(s["target_test_acc"]) == FAST.epochs == len(s["reference_band_low"])
    table = v.table()
    assert "reference (band)" in table and "verdict: PASS" in table
    out = cv.plot_curves(v, tmp_path / "conv.png")
    data = (tmp_path / "conv.png").read_bytes()
    assert out.endswith("conv.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    ref, nobn, _ = reference
    cv.plot_curves({"reference": ref, "no-bn": nobn}, tmp_path / "curves.png", title="curves")
    cv.plot_curves(ref + nobn, tmp_path / "flat.png")
    assert (tmp_path / "flat.png").stat().st_size > 5000
    d = v.to_dict()
    assert d["passed"] is True and d["protocol"]["epochs"] == FAST.epochs


# ------------------------------------------------------------------------------ seed claims


def test_seed_claims_sanity_checks(split) -> None:
    res = cv.seed_claims(split, only=["initial-loss", "overfit-batch"])
    assert [r.claim for r in res] == ["initial loss is near ln(10)", "a single mini-batch can be overfit"]
    assert all(r.reproduced for r in res), [r.explanation for r in res]
    assert res[1].numbers["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown claim"):
        cv.seed_claims(split, only=["nope"])


class RaisesInTrainBN(ReferenceBN):
    def forward(self, x):
        if self.training:
            raise RuntimeError("training mode is not implemented")
        return super().forward(x)


def test_seed_claim_with_a_broken_norm_is_reported_not_raised(split) -> None:
    r = cv.claim_overfit_batch(split, RaisesInTrainBN, steps=3)
    assert not r.reproduced and "crashed" in r.numbers["status"]


def test_torch_threads_is_restored() -> None:
    before = torch.get_num_threads()
    with cv.torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with cv.torch_threads(None):
        assert torch.get_num_threads() == before
