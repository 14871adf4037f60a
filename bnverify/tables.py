"""Tables for the terminal and for markdown pages, through ``tabulate`` (one place, one style).

``table(rows, headers)`` gives the plain, aligned text bnverify prints in the terminal and saves as
``report.txt``; ``table(rows, headers, markdown=True)`` gives a GitHub-flavoured markdown table
(CI step summaries, MLflow run descriptions).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from tabulate import tabulate


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], *, markdown: bool = False,
          floatfmt: str = "g", align: str | Sequence[str] | None = None) -> str:
    """Rows under ``headers``; ``None`` cells print empty. ``align``: one of left/right/center/decimal."""
    rows = [["" if v is None else v for v in row] for row in rows]
    kw: dict[str, Any] = {"floatfmt": floatfmt, "disable_numparse": True}
    if align is not None:
        if isinstance(align, str):
            kw["colalign"] = [align] * len(headers)
        else:
            kw["colalign"] = list(align)
    return tabulate(rows, headers=list(headers), tablefmt="github" if markdown else "simple", **kw)


def key_values(pairs: Iterable[tuple[str, Any]], *, indent: str = "") -> str:
    """``name  value`` lines with the names aligned (fingerprints, summaries of one run)."""
    text = tabulate([[k, "" if v is None else v] for k, v in pairs], tablefmt="plain", disable_numparse=True)
    return "\n".join(indent + line.rstrip() for line in text.splitlines())
