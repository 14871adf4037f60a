"""The batch-norm family: three kinds, four conventions, the equivalence and training suites.

| kind | what the user hands over | detected by |
|---|---|---|
| ``torch-module`` | an ``nn.Module`` class with ``torch.nn.BatchNorm2d``'s constructor | a ``torch.nn.Module`` subclass |
| ``torch-functional`` | a callable with ``torch.nn.functional.batch_norm``'s signature | its parameter names |
| ``numpy-cs231n`` | a module with ``batchnorm_forward`` (``batchnorm_backward``, spatial optional) | ``batchnorm_forward`` |

Conventions are ``bnverify.conventions.CONVENTIONS`` (torch, keras, flax, cs231n), each cell
cited there; the default is ``torch`` (``cs231n`` for the numpy-cs231n kind).
"""

from __future__ import annotations

import inspect
from typing import Any

from bnverify.conventions import CONVENTIONS
from bnverify.families import Family, Kind, Suite
from bnverify.target import TargetLoadError


def _is_module_class(obj: Any) -> bool:
    import torch

    return inspect.isclass(obj) and issubclass(obj, torch.nn.Module)


def _is_cs231n(obj: Any) -> bool:
    """A module (or object) exposing ``batchnorm_forward``; ``batchnorm_backward`` is optional (SPEC section 2:
    a module without it gets its forward checked)."""
    return not inspect.isclass(obj) and callable(getattr(obj, "batchnorm_forward", None)) or (
        inspect.isclass(obj) and hasattr(obj, "batchnorm_forward") and not _is_module_class(obj))


def _is_functional(obj: Any) -> bool:
    from bnverify.adapter import functional_signature_matches

    return callable(obj) and not inspect.isclass(obj) and functional_signature_matches(obj)


def _validate_module(obj: Any, spec: str) -> None:
    if not _is_module_class(obj):
        raise TargetLoadError(f"{spec!r} is not an nn.Module subclass, so it cannot be of kind torch-module")


def _validate_functional(obj: Any, spec: str) -> None:
    if not callable(obj):
        raise TargetLoadError(f"{spec!r} is not callable, so it cannot be of kind torch-functional")


def _validate_cs231n(obj: Any, spec: str) -> None:
    if not callable(getattr(obj, "batchnorm_forward", None)):
        also = "" if callable(getattr(obj, "batchnorm_backward", None)) else " and batchnorm_backward"
        raise TargetLoadError(f"{spec!r} lacks batchnorm_forward{also}; the numpy-cs231n kind needs batchnorm_forward "
                              "(batchnorm_backward and the spatial functions are optional)")


def make_target(obj: Any, kind: str, spec: str, name: str, convention: Any) -> Any:
    from bnverify.adapter import BNTarget

    return BNTarget(name=name, kind=kind, obj=obj, spec=spec, convention=convention)


def _torch_target() -> Any:
    from bnverify.targets.builtin import torch_target

    return torch_target()


def _reference_target() -> Any:
    from bnverify.targets.builtin import reference_target

    return reference_target()


def _preflight(target: Any, device: str) -> list[Any]:
    from bnverify import preflight

    return preflight.batchnorm(target, device)


def _fingerprint(target: Any, device: str, as_json: bool) -> str:
    from bnverify.fingerprint import fingerprint

    fp = fingerprint(target, device)
    return fp.to_json() if as_json else fp.table()


FAMILY = Family(
    name="batchnorm",
    title="batch norm",
    kinds=(
        Kind("torch-module", "an nn.Module class with torch.nn.BatchNorm2d's constructor",
             _is_module_class, _validate_module),
        Kind("numpy-cs231n", "a module with batchnorm_forward(x, gamma, beta, bn_param) and optionally "
             "batchnorm_backward(dout, cache) and spatial_batchnorm_forward/backward", _is_cs231n, _validate_cs231n),
        Kind("torch-functional", "a function with torch.nn.functional.batch_norm's signature",
             _is_functional, _validate_functional),
    ),
    suites=(
        Suite("forward", "quick", summary="training and eval output against the float64 oracle"),
        Suite("backward", "quick", summary="dx, dgamma, dbeta against the oracle and finite differences"),
        Suite("modes", "quick", summary="running statistics, train/eval, conventions, folding"),
        Suite("invariance", "quick", summary="scale and shift invariance, gradient geometry"),
        Suite("convergence", "full", summary="seed 002's MNIST network beside the reference"),
        Suite("bench", "full", summary="time, GB/s and % of the measured roofline beside torch's native batch norm"),
        Suite("seed-claims", "full", opt_in=True, summary="what the seeds claim about batch norm"),
    ),
    conventions=dict(CONVENTIONS),
    make_target=make_target,
    default_conventions={"numpy-cs231n": "cs231n"},
    aliases={"torch": _torch_target, "reference": _reference_target},
    fingerprint=_fingerprint,
    preflight=_preflight,
)
