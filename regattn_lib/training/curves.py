"""A training run's loss and accuracy curves, drawn from its ``history.csv`` (matplotlib only
when a run plots)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from regattn_lib.runtime.atomic import atomic_write


def plot_curves(csv_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Loss and accuracy curves of a ``history.csv`` against the iteration, as a PNG.

    Parameters
    ----------
    csv_path:
        A ``history.csv`` written by training (``training.checkpoint.HISTORY_COLUMNS``).
    out_png:
        Where the figure goes (written atomically).
    """
    df = pd.read_csv(csv_path)
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)  # pyplot-free: no global state, headless-safe
    ax_loss, ax_acc = fig.subplots(1, 2)
    val = df.dropna(subset=["val_loss"])
    ax_loss.plot(df["step"], df["loss"], label="train")
    ax_loss.plot(val["step"], val["val_loss"], "o-", label="val")
    ax_acc.plot(df["step"], df["train_acc"], label="train")
    ax_acc.plot(val["step"], val["val_acc"], "o-", label="val")
    for ax, name in ((ax_loss, "cross-entropy"), (ax_acc, "accuracy")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)

    def _save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})  # reproducible bytes

    return atomic_write(out_png, _save)
