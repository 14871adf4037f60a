"""Run a gallery implementation of any kind on one small case and compare it with the numpy oracle.

A deliberately small, harness-free driver for ``test_gallery_sanity``: it
builds the input of a ``Case`` (values rounded to the case's dtype, so the
oracle sees exactly what the target saw), runs the target the way the
bnverify adapters do (module constructed with ``dtype=``, functional given
its buffers, cs231n given ``bn_param``), and reports the relative error of
every quantity against ``reference/batchnorm.py`` in float64.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bnverify.reference import batchnorm as ref

__all__ = ["Case", "Outcome", "run", "expected", "errors", "problems", "agree_tol", "kind_of", "gradcheck_ok"]

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
SCENARIOS = ("train_fwd", "train_bwd", "eval_fwd", "eval_bwd", "contract")
_AGREE_TOL = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


@dataclass(frozen=True)
class Case:
    """One run: what to call, on what input.

    ``data``: ``normal`` (per-channel mean in [-1, 1], std in [0.5, 2]),
    ``ill`` (``|mean|/std = 1e4``), ``constant`` (``normal`` with channel 0
    constant) or ``large`` (mean 30, std 5: float16 sums over a few thousand
    values overflow).  ``layout``: ``contiguous``, ``channels_last``
    (rank 4/5), ``transposed`` (storage in reversed axis order) or
    ``sliced`` (every other element of a larger tensor).
    """

    scenario: str
    shape: tuple[int, ...] = (8, 3)
    dtype: str = "float64"
    eps: float = 1e-5
    data: str = "normal"
    affine: bool = True
    layout: str = "contiguous"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}")

    @property
    def training(self) -> bool:
        return self.scenario in ("train_fwd", "train_bwd", "contract")

    @property
    def backward(self) -> bool:
        return self.scenario in ("train_bwd", "eval_bwd")

    def label(self) -> str:
        parts = [self.scenario, "x".join(map(str, self.shape)), self.dtype, f"eps{self.eps:g}", self.data]
        if not self.affine:
            parts.append("noaffine")
        if self.layout != "contiguous":
            parts.append(self.layout)
        return "-".join(parts)


@dataclass
class Outcome:
    values: dict[str, np.ndarray] = field(default_factory=dict)
    out_dtype: str = ""
    out_shape: tuple[int, ...] = ()
    input_modified: bool = False
    error: str | None = None


@dataclass
class _Problem:
    x: np.ndarray  # float64 values, already rounded to the case's dtype
    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    dy: np.ndarray


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(TORCH_DTYPES[dtype]).double().numpy()


def _problem(case: Case) -> _Problem:
    rng = np.random.default_rng(case.seed)
    c = case.shape[1]
    chan = (1, c) + (1,) * (len(case.shape) - 2)
    z = rng.standard_normal(case.shape)
    if case.data == "large":
        x = 30.0 + 5.0 * z
    else:
        loc = rng.uniform(-1.0, 1.0, c)
        scale = rng.uniform(0.5, 2.0, c)
        if case.data == "ill":
            loc = 1e4 * scale * rng.choice([-1.0, 1.0], c)
        x = loc.reshape(chan) + scale.reshape(chan) * z
        if case.data == "constant":
            x[:, 0] = 3.0
        elif case.data not in ("normal", "ill"):
            raise ValueError(f"unknown data {case.data!r}")
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.standard_normal(c)
    running_mean = rng.standard_normal(c)
    running_var = rng.uniform(0.25, 2.0, c)
    dy = rng.standard_normal(case.shape)
    d = case.dtype
    return _Problem(_round(x, d), _round(gamma, d), _round(beta, d), _round(running_mean, d), _round(running_var, d), _round(dy, d))


# --------------------------------------------------------------------------- running a target


def kind_of(obj: Any, kind: str | None) -> str:
    """The target kind, detected as SPEC section 2 says when not given."""
    if kind is not None:
        return kind
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        return "torch-module"
    params = list(inspect.signature(obj).parameters)
    want = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    if params[: len(want)] == want:
        return "torch-functional"
    raise TypeError(f"cannot detect the kind of {obj!r}")


def _with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        raise ValueError("channels_last needs rank 4 or 5")
    if layout == "transposed":
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "sliced":
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    raise ValueError(f"unknown layout {layout!r}")


def _f64(t: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def _run_torch(obj: Any, kind: str, case: Case, p: _Problem) -> Outcome:
    tdt = TORCH_DTYPES[case.dtype]
    c = case.shape[1]
    x = _with_layout(torch.from_numpy(p.x).to(tdt), case.layout)
    if case.backward:
        x = x.detach().requires_grad_(True)
    before = x.detach().clone()
    gamma = torch.from_numpy(p.gamma).to(tdt)
    beta = torch.from_numpy(p.beta).to(tdt)
    with torch.set_grad_enabled(case.backward):
        if kind == "torch-module":
            mod = obj(c, eps=case.eps, momentum=0.1, affine=case.affine, dtype=tdt)
            with torch.no_grad():
                if case.affine:
                    mod.weight.copy_(gamma)
                    mod.bias.copy_(beta)
                if not case.training:
                    mod.running_mean.copy_(torch.from_numpy(p.running_mean))
                    mod.running_var.copy_(torch.from_numpy(p.running_var))
            mod.train(case.training)
            out = mod(x)
            w, b = (mod.weight, mod.bias) if case.affine else (None, None)
        else:
            if case.training:
                rm, rv = torch.zeros(c, dtype=tdt), torch.ones(c, dtype=tdt)
            else:
                rm, rv = torch.from_numpy(p.running_mean).to(tdt), torch.from_numpy(p.running_var).to(tdt)
            w = gamma.clone().requires_grad_(case.backward) if case.affine else None
            b = beta.clone().requires_grad_(case.backward) if case.affine else None
            out = obj(x, rm, rv, w, b, case.training, 0.1, case.eps)
        res = Outcome(out_dtype=str(out.dtype).removeprefix("torch."), out_shape=tuple(out.shape))
        res.values["out"] = _f64(out)
        if case.backward:
            out.backward(torch.from_numpy(p.dy).to(tdt))
            res.values["dx"] = _f64(x.grad)
            if case.affine:
                res.values["dgamma"] = _f64(w.grad)
                res.values["dbeta"] = _f64(b.grad)
    res.input_modified = not torch.equal(x.detach(), before)
    return res


def _run_numpy(obj: Any, case: Case, p: _Problem) -> Outcome:
    npdt = np.dtype(case.dtype)
    c = case.shape[1]
    x = p.x.astype(npdt)
    before = x.copy()
    gamma = p.gamma.astype(npdt) if case.affine else np.ones(c, dtype=npdt)
    beta = p.beta.astype(npdt) if case.affine else np.zeros(c, dtype=npdt)
    bn_param: dict[str, Any] = {"mode": "train" if case.training else "test", "eps": case.eps, "momentum": 0.9}
    if case.training:
        bn_param["running_mean"], bn_param["running_var"] = np.zeros(c, dtype=npdt), np.ones(c, dtype=npdt)
    else:
        bn_param["running_mean"], bn_param["running_var"] = p.running_mean.astype(npdt), p.running_var.astype(npdt)
    if x.ndim == 2:
        fwd, bwd = obj.batchnorm_forward, obj.batchnorm_backward
    elif x.ndim == 4:
        fwd, bwd = obj.spatial_batchnorm_forward, obj.spatial_batchnorm_backward
    else:
        raise ValueError("the numpy-cs231n kind takes rank 2 (or rank 4 through spatial_batchnorm_*)")
    out, cache = fwd(x, gamma, beta, bn_param)
    res = Outcome(out_dtype=str(out.dtype), out_shape=tuple(out.shape))
    res.values["out"] = _f64(out)
    if case.backward:
        dx, dgamma, dbeta = bwd(p.dy.astype(npdt), cache)
        res.values["dx"] = _f64(dx)
        if case.affine:
            res.values["dgamma"], res.values["dbeta"] = _f64(dgamma), _f64(dbeta)
    res.input_modified = not np.array_equal(x, before)
    return res


def run(obj: Any, kind: str | None, case: Case) -> Outcome:
    """Run ``obj`` on ``case``; an exception inside the target becomes ``Outcome.error``."""
    p = _problem(case)
    try:
        if kind_of(obj, kind) == "numpy-cs231n":
            return _run_numpy(obj, case, p)
        return _run_torch(obj, kind_of(obj, kind), case, p)
    except Exception as exc:  # the target's own failure is an outcome, not a test error
        return Outcome(error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- oracle and comparison


def expected(case: Case) -> dict[str, np.ndarray]:
    """The float64 oracle's answer for ``case``, on exactly the values the target received."""
    p = _problem(case)
    g, b = (p.gamma, p.beta) if case.affine else (None, None)
    if case.training:
        out, cache = ref.forward_train(p.x, g, b, case.eps)
        res = {"out": out}
        if case.backward:
            res["dx"], res["dgamma"], res["dbeta"] = ref.backward(p.dy, cache)
    else:
        res = {"out": ref.forward_eval(p.x, g, b, p.running_mean, p.running_var, case.eps)}
        if case.backward:
            nd, axes = p.x.ndim, ref.reduction_axes(p.x.ndim)
            invstd = 1.0 / np.sqrt(p.running_var + case.eps)
            xhat = (p.x - ref.per_channel(p.running_mean, nd)) * ref.per_channel(invstd, nd)
            gamma = p.gamma if case.affine else np.ones_like(invstd)
            res["dx"] = ref.per_channel(gamma * invstd, nd) * p.dy
            res["dgamma"], res["dbeta"] = (p.dy * xhat).sum(axis=axes), p.dy.sum(axis=axes)
    if not case.affine:
        res.pop("dgamma", None)
        res.pop("dbeta", None)
    return res


def errors(outcome: Outcome, want: dict[str, np.ndarray]) -> dict[str, float]:
    """Per quantity: ``max|got - want| / max(1, max|want|)``; inf for missing, misshapen or non-finite values."""
    errs: dict[str, float] = {}
    for key, exp in want.items():
        got = outcome.values.get(key)
        if got is None or got.shape != exp.shape or not np.all(np.isfinite(got)):
            errs[key] = float("inf")
            continue
        errs[key] = float(np.max(np.abs(got - exp), initial=0.0) / max(1.0, float(np.max(np.abs(exp), initial=0.0))))
    return errs


def agree_tol(case: Case) -> float:
    """What a correct implementation reaches on ``case``: rounding of its dtype, times the conditioning."""
    tol = _AGREE_TOL[case.dtype]
    if case.data == "ill":
        tol = {"float64": 1e-8, "float32": 2e-2}.get(case.dtype, tol)
    return tol


def problems(case: Case, outcome: Outcome, tol: float | None = None) -> list[str]:
    """Everything wrong with ``outcome``: an exception, the output contract, values beyond ``tol``."""
    if outcome.error is not None:
        return [f"raised {outcome.error}"]
    tol = agree_tol(case) if tol is None else tol
    found = []
    if outcome.out_shape != case.shape:
        found.append(f"output shape {outcome.out_shape}, input {case.shape}")
    if case.scenario == "contract":
        if outcome.out_dtype != case.dtype:
            found.append(f"output dtype {outcome.out_dtype} for {case.dtype} input")
        if outcome.input_modified:
            found.append("the input was modified")
    for key, err in errors(outcome, expected(case)).items():
        if not err <= tol:
            found.append(f"{key}: relative error {err:.3g} > {tol:g}")
    return found


def gradcheck_ok(obj: Any, kind: str | None, shape: tuple[int, ...] = (4, 2, 3), seed: int = 0) -> bool:
    """``torch.autograd.gradcheck`` in float64, training mode, w.r.t. x, gamma and beta."""
    kind = kind_of(obj, kind)
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    gamma = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    beta = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_(True)
    if kind == "torch-module":
        mod = obj(c, dtype=torch.float64)
        mod.train()

        def f(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(mod, {"weight": g, "bias": b}, (x,))

    else:

        def f(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return obj(x, None, None, g, b, True, 0.1, 1e-5)

    return bool(torch.autograd.gradcheck(f, (x, gamma, beta), raise_exception=False))
