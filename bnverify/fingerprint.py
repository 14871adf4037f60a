"""``bnverify fingerprint TARGET``: which conventions a batch norm follows, measured by probing it.

Nothing is read from names or attributes: every entry comes from running
the target on inputs built so that the answer shows in its numbers.

* momentum meaning: an instance with ``momentum=0.2``, running mean 0, one
  training step on a batch with per-channel mean ``mu``: the running mean is
  ``w mu``, with ``w = 0.2`` (weight of the new batch, torch) or ``0.8``
  (decay of the old value, Keras/Flax/cs231n/ONNX).
* default momentum: the same step on ``cls(num_features)`` (torch-module), or
  with ``momentum`` left out of ``bn_param`` (numpy-cs231n).
* running-variance estimator: momentum giving the new batch weight 1, a batch
  of ``m = 4`` values per channel: the running variance is ``4/3 sigma_B^2``
  (unbiased) or ``sigma_B^2`` (biased).
* eps default and placement: eval with ``running_var`` in ``{0, eps, 1}`` and
  ``x = 1``: ``1/sqrt(v + eps)`` (inside the square root) or ``1/(sqrt(v) + eps)``;
  the default is ``1 / y^2`` at ``v = 0`` when eps is inside, ``1 / y`` when outside (a second eval
  at ``v = 1/y^2`` tells which).  A quantity the probes cannot measure for a target is ``null`` in the
  JSON, with the reason in ``not_measurable``, and "not measurable: <why>" in the table.
* EMA zero-debiasing (Haiku's ``ExponentialMovingAverage``): after the first
  step the running mean equals the batch mean although ``w < 1``.
* one value per channel, eval updates, eval uses running statistics,
  ``momentum=None``, ranks, dtypes, the statistics' dtype for float16.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bnverify import tolerances as tols
from bnverify.adapter import BNConfig, BNInstance, BNTarget, NotSupported, TargetError
from bnverify.compare import to_f64
from bnverify.conventions import CONVENTIONS
from bnverify.instances import default_instance, instance
from bnverify.reference import batchnorm as oracle


def _probe_rank(target: BNTarget, device: str) -> int:
    ranks = target.supported_ranks(device)
    return 2 if (not ranks or 2 in ranks) else ranks[0]


def _x(rank: int, c: int, means: np.ndarray, n: int = 4) -> np.ndarray:
    """``n`` samples per channel (rank 2) or ``n`` values spread over N x spatial: mean ``means``, values +-1, +-2."""
    base = np.array([-2.0, -1.0, 1.0, 2.0])[:n] if n <= 4 else np.linspace(-2, 2, n)
    x = base[:, None] + means[None, :]
    return x.reshape((n, c) + (1,) * (rank - 2))


@dataclass
class Defaults:
    eps: float | None
    weight_new: float | None  # weight of the new batch in the first update
    note: str = ""
    eps_note: str = ""
    """Why ``eps`` could not be measured, when it is None."""
    eps_placement: str = ""
    """``"inside"`` or ``"outside"`` the square root, as the eps probe found it."""


class NotMeasurable(Exception):
    """A probe that ran but whose numbers cannot give the quantity for this target; the message says why."""


def _first_weight(inst: BNInstance, rank: int, c: int) -> float:
    means = np.linspace(1.0, 2.0, c)
    inst.set_running(torch.zeros(c), torch.ones(c))
    inst.forward(torch.tensor(_x(rank, c, means), dtype=torch.float32), training=True)
    run = inst.get_running()
    if run is None:
        raise TargetError("no running statistics")
    w = float(np.median(to_f64(run[0]) / means))
    if not math.isfinite(w):
        raise NotMeasurable(f"the running mean after one step is {to_f64(run[0]).tolist()}, not finite")
    return w


def _eval_at_zero_mean(inst: BNInstance, rank: int, c: int, running_var: np.ndarray) -> np.ndarray:
    """Per-channel eval output for ``x = 1``, running mean 0, gamma 1, beta 0: ``1 / denominator``."""
    inst.set_params(torch.ones(c), torch.zeros(c)) if inst.get_params()[0] is not None else None
    inst.set_running(torch.zeros(c), torch.tensor(running_var, dtype=torch.float32))
    y = to_f64(inst.forward(torch.ones((2, c) + (1,) * (rank - 2)), training=False))
    return np.asarray(y.reshape(2, c, -1)[0, :, 0], dtype=np.float64)


def _eps_from_eval(inst: BNInstance, rank: int, c: int) -> tuple[float, str]:
    """The default eps and where it sits, from two eval calls (placement-aware, so never ``eps^2``).

    At ``running_var = 0`` the output is ``y0 = 1/sqrt(eps)`` (inside the square root) or ``1/eps``
    (outside).  A second call at ``running_var = 1/y0^2`` tells them apart: inside gives ``y0/sqrt(2)``,
    outside (where ``1/y0^2 = eps^2``) gives ``y0/2``.
    """
    y0 = float(np.median(_eval_at_zero_mean(inst, rank, c, np.zeros(c))))
    if not math.isfinite(y0) or y0 <= 0:
        raise NotMeasurable(f"eval with running_var=0 and x=1 gave {y0:.4g}; a finite positive output "
                            "1/sqrt(eps) was expected (is eps used in the eval path?)")
    v = 1.0 / (y0 * y0)
    if not v > 0 or not math.isfinite(v) or v > float(np.finfo(np.float32).max) or v < float(
            np.finfo(np.float32).tiny):
        raise NotMeasurable(f"eval with running_var=0 and x=1 gave {y0:.4g}; 1/y^2 = {v:.3g} is outside the "
                            "float32 range the probe sets running_var with")
    y1 = float(np.median(_eval_at_zero_mean(inst, rank, c, np.full(c, v))))
    r = y1 / y0
    if abs(r - 2**-0.5) <= tols.PROBE_EPS_PLACEMENT_RTOL * 2**-0.5:
        return v, "inside"
    if abs(r - 0.5) <= tols.PROBE_EPS_PLACEMENT_RTOL * 0.5:
        return 1.0 / y0, "outside"
    raise NotMeasurable(f"eval at running_var 0 and {v:.3g} gave {y0:.4g} and {y1:.4g} (ratio {r:.4g}); "
                        "sqrt(var + eps) gives 0.7071 and sqrt(var) + eps 0.5, so neither placement fits")


def probe_defaults(target: BNTarget, device: str = "cpu") -> Defaults:
    """The default eps and the new-batch weight of the default momentum, measured (each on its own)."""
    rank = _probe_rank(target, device)
    c = 3
    w: float | None = None
    eps: float | None = None
    note = eps_note = placement = ""
    try:
        inst = default_instance(target, device, rank, c)
    except (TargetError, NotSupported) as exc:
        return Defaults(None, None, str(exc) or type(exc).__name__)
    try:
        w = _first_weight(inst, rank, c)
    except (TargetError, NotSupported, NotMeasurable) as exc:
        note = str(exc) or type(exc).__name__
    try:
        inst = default_instance(target, device, rank, c)
        eps, placement = _eps_from_eval(inst, rank, c)
    except (TargetError, NotSupported, NotMeasurable) as exc:
        eps_note = str(exc) or type(exc).__name__
    return Defaults(eps, w, note, eps_note, placement)


# --------------------------------------------------------------------------- the fingerprint

@dataclass
class Fingerprint:
    target: str
    kind: str
    entries: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    not_measurable: dict[str, str] = field(default_factory=dict)
    """Entries the probes could not measure for this target (``None`` in ``entries``), with the reason."""

    def set(self, key: str, value: Any, evidence: str = "") -> None:
        self.entries[key] = value
        self.not_measurable.pop(key, None)
        if evidence:
            self.evidence[key] = evidence

    def unmeasurable(self, key: str, why: str) -> None:
        """``key`` could not be measured: ``null`` in the JSON, "not measurable: WHY" in the table."""
        self.entries[key] = None
        self.not_measurable[key] = why.strip() or "the probe gave no usable value"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    def table(self) -> str:
        from bnverify.tables import key_values

        rows = [(k.replace("_", " "), f"not measurable: {self.not_measurable[k]}" if k in self.not_measurable
                 else _fmt(v)) for k, v in self.entries.items()]
        return f"bnverify fingerprint: {self.target} (kind {self.kind})\n\n" + key_values(rows, indent="  ")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "none"
    return str(v)


def _new(target: BNTarget, device: str, rank: int, c: int = 3, **kw: Any) -> BNInstance:
    """An instance for one probe; ``NotSupported`` is passed on, and ``_safe`` records it."""
    return instance(target, BNConfig(num_features=c, rank=rank, device=device, **kw), skip_unsupported=False)


def _safe(fp: Fingerprint, key: str, fn: Any) -> None:
    """Run one probe; a probe the target cannot answer is recorded as such, never guessed."""
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a bad value is reported, not warned
            fn()
    except NotSupported as exc:
        fp.unmeasurable(key, f"not supported by this target ({str(exc) or type(exc).__name__})")
    except NotMeasurable as exc:
        fp.unmeasurable(key, str(exc))
    except TargetError as exc:
        fp.unmeasurable(key, f"the probe's call failed: {str(exc)[:160] or type(exc).__name__}")


def fingerprint(target: BNTarget, device: str = "cpu") -> Fingerprint:
    """Probe ``target`` and return what it does (see the module docstring for each probe)."""
    fp = Fingerprint(target.spec or target.name, target.kind)
    rank = _probe_rank(target, device)
    c = 3
    state: dict[str, Any] = {}

    def meaning() -> None:
        inst = _new(target, device, rank, c, momentum=0.2)
        w = _first_weight(inst, rank, c)
        state["w02"] = w
        if abs(w - 0.2) <= tols.MOMENTUM_WEIGHT_ATOL:
            state["kind"] = "update_fraction"
            fp.set("momentum_meaning", "weight of the new batch: r = (1-m) r + m b (torch)",
                   "momentum=0.2 gave the new batch weight 0.2")
        elif abs(w - 0.8) <= tols.MOMENTUM_WEIGHT_ATOL:
            state["kind"] = "keep_fraction"
            fp.set("momentum_meaning", "decay of the old value: r = m r + (1-m) b (Keras, Flax, cs231n, ONNX)",
                   "momentum=0.2 gave the new batch weight 0.8")
        elif abs(w - 1.0) <= tols.MOMENTUM_WEIGHT_ATOL:
            fp.set("momentum_meaning", "first update equals the batch statistic (zero-debiased EMA?)",
                   "momentum=0.2 gave the new batch weight 1 on the first step")
        else:
            fp.set("momentum_meaning", f"other: momentum=0.2 gave the new batch weight {w:.4g}")

    _safe(fp, "momentum_meaning", meaning)

    def default_momentum() -> None:
        d = probe_defaults(target, device)
        if d.weight_new is None:
            raise NotMeasurable(d.note)
        k = state.get("kind")
        m = d.weight_new if k == "update_fraction" else 1 - d.weight_new if k == "keep_fraction" else d.weight_new
        fp.set("momentum_default", round(m, 6), f"first step of {target.name}(C) gave the new batch weight {d.weight_new:.4g}")
        state["default_momentum"] = m
        if d.eps is not None:
            state["default_eps"] = d.eps

    _safe(fp, "momentum_default", default_momentum)

    def momentum_none() -> None:
        inst = _new(target, device, rank, c, momentum=None)
        xs = [_x(rank, c, np.full(c, v)) for v in (1.0, 3.0, 8.0)]
        got = []
        for x in xs:
            inst.forward(torch.tensor(x, dtype=torch.float32), training=True)
            run = inst.get_running()
            assert run is not None
            got.append(float(to_f64(run[0])[0]))
        if np.allclose(got, [1.0, 2.0, 4.0], rtol=tols.PROBE_MOMENTUM_NONE_RTOL, atol=tols.PROBE_ALLCLOSE_ATOL):
            fp.set("momentum_none", "cumulative average (population statistics)", "means 1, 3, 8 gave 1, 2, 4")
        else:
            fp.set("momentum_none", f"not a cumulative average: means 1, 3, 8 gave {[round(g, 4) for g in got]}")

    _safe(fp, "momentum_none", momentum_none)

    def estimator() -> None:
        k = state.get("kind", target.convention.momentum_kind)
        inst = _new(target, device, rank, c, momentum=1.0 if k == "update_fraction" else 0.0)
        x = _x(rank, c, np.linspace(-1, 1, c))
        inst.forward(torch.tensor(x, dtype=torch.float32), training=True)
        run = inst.get_running()
        assert run is not None
        _, var, m = oracle.batch_stats(x)
        ratio = float(np.median(to_f64(run[1]) / var))
        if not math.isfinite(ratio):
            raise NotMeasurable(f"the running variance after one step is {to_f64(run[1]).tolist()}, not finite")
        if abs(ratio - m / (m - 1)) <= tols.PROBE_ESTIMATOR_ATOL:
            state["unbiased"] = True
            fp.set("running_var_estimator", "unbiased: m/(m-1) sigma_B^2 (torch, seed 000)",
                   f"m={m}: stored {ratio:.5g} x the batch variance")
        elif abs(ratio - 1) <= tols.PROBE_ESTIMATOR_ATOL:
            state["unbiased"] = False
            fp.set("running_var_estimator", "biased: sigma_B^2 (Keras, Flax, cs231n, ONNX)",
                   f"m={m}: stored {ratio:.5g} x the batch variance")
        else:
            fp.set("running_var_estimator", f"other: stored {ratio:.5g} x the batch variance (m={m})")

    _safe(fp, "running_var_estimator", estimator)

    def eps_default() -> None:
        d = probe_defaults(target, device)
        if d.eps is None:
            raise NotMeasurable(d.eps_note or d.note)
        fp.set("eps_default", float(f"{d.eps:.4g}"),
               "eval with running_var=0 and x=1 gave " + ("1/sqrt(eps)" if d.eps_placement == "inside" else
                                                          "1/eps (eps outside the square root)"))
        state["default_eps"] = d.eps

    _safe(fp, "eps_default", eps_default)

    def eps_placement() -> None:
        eps = 0.01
        inst = _new(target, device, rank, c, eps=eps)
        inst.set_running(torch.zeros(c), torch.tensor([0.0, eps, 1.0]))
        y = to_f64(inst.forward(torch.ones((2, c) + (1,) * (rank - 2)), training=False)).reshape(2, c, -1)[0, :, 0]
        v = np.array([0.0, eps, 1.0])
        hyps = {"inside the square root: sqrt(var + eps)": 1 / np.sqrt(v + eps),
                "outside the square root: sqrt(var) + eps": 1 / (np.sqrt(v) + eps),
                "not used: sqrt(var)": 1 / np.sqrt(np.maximum(v, 1e-300))}
        for name, h in hyps.items():
            if np.allclose(y, h, rtol=tols.PROBE_EPS_PLACEMENT_RTOL, atol=tols.PROBE_ALLCLOSE_ATOL):
                fp.set("eps_placement", name, f"eps=0.01, running_var 0, 0.01, 1 gave {np.round(y, 4).tolist()}")
                return
        fp.set("eps_placement", f"other: running_var 0, 0.01, 1 with eps=0.01 gave {np.round(y, 4).tolist()}")

    _safe(fp, "eps_placement", eps_placement)

    def one_value() -> None:
        inst = _new(target, device, rank, c)
        run0 = inst.get_running()
        before = None if run0 is None else (to_f64(run0[0]), to_f64(run0[1]))
        try:
            out = inst.forward(torch.ones((1, c) + (1,) * (rank - 2)), training=True)
            finite = bool(torch.isfinite(out).all())
            what = f"no error; output {'finite' if finite else 'NaN/inf'}"
        except TargetError as exc:
            if target.watchdog.hung:
                raise
            what = "raises " + str(exc).split(" raised ", 1)[-1].split(" (at ", 1)[0][:120]
        run = inst.get_running()
        if run is not None and before is not None:
            a, b = to_f64(run[0]), to_f64(run[1])
            if np.array_equal(a, before[0]) and np.array_equal(b, before[1]):
                what += "; running statistics unchanged"
            elif np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
                what += "; running statistics updated"
            else:
                what += "; running statistics become NaN/inf"
        fp.set("one_value_per_channel", what)

    _safe(fp, "one_value_per_channel", one_value)

    def eval_behaviour() -> None:
        inst = _new(target, device, rank, c)
        rm, rv = torch.tensor([5.0, -5.0, 0.0]), torch.tensor([4.0, 9.0, 0.25])
        inst.set_running(rm, rv)
        x = _x(rank, c, np.zeros(c))
        y = to_f64(inst.forward(torch.tensor(x, dtype=torch.float32), training=False))
        run = inst.get_running()
        assert run is not None
        updates = not (np.array_equal(to_f64(run[0]), rm.double().numpy())
                       and np.array_equal(to_f64(run[1]), rv.double().numpy()))
        fp.set("eval_updates_statistics", "yes" if updates else "no")
        uses = oracle.forward_eval(x, None, None, rm.double().numpy(), rv.double().numpy(), 1e-5)
        batch, _ = oracle.forward_train(x, None, None, 1e-5)
        rtol, atol = tols.PROBE_EVAL_RTOL, tols.PROBE_EVAL_ATOL
        fp.set("eval_uses_running_statistics",
               "yes" if np.allclose(y, uses, rtol=rtol, atol=atol) else
               "no: eval normalises with the batch's statistics" if np.allclose(y, batch, rtol=rtol, atol=atol)
               else "no: eval output matches neither running nor batch statistics")

    _safe(fp, "eval_updates_statistics", eval_behaviour)

    def debias() -> None:
        k = state.get("kind", target.convention.momentum_kind)
        inst = _new(target, device, rank, c, momentum=0.1 if k == "update_fraction" else 0.9)
        inst.set_running(torch.zeros(c), torch.ones(c))
        means = np.full(c, 2.0)
        inst.forward(torch.tensor(_x(rank, c, means), dtype=torch.float32), training=True)
        run = inst.get_running()
        assert run is not None
        first = float(to_f64(run[0])[0])
        fp.set("ema_zero_debiasing", "yes: the first average equals the batch statistic (Haiku)"
               if abs(first - 2.0) <= tols.PROBE_DEBIAS_ATOL else "no: r = (1-w) r0 + w b from the initial 0/1",
               f"new batch weight 0.1, batch mean 2 gave running mean {first:.4g}")

    _safe(fp, "ema_zero_debiasing", debias)

    fp.set("supported_ranks", target.supported_ranks(device))
    dts = []
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        if target.probe_dtype(dt, rank, device) is None:
            dts.append(str(dt).replace("torch.", ""))
    fp.set("supported_dtypes", dts)

    def half() -> None:
        inst = _new(target, device, rank, c, dtype=torch.float16)
        out = inst.forward(torch.tensor(_x(rank, c, np.ones(c)), dtype=torch.float16), training=True)
        run = inst.get_running()
        sd = "none" if run is None else str(run[0].dtype).replace("torch.", "")
        fp.set("half_input_statistics_dtype", f"running statistics {sd}, output {str(out.dtype).replace('torch.', '')}")

    _safe(fp, "half_input_statistics_dtype", half)

    fp.set("matches_convention", _matching(state, fp.not_measurable.get("eps_default", "")))
    from bnverify.conventions import flags_for

    measured = {"momentum_kind": state["kind"]} if "kind" in state else {}
    measured.update({k: state[k] for k in ("unbiased", "default_eps", "default_momentum") if k in state})
    flags = " ".join(flags_for(measured, target.family.default_convention(target.kind)))
    fp.set("check_flags", flags, f"to check this target as it is: bnverify check {target.spec or target.name} {flags}"
           + ("" if "default_eps" in state else " (defaults not measured, so not flagged)"))
    return fp


def _matching(state: dict[str, Any], eps_why: str = "") -> str:
    """Conventions of SPEC section 4 that agree with every measured aspect."""
    names = []
    for conv in CONVENTIONS.values():
        if "kind" in state and state["kind"] != conv.momentum_kind:
            continue
        if "unbiased" in state and state["unbiased"] != conv.unbiased_running_var:
            continue
        if "default_eps" in state and abs(state["default_eps"] - conv.default_eps) > tols.DEFAULT_EPS_RTOL * conv.default_eps:
            continue
        if "default_momentum" in state and abs(state["default_momentum"] - conv.default_momentum) > tols.DEFAULT_MOMENTUM_ATOL:
            continue
        names.append(conv.name)
    if not names:
        return "none of torch, keras, flax, cs231n"
    if "default_eps" in state:
        return ", ".join(names)
    why = "not measurable for this kind" if not eps_why or eps_why.startswith("kind ") else "not measured"
    return ", ".join(names) + f" (default eps {why})"


def run(spec: str, *, kind: str | None = None, device: str = "cpu", as_json: bool = False) -> str:
    """Load, probe, format: what ``bnverify fingerprint`` prints."""
    from bnverify.loading import load_target

    from bnverify.adapter import BNTarget
    from bnverify.target import TargetLoadError

    target = load_target(spec, kind=kind)
    if not isinstance(target, BNTarget):
        raise TargetLoadError(f"{spec!r} is a {target.family.title} target; this fingerprint is batch norm's")
    fp = fingerprint(target, device)
    return fp.to_json() if as_json else fp.table()


__all__ = ["Defaults", "Fingerprint", "fingerprint", "probe_defaults", "run"]
