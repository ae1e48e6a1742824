"""Tables (paper vs ours vs difference) and figures, written atomically under results/<profile>/."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regattn_lib.experiments.compact import read_notes, to_markdown
from regattn_lib.runtime.atomic import atomic_write, atomic_write_json, atomic_write_text

#: The paper's numbers (mAP %, from the BMVC 2018 slides; spec section 3).
PAPER_ABLATION = pd.DataFrame(
    {
        "method": ["R-MAC + PCA", "+ regional attention", "+ context awareness"],
        "oxford5k": [70.1, 74.9, 76.8],
        "paris6k": [85.4, 86.0, 87.5],
        "time_s": [0.095, 0.115, 0.123],
    }
)
PAPER_RPN = pd.DataFrame(
    {
        "method": ["R-MAC + PCA", "+ regional attention", "+ context awareness"],
        "oxford5k": [64.7, 66.6, 67.9],
        "paris6k": [75.5, 75.8, 76.4],
    }
)
#: State of the art, ResNet-101, 2048-d. "Ours+QE" is not in the slides: left empty (NaN).
PAPER_SOTA = pd.DataFrame(
    {
        "method": [
            "SDCF",
            "CroW",
            "R-MAC",
            "CAM",
            "Ours",
            "SDCF+QE",
            "CroW+QE",
            "R-MAC+QE",
            "CAM+QE",
            "Ours+QE",
        ],
        "oxford5k": [69.1, 68.7, 70.1, 69.9, 76.8, 68.5, 69.5, 73.8, 71.3, np.nan],
        "paris6k": [81.7, 82.8, 85.4, 84.3, 87.5, 84.9, 85.1, 86.4, 86.1, np.nan],
        "oxford105k": [65.4, 62.7, 66.9, 64.3, 73.6, 66.8, 66.7, 71.8, 68.7, np.nan],
        "paris106k": [74.3, 75.1, 80.8, 77.1, 82.5, 79.4, 79.9, 82.6, 80.8, np.nan],
    }
)
PAPER_CITATION = (
    "Paper values: J. Kim and S.-E. Yoon, 'Regional Attention Based Deep Feature for Image "
    "Retrieval', BMVC 2018 (presentation slides)."
)
PAPER_COLUMN_FOR = {
    "oxford5k": "oxford5k",
    "paris6k": "paris6k",
    "roxford5k": None,
    "rparis6k": None,
    "oxford105k": "oxford105k",
    "paris106k": "paris106k",
}


def side_by_side(
    ours: pd.DataFrame, paper: pd.DataFrame | None, columns: Sequence[str], key: str = "method"
) -> pd.DataFrame:
    """For each column c: ``c paper``, ``c ours``, ``c diff`` (ours - paper), rows by ``key``.

    Rows or columns the paper does not have get NaN in ``paper`` and ``diff``.
    """
    out = pd.DataFrame({key: ours[key]})
    paper_idx = paper.set_index(key) if paper is not None else None
    for c in columns:
        ours_c = ours[c].to_numpy(dtype=float)
        if paper_idx is not None and c in paper_idx.columns:
            pap = paper_idx[c].reindex(ours[key]).to_numpy(dtype=float)
        else:
            pap = np.full(len(ours), np.nan)
        out[f"{c} paper"] = pap
        out[f"{c} ours"] = ours_c
        out[f"{c} diff"] = ours_c - pap
    return out


def write_table(
    df: pd.DataFrame, tables_dir: str | os.PathLike, name: str, notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (every column, for machines) and ``<name>.md`` (the compact layout of
    ``compact.to_markdown`` for readers, its notes under the table)."""
    tables_dir = Path(tables_dir)
    csv = atomic_write_text(tables_dir / f"{name}.csv", df.to_csv(index=False, float_format="%.4g"))
    mdp = atomic_write_text(tables_dir / f"{name}.md", compact_markdown(csv, notes))
    return csv, mdp


def compact_markdown(csv: str | os.PathLike, notes: Sequence[str] = ()) -> str:
    """The compact Markdown of a written CSV: built from the file, so the Markdown shows exactly
    the numbers the CSV holds (at its ``%.4g``)."""
    return to_markdown(pd.read_csv(csv), notes)


def rewrite_markdown(csv: str | os.PathLike) -> Path:
    """Re-render ``<name>.md`` beside ``csv`` in the compact layout, keeping its notes; the CSV
    is only read."""
    csv = Path(csv)
    md = csv.with_suffix(".md")
    notes = read_notes(md.read_text()) if md.is_file() else []
    return atomic_write_text(md, compact_markdown(csv, notes))


#: File metadata that would change a figure's bytes on every run although its content does not:
#: the PDF's creation date (and producer, which names the matplotlib version), the PNG's
#: "Software" text chunk (the matplotlib version). Left out, a rerun rewrites identical files.
PDF_METADATA = {"CreationDate": None, "Producer": None, "Creator": None}
PNG_METADATA = {"Software": None}


def save_figure(fig: Any, figures_dir: str | os.PathLike, name: str, pdf: bool = True) -> Path:
    """Save a matplotlib figure as PNG (and PDF), atomically and byte-for-byte reproducibly
    (no creation date or version stamp), so a rerun changes no committed figure."""
    figures_dir = Path(figures_dir)
    png = atomic_write(
        figures_dir / f"{name}.png",
        lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight", metadata=PNG_METADATA),
    )
    if pdf:
        atomic_write(
            figures_dir / f"{name}.pdf",
            lambda p: fig.savefig(p, format="pdf", bbox_inches="tight", metadata=PDF_METADATA),
        )
    return png


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    return atomic_write_json(path, dict(metrics))


def results_dirs(results: str | os.PathLike) -> dict[str, Path]:
    """``tables/``, ``figures/``, ``metrics/``, ``models/`` under a profile's results folder."""
    root = Path(results)
    dirs = {k: root / k for k in ("tables", "figures", "metrics", "models")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return {"root": root, **dirs}
