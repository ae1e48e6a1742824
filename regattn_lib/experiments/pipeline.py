"""The steps the notebooks run, one function each: data, backbone, whitening, attention,
descriptors and scores for a profile. Notebooks call these and present the results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import SharedSteps, batch_regions
from regattn_lib.core.evaluate import evaluate
from regattn_lib.core.qe import average_query_expansion
from regattn_lib.core.search import cosine_ranks
from regattn_lib.core.whitening import CrosswiseWhitening, PCAWhitening, learn_pca_whitening
from regattn_lib.datasets.retrieval import (
    IMAGE_HOME,
    RetrievalDataset,
    add_distractors,
    load_retrieval_dataset,
    whitening_images,
)
from regattn_lib.experiments.profiles import Profile, get_profile, seed_data_root
from regattn_lib.experiments.reports import results_dirs
from regattn_lib.extraction import methods
from regattn_lib.extraction.extract import (
    Descriptors,
    extract_dataset,
    write_skipped_images,
)
from regattn_lib.extraction.heads import Head
from regattn_lib.extraction.whitening_stream import accumulate_images
from regattn_lib.models.attention_weights import load_official_attention
from regattn_lib.runtime.atomic import atomic_write_text
from regattn_lib.runtime.environment import env_number, resolve_device, resolve_precision
from regattn_lib.runtime.identity import (
    backbone_weights_id,
    cache_key,
    content_stamp,
    fc_weight,
    list_digest,
)
from regattn_lib.runtime.paths import data_root as resolve_data_root
from regattn_lib.runtime.paths import results_root
from regattn_lib.runtime.shards import ShardStore

#: Row labels of the ablation, as in the paper's table (``methods.ABLATION_METHODS``).
RMAC, REGIONAL, CONTEXT = (methods.label(name) for name in methods.ABLATION_METHODS)
METRIC_REGIONAL, METRIC_CONTEXT = (methods.label(name) for name in methods.METRIC_METHODS)
#: Row label -> attention kind, the paper's recipe (classification) ...
PAPER_KINDS = {REGIONAL: "regional", CONTEXT: "context"}
#: ... and metric learning (beyond the paper; ``experiments.metric_plan``).
METRIC_KINDS = {METRIC_REGIONAL: "metric-regional", METRIC_CONTEXT: "metric-context"}
ATTENTION_KINDS = {**PAPER_KINDS, **METRIC_KINDS}


@dataclass
class Context:
    """A profile resolved against a data root, a results folder and a device.

    The backbone is built on first use from the profile (``models.backbones.build_backbone``),
    or by ``backbone_factory`` when one is given: the seam through which tests, benchmarks and
    the photo search pass a network of their own (``with_backbone``).
    """

    profile: Profile
    data_root: Path
    results: Path
    device: torch.device
    dirs: dict[str, Path] = field(default_factory=dict)
    backbone_factory: Callable[[], torch.nn.Module] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def cache_dir(self) -> Path:
        return self.data_root / "cache" / self.profile.run_name

    @cached_property
    def backbone(self) -> torch.nn.Module:
        if self.backbone_factory is not None:
            return self.backbone_factory()
        from regattn_lib.models.factory import build_backbone

        bb = build_backbone(
            self.profile.backbone, data_root=self.data_root, download=self.profile.download
        )
        return bb.to(self.device)

    def with_backbone(self, backbone: torch.nn.Module) -> Context:
        """This context with ``backbone`` (already built, used as it is) as its network."""
        return replace(self, backbone_factory=lambda: backbone)


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
    res = Path(results).resolve() if results is not None else results_root(prof.run_name, data=root)
    root = seed_data_root(prof, root)  # results stay beside the data root given, data under it
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
    summary: dict[str, Any] = {}
    if p.synthetic is not None:
        from regattn_lib.datasets.synthetic import generate_synthetic

        sp = generate_synthetic(
            p.synthetic, ctx.data_root, seed=p.synthetic_seed, progress=progress
        )
        summary["splits"] = write_split_hashes(sp, ctx.results / SPLIT_HASHES)
    for name in dict.fromkeys(p.datasets + p.revisited):
        ds = load_retrieval_dataset(name, ctx.data_root, download=p.download)
        summary[name] = {"database": ds.n_db, "queries": ds.n_queries, "protocols": ds.protocols}
    if p.whitening_set == CROSSWISE:  # the test sets' own images, loaded above
        summary["whitening"] = {"set": CROSSWISE, "partners": whitening_partners(p)}
        return summary
    white = whitening_images(p.whitening_set, ctx.data_root, download=p.download)
    summary["whitening"] = {"set": p.whitening_set, "images": len(white)}
    return summary


#: The hash list of a synthetic run's splits, in its results folder (``sha256sum -c`` format).
SPLIT_HASHES = "splits.sha256"


def write_split_hashes(paths: Any, dest: Path) -> dict[str, dict[str, Any]]:
    """Write the ``sha256sum`` lines of every file of a synthetic benchmark's splits to ``dest``
    (paths relative to the data root) and return, per split, its file count and digest: the
    proof that a split stayed byte-identical (compare two runs' lists or digests)."""
    from regattn_lib.datasets.synthetic import split_digest, split_hash_lines

    lines = split_hash_lines(paths)
    atomic_write_text(dest, "".join(line + "\n" for part in lines.values() for line in part))
    return {k: {"files": len(v), "sha256": split_digest(v)} for k, v in lines.items()}


def dataset(ctx: Context, name: str, distractors: bool = False) -> RetrievalDataset:
    """A test set of the profile, optionally with the profile's distractors appended."""
    ds = load_retrieval_dataset(name, ctx.data_root, download=ctx.profile.download)
    if distractors:
        if ctx.profile.distractors is None:
            raise ValueError(f"profile {ctx.profile.name!r} has no distractor set")
        ds = add_distractors(
            ds,
            ctx.profile.distractors,
            ctx.profile.n_distractors,
            ctx.data_root,
            download=ctx.profile.download,
        )
    return ds


# ----------------------------------------------------------------------------- whitening
def _whitening_paths(ctx: Context) -> list[Path]:
    p = ctx.profile
    if p.whitening_set in p.datasets + p.revisited:  # a test set: its database images
        paths = list(load_retrieval_dataset(p.whitening_set, ctx.data_root, p.download).db_paths)
    else:
        paths = whitening_images(p.whitening_set, ctx.data_root, download=p.download)
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
    return methods.whitening_head(
        kind,
        levels=ctx.profile.whitening_levels,
        fc_weight=fc_weight(ctx.backbone),
        stride=getattr(ctx.backbone, "stride", 32),
    )


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
        "set": p.whitening_set,
        "n_images": len(paths),
        # every name, not a prefix: two lists that differ anywhere get different files
        "images": list_digest([x.name for x in paths]),
        "backbone": p.backbone,
        "weights": backbone_weights_id(bb),
        "size": p.whitening_image_size,
        "levels": p.whitening_levels,
        "dims": None,
        "min_side": whitening_min_side(p),
        "precision": resolve_precision(p.precision, ctx.device),
    }
    stamp = content_stamp(ctx.data_root / "train" / p.whitening_set)
    if stamp is not None:  # a generated whitening set: its version is part of the key
        common["content"] = stamp
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
    if p.whitening_set == CROSSWISE:
        return _learn_crosswise(ctx, kinds, progress, cached_only, checkpoint_s)
    paths = _whitening_paths(ctx)
    files, common = _whitening_files(ctx, kinds, paths)
    missing = [k for k, f in files.items() if not f.is_file()]
    if missing and cached_only:
        raise FileNotFoundError(
            f"no cached {', '.join(missing)} whitening for profile {p.name!r} at "
            f"{[str(files[k]) for k in missing]}; notebook 01 (./run_all.sh --profile {p.name} "
            "--only 01) learns them all (the regional one and the baselines')"
        )
    if missing:
        if checkpoint_s is None:
            checkpoint_s = env_number("REGATTN_CHECKPOINT_S", 300.0, float)
        group = env_number("REGATTN_SHARD_IMAGES", WHITENING_GROUP)
        checkpoint = ShardStore(
            ctx.cache_dir / "whitening" / f"pass-{cache_key({**common, 'kinds': sorted(missing)})}"
        )
        accs, skipped = accumulate_images(
            paths,
            ctx.backbone,
            {k: _whitening_head(ctx, k) for k in missing},
            p.whitening_image_size,
            group_size=group,
            checkpoint=checkpoint,
            checkpoint_s=checkpoint_s,
            min_original_side=common["min_side"],
            device=ctx.device,
            batch_size=p.batch_size,
            precision=common["precision"],
            progress=progress and f"whitening ({', '.join(missing)})",
        )
        for kind in missing:
            meta = {
                "kind": kind,
                "backbone": p.backbone,
                "levels": p.whitening_levels,
                "image_size": p.whitening_image_size,
                "set": p.whitening_set,
                "n_images": len(paths) - len(skipped),
                "min_side": common["min_side"],
                "skipped": [s.to_dict() for s in skipped],
            }
            learn_pca_whitening(accs[kind], meta=meta).save(files[kind])
        checkpoint.clear()  # with any temporary file of a save cut short by a kill
    out = {k: PCAWhitening.load(f) for k, f in files.items()}
    if out:  # every kind of one pass skipped the same images
        skipped = next(iter(out.values())).meta.get("skipped")
        report_skipped(ctx, f"whitening-{p.whitening_set}", skipped)
    return out


#: ``Profile.whitening_set`` of a whitening learned per test set on another set's images.
CROSSWISE = "crosswise"


def whitening_partners(profile: Profile) -> dict[str, str]:
    """Evaluated test set -> the set its crosswise whitening is learned on (the profile's
    ``whitening_partners``), for every test set of the profile. Raises ``ValueError`` when a
    test set has no partner, or its partner is itself or holds the same images (the revisited
    sets share their classic set's images)."""
    pairs = {str(a): str(b) for a, b in profile.whitening_partners}
    out = {}
    for name in dict.fromkeys(profile.datasets + profile.revisited):
        partner = pairs.get(name)
        if partner is None:
            raise ValueError(
                f"profile {profile.name!r}: whitening_set='crosswise' but no whitening partner "
                f"for {name!r} in whitening_partners {profile.whitening_partners}"
            )
        if IMAGE_HOME.get(partner, partner) == IMAGE_HOME.get(name, name):
            raise ValueError(
                f"profile {profile.name!r}: {name!r} would be whitened on {partner!r}, the same "
                "images; a crosswise whitening is learned on another set"
            )
        out[name] = partner
    return out


def whitening_context(ctx: Context, whitening_set: str) -> Context:
    """``ctx`` with another whitening set (the backbone shared, the same cache folder)."""
    shared = ctx.with_backbone(ctx.backbone)
    return replace(shared, profile=replace(ctx.profile, whitening_set=whitening_set))


def _learn_crosswise(
    ctx: Context,
    kinds: Sequence[str],
    progress: bool,
    cached_only: bool,
    checkpoint_s: float | None,
) -> dict[str, CrosswiseWhitening]:
    """``learn_whitenings`` of ``whitening_set='crosswise'``: one pass (and cache) per partner
    set, on its database images; each test set gets its partner's whitening. A partner sharing
    an image name with the set it whitens is refused."""
    partners = whitening_partners(ctx.profile)
    learned: dict[str, dict[str, PCAWhitening]] = {}
    for partner in dict.fromkeys(partners.values()):
        learned[partner] = learn_whitenings(
            whitening_context(ctx, partner), kinds, progress, cached_only, checkpoint_s
        )
    for name, partner in partners.items():
        own = load_retrieval_dataset(name, ctx.data_root, check_images=False)
        other = load_retrieval_dataset(partner, ctx.data_root, check_images=False)
        shared = set(other.imlist) & (set(own.imlist) | set(own.qimlist))
        if shared:
            raise ValueError(
                f"crosswise whitening: {partner!r} shares {len(shared)} image(s) with {name!r} "
                f"(e.g. {sorted(shared)[0]}); it cannot whiten it"
            )
    return {
        kind: CrosswiseWhitening(
            {name: learned[partner][kind] for name, partner in partners.items()}, partners
        )
        for kind in kinds
    }


def heads_for_dataset(heads: Mapping[str, Head], name: str) -> dict[str, Head]:
    """``heads`` with every crosswise whitening replaced by the one for test set ``name``."""
    out = {}
    for key, head in heads.items():
        w = getattr(head, "whitening", None)
        out[key] = (
            methods.with_whitening(head, w.for_dataset(name))
            if isinstance(w, CrosswiseWhitening)
            else head
        )
    return out


# ----------------------------------------------------------------------------- attention
#: Provenance labels of an attention model, shown in every table row that uses one.
RELEASED, TRAINED = "released weights", "trained here"
TRAINED_METRIC = "trained here by metric learning (beyond the paper)"
NO_ATTENTION = "none (no attention)"
#: The label of an attention row a profile without training (paper-quick) leaves empty.
NOT_TRAINED = (
    "not computed: needs training on ImageNet (the authors released only the context-aware "
    "model); ./run_all.sh --profile paper trains it"
)


def untrained_rows(ctx: Context, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per ablation method, ``method`` and ``weights`` columns) with an
    empty row labelled :data:`NOT_TRAINED` for each attention the profile cannot have because
    it trains nothing (``train.train_set=None``), in the paper's row order."""
    if ctx.profile.train.train_set is not None:
        return table
    rows = []
    for label, kind in PAPER_KINDS.items():  # metric rows: absent where not learned
        if label not in set(table["method"]) and not uses_released_weights(ctx, kind):
            rows.append({"method": label, "weights": NOT_TRAINED})
    if not rows:
        return table
    out = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    order = list(methods.label(n) for n in methods.ABLATION_METHODS)
    rank = {m: order.index(m) if m in order else len(order) for m in out["method"]}
    out = out.iloc[sorted(range(len(out)), key=lambda i: rank[out["method"].iloc[i]])]
    out = out.reset_index(drop=True)
    out.attrs = table.attrs
    return out


def attention_file(ctx: Context, kind: str, seed: int | None = None) -> Path:
    """Where the profile's trained attention of ``kind`` ('regional' | 'context') lives:
    ``attention_<kind>.pt`` for the profile's first seed (``seed=None``), else
    ``attention_<kind>_seed<seed>.pt``.

    The authors' released context-aware weights stay in the data root under their own name;
    nothing trained here is ever written over them.
    """
    if seed is None or seed == ctx.profile.train.seeds[0]:
        return ctx.dirs["models"] / f"attention_{kind}.pt"
    return ctx.dirs["models"] / f"attention_{kind}_seed{seed}.pt"


def uses_released_weights(ctx: Context, kind: str) -> bool:
    """Whether ``kind`` comes from the authors' file: the context model of ``source='official'``."""
    return ctx.profile.train.source == "official" and kind == "context"


def load_attention(ctx: Context, kind: str, seed: int | None = None) -> RegionalAttention:
    """The attention for ``kind``: the authors' released weights, or trained in notebook 02.

    The authors released only the context-aware model (ResNet-101, 2048 channels); with
    ``source='official'`` it is always that file, and the regional-only model must be trained
    (``training_plan.train_profile_attention``). The module's ``provenance`` attribute says which
    (:data:`RELEASED` or :data:`TRAINED`).
    """
    if uses_released_weights(ctx, kind):
        att = load_official_attention(data_root=ctx.data_root)
        att.provenance = RELEASED  # type: ignore[assignment]
        att.kind = kind  # type: ignore[assignment]
        return att.to(ctx.device).eval()
    f = attention_file(ctx, kind, seed)
    if f.is_file():
        from regattn_lib.training.checkpoint import load_trained_attention

        att = load_trained_attention(f)
        att.provenance = TRAINED if kind in PAPER_KINDS.values() else TRAINED_METRIC  # type: ignore[assignment]
        att.kind = kind  # type: ignore[assignment]
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


def attention_seeds(ctx: Context) -> dict[str, list[RegionalAttention | None]]:
    """Ablation row label -> one attention per seed of the profile (``[None]`` for R-MAC; the
    released weights once); seeds not trained yet are left out, rows without any too."""
    out: dict[str, list[RegionalAttention | None]] = {RMAC: [None]}
    for label, kind in ATTENTION_KINDS.items():
        seeds = [None] if uses_released_weights(ctx, kind) else ctx.profile.train.seeds
        models = []
        for seed in seeds:
            try:
                models.append(load_attention(ctx, kind, seed))
            except FileNotFoundError:
                continue
        if models:
            out[label] = models
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
    """One head per ablation row (R-MAC, + regional, + context), built by ``methods``.

    ``attentions``: row label -> attention model (default :func:`available_attention`: the
    rows whose weights exist); ``levels`` default: the profile's; ``region_fn`` and
    ``region_source``: regions other than the R-MAC grid (the RPN study).
    """
    attentions = available_attention(ctx) if attentions is None else attentions
    lv = ctx.profile.levels if levels is None else levels
    return {
        label: methods.build_head(
            label,
            levels=lv,
            attention=att,
            whitening=whitening,
            region_fn=region_fn,
            region_source=region_source,
        )
        for label, att in attentions.items()
    }


def describe(
    ctx: Context,
    ds: RetrievalDataset,
    heads: Mapping[str, Head],
    progress: bool = True,
    precision: str | None = None,
) -> dict[str, Descriptors]:
    """Descriptors of ``ds`` for every head (cached under ``<data>/cache/<profile>/``).

    ``precision``: the backbone's (``runtime.environment.PRECISIONS``); ``None`` (default) takes the
    profile's (``fp32`` in the paper profile). The cache is keyed by it.
    """
    heads = heads_for_dataset(heads, ds.name)  # a crosswise whitening: the one for ds
    descs = extract_dataset(
        ds,
        ctx.backbone,
        heads,
        ctx.profile.image_size,
        cache_dir=ctx.cache_dir,
        device=ctx.device,
        batch_size=ctx.profile.batch_size,
        progress=progress,
        precision=ctx.profile.precision if precision is None else precision,
    )
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


@torch.no_grad()
def attentions_for_image(
    ctx: Context,
    path: str | os.PathLike,
    attentions: Mapping[str, RegionalAttention | None],
    levels: int | None = None,
    bbx: Sequence[float] | None = None,
    upright: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(image, regions, label -> alpha) of one image as the descriptor sees it (resized,
    cropped, the backbone in the profile's precision), one backbone pass for all attentions.
    ``upright=True`` reads it as own-photo search does (EXIF orientation applied)."""
    from regattn_lib.datasets.images import prepare_image, read_photo
    from regattn_lib.extraction.image_stream import backbone_features

    if upright:
        image = read_photo(path, ctx.profile.image_size, box=bbx).image
    else:
        image = prepare_image(path, ctx.profile.image_size, bbx)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].to(ctx.device)
    precision = resolve_precision(ctx.profile.precision, ctx.device)
    feats = backbone_features(ctx.backbone, ctx.backbone.preprocess(batch), precision)
    stride = getattr(ctx.backbone, "stride", 32)
    alphas, regions = {}, None
    shared = SharedSteps()  # the attentions see one pooling of the regions
    for label, attention in attentions.items():
        head = methods.attention_head(attention, levels or ctx.profile.levels, stride)
        ((_, out),) = head.describe(feats, batch, shared)
        regions, alphas[label] = out.features.regions, out.weights()[0].numpy()
    if regions is None:
        regions = batch_regions(batch, levels or ctx.profile.levels)[0][1]
    return image, regions, alphas


def attention_for_image(
    ctx: Context,
    path: str | os.PathLike,
    attention: RegionalAttention | None,
    levels: int | None = None,
    bbx: Sequence[float] | None = None,
    upright: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, regions, alpha) of one image as the descriptor sees it (resized, cropped, the
    backbone in the profile's precision; ``upright``: EXIF applied, as for own photos)."""
    image, regions, alphas = attentions_for_image(ctx, path, {"a": attention}, levels, bbx, upright)
    return image, regions, alphas["a"]
