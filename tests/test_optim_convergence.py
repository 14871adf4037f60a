"""Meta-tests of the optimizer convergence suite (``optim-convergence``, full tier).

torch's SGD (momentum 0.9) and Adam pass; an SGD whose momentum buffer is updated out of place (the
stored buffer stays the first gradient) trains measurably worse and fails with its bug impact.  The
suite's protocol is shortened with ``--bn-convergence-epochs 10`` (the option for quick
experiments): at 10 epochs the bug trails the reference by about 30 points, every epoch below the
band.  The full 50-epoch protocol was run by hand (README, "Optimizers").  Reference and twin curves
are cached within a process, so the bug reuses SGD's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bnverify.convergence import optim as oc
from bnverify.runner import check

pytestmark = pytest.mark.slow  # training studies: run by `pytest -m slow` and .ci/run

REPO = Path(__file__).resolve().parents[1]
FAST = ["--bn-convergence-epochs", "10"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def only_result(summary):
    assert summary is not None
    [r] = [r for r in summary.results if r.suite == "optim-convergence"]
    return r


@pytest.mark.parametrize("target", ["torch.optim:SGD", "torch.optim:Adam"])
def test_torch_optimizers_pass(target):
    code, summary = check(target, suites=["optim-convergence"], tier="full", extra=FAST)
    r = only_result(summary)
    assert code == 0 and r.outcome == "passed", r.message
    m = r.metrics
    assert m["epochs"] == 10 and m["seeds"] == 3 and m["passed"] == 1.0
    assert m["final_band_low"] <= m["final_target"] <= m["final_band_high"]
    assert "bug_impact_points" not in m and not any("nobn" in k for k in m)
    assert len(r.series["target_test_acc"]) == 10
    assert "verdict: PASS" in r.details["console"] and "twin (seed 0)" in r.details["console"]
    png = Path(r.details["artifacts"]["plots/optim_convergence.png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_momentum_buffer_out_of_place_fails_with_its_bug_impact():
    code, summary = check("tests.gallery.buggy_optim_training:SGDMomentumOutOfPlace", reference="sgd",
                          suites=["optim-convergence"], tier="full", extra=FAST)
    r = only_result(summary)
    assert code == 1 and r.outcome == "failed"
    m = r.metrics
    # measured: 29 points at 10 epochs (60.9 % against 90.2 %); 5.3 at 50 epochs (87.5 % against 92.9 %)
    assert m["bug_impact_points"] >= 15.0, r.message
    assert m["final_target"] < m["final_band_low"] and m["epochs_below_band"] == 10
    first = r.message.splitlines()[0]
    assert f"bug impact {m['bug_impact_points']:.1f} points of test accuracy" in first
    assert "sgd reference optimizer" in first and "verdict: FAIL" in r.message


def test_reference_optimizer_steps_like_torch():
    """The float64 reference as a torch optimizer: within float32 rounding of torch's, for SGD momentum and Adam."""
    g = torch.Generator().manual_seed(0)
    for ref in ("sgd", "adam"):
        hp = oc.HYPERPARAMETERS[ref]
        a = [torch.nn.Parameter(torch.randn(40000, generator=g)), torch.nn.Parameter(torch.randn(3, 5, generator=g))]
        b = [torch.nn.Parameter(p.detach().clone()) for p in a]
        oa, ob = oc.reference_factory(ref, hp)(a), oc.baseline_factory(ref, hp)(b)
        for _ in range(5):
            for pa, pb in zip(a, b):
                grad = torch.randn(pa.shape, generator=g)
                pa.grad, pb.grad = grad.clone(), grad.clone()
            oa.step()
            ob.step()
        for pa, pb in zip(a, b):
            np.testing.assert_allclose(pa.detach().numpy(), pb.detach().numpy(), rtol=0, atol=2e-6)
        assert len(oa.state[a[0]]["reference"]) == -(-40000 // oc.CHUNK)


def test_optimizer_factory_default_and_crash():
    """train() without a factory is the protocol's SGD; a factory that raises stops the run as crashed."""
    from bnverify import mnist
    from bnverify.convergence import Protocol, train

    split = mnist.load(None)
    p = Protocol.for_split(split, epochs=1, seeds=(0,))
    default = train(None, split, p, 0)
    explicit = train(None, split, p, 0, optimizer=lambda ps: torch.optim.SGD(ps, lr=p.lr))
    assert default.test_acc == explicit.test_acc and default.ok

    def rejects(ps):
        raise TypeError("unexpected keyword argument 'momentum'")

    c = train(None, split, p, 0, optimizer=rejects)
    assert c.status == "crashed" and "building the optimizer" in c.message and "momentum" in c.message
