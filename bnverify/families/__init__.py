"""The registry of families: what bnverify can check, declared once.

A family (batch norm, dropout; optimizers and initializers next) declares, in one ``Family``:

* its **kinds**: how the user hands a target over, how each kind is detected (where that is
  unambiguous) and validated;
* its **conventions**: the names ``--convention`` accepts for it, with the default per kind;
* its **references**: the names ``--reference`` accepts for it, and how one is inferred;
* its **suites**: which suite modules apply, at which tier, and which run only when named;
* its **built-in targets** (``torch``, ``reference``) and how a loaded object becomes a target.

Everything else reads this registry: the loader (``bnverify.loading``), the options of the CLI
and of the plugin (``bnverify.options``: kind, convention, reference and suite choices), the
plugin's collection (a suite runs only against targets of its family) and the reproduce line.
Adding a family is one new module in this package plus one entry in ``FAMILIES``; its suite
module goes in ``suites/`` with the ``bnverify_suite(name)`` marker.

Declarations are import-light (no torch at import time) so that ``--help`` stays fast; detection
and target construction import what they need when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

TIERS = ("quick", "full")


@dataclass(frozen=True)
class Kind:
    """One way of handing a target over."""

    name: str
    summary: str
    detect: Callable[[Any], bool] | None = None
    """True when an object is unambiguously of this kind; None: only by ``--kind``."""
    validate: Callable[[Any, str], None] | None = None
    """Raises ``TargetLoadError`` when an object named with ``--kind`` cannot be of this kind."""
    usually_named: bool = False
    """Detected only in special cases (torch.nn.init's own functions): an undetected object's usage error
    suggests ``--kind`` for it, as for kinds with no detector."""


@dataclass(frozen=True)
class Suite:
    """A suite module of ``suites/``: its name (the ``bnverify_suite`` marker), tier and selection."""

    name: str
    tier: str = "quick"
    opt_in: bool = False
    """Runs only when named with ``--suite``, never by tier (a study, not a check)."""
    summary: str = ""


@dataclass(frozen=True)
class Family:
    """Everything bnverify knows about one family of targets (see the module docstring)."""

    name: str
    title: str
    kinds: tuple[Kind, ...]
    suites: tuple[Suite, ...]
    conventions: dict[str, Any]
    """Convention name -> the convention object targets carry (it has a ``name``); the first is the default."""
    make_target: Callable[..., Any]
    """``(obj, kind, spec, display_name, convention_object) -> Target``."""
    default_conventions: dict[str, str] = field(default_factory=dict)
    """Default convention per kind; kinds not listed take ``conventions[0]``."""
    convention_aliases: dict[str, str] = field(default_factory=dict)
    """Other families' convention names this family accepts, and what they mean here."""
    references: tuple[str, ...] = ()
    infer_reference_from: Callable[[Any, str], str | None] | None = None
    aliases: dict[str, Callable[[], Any]] = field(default_factory=dict)
    """Built-in target names (``torch``, ``reference``) and their factories."""
    preflight: Callable[[Any, str], list[Any]] | None = None
    """``(target, device) -> [bnverify.preflight.Step]``: each kind of call made once before the suites."""
    fingerprint: Callable[[Any, str, bool], str] | None = None
    """``(target, device, as_json) -> text``: what ``bnverify fingerprint`` prints, measured by probing."""

    def kind(self, name: str) -> Kind:
        return next(k for k in self.kinds if k.name == name)

    def default_convention(self, kind: str) -> str:
        return self.default_conventions.get(kind, next(iter(self.conventions)))

    def resolve_convention(self, name: str | None, kind: str) -> str:
        """The convention ``--convention name`` means for a target of ``kind``; ValueError if none."""
        if name is None:
            return self.default_convention(kind)
        if name in self.conventions:
            return name
        if name in self.convention_aliases:
            return self.convention_aliases[name]
        owners = [f.title for f in FAMILIES if f is not self and name in f.conventions]
        where = f"; it is a {' and '.join(owners)} convention" if owners else ""
        raise ValueError(
            f"convention {name!r} does not apply to {self.title} targets (kind {kind}){where}; "
            f"choose one of {', '.join(self.conventions)}"
        )

    def infer_reference(self, obj: Any, kind: str) -> str | None:
        return self.infer_reference_from(obj, kind) if self.infer_reference_from else None

    def suite(self, name: str) -> Suite | None:
        return next((s for s in self.suites if s.name == name), None)


ENTRIES = ("batchnorm", "dropout", "optim", "init")
"""The registry: a new family is one module ``bnverify/families/NAME.py`` defining ``FAMILY``, and its name here."""


def _families() -> tuple[Family, ...]:
    import importlib

    return tuple(importlib.import_module(f"bnverify.families.{name}").FAMILY for name in ENTRIES)


FAMILIES: tuple[Family, ...] = _families()


def all_kinds() -> list[str]:
    return [k.name for f in FAMILIES for k in f.kinds]


def all_conventions() -> list[str]:
    names: list[str] = []
    for f in FAMILIES:
        names += [c for c in f.conventions if c not in names]
    return names


def all_references() -> list[str]:
    names: list[str] = []
    for f in FAMILIES:
        names += [r for r in f.references if r not in names]
    return names


def all_suites() -> list[str]:
    return [s.name for f in FAMILIES for s in f.suites]


def all_aliases() -> dict[str, tuple[Family, Callable[[], Any]]]:
    return {name: (f, factory) for f in FAMILIES for name, factory in f.aliases.items()}


def family_of_kind(kind: str) -> Family:
    for f in FAMILIES:
        if any(k.name == kind for k in f.kinds):
            return f
    raise KeyError(kind)


def family_of_suite(suite: str) -> Family | None:
    return next((f for f in FAMILIES if f.suite(suite) is not None), None)


def detect_kind(obj: Any) -> str | None:
    """The kind of a user object, where exactly one family's detector claims it (SPEC section 2)."""
    for f in FAMILIES:
        for k in f.kinds:
            if k.detect is not None and k.detect(obj):
                return k.name
    return None


def conventions_help() -> str:
    """``batch norm: torch (default), keras, ...; dropout: inverted (default), direct; ...``."""
    parts = []
    for f in FAMILIES:
        names = [f"{c} (default)" if c == f.default_convention(f.kinds[0].name) else c for c in f.conventions]
        extra = [f"{c} for {k}" for k, c in f.default_conventions.items()]
        parts.append(f"{f.title}: {', '.join(names)}" + (f"; default {', '.join(extra)}" if extra else ""))
    return "; ".join(parts)


def kinds_help() -> str:
    return "; ".join(f"{k.name} ({f.title})" for f in FAMILIES for k in f.kinds)
