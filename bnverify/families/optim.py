"""The optimizer family (seed 001): a ``torch.optim.Optimizer`` subclass held to a float64 reference.

Kind ``torch-optimizer``, detected by ``issubclass(obj, torch.optim.Optimizer)``: a class whose
constructor matches the torch optimizer it implements (``params, lr, ...``), with param groups,
``optimizer.state[p]`` and ``state_dict``.  ``--reference sgd|adam|adamw|rmsprop`` names the
reference (``bnverify.reference.optimizers``); it is inferred from the first torch optimizer class
name in the class's MRO, or the class's own name (``SGD``, ``Adam``, ``AdamW``, ``RMSprop``).

Conventions (``--convention``; each aspect is a keyword of the reference).  Every cell was read in
the framework's source:

================  ===========================  ===========================  ===========================
aspect            ``torch`` (default)          ``seed`` (seed 001)          ``keras`` / ``tf``
================  ===========================  ===========================  ===========================
momentum and lr   lr after the buffer:         lr inside the velocity:      lr inside: ``m = mu m - lr
                  ``b = mu b + (1-d) g;        ``v = a v - lr g;            g; p += m`` (SGD); RMSprop
                  p -= lr b``                  theta += v``                 ``m = mu m + lr g/den``
buffer start      the first gradient           zero                         zero
Nesterov          ``p -= lr (g + mu b)``       shifted parameters           ``p += mu m - lr g``
                                               ``p += a v - lr g``
RMSprop eps       outside: ``sqrt(u) + eps``   inside: ``sqrt(u + eps)``    inside: ``sqrt(u + eps)``
Adam              bias-corrected, eps outside  no bias correction, eps      bias-corrected through
                  ``sqrt(v/c2)``               inside ``sqrt(u + eps)``     ``lr sqrt(c2)/c1``, eps
                                                                            outside ``sqrt(v)`` ("eps hat")
weight decay      L2 in the gradient,          L2 of ``lambda ||W||^2``:    decoupled, times lr, before
                  ``g + lambda p``             ``g + 2 lambda p``           the update (every optimizer)
================  ===========================  ===========================  ===========================

Sources: torch ``torch/optim/sgd.py::_single_tensor_sgd`` (``buf = grad.detach().clone()`` on the
first step, ``buf.mul_(momentum).add_(grad, alpha=1 - dampening)``, ``grad.add(buf,
alpha=momentum)`` for Nesterov, ``grad.add(param, alpha=weight_decay)``), ``rmsprop.py`` (``avg =
square_avg.sqrt(); avg.add_(eps)``; ``buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf,
alpha=-lr)``), ``adam.py`` (``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)``,
``step_size = lr / bias_correction1``; AdamW ``param.mul_(1 - lr * weight_decay)``), all 2.13.
Keras 3 ``keras/src/optimizers/sgd.py::update_step`` (``m = m * momentum - gradient *
learning_rate``; Nesterov ``variable += m * momentum - gradient * learning_rate``),
``rmsprop.py::update_step`` (``denominator = velocity + epsilon`` or ``velocity -
average_grad^2 + epsilon``, ``increment = lr * gradient / sqrt(denominator)``, ``momentum =
momentum * self.momentum + increment``), ``adam.py::update_step`` (``alpha = lr * sqrt(1 -
beta_2_power) / (1 - beta_1_power)``, ``variable -= m * alpha / (sqrt(v) + epsilon)``),
``base_optimizer.py::_apply_weight_decay`` (``variable - variable * wd * lr``).  Seed 001: the
formulas quoted in ``bnverify.reference.optimizers``.  optax (``alias.rmsprop``:
``scale_by_rms(eps_in_sqrt=True)``) agrees with Keras on RMSprop's eps and with torch elsewhere.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from bnverify.families import Family, Kind, Suite
from bnverify.target import NotSupported, Target, TargetError, TargetLoadError

REFERENCES = ("sgd", "adam", "adamw", "rmsprop")
TORCH_NAMES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop"}


class OptimConvention(NamedTuple):
    """What an optimizer means by each knob (see the module docstring's table)."""

    name: str
    title: str
    momentum_lr: str = "after"
    buffer_init: str = "first_grad"
    rmsprop_eps_in_sqrt: bool = False
    adam_eps: str = "outside"
    adam_bias_correction: bool = True
    weight_decay: str = "l2"

    @property
    def aspects(self) -> tuple[Any, ...]:
        return tuple(self)[2:]


CONVENTIONS = {
    "torch": OptimConvention("torch", "torch"),
    "seed": OptimConvention("seed", "seed 001", "inside", "zero", True, "inside", False, "l2_2lambda"),
    "keras": OptimConvention("keras", "TensorFlow/Keras", "inside", "zero", True, "hat", True, "decoupled"),
    "tf": OptimConvention("tf", "TensorFlow/Keras", "inside", "zero", True, "hat", True, "decoupled"),
}

FLAGS = ("foreach", "fused", "maximize", "capturable", "differentiable")
OPTIONAL = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0, "amsgrad": False,
            "centered": False}
"""Constructor keywords passed only when they differ from torch's default (a minimal class may lack them)."""

CONFIGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sgd": [("plain", dict(lr=0.01)),
            ("momentum", dict(lr=0.01, momentum=0.9)),
            ("momentum with dampening", dict(lr=0.01, momentum=0.9, dampening=0.5)),
            ("Nesterov", dict(lr=0.01, momentum=0.9, nesterov=True))],
    "adam": [("default", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
             ("betas (0.8, 0.99)", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8)),
             ("amsgrad", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, amsgrad=True))],
    "adamw": [("default", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
              ("betas (0.8, 0.99)", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)),
              ("amsgrad", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=True))],
    "rmsprop": [("plain", dict(lr=0.01, alpha=0.99, eps=1e-8)),
                ("centred", dict(lr=0.01, alpha=0.9, eps=1e-8, centered=True)),
                ("momentum", dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.9)),
                ("centred with momentum", dict(lr=0.01, alpha=0.9, eps=1e-8, centered=True, momentum=0.5))],
}
"""Hyperparameters of the trajectory cases, per reference, in torch's names."""

WEIGHT_DECAY: dict[str, dict[str, Any]] = {
    "sgd": dict(lr=0.01, momentum=0.9, weight_decay=0.1),
    "adam": dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "adamw": dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
    "rmsprop": dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.1),
}
LARGE_EPS = {"adam": 0.3, "adamw": 0.3, "rmsprop": 0.3}
"""Eps comparable to ``sqrt(v)`` on the quadratic (gradients 0.1..100), where its placement shows."""


def base_hp(reference: str) -> dict[str, Any]:
    return dict(CONFIGS[reference][0][1])


def constructor_kwargs(reference: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The keywords handed to the user's constructor: optional features only when used."""
    keep_wd = reference == "adamw"
    return {k: v for k, v in hp.items()
            if not (k in OPTIONAL and v == OPTIONAL[k] and not (keep_wd and k == "weight_decay"))}


def reference_kwargs(reference: str, hp: dict[str, Any], conv: OptimConvention) -> dict[str, Any]:
    """Keywords of ``bnverify.reference.optimizers.<reference>`` for torch hyperparameters under ``conv``."""
    kw = {k: v for k, v in hp.items() if k not in FLAGS}
    if "betas" in kw:
        kw["beta1"], kw["beta2"] = kw.pop("betas")
    if reference == "sgd":
        kw.update(momentum_lr=conv.momentum_lr, buffer_init=conv.buffer_init, weight_decay_mode=conv.weight_decay)
    elif reference == "rmsprop":
        kw.update(eps_in_sqrt=conv.rmsprop_eps_in_sqrt, momentum_lr=conv.momentum_lr,
                  weight_decay_mode=conv.weight_decay)
    elif reference == "adam":
        kw.update(bias_correction=conv.adam_bias_correction, eps_placement=conv.adam_eps,
                  weight_decay_mode=conv.weight_decay)
    else:
        kw.update(bias_correction=conv.adam_bias_correction, eps_placement=conv.adam_eps)
    return kw


def state_formula(reference: str, key: str, conv: OptimConvention) -> str:
    if key in ("exp_avg", "m"):
        return "exp_avg = beta1 exp_avg + (1 - beta1) g"
    if key in ("exp_avg_sq",):
        return "exp_avg_sq = beta2 exp_avg_sq + (1 - beta2) g^2"
    if key == "max_exp_avg_sq":
        return "max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq), before bias correction"
    if key in ("square_avg", "cache"):
        return "square_avg = alpha square_avg + (1 - alpha) g^2"
    if key == "grad_avg":
        return "grad_avg = alpha grad_avg + (1 - alpha) g"
    if reference == "rmsprop":
        return ("momentum_buffer = mu momentum_buffer + g / denominator" if conv.momentum_lr == "after"
                else "momentum_buffer = mu momentum_buffer + lr g / denominator")
    if conv.momentum_lr == "after":
        return "momentum_buffer = mu momentum_buffer + (1 - dampening) g, starting at the first gradient"
    return "velocity = mu velocity - lr g, starting at zero"


def hypotheses(reference: str, conv: OptimConvention, hp: dict[str, Any]) -> list[Any]:
    """What a target that leaves the reference might be doing instead, with what to tell its author."""
    from bnverify.optim_check import Hypothesis

    hs: list[Hypothesis] = []

    def flip(label: str, hint: str, **over: Any) -> None:
        hs.append(Hypothesis(label, over, hint))

    momentum = float(hp.get("momentum", 0.0))
    wd = float(hp.get("weight_decay", 0.0))
    if reference in ("sgd", "rmsprop") and momentum:
        init = {"buffer_init": "zero" if conv.momentum_lr == "after" else "first_grad"} if reference == "sgd" else {}
        if conv.momentum_lr == "after":
            flip("the learning rate inside the velocity (v = mu v - lr g; theta += v)",
                 "seed 001's, cs231n's and Keras's momentum; it departs from torch's only when the learning "
                 "rate changes: pass --convention seed (or keras)", momentum_lr="inside", **init)
        else:
            flip("the learning rate applied after the buffer (b = mu b + g; theta -= lr b)",
                 "torch's momentum: pass --convention torch", momentum_lr="after", **init)
    if reference == "sgd" and momentum:
        if hp.get("dampening"):
            other = "zero" if conv.buffer_init == "first_grad" else "first_grad"
            flip(f"a momentum buffer starting at {'zero (the first step damped)' if other == 'zero' else 'the first gradient'}",
                 "torch starts the buffer at the first gradient, undamped" if other == "zero"
                 else "pass --convention torch", buffer_init=other)
            flip("dampening ignored", "the buffer must be mu b + (1 - dampening) g", dampening=0.0)
        else:
            flip("momentum as a moving average (b = mu b + (1 - mu) g)",
                 "torch's buffer sums gradients; (1 - mu) g is dampening=mu, not the default", dampening=momentum)
        if hp.get("nesterov"):
            flip("plain momentum (Nesterov ignored)", "with nesterov=True the step is g + mu b", nesterov=False)
    if reference == "rmsprop":
        s = not conv.rmsprop_eps_in_sqrt
        flip(f"eps {'inside' if s else 'outside'} the square root",
             "TensorFlow/Keras/optax RMSprop convention: pass --convention tf" if s
             else "torch's RMSprop convention: pass --convention torch", eps_in_sqrt=s)
        flip("centred RMSprop" if not hp.get("centered") else "uncentred RMSprop (centered ignored)",
             "check the centered flag", centered=not hp.get("centered"))
    if reference in ("adam", "adamw"):
        if conv.adam_bias_correction:
            flip("Adam without bias correction", "seed 001 writes Adam without it (pass --convention seed if eps is "
                 "also inside the root); torch and Kingma & Ba divide m by 1 - beta1^t and v by 1 - beta2^t",
                 bias_correction=False)
        else:
            flip("bias-corrected Adam", "pass --convention torch", bias_correction=True)
        for place, text, hint in (("outside", "eps outside the square root of the corrected v", "torch's Adam: "
                                   "pass --convention torch"),
                                  ("hat", "eps added to sqrt(v) before bias correction (eps hat)",
                                   "TensorFlow/Keras Adam convention: pass --convention tf"),
                                  ("inside", "eps inside the square root", "seed 001's Adam: pass --convention seed")):
            if place != conv.adam_eps:
                flip(text, hint, eps_placement=place)
        if hp.get("amsgrad"):
            flip("Adam without amsgrad (amsgrad ignored)", "amsgrad normalises by the running maximum of v",
                 amsgrad=False)
    if reference == "adam" and wd and conv.weight_decay != "decoupled":
        hs.append(Hypothesis("decoupled weight decay (AdamW)", {},
                             "Adam's weight_decay is L2 in the gradient; decoupled decay is AdamW: pass "
                             "--reference adamw", reference="adamw"))
    if reference == "adamw" and wd:
        hs.append(Hypothesis("weight decay added to the gradient (Adam's L2, not AdamW)",
                             {"weight_decay_mode": "l2"}, "AdamW decays the parameter: theta *= 1 - lr lambda, "
                             "outside the adaptive normalisation", reference="adam"))
    if reference in ("sgd", "rmsprop", "adam") and wd:
        for mode, text in (("l2", "weight decay lambda theta in the gradient"),
                           ("l2_2lambda", "weight decay 2 lambda theta (the gradient of lambda ||W||^2, seed 001)"),
                           ("decoupled", "decoupled weight decay theta *= 1 - lr lambda")):
            if mode != conv.weight_decay:
                conv_for = {"l2": "torch", "l2_2lambda": "seed", "decoupled": "keras"}[mode]
                flip(text, f"the {CONVENTIONS[conv_for].title} convention's weight decay: pass --convention "
                     f"{conv_for}", weight_decay_mode=mode)
    if wd:
        flip("weight decay ignored", "weight_decay must enter every step", weight_decay=0.0)
    hs.append(Hypothesis("the learning rate of construction (a cached lr)", {},
                         "the optimizer must read param_groups[i]['lr'] at every step (schedulers and lr "
                         "finders change it)", lr_frozen=True))
    seen = {conv.aspects}
    for alt in CONVENTIONS.values():
        if alt.aspects in seen:
            continue
        seen.add(alt.aspects)
        hs.append(Hypothesis(f"the {alt.title} convention", reference_kwargs(reference, {}, alt),
                             f"pass --convention {alt.name}"))
    return hs


# --------------------------------------------------------------------------- the target

@dataclass
class OptimTarget(Target):
    """A loaded optimizer class: constructs guarded instances over given parameters."""

    def build(self, params: list[Any], groups: list[dict[str, Any]], defaults: dict[str, Any],
              flags: dict[str, Any] | None = None) -> OptimInstance:
        return OptimInstance(self, params, groups, defaults, flags or {})


class OptimInstance:
    """One constructed optimizer; every call into it goes through ``Target.call``."""

    def __init__(self, target: OptimTarget, params: list[Any], groups: list[dict[str, Any]],
                 defaults: dict[str, Any], flags: dict[str, Any]) -> None:
        import torch

        self.target = target
        ref = target.reference or "?"
        if len(groups) == 1 and set(groups[0]) == {"params"}:
            arg: Any = [params[i] for i in groups[0]["params"]]
        else:
            arg = [dict({k: v for k, v in g.items() if k != "params"}, params=[params[i] for i in g["params"]])
                   for g in groups]
        kw = {**constructor_kwargs(ref, defaults), **flags}
        shown = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        try:
            self.opt = target.call(f"constructor {target.name}(params, {shown})", lambda: target.obj(arg, **kw))
        except TargetError as exc:
            if flags and _rejects_flag(exc, flags):
                raise NotSupported(f"{target.name} does not accept {', '.join(flags)}: {exc}") from None
            raise TargetError(f"{exc}\n  the {ref} reference's hyperparameters are torch.optim."
                              f"{_torch_name(ref)}'s; the constructor must accept them") from None
        if not isinstance(self.opt, torch.optim.Optimizer):
            raise TargetError(f"{target.name}(...) returned {type(self.opt).__name__}, not a torch.optim.Optimizer")

    def step(self) -> None:
        self.target.call("step()", lambda: self.opt.step())

    def set_lr(self, group: int, lr: float) -> None:
        def do() -> None:
            self.opt.param_groups[group]["lr"] = lr
        self.target.call("param_groups[...]['lr'] =", do)

    def state_of(self, p: Any) -> dict[str, Any]:
        return dict(self.target.call("state", lambda: self.opt.state.get(p, {})))

    def state_dict(self) -> Any:
        return self.target.call("state_dict()", lambda: self.opt.state_dict())

    def load_state_dict(self, sd: Any) -> None:
        self.target.call("load_state_dict()", lambda: self.opt.load_state_dict(sd))


def _rejects_flag(exc: BaseException, flags: dict[str, Any]) -> bool:
    text = str(exc)
    return any(f in text for f in flags) or "not supported" in text.lower() or "TypeError" in text


def _torch_name(ref: str) -> str:
    return {v: k for k, v in TORCH_NAMES.items()}.get(ref, ref)


def _is_optimizer_class(obj: Any) -> bool:
    import torch

    return inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)


def _validate(obj: Any, spec: str) -> None:
    if not _is_optimizer_class(obj):
        raise TargetLoadError(f"{spec!r} is not a torch.optim.Optimizer subclass, so it cannot be of kind "
                              "torch-optimizer")


def infer_reference(obj: Any, kind: str) -> str | None:
    """The first torch optimizer name in the class's MRO (its own name first): SGD, Adam, AdamW, RMSprop."""
    for cls in getattr(obj, "__mro__", ()):
        if cls.__name__ in TORCH_NAMES:
            return TORCH_NAMES[cls.__name__]
    return None


def make_target(obj: Any, kind: str, spec: str, name: str, convention: Any) -> OptimTarget:
    return OptimTarget(name=name, kind=kind, obj=obj, spec=spec, convention=convention)


# --------------------------------------------------------------------------- fingerprint

def _probe(target: OptimTarget, reference: str, hp: dict[str, Any], candidates: list[tuple[str, dict[str, Any], str]],
           *, lr_change: bool = False, steps: int = 6) -> list[str]:
    """Which candidate forms the target matches at every step of a short quadratic run."""
    import torch

    from bnverify.families import optim as this
    from bnverify.optim_check import PROBLEMS, Hypothesis, Lockstep, tensors

    prob = PROBLEMS["quadratic"](0)
    params = tensors(prob.init(0), torch.float64)
    hyps = [Hypothesis(label, over, "", reference=ref or None) for label, over, ref in candidates]
    try:
        ls = Lockstep(this, target, reference, CONVENTIONS["torch"], params,
                      [{"params": list(range(len(params)))}], hp, list(prob.names), "probe", hyps,
                      raise_on_mismatch=False)
        for t in range(steps):
            if lr_change and t == steps // 2:
                ls.set_lr(0, hp["lr"] * 0.3)
            ls.step(prob.grads(params))
    except (TargetError, NotSupported) as exc:
        return [f"error: {str(exc).splitlines()[0]}"]
    return ls.matching()


T, S, K = frozenset({"torch"}), frozenset({"seed"}), frozenset({"keras"})
ALL = T | S | K


def probe_conventions(target: OptimTarget) -> dict[str, str]:
    """Each aspect of the target's reference, measured by running it beside the candidate forms.

    Each candidate names the conventions it belongs to; the matching convention is the one every
    measured aspect allows.
    """
    ref = target.reference or "sgd"
    out: dict[str, str] = {}
    allowed = set(ALL)

    def pick(aspect: str, hp: dict[str, Any], cands: list[tuple[str, dict[str, Any], str, frozenset[str]]],
             lr_change: bool = False) -> None:
        found = _probe(target, ref, hp, [(c[0], c[1], c[2]) for c in cands], lr_change=lr_change)
        out[aspect] = " / ".join(found) if found else "none of the known forms"
        tags: set[str] = set()
        for c in cands:
            if c[0] in found:
                tags |= c[3]
        allowed.intersection_update(tags)

    hp: dict[str, Any]
    if ref == "sgd":
        hp = dict(lr=0.01, momentum=0.9)
        pick("momentum form", hp, [
            ("lr after the buffer (torch)", dict(momentum_lr="after"), "", T),
            ("lr inside the velocity (seed 001, Keras)", dict(momentum_lr="inside", buffer_init="zero"), "", S | K)],
            lr_change=True)
        pick("momentum buffer start", dict(hp, dampening=0.5), [
            ("first gradient (torch)", dict(buffer_init="first_grad"), "", T),
            ("zero, lr after the buffer", dict(buffer_init="zero"), "", frozenset()),
            ("zero, lr inside the velocity (seed 001, Keras)", dict(buffer_init="zero", momentum_lr="inside"), "",
             S | K)])
        pick("Nesterov form", dict(hp, nesterov=True), [
            ("g + mu b (torch)", dict(momentum_lr="after"), "", T),
            ("shifted parameters p += mu v - lr g (seed 001, Keras)", dict(momentum_lr="inside", buffer_init="zero"),
             "", S | K)], lr_change=True)
        pick("weight decay", dict(hp, weight_decay=0.1), [
            ("L2 in the gradient, lambda p (torch)", dict(weight_decay_mode="l2"), "", T),
            ("L2 of lambda ||W||^2, 2 lambda p (seed 001)", dict(weight_decay_mode="l2_2lambda"), "", S),
            ("decoupled, p *= 1 - lr lambda (Keras)", dict(weight_decay_mode="decoupled"), "", K)])
    elif ref == "rmsprop":
        hp = dict(lr=0.01, alpha=0.99, eps=0.3)
        pick("eps placement", hp, [
            ("outside sqrt (torch)", dict(eps_in_sqrt=False), "", T),
            ("inside sqrt (seed 001, TensorFlow/Keras, optax)", dict(eps_in_sqrt=True), "", S | K)])
        pick("centred", dict(hp, centered=True), [
            ("u - g_bar^2, eps outside (torch)", dict(eps_in_sqrt=False), "", T),
            ("u - g_bar^2, eps inside (Keras)", dict(eps_in_sqrt=True), "", S | K)])
        pick("momentum form", dict(hp, momentum=0.9), [
            ("lr after the buffer (torch)", dict(momentum_lr="after"), "", T),
            ("lr inside the buffer (Keras)", dict(momentum_lr="inside"), "", S | K)], lr_change=True)
        pick("weight decay", dict(hp, weight_decay=0.1), [
            ("L2 in the gradient (torch)", dict(weight_decay_mode="l2"), "", T),
            ("2 lambda p (seed 001)", dict(weight_decay_mode="l2_2lambda"), "", S),
            ("decoupled (Keras)", dict(weight_decay_mode="decoupled"), "", K)])
    else:
        hp = {"lr": 0.01, "betas": (0.9, 0.999), "eps": 0.3, "weight_decay": 0.1 if ref == "adamw" else 0.0}
        pick("bias correction and eps", hp, [
            ("bias-corrected, eps outside sqrt(v_hat) (torch, Kingma & Ba)", dict(eps_placement="outside"), "", T),
            ("bias-corrected through the step size, eps hat (TensorFlow/Keras)", dict(eps_placement="hat"), "", K),
            ("bias-corrected, eps inside the root", dict(eps_placement="inside"), "", frozenset()),
            ("no bias correction, eps inside the root (seed 001)", dict(eps_placement="inside", bias_correction=False),
             "", S),
            ("no bias correction, eps outside", dict(eps_placement="outside", bias_correction=False), "",
             frozenset())])
        adamw = ref == "adamw"
        pick("weight decay", dict(hp, eps=1e-8, weight_decay=0.1), [
            ("L2 in the gradient (torch Adam)", dict(weight_decay_mode="l2"), "adam", frozenset() if adamw else T),
            ("L2 of lambda ||W||^2, 2 lambda p (seed 001)", dict(weight_decay_mode="l2_2lambda"), "adam",
             frozenset() if adamw else S),
            ("decoupled, p *= 1 - lr lambda (AdamW, Keras)", dict(weight_decay_mode="decoupled"), "adamw",
             ALL if adamw else K)])
        found = _probe(target, ref, dict(hp, eps=1e-8, amsgrad=True), [("max of v before bias correction", {}, "")])
        out["amsgrad"] = " / ".join(found) if found else "not the running maximum of v (or rejected)"
    names = [n for n in ("torch", "seed", "keras") if n in allowed]
    out["matching convention"] = ", ".join(names) if names else "none (mixed or unknown forms)"
    return out


def fingerprint(target: OptimTarget, device: str = "cpu", as_json: bool = False) -> str:
    """``bnverify fingerprint`` for an optimizer: its conventions, measured by probing."""
    res = {"target": target.spec, "reference": target.reference, **probe_conventions(target)}
    if as_json:
        return json.dumps(res, indent=2)
    from bnverify.tables import key_values

    return key_values(res.items())


FAMILY = Family(
    name="optim",
    title="optimizer",
    kinds=(Kind("torch-optimizer", "a torch.optim.Optimizer subclass with the constructor of the torch optimizer "
                "it implements (params, lr, ...)", _is_optimizer_class, _validate),),
    suites=(Suite("optim", "quick", summary="k-step trajectories of parameters and state vs the float64 reference, "
                  "param groups, weight decay, eps, lr changes, missing gradients, state_dict, float32, flags"),
            Suite("optim-convergence", "full", summary="trains seed 002's network beside the reference optimizer "
                  "(same weights, data order, seeds), judged by the reference's noise band; states the bug impact"),),
    conventions=dict(CONVENTIONS),
    make_target=make_target,
    references=REFERENCES,
    infer_reference_from=infer_reference,
    fingerprint=fingerprint,
)
