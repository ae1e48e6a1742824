"""Attention learned by metric learning for a profile (beyond the paper): its splits, the sweep
logged on validation landmarks, the weights kept.

The paper trains the attention on classification and names fine-tuning with metric learning as
future work. Here the attention alone learns from a retrieval loss, backbone and whitening
frozen (``training.metric_train``): the regional (``metric-regional``) and the context-aware
(``metric-context``) model, each started at alpha = 1 (R-MAC). Every setting is chosen on the
validation landmarks of the metric-learning split, never on the test set: the learning rate x
weight decay sweep (``MetricSettings``) runs on the first training seed, the best validation mAP
picks the pair, which then trains every other seed. The log keeps every run.

Offline profiles train on the synthetic generator's metric split (landmarks disjoint from the
test set, its own objects and tiles); the paper profile on SfM-120k's tuples as cirtorch trains
on them (``datasets.sfm120k_tuples``, ``sfm_pools``): its ``train`` split trains, its ``val``
split (other 3D models) chooses. The pooled regions are cached once, resumably; ``main`` builds
that cache with several GPUs under ``torchrun`` before notebook 02 reads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.experiments.pipeline import METRIC_KINDS, Context, attention_file
from regattn_lib.runtime.atomic import atomic_torch_save, atomic_write
from regattn_lib.runtime.identity import (
    backbone_weights_id,
    cache_key,
    content_stamp,
    list_digest,
    whitening_digest,
)
from regattn_lib.training.checkpoint import save_metric_attention
from regattn_lib.training.metric import init_alpha_one
from regattn_lib.training.metric_data import pooled_regions, region_cache
from regattn_lib.training.metric_train import (
    MetricSplit,
    MetricTrainResult,
    train_metric_attention,
)

#: The log's table name (``tables/metric_training.csv``).
METRIC_LOG = "metric_training"
#: Every run's validation curve, one row per epoch (``metrics/metric_history.csv``): what an
#: epoch cap or another learning rate would have kept can be read from it without retraining.
METRIC_HISTORY = "metric_history"
#: Kind -> whether its attention sees the global context.
CONTEXT_OF = {"metric-regional": False, "metric-context": True}


#: Seed of the SfM-120k pairs and pool cached for metric learning (``subset_tuples``).
SFM_SUBSET_SEED = 0


def metric_pools(ctx: Context, progress: bool = True) -> dict[str, tuple[Any, list[torch.Tensor]]]:
    """``{'train': (tuples, pools), 'val': ...}``: the metric-learning split's tuples and, per
    image, its pooled regions at the profile's ``image_size`` and ``levels``, through the
    extraction head's path (``training.metric_data.pooled_regions``, cached under
    ``<data>/cache/<run>/metric/``). Offline profiles: the synthetic generator's metric split;
    the others: SfM-120k as cirtorch trains on it (``sfm_pools``)."""
    from regattn_lib.datasets.synthetic import SYNTHETIC_PRESETS, metric_tuples, synthetic_paths

    p = ctx.profile
    if p.synthetic is None:
        return sfm_pools(ctx, progress)
    sp = synthetic_paths(SYNTHETIC_PRESETS[p.synthetic].name, ctx.data_root)
    out = {}
    for split in ("train", "val"):
        tuples, paths = metric_tuples(sp, split)
        pools = profile_pools(
            ctx,
            paths,
            tuples.cids,
            sp.metric_dir,
            "metric",
            split,
            {"split": split},
            None,
            progress,
        )
        out[split] = (tuples, pools)
    return out


def unusable_images(paths: Sequence[Any], image_size: int | None) -> list[tuple[int, str]]:
    """(index, reason) of the images the backbone cannot take, read from their headers: not an
    image, or a side under ``MIN_SIDE`` px once resized to ``image_size``."""
    from regattn_lib.datasets.images import MIN_SIDE, ImageError
    from regattn_lib.extraction.image_stream import target_size

    bad = []
    for i, path in enumerate(paths):
        try:
            h, w = target_size(path, image_size, None)
        except ImageError as err:
            bad.append((i, str(err)))
            continue
        if min(h, w) < MIN_SIDE:
            bad.append((i, f"{h}x{w} px after resizing to {image_size}: under {MIN_SIDE} px"))
    return bad


def _fetch_sfm(ctx: Context) -> None:
    """SfM-120k's database and images for both splits, downloaded where missing (the
    profile's ``download``), every image checked to be there."""
    from regattn_lib.datasets.retrieval import whitening_images

    for split in ("train", "val"):
        whitening_images("sfm120k", ctx.data_root, download=ctx.profile.download, split=split)


def sfm_pools(ctx: Context, progress: bool = True) -> dict[str, tuple[Any, list[torch.Tensor]]]:
    """SfM-120k's ``train`` and ``val`` splits for metric learning, as cirtorch trains on them
    (``datasets.sfm120k_tuples``): of each split, ``metric.query_size`` (query, positive)
    pairs and a pool of ``metric.pool_size`` images drawn once (``subset_tuples``, seed
    ``SFM_SUBSET_SEED``), their regions pooled at the profile's ``image_size`` (1024 px in the
    paper profile: cirtorch's training default, and the size the descriptor is extracted at)
    and ``levels``, cached and resumable (``pooled_regions``; several GPUs through
    ``python -m regattn_lib.experiments.metric_plan`` under ``torchrun``). The database and the
    images are fetched with the profile's ``download``; images the backbone cannot take are
    left out with their pairs and named in ``tables/skipped_images_sfm120k-metric-<split>.csv``."""
    from regattn_lib.datasets.retrieval import SFM_NAME
    from regattn_lib.datasets.sfm120k_tuples import drop_images, sfm120k_tuples, subset_tuples
    from regattn_lib.experiments.pipeline import report_skipped
    from regattn_lib.extraction.image_stream import SkippedImage

    p, m = ctx.profile, ctx.profile.metric
    ims = ctx.data_root / "train" / SFM_NAME / "ims"
    out = {}
    _fetch_sfm(ctx)
    for split in ("train", "val"):
        full = sfm120k_tuples(split, ctx.data_root)
        tuples, _ = subset_tuples(full, m.query_size, m.pool_size, SFM_SUBSET_SEED)
        paths = tuples.image_paths(ims)
        bad = unusable_images(paths, p.image_size)
        if bad:
            label = f"sfm120k-metric-{split}"
            records = [
                SkippedImage(i, paths[i].stem, str(paths[i]), why, f"metric-{split}")
                for i, why in bad
            ]
            report_skipped(ctx, label, records)
            tuples = drop_images(tuples, [i for i, _ in bad])
            paths = tuples.image_paths(ims)
        ident = {
            "split": split,
            "source": SFM_NAME,
            "query_size": m.query_size,
            "pool_size": m.pool_size,
            "subset_seed": SFM_SUBSET_SEED,
        }
        pools = profile_pools(
            ctx, paths, tuples.cids, None, "metric", f"sfm120k-{split}", ident, None, progress
        )
        out[split] = (tuples, pools)
    return out


def profile_pools(
    ctx: Context,
    paths: Sequence[Any],
    names: Sequence[str],
    folder: Any,
    subdir: str,
    label: str,
    ident: dict[str, Any],
    bbxs: Sequence[Sequence[float]] | None = None,
    progress: bool = True,
) -> list[torch.Tensor]:
    """``pooled_regions`` of ``paths`` at the profile's image size, levels and precision, cached
    as ``<data>/cache/<run>/<subdir>/<label>-<key>.pt``; the key holds ``ident``, the image
    names, the generated folder's stamp (``content_stamp(folder)``), the backbone's weights and
    those settings. The metric split's and the test set's caches (``attention_room``) alike."""
    p = ctx.profile
    key = cache_key(
        {
            **ident,
            "images": list_digest(names),
            "data": content_stamp(folder),
            "backbone": backbone_weights_id(ctx.backbone),
            "image_size": p.image_size,
            "levels": p.levels,
            "precision": p.precision,
        }
    )
    return pooled_regions(
        paths,
        ctx.backbone,
        p.image_size,
        p.levels,
        cache_file=ctx.cache_dir / subdir / f"{label}-{key}.pt",
        bbxs=bbxs,
        device=ctx.device,
        precision=p.precision,
        batch_size=p.batch_size,
        progress=f"{subdir} {label}" if progress else False,
    )


def metric_split(
    tuples: Any,
    pools: list[torch.Tensor],
    whitening: PCAWhitening | None,
    landmarks: int | None = None,
) -> MetricSplit:
    """A ``MetricSplit`` of pooled images, whitened with ``whitening``; ``landmarks``: keep only
    the images (and pairs) of the first that many landmarks (all: ``None``)."""
    keep = np.arange(len(pools))
    if landmarks is not None:
        first = np.unique(tuples.cluster)[:landmarks]
        keep = np.flatnonzero(np.isin(tuples.cluster, first))
    index = {int(i): j for j, i in enumerate(keep)}
    pairs = [
        (index[q], index[p])
        for q, p in zip(tuples.qidxs, tuples.pidxs, strict=True)
        if q in index and p in index
    ]
    q, p = (np.asarray(v, dtype=np.int64) for v in zip(*pairs, strict=True))
    return MetricSplit(
        region_cache([pools[i] for i in keep], whitening), tuples.cluster[keep], q, p
    )


def metric_splits(
    ctx: Context, whitening: PCAWhitening | None, progress: bool = True
) -> dict[str, MetricSplit]:
    """``{'train': ..., 'val': ...}``: ``metric_pools`` whitened with ``whitening`` (the test
    descriptors')."""
    return {
        k: metric_split(t, pools, whitening)
        for k, (t, pools) in metric_pools(ctx, progress).items()
    }


def _new_attention(ctx: Context, splits: dict[str, MetricSplit], kind: str) -> RegionalAttention:
    recipe = ctx.profile.train.recipe
    channels = splits["train"].cache.groups[0].k.shape[-1]
    return RegionalAttention(int(channels), recipe.hidden, CONTEXT_OF[kind], recipe.activation)


def run_file(ctx: Context, kind: str, stage: str, seed: int, lr: float, wd: float, key: str):
    """Where one finished run of ``train_metric`` is kept (``models/metric_runs/``): its weights,
    validation curve and time, under ``key`` (the digest of its data and settings), so that an
    interrupted sweep resumes at the run in hand."""
    name = f"{kind}-{stage}-seed{seed}-lr{lr:g}-wd{wd:g}-{key}.pt"
    return ctx.dirs["models"] / "metric_runs" / name


def _train_or_load(
    ctx: Context,
    splits: dict[str, MetricSplit],
    kind: str,
    stage: str,
    lr: float,
    weight_decay: float,
    seed: int,
    key: str,
    progress: bool,
) -> tuple[Any, float]:
    """``_train_one``, or the run ``run_file`` kept from an earlier, interrupted call."""
    f = run_file(ctx, kind, stage, seed, lr, weight_decay, key)
    if f.is_file():
        saved = torch.load(f, map_location="cpu", weights_only=True)
        att = _new_attention(ctx, splits, kind)
        att.load_state_dict(saved["state"])
        att.eval()
        result = MetricTrainResult(
            att, saved["history"], saved["best_epoch"], saved["best_val_map"]
        )
        return result, float(saved["time_s"])
    result, s = _train_one(ctx, splits, kind, lr, weight_decay, seed, progress)
    atomic_torch_save(
        f,
        {
            "state": result.attention.state_dict(),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val_map": result.best_val_map,
            "time_s": s,
        },
    )
    return result, s


def _train_one(
    ctx: Context,
    splits: dict[str, MetricSplit],
    kind: str,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: bool,
) -> tuple[Any, float]:
    m = ctx.profile.metric
    torch.manual_seed(seed)
    att = init_alpha_one(_new_attention(ctx, splits, kind))
    start = time.perf_counter()
    result = train_metric_attention(
        att,
        splits["train"],
        splits["val"],
        epochs=m.epochs,
        lr=lr,
        nnum=m.nnum,
        margin=m.margin,
        query_size=m.query_size,
        pool_size=m.pool_size,
        batch_size=m.batch_size,
        weight_decay=weight_decay,
        seed=seed,
        progress=progress,
    )
    return result, time.perf_counter() - start


def _split_digest(splits: dict[str, MetricSplit]) -> str:
    """A digest of the splits' content (sizes, clusters, pairs, the first image's whitened
    regions): runs kept for other data are not read back."""
    parts = {}
    for name, sp in splits.items():
        first = sp.cache.groups[0]
        parts[name] = {
            "n": len(sp.cache),
            "cluster": list_digest([str(c) for c in sp.cluster.tolist()]),
            "pairs": list_digest([f"{q},{p}" for q, p in zip(sp.qidxs, sp.pidxs, strict=True)]),
            "x0": float(first.xhat[0].double().sum()),
        }
    return cache_key(parts)


def _log_row(kind: str, stage: str, seed: int, lr: float, wd: float, result: Any, s: float):
    h = result.history
    best = h[result.best_epoch]
    return {
        "kind": kind,
        "stage": stage,
        "seed": seed,
        "lr": lr,
        "weight_decay": wd,
        "epochs": len(h) - 1,
        "best_epoch": result.best_epoch,
        "val mAP R-MAC": h[0]["val_map"],
        "val mAP": result.best_val_map,
        "val gain": result.best_val_map - h[0]["val_map"],
        "alpha cv": best["alpha_cv"],
        "last epoch val mAP": h[-1]["val_map"],
        "time_s": s,
        "chosen": False,
    }


def _history_rows(kind: str, stage: str, seed: int, lr: float, wd: float, result: Any):
    """One row per epoch of a run (epoch 0: alpha = 1, R-MAC), keyed like its log row."""
    keys = {"kind": kind, "stage": stage, "seed": seed, "lr": lr, "weight_decay": wd}
    return [{**keys, **{k: v for k, v in h.items() if k != "lr"}} for h in result.history]


def _save(ctx: Context, kind: str, seed: int, result: Any, chosen: dict[str, Any]) -> None:
    """The attention of one run, with the sweep's pick and the run's own validation numbers."""
    info = {"seed": seed, "best_epoch": result.best_epoch, "val_map": result.best_val_map}
    save_metric_attention(attention_file(ctx, kind, seed), result.attention, {**chosen, **info})


def train_metric(
    ctx: Context, whitening: PCAWhitening | None, progress: bool = True
) -> pd.DataFrame:
    """Train the profile's metric-learned attention models and write their weights
    (``models/attention_metric-<kind>[_seed<S>].pt``); return the log, one row per run
    (``stage`` 'sweep' on the first seed, 'seed' for the others; ``chosen`` marks the sweep's
    pick). Empty when ``metric.enabled`` is off. Runs whose weights and log exist are not
    redone: the log is read back."""
    m = ctx.profile.metric
    if not m.enabled:
        return pd.DataFrame()
    seeds = list(ctx.profile.train.seeds)
    files = [attention_file(ctx, k, s) for k in METRIC_KINDS.values() for s in seeds]
    log_file = ctx.dirs["metrics"] / f"{METRIC_LOG}.csv"
    if log_file.is_file() and all(f.is_file() for f in files):
        return pd.read_csv(log_file)
    splits = metric_splits(ctx, whitening, progress)
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    settings = {
        "backbone": getattr(ctx.backbone, "name", type(ctx.backbone).__name__),
        "backbone_weights": backbone_weights_id(ctx.backbone),
        "precision": ctx.profile.precision,
        "levels": ctx.profile.levels,
        "image_size": ctx.profile.image_size,
        "whitening": whitening_digest(whitening),
        "train_images": len(splits["train"].cache),
        "val_images": len(splits["val"].cache),
    }
    # every run is kept as it finishes (run_file): a rerun after an interruption trains only
    # the runs not done, under the same data and settings
    recipe = ctx.profile.train.recipe
    key = cache_key(
        {
            **settings,
            "metric": asdict(m),
            "attention": [recipe.hidden, recipe.activation],
            "splits": _split_digest(splits),
        }
    )
    for kind in METRIC_KINDS.values():
        best = None
        for lr in m.lrs:
            for wd in m.weight_decays:
                result, s = _train_or_load(
                    ctx, splits, kind, "sweep", lr, wd, seeds[0], key, progress
                )
                rows.append(_log_row(kind, "sweep", seeds[0], lr, wd, result, s))
                curves += _history_rows(kind, "sweep", seeds[0], lr, wd, result)
                if best is None or result.best_val_map > best[0]:  # ties keep the earlier
                    best = (result.best_val_map, lr, wd, result, len(rows) - 1)
        assert best is not None
        _, lr, wd, result, at = best
        rows[at]["chosen"] = True
        chosen = {**settings, "lr": lr, "weight_decay": wd, "epochs": m.epochs}
        _save(ctx, kind, seeds[0], result, chosen)
        for seed in seeds[1:]:
            res, s = _train_or_load(ctx, splits, kind, "seed", lr, wd, seed, key, progress)
            rows.append(_log_row(kind, "seed", seed, lr, wd, res, s))
            curves += _history_rows(kind, "seed", seed, lr, wd, res)
            _save(ctx, kind, seed, res, chosen)
    log = pd.DataFrame(rows)
    history_file = log_file.with_name(f"{METRIC_HISTORY}.csv")
    atomic_write(history_file, lambda p: pd.DataFrame(curves).to_csv(p, index=False))
    atomic_write(log_file, lambda p: log.to_csv(p, index=False))  # last: it marks the run done
    return log


def metric_notes(ctx: Context, log: pd.DataFrame) -> list[str]:
    """The notes of the metric-learning log and of every table with its rows."""
    if log.empty:
        return []
    m = ctx.profile.metric
    picks = log[log["chosen"]]
    chosen = "; ".join(
        f"{r.kind}: lr {r.lr:g}, weight decay {r.weight_decay:g} "
        f"(validation mAP {r['val mAP']:.2f} against R-MAC's {r['val mAP R-MAC']:.2f})"
        for _, r in picks.iterrows()
    )
    notes = [
        "metric learning (beyond the paper): the attention alone learned with cirtorch's "
        f"contrastive loss (margin {m.margin}, {m.nnum} hard negatives re-mined each epoch), "
        "backbone and whitening frozen, started at alpha = 1 (R-MAC)",
    ]
    if ctx.profile.synthetic is None:
        return [
            *notes,
            "trained on SfM-120k's train split as cirtorch trains on it, except that its "
            f"{m.query_size:,} (query, positive) pairs and {m.pool_size:,}-image negative pool "
            f"are drawn once (seed {SFM_SUBSET_SEED}) and their regions cached at "
            f"{ctx.profile.image_size} px, where cirtorch redraws both every epoch",
            "settings chosen on SfM-120k's val split (3D models of its own, none of the test "
            "sets), never on the queries: " + chosen,
        ]
    return [
        *notes,
        "settings chosen on the validation landmarks of the metric-learning split (disjoint "
        "from the test set), never on the queries: " + chosen,
    ]


def logged_notes(ctx: Context) -> list[str]:
    """``metric_notes`` of the log notebook 02 wrote (none before it ran, or when the profile
    learns no metric attention)."""
    f = ctx.dirs["metrics"] / f"{METRIC_LOG}.csv"
    if not ctx.profile.metric.enabled or not f.is_file():
        return []
    return metric_notes(ctx, pd.read_csv(f))


def notebook_metric(ctx: Context, progress: bool = True) -> pd.DataFrame:
    """Notebook 02's metric-learning step: the profile's whitening (notebook 01's, from the
    cache), ``train_metric``, and the log as ``tables/metric_training``. Returns the log; an
    empty one, after saying so, when the profile learns no metric attention."""
    from regattn_lib.experiments.pipeline import learn_whitening
    from regattn_lib.experiments.reports import write_table

    if not ctx.profile.metric.enabled:
        print(
            f"profile {ctx.profile.name!r} learns no attention by metric learning (metric.enabled)"
        )
        return pd.DataFrame()
    log = train_metric(ctx, learn_whitening(ctx, progress=progress), progress)
    write_table(log, ctx.dirs["tables"], METRIC_LOG, [*metric_notes(ctx, log), *ctx.profile.notes])
    return log


def landmark_count_study(
    ctx: Context,
    whitening: PCAWhitening | None,
    counts: Sequence[int] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Validation mAP against the number of training landmarks: each kind retrained (first
    seed, the learning rate and weight decay notebook 02 chose on validation, read from its log)
    on the first ``n`` training landmarks of the metric split, for each ``n`` in ``counts``;
    validation on all the validation landmarks, as in notebook 02. ``counts`` default: 20, 40
    and 80 where fewer than all, and all. Needs notebook 02's log."""
    f = ctx.dirs["metrics"] / f"{METRIC_LOG}.csv"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: run notebook 02 first (it chooses the learning rate)")
    chosen = pd.read_csv(f)
    chosen = chosen[chosen["chosen"]].set_index("kind")
    pools = metric_pools(ctx, progress)
    if counts is None:
        n = pools["train"][0].n_clusters
        counts = sorted({c for c in (20, 40, 80) if c < n} | {n})
    val = metric_split(*pools["val"], whitening)
    rows = []
    seed = ctx.profile.train.seeds[0]
    for n in counts:
        train = metric_split(*pools["train"], whitening, landmarks=n)
        for kind in METRIC_KINDS.values():
            lr, wd = float(chosen.loc[kind, "lr"]), float(chosen.loc[kind, "weight_decay"])
            result, s = _train_one(ctx, {"train": train, "val": val}, kind, lr, wd, seed, progress)
            row = _log_row(kind, "landmarks", seed, lr, wd, result, s)
            row.pop("chosen")
            rows.append({"train landmarks": n, "train images": len(train.cache), **row})
    return pd.DataFrame(rows)


def replay_schedule(
    curves: pd.DataFrame, log: pd.DataFrame, cap: int, lrs: Sequence[float]
) -> list[dict[str, Any]]:
    """Per kind: the sweep's pick among ``lrs`` with every run capped at ``cap`` epochs, and
    the kept validation mAP of each seed at that pick (the other seeds' runs were trained at
    the full schedule's pick: where the capped pick differs, they are unknown, ``nan``)."""
    rows = []
    per_epoch = (log["time_s"] / log["epochs"]).groupby(log["kind"]).mean()
    for kind, runs in curves[curves["epoch"] <= cap].groupby("kind", sort=False):
        sweep = runs[(runs["stage"] == "sweep") & runs["lr"].isin(lrs)]
        best_by_lr = sweep.groupby("lr")["val_map"].max()
        pick = float(best_by_lr.idxmax())  # ties: the smallest rate, as the sweep's order
        kept = runs[runs["lr"] == pick].groupby("seed")["val_map"].max()
        seeds = sorted(log.loc[log["kind"] == kind, "seed"].unique())
        values = kept.reindex(seeds).to_numpy(dtype=float)
        runs_trained = len(lrs) + len(seeds) - 1
        rows.append(
            {
                "kind": kind,
                "epochs": cap,
                "lrs": " ".join(f"{lr:g}" for lr in sorted(lrs)),
                "chosen lr": pick,
                "val mAP R-MAC": float(runs["val_map"][runs["epoch"] == 0].iloc[0]),
                "val mAP (seed mean)": float(np.nanmean(values))
                if np.isfinite(values).any()
                else np.nan,
                "val mAP sd": float(np.nanstd(values, ddof=1))
                if np.isfinite(values).sum() > 1
                else np.nan,
                "seeds known": int(np.isfinite(values).sum()),
                "train minutes": runs_trained * cap * float(per_epoch[kind]) / 60,
            }
        )
    return rows


def schedule_table(
    curves: pd.DataFrame, log: pd.DataFrame, caps: Sequence[int] | None = None
) -> pd.DataFrame:
    """``replay_schedule`` for every epoch cap in ``caps`` (default 1 .. the run's epochs) and
    every non-empty subset of the swept learning rates: what a cheaper schedule would have kept
    on the validation landmarks (``scripts/metric_budget.py``)."""
    from itertools import combinations

    swept = sorted(log.loc[log["stage"] == "sweep", "lr"].unique())
    caps = list(caps) if caps else list(range(1, int(curves["epoch"].max()) + 1))
    subsets = [s for n in range(1, len(swept) + 1) for s in combinations(swept, n)]
    rows = [r for cap in caps for lrs in subsets for r in replay_schedule(curves, log, cap, lrs)]
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Build a profile's metric-learning cache (``metric_pools``) before notebook 02 reads it,
    with every process of a ``torchrun`` launch (or one process without it), e.g. on 4 GPUs::

        torchrun --standalone --nproc_per_node=4 -m regattn_lib.experiments.metric_plan \\
            --profile paper [--overrides FILE.yaml]

    Each shard of images is split over the processes (``extraction.distributed``); rank 0
    writes the shards and the cache, which notebook 02 then finds under the same key. An
    interrupted run resumes at the shard in hand."""
    import argparse

    import torch.distributed as dist

    from regattn_lib.experiments.pipeline import setup
    from regattn_lib.experiments.profiles import load_overrides
    from regattn_lib.extraction.distributed import torchrun_session

    ap = argparse.ArgumentParser(
        prog="python -m regattn_lib.experiments.metric_plan",
        description="Pool the regions of a profile's metric-learning images once (notebook 02 "
        "reads the cache); under torchrun every process takes a part of each shard.",
    )
    ap.add_argument("--profile", default="paper", help="profile name (default paper)")
    ap.add_argument("--overrides", default=None, help="YAML file of profile fields")
    ap.add_argument("--data-root", default=None, help="default $REGATTN_DATA or data/")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    args = ap.parse_args(argv)
    with torchrun_session(args.device) as info:
        overrides = load_overrides(args.overrides) if args.overrides else None
        ctx = setup(args.profile, args.data_root, device=str(info.device), overrides=overrides)
        if not ctx.profile.metric.enabled:
            print(f"profile {ctx.profile.name!r} learns no attention by metric learning")
            return 0
        if info.world_size > 1 and ctx.profile.synthetic is None:
            # rank 0 alone downloads and extracts SfM-120k; the others wait, then find it
            if info.is_main:
                _fetch_sfm(ctx)
            dist.barrier()
        pools = metric_pools(ctx, progress=info.is_main)
        if info.is_main:
            for split, (tuples, images) in pools.items():
                print(f"{split}: {len(images)} images, {tuples.n_pairs} pairs cached")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
