"""The optimizer references against closed forms, against each other, and against torch.optim in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnverify.reference import optimizers as ref

H = np.array([1.0, 100.0])  # seed 001's elongated contours: L = 0.5 * sum(H * theta^2)


def grad_q(theta):
    return H * theta


def run(step, init, theta, n, lrs=None, grad_fn=grad_q, lr=None, **kw):
    state = init(theta)
    out = [theta]
    for t in range(n):
        theta, state = step(theta, grad_fn(theta), state, lr=lrs[t] if lrs is not None else lr, **kw)
        out.append(theta)
    return np.array(out), state


def test_sgd_closed_form_on_quadratic():
    th0 = np.array([1.0, 1.0])
    traj, _ = run(ref.sgd, ref.sgd_init, th0, 10, lr=0.015)
    for t in range(11):
        np.testing.assert_allclose(traj[t], (1 - 0.015 * H) ** t * th0, rtol=1e-13)


@pytest.mark.parametrize("form", ["after", "inside"])
def test_momentum_closed_form_on_quadratic(form):
    """Heavy ball on a quadratic is linear: (theta, v) evolves by a 2x2 matrix per coordinate."""
    lr, mu, th0 = 0.01, 0.9, np.array([1.0, -2.0])
    traj, _ = run(ref.sgd, ref.sgd_init, th0, 12, lr=lr, momentum=mu, momentum_lr=form)
    for i, h in enumerate(H):
        # v_t = mu v - lr h theta, theta_t = theta + v_t  =>  [theta; v]_t = [[1 - lr h, mu], [-lr h, mu]] [theta; v]
        a = np.array([[1 - lr * h, mu], [-lr * h, mu]])
        x = np.array([th0[i], 0.0])
        for t in range(1, 13):
            x = a @ x
            assert traj[t][i] == pytest.approx(x[0], rel=1e-12, abs=1e-14)


def test_adam_first_step_is_lr_times_sign():
    """Bias-corrected Adam's first step with eps = 0 moves every coordinate by exactly lr."""
    th = np.array([0.3, -2.0, 5.0])
    g = np.array([1e-3, 7.0, -0.2])
    new, _ = ref.adam(th, g, ref.adam_init(th), lr=0.1, eps=0.0)
    np.testing.assert_allclose(new - th, -0.1 * np.sign(g), rtol=1e-14)


def test_seed_adam_first_step():
    """Seed 001's Adam (no bias correction, eps inside the root): step 1 is lr (1-b1) g / sqrt((1-b2) g^2 + eps)."""
    th, g = np.array([1.0, 2.0]), np.array([0.5, -3.0])
    new, _ = ref.adam(th, g, ref.adam_init(th), lr=0.01, eps=1e-4, bias_correction=False, eps_placement="inside")
    np.testing.assert_allclose(th - new, 0.01 * 0.1 * g / np.sqrt(0.001 * g * g + 1e-4), rtol=1e-14)


def test_seed_weight_decay_form():
    """Seed 001: W := (1 - 2 gamma lambda) W - gamma dW."""
    w, dw = np.array([1.0, -3.0]), np.array([0.2, 0.1])
    new, _ = ref.sgd(w, dw, ref.sgd_init(w), lr=0.1, weight_decay=0.05, weight_decay_mode="l2_2lambda")
    np.testing.assert_allclose(new, (1 - 2 * 0.1 * 0.05) * w - 0.1 * dw, rtol=1e-15)


def test_nesterov_lookahead_equals_shifted_form():
    """The look-ahead form in theta and the shifted-parameter form in theta^ = theta + mu v are one method."""
    rng = np.random.default_rng(0)
    lr, mu = 0.005, 0.9
    c = rng.standard_normal(2)

    def grad_fn(x):
        return H * (x - c) + np.sin(x)  # not quadratic, so the forms are not trivially equal

    theta, v = np.array([1.5, -0.5]), np.zeros(2)
    shifted, state = theta.copy(), ref.sgd_init(theta)
    for _ in range(25):
        theta, v = ref.nesterov_lookahead(theta, v, grad_fn, lr=lr, momentum=mu)
        shifted, state = ref.sgd(shifted, grad_fn(shifted), state, lr=lr, momentum=mu, nesterov=True,
                                 momentum_lr="inside")
        np.testing.assert_allclose(shifted, theta + mu * v, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state.momentum_buffer, v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_seed_and_torch_momentum_agree_at_constant_lr_and_differ_after_a_change(nesterov):
    th0 = np.array([1.0, 1.0])
    kw = dict(momentum=0.9, nesterov=nesterov)
    const = [0.01] * 8
    a, _ = run(ref.sgd, ref.sgd_init, th0, 8, lrs=const, momentum_lr="after", **kw)
    b, _ = run(ref.sgd, ref.sgd_init, th0, 8, lrs=const, momentum_lr="inside", **kw)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    changed = [0.01] * 4 + [0.002] * 4
    a, _ = run(ref.sgd, ref.sgd_init, th0, 8, lrs=changed, momentum_lr="after", **kw)
    b, _ = run(ref.sgd, ref.sgd_init, th0, 8, lrs=changed, momentum_lr="inside", **kw)
    np.testing.assert_allclose(a[:5], b[:5], rtol=1e-12, atol=1e-15)
    assert np.max(np.abs(a[5:] - b[5:])) > 1e-4


def test_rmsprop_with_bias_correction_is_adam_with_beta1_zero():
    rng = np.random.default_rng(1)
    th = rng.standard_normal(5)
    ra, rs = th.copy(), th.copy()
    sa, ss = ref.adam_init(th), ref.rmsprop_init(th)
    for _ in range(6):
        g = rng.standard_normal(5)
        ra, sa = ref.adam(ra, g, sa, lr=0.01, beta1=0.0, beta2=0.9, eps=1e-3)
        rs, ss = ref.rmsprop(rs, g, ss, lr=0.01, alpha=0.9, eps=1e-3, bias_correction=True)
        np.testing.assert_allclose(ra, rs, rtol=1e-14)


def test_adam_eps_hat_is_outside_with_a_scaled_eps():
    th, g = np.array([1.0, -1.0]), np.array([0.3, 2e-4])
    s = ref.adam_init(th)
    hat, _ = ref.adam(th, g, s, lr=0.1, eps=1e-3, eps_placement="hat")
    out, _ = ref.adam(th, g, s, lr=0.1, eps=1e-3 / np.sqrt(1 - 0.999), eps_placement="outside")
    np.testing.assert_allclose(hat, out, rtol=1e-13)


def test_eps_placements_differ_when_eps_matters():
    th, g = np.array([1.0]), np.array([1e-2])
    s = ref.rmsprop_init(th)
    a, _ = ref.rmsprop(th, g, s, lr=0.1, eps=1e-3)
    b, _ = ref.rmsprop(th, g, s, lr=0.1, eps=1e-3, eps_in_sqrt=True)
    assert abs(a[0] - b[0]) > 1e-3


# --------------------------------------------------------------------------- against torch.optim, float64

TORCH_CASES = [
    ("sgd", torch.optim.SGD, dict(lr=0.01)),
    ("sgd", torch.optim.SGD, dict(lr=0.01, momentum=0.9)),
    ("sgd", torch.optim.SGD, dict(lr=0.01, momentum=0.9, dampening=0.5)),
    ("sgd", torch.optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("sgd", torch.optim.SGD, dict(lr=0.01, weight_decay=0.5)),
    ("adam", torch.optim.Adam, dict(lr=0.01)),
    ("adam", torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1)),
    ("adam", torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01)),
    ("adamw", torch.optim.AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01, centered=True, eps=1e-3)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, weight_decay=0.1, alpha=0.9)),
]


def _ref_kwargs(name, kw):
    kw = dict(kw)
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    return kw


@pytest.mark.parametrize("name,cls,kw", TORCH_CASES, ids=lambda x: str(x) if not isinstance(x, type) else "")
def test_against_torch_float64(name, cls, kw):
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((3, 4))
    p = torch.tensor(x0, requires_grad=True)
    opt = cls([p], **kw)
    init, step = ref.REFERENCES[name]
    theta, state = x0.copy(), init(x0)
    for t in range(12):
        g = rng.standard_normal((3, 4)) * (10.0 ** rng.integers(-3, 2))
        p.grad = torch.tensor(g)
        opt.step()
        theta, state = step(theta, g, state, **_ref_kwargs(name, kw))
        np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")
        for field in state._fields:
            val = getattr(state, field)
            if val is None or field == "step":
                continue
            np.testing.assert_allclose(opt.state[p][field].numpy(), val, rtol=1e-12, atol=1e-14,
                                       err_msg=f"{field} at step {t}")


def test_lr_change_against_torch():
    """Torch reads group['lr'] at every step; its momentum keeps lr outside the buffer."""
    x0 = np.array([1.0, -1.0])
    p = torch.tensor(x0, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    theta, state = x0.copy(), ref.sgd_init(x0)
    for t in range(8):
        lr = 0.01 if t < 4 else 0.003
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(grad_q(p.detach().numpy()))
        g = grad_q(theta)
        opt.step()
        theta, state = ref.sgd(theta, g, state, lr=lr, momentum=0.9)
        np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-13, atol=1e-15)
