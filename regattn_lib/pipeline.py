"""The steps the notebooks run, one function each: data, backbone, whitening, attention,
descriptors and scores for a profile. Notebooks call these and present the results.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .attention import RegionalAttention, load_official_attention
from .datasets.retrieval import (
    RetrievalDataset,
    add_distractors,
    load_retrieval_dataset,
    whitening_images,
)
from .evaluate import evaluate
from .extract import (
    Descriptors,
    GlobalHead,
    Head,
    RegionalHead,
    RegionalVectorsHead,
    accumulate_images,
    cache_key,
    env_number,
    extract_dataset,
    extract_images,
    list_digest,
    resolve_device,
    resolve_precision,
)
from .io_utils import atomic_write
from .paths import data_root as resolve_data_root
from .paths import results_root
from .profiles import Profile, get_profile
from .qe import average_query_expansion
from .reports import results_dirs
from .search import cosine_ranks
from .whitening import PCAWhitening, learn_pca_whitening

#: Row labels of the ablation, as in the paper's table.
RMAC, REGIONAL, CONTEXT = "R-MAC + PCA", "+ regional attention", "+ context awareness"
ATTENTION_KINDS = {REGIONAL: "regional", CONTEXT: "context"}


@dataclass
class Context:
    """A profile resolved against a data root, a results folder and a device."""

    profile: Profile
    data_root: Path
    results: Path
    device: torch.device
    dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.data_root / "cache" / self.profile.name

    @cached_property
    def backbone(self) -> torch.nn.Module:
        from .backbones import build_backbone

        bb = build_backbone(
            self.profile.backbone, data_root=self.data_root, download=self.profile.download
        )
        return bb.to(self.device)


def setup(
    profile: str | Profile = "smoke",
    data_root: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
    device: str = "auto",
    **overrides: Any,
) -> Context:
    """Resolve a profile (with notebook overrides) and create ``results/<profile>/`` folders."""
    prof = get_profile(profile, **overrides)
    root = resolve_data_root(data_root)
    res = Path(results).resolve() if results is not None else results_root(prof.name)
    torch.manual_seed(0)
    return Context(prof, root, res, resolve_device(device), results_dirs(res))


# ----------------------------------------------------------------------------- data
def prepare_data(ctx: Context, progress: bool = True) -> dict[str, Any]:
    """Generate (offline profiles) or download and check the profile's test and whitening data.

    Returns a summary: per dataset, database and query counts and the protocols.
    """
    p = ctx.profile
    if p.synthetic is not None:
        from .datasets.synthetic import generate_synthetic

        generate_synthetic(p.synthetic, ctx.data_root, progress=progress)
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(p.datasets + p.revisited):
        ds = load_retrieval_dataset(name, ctx.data_root, download=p.download)
        summary[name] = {"database": ds.n_db, "queries": ds.n_queries, "protocols": ds.protocols}
    white = whitening_images(p.whitening_set, ctx.data_root, download=p.download)
    summary["whitening"] = {"set": p.whitening_set, "images": len(white)}
    return summary


def dataset(ctx: Context, name: str, distractors: bool = False) -> RetrievalDataset:
    """A test set of the profile, optionally with the profile's distractors appended."""
    ds = load_retrieval_dataset(name, ctx.data_root, download=ctx.profile.download)
    if distractors:
        if ctx.profile.distractors is None:
            raise ValueError(f"profile {ctx.profile.name!r} has no distractor set")
        ds = add_distractors(
            ds, ctx.profile.distractors, ctx.profile.n_distractors, ctx.data_root,
            download=ctx.profile.download,
        )  # fmt: skip
    return ds


# ----------------------------------------------------------------------------- whitening
def _whitening_paths(ctx: Context) -> list[Path]:
    paths = whitening_images(
        ctx.profile.whitening_set, ctx.data_root, download=ctx.profile.download
    )
    if ctx.profile.whitening_max_images is not None:
        rng = np.random.default_rng(0)
        keep = sorted(
            rng.choice(len(paths), min(len(paths), ctx.profile.whitening_max_images), replace=False)
        )
        paths = [paths[i] for i in keep]
    return paths


def learn_whitening(
    ctx: Context,
    kind: str = "regional",
    n_components: int | None | str = "profile",
    progress: bool = True,
    cached_only: bool = False,
) -> PCAWhitening:
    """Learn (or load from the cache) the profile's PCA-whitening.

    ``kind="regional"``: the authors' setting: raw regional max-pooled vectors at
    ``whitening_levels`` (3) and ``whitening_image_size`` (800 px in the paper).
    ``kind`` in MAC/SPoC/CroW/CAM pooling names: L2-normalised global vectors of that pooling,
    for the baselines. ``n_components="profile"`` takes the profile's ``whitening_dims``; a
    reduced whitening is the full one truncated to its leading components (identical to
    learning it with fewer components), so every dimension costs one pass over the images.
    ``cached_only=True`` never extracts: a missing cache raises ``FileNotFoundError``.
    """
    dims = ctx.profile.whitening_dims if n_components == "profile" else n_components
    full = learn_whitenings(ctx, [kind], progress=progress, cached_only=cached_only)[kind]
    return full if dims is None else full.truncate(dims)


def _whitening_head(ctx: Context, kind: str) -> Head:
    if kind == "regional":
        return RegionalVectorsHead(levels=ctx.profile.whitening_levels)
    fc = _fc_weight(ctx.backbone) if kind == "cam" else None
    return GlobalHead(name=kind, pooling=kind, fc_weight=fc)


#: The authors skip whitening images whose original shorter side is under 200 px (spec 2).
WHITENING_MIN_SIDE = 200
#: Images per group of the whitening pass: merge point of the statistics and checkpoint unit.
WHITENING_GROUP = 1000


def whitening_min_side(profile: Profile) -> int:
    """Shortest original side a whitening image needs (smaller ones are skipped).

    The profile's ``whitening_min_side`` when it has one; else the authors' 200 px at their
    800 px whitening size, scaled to the profile's ``whitening_image_size`` (paper: 200;
    smoke, 256 px: 64; demo, 512 px: 128), so the synthetic sets keep every image.
    """
    value = getattr(profile, "whitening_min_side", None)
    if value is not None:
        return int(value)
    return round(WHITENING_MIN_SIDE * profile.whitening_image_size / 800)


def _whitening_files(
    ctx: Context, kinds: Sequence[str], paths: Sequence[Path]
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Cache file of each kind's whitening, and the settings the keys cover."""
    p = ctx.profile
    bb = ctx.backbone
    common = {
        "set": p.whitening_set, "n_images": len(paths),
        # every name, not a prefix: two lists that differ anywhere get different files
        "images": list_digest([x.name for x in paths]), "backbone": p.backbone,
        "weights": getattr(bb, "weights_id", None), "size": p.whitening_image_size,
        "levels": p.whitening_levels, "dims": None, "min_side": whitening_min_side(p),
        "precision": resolve_precision(getattr(p, "precision", "auto"), ctx.device),
    }  # fmt: skip
    files = {
        kind: ctx.cache_dir / "whitening" / f"{kind}-{cache_key({'kind': kind, **common})}.pt"
        for kind in kinds
    }
    return files, common


def learn_whitenings(
    ctx: Context,
    kinds: Sequence[str],
    progress: bool = True,
    cached_only: bool = False,
    checkpoint_s: float | None = None,
) -> dict[str, PCAWhitening]:
    """Full-dimensional whitenings of several kinds, learned in one pass over the whitening set.

    Each image's vectors go straight into one fp64 mean/covariance accumulator per kind
    (``extract.accumulate_images``), so memory stays at a few C x C matrices however many
    images there are (SfM-120k at L = 3: 2.4M x 2048 vectors, never stacked). Images whose
    original shorter side is under ``whitening_min_side(profile)`` (authors: 200 px) and
    unreadable ones are skipped and listed in ``meta["skipped"]``; a truncated file is used as
    far as it decodes. The pass checkpoints its statistics every ``checkpoint_s`` seconds
    (default ``$REGATTN_CHECKPOINT_S``, else 300; checked at the end of each group of
    ``$REGATTN_SHARD_IMAGES``, else ``WHITENING_GROUP`` = 1000, images) under
    ``<data>/cache/<profile>/whitening/``, so an interrupted pass resumes where it stopped.
    Each whitening is cached there too, keyed by every image name, the backbone and weights,
    image size, levels, the size rule and the backbone's precision.
    """
    p = ctx.profile
    paths = _whitening_paths(ctx)
    files, common = _whitening_files(ctx, kinds, paths)
    missing = [k for k, f in files.items() if not f.is_file()]
    if missing and cached_only:
        raise FileNotFoundError(
            f"no cached {', '.join(missing)} whitening for profile {p.name!r} at "
            f"{[str(files[k]) for k in missing]}; notebook 01 (./run_all.sh --profile {p.name} "
            "--only 01) learns the regional one, notebook 05 the others"
        )
    if missing:
        if checkpoint_s is None:
            checkpoint_s = env_number("REGATTN_CHECKPOINT_S", 300.0, float)
        group = env_number("REGATTN_SHARD_IMAGES", WHITENING_GROUP)
        checkpoint = (
            ctx.cache_dir
            / "whitening"
            / f"pass-{cache_key({**common, 'kinds': sorted(missing)})}.ckpt"
        )
        accs, skipped = accumulate_images(
            paths, ctx.backbone, {k: _whitening_head(ctx, k) for k in missing},
            p.whitening_image_size, group_size=group, checkpoint=checkpoint,
            checkpoint_s=checkpoint_s, min_original_side=common["min_side"], device=ctx.device,
            batch_size=p.batch_size, precision=common["precision"],
            progress=progress and f"whitening ({', '.join(missing)})",
        )  # fmt: skip
        for kind in missing:
            meta = {"kind": kind, "backbone": p.backbone, "levels": p.whitening_levels,
                    "image_size": p.whitening_image_size, "set": p.whitening_set,
                    "n_images": len(paths) - len(skipped), "min_side": common["min_side"],
                    "skipped": [s.to_dict() for s in skipped]}  # fmt: skip
            learn_pca_whitening(accs[kind], meta=meta).save(files[kind])
        checkpoint.unlink(missing_ok=True)
        for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a save cut short by a kill (atomic_write's temp)
    return {k: PCAWhitening.load(f) for k, f in files.items()}


def _fc_weight(backbone: torch.nn.Module) -> torch.Tensor | None:
    fc = getattr(backbone, "fc", None)
    return None if fc is None else fc.weight.detach()


# ----------------------------------------------------------------------------- attention
def attention_file(ctx: Context, kind: str) -> Path:
    """Where the profile's trained attention of ``kind`` ('regional' | 'context') lives."""
    return ctx.dirs["models"] / f"attention_{kind}.pt"


def load_attention(ctx: Context, kind: str) -> RegionalAttention:
    """The attention for ``kind``: trained in notebook 02, or the authors' released weights.

    The authors released only the context-aware model (ResNet-101, 2048 channels); the
    regional-only model must be trained (``train_profile_attention``).
    """
    f = attention_file(ctx, kind)
    if f.is_file():
        from .train import load_trained_attention

        return load_trained_attention(f).to(ctx.device).eval()
    if ctx.profile.train.source == "official" and kind == "context":
        return load_official_attention(data_root=ctx.data_root).to(ctx.device).eval()
    raise FileNotFoundError(
        f"no {kind} attention for profile {ctx.profile.name!r}: expected {f}; run notebook "
        "02_train_attention (or ./run_all.sh --only 02) first"
        + ("" if kind == "context" else "; the authors released only the context-aware model")
    )


def available_attention(ctx: Context) -> dict[str, RegionalAttention | None]:
    """Ablation row label -> attention (``None`` for R-MAC); rows without weights are left out."""
    out: dict[str, RegionalAttention | None] = {RMAC: None}
    for label, kind in ATTENTION_KINDS.items():
        try:
            out[label] = load_attention(ctx, kind)
        except FileNotFoundError:
            continue
    return out


def train_profile_attention(
    ctx: Context, kinds: Sequence[str] = ("regional", "context")
) -> dict[str, Any]:
    """Train the profile's attention models (fc first where needed), saved under models/."""
    from . import train as tr

    p, t = ctx.profile, ctx.profile.train
    root = ctx.data_root / "train" / t.train_set
    bb = ctx.backbone
    base = replace(
        t.recipe, levels=p.levels, device=str(ctx.device),
        feature_cache_dir=str(ctx.cache_dir / "train_features"),
    )  # fmt: skip
    out: dict[str, Any] = {}
    fc = None
    if t.fc_iterations > 0:
        cfg = replace(base, iterations=t.fc_iterations, stage="fc")
        res = tr.train_from_folder(root, bb, cfg, ctx.dirs["models"] / "train_fc", resume=True)
        fc = res.module
        out["fc"] = res
    for kind in kinds:
        cfg = replace(base, stage="attention", context=kind == "context")
        res = tr.train_from_folder(
            root, bb, cfg, ctx.dirs["models"] / f"train_{kind}", fc=fc, resume=True
        )
        if res.artefact is None:
            raise RuntimeError(
                f"training of the {kind} attention did not finish ({res.steps} steps)"
            )
        src = res.artefact
        atomic_write(attention_file(ctx, kind), lambda tmp, src=src: shutil.copyfile(src, tmp))
        out[kind] = res
    return out


# ----------------------------------------------------------------------------- descriptors
def ablation_heads(
    ctx: Context,
    whitening: PCAWhitening | None,
    attentions: Mapping[str, RegionalAttention | None] | None = None,
    levels: int | None = None,
    region_fn: Any = None,
    region_source: str = "rmac-grid",
) -> dict[str, Head]:
    """One ``RegionalHead`` per ablation row (R-MAC, + regional, + context)."""
    attentions = available_attention(ctx) if attentions is None else attentions
    lv = ctx.profile.levels if levels is None else levels
    return {
        label: RegionalHead(name=label, levels=lv, attention=att, whitening=whitening,
                            region_fn=region_fn, region_source=region_source)
        for label, att in attentions.items()
    }  # fmt: skip


def describe(
    ctx: Context, ds: RetrievalDataset, heads: Mapping[str, Head], progress: bool = True
) -> dict[str, Descriptors]:
    """Descriptors of ``ds`` for every head (cached under ``<data>/cache/<profile>/``)."""
    return extract_dataset(
        ds, ctx.backbone, heads, ctx.profile.image_size, cache_dir=ctx.cache_dir,
        device=ctx.device, batch_size=ctx.profile.batch_size, progress=progress,
    )  # fmt: skip


def rank(desc: Descriptors, qe_k: int = 0) -> np.ndarray:
    """Full ranking (db, queries), optionally after average QE with the top ``qe_k``.

    Database images in ``desc.skipped`` come after every extracted image (in index order) and
    never serve as QE neighbours: a skipped positive counts as ranked last.
    """
    q, db = desc.queries, desc.db
    skipped = desc.skipped_indices
    if not skipped:
        if qe_k:
            q = average_query_expansion(q, db, k=qe_k)
        return cosine_ranks(q, db)
    keep = np.setdiff1d(np.arange(db.shape[0]), skipped)
    kept = db[torch.from_numpy(keep)]
    if qe_k:
        q = average_query_expansion(q, kept, k=qe_k)
    ranks = keep[cosine_ranks(q, kept)]
    tail = np.repeat(np.asarray(skipped, dtype=ranks.dtype)[:, None], ranks.shape[1], axis=1)
    return np.concatenate([ranks, tail])


def score(
    descs: Mapping[str, Descriptors],
    ds: RetrievalDataset,
    qe_k: int = 0,
    protocols: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``evaluate`` results per method (mAP %, mP@k %, per-query AP %).

    Skipped database images rank last (``rank``) and each result lists them under
    ``'skipped'`` (names), so a table can say how many images were left out.
    """
    out = {}
    for name, d in descs.items():
        r = evaluate(rank(d, qe_k), ds.gnd, protocols=protocols, query_names=ds.qimlist)
        r["skipped"] = [s.name for s in d.skipped]
        out[name] = r
    return out


def map_table(results: Mapping[str, Mapping[str, Any]], protocol: str, column: str) -> pd.DataFrame:
    """Rows = methods, one column of mAP (%) under ``protocol``."""
    return pd.DataFrame(
        {
            "method": list(results),
            column: [r["protocols"][protocol]["map"] for r in results.values()],
        }
    )


def time_per_image(
    ctx: Context, ds: RetrievalDataset, heads: Mapping[str, Head], n_images: int = 20
) -> dict[str, float]:
    """Seconds per database image for each head alone (decode, resize, backbone, head).

    Measured by the same extraction code, one head at a time on the first ``n_images``.
    """
    paths = list(ds.db_paths)[:n_images]
    out = {}
    for name, head in heads.items():
        extract_images(
            paths[:2],
            ctx.backbone,
            {name: head},
            ctx.profile.image_size,
            device=ctx.device,
            progress=False,
        )
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        extract_images(paths, ctx.backbone, {name: head}, ctx.profile.image_size, device=ctx.device,
                       batch_size=ctx.profile.batch_size, progress=False)  # fmt: skip
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0) / len(paths)
    return out


@torch.no_grad()
def attention_for_image(
    ctx: Context,
    path: str | os.PathLike,
    attention: RegionalAttention | None,
    levels: int | None = None,
    bbx: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, regions, alpha) of one image as the descriptor sees it (resized, cropped)."""
    from .descriptor import pool_regions
    from .images import prepare_image
    from .regions import rmac_regions

    image = prepare_image(path, ctx.profile.image_size, bbx)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].to(ctx.device)
    feats = ctx.backbone.features(batch).float()
    regions = rmac_regions(image.shape[0], image.shape[1], levels or ctx.profile.levels)
    pooled = pool_regions(feats, regions)
    if attention is None:
        alpha = np.ones(len(regions))
    else:
        alpha = attention(pooled.avg_pooled, pooled.global_avg)[0].cpu().numpy()
    return image, regions, alpha
