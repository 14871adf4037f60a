"""Resolve ``MODULE:ATTR``, ``MODULE``, an alias or an entry-point name to a ``Target`` of the family its kind belongs to (``bnverify.families``).

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

from bnverify import families
from bnverify.target import Target, TargetLoadError

ENV_VAR = "BNVERIFY_TARGET"
ENTRY_POINT_GROUP = "bnverify.targets"


def known_names() -> list[str]:
    names = set(families.all_aliases())
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
    """The kind of a user object, where that is unambiguous (SPEC section 2; see ``bnverify.families``)."""
    return families.detect_kind(obj)


def load_target(
    spec: str | None,
    *,
    kind: str | None = None,
    convention: str | None = None,
    reference: str | None = None,
    call_timeout: float | None = None,
    aspects: dict[str, Any] | None = None,
) -> Target:
    """Load a target of any family; raises ``TargetLoadError`` with one clear line on any problem.

    ``aspects``: convention aspects set on their own (``{"eps": 1e-6, "running_var": "biased"}``, from
    ``--eps``, ``--momentum``, ``--momentum-meaning``, ``--running-var``), applied over the convention."""
    spec = spec or os.environ.get(ENV_VAR)
    if not spec:
        raise TargetLoadError(
            f"no target: pass --bn-target MODULE:ATTR (or set ${ENV_VAR}); known names: {', '.join(known_names())}"
        )
    if kind is not None and kind not in families.all_kinds():
        raise TargetLoadError(f"unknown kind {kind!r}: choose one of {', '.join(families.all_kinds())}")
    aliases = families.all_aliases()
    target: Target
    if spec in aliases:
        target = aliases[spec][1]()
        if kind and kind != target.kind:
            raise TargetLoadError(f"built-in target {spec!r} is of kind {target.kind}, not {kind}")
    else:
        obj, display = _resolve_object(spec)
        if isinstance(obj, Target):
            target = obj
        elif callable(obj) and getattr(obj, "__bnverify_target_factory__", False):
            target = obj()
        else:
            detected = families.detect_kind(obj)
            use = kind or detected
            if use is None:
                named = "; ".join(f"--kind {k.name} for {k.summary}" for f in families.FAMILIES for k in f.kinds
                                  if k.detect is None or k.usually_named)
                raise TargetLoadError(
                    f"cannot tell what kind of target {spec!r} is ({type(obj).__name__}); "
                    f"pass --kind, one of: {', '.join(families.all_kinds())}" + (f" ({named})" if named else "")
                )
            fam = families.family_of_kind(use)
            validate = fam.kind(use).validate
            if validate is not None:
                validate(obj, spec)
            target = fam.make_target(obj, use, spec, display, fam.conventions[fam.default_convention(use)])
            target.source_file = _source_file(obj)
            target.kind_detected = use == detected
        target.spec = spec
    fam = target.family
    if convention is not None:
        try:
            target.convention = fam.conventions[fam.resolve_convention(convention, target.kind)]
        except ValueError as exc:
            raise TargetLoadError(str(exc)) from None
    if aspects:
        from bnverify.conventions import apply_aspects

        try:
            target.convention = apply_aspects(target.convention, aspects, fam.title, target.kind)
        except ValueError as exc:
            raise TargetLoadError(str(exc)) from None
    target.reference = _reference(fam, target, reference)
    if call_timeout is not None:
        target.call_timeout = call_timeout
    return target


def _reference(fam: families.Family, target: Target, reference: str | None) -> str | None:
    """The reference a target is held to: named with ``--reference``, else inferred, else required."""
    if reference is None:
        inferred = fam.infer_reference(target.obj, target.kind)
        if inferred is None and fam.references:
            raise TargetLoadError(
                f"cannot tell which reference {target.spec!r} implements; pass --reference, one of: "
                f"{', '.join(fam.references)}"
            )
        return inferred
    if not fam.references:
        takes = [f.title for f in families.FAMILIES if f.references]
        raise TargetLoadError(
            f"--reference does not apply to {fam.title} targets (kind {target.kind}): "
            + (f"it names the reference of {' and '.join(takes)} targets" if takes
               else "no family of this version offers a choice of reference")
        )
    if reference not in fam.references:
        raise TargetLoadError(f"unknown reference {reference!r} for {fam.title} targets: choose one of "
                              f"{', '.join(fam.references)}")
    return reference


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
