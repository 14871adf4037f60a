"""Likely causes: when a target is wrong, find which well-known mistake its numbers match.

Each hypothesis recomputes the result in float64 the way a known bug would
(the classes of ANCHORS part A section 6) and tests the target's numbers
against it with the check's own tolerance.  A match is reported as "likely
cause"; nothing is guessed from names.  A failure with no matching hypothesis
says so (``bnverify.compare.NO_KNOWN_CAUSE``, ``common.cause_lines``), and a
fixed sentence that no simulation backs says what was observed and ends
"observed, not a diagnosis" (``common.observed``).  Every likely cause a
report can name is in this package:

* ``forward``: training and eval outputs, layouts (suite ``forward``, and the modes checks that
  compare outputs);
* ``backward``: dx, dgamma, dbeta in training and eval (suite ``backward``);
* ``modes``: running statistics, counters, defaults, state_dict, mode switches (suite ``modes``);
* ``invariance``: where a scale invariance breaks, order dependence, shifts, the bias gradient
  (suite ``invariance``);
* ``conventions``: the "... convention? pass --convention X" hints for a failure another
  convention explains;
* ``common``: the hypothesis test itself and the report lines.

The thresholds that decide a match are in ``bnverify.tolerances`` (diagnosis section).
"""

from __future__ import annotations

from bnverify.diagnose import backward, common, conventions, forward, invariance, modes

__all__ = ["backward", "common", "conventions", "forward", "invariance", "modes"]
