"""Numbers quoted in prose (README, docs/) come from result files, never copied by hand.

A quoted number is a generated region in the Markdown::

    <!-- quote: results/demo/tables/ablation.csv row="+ regional attention" col="synthetic-demo ours gain" fmt="interval:2" -->+0.64 [+0.11, +1.21]<!-- /quote -->

The comment names the file (relative to the repository root), the cell and the rounding; the
text between the comments is what ``render`` writes there. Cells:

- CSV: ``row`` matches the table's first column; ``where="col=value;col=value"`` adds
  conditions (values compared as the CSV writes them, e.g. ``levels=5``); ``col`` the column.
  ``agg="count_positive"`` counts the rows (matching ``where``) whose ``col`` is above 0,
  ``agg="count"`` counts them.
- JSON: ``key="a.b.0.c"``, a path of keys and list indices.

Roundings (``fmt``): a Python format spec (``.2f``, ``+.2f``, ``.0f``, ``.4g``; fixed-point
specs round half up from the value's shortest decimal text, as ``compact.signed``);
``interval:D`` the gain in ``col`` with its ``col low`` / ``col high`` to D decimals,
``+0.64 [+0.11, +1.21]``; ``gain:D`` the same with `` sd <seed sd>``.

``python -m regattn_lib.experiments.quotes [FILES]`` re-renders every region (default: README.md
and docs/*.md); ``--check`` exits 1 naming each region whose text is not what its file gives now
(``tests/test_quoted_numbers.py`` runs the check).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from regattn_lib.experiments.compact import fmt_gain, fmt_value
from regattn_lib.runtime.paths import REPO_ROOT

REPO = REPO_ROOT
QUOTE = re.compile(r"<!-- quote: (?P<spec>.*?) -->(?P<text>.*?)<!-- /quote -->")
ATTR = re.compile(r'(\w+)="([^"]*)"')
DEFAULT_FILES = ("README.md", "docs/*.md")


class QuoteError(ValueError):
    """A quote names a file, row, column or key that is not there, or several rows."""


def _parse(spec: str) -> tuple[str, dict[str, str]]:
    path, _, rest = spec.strip().partition(" ")
    return path, dict(ATTR.findall(rest))


def _rows(df: pd.DataFrame, attrs: dict[str, str]) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    if "row" in attrs:
        mask &= df.iloc[:, 0].astype(str) == attrs["row"]
    for cond in filter(None, attrs.get("where", "").split(";")):
        col, _, val = cond.partition("=")
        if col not in df:
            raise QuoteError(f"no column {col!r}")
        mask &= df[col].map(fmt_value) == val
    return df[mask]


def _round(x: float, spec: str) -> str:
    m = re.fullmatch(r"(\+?)\.(\d+)f", spec)
    if not m:
        return format(x, spec)
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-int(m[2])), rounding=ROUND_HALF_UP)
    return format(q, spec)


def value(spec: str, root: Path = REPO) -> str:
    """The text a quote's spec gives from the files under ``root`` now."""
    rel, attrs = _parse(spec)
    path = root / rel
    if not path.is_file():
        raise QuoteError(f"no file {rel}")
    fmt = attrs.get("fmt", ".4g")
    if path.suffix == ".json":
        node: Any = json.loads(path.read_text())
        for k in attrs["key"].split("."):
            try:
                node = node[int(k)] if isinstance(node, list) else node[k]
            except (KeyError, IndexError, ValueError) as e:
                raise QuoteError(f"{rel}: no key {attrs['key']!r}") from e
        return _round(float(node), fmt)
    df = pd.read_csv(path)
    col = attrs.get("col", "")
    if col not in df:
        raise QuoteError(f"{rel}: no column {col!r}")
    rows = _rows(df, attrs)
    agg = attrs.get("agg")
    if agg == "count":
        return str(len(rows))
    if agg == "count_positive":
        return str(int((rows[col] > 0).sum()))
    if len(rows) != 1:
        raise QuoteError(f"{rel}: {len(rows)} rows match {attrs}, want exactly 1")
    row = rows.iloc[0]
    if fmt.startswith(("interval:", "gain:")):
        kind, _, d = fmt.partition(":")
        sd = row.get(f"{col} seed sd", math.nan) if kind == "gain" else None
        return fmt_gain(float(row[col]), row[f"{col} low"], row[f"{col} high"], sd, int(d))
    return _round(float(row[col]), fmt)


def render(text: str, root: Path = REPO) -> str:
    """``text`` with every quote region's text replaced by what its file gives now."""

    def sub(m: re.Match[str]) -> str:
        return f"<!-- quote: {m['spec']} -->{value(m['spec'], root)}<!-- /quote -->"

    return QUOTE.sub(sub, text)


def stale(path: Path, root: Path = REPO) -> list[str]:
    """The quote regions of ``path`` whose text differs from their file's value (or fails)."""
    problems = []
    for m in QUOTE.finditer(path.read_text()):
        try:
            want = value(m["spec"], root)
        except QuoteError as e:
            problems.append(f"{path}: {m['spec']}: {e}")
            continue
        if m["text"] != want:
            problems.append(f"{path}: {m['spec']}: says {m['text']!r}, the file gives {want!r}")
    return problems


def files(patterns: Sequence[str] = DEFAULT_FILES, root: Path = REPO) -> list[Path]:
    """The Markdown files that may quote numbers."""
    return sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regattn_lib.experiments.quotes")
    ap.add_argument("files", nargs="*", help="default: README.md docs/*.md")
    ap.add_argument("--check", action="store_true", help="exit 1 naming every stale quote")
    args = ap.parse_args(argv)
    paths = [Path(f) for f in args.files] or files()
    problems: list[str] = []
    for p in paths:
        if args.check:
            problems += stale(p)
        else:
            new = render(p.read_text())
            if new != p.read_text():
                p.write_text(new)
                print(f"updated {p}")
    for pr in problems:
        print(pr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
