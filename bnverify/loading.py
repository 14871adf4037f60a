"""Resolve ``MODULE:ATTR``, ``MODULE``, an alias or an entry-point name to a ``BNTarget``.

Precedence: an explicit spec (``--bn-target`` / ``bnverify check TARGET``),
else ``$BNVERIFY_TARGET``.  Bare names are looked up first among the
built-in aliases (``torch``, ``reference``), then in the entry-point group
``bnverify.targets`` (third-party packages register their own), then as an
importable module.  Every failure is a ``TargetLoadError`` with one line
saying what was wrong and what was expected.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
from typing import Any

import torch

from bnverify.adapter import KINDS, BNTarget, TargetLoadError, functional_signature_matches
from bnverify.conventions import get_convention

ENV_VAR = "BNVERIFY_TARGET"
ENTRY_POINT_GROUP = "bnverify.targets"


def known_names() -> list[str]:
    names = {"torch", "reference"}
    try:
        names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # broken third-party metadata must not hide the built-ins
        pass
    return sorted(names)


def _import_module(modname: str, spec: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and (modname == exc.name or modname.startswith(exc.name + ".")):
            raise TargetLoadError(
                f"cannot import module {modname!r} for target {spec!r}: no module named {exc.name!r} "
                f"(expected MODULE:ATTR importable from the current directory or PYTHONPATH, "
                f"or one of: {', '.join(known_names())})"
            ) from None
        raise TargetLoadError(
            f"importing {modname!r} for target {spec!r} failed: it imports {exc.name!r}, which is not installed"
        ) from None
    except Exception as exc:
        raise TargetLoadError(
            f"importing {modname!r} for target {spec!r} raised {type(exc).__name__}: {exc}"
        ) from None


def _resolve_object(spec: str) -> tuple[Any, str]:
    """The user's object and a display name."""
    if ":" in spec:
        modname, _, attr = spec.partition(":")
        if not modname or not attr:
            raise TargetLoadError(f"target {spec!r} is not of the form MODULE:ATTR")
        mod = _import_module(modname, spec)
        obj: Any = mod
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                have = sorted(n for n in dir(mod) if not n.startswith("_"))[:12]
                raise TargetLoadError(
                    f"module {modname!r} has no attribute {attr!r} (target {spec!r}); "
                    f"it defines: {', '.join(have) or 'nothing public'}"
                ) from None
        return obj, attr
    eps = {ep.name: ep for ep in _entry_points()}
    if spec in eps:
        try:
            factory = eps[spec].load()
        except Exception as exc:
            raise TargetLoadError(f"entry point {spec!r} failed to load: {type(exc).__name__}: {exc}") from None
        return factory, spec
    return _import_module(spec, spec), spec


def _entry_points() -> list[Any]:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:
        return []


def detect_kind(obj: Any) -> str | None:
    """The kind of a user object, where that is unambiguous (SPEC section 2)."""
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        return "torch-module"
    if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
        return "torch-optimizer"
    if hasattr(obj, "batchnorm_forward") and hasattr(obj, "batchnorm_backward"):
        return "numpy-cs231n"
    if callable(obj) and not inspect.isclass(obj) and functional_signature_matches(obj):
        return "torch-functional"
    return None


def load_target(
    spec: str | None,
    *,
    kind: str | None = None,
    convention: str | None = None,
    call_timeout: float | None = None,
) -> BNTarget:
    """Load a target; raises ``TargetLoadError`` with one clear line on any problem."""
    spec = spec or os.environ.get(ENV_VAR)
    if not spec:
        raise TargetLoadError(
            f"no target: pass --bn-target MODULE:ATTR (or set ${ENV_VAR}); known names: {', '.join(known_names())}"
        )
    if kind is not None and kind not in KINDS:
        raise TargetLoadError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    from bnverify.targets import builtin

    if spec in builtin.ALIASES:
        target = builtin.ALIASES[spec]()
        if kind and kind != target.kind:
            raise TargetLoadError(f"built-in target {spec!r} is of kind {target.kind}, not {kind}")
    else:
        obj, display = _resolve_object(spec)
        if isinstance(obj, BNTarget):
            target = obj
        elif callable(obj) and getattr(obj, "__bnverify_target_factory__", False):
            target = obj()
        else:
            detected = detect_kind(obj)
            use = kind or detected
            if use is None:
                raise TargetLoadError(
                    f"cannot tell what kind of target {spec!r} is ({type(obj).__name__}); "
                    f"pass --kind, one of: {', '.join(KINDS)}"
                )
            if use not in KINDS:
                raise TargetLoadError(f"{spec!r} looks like a {use}; that kind is not supported by this version")
            _validate(obj, use, spec)
            target = BNTarget(
                name=display, kind=use, obj=obj, spec=spec,
                convention=get_convention("cs231n" if use == "numpy-cs231n" else "torch"),
                source_file=_source_file(obj),
            )
        target.spec = spec
    if target.kind == "torch-dropout":
        from bnverify.dropout import scaling_for

        try:
            target.dropout_scaling = scaling_for(convention)
        except ValueError as exc:
            raise TargetLoadError(str(exc)) from None
        convention = None
    elif convention in ("inverted", "direct"):
        raise TargetLoadError(f"convention {convention!r} names a dropout scaling; it applies to --kind torch-dropout only")
    try:
        if convention:
            target.convention = get_convention(convention)
    except ValueError as exc:
        raise TargetLoadError(str(exc)) from None
    if call_timeout is not None:
        target.call_timeout = call_timeout
    return target


def _validate(obj: Any, kind: str, spec: str) -> None:
    if kind == "torch-module" and not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        raise TargetLoadError(f"{spec!r} is not an nn.Module subclass, so it cannot be of kind torch-module")
    if kind == "torch-dropout" and not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        raise TargetLoadError(f"{spec!r} is not an nn.Module subclass, so it cannot be of kind torch-dropout")
    if kind == "torch-functional" and not callable(obj):
        raise TargetLoadError(f"{spec!r} is not callable, so it cannot be of kind torch-functional")
    if kind == "numpy-cs231n":
        missing = [n for n in ("batchnorm_forward", "batchnorm_backward") if not callable(getattr(obj, n, None))]
        if missing:
            raise TargetLoadError(
                f"{spec!r} lacks {' and '.join(missing)}, which the numpy-cs231n kind needs"
            )


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
