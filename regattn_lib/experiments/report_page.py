"""``results/<profile>/REPORT.md``: one page per run, built from the files on disk.

``write_report(results_dir)`` reads ``tables/*.csv`` (the numbers), the notes under
``tables/*.md`` (the deviations, stated once at the top), ``figures/*.png`` and the run manifest
``run.json`` (``run_manifest``: commit, overrides, seeds, machine, wall times, which run wrote
which table). It holds no number of its own: every value on the page is a CSV cell, formatted
as the page says, so regenerating the page from the same files gives the same bytes
(``report_is_current`` checks that; the tests do it for the committed demo report).

Layout: the paper's tables in the paper's layout (methods as rows, datasets as columns). On the
paper profiles, the paper's value beside ours (``ours (ours - paper)``); on the offline
profiles (synthetic data), the paper's *gains* beside ours with their 95% interval and seed
spread, Hard shown, and the headline labelled as a synthetic stand-in.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from regattn_lib.experiments import run_manifest
from regattn_lib.experiments.compact import (
    BASELINE,
    as_number,
    compact,
    fmt_value,
    gain_cells,
    markdown_table,
    read_notes,
    signed,
)
from regattn_lib.runtime.atomic import atomic_write_text

REPORT = "REPORT.md"
PAPER_PROFILES = ("paper", "paper-quick")
PRETTY = {
    "oxford5k": "Oxford5k",
    "paris6k": "Paris6k",
    "oxford105k": "Oxford105k",
    "paris106k": "Paris106k",
    "roxford5k": "ROxford5k",
    "rparis6k": "RParis6k",
}
#: The key figures, each with the one line that says what to look at.
FIGURES = (
    (
        "scale_study",
        "Scale study",
        "mAP against the number of R-MAC levels L: where plain R-MAC peaks, and whether the "
        "attention keeps its accuracy on finer grids.",
    ),
    (
        "attention_maps",
        "Attention maps",
        "the region weights alpha on queries and their positives, one row per model (R-MAC's "
        "uniform weights, the paper's recipe, metric learning): bright regions should be the "
        "landmark, not the clutter.",
    ),
    (
        "classification_room",
        "Does the proxy's task need attention?",
        "validation accuracy of the classification proxy under the frozen fc: the fc alone, "
        "alpha from the object masks (an oracle, a bound) and the paper's recipe, every seed.",
    ),
    (
        "object_attention",
        "Attention on the object",
        "the share of the region weights on the landmark, attention against R-MAC's uniform "
        "weights: above the diagonal, the attention favours the object.",
    ),
    (
        "per_query_ap",
        "Per-query AP",
        "each query's AP with R-MAC against ours: points above the diagonal are queries the "
        "attention helps.",
    ),
    (
        "ranked_best_ours",
        "Ranked lists",
        "the query where ours gains most over R-MAC, its top results (green: positive, red: "
        "negative).",
    ),
    (
        "ranked_best_ours-metric",
        "Ranked lists (metric learning)",
        "the same query under the attention learned by metric learning (beyond the paper).",
    ),
    (
        "ranked_worst_ours",
        "Ranked lists (worst)",
        "the query where ours loses most against R-MAC: what the attention gets wrong.",
    ),
    (
        "ranked_worst_ours-metric",
        "Ranked lists (worst, metric learning)",
        "that query under the attention learned by metric learning (beyond the paper).",
    ),
)
#: Tables whose notes state how the run differs from the paper (the others' notes describe them).
DEVIATION_TABLES = (
    "ablation",
    "rpn",
    "sota",
    "scale_study",
    "revisited",
    "whitening",
    "training",
    "datasets",
)
#: Tables shown in their compact layout near the end, the rest only linked.
OTHER_TABLES = (
    "whitening",
    "datasets",
    "training",
    "classification_room",
    "metric_training",
    "object_attention",
    "attention_room",
    "metric_landmarks",
)
PAPER_TABLES = (
    ("ablation", "The ablation (the paper's main table)"),
    ("rpn", "Regions from an RPN instead of the grid"),
    ("sota", "Against other aggregations (the paper's state-of-the-art table)"),
)


def _pretty(dataset: str) -> str:
    return PRETTY.get(dataset, dataset)


def _read(tables: Path, name: str) -> pd.DataFrame | None:
    path = tables / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def _ours_datasets(df: pd.DataFrame) -> list[str]:
    """Datasets with a classic ``<d> ours`` column (not medium/hard, not time)."""
    out = []
    for c in df.columns:
        if c.endswith(" ours") and c != "time_s ours":
            d = c[: -len(" ours")]
            if not d.endswith((" medium", " hard", " easy")):
                out.append(d)
    return out


def _paper_datasets(df: pd.DataFrame) -> list[str]:
    return [c[: -len(" paper")] for c in df.columns if c.endswith(" paper") and c != "time_s paper"]


def _labels(df: pd.DataFrame) -> dict[str, list[str]]:
    out = {"method": [str(m) for m in df["method"]]}
    for c in ("weights", "seeds"):
        if c in df:
            out[c] = [fmt_value(x) for x in df[c]]
    return out


def _same(df: pd.DataFrame, a: str, b: str) -> bool:
    return a in df and b in df and [fmt_value(x) for x in df[a]] == [fmt_value(x) for x in df[b]]


def paper_layout(df: pd.DataFrame, paper_profile: bool) -> tuple[pd.DataFrame, list[str]]:
    """A method table (ablation, rpn, sota) in the paper's layout, and notes on its columns."""
    cols = _labels(df)
    notes: list[str] = []
    if paper_profile:
        for d in _ours_datasets(df):
            p = _pretty(d)
            cols[f"{p} paper"] = [fmt_value(x) for x in df.get(f"{d} paper", [math.nan] * len(df))]
            ours = [fmt_value(x) for x in df[f"{d} ours"]]
            diff = df.get(f"{d} diff", pd.Series([math.nan] * len(df)))
            cols[f"{p} ours (diff)"] = [
                f"{o} ({signed(as_number(x), 1)})" if o and not math.isnan(as_number(x)) else o
                for o, x in zip(ours, diff, strict=True)
            ]
            if f"{d} ours gain low" in df:
                cols[f"{p} gain [95%]"] = gain_cells(df, f"{d} ours gain")
        notes.append("ours (diff): our mAP and, in brackets, ours - paper, 1 decimal.")
    else:
        for d in _paper_datasets(df):
            if f"{d} paper gain" in df:
                base = _baseline_rows(df)
                cols[f"{_pretty(d)} gain (paper)"] = [
                    BASELINE
                    if i in base
                    else ""
                    if math.isnan(as_number(x))
                    else signed(as_number(x), 1)
                    for i, x in enumerate(df[f"{d} paper gain"])
                ]
        for d in _ours_datasets(df):
            cols[f"{d} gain [95%] (ours)"] = _gains(df, f"{d} ours gain")
            cols[f"{d} mAP (ours)"] = [fmt_value(x) for x in df[f"{d} ours"]]
            if not _same(df, f"{d} medium ours", f"{d} ours") and f"{d} medium ours" in df:
                cols["Medium gain [95%] (ours)"] = _gains(df, f"{d} medium ours gain")
                cols["Medium mAP (ours)"] = [fmt_value(x) for x in df[f"{d} medium ours"]]
            if f"{d} hard ours" in df:
                cols["Hard gain [95%] (ours)"] = _gains(df, f"{d} hard ours gain")
                cols["Hard mAP (ours)"] = [fmt_value(x) for x in df[f"{d} hard ours"]]
        notes.append(
            "gain: mAP points over the table's R-MAC row, each side against its own R-MAC; "
            "ours with its 95% paired-bootstrap interval over queries and the spread (sd) over "
            "seeds, 2 decimals rounded half up; the paper's to 1 decimal."
        )
    if "time_s ours" in df:
        cols["s / image (paper)"] = [fmt_value(x) for x in df.get("time_s paper", [])] or [
            ""
        ] * len(df)
        cols["s / image (ours)"] = [fmt_value(x) for x in df["time_s ours"]]
    return pd.DataFrame(cols), notes


def _baseline_rows(df: pd.DataFrame) -> set[int]:
    """Rows that are the gains' baseline: ours' gain and interval all exactly 0."""
    cols = [c for c in df.columns if c.endswith(" ours gain") and f"{c} low" in df]
    if not cols:
        return set()
    c = cols[0]
    return {
        i
        for i in range(len(df))
        if df[c].iloc[i] == 0 and df[f"{c} low"].iloc[i] == 0 and df[f"{c} high"].iloc[i] == 0
    }


def _gains(df: pd.DataFrame, column: str) -> list[str]:
    if column not in df:
        return [""] * len(df)
    return gain_cells(df, column)


def scale_layout(df: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows, L as columns; each cell the mAP and, for the attention rows, the gain
    over R-MAC at the same L with its interval."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    gains = gain_cells(df, "mAP gain") if "mAP gain" in df else [""] * len(df)
    for (_, r), g in zip(df.iterrows(), gains, strict=True):
        key = (str(r["dataset"]), str(r["method"]))
        cell = fmt_value(r["mAP"])
        if g and g != BASELINE:
            cell += f" ({g})"
        rows.setdefault(key, {})[f"L = {int(r['levels'])}"] = cell
    out = pd.DataFrame([{"dataset": k[0], "method": k[1], **v} for k, v in rows.items()]).fillna("")
    if out["dataset"].nunique() == 1:
        out = out.drop(columns="dataset")
    return out


def revisited_layout(df: pd.DataFrame) -> pd.DataFrame:
    """Rows dataset and method, columns Easy / Medium / Hard: mAP (gain [95%] sd)."""
    cols: dict[str, list[str]] = {}
    if df["dataset"].nunique() > 1:
        cols["dataset"] = [_pretty(str(d)) for d in df["dataset"]]
    cols["method"] = [str(m) for m in df["method"]]
    if "weights" in df:
        cols["weights"] = [str(w) for w in df["weights"]]
    for proto in ("easy", "medium", "hard"):
        m = f"{proto} mAP"
        if m not in df:
            continue
        g = _gains(df, f"{m} gain")
        cols[f"{proto.capitalize()} mAP (gain [95%])"] = [
            fmt_value(v) + (f" ({x})" if x and x != BASELINE else "")
            for v, x in zip(df[m], g, strict=True)
        ]
    return pd.DataFrame(cols)


def _runs_of(manifest: dict[str, Any]) -> dict[str, str]:
    """Output file -> the run that wrote it."""
    return {
        o: nb["run"]
        for nb in manifest["notebooks"].values()
        for o in nb.get("outputs", [])
        if nb.get("run")
    }


def _notebook_of(manifest: dict[str, Any], output: str) -> str | None:
    for name, nb in manifest["notebooks"].items():
        if output in nb.get("outputs", []):
            return name
    return None


def stamp(manifest: dict[str, Any], name: str) -> str:
    """The line under a table naming the run that made it and linking its full files."""
    out = f"tables/{name}.csv"
    run = _runs_of(manifest).get(out)
    links = f"Full table: [{name}.csv](tables/{name}.csv), compact: [{name}.md](tables/{name}.md)."
    if run is None:
        return f"*Made by: no run recorded (no run manifest names this table).* {links}"
    commit = (manifest["runs"].get(run, {}).get("commit") or "unknown")[:7]
    return f"*Made by run `{run}` (notebook `{_notebook_of(manifest, out)}`, commit `{commit}`).* {links}"


def _minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def run_header(manifest: dict[str, Any]) -> list[str]:
    """The run(s) behind the page: commit, overrides, seeds, machine, wall times."""
    if not manifest["runs"]:
        return [
            "**Run:** no run manifest (`run.json`) in this folder: these tables were written "
            "before run manifests existed, or not by `run_all.sh`; machine and wall time are "
            "unknown.",
            "",
        ]
    used = sorted({nb["run"] for nb in manifest["notebooks"].values() if nb.get("run")})
    lines = []
    if len(used) > 1:
        lines.append(
            f"> **Mixed runs:** this page is built from tables of {len(used)} different runs "
            f"({', '.join(f'`{u}`' for u in used)}; after `--from` or `--only`). Each table "
            "names the run that made it."
        )
        lines.append("")
    for run_id in used or [manifest.get("last_run")]:
        run = manifest["runs"].get(run_id, {})
        mach = run.get("machine", {})
        nbs = {n: nb for n, nb in sorted(manifest["notebooks"].items()) if nb.get("run") == run_id}
        where = f"{mach.get('cpu', '?')}, {mach.get('cpus', '?')} logical CPUs"
        if mach.get("gpu"):
            where += f", GPU {mach['gpu']}"
        over = run.get("overrides")
        lines.append(
            f"**Run `{run_id}`**: commit `{(run.get('commit') or 'unknown')[:12]}`"
            + (" (with uncommitted changes)" if run.get("dirty") else "")
            + f", profile `{run.get('profile')}`, device `{run.get('device')}`, "
            + f"overrides {'`' + str(over) + '`' if over else 'none'}, "
            + f"seeds {', '.join(str(s) for s in run.get('seeds', [])) or '?'}, "
            + f"status {run.get('status', '?')}."
        )
        lines.append(
            f"Machine: {where}; {mach.get('os', '?')}, Python {mach.get('python', '?')}, torch "
            f"{mach.get('torch', '?')}."
        )
        total = sum(nb["wall_s"] for nb in nbs.values())
        per = ", ".join(f"{n[:2]} {_minutes(nb['wall_s'])}" for n, nb in nbs.items())
        lines.append(f"Wall time: {_minutes(total)} ({per}).")
        steps = sorted(
            (
                (st["s"], n[:2], st["step"])
                for n, nb in nbs.items()
                for st in nb.get("slowest_steps", [])
            ),
            reverse=True,
        )[:6]
        if steps:
            lines.append(
                "Slowest steps: "
                + "; ".join(f"{nb} `{label}` {_minutes(t)}" for t, nb, label in steps)
                + "."
            )
        lines.append("")
    return lines


def _same_statement(note: str) -> str:
    """A note with the baseline's label taken out: the tables say "its own R-MAC + PCA row" or
    "its own R-MAC row" for the same statement."""
    return re.sub(r"its own .*? row", "its own baseline row", note)


def deviations(
    tables: Path, profile_name: str, overrides: dict[str, Any] | None = None
) -> list[str]:
    """Every note under the tables, once, plus what of the profile (with the run's
    ``overrides``) differs from the paper: backbone, test image size and levels, whitening set.
    """
    notes: list[str] = []
    seen: set[str] = set()
    provenance = ""
    for name in DEVIATION_TABLES:
        md = tables / f"{name}.md"
        if not md.is_file():
            continue
        for n in read_notes(md.read_text()):
            if n.startswith("`") or n.startswith("Paper values:"):
                continue  # column notes of the compact layout; the citation goes last
            if n.startswith("backbone "):  # the weights' provenance: said with the backbone
                provenance = n[len("backbone ") :]
                continue
            if _same_statement(n) not in seen:
                seen.add(_same_statement(n))
                notes.append(n)
    try:
        from regattn_lib.experiments.profiles import get_profile

        prof = get_profile(profile_name, overrides)
    except ValueError:
        return notes
    extra = []
    if prof.backbone != "caffe-resnet101" or provenance:
        said = provenance or prof.backbone
        paper = (
            "" if prof.backbone == "caffe-resnet101" else "; the paper: ResNet-101, Caffe weights"
        )
        extra.append(f"backbone: {said}{paper}")
    if (prof.image_size, prof.levels) != (1024, 5):
        extra.append(
            f"test images at {prof.image_size} px, L = {prof.levels} (the paper: 1024 px, L = 5)"
        )
    if not any(n.startswith("whitening set") for n in notes):
        extra.append(f"whitening set: {prof.whitening_set} (the paper: the Landmarks set)")
    return extra + notes


def build_report(results_dir: str | os.PathLike, profile: str | None = None) -> str:
    """The report page's Markdown (see the module docstring). ``profile``: default the
    manifest's, else the folder's name (``results/<profile>``)."""
    root = Path(results_dir)
    tables = root / "tables"
    manifest = run_manifest.load(root)
    profile = profile or manifest.get("profile") or root.name
    paper_profile = profile in PAPER_PROFILES
    abl = _read(tables, "ablation")
    ours_sets = _ours_datasets(abl) if abl is not None else []
    synthetic = not paper_profile
    out = [
        f"# Run report: the `{profile}` profile",
        "",
        "<!-- Generated by regattn_lib.experiments.report_page.write_report from the files "
        "beside it (tables/*.csv, tables/*.md notes, figures/, run.json); do not edit. -->",
        "",
        "Reproduction of J. Kim and S.-E. Yoon, *Regional Attention Based Deep Feature for "
        "Image Retrieval*, BMVC 2018.",
        "",
    ]
    out += run_header(manifest)
    if synthetic:
        out += [
            f"**Data: {', '.join(ours_sets) or 'synthetic'}, a synthetic stand-in** for the "
            "paper's Oxford5k and Paris6k: its mAP is not comparable with the paper's, so the "
            "tables compare *gains* over R-MAC (ours with a 95% interval) with the paper's gains.",
            "",
        ]
    out += ["## How this run differs from the paper", ""]
    last = manifest.get("runs", {}).get(manifest.get("last_run") or "", {})
    out += [f"- {n}" for n in deviations(tables, profile, last.get("overrides"))]
    out += ["", "Paper values: the BMVC 2018 presentation slides.", ""]
    for i, (name, title) in enumerate(PAPER_TABLES):
        df = _read(tables, name)
        if df is None:
            continue
        head = title
        if i == 0:
            head = "Headline: " + title[0].lower() + title[1:]
            if synthetic:
                head += f", on {', '.join(ours_sets)} (synthetic stand-in)"
        out += [f"## {head}", "", f"<!-- table: {name} -->"]
        table, notes = paper_layout(df, paper_profile)
        out += [markdown_table(table).rstrip(), ""]
        out += [" ".join([*notes, stamp(manifest, name)]), ""]
    scale = _read(tables, "scale_study")
    if scale is not None:
        out += ["## Scale study", "", markdown_table(scale_layout(scale)).rstrip(), ""]
        out += [
            "Cells: mAP (gain over R-MAC at the same L [95% interval] sd over seeds). "
            + stamp(manifest, "scale_study"),
            "",
        ]
    rev = _read(tables, "revisited")
    if rev is not None:
        out += ["## Revisited protocol (Easy / Medium / Hard; not in the paper)", ""]
        out += [markdown_table(revisited_layout(rev)).rstrip(), ""]
        out += [
            "Gains against the R-MAC row of the same block (with QE: R-MAC+QE). "
            + stamp(manifest, "revisited"),
            "",
        ]
    figs = [(n, t, line) for n, t, line in FIGURES if (root / "figures" / f"{n}.png").is_file()]
    if figs:
        out += ["## Key figures", ""]
        for n, t, line in figs:
            out += [f"**{t}**: {line}", "", f"![{t}](figures/{n}.png)", ""]
    others = [n for n in OTHER_TABLES if (tables / f"{n}.csv").is_file()]
    for n in others:
        df = pd.read_csv(tables / f"{n}.csv")
        out += [
            f"## {n.replace('_', ' ').capitalize()}",
            "",
            markdown_table(compact(df)[0]).rstrip(),
            "",
        ]
        out += [stamp(manifest, n), ""]
    listed = {n for n, _ in PAPER_TABLES} | {"scale_study", "revisited", *others}
    rest = sorted(p.stem for p in tables.glob("*.csv") if p.stem not in listed)
    if rest:
        out += ["## All other tables", ""]
        out += [f"- [{n}.csv](tables/{n}.csv) ([compact]({f'tables/{n}.md'}))" for n in rest]
        out += [""]
    out += [
        "Numbers are the CSVs' cells (4 significant digits), gains rounded half up to 2 decimals "
        "(4 where every value of the column is below 0.1)."
    ]
    return "\n".join(out) + "\n"


def write_report(results_dir: str | os.PathLike, profile: str | None = None) -> Path:
    """Write ``REPORT.md`` in ``results_dir`` (atomically) and return its path."""
    root = Path(results_dir)
    return atomic_write_text(root / REPORT, build_report(root, profile))


def report_is_current(results_dir: str | os.PathLike, profile: str | None = None) -> bool:
    """Whether ``REPORT.md`` is what the files on disk give now (no number edited or stale)."""
    path = Path(results_dir) / REPORT
    return path.is_file() and path.read_text() == build_report(results_dir, profile)


def report_table(report: str, name: str) -> pd.DataFrame | None:
    """The Markdown table under ``<!-- table: name -->`` of a report, as strings (for checks)."""
    lines = report.splitlines()
    try:
        i = lines.index(f"<!-- table: {name} -->") + 1
    except ValueError:
        return None
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in lines[i].strip().strip("|").split(" | ")])
        i += 1
    if len(rows) < 2:
        return None
    return pd.DataFrame(rows[2:], columns=rows[0])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m regattn_lib.experiments.report_page RESULTS_DIR [--check]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m regattn_lib.experiments.report_page")
    ap.add_argument("results_dir", nargs="+")
    ap.add_argument("--check", action="store_true", help="exit 1 when a report is stale")
    args = ap.parse_args(argv)
    status = 0
    for d in args.results_dir:
        if args.check:
            if not report_is_current(d):
                print(f"{d}/{REPORT} is not what its tables give: rerun without --check")
                status = 1
        else:
            print(write_report(d))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
