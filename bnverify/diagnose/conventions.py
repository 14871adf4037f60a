"""Convention hints: a failure that another convention, or one aspect of it, explains says which flags accept it.

Under the default convention a correct Keras/Flax/cs231n port is not wrong, only held to the wrong
convention; a torch port that stores the biased running variance is one aspect away from torch.
The hint names the aspect and the exact flag that accepts it (``--running-var biased``, ``--eps 1e-6``,
SPEC section 4), or the named convention when several aspects differ together.  Callers build
the hint only for a hypothesis whose numbers reproduce the target's (``bnverify.diagnose.modes``,
``bnverify.diagnose.forward``).
"""

from __future__ import annotations

from typing import Any, Callable

from bnverify.conventions import CONVENTIONS, Convention, format_number, meaning_name, running_var_name


def conventions_with(momentum_kind: str, unbiased: bool) -> list[str]:
    """Names of the conventions with this momentum meaning and running-variance estimator."""
    return [c.name for c in CONVENTIONS.values() if c.momentum_kind == momentum_kind and c.unbiased_running_var == unbiased]


def _title(names: list[str]) -> str:
    return "/".join(n.capitalize() if n != "cs231n" else n for n in names)


def _as_do(names: list[str]) -> str:
    if not names:
        return ""
    return f" (as {', '.join(names)} {'does' if len(names) == 1 else 'do'})"


def convention_hint(names: list[str], current: str) -> str:
    """``"Keras/Flax/cs231n convention? pass --convention keras (or ...)"``, or ``""`` if only ``current`` fits.

    ``current`` may be a composed name (``torch+eps=1e-6``): its named convention is what counts."""
    base = current.split("+", 1)[0]
    others = [n for n in names if n != base]
    if not others:
        return ""
    first = others[0]
    rest = f" (or {', '.join(others[1:])}; they differ in default eps/momentum, see `bnverify fingerprint`)" if len(others) > 1 else ""
    return f"{_title(others)} convention? pass --convention {first}{rest}"


def aspect_hint(conv: Convention, *, momentum_kind: str | None = None, unbiased: bool | None = None) -> str:
    """The flags that accept a behaviour which differs from ``conv`` in the momentum meaning and/or the
    running-variance estimator (arguments left None are as in ``conv``); ``""`` if nothing differs.

    One aspect: ``"if that is intended, pass --running-var biased (as keras, flax, cs231n do)"``.  Both:
    the named conventions that have both, and the two flags that keep everything else of ``conv``.
    """
    kind = conv.momentum_kind if momentum_kind is None else momentum_kind
    unb = conv.unbiased_running_var if unbiased is None else unbiased
    flags: list[str] = []
    if kind != conv.momentum_kind:
        flags.append(f"--momentum-meaning {meaning_name(kind)}")
    if unb != conv.unbiased_running_var:
        flags.append(f"--running-var {running_var_name(unb)}")
    if not flags:
        return ""
    names = conventions_with(kind, unb)
    if len(flags) == 1:  # the named conventions that share this one aspect
        same = [c.name for c in CONVENTIONS.values()
                if (c.momentum_kind == kind if kind != conv.momentum_kind else c.unbiased_running_var == unb)]
        return f"if that is intended, pass {flags[0]}{_as_do(same)}"
    others = [n for n in names if n != conv.base_name]
    if others:
        return (f"{convention_hint(others, conv.name)}; or keep --convention {conv.base_name} and pass "
                f"{' '.join(flags)}")
    return f"if that is intended, pass {' '.join(flags)}"


def _eps_flag_value(measured: float) -> str:
    """The shortest ``--eps`` value (up to 4 significant digits) within half ``DEFAULT_EPS_RTOL`` of
    ``measured``: a flag the default-eps check then accepts with room for the measurement's own error."""
    from bnverify.tolerances import DEFAULT_EPS_RTOL

    for digits in range(1, 4):
        value = float(f"{measured:.{digits}g}")
        if abs(value - measured) <= 0.5 * DEFAULT_EPS_RTOL * abs(value):
            return format_number(value)
    return format_number(measured)


def eps_hint(measured: float, conv: Convention) -> str:
    """``"if that is intended, pass --eps 1e-6"`` for a target whose default eps is ``measured``.

    The value named is within the check's tolerance of ``measured`` (``_eps_flag_value``), so the flag it
    names is one that accepts the target."""
    value = _eps_flag_value(measured)
    names = [c.name for c in CONVENTIONS.values() if abs(c.default_eps - float(value)) <= 1e-3 * c.default_eps
             and c.name != conv.base_name]
    extra = f" (the default of {', '.join(names)})" if names else ""
    return f"if that is intended, pass --eps {value}{extra}"


def momentum_hint(weight_new: float, conv: Convention) -> str:
    """``"if that is intended, pass --momentum 0.01"``: the default momentum, in ``conv``'s meaning, that
    gives the new batch the measured weight ``weight_new``; ``""`` where no value in [0, 1] rounded to 4
    decimals gives it within ``DEFAULT_MOMENTUM_ATOL`` (no flag would accept the target)."""
    from bnverify.tolerances import DEFAULT_MOMENTUM_ATOL

    m = round(conv.from_update_fraction(weight_new), 4)
    if not 0.0 <= m <= 1.0 or abs(conv.to_update_fraction(m) - weight_new) > DEFAULT_MOMENTUM_ATOL:
        return ""
    meaning = "weight of the new batch" if conv.momentum_kind == "update_fraction" else "decay of the old value"
    return f"if that is intended, pass --momentum {format_number(m)} (momentum as the {meaning})"


def default_eps_output(actual: Any, x: Any, gamma: Any, beta: Any, conv: Convention, tol: Any) -> list[str]:
    """A training output produced with the target's own default eps (``bn_param`` without ``eps``) that
    matches another eps everywhere: the target's default is that eps, and ``--eps`` accepts it.

    Candidates are the eps values found written into public code (``forward.FIXED_EPS``); each is
    named only if the output computed with it reproduces ``actual`` within ``tol``.
    """
    from bnverify.diagnose.common import Hypothesis, matching
    from bnverify.diagnose.forward import FIXED_EPS
    from bnverify.reference.batchnorm import forward_train

    def with_eps(e: float) -> Callable[[], Any]:
        return lambda: forward_train(x, gamma, beta, e)[0]

    hyps: list[Hypothesis] = [
        (f"the outputs match eps = {e:g} everywhere, not the {conv.name} default {conv.default_eps:g}: the "
         f"target's default eps is {e:g}; {eps_hint(e, conv)}", with_eps(e))
        for e in FIXED_EPS if abs(e - conv.default_eps) > 1e-3 * conv.default_eps]
    return matching(actual, tol, hyps)
