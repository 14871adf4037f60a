"""The invariance suite's part of the gallery: buggy batch norms that break an invariance.

Same ``Bug`` record as ``tests.gallery.registry``; ``catches`` names check
functions of ``suites/test_bn_invariance.py`` that must all fail.
``ONLY_INVARIANCE`` lists the bugs that the forward and backward suites pass
(checked by ``tests/test_invariance.py``): they are right at the moderate
magnitudes those suites draw.  ``inv-first-samples-stats`` is right on the
small batches of the float32/float64 checks and is also caught by the 16-bit
ones, whose batches have thousands of values per channel.
"""

from __future__ import annotations

from tests.gallery.registry import Bug

__all__ = ["INVARIANCE_CHECKS", "INVARIANCE_BUGS", "ONLY_INVARIANCE"]

INVARIANCE_CHECKS = (
    "test_scale_exact",
    "test_scale_negative",
    "test_scale_fixed_eps",
    "test_shift",
    "test_linear_bias_grad",
    "test_grad_scale_linear",
    "test_grad_scale_conv",
    "test_weight_orthogonality",
    "test_batch_permutation",
)

_G = "tests.gallery.buggy_invariance:"
_NP = "numpy-cs231n"

INVARIANCE_BUGS: tuple[Bug, ...] = (
    Bug(
        "inv-std-floor", _G + "StdFloorBatchNorm", None,
        ("invariance",), ("test_scale_exact", "test_grad_scale_linear", "test_grad_scale_conv"), "B15",
        "To never divide by a tiny number I clamp the std: sqrt(var + eps).clamp(min=1e-3), like F.normalize does.",
    ),
    Bug(
        "inv-prescale-forgets-eps", _G + "PrescaleForgetsEpsBatchNorm", None,
        ("invariance",), ("test_scale_exact", "test_scale_fixed_eps", "test_scale_negative"), "B17",
        "Above 2^32 I divide the input by x.amax() so the sum of squares cannot overflow; I left eps as it was.",
    ),
    Bug(
        "inv-fixed-point-mean", _G + "batch_norm_fixed_point_mean", None,
        ("invariance",), ("test_scale_exact", "test_scale_fixed_eps"), "B16",
        "For a deterministic float32 mean I accumulate in int64 fixed point with 24 fraction bits, as our CUDA kernel does.",
    ),
    Bug(
        "inv-first-samples-stats", _G + "batch_norm_first_samples", None,
        ("invariance",), ("test_batch_permutation",), "B20",
        "For batches above 32 samples I estimate the mean and variance from the first 32 to save a pass.",
    ),
    Bug(
        "inv-ema-mean-in-training", _G + "EmaMeanBatchNorm", None,
        ("invariance", "forward"), ("test_shift", "test_forward_train"), "B7",
        "In training I subtract the freshly updated running mean; it is a smoother estimate than one batch's mean.",
    ),
    Bug(
        "inv-cs231n-constant-threshold", _G + "Cs231nConstantThreshold", _NP,
        ("invariance",), ("test_scale_exact", "test_grad_scale_linear"), "B15",
        "Channels with variance below 1e-12 are numerically constant, so I output beta for them.",
    ),
    Bug(
        "inv-cs231n-backward-no-mean-term", _G + "Cs231nBackwardNoMeanTerm", _NP,
        ("invariance", "backward"), ("test_linear_bias_grad", "test_weight_orthogonality", "test_backward_train"), "B24",
        "My compact backward is dx = gamma * ivar * (dout - xhat * mean(dout * xhat)).",
    ),
)

ONLY_INVARIANCE: frozenset[str] = frozenset({
    "inv-std-floor",
    "inv-prescale-forgets-eps",
    "inv-fixed-point-mean",
    "inv-cs231n-constant-threshold",
})
