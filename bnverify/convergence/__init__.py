"""Convergence engine: does a batch norm train as well as the reference?

A batch norm can pass every numerical check and still train worse.  This
package runs seed 002's MNIST experiment on any batch norm: the 784-300-50-10
MLP with ReLU, batch norm before each ReLU and bias-free linear layers, plain
SGD at lr 0.01 with mini-batches of 100, trained three ways with the same
initial weights, the same data order and the same seeds:

* with the **target** batch norm,
* with the **reference** batch norm (``bnverify.reference.batchnorm_torch.BatchNorm``),
* **without** batch norm (the same network with biases, as in the seed).

:func:`train` produces one :class:`Curve` (test accuracy, test loss, train
loss per epoch; epoch times) and never raises: a target that throws or
produces non-finite values stops the run, which is marked ``crashed`` or
``diverged`` with the message.  :func:`compare` turns the curves into a
:class:`ConvergenceVerdict`; :func:`run_convergence` does both, reusing
reference and no-batch-norm curves from an in-process cache, since they do
not depend on the target.  :func:`plot_curves` writes the PNG and
:func:`seed_claims` runs the opt-in study of the seeds' claims.  Inside
:func:`call_guard` every piece of a non-built-in norm layer's work runs
through a guard (the suites pass the target's ``--bn-timeout`` watchdog);
:meth:`Protocol.for_suite` is the suites' protocol.

Modules, by responsibility:

* ``protocol``: :class:`Protocol`, the full tier's epochs, the random streams of a seed;
* ``network``: :func:`build_mlp`, :func:`init_weights`, :class:`GhostNorm`, the built-in norm layers;
* ``training``: :func:`train`, :class:`Curve`, :func:`call_guard`, :func:`torch_threads`, the cache
  of the built-in networks' curves;
* ``verdict``: the noise band and the verdict (:func:`compare`, :func:`run_convergence`); its
  docstring derives the statistics;
* ``plots``: :func:`plot_curves`;
* ``claims``: the seed-claims study (:func:`seed_claims`, the ``claim_*`` functions);
* ``suite``: ``training_setup``, what the pytest suites that train the target share (imported
  from there, not re-exported here, so that the engine does not import pytest).
"""

from bnverify.convergence.claims import (
    ClaimResult,
    claim_batch_regularisation,
    claim_bn_faster,
    claim_bn_init_resilience,
    claim_deep_sigmoid,
    claim_init_scales,
    claim_initial_loss,
    claim_lr_sweep,
    claim_overfit_batch,
    claim_placement,
    seed_claims,
)
from bnverify.convergence.network import GhostNorm, NormFactory, build_mlp, init_weights
from bnverify.convergence.plots import plot_curves
from bnverify.convergence.protocol import FULL_TIER_EPOCHS, Protocol
from bnverify.convergence.training import (
    Curve,
    cached_curve,
    call_guard,
    reference_curves,
    torch_threads,
    train,
)
from bnverify.convergence.verdict import (
    ConvergenceVerdict,
    compare,
    json_safe,
    olympic_mean,
    run_convergence,
)

__all__ = [
    "FULL_TIER_EPOCHS",
    "ClaimResult",
    "ConvergenceVerdict",
    "Curve",
    "GhostNorm",
    "NormFactory",
    "Protocol",
    "build_mlp",
    "cached_curve",
    "call_guard",
    "claim_batch_regularisation",
    "claim_bn_faster",
    "claim_bn_init_resilience",
    "claim_deep_sigmoid",
    "claim_init_scales",
    "claim_initial_loss",
    "claim_lr_sweep",
    "claim_overfit_batch",
    "claim_placement",
    "compare",
    "init_weights",
    "json_safe",
    "olympic_mean",
    "plot_curves",
    "reference_curves",
    "run_convergence",
    "seed_claims",
    "torch_threads",
    "train",
]
