"""Which regulariser fits the attention's training? Measured on the classification validation
split (never on the retrieval queries): the same attention model trained under each variant of
the profile's recipe, from the same seed, on the same cached views, under the same frozen fc.

Variants are overrides of ``TrainConfig`` fields (e.g. ``{"input_dropout": 0.3}``,
``{"weight_decay": 5e-4}``); each run validates every ``checkpoint_every`` iterations, and the
table reports the best validation loss and accuracy, the iteration where it was reached, and the
last validation loss (its rise after the best is the overfitting).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pandas as pd

from regattn_lib.experiments import pipeline
from regattn_lib.experiments.proxy import FC_ALONE

#: The variants the demo's choice was measured on: the authors' learning rate and weight decay,
#: the weight decay raised 10x and 1000x, dropout on the attention's inputs, and the learning
#: rate raised 10x and lowered 10x and 30x.
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "authors' recipe": {"lr": 1e-3, "weight_decay": 5e-5},
    "lr x 10": {"lr": 1e-2},
    "weight decay x10": {"lr": 1e-3, "weight_decay": 5e-4},
    "weight decay x1000": {"lr": 1e-3, "weight_decay": 5e-2},
    "input dropout 0.3": {"lr": 1e-3, "input_dropout": 0.3},
    "lr / 10": {"lr": 1e-4},
    "lr / 10, input dropout 0.3": {"lr": 1e-4, "input_dropout": 0.3},
    "lr / 30": {"lr": 3e-5},
}


def regularisation_study(
    ctx: pipeline.Context,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    kind: str = "regional",
    iterations: int | None = None,
) -> pd.DataFrame:
    """Train ``kind`` attention under each variant (default ``DEFAULT_VARIANTS``) and compare.

    Uses the fc that notebook 02 trained (``models/train_fc/fc.pt``) when the profile trains
    one, and the profile's cached training features. ``iterations``: default the recipe's; no
    early stopping, so every curve runs to the end. Runs go to ``models/regularisation/``.
    """
    from regattn_lib.training.routes import train_from_folder

    t = ctx.profile.train
    variants = DEFAULT_VARIANTS if variants is None else variants
    fc = ctx.dirs["models"] / "train_fc" / "fc.pt"
    base = replace(
        t.recipe,
        stage="attention",
        context=kind == "context",
        levels=ctx.profile.levels,
        device=str(ctx.device),
        feature_cache_dir=str(ctx.cache_dir / "train_features"),
        selection="last",
        patience=0,
        iterations=t.recipe.iterations if iterations is None else iterations,
        seed=t.seeds[0],
        progress=False,
    )
    rows = [_fc_row(ctx)] if fc.is_file() else []
    for label, fields in variants.items():
        cfg = replace(base, **fields)
        out = ctx.dirs["models"] / "regularisation" / label.replace(" ", "_")
        res = train_from_folder(
            ctx.data_root,
            ctx.backbone,
            cfg,
            out,
            fc=fc if fc.is_file() else None,
            resume=True,
            name=t.train_set,
        )
        val = res.history.dropna(subset=["val_loss"])
        best = val.loc[val["val_loss"].idxmin()]
        rows.append(
            {
                "variant": label,
                "settings": ", ".join(f"{k}={v}" for k, v in fields.items()) or "as the profile",
                "best val_loss": float(best["val_loss"]),
                "val_acc at best": float(best["val_acc"]),
                "best at iteration": int(best["step"]),
                "last val_loss": float(val["val_loss"].iloc[-1]),
                "last train_acc": float(res.history["train_acc"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def _fc_row(ctx: pipeline.Context) -> dict[str, Any]:
    """The frozen fc alone (alpha = 1): the validation loss the attention starts from."""
    import pandas as pd

    hist = pd.read_csv(ctx.dirs["models"] / "train_fc" / "history.csv").dropna(subset=["val_loss"])
    best = hist.loc[hist["val_loss"].idxmin()]
    return {
        "variant": FC_ALONE,
        "settings": "no attention (the starting point)",
        "best val_loss": float(best["val_loss"]),
        "val_acc at best": float(best["val_acc"]),
        "best at iteration": 0,
        "last val_loss": float(hist["val_loss"].iloc[-1]),
        "last train_acc": float(hist["train_acc"].iloc[-1]),
    }
