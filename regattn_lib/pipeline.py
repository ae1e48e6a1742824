"""The steps the notebooks run, one function each: data, backbone, whitening, attention,
descriptors and scores for a profile. Notebooks call these and present the results.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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
    cache_key,
    env_number,
    extract_dataset,
    list_digest,
    write_skipped_images,
)
from .heads import GlobalHead, Head, RegionalHead, RegionalVectorsHead
from .image_stream import resolve_device, resolve_precision
from .io_utils import atomic_write, atomic_write_json
from .paths import data_root as resolve_data_root
from .paths import results_root
from .profiles import Profile, get_profile
from .qe import average_query_expansion
from .reports import results_dirs
from .search import cosine_ranks
from .whitening import PCAWhitening, learn_pca_whitening
from .whitening_stream import accumulate_images

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
    overrides: Mapping[str, Any] | None = None,
    verbose: bool = False,
    **fields: Any,
) -> Context:
    """Resolve a profile and create its ``results/<profile>/`` folders: every notebook's setup.

    ``overrides``: a notebook's ``overrides`` parameter (papermill ``-y``, or
    ``./run_all.sh --overrides FILE.yaml``), a possibly nested mapping of profile fields, e.g.
    ``{"image_size": 128, "train": {"recipe": {"iterations": 4}}}`` (see
    ``profiles.apply_overrides``); ``fields``: top-level field overrides as keywords.
    ``verbose=True`` prints the resolved profile, data and results folders and the device.
    """
    prof = get_profile(profile, overrides, **fields)
    root = resolve_data_root(data_root)
    res = Path(results).resolve() if results is not None else results_root(prof.name)
    torch.manual_seed(0)
    ctx = Context(prof, root, res, resolve_device(device), results_dirs(res))
    if verbose:
        print(f"profile={prof.name} backbone={prof.backbone} device={ctx.device}")
        print(f"data: {ctx.data_root}\nresults: {ctx.results}")
        if overrides:
            print(f"overrides: {dict(overrides)}")
    return ctx


def backbone_note(ctx: Context) -> str:
    """One table note naming the backbone, its weights and the input convention in use."""
    m = ctx.backbone.input_metadata()
    weights = str(m.get("weights_id"))[:12]
    return (
        f"backbone {m.get('backbone')} (weights sha256 {weights}...), input convention "
        f"{m.get('input_convention')} ({m.get('convention_source')}), precision {ctx.profile.precision}"
    )


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
        "weights": getattr(bb, "cache_id", getattr(bb, "weights_id", None)), "size": p.whitening_image_size,
        "levels": p.whitening_levels, "dims": None, "min_side": whitening_min_side(p),
        "precision": resolve_precision(p.precision, ctx.device),
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
    (``whitening_stream.accumulate_images``), so memory stays at a few C x C matrices however many
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
    out = {k: PCAWhitening.load(f) for k, f in files.items()}
    if out:  # every kind of one pass skipped the same images
        skipped = next(iter(out.values())).meta.get("skipped")
        report_skipped(ctx, f"whitening-{p.whitening_set}", skipped)
    return out


def _fc_weight(backbone: torch.nn.Module) -> torch.Tensor | None:
    fc = getattr(backbone, "fc", None)
    return None if fc is None else fc.weight.detach()


# ----------------------------------------------------------------------------- attention
#: Provenance labels of an attention model, shown in every table row that uses one.
RELEASED, TRAINED = "released weights", "trained here"
NO_ATTENTION = "none (no attention)"


def attention_file(ctx: Context, kind: str) -> Path:
    """Where the profile's trained attention of ``kind`` ('regional' | 'context') lives.

    The authors' released context-aware weights stay in the data root under their own name;
    nothing trained here is ever written over them.
    """
    return ctx.dirs["models"] / f"attention_{kind}.pt"


def uses_released_weights(ctx: Context, kind: str) -> bool:
    """Whether ``kind`` comes from the authors' file: the context model of ``source='official'``."""
    return ctx.profile.train.source == "official" and kind == "context"


def load_attention(ctx: Context, kind: str) -> RegionalAttention:
    """The attention for ``kind``: the authors' released weights, or trained in notebook 02.

    The authors released only the context-aware model (ResNet-101, 2048 channels); with
    ``source='official'`` it is always that file, and the regional-only model must be trained
    (``train_profile_attention``). The module's ``provenance`` attribute says which
    (:data:`RELEASED` or :data:`TRAINED`).
    """
    if uses_released_weights(ctx, kind):
        att = load_official_attention(data_root=ctx.data_root)
        att.provenance = RELEASED  # type: ignore[assignment]
        return att.to(ctx.device).eval()
    f = attention_file(ctx, kind)
    if f.is_file():
        from .train import load_trained_attention

        att = load_trained_attention(f)
        att.provenance = TRAINED  # type: ignore[assignment]
        return att.to(ctx.device).eval()
    raise FileNotFoundError(
        f"no {kind} attention for profile {ctx.profile.name!r}: expected {f}; run notebook "
        "02_train_attention (or ./run_all.sh --only 02) first"
        + ("" if kind == "context" else "; the authors released only the context-aware model")
    )


def provenance(attention: RegionalAttention | None) -> str:
    """The table label of an attention: released weights, trained here, or no attention."""
    if attention is None:
        return NO_ATTENTION
    return getattr(attention, "provenance", TRAINED)


def available_attention(ctx: Context) -> dict[str, RegionalAttention | None]:
    """Ablation row label -> attention (``None`` for R-MAC); rows without weights are left out."""
    out: dict[str, RegionalAttention | None] = {RMAC: None}
    for label, kind in ATTENTION_KINDS.items():
        try:
            out[label] = load_attention(ctx, kind)
        except FileNotFoundError:
            continue
    return out


def training_root(ctx: Context) -> Path:
    """The classification set the attention trains on (``$REGATTN_IMAGENET`` for ImageNet)."""
    from .datasets.imagenet import IMAGENET_ENV

    t = ctx.profile.train
    if t.train_set == "imagenet" and os.environ.get(IMAGENET_ENV):
        return Path(os.environ[IMAGENET_ENV]).expanduser()
    return ctx.data_root / "train" / t.train_set


def kinds_to_train(ctx: Context) -> list[str]:
    """Attention kinds the profile trains: both, or only the regional one next to released
    context weights (``source='official'``)."""
    return [k for k in ATTENTION_KINDS.values() if not uses_released_weights(ctx, k)]


def can_train(ctx: Context) -> bool:
    """Whether the training set is in place (``<root>/train`` and ``<root>/val``)."""
    root = training_root(ctx)
    return (root / "train").is_dir() and (root / "val").is_dir()


@dataclass
class TrainingPlan:
    """What ``train_profile_attention`` will do, said before it starts.

    ``fc_iterations``: iterations of a new fc trained first (0: the backbone's own fc1000);
    ``iterations``: of each attention model; ``seconds_per_iteration``: the backbone forward of
    one mini-batch at the crop size, measured now on the device (validation excluded);
    ``deviations``: named departures from the authors' recipe.
    """

    kinds: list[str]
    fc_iterations: int
    iterations: int
    seconds_per_iteration: float | None
    deviations: list[str]

    @property
    def estimated_seconds(self) -> float | None:
        if self.seconds_per_iteration is None:
            return None
        n = self.fc_iterations + self.iterations * len(self.kinds)
        return n * self.seconds_per_iteration

    def describe(self, device: torch.device) -> str:
        est = self.estimated_seconds
        time_s = (
            f"about {est / 3600:.1f} h" if est is not None and est >= 3600
            else f"about {est / 60:.1f} min" if est is not None
            else "time not estimated (cached features)"
        )  # fmt: skip
        fc = f"a new fc for {self.fc_iterations} iterations, then " if self.fc_iterations else ""
        return (
            f"[train] {fc}{' and '.join(self.kinds)} attention for {self.iterations} iterations "
            f"each: {time_s} on {device} (backbone forward measured per mini-batch); "
            "resumable: a rerun continues from the last checkpoint"
        )


@torch.no_grad()
def _seconds_per_iteration(ctx: Context, recipe: Any) -> float | None:
    if recipe.feature_cache_views:
        return None  # the backbone runs once per image up front, not per iteration
    bb = ctx.backbone
    x = torch.randint(0, 256, (recipe.batch_size, 3, recipe.crop, recipe.crop), dtype=torch.uint8)
    bb.features(x)  # warm-up
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    bb.features(x)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def training_plan(ctx: Context, kinds: Sequence[str] | None = None) -> TrainingPlan:
    """The profile's training: which models, the fc route, iterations and a time estimate.

    Route (b), the authors' setting: a backbone with its own ImageNet fc1000 (their Caffe file)
    trains the attention under it. Route (a): a backbone without one (cirtorch's Caffe file)
    first trains a new fc with alpha = 1, then the attention under it, the authors' advice for
    such a backbone; a named deviation in the tables. ``train.fc_iterations > 0`` forces (a).
    """
    t = ctx.profile.train
    kinds = kinds_to_train(ctx) if kinds is None else list(kinds)
    for k in kinds:
        if uses_released_weights(ctx, k):
            raise ValueError(
                f"profile {ctx.profile.name!r} uses the authors' released {k} weights; training a "
                f"{k} model here would replace them in the tables (set train.source='train')"
            )
    has_fc = getattr(ctx.backbone, "fc", None) is not None
    fc_iterations = t.fc_iterations or (0 if has_fc else t.recipe.iterations)
    deviations = []
    if fc_iterations and t.train_set == "imagenet":
        deviations.append(
            f"the backbone ({ctx.profile.backbone}) has no ImageNet classifier, so a fc was "
            f"trained here first ({fc_iterations} iterations, frozen backbone, alpha = 1) and "
            "the attention under it; the authors trained under their Caffe file's own fc1000"
        )
    if t.recipe.feature_cache_views:
        deviations.append(
            f"attention trained on cached backbone features of {t.recipe.feature_cache_views} "
            "augmented views per image (feature_cache_views), not a fresh crop per iteration"
        )
    return TrainingPlan(kinds, fc_iterations, t.recipe.iterations,
                        _seconds_per_iteration(ctx, t.recipe), deviations)  # fmt: skip


def notebook_training(ctx: Context, train: bool | None = None) -> dict[str, Any]:
    """Notebook 02's step: train what the profile trains, or say why nothing is trained.

    ``train``: ``None`` trains when the profile trains its own attention (offline profiles) or
    when its training set is present (the paper profile's regional model on ImageNet);
    ``False`` never trains; ``True`` trains and fails naming the missing set if it is absent.
    Returns the runs of ``train_profile_attention`` (empty when nothing was trained).
    """
    if train is None:
        train = ctx.profile.train.source == "train" or can_train(ctx)
    runs = train_profile_attention(ctx) if train and kinds_to_train(ctx) else {}
    if not train:
        print(
            f"not training: no training set at {training_root(ctx)} (train/ and val/); the "
            "'+ regional attention' rows stay empty"
        )
    if ctx.profile.train.source == "official":
        print(
            "using the authors' released context-aware attention:", load_attention(ctx, "context")
        )
    return runs


def _plan_file(ctx: Context) -> Path:
    return ctx.dirs["models"] / "training_plan.json"


def training_notes(ctx: Context) -> list[str]:
    """The named deviations of the attention trained here (for the tables' notes)."""
    f = _plan_file(ctx)
    if not f.is_file():
        return []
    return [f"trained here: {d}" for d in json.loads(f.read_text()).get("deviations", [])]


def train_profile_attention(
    ctx: Context, kinds: Sequence[str] | None = None, plan: TrainingPlan | None = None
) -> dict[str, Any]:
    """Train the profile's attention models (fc first where needed), saved under models/.

    ``kinds`` default: :func:`kinds_to_train`. Prints the plan (with its time estimate) before
    starting. Every stage resumes from its last checkpoint, so an interrupted run loses at most
    ``checkpoint_every`` iterations.
    """
    from . import train as tr

    p, t = ctx.profile, ctx.profile.train
    plan = training_plan(ctx, kinds) if plan is None else plan
    print(plan.describe(ctx.device), flush=True)
    atomic_write_json(_plan_file(ctx), asdict(plan))
    root = training_root(ctx)
    bb = ctx.backbone
    base = replace(
        t.recipe, levels=p.levels, device=str(ctx.device),
        feature_cache_dir=str(ctx.cache_dir / "train_features"),
    )  # fmt: skip
    out: dict[str, Any] = {}
    fc = None
    if plan.fc_iterations > 0:
        cfg = replace(base, iterations=plan.fc_iterations, stage="fc")
        res = tr.train_from_folder(root, bb, cfg, ctx.dirs["models"] / "train_fc", resume=True)
        fc = res.module
        out["fc"] = res
    for kind in plan.kinds:
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
    ctx: Context,
    ds: RetrievalDataset,
    heads: Mapping[str, Head],
    progress: bool = True,
    precision: str | None = None,
) -> dict[str, Descriptors]:
    """Descriptors of ``ds`` for every head (cached under ``<data>/cache/<profile>/``).

    ``precision``: the backbone's (``image_stream.PRECISIONS``); ``None`` (default) takes the
    profile's (``fp32`` in the paper profile). The cache is keyed by it.
    """
    descs = extract_dataset(
        ds, ctx.backbone, heads, ctx.profile.image_size, cache_dir=ctx.cache_dir,
        device=ctx.device, batch_size=ctx.profile.batch_size, progress=progress,
        precision=ctx.profile.precision if precision is None else precision,
    )  # fmt: skip
    label = ds.name + ("+distractors" if getattr(ds, "distractors", None) else "")  # a file name
    report_skipped(ctx, label, next(iter(descs.values()), None))
    return descs


def skipped_report(ctx: Context, label: str) -> Path:
    """``tables/skipped_images_<label>.csv``: the images of a set that could not be used."""
    return ctx.dirs["tables"] / f"skipped_images_{label}.csv"


def report_skipped(ctx: Context, label: str, records: Any) -> Path | None:
    """Write the skipped-image report of ``label`` beside the tables when anything was skipped.

    ``records``: a ``Descriptors`` (its ``skipped``) or a list of skipped records (whitening).
    Every head of one pass skips the same images, so one report per set is enough.
    """
    skipped = getattr(records, "skipped", records) or []
    if not skipped or "tables" not in ctx.dirs:  # a bare Context (tests) has no results folders
        return None
    return write_skipped_images(skipped_report(ctx, label), records, dataset=label)


def skipped_notes(ctx: Context) -> list[str]:
    """One table note per set with skipped images (named in its report beside the tables)."""
    notes = []
    for f in sorted(ctx.dirs["tables"].glob("skipped_images_*.csv")):
        n = len(pd.read_csv(f))
        label = f.stem[len("skipped_images_") :]
        notes.append(
            f"{label}: {n} image(s) could not be used (unreadable or too small) and were "
            f"skipped; a skipped positive counts as a miss; listed in {f.name}"
        )
    return notes


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


@dataclass(frozen=True)
class ImageTiming:
    """Seconds per image of one method, as the paper's time column.

    ``median_s``: median over the ``n`` timed images; ``times_s``: each image's time;
    ``device``: the GPU's or CPU's name; ``precision``: the backbone's (``fp32``, ``fp16``,
    ``bf16``); ``image_size``: the longest side the images were resized to.
    """

    median_s: float
    device: str
    precision: str
    n: int
    image_size: int | None
    times_s: tuple[float, ...]


@torch.no_grad()
def time_per_image(
    ctx: Context,
    ds: RetrievalDataset,
    heads: Mapping[str, Head],
    n_images: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, ImageTiming]:
    """Seconds per image of each method (backbone + its head), measured as the paper's column.

    The first ``n_images`` database images (default 20) are decoded and resized to the
    profile's ``timing_image_size`` (``None``: ``image_size``, 1024 px in the paper) and put
    on the device before any timing, so decoding is excluded. Per method: one untimed warm-up
    pass on each distinct image shape, then one image at a time, the device synchronised
    before and after each; each image's time covers normalisation, the backbone in the
    profile's ``precision`` and the head up to the descriptor on the host. Returns method ->
    :class:`ImageTiming` (median over the images, device and precision named). ``clock`` is
    the timer (default ``time.perf_counter``).
    """
    from .bench_report import device_name
    from .image_stream import backbone_features
    from .images import prepare_image

    p, dev, bb = ctx.profile, ctx.device, ctx.backbone
    size = p.timing_image_size if p.timing_image_size is not None else p.image_size
    precision = resolve_precision(p.precision, dev)
    paths = list(ds.db_paths)[:n_images]
    if not paths:
        raise ValueError(f"{ds.name}: no database images to time")
    images = [
        torch.from_numpy(np.ascontiguousarray(prepare_image(path, size)))
        .permute(2, 0, 1)[None]
        .to(dev)
        for path in paths
    ]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(head: Head, batch: torch.Tensor) -> torch.Tensor:
        feats = backbone_features(bb, bb.preprocess(batch), precision)
        return head(feats, batch).cpu()

    warmup = list({tuple(im.shape): im for im in images}.values())
    out = {}
    for name, head in heads.items():
        for im in warmup:
            step(head, im)
        times = []
        for im in images:
            sync()
            t0 = clock()
            step(head, im)
            sync()
            times.append(clock() - t0)
        out[name] = ImageTiming(float(np.median(times)), device_name(dev), precision, len(times),
                                size, tuple(times))  # fmt: skip
    return out


@torch.no_grad()
def attention_for_image(
    ctx: Context,
    path: str | os.PathLike,
    attention: RegionalAttention | None,
    levels: int | None = None,
    bbx: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, regions, alpha) of one image as the descriptor sees it (resized, cropped, the
    backbone in the profile's precision)."""
    from .descriptor import pool_regions
    from .image_stream import backbone_features
    from .images import prepare_image
    from .regions import rmac_regions

    image = prepare_image(path, ctx.profile.image_size, bbx)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].to(ctx.device)
    precision = resolve_precision(ctx.profile.precision, ctx.device)
    feats = backbone_features(ctx.backbone, ctx.backbone.preprocess(batch), precision)
    regions = rmac_regions(image.shape[0], image.shape[1], levels or ctx.profile.levels)
    pooled = pool_regions(feats, regions)
    if attention is None:
        alpha = np.ones(len(regions))
    else:
        alpha = attention(pooled.avg_pooled, pooled.global_avg)[0].cpu().numpy()
    return image, regions, alpha
