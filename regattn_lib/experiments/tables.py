"""Our numbers laid out beside the paper's: paper vs ours vs difference, gains with their
intervals and seed spread, the provenance of each row's weights, the training summary.

Pure table work on DataFrames; ``studies`` computes the numbers, ``reports`` writes the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from regattn_lib.core.stats import paired_gain
from regattn_lib.experiments.reports import side_by_side

#: Column naming where each row's attention weights came from (``pipeline.provenance``).
WEIGHTS = "weights"
#: Column counting the models (seeds) a row's numbers average.
SEEDS = "seeds"
PAPER_ONLY = "paper only"


def compare_to_paper(
    ours: pd.DataFrame,
    paper: pd.DataFrame,
    datasets: Sequence[str],
    extra: Sequence[str] = (),
    baseline: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Paper vs ours vs difference where our columns are the paper's datasets.

    Rows: ours in order, then the paper's rows we do not compute (e.g. SDCF), with empty
    "ours" cells. On other datasets (the synthetic benchmark) a difference would compare unlike
    things: the table then shows the paper's columns as a reference beside ours, and each
    side's gain over its own ``baseline`` row (default: the first row, R-MAC), which is
    comparable. Returns the table and its notes.
    """
    # labels and gains are not scores to compare: _with_weights and _with_intervals carry them
    datasets = [d for d in datasets if d not in (WEIGHTS, SEEDS) and not _is_gain(d)]
    methods = list(ours["method"]) + [m for m in paper["method"] if m not in set(ours["method"])]
    ours = ours.set_index("method").reindex(methods).reset_index()
    if WEIGHTS in ours.columns:
        ours[WEIGHTS] = ours[WEIGHTS].fillna(PAPER_ONLY)
    # gains and their intervals are carried by _with_intervals; labels by _with_weights
    cols = list(datasets) + [
        c for c in extra if c in ours.columns and c not in (WEIGHTS, SEEDS) and not _is_gain(c)
    ]
    if all(d in paper.columns for d in datasets):
        table = _with_intervals(side_by_side(ours, paper, cols), ours, cols)
        return _with_weights(table, ours), []
    base = baseline if baseline is not None else methods[0]
    ref = paper.set_index("method").reindex(methods)
    out = pd.DataFrame({"method": methods})
    for c in [c for c in paper.columns if c != "method"]:
        out[f"{c} paper"] = ref[c].to_numpy(dtype=float)
    for c in cols:
        out[f"{c} ours"] = ours[c].to_numpy(dtype=float)
    ib = methods.index(base)
    for c in [c for c in paper.columns if c not in ("method", "time_s")]:
        out[f"{c} paper gain"] = out[f"{c} paper"] - out[f"{c} paper"].iloc[ib]
    for d in datasets:
        out[f"{d} ours gain"] = out[f"{d} ours"] - out[f"{d} ours"].iloc[ib]
    out = _with_intervals(out, ours, cols)
    note = (
        f"Ours is measured on {', '.join(datasets)}, not on the paper's datasets: the paper's "
        f"values are shown for reference, and 'gain' columns compare each side to its own {base} row."
    )
    return _with_weights(out, ours), [note]


def _is_gain(column: str) -> bool:
    return column.endswith(" gain") or column.endswith(INTERVAL_SUFFIXES)


def _with_weights(table: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ours' ``weights`` column (where each row's attention came from) second,
    and ``seeds`` (how many models a row averages) after it."""
    if WEIGHTS in ours.columns:
        table.insert(1, WEIGHTS, ours[WEIGHTS].to_numpy())
    if SEEDS in ours.columns:
        table.insert(2 if WEIGHTS in ours.columns else 1, SEEDS, ours[SEEDS].to_numpy())
    return table


def gain_intervals(
    aps: dict[str, np.ndarray | None], baseline: str, column: str
) -> dict[str, list[float]]:
    """Each method's gain in mAP over ``baseline`` on one column, with its 95% paired-bootstrap
    interval over queries (``stats.paired_gain``).

    ``aps``: method -> per-query APs (Q,) or (S, Q) for S seeds (``None``: no value). Returns
    the columns ``<column> gain``, ``<column> gain low``, ``<column> gain high`` (and
    ``<column> gain seed sd`` when a method has several seeds), one value per method in order.
    """
    base = aps[baseline]
    cols: dict[str, list[float]] = {f"{column} gain{k}": [] for k in ("", " low", " high")}
    sds: list[float] = []
    for values in aps.values():
        if values is None or base is None:
            g = None
        else:
            g = paired_gain(values, base)
        cols[f"{column} gain"].append(np.nan if g is None else g.gain)
        cols[f"{column} gain low"].append(np.nan if g is None else g.low)
        cols[f"{column} gain high"].append(np.nan if g is None else g.high)
        sds.append(np.nan if g is None or g.n_seeds < 2 else g.seed_sd)
    if any(not np.isnan(v) for v in sds):
        cols[f"{column} gain seed sd"] = sds
    return cols


#: The column part of the metric-learned rows' gain over the paper's recipe of their kind.
VS_RECIPE = "vs paper's recipe"


def paired_intervals(
    aps: dict[str, np.ndarray | None], pairs: dict[str, str], column: str
) -> dict[str, list[float]]:
    """The gain of each method in ``pairs`` over its partner (``pairs[method]``), with its 95%
    paired-bootstrap interval over queries, on one column: ``<column> gain``, ``... low``,
    ``... high``, one value per method of ``aps`` in order (NaN for methods not in ``pairs``
    or whose partner is missing). The metric-learned rows against the paper's recipe."""
    cols: dict[str, list[float]] = {f"{column} gain{k}": [] for k in ("", " low", " high")}
    for method, values in aps.items():
        partner = pairs.get(method)
        base = aps.get(partner) if partner is not None else None
        g = None if values is None or base is None else paired_gain(values, base)
        cols[f"{column} gain"].append(np.nan if g is None else g.gain)
        cols[f"{column} gain low"].append(np.nan if g is None else g.low)
        cols[f"{column} gain high"].append(np.nan if g is None else g.high)
    return cols


INTERVAL_SUFFIXES = (" gain low", " gain high", " gain seed sd")


def _with_intervals(out: pd.DataFrame, ours: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Carry ours' gain and interval columns (``gain_intervals``) into a compared table, as
    ``<c> ours gain``, ``<c> ours gain low`` ..."""
    for c in columns:
        for vs in ("", f" {VS_RECIPE}"):
            for suffix in ("gain",) + tuple(x.strip() for x in INTERVAL_SUFFIXES):
                src = f"{c}{vs} {suffix}"
                if src in ours.columns:
                    out[f"{c} ours{vs} {suffix}"] = ours[src].to_numpy(dtype=float)
    return out


TRAINING_COLUMNS = [
    "stage",
    "steps",
    "finished",
    "kept step",
    "kept val_loss",
    "kept val_acc",
    "last val_loss",
    "last val_acc",
]


def training_summary(runs: dict) -> pd.DataFrame:
    """One row per training stage: iterations run, the weights kept (the last iteration's, or
    the best validated ones under model selection: their step, validation loss and accuracy)
    and the last validation."""
    import torch

    rows = []
    for stage, run in runs.items():
        val = run.history.dropna(subset=["val_acc"])
        kept_step = run.steps
        if run.artefact is not None:
            config = torch.load(run.artefact, map_location="cpu", weights_only=True)["config"]
            kept_step = int(config.get("selected_step", run.steps))
        at = val[val["step"] == kept_step]
        kept = at.iloc[-1] if len(at) else None
        last = val.iloc[-1] if len(val) else None
        nan = float("nan")
        rows.append(
            {
                "stage": stage,
                "steps": run.steps,
                "finished": run.finished,
                "kept step": kept_step,
                "kept val_loss": float(kept["val_loss"]) if kept is not None else nan,
                "kept val_acc": float(kept["val_acc"]) if kept is not None else nan,
                "last val_loss": float(last["val_loss"]) if last is not None else nan,
                "last val_acc": float(last["val_acc"]) if last is not None else nan,
            }
        )
    return pd.DataFrame(rows, columns=TRAINING_COLUMNS)


def seed_subset_table(training: pd.DataFrame, metric_log: pd.DataFrame, keep: int) -> pd.DataFrame:
    """What keeping only the first ``keep`` seeds changes on validation, read from a run's logs:
    per attention model (the paper's recipe from ``training``, notebook 02's
    ``tables/training.csv``; metric learning from ``metric_log``, its
    ``metrics/metric_training.csv``, the chosen rate's runs), its validation measure's mean and
    sd over every seed and over the first ``keep``, and the change of the mean. The models of
    the kept seeds are the same runs: only the average loses the others."""
    rows = []

    def add(model: str, measure: str, by_seed: pd.Series) -> None:
        by_seed = by_seed.sort_index()
        kept = by_seed.iloc[:keep]
        rows.append(
            {
                "model": model,
                "measure": measure,
                "seeds": len(by_seed),
                "mean": by_seed.mean(),
                "sd": by_seed.std(ddof=1),
                "seeds kept": len(kept),
                "mean kept": kept.mean(),
                "sd kept": kept.std(ddof=1),
                "change": kept.mean() - by_seed.mean(),
            }
        )

    for kind in ("regional", "context"):
        sel = training[training["stage"].str.fullmatch(rf"{kind}( seed \d+)?")]
        seeds = [0 if s == kind else int(s.rsplit(" ", 1)[1]) for s in sel["stage"]]
        for col in ("kept val_loss", "kept val_acc"):
            add(f"{kind} (the paper's recipe)", col, pd.Series(sel[col].to_numpy(), index=seeds))
    runs = metric_log[metric_log["chosen"].astype(bool) | (metric_log["stage"] == "seed")]
    for kind, sel in runs.groupby("kind", sort=False):
        add(
            str(kind), "val mAP", pd.Series(sel["val mAP"].to_numpy(), index=sel["seed"].to_numpy())
        )
    return pd.DataFrame(rows)
