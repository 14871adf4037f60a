"""Optimizers in numpy float64 (seed 001), each convention a keyword argument, for the ``optim`` suite.

The shared interface (optax's ``init``/``update`` pair, on one array)::

    state = <name>_init(param)
    new_param, new_state = <name>(param, grad, state, *, lr, <hyperparameters>, <conventions>)

Every function is pure: it never modifies its arguments and returns fresh arrays.  State is a
``NamedTuple`` whose field names are torch's ``optimizer.state[p]`` keys, so a torch-style target's
state can be compared entry by entry.  Hyperparameter names and defaults are torch's
(``torch.optim.SGD``, ``Adam``, ``AdamW``, ``RMSprop``); conventions default to torch's and each
alternative is documented where it is accepted (framework sources are cited in
``bnverify.families.optim``).

Seed 001's forms, with the learning rate ``gamma``:

* SGD: ``theta := theta - gamma grad``;
* momentum (lr inside the velocity): ``v := a v - gamma grad; theta := theta + v``;
* Nesterov, look-ahead: ``v := a v - gamma grad(theta + a v); theta := theta + v``, and the same
  with shifted parameters ``theta^ = theta + a v``: ``theta^ := theta^ + a v_new - gamma grad(theta^)``;
* RMSprop: ``u := b u + (1 - b) grad^2; theta := theta - gamma grad / sqrt(u + eps)``;
* Adam (no bias correction, eps inside the square root): ``theta := theta - gamma v / sqrt(u + eps)``;
* L2 weight decay ``lambda ||W||^2``: ``W := (1 - 2 gamma lambda) W - gamma dW``.

Nothing here imports the harness.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import numpy as np

MomentumLR = Literal["after", "inside"]
BufferInit = Literal["first_grad", "zero"]
EpsPlacement = Literal["outside", "hat", "inside"]
WeightDecayMode = Literal["l2", "l2_2lambda", "decoupled"]

__all__ = [
    "SGDState", "RMSpropState", "AdamState",
    "sgd_init", "sgd", "nesterov_lookahead",
    "rmsprop_init", "rmsprop", "adam_init", "adam", "adamw",
    "apply_weight_decay", "REFERENCES",
]


# --------------------------------------------------------------------------- weight decay

def apply_weight_decay(
    param: np.ndarray, grad: np.ndarray, *, lr: float, weight_decay: float, mode: WeightDecayMode = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Weight decay before the update, coupled (in the gradient) or decoupled (on the parameter).

    .. math::

        \\text{l2:}\\quad g \\leftarrow g + \\lambda \\theta \\qquad
        \\text{l2\\_2lambda:}\\quad g \\leftarrow g + 2 \\lambda \\theta \\qquad
        \\text{decoupled:}\\quad \\theta \\leftarrow (1 - \\gamma \\lambda)\\,\\theta

    Args:
      mode: ``"l2"`` (default; torch's ``weight_decay``: the gradient of ``lambda/2 ||theta||^2``),
        ``"l2_2lambda"`` (seed 001: the gradient of ``lambda ||W||^2``, so plain SGD does
        ``W := (1 - 2 gamma lambda) W - gamma dW``), ``"decoupled"`` (AdamW, Loshchilov & Hutter 2019,
        multiplied by the learning rate as torch, optax and Keras do, applied before the update).

    Returns:
      ``(param, grad)`` after the decay.

    Warning: coupled decay in Adam is divided by ``sqrt(v)`` like the gradient; decoupled decay is not.
    That is the whole difference between ``Adam(weight_decay=...)`` and ``AdamW``.
    """
    if weight_decay == 0:
        return param, grad
    if mode == "decoupled":
        return param * (1.0 - lr * weight_decay), grad
    factor = 2.0 if mode == "l2_2lambda" else 1.0
    return param, grad + factor * weight_decay * param


# --------------------------------------------------------------------------- SGD (plain, momentum, Nesterov)

class SGDState(NamedTuple):
    """``momentum_buffer``: None before the first step with momentum.

    With ``momentum_lr="after"`` (torch) it is the gradient average ``b``; with ``"inside"`` (seed 001,
    Keras, cs231n) it is the velocity ``v``, which includes the learning rate (``v = -gamma b`` while the
    learning rate is constant).
    """

    momentum_buffer: np.ndarray | None = None


def sgd_init(param: np.ndarray) -> SGDState:
    return SGDState(None)


def sgd(
    param: np.ndarray,
    grad: np.ndarray,
    state: SGDState,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    momentum_lr: MomentumLR = "after",
    buffer_init: BufferInit = "first_grad",
    weight_decay_mode: WeightDecayMode = "l2",
) -> tuple[np.ndarray, SGDState]:
    """One step of SGD with optional momentum and Nesterov momentum.

    ``momentum_lr="after"`` (torch, optax ``trace`` + ``scale``; Sutskever et al. 2013 rewritten)::

        b_1 = g_1                               (buffer_init="first_grad", torch)
        b_1 = (1 - d) g_1                       (buffer_init="zero": b_0 = 0)
        b_t = mu b_{t-1} + (1 - d) g_t
        theta_t = theta_{t-1} - gamma b_t                   (classical)
        theta_t = theta_{t-1} - gamma (g_t + mu b_t)        (nesterov, torch's form)

    ``momentum_lr="inside"`` (seed 001, Keras, cs231n ``sgd_momentum``)::

        v_t = mu v_{t-1} - gamma (1 - d) g_t                (v_0 = 0)
        theta_t = theta_{t-1} + v_t                         (classical)
        theta_t = theta_{t-1} + mu v_t - gamma g_t          (nesterov, seed 001's shifted parameters)

    The two forms agree step for step while ``gamma`` is constant and ``d = 0`` (then
    ``v = -gamma b``); after a learning-rate change the ``inside`` velocity still carries the old
    rate.  Torch's buffer starts at the first gradient, so with dampening its first step is not
    damped (``buffer_init="zero"`` damps it).  ``nesterov_lookahead`` is seed 001's original
    Nesterov form, which needs the gradient at the look-ahead point.

    Args:
      lr: ``gamma``.  momentum: ``mu``.  dampening: ``d``.  weight_decay, weight_decay_mode: see
        ``apply_weight_decay``.
    """
    param, grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, mode=weight_decay_mode)
    if momentum == 0:
        return param - lr * grad, state
    buf = state.momentum_buffer
    if momentum_lr == "after":
        if buf is None:
            buf = grad.copy() if buffer_init == "first_grad" else (1.0 - dampening) * grad
        else:
            buf = momentum * buf + (1.0 - dampening) * grad
        direction = grad + momentum * buf if nesterov else buf
        return param - lr * direction, SGDState(buf)
    if buf is None and buffer_init == "first_grad":
        v = -lr * grad
    else:
        v = momentum * (np.zeros_like(param) if buf is None else buf) - lr * (1.0 - dampening) * grad
    new = param + momentum * v - lr * grad if nesterov else param + v
    return new, SGDState(v)


def nesterov_lookahead(
    theta: np.ndarray, velocity: np.ndarray, grad_fn: Callable[[np.ndarray], np.ndarray], *, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """Seed 001's Nesterov step with the look-ahead gradient (Sutskever et al. 2013, eq. 3-4).

    .. math::

        v_{t+1} = \\mu v_t - \\gamma \\nabla L(\\theta_t + \\mu v_t), \\qquad \\theta_{t+1} = \\theta_t + v_{t+1}

    In the shifted parameters ``theta^ = theta + mu v`` this is ``sgd(..., nesterov=True,
    momentum_lr="inside")`` fed with ``grad L(theta^)``; an optimizer only ever sees the gradient at
    its own parameters, so implementations store ``theta^``.

    Returns:
      ``(theta_{t+1}, v_{t+1})``.
    """
    v = momentum * velocity - lr * grad_fn(theta + momentum * velocity)
    return theta + v, v


# --------------------------------------------------------------------------- RMSprop

class RMSpropState(NamedTuple):
    """``square_avg`` ``u``; ``grad_avg`` (centred only); ``momentum_buffer`` (momentum only); ``step``."""

    step: int
    square_avg: np.ndarray
    momentum_buffer: np.ndarray | None = None
    grad_avg: np.ndarray | None = None


def rmsprop_init(param: np.ndarray, *, momentum: float = 0.0, centered: bool = False) -> RMSpropState:
    z = np.zeros_like(param, dtype=np.float64)
    return RMSpropState(0, z, z.copy() if momentum > 0 else None, z.copy() if centered else None)


def rmsprop(
    param: np.ndarray,
    grad: np.ndarray,
    state: RMSpropState,
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    momentum_lr: MomentumLR = "after",
    weight_decay_mode: WeightDecayMode = "l2",
) -> tuple[np.ndarray, RMSpropState]:
    """One RMSprop step (Tieleman & Hinton 2012), optionally centred (Graves 2013) and with momentum.

    .. math::

        u_t = \\alpha u_{t-1} + (1 - \\alpha) g_t^2, \\qquad
        \\bar g_t = \\alpha \\bar g_{t-1} + (1 - \\alpha) g_t \\ \\text{(centred)}, \\qquad
        s_t = u_t - \\bar g_t^2 \\ \\text{(centred) else } u_t

        \\text{denominator: } \\sqrt{s_t} + \\epsilon \\ \\text{(torch, cs231n)} \\quad\\text{or}\\quad
        \\sqrt{s_t + \\epsilon} \\ \\text{(eps\\_in\\_sqrt: seed 001, TensorFlow/Keras, optax)}

        \\theta_t = \\theta_{t-1} - \\gamma\\, g_t / \\text{denominator}

    With momentum ``mu``: ``b_t = mu b_{t-1} + g_t / denominator; theta -= gamma b_t`` (torch,
    ``momentum_lr="after"``) or ``b_t = mu b_{t-1} + gamma g_t / denominator; theta -= b_t``
    (Keras, ``"inside"``).  ``bias_correction`` divides ``u`` (and ``g_bar``) by ``1 - alpha^t``
    (optax ``scale_by_rms(bias_correction=True)``); then, with eps outside, RMSprop is Adam with
    ``beta1 = 0``.

    Warning: torch's documentation notes that TensorFlow interchanges the square root and the
    addition of eps; with ``eps`` comparable to ``sqrt(u)`` the two differ visibly.
    """
    param, grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, mode=weight_decay_mode)
    t = state.step + 1
    sq = alpha * state.square_avg + (1.0 - alpha) * grad * grad
    bc = 1.0 - alpha**t if bias_correction else 1.0
    ga = None
    if centered:
        prev = state.grad_avg if state.grad_avg is not None else np.zeros_like(sq)
        ga = alpha * prev + (1.0 - alpha) * grad
        s = sq / bc - (ga / bc) ** 2
    else:
        s = sq / bc
    denom = np.sqrt(s + eps) if eps_in_sqrt else np.sqrt(s) + eps
    buf = None
    if momentum > 0:
        prev_b = state.momentum_buffer if state.momentum_buffer is not None else np.zeros_like(sq)
        if momentum_lr == "after":
            buf = momentum * prev_b + grad / denom
            new = param - lr * buf
        else:
            buf = momentum * prev_b + lr * grad / denom
            new = param - buf
    else:
        new = param - lr * grad / denom
    return new, RMSpropState(t, sq, buf, ga)


# --------------------------------------------------------------------------- Adam, AdamW

class AdamState(NamedTuple):
    """``exp_avg`` ``m``, ``exp_avg_sq`` ``v``, ``max_exp_avg_sq`` (amsgrad only), ``step`` ``t``."""

    step: int
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray | None = None


def adam_init(param: np.ndarray, *, amsgrad: bool = False) -> AdamState:
    z = np.zeros_like(param, dtype=np.float64)
    return AdamState(0, z, z.copy(), z.copy() if amsgrad else None)


def adam(
    param: np.ndarray,
    grad: np.ndarray,
    state: AdamState,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    bias_correction: bool = True,
    eps_placement: EpsPlacement = "outside",
    weight_decay_mode: WeightDecayMode = "l2",
) -> tuple[np.ndarray, AdamState]:
    """One Adam step (Kingma & Ba 2015, Algorithm 1), with seed 001's and TensorFlow's variants.

    .. math::

        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\qquad v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2,
        \\qquad \\hat v = \\max(\\hat v_{t-1}, v_t) \\text{ (amsgrad) else } v_t

        c_1 = 1 - \\beta_1^t, \\quad c_2 = 1 - \\beta_2^t \\quad (c_1 = c_2 = 1 \\text{ without bias correction})

        \\text{outside (Algorithm 1; torch, optax, cs231n):}\\quad
            \\theta_t = \\theta_{t-1} - \\gamma \\frac{m_t / c_1}{\\sqrt{\\hat v / c_2} + \\epsilon}

        \\text{hat (TensorFlow/Keras, "epsilon hat"):}\\quad
            \\theta_t = \\theta_{t-1} - \\gamma \\frac{\\sqrt{c_2}}{c_1} \\frac{m_t}{\\sqrt{\\hat v} + \\hat\\epsilon}

        \\text{inside (seed 001):}\\quad
            \\theta_t = \\theta_{t-1} - \\gamma \\frac{m_t / c_1}{\\sqrt{\\hat v / c_2 + \\epsilon}}

    Seed 001 writes Adam without bias correction and with eps inside the square root:
    ``bias_correction=False, eps_placement="inside"``.  The ``hat`` form is the ``outside`` form with
    ``eps = eps_hat / sqrt(c_2)``, a different eps at every step.  ``amsgrad`` (Reddi et al. 2018)
    keeps the maximum of the uncorrected ``v`` (torch, Keras).  Coupled weight decay (``l2``) enters
    ``g``; ``weight_decay_mode="decoupled"`` is AdamW (see ``adamw``).
    """
    param, grad = apply_weight_decay(param, grad, lr=lr, weight_decay=weight_decay, mode=weight_decay_mode)
    t = state.step + 1
    m = beta1 * state.exp_avg + (1.0 - beta1) * grad
    v = beta2 * state.exp_avg_sq + (1.0 - beta2) * grad * grad
    vmax = None
    vv = v
    if amsgrad:
        prev = state.max_exp_avg_sq if state.max_exp_avg_sq is not None else np.zeros_like(v)
        vmax = np.maximum(prev, v)
        vv = vmax
    c1, c2 = (1.0 - beta1**t, 1.0 - beta2**t) if bias_correction else (1.0, 1.0)
    if eps_placement == "outside":
        new = param - lr * (m / c1) / (np.sqrt(vv / c2) + eps)
    elif eps_placement == "hat":
        new = param - lr * (np.sqrt(c2) / c1) * m / (np.sqrt(vv) + eps)
    else:
        new = param - lr * (m / c1) / np.sqrt(vv / c2 + eps)
    return new, AdamState(t, m, v, vmax)


def adamw(
    param: np.ndarray, grad: np.ndarray, state: AdamState, *, lr: float, weight_decay: float = 1e-2,
    weight_decay_mode: WeightDecayMode = "decoupled", **kw: object
) -> tuple[np.ndarray, AdamState]:
    """AdamW (Loshchilov & Hutter 2019): ``theta *= 1 - gamma lambda`` first, then an Adam step without decay.

    Torch, optax and Keras multiply the decay by the learning rate; the paper multiplies it by the
    schedule multiplier only.  Other keywords as for ``adam``.
    """
    return adam(param, grad, state, lr=lr, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                **kw)  # type: ignore[arg-type]


REFERENCES: dict[str, tuple[Callable[..., NamedTuple], Callable[..., tuple[np.ndarray, NamedTuple]]]] = {
    "sgd": (sgd_init, sgd),
    "adam": (adam_init, adam),
    "adamw": (adam_init, adamw),
    "rmsprop": (rmsprop_init, rmsprop),
}
"""Reference name (``--reference``) -> ``(init, step)``."""
