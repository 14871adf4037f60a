"""Likely causes of wrong gradients: dx, dgamma, dbeta in training mode, dx in eval mode."""

from __future__ import annotations

import numpy as np

from bnverify.compare import matches
from bnverify.diagnose.common import Hypothesis, batch, matching
from bnverify.reference.batchnorm import affine
from bnverify.tolerances import Tolerance


def train_grads(
    which: str, actual: np.ndarray, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, eps: float,
    tol: Tolerance,
) -> list[str]:
    """``which`` is ``"dx"``, ``"dgamma"`` or ``"dbeta"``: the known mistakes of each."""
    axes, m, mu, var = batch(x)
    g, _ = affine(x, gamma, None)
    s = np.sqrt(var + eps)
    xhat = (x - mu) / s
    mdy = dy.mean(axis=axes, keepdims=True)
    mdyx = (dy * xhat).mean(axis=axes, keepdims=True)
    if which == "dx":
        hyps: list[Hypothesis] = [
            ("dx matches gamma/sigma * dy: the backward treats the batch mean and variance as constants and drops "
             "both correction terms (-mean(dy) and -xhat*mean(dy*xhat))", lambda: g / s * dy),
            ("dx matches gamma/sigma * (dy - mean(dy)): the variance's gradient term -xhat*mean(dy*xhat) is missing",
             lambda: g / s * (dy - mdy)),
            ("dx matches gamma/sigma * (dy - xhat*mean(dy*xhat)): the mean's gradient term -mean(dy) is missing",
             lambda: g / s * (dy - xhat * mdyx)),
            ("dx matches a variance derivative with 1/(m-1): the batch variance is biased (1/m) in the forward pass, "
             "so its derivative carries 1/m", lambda: g / s * (dy - mdy - xhat * mdyx * m / (m - 1))),
            ("dx matches the gradient without gamma: dxhat = dy * gamma was skipped", lambda: 1 / s * (dy - mdy - xhat * mdyx)),
        ]
        return matching(actual, tol, hyps)
    if which == "dgamma":
        return matching(actual, tol, [
            ("dgamma matches sum(dy * x): it must be sum(dy * xhat), with the normalised input",
             lambda: (dy * x).sum(axis=axes)),
            ("dgamma matches sum(dy): dgamma and dbeta are swapped", lambda: dy.sum(axis=axes)),
        ])
    return matching(actual, tol, [
        ("dbeta matches sum(dy * xhat): dgamma and dbeta are swapped", lambda: (dy * xhat).sum(axis=axes)),
        ("dbeta matches mean(dy): dbeta is a sum over the batch, not a mean", lambda: dy.mean(axis=axes)),
    ])


def eval_dx(actual: np.ndarray, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray | None, eps: float,
            tol: Tolerance) -> list[str]:
    """An eval-mode dx: the training-mode gradient (batch statistics) where constants were due."""
    causes = train_grads("dx", actual, x, dy, gamma, eps, tol)
    axes, _m, mu, var = batch(x)
    g, _ = affine(x, gamma, None)
    s = np.sqrt(var + eps)
    xhat = (x - mu) / s
    train_dx = g / s * (dy - dy.mean(axis=axes, keepdims=True) - xhat * (dy * xhat).mean(axis=axes, keepdims=True))
    if matches(actual, train_dx, tol):
        return ["eval-mode dx matches the training-mode gradient with batch statistics: in eval the running "
                "statistics are constants and dx = gamma / sqrt(running_var + eps) * dy"]
    return [c for c in causes if "constants" not in c]
