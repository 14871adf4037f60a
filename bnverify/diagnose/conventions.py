"""Convention hints: a failure that another framework's convention explains names that convention.

Under the default convention a correct Keras/Flax/cs231n port is not wrong, only held to the wrong
convention; the hint says which ``--convention`` accepts it (SPEC section 4).
"""

from __future__ import annotations

from bnverify.conventions import CONVENTIONS


def conventions_with(momentum_kind: str, unbiased: bool) -> list[str]:
    """Names of the conventions with this momentum meaning and running-variance estimator."""
    return [c.name for c in CONVENTIONS.values() if c.momentum_kind == momentum_kind and c.unbiased_running_var == unbiased]


def convention_hint(names: list[str], current: str) -> str:
    """``"Keras/Flax/cs231n convention? pass --convention keras (or ...)"``, or ``""`` if only ``current`` fits."""
    others = [n for n in names if n != current]
    if not others:
        return ""
    first = others[0]
    rest = f" (or {', '.join(others[1:])}; they differ in default eps/momentum, see `bnverify fingerprint`)" if len(others) > 1 else ""
    return f"{'/'.join(n.capitalize() if n != 'cs231n' else n for n in others)} convention? pass --convention {first}{rest}"
