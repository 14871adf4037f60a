"""The gallery's catalogue: every buggy implementation, what must catch it, and the correct ones.

``catches`` names the suite check functions (``suites/test_bn_forward.py``,
``suites/test_bn_backward.py``) that must *all* fail on the bug: the one or
two most specific, not every check the bug happens to upset.  Bug classes
are ANCHORS part A section 6 (``B1``..``B28``) or, for the gallery's own:
``seed-002`` (a mistake in seed 002's steps), ``affine-swap``,
``contract-dtype`` and ``contract-inplace`` (output contract of SPEC section 2).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Bug",
    "FORWARD_CHECKS",
    "BACKWARD_CHECKS",
    "FORWARD_BACKWARD_BUGS",
    "CORRECT",
    "CORRECT_PUBLIC",
    "resolve",
    "bug_by_id",
]

FORWARD_CHECKS = (
    "test_forward_train",
    "test_forward_ill_conditioned",
    "test_forward_half",
    "test_forward_layouts",
    "test_forward_eval",
    "test_forward_contract",
)
BACKWARD_CHECKS = (
    "test_backward_train",
    "test_backward_ill_conditioned",
    "test_backward_half",
    "test_backward_eval",
    "test_gradcheck",
)


@dataclass(frozen=True)
class Bug:
    id: str  # slug, unique
    target: str  # "tests.gallery.<module>:<Attr>", importable with the repo root on sys.path
    kind: str | None  # None when auto-detectable, else "numpy-cs231n"
    suites: tuple[str, ...]  # suites to run
    catches: tuple[str, ...]  # check functions that must all fail on it
    bug_class: str  # ANCHORS part A section 6 id, or the gallery's own
    description: str  # what the author got wrong, in their words


_M = "tests.gallery.buggy_modules:"
_F = "tests.gallery.buggy_functional:"
_N = "tests.gallery.buggy_cs231n:"
_NP = "numpy-cs231n"

FORWARD_BACKWARD_BUGS: tuple[Bug, ...] = (
    # ---------------------------------------------------------------- torch-module, forward
    Bug(
        "module-unbiased-normalization", _M + "UnbiasedVarianceBatchNorm", None,
        ("forward",), ("test_forward_train",), "B2",
        "I took the batch variance with x.var(dims); torch.var is unbiased by default, so I normalise by the m-1 estimator.",
    ),
    Bug(
        "module-hardcoded-eps", _M + "HardcodedEpsBatchNorm", None,
        ("forward",), ("test_forward_train",), "B5",
        "My Triton kernel has EPS as a constexpr 1e-5 and the wrapper never passes self.eps, so any other eps is ignored.",
    ),
    Bug(
        "module-one-pass-variance", _M + "OnePassVarianceBatchNorm", None,
        ("forward",), ("test_forward_ill_conditioned",), "B14",
        "I compute the variance in one read as E[x^2] - E[x]^2 (clamped at 0, like Flax's fast variance), in the input dtype.",
    ),
    Bug(
        "module-ignores-strides", _M + "IgnoresStridesBatchNorm", None,
        ("forward",), ("test_forward_layouts",), "B18",
        "My kernel indexes the data pointer with contiguous NCHW offsets; I never call .contiguous() or look at the strides.",
    ),
    Bug(
        "module-flatten-rows", _M + "FlattenRowsBatchNorm", None,
        ("forward",), ("test_forward_train",), "B18",
        "I reuse my (rows, C) BatchNorm1d kernel for conv features with x.reshape(-1, C), without moving channels last.",
    ),
    Bug(
        "module-per-position-stats", _M + "PerPositionStatsBatchNorm", None,
        ("forward",), ("test_forward_train",), "seed-002",
        "I take mean and variance over the batch axis only, as in the fully-connected formula, so each H, W position gets its own statistics.",
    ),
    Bug(
        "module-float32-output", _M + "Float32OutputBatchNorm", None,
        ("forward",), ("test_forward_contract",), "contract-dtype",
        "My kernel accumulates in float32 and I return its float32 output buffer whatever the input dtype.",
    ),
    Bug(
        "module-inplace-input", _M + "InPlaceInputBatchNorm", None,
        ("forward",), ("test_forward_contract",), "contract-inplace",
        "When no gradient is needed I normalise the input tensor in place to save memory and return it.",
    ),
    Bug(
        "module-eval-batch-stats", _M + "EvalBatchStatsBatchNorm", None,
        ("forward", "backward"), ("test_forward_eval", "test_backward_eval"), "B7",
        "I update the running statistics in training but always normalise with the batch statistics, also in eval.",
    ),
    Bug(
        "module-eval-eps-outside-sqrt", _M + "EvalEpsOutsideSqrtBatchNorm", None,
        ("forward",), ("test_forward_eval",), "B23",
        "In the inference path I divide by sqrt(running_var) + eps instead of sqrt(running_var + eps).",
    ),
    # ---------------------------------------------------------------- torch-module, backward
    Bug(
        "module-backward-stats-constant", _M + "StatsAsConstantsBatchNorm", None,
        ("backward",), ("test_backward_train", "test_gradcheck"), "B24",
        "My hand-written backward treats the batch mean and variance as constants: dx = gamma / sqrt(var + eps) * dy.",
    ),
    Bug(
        "module-backward-no-variance-term", _M + "NoVarianceTermBatchNorm", None,
        ("backward",), ("test_backward_train", "test_gradcheck"), "B24",
        "My backward subtracts mean(dy) for the batch mean but forgets the term that flows through the batch variance.",
    ),
    Bug(
        "module-backward-bessel", _M + "BesselGradBatchNorm", None,
        ("backward",), ("test_backward_train", "test_gradcheck"), "B24",
        "I derived the variance gradient from the unbiased formula, so that term of my backward divides by m-1 instead of m.",
    ),
    Bug(
        "module-backward-param-grad-mean-positions", _M + "ParamGradMeanOverPositionsBatchNorm", None,
        ("backward",), ("test_backward_train",), "B24",
        "My dgamma/dbeta kernel sums over the batch and then averages over the H, W positions instead of summing them.",
    ),
    Bug(
        "module-eval-backward-train-formula", _M + "EvalTrainBackwardBatchNorm", None,
        ("backward",), ("test_backward_eval",), "B24",
        "I launch my training backward kernel in eval mode too, so dx still subtracts the batch-statistics terms.",
    ),
    Bug(
        "module-backward-one-pass-recompute", _M + "OnePassRecomputeBackwardBatchNorm", None,
        ("backward",), ("test_backward_ill_conditioned",), "B14",
        "To save memory my backward recomputes mean and variance from x in one pass, as E[x^2] - E[x]^2.",
    ),
    Bug(
        "module-backward-input-dtype-recompute", _M + "InputDtypeRecomputeBackwardBatchNorm", None,
        ("backward",), ("test_backward_half",), "B16",
        "My backward re-derives mean and variance from the saved x in x's own dtype; the forward upcasts, the backward forgot.",
    ),
    # ---------------------------------------------------------------- torch-functional
    Bug(
        "functional-addcmul-swapped", _F + "batch_norm_addcmul_swapped", None,
        ("forward",), ("test_forward_train",), "affine-swap",
        "I wrote torch.addcmul(weight, xhat, bias) for the affine step, which is weight + xhat * bias: gamma and beta swapped.",
    ),
    Bug(
        "functional-eps-outside-sqrt", _F + "batch_norm_eps_outside_sqrt", None,
        ("forward",), ("test_forward_train",), "B23",
        "I normalise with (x - mean) / (sqrt(var) + eps), putting eps outside the square root.",
    ),
    Bug(
        "functional-fp16-accumulation", _F + "batch_norm_fp16_accumulation", None,
        ("forward",), ("test_forward_half",), "B16",
        "My accumulators have the input's dtype, so for float16 the sums of x and (x - mean)^2 overflow to inf.",
    ),
    Bug(
        "functional-no-eps-in-training", _F + "batch_norm_no_eps_in_training", None,
        ("forward",), ("test_forward_ill_conditioned",), "B15",
        "I thought eps only protects the running variance, so in training I divide by sqrt(var) and a constant channel gives NaN.",
    ),
    # ---------------------------------------------------------------- numpy-cs231n
    Bug(
        "cs231n-ddof1", _N + "Cs231nDdof1", _NP,
        ("forward",), ("test_forward_train",), "B2",
        "I used np.var(x, axis=0, ddof=1) because a sample variance should divide by N-1.",
    ),
    Bug(
        "cs231n-dgamma-from-x", _N + "Cs231nDgammaFromX", _NP,
        ("backward",), ("test_backward_train",), "B24",
        "I wrote dgamma = np.sum(dout * x, axis=0), with the input instead of x_hat.",
    ),
    Bug(
        "cs231n-dx-of-centered", _N + "Cs231nDxOfCentered", _NP,
        ("backward",), ("test_backward_train",), "seed-002",
        "My staged backward stops at the gradient of x - mu; I forgot the last step through the batch mean.",
    ),
    Bug(
        "cs231n-float64-output", _N + "Cs231nFloat64Output", _NP,
        ("forward",), ("test_forward_contract",), "contract-dtype",
        "I cast x to float64 for precision at the top of batchnorm_forward and never cast the output back.",
    ),
    Bug(
        "cs231n-dx-double-mean", _N + "Cs231nDxDoubleMean", _NP,
        ("backward",), ("test_backward_train",), "B24",
        "In the simplified dx I replaced the sums with means but kept the 1/N in front, so the correction terms are N times too small.",
    ),
    Bug(
        "cs231n-test-mode-bessel", _N + "Cs231nTestModeBessel", _NP,
        ("forward",), ("test_forward_eval",), "B3",
        "At test time I multiply the running variance by N/(N-1), the paper's population correction, with N the test batch size.",
    ),
    Bug(
        "cs231n-spatial-reshape", _N + "Cs231nSpatialReshape", _NP,
        ("forward",), ("test_forward_train",), "B18",
        "In spatial_batchnorm_forward I reshape (N, C, H, W) to (-1, C) without transposing the channels last first.",
    ),
)

CORRECT: tuple[tuple[str, str | None], ...] = (
    ("tests.gallery.correct:Cs231nBatchNorm", "numpy-cs231n"),
    ("tests.gallery.correct:batch_norm", None),
    ("tests.gallery.correct:BatchNorm", None),
    ("tests.gallery.correct:BatchNormOps", None),
)


_C = "tests.gallery.course."
_P = "tests.gallery.public_torch:"

CORRECT_PUBLIC: tuple[tuple[str, str | None], ...] = (
    # course-shaped: cs231n/layers.py as students hand it in (tests/gallery/course/)
    (_C + "staged", None),  # seed 002's staged backward, test-mode cache None, spatial via transpose-reshape
    (_C + "compact", None),  # the compact closed-form backward (batchnorm_backward_alt)
    (_C + "stub_spatial", None),  # spatial_batchnorm_* left as the template's stub
    (_C + "forward_only", None),  # a tutorial's forward, no batchnorm_backward
    # torch-shaped: re-implementations as public code writes them (tests/gallery/public_torch.py)
    (_P + "FoldedBatchNorm", None),  # y = x * scale + shift, scale = gamma / sqrt(var + eps)
    (_P + "SubmoduleStatsBatchNorm", None),  # statistics in a registered submodule, exposed as properties
    (_P + "GradModeBatchNorm", None),  # mode from torch.is_grad_enabled(): a named design
)
"""Correct targets written the way public code writes them; with ``CORRECT`` they must pass on 20 seeds
(``tests/test_false_failures.py``), every suite of the quick tier."""


def resolve(target: str) -> Any:
    """Import ``MODULE:ATTR`` and return the attribute (``MODULE`` alone: the module)."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def bug_by_id(bug_id: str) -> Bug:
    for bug in FORWARD_BACKWARD_BUGS:
        if bug.id == bug_id:
            return bug
    raise KeyError(bug_id)
