"""Check that a paper-profile results folder holds every table of the paper, complete (issue 11).

    python scripts/check_paper_results.py RESULTS_DIR [--expected expected.json]
        [--profile paper|paper-quick] [--mirror-log mirror.log [--mirror-log-from N]]

``RESULTS_DIR`` is ``results/<profile>/`` (its ``tables/`` is read). Exits 0 when everything
holds, else 1 after naming every problem:

- ``ablation``, ``rpn``, ``sota`` (with the ``oxford105k`` / ``paris106k`` columns): every row
  and column of the paper (``regattn_lib.experiments.reports.PAPER_*``) as ``<col> paper``, ``<col> ours``,
  ``<col> diff``; the paper's values as published; finite values of ours (rows the paper has
  but no method here computes: SDCF, and CAM without an ImageNet classifier, may stay empty);
  ``diff`` = ours - paper.
- ``scale_study``: every ablation method at every level L (default: the paper profile's
  ``scale_levels``) on oxford5k and paris6k, finite mAP.
- ``revisited``: R-MAC and ours, with and without QE, on roxford5k and rparis6k: finite
  Easy / Medium / Hard mAP and mP@10.
- ``whitening``: R-MAC without and with whitening on oxford5k and paris6k, finite mAP.
- ``datasets``: the four test sets with their database and query counts.
- where the profile learns attention by metric learning (``metric.enabled``: the paper
  profile, on SfM-120k; beyond the paper): ``metric_training`` with one chosen run per kind
  and finite validation mAP, and the metric-learned rows of ``ablation``, ``rpn``, ``sota``
  (with QE), ``scale_study`` (every L) and ``revisited``, finite and labelled "trained here
  by metric learning".
- every method row of ablation, rpn, sota, scale_study and revisited labelled in a ``weights``
  column: rows with an attention model "released weights" or "trained here" ("+ regional
  attention": trained here, the authors released only the context-aware model), the others
  one of those or "none (no attention)".
- ``REPORT.md`` (issue 24): the ablation, rpn and sota tables in the paper's layout, every
  paper row, ``<Dataset> paper`` and ``<Dataset> ours (diff)`` columns, the paper's values exact.
- with ``--expected`` (``expected.json`` of ``scripts/paper_fixtures.py``): the dataset counts
  match, the known-answer queries have AP 100 in every AP column of ``per_query``, and the
  images the fixture made unusable (a distractor a few pixels wide, a whitening image 30 px
  high) are named in a report beside the results (a table or metrics file).
- with ``--profile paper-quick`` (issue 23), what that profile leaves out by design: no
  ``oxford105k`` / ``paris106k`` columns (no distractors), and the '+ regional attention' rows
  present with the paper's values but empty, labelled as needing training (it trains nothing);
  the skipped images it never reads (distractors, SfM-120k) are not required in a report.
- with ``--mirror-log`` (the loopback mirror's request log; records from line
  ``--mirror-log-from`` on): no request for a file the profile does not need (SfM-120k,
  distractors, ImageNet).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from regattn_lib.experiments.metric_plan import METRIC_LOG  # noqa: E402 - after the path set-up
from regattn_lib.experiments.pipeline import (  # noqa: E402
    METRIC_CONTEXT,
    METRIC_KINDS,
    METRIC_REGIONAL,
    TRAINED_METRIC,
)
from regattn_lib.experiments.profiles import PAPER, Profile, get_profile  # noqa: E402
from regattn_lib.experiments.report_page import PRETTY, report_table  # noqa: E402
from regattn_lib.experiments.reports import PAPER_ABLATION, PAPER_RPN, PAPER_SOTA  # noqa: E402

#: Tables with the paper's values beside ours: name -> (paper table, its columns).
PAPER_TABLES = {
    "ablation": (PAPER_ABLATION, ("oxford5k", "paris6k", "time_s")),
    "rpn": (PAPER_RPN, ("oxford5k", "paris6k")),
    "sota": (PAPER_SOTA, ("oxford5k", "paris6k", "oxford105k", "paris106k")),
}
#: Paper rows no method here computes (SDCF), or only with an ImageNet classifier (CAM).
PAPER_ONLY_ROWS = frozenset({"SDCF", "SDCF+QE", "CAM", "CAM+QE"})
LABELS = ("released weights", "trained here")
#: The label of rows without an attention model (R-MAC, MAC, ...), as pipeline.NO_ATTENTION.
NO_ATTENTION = "none (no attention)"
#: Rows whose descriptor uses an attention model.
ATTENTION_ROWS = frozenset({"+ regional attention", "+ context awareness", "Ours", "Ours+QE"})
#: Rows whose weights cannot be the authors': they released the context-aware model only.
MUST_BE_TRAINED = frozenset({"+ regional attention"})
ABLATION_METHODS = tuple(PAPER_ABLATION["method"])
CLASSIC_SETS = ("oxford5k", "paris6k")
REVISITED_SETS = ("roxford5k", "rparis6k")
REVISITED_METHODS = ("R-MAC", "Ours", "R-MAC+QE", "Ours+QE")
PROTOCOL_COLUMNS = (
    "easy mAP",
    "medium mAP",
    "hard mAP",
    "easy mP@10",
    "medium mP@10",
    "hard mP@10",
)
LABELLED_TABLES = ("ablation", "rpn", "sota", "scale_study", "revisited")
#: Tolerance on values read back from CSV (written with 4 significant digits).
ABS_TOL, REL_TOL = 0.011, 2e-3


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _show(v: Any) -> str:
    """A cell as the CSV has it: numbers plainly (``nan`` for an empty cell), text quoted."""
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return repr(v)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= ABS_TOL + REL_TOL * max(abs(a), abs(b))


def _read(tables: Path, name: str, problems: list[str]) -> pd.DataFrame | None:
    path = tables / f"{name}.csv"
    if not path.is_file():
        problems.append(f"{name}: table {path} is missing")
        return None
    try:
        return pd.read_csv(path)
    except Exception as e:  # empty or garbled file
        problems.append(f"{name}: cannot read {path}: {e}")
        return None


def _need_columns(df: pd.DataFrame, name: str, cols: Iterable[str], problems: list[str]) -> bool:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        problems.append(f"{name}: missing column(s) {missing} (has {list(df.columns)})")
    return not missing


def _check_label(name: str, row: str, label: Any, problems: list[str]) -> None:
    """Rows with an attention model say whose weights; the others may say there is none."""
    text = label.strip() if isinstance(label, str) else ""
    method = row.split("|")[-1]
    allowed = LABELS if method in ATTENTION_ROWS else (*LABELS, NO_ATTENTION)
    if not any(lab in text for lab in allowed):
        problems.append(
            f"{name}: row {row!r} is not labelled {' or '.join(map(repr, allowed))} in column "
            f"'weights' (found {_show(label)})"
        )
    elif method in MUST_BE_TRAINED and "trained here" not in text:
        problems.append(
            f"{name}: row {row!r} says {label!r}, but the authors released only the "
            "context-aware model: it must be 'trained here'"
        )


#: Where a row a profile does not compute says why: "needs training" (pipeline.NOT_TRAINED).
NEEDS_TRAINING = "needs training"


def untrained_rows(profile: Profile) -> frozenset[str]:
    """Attention rows ``profile`` leaves empty by design: '+ regional attention' when it trains
    nothing (``train.train_set=None``: the authors released only the context-aware model)."""
    return frozenset(MUST_BE_TRAINED) if profile.train.train_set is None else frozenset()


def table_columns(name: str, profile: Profile) -> tuple[str, ...]:
    """The paper's columns of table ``name`` that ``profile`` computes (no 105k/106k columns
    without distractors)."""
    cols = PAPER_TABLES[name][1]
    if profile.distractors is None:
        cols = tuple(c for c in cols if c not in ("oxford105k", "paris106k"))
    return cols


def check_paper_table(
    df: pd.DataFrame,
    name: str,
    problems: list[str],
    cols: Sequence[str] | None = None,
    untrained: Iterable[str] = (),
) -> None:
    """Rows and columns of the paper, its values, our finite values, diffs and labels.

    ``cols``: the paper's columns required (default: all of them); ``untrained``: rows that
    must be there with the paper's values but may be empty when labelled as needing training.
    """
    paper, all_cols = PAPER_TABLES[name]
    cols = tuple(all_cols if cols is None else cols)
    untrained = frozenset(untrained)
    wanted = [f"{c} {s}" for c in cols for s in ("paper", "ours", "diff")]
    if not _need_columns(df, name, ["method", "weights", *wanted], problems):
        return
    rows = {str(m): i for i, m in enumerate(df["method"])}
    for _, prow in paper.iterrows():
        method = str(prow["method"])
        if method not in rows:
            problems.append(f"{name}: the paper's row {method!r} is missing")
            continue
        row = df.iloc[rows[method]]
        computed = any(_finite(row[f"{c} ours"]) for c in cols)
        for c in cols:
            pv, ours, diff = prow[c], row[f"{c} ours"], row[f"{c} diff"]
            if _finite(pv) != _finite(row[f"{c} paper"]) or (
                _finite(pv) and not _close(float(pv), float(row[f"{c} paper"]))
            ):
                problems.append(
                    f"{name}: row {method!r}, column '{c} paper' is {_show(row[f'{c} paper'])}, "
                    f"the paper has {_show(pv)}"
                )
            if not _finite(ours):
                if not computed and method in untrained:
                    continue
                if computed or method not in PAPER_ONLY_ROWS:
                    problems.append(
                        f"{name}: row {method!r}, column '{c} ours' is {_show(ours)}, "
                        "not a finite number"
                    )
                continue
            if _finite(pv) and not (_finite(diff) and _close(float(diff), float(ours) - float(pv))):
                problems.append(
                    f"{name}: row {method!r}, column '{c} diff' is {_show(diff)}, expected ours - "
                    f"paper = {float(ours) - float(pv):.4g}"
                )
        if computed:
            _check_label(name, method, row["weights"], problems)
        elif method in untrained and NEEDS_TRAINING not in str(row["weights"]):
            problems.append(
                f"{name}: row {method!r} is empty but its 'weights' ({_show(row['weights'])}) "
                f"does not say it {NEEDS_TRAINING}"
            )
    for _, row in df.iterrows():
        method = str(row["method"])
        if method not in set(paper["method"]):  # our extra rows (MAC, SPoC, ...)
            for c in cols:
                if not _finite(row[f"{c} ours"]):
                    problems.append(
                        f"{name}: row {method!r}, column '{c} ours' is "
                        f"{_show(row[f'{c} ours'])}, not a finite number"
                    )
            _check_label(name, method, row["weights"], problems)


def check_scale_study(
    df: pd.DataFrame, levels: Sequence[int], problems: list[str], untrained: Iterable[str] = ()
) -> None:
    name = "scale_study"
    if not _need_columns(df, name, ["dataset", "method", "levels", "mAP", "weights"], problems):
        return
    for ds in CLASSIC_SETS:
        for method in [m for m in ABLATION_METHODS if m not in set(untrained)]:
            for lv in levels:
                sel = df[(df["dataset"] == ds) & (df["method"] == method) & (df["levels"] == lv)]
                if sel.empty:
                    problems.append(f"{name}: no row for {ds}, {method!r}, L = {lv}")
                    continue
                if not _finite(sel["mAP"].iloc[0]):
                    problems.append(
                        f"{name}: {ds}, {method!r}, L = {lv}: mAP is {_show(sel['mAP'].iloc[0])}"
                    )
                _check_label(name, f"{ds} L={lv}|{method}", sel["weights"].iloc[0], problems)


def check_revisited(df: pd.DataFrame, problems: list[str]) -> None:
    name = "revisited"
    if not _need_columns(df, name, ["dataset", "method", "weights", *PROTOCOL_COLUMNS], problems):
        return
    for ds in REVISITED_SETS:
        for method in REVISITED_METHODS:
            sel = df[(df["dataset"] == ds) & (df["method"] == method)]
            if sel.empty:
                problems.append(f"{name}: no row for {ds}, {method!r}")
                continue
            row = sel.iloc[0]
            bad = [c for c in PROTOCOL_COLUMNS if not _finite(row[c])]
            if bad:
                problems.append(f"{name}: {ds}, {method!r}: {bad} not finite")
            _check_label(name, f"{ds}|{method}", row["weights"], problems)


#: The state-of-the-art table's row of the metric-learned attention (and its +QE row).
OURS_METRIC = "Ours (metric learning)"
#: Rows of the attention learned by metric learning (beyond the paper), per table.
METRIC_ROWS = {
    "ablation": (METRIC_REGIONAL, METRIC_CONTEXT),
    "rpn": (METRIC_REGIONAL, METRIC_CONTEXT),
    "sota": (OURS_METRIC, f"{OURS_METRIC}+QE"),
}


def _check_metric_label(name: str, row: str, label: Any, problems: list[str]) -> None:
    if not (isinstance(label, str) and TRAINED_METRIC in label):
        problems.append(
            f"{name}: row {row!r} is not labelled {TRAINED_METRIC!r} in column 'weights' "
            f"(found {_show(label)})"
        )


def check_metric_rows(
    tables: Path, prof: Profile, levels: Sequence[int], problems: list[str]
) -> None:
    """A profile that learns attention by metric learning (``metric.enabled``; the paper
    profile, on SfM-120k): its log (``metric_training``: both kinds, one chosen run each,
    finite validation mAP) and its rows in the ablation, RPN, state-of-the-art (with and
    without QE), scale-study and revisited tables, finite and labelled as trained here by
    metric learning."""
    if not prof.metric.enabled:
        return
    log = _read(tables, METRIC_LOG, problems)
    if log is not None and _need_columns(
        log, METRIC_LOG, ["kind", "chosen", "val mAP", "val mAP R-MAC"], problems
    ):
        for kind in METRIC_KINDS.values():
            chosen = log[(log["kind"] == kind) & log["chosen"].astype(str).eq("True")]
            if len(chosen) != 1:
                problems.append(f"{METRIC_LOG}: {len(chosen)} chosen run(s) of {kind}, not 1")
            elif not all(_finite(chosen[c].iloc[0]) for c in ("val mAP", "val mAP R-MAC")):
                problems.append(f"{METRIC_LOG}: {kind}'s validation mAP is not finite")
    for name, rows in METRIC_ROWS.items():
        df = _read(tables, name, problems)
        if df is None or not _need_columns(df, name, ["method", "weights"], problems):
            continue
        cols = [f"{c} ours" for c in table_columns(name, prof) if c != "time_s"]
        for row in rows:
            sel = df[df["method"] == row]
            if sel.empty:
                problems.append(f"{name}: no row {row!r} (metric learning)")
                continue
            bad = [c for c in cols if c not in df.columns or not _finite(sel[c].iloc[0])]
            if bad:
                problems.append(f"{name}: row {row!r}: {bad} missing or not finite")
            _check_metric_label(name, row, sel["weights"].iloc[0], problems)
    df = _read(tables, "scale_study", problems)
    need = ["dataset", "method", "levels", "mAP", "weights"]
    if df is not None and _need_columns(df, "scale_study", need, problems):
        for ds in CLASSIC_SETS:
            for row in METRIC_ROWS["ablation"]:
                for lv in levels:
                    sel = df[(df["dataset"] == ds) & (df["method"] == row) & (df["levels"] == lv)]
                    if sel.empty or not _finite(sel["mAP"].iloc[0]):
                        problems.append(f"scale_study: {ds}, {row!r}, L = {lv}: no finite mAP")
                    else:
                        _check_metric_label("scale_study", row, sel["weights"].iloc[0], problems)
    df = _read(tables, "revisited", problems)
    need = ["dataset", "method", "weights", *PROTOCOL_COLUMNS]
    if df is not None and _need_columns(df, "revisited", need, problems):
        for ds in REVISITED_SETS:
            for row in METRIC_ROWS["sota"]:
                sel = df[(df["dataset"] == ds) & (df["method"] == row)]
                if sel.empty or not all(_finite(sel[c].iloc[0]) for c in PROTOCOL_COLUMNS):
                    problems.append(f"revisited: {ds}, {row!r}: no finite Easy/Medium/Hard row")
                else:
                    _check_metric_label("revisited", row, sel["weights"].iloc[0], problems)


def check_whitening(df: pd.DataFrame, problems: list[str]) -> None:
    name = "whitening"
    if not _need_columns(df, name, ["dataset", "method"], problems):
        return
    maps = [c for c in df.columns if c.endswith("mAP")]
    if not maps:
        problems.append(f"{name}: no mAP column (has {list(df.columns)})")
        return
    for ds in CLASSIC_SETS:
        sel = df[df["dataset"] == ds]
        methods = [str(m) for m in sel["method"]]
        if not any("no whitening" in m for m in methods):
            problems.append(f"{name}: no R-MAC row without whitening for {ds}")
        if not any("whitening" in m and "no whitening" not in m for m in methods):
            problems.append(f"{name}: no R-MAC row with whitening for {ds}")
        for _, row in sel.iterrows():
            bad = [c for c in maps if not _finite(row[c])]
            if bad:
                problems.append(f"{name}: {ds}, {row['method']!r}: {bad} not finite")


def check_datasets(df: pd.DataFrame, expected: dict | None, problems: list[str]) -> None:
    name = "datasets"
    if not _need_columns(df, name, ["dataset", "database", "queries"], problems):
        return
    for ds in (*CLASSIC_SETS, *REVISITED_SETS):
        sel = df[df["dataset"] == ds]
        if sel.empty:
            problems.append(f"{name}: no row for {ds}")
            continue
        row = sel.iloc[0]
        for col in ("database", "queries"):
            if not _finite(row[col]) or float(row[col]) < 1:
                problems.append(f"{name}: {ds} has {col} = {_show(row[col])}")
        want = (expected or {}).get("datasets", {}).get(ds)
        if want:
            for col in ("database", "queries"):
                if _finite(row[col]) and int(row[col]) != int(want[col]):
                    problems.append(
                        f"{name}: {ds} has {col} = {int(row[col])}, the fixture has {want[col]}"
                    )


def check_known_answer(tables: Path, expected: dict, problems: list[str]) -> None:
    ka = expected.get("known_answer")
    if not ka:
        return
    df = _read(tables, "per_query", problems)
    if df is None or not _need_columns(df, "per_query", ["query"], problems):
        return
    aps = [c for c in df.columns if c.startswith("AP ")]
    if not aps:
        problems.append(f"per_query: no 'AP <method>' column (has {list(df.columns)})")
        return
    rows = {str(q): i for i, q in enumerate(df["query"])}
    for q in ka["queries"]:
        if q not in rows:
            problems.append(f"per_query: known-answer query {q!r} ({ka['dataset']}) is missing")
            continue
        for c in aps:
            v = df.iloc[rows[q]][c]
            if not (_finite(v) and abs(float(v) - float(ka["ap"])) <= 1e-6):
                problems.append(
                    f"per_query: known-answer query {q!r}: {c} = {_show(v)}, must be "
                    f"{ka['ap']:g} (its positives are near duplicates)"
                )


#: Folders of a results directory that hold reports (not the executed notebooks and logs).
REPORT_SUFFIXES = (".csv", ".md", ".json", ".txt", ".tsv")


def check_skipped_reported(results_dir: Path, names: Sequence[str], problems: list[str]) -> None:
    """Each of ``names`` (images the fixture made unusable) appears in a report of
    ``results_dir`` (any table, metrics or text file outside ``notebooks/``)."""
    texts = []
    for p in sorted(results_dir.rglob("*")):
        rel = p.relative_to(results_dir)
        if p.is_file() and p.suffix in REPORT_SUFFIXES and rel.parts[0] != "notebooks":
            texts.append(p.read_text(errors="replace"))
    for name in names:
        if not any(name in t for t in texts):
            problems.append(
                f"skipped images: {name!r}, which cannot be used, is named in no report under "
                f"{results_dir} (tables, metrics; notebooks/ not counted)"
            )


def skipped_to_report(expected: dict, profile: Profile) -> list[str]:
    """The fixture's unusable images that ``profile`` reads: a profile without distractors
    never sees the tiny distractor, one not whitened on SfM-120k never the small SfM image."""
    names = list(expected.get("must_report_skipped", []))
    unused: set[str] = set()
    if profile.distractors is None and expected.get("distractors", {}).get("tiny"):
        unused.add(Path(expected["distractors"]["tiny"]).stem)
    if profile.whitening_set not in ("sfm120k", "retrieval-SfM-120k"):
        unused.update(expected.get("whitening", {}).get("under_200px", []))
    return [n for n in names if n not in unused]


#: Mirror paths a profile may not request: (pattern, what it is, whether the profile needs it).
FORBIDDEN_REQUESTS = (
    # cirtorch's training data: data/train/ims/ims.tar.gz and data/train/dbs/retrieval-SfM-*.pkl
    ("/data/train/", "SfM-120k", lambda p: p.whitening_set in ("sfm120k", "retrieval-SfM-120k")),
    ("retrieval-SfM", "SfM-120k", lambda p: p.whitening_set in ("sfm120k", "retrieval-SfM-120k")),
    ("revisitop1m", "distractors", lambda p: p.distractors is not None),
    ("flickr100k", "distractors", lambda p: p.distractors is not None),
    # ImageNet itself (never downloaded: a local folder), not the ImageNet-trained networks
    ("ILSVRC", "ImageNet", lambda p: p.train.train_set is not None),
    ("image-net.org", "ImageNet", lambda p: p.train.train_set is not None),
)


def check_requests(
    log: Path, profile: Profile, problems: list[str], start: int = 0
) -> list[dict[str, Any]]:
    """No request of the mirror's log (from record ``start`` on) is for a file ``profile`` does
    not need. Returns the records checked."""
    records = []
    for line in log.read_text().splitlines()[start:]:
        if line.strip():
            records.append(json.loads(line))
    for pattern, what, needed in FORBIDDEN_REQUESTS:
        if needed(profile):
            continue
        hits = sorted({r["path"] for r in records if pattern.lower() in r["path"].lower()})
        if hits:
            problems.append(
                f"requests: profile {profile.name} requested {len(hits)} {what} file(s) it does "
                f"not need, e.g. {hits[0]}"
            )
    return records


def check_results(
    results_dir: str | Path,
    expected: dict | None = None,
    levels: Sequence[int] | None = None,
    profile: str | Profile = "paper",
    report: bool = True,
) -> list[str]:
    """Every problem found in ``results_dir/tables/`` and its ``REPORT.md`` (empty: all pass).

    ``expected``: the fixture's ``expected.json`` (dataset counts, known-answer queries), or
    ``None``. ``levels``: the scale study's levels L (default the profile's ``scale_levels``).
    ``profile``: what the results were made with (``paper`` or ``paper-quick``).
    """
    prof = get_profile(profile)
    untrained = untrained_rows(prof)
    tables = Path(results_dir) / "tables"
    problems: list[str] = []
    if not tables.is_dir():
        return [f"no tables folder {tables}"]
    for name in PAPER_TABLES:
        df = _read(tables, name, problems)
        if df is not None:
            check_paper_table(df, name, problems, table_columns(name, prof), untrained)
    df = _read(tables, "scale_study", problems)
    if df is not None:
        check_scale_study(df, list(levels or prof.scale_levels), problems, untrained)
    df = _read(tables, "revisited", problems)
    if df is not None:
        check_revisited(df, problems)
    df = _read(tables, "whitening", problems)
    if df is not None:
        check_whitening(df, problems)
    df = _read(tables, "datasets", problems)
    if df is not None:
        check_datasets(df, expected, problems)
    check_metric_rows(tables, prof, list(levels or prof.scale_levels), problems)
    if expected:
        check_known_answer(tables, expected, problems)
        check_skipped_reported(Path(results_dir), skipped_to_report(expected, prof), problems)
    if report:
        check_report(Path(results_dir), prof, problems)
    return problems


def check_report(results_dir: Path, prof: Profile, problems: list[str]) -> None:
    """``REPORT.md`` (issue 24): each paper table in the paper's layout, every paper row, every
    paper column the profile has as ``<Dataset> paper`` beside ``<Dataset> ours (diff)``, and
    the paper's values exact (as published, e.g. ``70.1``)."""
    path = results_dir / "REPORT.md"
    if not path.is_file():
        problems.append(f"no report {path}")
        return
    text = path.read_text()
    for name, (paper, _) in PAPER_TABLES.items():
        table = report_table(text, name)
        if table is None:
            problems.append(f"REPORT.md: no {name} table")
            continue
        rows = table.set_index("method")
        for col in [c for c in table_columns(name, prof) if c != "time_s"]:
            head = PRETTY.get(col, col)
            for want in (f"{head} paper", f"{head} ours (diff)"):
                if want not in table.columns:
                    problems.append(f"REPORT.md {name}: no column '{want}'")
        for _, prow in paper.iterrows():
            method = prow["method"]
            if method not in rows.index:
                problems.append(f"REPORT.md {name}: the paper's row '{method}' is missing")
                continue
            for col in [c for c in table_columns(name, prof) if c != "time_s"]:
                head = f"{PRETTY.get(col, col)} paper"
                v = prow[col]
                want = "" if pd.isna(v) else f"{v:g}"
                if head in rows.columns and rows.loc[method, head] != want:
                    problems.append(
                        f"REPORT.md {name}: '{method}' {head} says "
                        f"{rows.loc[method, head]!r}, the paper {want!r}"
                    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", type=Path, help="results/<profile>/ (holding tables/)")
    ap.add_argument(
        "--expected",
        type=Path,
        default=None,
        help="expected.json of scripts/paper_fixtures.py (counts, known answer)",
    )
    ap.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=None,
        help=f"scale-study levels required (default {list(PAPER.scale_levels)})",
    )
    ap.add_argument("--profile", default="paper", help="paper (default) or paper-quick")
    ap.add_argument(
        "--mirror-log",
        type=Path,
        default=None,
        help="the loopback mirror's request log: no file the profile does not need requested",
    )
    ap.add_argument(
        "--mirror-log-from", type=int, default=0, help="first record of this run in the log"
    )
    args = ap.parse_args(argv)
    expected = json.loads(args.expected.read_text()) if args.expected else None
    problems = check_results(args.results_dir, expected, args.levels, args.profile)
    n_requests = None
    if args.mirror_log is not None:
        records = check_requests(
            args.mirror_log, get_profile(args.profile), problems, args.mirror_log_from
        )
        n_requests = len(records)
    if problems:
        print(
            f"check_paper_results: {len(problems)} problem(s) in {args.results_dir}:",
            file=sys.stderr,
        )
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    known = (
        f", known answer AP 100 on {len(expected['known_answer']['queries'])} queries"
        if (expected and expected.get("known_answer"))
        else ""
    )
    if n_requests is not None:
        known += f"; none of the mirror's {n_requests} requests was for a file {args.profile} does not need"
    print(f"check_paper_results: all tables complete in {args.results_dir}{known}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
