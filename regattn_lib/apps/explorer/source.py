"""What the query explorer searches: a dataset and its cached descriptors, never extracted here.

``ExplorerSource`` is the explorer's whole data source; ``cached_source`` builds it from the
profile's descriptor cache (the ablation rows of notebook 03) and raises ``MissingCacheError``,
naming the command that writes the cache, when part of it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.datasets.retrieval import RetrievalDataset
from regattn_lib.experiments import pipeline
from regattn_lib.experiments.training_plan import train_profile_attention
from regattn_lib.extraction.extract import Descriptors, extract_dataset
from regattn_lib.extraction.heads import Head


class MissingCacheError(FileNotFoundError):
    """A cached artefact the explorer reads is missing; the message names the command."""


@dataclass(frozen=True)
class ExplorerSource:
    """The explorer's data: a dataset, the methods that describe it and their descriptors.

    ``ds``: queries (with boxes), database images and ground truth. ``heads``: method label
    -> head that describes one image (an upload). ``attentions``: method label -> its region
    attention (``None``: uniform weights, R-MAC). ``descriptors``: method label -> descriptors
    of the queries and the database, in the order of ``heads``. ``upright``: the images were
    described with their EXIF orientation applied (a folder of photos), so are the views.
    """

    ds: RetrievalDataset
    heads: dict[str, Head]
    attentions: dict[str, RegionalAttention | None]
    descriptors: dict[str, Descriptors]
    upright: bool = False


def build_command(profile: str) -> str:
    """The command that writes the descriptor cache the explorer reads."""
    return f"./run_all.sh --profile {profile} --only 03"


def _missing_message(ctx: pipeline.Context, what: str) -> str:
    p = ctx.profile.name
    return (
        f"{what}. The query explorer only reads cached descriptors, it never extracts a "
        f"database: run {build_command(p)} (notebook 03_ablations builds the R-MAC, regional "
        f"and context descriptors of {', '.join(ctx.profile.datasets)}; it needs notebooks 01 "
        f"and 02 first: ./run_all.sh --profile {p} runs the whole series)."
    )


def cached_whitening(ctx: pipeline.Context) -> PCAWhitening:
    """The profile's regional PCA-whitening, loaded from its cache and never learned here.

    ``learn_whitening(cached_only=True)`` owns the cache key and never extracts.
    """
    try:
        return pipeline.learn_whitening(ctx, progress=False, cached_only=True)
    except FileNotFoundError:
        raise MissingCacheError(
            _missing_message(ctx, f"No cached whitening under {ctx.cache_dir / 'whitening'}")
        ) from None


def cached_descriptors(
    ctx: pipeline.Context, ds: Any, heads: dict[str, Any]
) -> dict[str, Descriptors]:
    """Descriptors of ``ds`` for ``heads`` from the cache of ``pipeline.describe`` (same keys)."""
    try:
        return extract_dataset(
            ds,
            ctx.backbone,
            heads,
            ctx.profile.image_size,
            cache_dir=ctx.cache_dir,
            cached_only=True,
            device=ctx.device,
            batch_size=ctx.profile.batch_size,
        )
    except FileNotFoundError as e:
        reason = str(e)
        raise MissingCacheError(_missing_message(ctx, reason[:1].upper() + reason[1:])) from None


def cached_source(ctx: pipeline.Context, dataset: str | None = None) -> ExplorerSource:
    """The ablation rows (R-MAC + PCA, + regional attention, + context) of ``dataset``.

    ``dataset``: a test set of the profile, default ``None``: its first ablation set. Raises
    ``MissingCacheError`` when the whitening or the descriptor cache is missing.
    """
    ds = pipeline.dataset(ctx, dataset or ctx.profile.datasets[0])
    whitening = cached_whitening(ctx)
    attentions = pipeline.available_attention(ctx)
    heads = pipeline.heads_for_dataset(pipeline.ablation_heads(ctx, whitening, attentions), ds.name)
    return ExplorerSource(ds, heads, attentions, cached_descriptors(ctx, ds, heads))


def build_cache(ctx: pipeline.Context, dataset: str | None = None, progress: bool = False) -> None:
    """Build what the explorer reads where it is missing, with the pipeline (notebooks 01-03).

    Data, whitening, the attention weights (profiles that train them) and the descriptors
    of the ablation rows; whatever exists is loaded, not redone. For tests and fresh clones.
    """
    pipeline.prepare_data(ctx, progress=progress)
    whitening = pipeline.learn_whitening(ctx, progress=progress)
    if ctx.profile.train.source == "train":
        kinds = [
            k
            for k in pipeline.PAPER_KINDS.values()
            if not pipeline.attention_file(ctx, k).is_file()
        ]
        if kinds:
            train_profile_attention(ctx, kinds=kinds)
    ds = pipeline.dataset(ctx, dataset or ctx.profile.datasets[0])
    pipeline.describe(ctx, ds, pipeline.ablation_heads(ctx, whitening), progress=progress)
