"""The compact Markdown layout of a results table: what a reader takes in, the CSV keeps the rest.

A CSV keeps one column per number for machines (``X gain``, ``X gain low``, ``X gain high``,
``X gain seed sd``; ``X paper``, ``X ours``, ``X diff``). Read side by side, those columns do not
fit a screen and put a value far from its interval. The compact layout:

- merges each gain with its 95% interval and seed spread into one cell,
  ``+0.64 [+0.11, +1.21] sd 0.25`` (a baseline row, gain and interval all 0, reads ``baseline``);
- merges a paper-profile ``X ours`` with its ``X diff`` (ours - paper): ``71.2 (+1.1)``;
- merges a value ``X`` with a plain gain ``X gain`` (no interval, e.g. the paper's gain over its
  own R-MAC row): ``74.9 (+4.8)``;
- leaves out a ``medium`` column that equals its classic twin (on the synthetic benchmarks the
  classic protocol counts easy + hard positives, so it *is* Medium), naming it in a note.

Numbers keep the CSV's 4 significant digits; gains get 2 decimals (4 below 0.1 in magnitude).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd

LOW, HIGH, SD = " low", " high", " seed sd"
BASELINE = "baseline"


def fmt_value(x: object) -> str:
    """A table value as the CSV writes it (``%.4g``; integers plain; empty for missing)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int | float):
        return f"{int(x)}" if float(x).is_integer() and abs(x) < 1e6 else f"{x:.4g}"
    return str(x)


def gain_decimals(values: Sequence[float]) -> int:
    """Decimals for a gain column: 2, or 4 when every value is below 0.1 in magnitude."""
    finite = [abs(v) for v in values if isinstance(v, int | float) and not math.isnan(v)]
    return 4 if finite and max(finite) < 0.1 else 2


def signed(x: float, d: int) -> str:
    """``x`` with its sign and ``d`` decimals, rounded half up from its shortest decimal text
    (0.245 from the CSV reads +0.25, as a reader rounding the CSV by hand would)."""
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP)
    return f"{q:+.{d}f}"


def fixed(x: float, d: int) -> str:
    """``x`` with ``d`` decimals, rounded half up like ``signed``."""
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP)
    return f"{q:.{d}f}"


def fmt_gain(gain: float, low: float | None, high: float | None, sd: float | None, d: int) -> str:
    """``+0.64 [+0.11, +1.21] sd 0.25``; ``baseline`` for an all-zero row; empty when missing."""
    if gain is None or math.isnan(gain):
        return ""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return signed(gain, d)
    if gain == 0 and low == 0 and high == 0:
        return BASELINE
    cell = f"{signed(gain, d)} [{signed(low, d)}, {signed(high, d)}]"
    if sd is not None and not math.isnan(sd):
        cell += f" sd {fixed(sd, d)}"
    return cell


def as_number(x: object) -> float:
    """``float(x)``, NaN for a value that is not a number (an empty CSV cell, a label)."""
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def gain_cells(df: pd.DataFrame, column: str) -> list[str]:
    """One merged cell per row for the gain ``column`` and its ``low``/``high``/``seed sd``."""
    d = gain_decimals(
        [as_number(v) for c in (column, column + LOW, column + HIGH) if c in df for v in df[c]]
    )
    out = []
    for _, row in df.iterrows():
        get = lambda c, row=row: as_number(row[c]) if c in df.columns else None  # noqa: E731
        out.append(
            fmt_gain(
                as_number(row[column]), get(column + LOW), get(column + HIGH), get(column + SD), d
            )
        )
    return out


def _decimals_of(values: Sequence[object]) -> int:
    """Decimals enough to show each value of a column as the CSV does (at most 4)."""
    best = 0
    for v in values:
        s = fmt_value(as_number(v))
        if "." in s and "e" not in s:
            best = max(best, len(s.split(".")[1]))
    return min(best, 4)


def value_with(values: Sequence[object], extra: Sequence[object]) -> list[str]:
    """``74.9 (+4.8)``: each value with a signed companion (a diff or plain gain) in brackets."""
    d = max(1, _decimals_of(values))
    out = []
    for v, e in zip(values, extra, strict=True):
        base = fmt_value(as_number(v) if not isinstance(v, str) else v)
        ev = as_number(e)
        out.append(f"{base} ({signed(ev, d)})" if base and not math.isnan(ev) else base)
    return out


def _same(a: pd.Series, b: pd.Series) -> bool:
    return [fmt_value(x) for x in a] == [fmt_value(x) for x in b]


def _medium_twin(column: str, columns: Sequence[str]) -> str | None:
    """The classic column a ``medium`` column may repeat: ``X medium Y`` -> ``X Y`` or
    ``X classic Y``."""
    if "medium" not in column.split():
        return None
    for cand in (
        " ".join(w for w in column.split() if w != "medium"),
        " ".join("classic" if w == "medium" else w for w in column.split()),
    ):
        if cand in columns and cand != column:
            return cand
    return None


def compact(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The compact layout of a results table (module docstring), and its notes on what it left
    out. Every cell is a string."""
    cols = list(df.columns)
    notes: list[str] = []
    dropped: set[str] = set()
    # medium columns that repeat classic ones, with their gain groups
    for c in cols:
        twin = _medium_twin(c, cols)
        if twin is not None and _same(df[c], df[twin]):
            if c in dropped:
                continue
            group = [x for x in cols if x == c or x.startswith(c + " ")]
            twin_group = [twin + x[len(c) :] for x in group]
            if all(t in df and _same(df[x], df[t]) for x, t in zip(group, twin_group, strict=True)):
                dropped.update(group)
                notes.append(
                    f"`{c}` equals `{twin}` on this benchmark and is left out (see the CSV)."
                )
    out: dict[str, list[str]] = {}
    consumed: set[str] = set(dropped)
    for c in cols:
        if c in consumed:
            continue
        if c + LOW in df and c + HIGH in df:
            sd = " sd" if c + SD in df and df[c + SD].notna().any() else ""
            out[f"{c} [95% interval]{sd}"] = gain_cells(df, c)
            consumed.update({c, c + LOW, c + HIGH, c + SD})
        elif c.endswith(" ours") and c[: -len(" ours")] + " diff" in df:
            diff = c[: -len(" ours")] + " diff"
            out[f"{c} (diff)"] = value_with(list(df[c]), list(df[diff]))
            consumed.update({c, diff})
        elif (
            c + " gain" in df
            and c + " gain" + LOW not in df
            and pd.api.types.is_numeric_dtype(df[c])
        ):
            out[f"{c} (gain)"] = value_with(list(df[c]), list(df[c + " gain"]))
            consumed.update({c, c + " gain"})
        else:
            out[c] = [fmt_value(x) for x in df[c]]
            consumed.add(c)
    return pd.DataFrame(out), notes


def to_markdown(df: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """The compact table as Markdown, its notes under it as ``> `` lines."""
    table, left_out = compact(df)
    lines = list(dict.fromkeys([*left_out, *notes]))  # once each, in order
    return markdown_table(table) + "".join(f"\n> {n}" for n in lines) + "\n"


def markdown_table(table: pd.DataFrame) -> str:
    """A plain pipe table of strings (no padding: diffs stay small when one number changes)."""
    head = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join(" --- " for _ in table.columns) + "|"
    rows = [
        "| " + " | ".join(_cell(x) for x in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def _cell(x: object) -> str:
    return fmt_value(x).replace("|", "\\|")


def read_notes(md_text: str) -> list[str]:
    """The ``> `` note lines under a table written by ``reports.write_table``."""
    return [ln[2:].strip() for ln in md_text.splitlines() if ln.startswith("> ")]
