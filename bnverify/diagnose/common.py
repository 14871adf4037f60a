"""What every hypothesis test shares: the batch statistics it recomputes, and the test itself."""

from __future__ import annotations

from typing import Callable

import numpy as np

from bnverify.compare import NO_KNOWN_CAUSE, matches
from bnverify.reference.batchnorm import reduction_axes
from bnverify.tolerances import Tolerance

OBSERVED = "observed, not a diagnosis"
"""The tail of a line that says what a check saw where no hypothesis was simulated: a report line that
follows "likely cause:" in a suite is then a statement of fact, not a guess."""


def observed(text: str) -> str:
    """``text`` marked as an observation: ``"the running mean did not change: observed, not a diagnosis"``."""
    return f"{text}: {OBSERVED}"


def cause_lines(causes: list[str]) -> str:
    """Report lines for a failure that is not a ``Comparison``: ``"\n  likely cause: ..."`` for each cause
    a hypothesis reproduced, or the line saying that none did."""
    if not causes:
        return f"\n  {NO_KNOWN_CAUSE}"
    return "".join(f"\n  likely cause: {c}" for c in causes)


Hypothesis = tuple[str, Callable[[], np.ndarray]]
"""The sentence a report shows, and the float64 result the bug it names would produce."""


def batch(x: np.ndarray) -> tuple[tuple[int, ...], int, np.ndarray, np.ndarray]:
    """``(axes, m, mean, biased var)`` with the statistics broadcastable against ``x``."""
    axes = reduction_axes(x.ndim)
    mu = x.mean(axis=axes, keepdims=True)
    return axes, x.size // x.shape[1], mu, ((x - mu) ** 2).mean(axis=axes, keepdims=True)


def matching(actual: np.ndarray, tol: Tolerance, hyps: list[Hypothesis]) -> list[str]:
    """The sentences of every hypothesis whose result ``actual`` is within ``tol`` of."""
    out = []
    for text, fn in hyps:
        try:
            with np.errstate(all="ignore"):
                alt = fn()
        except (ValueError, ZeroDivisionError, FloatingPointError):
            continue
        if alt is not None and alt.shape == actual.shape and matches(actual, alt, tol):
            out.append(text)
    return out
