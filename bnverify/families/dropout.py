"""The dropout family (seed 001): the other layer whose training and test behaviour differ.

Kind ``torch-dropout`` (named with ``--kind torch-dropout``, never detected, so a plain
``nn.Module`` stays a batch norm): an ``nn.Module`` class with ``torch.nn.Dropout``'s constructor
``(p=0.5, inplace=False)`` that honours ``.train()``/``.eval()``.  ``p`` is the probability of
dropping an element.  Conventions (``--convention``), the reference being ``bnverify.reference.dropout``:

* ``inverted`` (default; torch, Keras, Flax): training ``x * mask / (1 - p)``, eval identity;
* ``direct`` (seed 001's "Rezim 1"): training ``x * mask``, eval ``(1 - p) x``.

The batch-norm convention names (torch, keras, flax, cs231n) are accepted and mean ``inverted``,
which is what those frameworks do.  The checks are ``suites/test_dropout.py``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

from bnverify.families import Family, Kind, Suite
from bnverify.target import Target, TargetError, TargetLoadError


class DropoutConvention(NamedTuple):
    """Where dropout scales: ``inverted`` (in training, by 1/(1-p)) or ``direct`` (at test time, by 1-p)."""

    name: str

    @property
    def scaling(self) -> str:
        return self.name


CONVENTIONS = {"inverted": DropoutConvention("inverted"), "direct": DropoutConvention("direct")}


@dataclass
class DropoutTarget(Target):
    """A loaded dropout target: builds guarded instances with a drop probability."""

    def instance(self, p: float) -> DropoutInstance:
        return DropoutInstance(self, p)


class DropoutInstance:
    """One constructed dropout module; every call guarded like a batch-norm instance's."""

    def __init__(self, target: DropoutTarget, p: float) -> None:
        import torch

        self.target = target
        self.p = p
        self.module = target.call("constructor", lambda: target.obj(p=p))
        if not isinstance(self.module, torch.nn.Module):
            raise TargetError(f"{target.name}(p={p}) returned {type(self.module).__name__}, not an nn.Module")

    def forward(self, x: Any, *, training: bool) -> Any:
        """The module's output for ``x``; a wrong type or shape, or a modified input, is a ``TargetError``."""
        import torch

        self.target.call("train()" if training else "eval()", lambda: self.module.train(training))
        xin = x.clone()
        out = self.target.call("forward", lambda: self.module(xin))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise TargetError(f"{self.target.name} forward returned {type(out).__name__} "
                              f"{tuple(getattr(out, 'shape', ()))} for input {tuple(x.shape)}")
        if not torch.equal(xin, x):
            raise TargetError(f"{self.target.name} modified its input in place with inplace=False")
        return out


def _validate(obj: Any, spec: str) -> None:
    import torch

    if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        raise TargetLoadError(f"{spec!r} is not an nn.Module subclass, so it cannot be of kind torch-dropout")


def make_target(obj: Any, kind: str, spec: str, name: str, convention: Any) -> DropoutTarget:
    return DropoutTarget(name=name, kind=kind, obj=obj, spec=spec, convention=convention)


def _preflight(target: Any, device: str) -> list[Any]:
    from bnverify import preflight

    return preflight.dropout(target, device)


FAMILY = Family(
    name="dropout",
    title="dropout",
    kinds=(Kind("torch-dropout", "an nn.Module class with torch.nn.Dropout's constructor (p, inplace)",
                None, _validate),),
    suites=(Suite("dropout", "quick", summary="drop rate, scaling, eval, independent masks"),),
    conventions=dict(CONVENTIONS),
    convention_aliases={"torch": "inverted", "keras": "inverted", "flax": "inverted", "cs231n": "inverted"},
    make_target=make_target,
    preflight=_preflight,
)
