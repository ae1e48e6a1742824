"""Does the classification task the paper's recipe trains on need attention? (offline profiles)

The paper trains its attention to classify ImageNet objects among their background; our proxy
is the synthetic benchmark's classification split. Before any retrieval number is read, its
validation split answers whether the task rewards an attention at all. Under the frozen fc of
route (a), on the validation images' cached features:

- **fc alone** (alpha = 1): the starting point;
- **oracle** (not a method: it reads the validation images' object masks): alpha_i =
  o_i + 0.01 rescaled to mean 1, o_i the share of region i's pixels on the class object; the
  rescaling keeps the fc's input at the scale it was trained on, so that only where the weight
  goes changes;
- each **learned** attention (the paper's recipe).

``proxy_study`` compares designs of the split (``SyntheticConfig.cls_views`` and friends) by
that room, on validation alone, and keeps the log (``tables/proxy_variants``). The rule is
fixed before the runs: the design whose oracle lowers the fc's validation loss the most is
kept, among designs whose fc alone stays well above chance (``MIN_FC_ACCURACY``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from regattn_lib.core.descriptor import RegionalFeatures, describe_pooled
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.stats import bootstrap_mean_interval
from regattn_lib.datasets.imagenet import imagenet_split
from regattn_lib.datasets.synthetic import cls_mask_name, load_landmark_mask
from regattn_lib.experiments import pipeline
from regattn_lib.experiments.attention_room import CEILING_EPS
from regattn_lib.experiments.object_attention import region_overlaps
from regattn_lib.training.augment import center_offsets, fixed_subset, resized_size
from regattn_lib.training.config import VAL_SEED_OFFSET, TrainConfig
from regattn_lib.training.data import Loader, cached_features
from regattn_lib.training.model import AttentionClassifier

#: Added to every region's object share before rescaling: the retrieval ceiling's own.
ORACLE_EPS = CEILING_EPS
FC_ALONE = "fc alone (alpha = 1)"
ORACLE = "oracle: alpha from the object masks (not a method)"
#: A design whose fc alone classifies fewer validation images than this is not kept: the fc
#: must still see its class in most images for the recipe to train anything.
MIN_FC_ACCURACY = 0.5


def val_crop_mask(mask: np.ndarray, short: int, crop: int) -> np.ndarray:
    """A bool (H, W) mask through the validation transform (``augment.val_crop``: shorter side
    ``short``, bilinear, then the centred ``crop`` window), thresholded at one half, so pixel
    (y, x) lies over pixel (y, x) of the validation crop."""
    m = np.asarray(mask, dtype=np.float32)
    h, w = m.shape
    nh, nw = resized_size(h, w, short)
    t = torch.from_numpy(m)[None, None]
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = center_offsets(nh, nw, crop)
    return t[0, 0, top : top + crop, left : left + crop].numpy() >= 0.5


def val_region_shares(
    cls_dir: str | Path, paths: Sequence[str | Path], short: int, crop: int, levels: int
) -> np.ndarray:
    """(N, R) share of each R-MAC region (``levels``, in the pooling order) of each validation
    crop that lies on the class object, from the split's masks."""
    regions = rmac_regions(crop, crop, levels)
    return np.stack(
        [
            region_overlaps(
                regions,
                val_crop_mask(load_landmark_mask(cls_dir, cls_mask_name(cls_dir, p)), short, crop),
            )
            for p in paths
        ]
    )


def oracle_alpha(shares: np.ndarray) -> torch.Tensor:
    """(N, R) alpha_i = o_i + ``ORACLE_EPS``, rescaled per image to mean 1."""
    a = np.asarray(shares, dtype=np.float64) + ORACLE_EPS
    return torch.as_tensor(a / a.mean(axis=1, keepdims=True), dtype=torch.float32)


@torch.no_grad()
def per_image_scores(
    fc: torch.nn.Module,
    feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    attention: Any = None,
    alpha: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per validation image, (cross-entropy, correct) of ``fc(mean_i alpha_i x_i)``, alpha from
    ``attention`` (a module), given outright (``alpha``) or 1 (both ``None``)."""
    x, k, g = (t.float() for t in feats)
    if alpha is not None:
        fixed = alpha.to(x.dtype)
        attention = lambda _k, _g: fixed  # noqa: E731 (alpha given, not computed)
    logits = fc(describe_pooled(RegionalFeatures(x, k, g), attention).weighted_mean)
    loss = F.cross_entropy(logits, labels, reduction="none")
    return loss.numpy().astype(np.float64), (logits.argmax(1) == labels).numpy().astype(np.float64)


def _row(label: str, loss: np.ndarray, correct: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    _, low, high = bootstrap_mean_interval(correct - base)
    return {
        "row": label,
        "val_loss": float(loss.mean()),
        "val_acc": float(correct.mean()),
        "acc gain": float((correct - base).mean()),
        "acc gain low": low,
        "acc gain high": high,
    }


def validation_features(
    ctx: pipeline.Context, recipe: TrainConfig, train_set: str, cache_dir: Path
) -> tuple[Path, list[Path], torch.Tensor, tuple[torch.Tensor, ...]]:
    """The classification set's folder, the validation images training validated on
    (``recipe``'s subset), their labels and their pooled features, read from the training
    feature cache when it holds them (the same key, so the very numbers training validated on),
    else computed and cached."""
    tr, va = (imagenet_split(ctx.data_root, s, train_set) for s in ("train", "val"))
    cfg = replace(
        recipe, levels=ctx.profile.levels, device=str(ctx.device), feature_cache_dir=str(cache_dir)
    )
    idx = fixed_subset(len(va.paths), cfg.val_images, cfg.views_seed + VAL_SEED_OFFSET)
    val_paths = [va.paths[i] for i in idx]
    where = tr.class_to_idx
    labels = torch.tensor([where[va.classes[va.labels[i]]] for i in idx])
    model = AttentionClassifier(ctx.backbone, torch.nn.Identity(), None, cfg.levels).eval()
    loader = Loader(cfg.num_workers)
    try:
        _, val = cached_features(model, tr.paths, val_paths, cfg, loader)
    finally:
        loader.close()
    assert val is not None
    return va.root.parent, val_paths, labels, val


def classification_room(
    ctx: pipeline.Context,
    fc: torch.nn.Module,
    attentions: Mapping[str, Sequence[torch.nn.Module]],
    recipe: TrainConfig | None = None,
    train_set: str | None = None,
    cache_dir: Path | None = None,
) -> pd.DataFrame:
    """fc alone, the oracle and each learned attention (per seed) on the classification
    validation split, under the frozen ``fc``: validation loss, accuracy and the accuracy gain
    over the fc alone with its 95% paired-bootstrap interval over validation images.

    ``attentions``: row label -> one attention per seed. ``recipe``, ``train_set``,
    ``cache_dir``: default the profile's (notebook 02's) own.
    """
    t = ctx.profile.train
    recipe = t.recipe if recipe is None else recipe
    train_set = t.train_set if train_set is None else train_set
    cache_dir = ctx.cache_dir / "train_features" if cache_dir is None else cache_dir
    cls_dir, paths, labels, feats = validation_features(ctx, recipe, train_set, cache_dir)
    shares = val_region_shares(
        cls_dir, paths, recipe.val_resize, recipe.val_crop, ctx.profile.levels
    )
    fc = fc.cpu().float().eval()
    base_loss, base = per_image_scores(fc, feats, labels)
    rows = [_row(FC_ALONE, base_loss, base, base)]
    rows.append(
        _row(ORACLE, *per_image_scores(fc, feats, labels, alpha=oracle_alpha(shares)), base)
    )
    for label, models in attentions.items():
        for s, att in enumerate(models):
            name = label if len(models) == 1 else f"{label}, seed {s}"
            rows.append(_row(name, *per_image_scores(fc, feats, labels, att.cpu().eval()), base))
    out = pd.DataFrame(rows)
    out.insert(1, "images", len(paths))
    out.insert(2, "mean object share", float(shares.mean()))
    return out


# --------------------------------------------------------------------------------------------
# The design study: which classification split makes the recipe's task need attention?

#: The designs measured for the demo (``SyntheticConfig`` fields of the classification split).
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "whole (the first proxy)": {"cls_views": "whole", "cls_distractor_prob": 0.0},
    "database views": {"cls_views": "database", "cls_distractor_prob": 0.0},
    "database views + same-size distractor": {"cls_views": "database", "cls_distractor_prob": 0.7},
    "database views with junk + same-size distractor": {
        "cls_views": "database",
        "cls_view_mix": (0.4, 0.4, 0.2),
        "cls_distractor_prob": 0.7,
    },
}


def design_settings(cfg: Any) -> str:
    """The classification split's design fields of a ``SyntheticConfig``, as one line."""
    from regattn_lib.datasets.synthetic.config import CLS_FIELDS

    return ", ".join(f"{k}={getattr(cfg, k)}" for k in CLS_FIELDS)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def proxy_study(
    ctx: pipeline.Context,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    kinds: Sequence[str] = ("regional", "context"),
    progress: bool = False,
    attention_lr: float | None = None,
) -> pd.DataFrame:
    """For each design of the classification split: generate it (its own folder), train the
    fc (route (a)) and the profile's attention kinds (first seed, the profile's recipe, the
    attention's learning rate ``attention_lr``, default the profile's) on it, and measure its
    ``classification_room``. Every number comes from the design's own validation split; no
    test image is read. Runs resume.

    Returns one row per (design, row) with the design's settings and the learning rate.
    """
    from regattn_lib.datasets.synthetic import generate_synthetic
    from regattn_lib.datasets.synthetic.config import resolve_config
    from regattn_lib.training.routes import train_from_folder

    p, t = ctx.profile, ctx.profile.train
    if p.synthetic is None:
        raise ValueError(f"profile {p.name!r} has no synthetic benchmark to vary")
    variants = DEFAULT_VARIANTS if variants is None else variants
    base_cfg = resolve_config(p.synthetic)
    base = replace(
        t.recipe,
        levels=p.levels,
        device=str(ctx.device),
        feature_cache_dir=str(ctx.cache_dir / "proxy_features"),
        progress=progress,
    )
    if attention_lr is None:
        attention_lr = t.recipe.lr if t.attention_lr is None else t.attention_lr
    tables = []
    for label, fields in variants.items():
        slug = _slug(label)
        cfg = replace(base_cfg, name=f"{base_cfg.name}-proxy-{slug}", **fields)
        generate_synthetic(
            cfg, ctx.data_root, seed=p.synthetic_seed, progress=progress, parts=("cls",)
        )
        name, out = f"{cfg.name}-cls", ctx.dirs["models"] / "proxy" / slug
        fc_run = train_from_folder(
            ctx.data_root,
            ctx.backbone,
            replace(base, stage="fc", iterations=t.fc_iterations),
            out / "fc",
            resume=True,
            name=name,
        )
        atts: dict[str, list[torch.nn.Module]] = {}
        for kind in kinds:
            res = train_from_folder(
                ctx.data_root,
                ctx.backbone,
                replace(
                    base,
                    stage="attention",
                    context=kind == "context",
                    seed=t.seeds[0],
                    lr=attention_lr,
                ),
                out / f"{kind}-lr{attention_lr:g}",
                fc=fc_run.module,
                resume=True,
                name=name,
            )
            atts[f"+ {kind} attention (paper's recipe)"] = [res.module]
        room = classification_room(
            ctx, fc_run.module, atts, base, name, Path(base.feature_cache_dir)
        )
        room.insert(0, "design", label)
        room.insert(1, "settings", design_settings(cfg))
        room.insert(2, "attention lr", attention_lr)
        tables.append(room)
    return pd.DataFrame(pd.concat(tables, ignore_index=True))


def chosen_design(study: pd.DataFrame) -> str:
    """The design the rule keeps: the largest drop in validation loss from the fc alone to the
    oracle, among designs whose fc alone reaches ``MIN_FC_ACCURACY``."""
    best, best_drop = None, -np.inf
    for design, rows in study.groupby("design", sort=False):
        by = rows.set_index("row")
        if by.loc[FC_ALONE, "val_acc"] < MIN_FC_ACCURACY:
            continue
        drop = by.loc[FC_ALONE, "val_loss"] - by.loc[ORACLE, "val_loss"]
        if drop > best_drop:
            best, best_drop = str(design), drop
    if best is None:
        raise ValueError(f"no design's fc alone reaches {MIN_FC_ACCURACY} validation accuracy")
    return best


def notebook_room(ctx: pipeline.Context) -> pd.DataFrame | None:
    """Notebook 02's classification room: fc alone, the mask oracle and the paper's recipe
    (every seed) on the profile's own classification validation split, written as
    ``tables/classification_room`` and its figure; ``None`` (nothing written) for a profile
    whose classification split has no object masks (only the synthetic ones do) or that
    trained no fc of its own."""
    from regattn_lib.experiments.figures import plot_classification_room
    from regattn_lib.experiments.reports import save_figure, write_table
    from regattn_lib.training.checkpoint import load_trained_fc

    p = ctx.profile
    fc_file = ctx.dirs["models"] / "train_fc" / "fc.pt"
    if p.synthetic is None or p.train.train_set is None or not fc_file.is_file():
        return None
    atts = pipeline.attention_seeds(ctx)
    paper = {label: atts[label] for label in pipeline.PAPER_KINDS if label in atts}
    room = classification_room(ctx, load_trained_fc(fc_file), paper)
    write_table(room, ctx.dirs["tables"], "classification_room", room_notes(ctx))
    save_figure(plot_classification_room(room), ctx.dirs["figures"], "classification_room")
    return room


def room_notes(ctx: pipeline.Context) -> list[str]:
    """The notes under the classification room's table."""
    return [
        "classification validation split of the profile's proxy (no test image is read); every "
        "row under the frozen fc of route (a), on the features training validated on",
        f"oracle: alpha_i = o_i + {ORACLE_EPS} rescaled to mean 1, o_i the share of region i on "
        "the class object in the validation image's own mask; it reads the masks, so it is a "
        "bound, not a method",
        "acc gain: over the fc alone, with its 95% paired-bootstrap interval over validation "
        "images",
        *ctx.profile.notes,
    ]
