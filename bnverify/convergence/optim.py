"""Optimizer convergence: the target optimizer trains seed 002's network beside the reference optimizer.

The optimizer family's full-tier suite (``suites/test_optim_convergence.py``) uses this module.
The network is seed 002's plain MLP (784-300-50-10, ReLU, biases everywhere, *no* batch norm),
trained on mini-batches of 100 with the same initial weights, data order and seeds as the
batch-norm convergence suite; only the optimizer differs.  Without batch norm the optimizer alone
sets the training dynamics: batch norm makes the weights before it scale-invariant, so their
effective learning rate adapts as their norm grows, which hides part of an optimizer's step-size
error (and the batch-norm suites already train batch norm with the seed's SGD).  The plain network
is also the faster of the two.

* :class:`ReferenceOptimizer` is a ``torch.optim.Optimizer`` that steps every parameter with the
  float64 math of ``bnverify.reference.optimizers`` (state kept in float64, the new value rounded
  to the parameter's dtype), under the target's convention.
* The *baseline* (the verdict's reference curves, three seeds) is torch's own optimizer of the
  same reference under the torch convention, and :class:`ReferenceOptimizer` under the others
  (torch implements only its own).  Why not the float64 math for all three seeds: it is elementwise
  numpy on 250,000 parameters, 2-5 ms a step against torch's 0.5-1.5 ms, which made a 50-epoch run
  about 4x slower (20 s against 5 s on the busy 2-core machine) and the suite about 90 s instead of
  about 50 s.  The float64 math still trains in every verdict: as the *twin*, the run that
  measures run-to-run variation (as ``torch.nn.BatchNorm1d`` does for batch norm) on the first
  seed, printed in its own column beside the reference's; and the ``optim`` quick suite holds
  torch's optimizers to the float64 reference step by step.  Under a non-torch convention the twin is the
  reference math in float32.
* :func:`run_optim_convergence` trains what is missing (reference and twin curves are cached per
  process) and judges with :func:`bnverify.convergence.verdict.compare`, the batch-norm suite's
  noise band, verdict and bug impact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bnverify import tables
from bnverify.convergence.protocol import Protocol
from bnverify.convergence.training import Curve, OptimizerFactory, torch_threads, train
from bnverify.convergence.verdict import ConvergenceVerdict, _ep, _pct, compare
from bnverify.families import optim as fam
from bnverify.mnist import Split
from bnverify.reference import optimizers as ref_opt

#: The target's hyperparameters per reference, in torch's names: the usual ones for the method on
#: this network (SGD with momentum 0.9 at the seed's lr 0.01; the adaptive methods at lr 1e-3).
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sgd": dict(lr=0.01, momentum=0.9),
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    "rmsprop": dict(lr=1e-3, alpha=0.99, eps=1e-8),
}

_TORCH_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
#: Elements per call of the reference function: the update is elementwise, so stepping a parameter in
#: chunks is the same arithmetic, and a chunk's temporaries stay in cache (Adam on the 235,200 weights
#: of the first layer: 7.5 ms a step in one call, 3.8 ms in chunks of 16,384).
CHUNK = 16384
_INIT_KEYS = {"sgd": (), "adam": ("amsgrad",), "adamw": ("amsgrad",), "rmsprop": ("momentum", "centered")}


class ReferenceOptimizer(torch.optim.Optimizer):
    """``bnverify.reference.optimizers.<reference>`` as a ``torch.optim.Optimizer``.

    Each step hands every parameter with a gradient, and its gradient, to the reference function
    as numpy arrays of ``dtype`` (float64: the reference; float32: the twin under a non-torch
    convention), in flat chunks of ``CHUNK`` elements (the update is elementwise), keeps the
    reference's state (a list of ``NamedTuple``, one a chunk) in ``self.state[p]["reference"]``,
    and writes the new value back in the parameter's own dtype.  ``hp`` are torch's hyperparameter
    names; ``convention`` (an ``OptimConvention``, default torch's) picks the reference's forms.
    ``param_groups[i]["lr"]`` is read at every step.
    """

    def __init__(self, params: Any, reference: str, hp: dict[str, Any], convention: Any = None,
                 dtype: Any = np.float64) -> None:
        if reference not in ref_opt.REFERENCES:
            raise ValueError(f"unknown reference {reference!r}; one of {sorted(ref_opt.REFERENCES)}")
        self.reference = reference
        self.convention = convention or fam.CONVENTIONS["torch"]
        self.dtype = np.dtype(dtype)
        init, self._fn = ref_opt.REFERENCES[reference]
        self._init = init
        super().__init__(params, dict(hp))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hp = {k: v for k, v in group.items() if k != "params"}
            kw = fam.reference_kwargs(self.reference, hp, self.convention)
            init_kw = {k: kw[k] for k in _INIT_KEYS[self.reference] if k in kw}
            for p in group["params"]:
                if p.grad is None:
                    continue
                x = p.detach().cpu().reshape(-1).numpy().astype(self.dtype)
                g = p.grad.detach().cpu().reshape(-1).numpy().astype(self.dtype)
                st = self.state[p]
                bounds = range(0, x.size, CHUNK)
                if "reference" not in st:
                    st["reference"] = [self._init(x[i:i + CHUNK], **init_kw) for i in bounds]
                out = np.empty_like(x)
                for j, i in enumerate(bounds):
                    out[i:i + CHUNK], st["reference"][j] = self._fn(x[i:i + CHUNK], g[i:i + CHUNK],
                                                                    st["reference"][j], **kw)
                p.copy_(torch.from_numpy(out).reshape(p.shape).to(device=p.device, dtype=p.dtype))
        return loss


def _is_torch(convention: Any) -> bool:
    return convention is None or convention.aspects == fam.CONVENTIONS["torch"].aspects


def reference_factory(reference: str, hp: dict[str, Any], convention: Any = None) -> OptimizerFactory:
    """``params -> ReferenceOptimizer`` in float64 (the reference math, as the optimizer that trains)."""
    return lambda params: ReferenceOptimizer(params, reference, hp, convention)


def baseline_factory(reference: str, hp: dict[str, Any], convention: Any = None) -> OptimizerFactory:
    """The verdict's reference curves: torch's own optimizer under the torch convention, else the float64 math."""
    if _is_torch(convention):
        cls = getattr(torch.optim, _TORCH_CLASSES[reference])
        return lambda params: cls(params, **fam.constructor_kwargs(reference, hp))
    return reference_factory(reference, hp, convention)


def twin_factory(reference: str, hp: dict[str, Any], convention: Any = None) -> OptimizerFactory:
    """A second correct optimizer: the float64 math under the torch convention, else the same math in float32."""
    if _is_torch(convention):
        return reference_factory(reference, hp, convention)
    return lambda params: ReferenceOptimizer(params, reference, hp, convention, dtype=np.float32)


def target_factory(target: Any, hp: dict[str, Any]) -> OptimizerFactory:
    """``params -> the target optimizer`` built with ``hp`` (torch's names, optional features only when used)."""
    ref = target.reference
    kw = fam.constructor_kwargs(ref, hp)
    shown = ", ".join(f"{k}={v!r}" for k, v in kw.items())

    def make(params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
        opt = target.obj(list(params), **kw)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"{target.name}(params, {shown}) returned {type(opt).__name__}, "
                            "not a torch.optim.Optimizer")
        return opt

    return make


#: Reference and twin curves, by (role, reference, hyperparameters, convention, training fields, data, seed, device).
_CACHE: dict[tuple, Curve] = {}


def cached_curve(role: str, reference: str, hp: dict[str, Any], convention: Any, split: Split, protocol: Protocol,
                 seed: int, device: str | torch.device = "cpu") -> Curve:
    """The curve of the baseline (``role="reference"``) or twin (``"twin"``) optimizer, trained once per process."""
    conv = convention or fam.CONVENTIONS["torch"]
    dev = torch.device(device)
    key = (role, reference, repr(sorted(hp.items())), conv.aspects, protocol.training_key(), split.fingerprint(),
           int(seed), str(dev))
    curve = _CACHE.get(key)
    if curve is None:
        make = baseline_factory if role == "reference" else twin_factory
        curve = train(None, split, protocol, seed, dev, label=role, optimizer=make(reference, hp, conv))
        _CACHE[key] = curve
    return copy.deepcopy(curve)


def _reword(text: str) -> str:
    return (text.replace("reference batch norm", "reference optimizer")
            .replace("unusual for a batch norm", "unusual for an optimizer with the reference's hyperparameters"))


def run_optim_convergence(
    target_opt: OptimizerFactory,
    reference: str,
    hp: dict[str, Any],
    split: Split,
    protocol: Protocol,
    device: str | torch.device = "cpu",
    *,
    convention: Any = None,
    target_name: str = "target",
    threads: int | None = 1,
) -> ConvergenceVerdict:
    """Train the target optimizer for every seed beside the (cached) reference and twin; judge with ``compare``.

    The twin runs the first seed only, as in the batch-norm suite.  ``threads``: see
    :func:`bnverify.convergence.verdict.run_convergence`.  The verdict's ``nobn`` is empty: there
    is no third network here.
    """
    with torch_threads(threads):
        refs = [cached_curve("reference", reference, hp, convention, split, protocol, s, device)
                for s in protocol.seeds]
        twins = [cached_curve("twin", reference, hp, convention, split, protocol, protocol.seeds[0], device)]
        tgt = [train(None, split, protocol, s, device, label="target", optimizer=target_opt) for s in protocol.seeds]
    v = compare(tgt, refs, (), protocol, twin_curves=twins, target_name=target_name)
    v.explanation = _reword(v.explanation)
    v.notes = [_reword(n) for n in v.notes]
    return v


def metrics(v: ConvergenceVerdict) -> dict[str, float]:
    """The verdict's metrics without the batch-norm suite's no-batch-norm entries."""
    return {k: x for k, x in v.metrics().items() if "nobn" not in k and not k.startswith("bn_speedup")}


def table(v: ConvergenceVerdict) -> str:
    """A console table: accuracy per epoch (every epoch up to 10, then every 5th and the last)."""
    e = v.epochs
    shown = [i for i in e if i <= 10 or i % 5 == 0 or i == e[-1]]
    twin = v.twin[0].test_acc if v.twin and v.twin[0].test_acc else []
    rows = []
    for i in shown:
        k = i - 1
        t = v.target_mean[k] if k < len(v.target_mean) else float("nan")
        band = f"[{100 * v.band_low[k]:.1f}, {100 * v.band_high[k]:.1f}]" if k < len(v.band_low) else ""
        r = v.reference_mean[k] if k < len(v.reference_mean) else float("nan")
        tw = twin[k] if k < len(twin) else float("nan")
        below = k < len(v.band_low) and t < v.band_low[k]
        rows.append([i, _pct(t), f"{_pct(r)} {band}".rstrip(), _pct(tw), "<" if below else ""])
    seed0 = v.twin[0].seed if v.twin else "-"
    lines = [tables.table(rows, ["epoch", "target", "reference (band)", f"twin (seed {seed0})", ""],
                          align=["right"] * 4 + ["left"])]
    ett = v.epochs_to_target
    goal = _pct(v.protocol.target_accuracy, 0)
    lines.append(f"epochs to {goal}: target {_ep(ett.get('target'))}, reference {_ep(ett.get('reference'))}"
                 f" (allowed <= {_ep(ett.get('allowed'))})")
    f = v.final
    if f and all(math.isfinite(f.get(k, math.nan)) for k in ("target", "reference", "band_low", "band_high")):
        lines.append(f"final accuracy (mean of the last {int(f['window'])} epochs): target {_pct(f['target'], 2)}, "
                     f"reference {_pct(f['reference'], 2)}, band [{100 * f['band_low']:.2f}, "
                     f"{100 * f['band_high']:.2f}]")
    lines.append(f"verdict: {v.outcome.upper()}: {v.explanation}")
    return "\n".join(lines)
