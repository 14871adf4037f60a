"""Bugs whose failures must name the right cause or none: ``tests/gallery/buggy_truth.py``.

``CausedBug`` adds to the gallery's ``Bug`` what each failing check must and must not print: a cause is
named only when its hypothesis reproduces the target's output, so a wrong one (a default eps of 1e-10,
"eval not using batch statistics", "sign dependence", 16-bit overflow for a NaN that float32 input gives
too) must be absent.  ``passes`` names checks that must pass: what the bug does not touch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.gallery.registry import Bug

__all__ = ["CausedBug", "TRUTH_BUGS", "NEUTRAL"]

NEUTRAL = "no known bug pattern reproduces this output"
"""The line of a failure that no hypothesis explains."""


@dataclass(frozen=True)
class CausedBug(Bug):
    # check -> (phrases of which at least one must be in its failure, phrases none of which may be)
    expect: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()
    passes: tuple[str, ...] = ()


_T = "tests.gallery.buggy_truth:"
_EPS_INSIDE = "eps belongs inside the square root"

TRUTH_BUGS: tuple[Bug, ...] = (
    CausedBug(
        "truth-eps-outside-sqrt", _T + "EpsOutsideSqrtBatchNorm", None, ("modes", "invariance"),
        ("test_no_tracking", "test_scale_negative"), "B23",
        "I divide by sqrt(var) + eps in training and in eval, the way other layers add eps to a denominator.",
        expect=(
            ("test_no_tracking", (_EPS_INSIDE,), ("eval must use the batch's own statistics",)),
            ("test_scale_negative", (_EPS_INSIDE,), ("depends on the sign", "layer norm", "both ends")),
        ),
        passes=("test_constructor_defaults",),  # its defaults are torch's: 1e-5 and 0.1, measured as such
    ),
    CausedBug(
        "truth-nan-above-64", _T + "NaNAboveBatch64BatchNorm", None, ("forward",),
        ("test_forward_half",), "tile",
        "My kernel keeps per-sample partial sums in a tile of 64 rows; larger batches read uninitialised rows.",
        expect=(
            ("test_forward_half", ("16-bit overflow does not explain it",),
             ("sums and sums of squares kept in float16", "cancellation", "E[x^2] - E[x]^2")),
        ),
        passes=("test_forward_train",),
    ),
)
