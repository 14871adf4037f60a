"""Seed 001's six-layer study with the target's initialiser (opt-in: ``--suite init-study``; full tier).

Runs the seed's network (inputs N(0, 1) 1000 x 500, six bias-free layers of 500 units, tanh and ReLU)
with the target's weights, beside the law it claims (``--reference``) and the seed's four forms
(``0.01 * randn``, ``randn``, ``/ sqrt(fan_in)``, ``/ sqrt(fan_in / 2)``); see ``bnverify.init_study``.
Records the per-layer table (printed after the summary), a plot (``plots/init_study.png``) and the
per-layer std as metrics; fails when the target's per-layer std leaves the band derived from the
reference's measured seed-to-seed spread (``bnverify.tolerances``, six-layer study).  A band verdict is
not an error over a tolerance: no err/tol; per layer the metrics hold the target's std, the
reference's and the band's edges (``band low``, ``band high``), and ``layers outside band`` counts.
"""

from __future__ import annotations

import math

import pytest

from bnverify import init_study
from bnverify.compare import CheckFailure

pytestmark = [pytest.mark.bnverify_suite("init-study"), pytest.mark.bnverify_tier("full")]


@pytest.fixture
def seed(request):
    return int(request.config.getoption("bn_seed") or 0) % (2**31)


def test_six_layer_study(bn_target, bn_check, seed, tmp_path_factory):
    """Per-layer activation mean, std and histograms (tanh, ReLU) for the target beside its reference."""
    st = init_study.run_study(bn_target, seed)
    text = init_study.table(st)
    bn_check.detail("console", text)
    path = tmp_path_factory.mktemp("init_study") / "init_study.png"
    init_study.plot(st, str(path))
    bn_check.artifact("plots/init_study.png", path)
    bands = init_study.bands(st)
    for b in bands:
        bn_check.metric(f"{b.act} layer{b.layer} std target", b.target)
        bn_check.metric(f"{b.act} layer{b.layer} std reference", b.centre)
        bn_check.metric(f"{b.act} layer{b.layer} band low", b.lo)
        bn_check.metric(f"{b.act} layer{b.layer} band high", b.hi)
    out = [b for b in bands if not b.inside]
    bn_check.metric("layers outside band", len(out))
    if not out:
        return
    first = out[0]
    lines = [f"{b.act} layer {b.layer}: target std {b.target:.4g}, reference {b.centre:.4g} (x"
             f"{b.target / b.centre:.3g}), band [{b.lo:.4g}, {b.hi:.4g}]" for b in out]
    l1 = {b.act: b for b in bands if b.layer == 1}
    hint = ""
    if all(math.isfinite(b.target) and b.target > 0 for b in l1.values()):
        r = {a: b.target / b.centre for a, b in l1.items()}
        hint = (f"\n  likely cause: the weights' scale: the first layer's std is x{r['tanh']:.3g} (tanh) and "
                f"x{r['relu']:.3g} (ReLU) the reference's, and the difference compounds layer by layer; the init "
                "suite (--suite init) names the mistake")
    raise CheckFailure(
        f"six-layer study: {len(out)} of {len(bands)} layer activations leave the reference's band "
        f"({bn_target.reference}, {st.seeds} seeds; first: {first.act} layer {first.layer})\n  "
        + "\n  ".join(lines) + hint)
