"""Seed claims (opt-in: ``--bn-suite seed-claims``): what the seeds say about batch norm, tested with the target.

The seeds and the batch-norm paper make claims about batch norm in general:
it trains several times sooner (seed 002), allows learning rates at which the
plain network diverges, makes a deep sigmoid network trainable (Ioffe &
Szegedy, section 4.1), works after the ReLU as well as before (seed 002),
makes training resilient to the weight scale (section 3.3), regularises with
small batches (seed 004); plus seed 001's claim about weight scales and two
sanity checks (initial loss ln 10, a single batch can be overfit).
``bnverify.convergence.seed_claims`` tests each on the MNIST data of the
convergence suite (embedded digits, or ``--bn-mnist``) with **the target as
the batch norm**; this suite runs one check per claim.  It never runs by tier
alone: it is a study (about 40 s on the embedded digits on the 2-core machine,
much longer on full MNIST), not a gate.

Every claim is decided by bands (``bnverify.convergence.bands``): its statistic is measured on
several seeds, and the estimate carries a band from the measured seed-to-seed spread and the
run-to-run spread of a twin run (another correct batch norm on last-bit-perturbed data: what
another machine's kernels change).  The claim is *reproduced* when the band lies on the claim's
side of its threshold, *not reproduced* when it lies on the other side, *inconclusive* when it
straddles the threshold.  What a check's outcome means:

* **passed**: the claim reproduces with the target, numbers and bands in the details.
* **failed**: the claim is robustly not reproduced with the target, although the reference batch
  norm robustly reproduces it on the same experiment (run then, for comparison); the message
  gives the target's numbers and bands and the reference's.  A claim about batch norm that a
  correct batch norm reproduces and the target does not is evidence that the target does not
  behave like batch norm.
* **xfailed**, three ways, always with the numbers and the band (summary table, details,
  MLflow), never hidden; none fails the run:

  - *inconclusive*: the band straddles the threshold.  No pass or fail is decided inside the
    measured noise; on another machine the estimate may land on the other side.
  - *not reproduced, as with correct batch norms*: a claim known not to reproduce here
    (``KNOWN_NOT_REPRODUCED``: measured with ``torch.nn.BatchNorm1d`` and the reference on the
    embedded digits, with the reason): resilience to N(0, 1) weights.
  - *not reproduced, nor with the reference*: any other claim the target does not reproduce is
    re-run with the reference; when the reference does not reproduce it robustly either
    (not reproduced or inconclusive), the target is not to blame.

* A known non-reproducing claim that *does* reproduce with the target passes, with a note: a
  batch norm that trains badly can "reproduce" it for the wrong reason.

``KNOWN_INCONCLUSIVE`` notes the claims whose bands straddle with correct batch norms, and why: the
speed-up and the weight-scale margin (every seed agrees, but three seeds bound the mean loosely)
and small-batch regularisation (the two generalisation gaps differ by less than their spread).

Each check records ``reproduced``, ``inconclusive`` and ``seconds`` as metrics, every band's
estimate, edges and spreads (``bands.<name>.*``; an edge that nothing bounds is inf), the claim's
numbers flattened as metrics (curves as series) and in the details.  A claim is decided by bands,
not by an error over a tolerance: no check of this suite has an err/tol.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from bnverify import convergence as cv
from bnverify.convergence import bands
from bnverify.convergence.suite import training_setup

pytestmark = [pytest.mark.bnverify_suite("seed-claims"), pytest.mark.bnverify_tier("full")]

CLAIMS = (
    "initial-loss",
    "overfit-batch",
    "bn-faster",
    "lr-sweep",
    "init-scales",
    "init-resilience",
    "deep-sigmoid",
    "placement",
    "batch-regularisation",
)
#: Claims computed from one shared training study: run together, cached together.
SHARED = {"init-scales": ("init-scales", "init-resilience"), "init-resilience": ("init-scales", "init-resilience")}

#: Claims that correct batch norms robustly do not reproduce on this protocol, and why.  Measured on the
#: embedded digits with torch.nn.BatchNorm1d and the reference (3 seeds, bands as in bnverify.convergence.bands).
KNOWN_NOT_REPRODUCED = {
    "init-resilience": (
        "with N(0, 1) weights batch norm keeps the activations normalised, but each weight gradient shrinks "
        "by the weight scale, so at the protocol's lr 0.01 a correct batch norm reaches only about 19 % after "
        "5 epochs (86 % from N(0, 0.01^2) or Xavier weights); the paper's resilience concerns the forward pass"
    ),
}

#: Claims whose band straddles the threshold with correct batch norms (reported as inconclusive), and why.
KNOWN_INCONCLUSIVE = {
    "bn-faster": (
        "every seed's speed-up is above 5x (reference: 8.5, 7.0, 9.6; the plain network never reaches 90 % in "
        "50 epochs, so each is a lower bound), but with three seeds the one-sided 99 % t-bound (t = 6.96 at 2 "
        "degrees of freedom) widens the band to about [3.2, 13.6]"
    ),
    "init-scales": (
        "the good initialisations beat the bad scales on every seed (by 32, 12 and 23 points after 5 epochs), "
        "but the margin varies so much between seeds that its band, about [-19, 63] points, reaches below 0"
    ),
    "batch-regularisation": (
        "with the optimiser's batch fixed at 256 and batch norm over 16 or 256 rows, a correct batch norm fits "
        "the 4,000 training digits to 100 % either way and the generalisation gaps (test - train loss, about "
        "0.17 both) differ by less than their seed-to-seed spread: on this data small-batch statistics do not "
        "measurably regularise, and which gap comes out smaller depends on the seeds and the machine"
    ),
}


@pytest.fixture(scope="session")
def claim_cache() -> dict[tuple, cv.ClaimResult]:
    """Claim results of this session, keyed by (who, claim, target, device, data, protocol)."""
    return {}


def _results(cache: dict, who: Any, names: tuple[str, ...], run: Any) -> dict[str, cv.ClaimResult]:
    missing = [n for n in names if (who, n) not in cache]
    if missing:
        for name, res in zip(missing, run(missing)):
            cache[(who, name)] = res
    return {n: cache[(who, n)] for n in names}


def _flatten(prefix: str, value: Any, metrics: dict[str, float], series: dict[str, list[float]]) -> None:
    if isinstance(value, bool):
        metrics[prefix] = float(value)
    elif isinstance(value, (int, float)):
        if not math.isnan(float(value)):  # +/-inf (a band bounded by nothing) is logged and shown as inf
            metrics[prefix] = float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, metrics, series)
    elif isinstance(value, (list, tuple)):
        if prefix.rsplit(".", 1)[-1].startswith("curve_") and all(isinstance(v, (int, float)) for v in value):
            series[prefix] = [float(v) for v in value]
        else:
            for i, v in enumerate(value):
                _flatten(f"{prefix}.{i}", v, metrics, series)


@pytest.mark.parametrize("claim", CLAIMS)
def test_seed_claim(claim, bn_target, bn_device, bn_check, bn_mnist, claim_cache, request):
    """The claim reproduces with the target as the batch norm (xfail where it does not with correct batch norms)."""
    config = request.config
    split = bn_mnist
    factory, protocol = training_setup(bn_target, bn_device, config, split)
    names = SHARED.get(claim, (claim,))
    where = (bn_device, split.fingerprint(), protocol.training_key(), protocol.seeds)

    def with_target(only: list[str]) -> list[cv.ClaimResult]:
        guard = lambda fn: bn_target.watchdog.run(fn, bn_target.call_timeout)  # noqa: E731
        with cv.call_guard(guard):
            return cv.seed_claims(split, bn_device, norm_factory=factory, protocol=protocol, only=only, threads=None)

    def with_reference(only: list[str]) -> list[cv.ClaimResult]:
        return cv.seed_claims(split, bn_device, protocol=protocol, only=only, threads=None)

    r = _results(claim_cache, ("target", bn_target.spec, bn_target.kind, *where), names, with_target)[claim]

    metrics: dict[str, float] = {}
    series: dict[str, list[float]] = {}
    _flatten("", r.numbers, metrics, series)
    bn_check.metric("reproduced", float(r.reproduced))
    bn_check.metric("inconclusive", float(r.outcome == bands.INCONCLUSIVE))
    bn_check.metric("seconds", r.seconds)
    for name, value in metrics.items():
        bn_check.metric(name, value)
    for name, values in series.items():
        bn_check.series(name, values)
    bn_check.detail("claim", r.claim)
    bn_check.detail("source", r.source)
    bn_check.detail("reproduced", r.reproduced)
    bn_check.detail("outcome", r.outcome)
    bn_check.detail("bands", cv.json_safe([b.as_dict() for b in r.bands]))
    bn_check.detail("explanation", r.explanation)
    bn_check.detail("numbers", cv.json_safe(r.numbers))
    bn_check.detail("data", split.describe())
    known = KNOWN_NOT_REPRODUCED.get(claim)
    lines = [f"{r.claim} [{r.source}] ({r.seconds:.1f} s)", f"  with {bn_target.name}: {r.explanation}"]

    if r.outcome == bands.REPRODUCED:
        if known:
            note = ("reproduced with this target, although correct batch norms do not reproduce it here; "
                    "compare the numbers: a batch norm that trains badly can reproduce it for the wrong reason")
            bn_check.detail("note", note)
            lines.append(f"  note: {note}")
        bn_check.detail("console", "\n".join(["reproduced: " + lines[0], *lines[1:]]))
        return
    if r.outcome == bands.INCONCLUSIVE:
        why = KNOWN_INCONCLUSIVE.get(claim)
        if why:
            bn_check.detail("known_inconclusive", why)
            lines.append(f"  known: {why}")
        bn_check.detail("console", "\n".join(["inconclusive: " + lines[0], *lines[1:]]))
        pytest.xfail(
            f"inconclusive: a band straddles its threshold, so neither pass nor fail is decided inside the "
            f"measured noise: {r.band_text()}; {r.explanation}" + (f" (known: {why})" if why else "")
        )
    if known:
        bn_check.detail("known_not_reproduced", known)
        lines.append(f"  known: {known}")
        bn_check.detail("console", "\n".join(["not reproduced (as with correct batch norms): " + lines[0], *lines[1:]]))
        pytest.xfail(f"not reproduced, as with correct batch norms: {r.explanation} (known: {known})")

    ref = _results(claim_cache, ("reference", *where), names, with_reference)[claim]
    bn_check.detail("reference_reproduced", ref.reproduced)
    bn_check.detail("reference_outcome", ref.outcome)
    bn_check.detail("reference_explanation", ref.explanation)
    bn_check.detail("reference_bands", cv.json_safe([b.as_dict() for b in ref.bands]))
    bn_check.metric("reference_reproduced", float(ref.reproduced))
    lines.append(f"  with the reference batch norm ({ref.outcome}): {ref.explanation}")
    if ref.outcome != bands.REPRODUCED:
        bn_check.detail("console", "\n".join(["not reproduced (nor with the reference): " + lines[0], *lines[1:]]))
        pytest.xfail(
            f"not reproduced, nor with the reference batch norm on this data ({ref.outcome}): {r.explanation}; "
            f"with the reference: {ref.explanation}"
        )
    bn_check.detail("console", "\n".join(["NOT REPRODUCED: " + lines[0], *lines[1:]]))
    pytest.fail(
        f"claim not reproduced with {bn_target.name}: {r.claim} [{r.source}]\n"
        f"with {bn_target.name}: {r.explanation}\n"
        f"with the reference batch norm (reproduced): {ref.explanation}",
        pytrace=False,
    )
