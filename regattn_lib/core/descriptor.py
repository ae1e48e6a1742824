"""The paper's global descriptor as pure functions: f = L2( mean_i alpha_i * L2( P (x_i - mu) ) ).

One path from a feature map to a descriptor, shared by extraction (``extraction.heads``),
training (``training.model``) and the figures (``experiments.pipeline.attention_for_image``,
the photo views), so that all of them see the same regions, the same pooling and the same
attention:

1. ``batch_regions``: the regions of a batch of images (the R-MAC grid, or a region source
   such as RPN proposals), grouped by the images that share them;
2. ``pool_regions``: x_i (regional max pool), k_i (regional average pool) and g (global
   average pool) of a feature map over those regions;
3. ``attention_weights``: alpha_i from (k_i, g), or ``None`` for the R-MAC baseline;
4. ``whiten_regions`` (PCA-whitening of each x_i, then L2) and ``weighted_l2_mean`` (the
   alpha-weighted mean, then L2); ``weighted_mean`` is the raw mean_i alpha_i x_i that
   classification training feeds to its fc.

``describe`` is the one composite: images + feature map -> per group of images, a
``RegionalOutput`` holding the pooled regions, alpha, the raw weighted mean and the descriptor
(the last two computed when first read, so training pays for no whitening and extraction for no
raw mean). ``describe_pooled`` is its second half, for pooled vectors already at hand (the
training loop's cached crops). Heads evaluated on one feature map share the pooling of equal
regions and the whitening of equal pooled vectors through a ``SharedSteps`` passed in.
cirtorch's ``functional.py``/``pooling.py`` split is the model: these functions hold no state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from regattn_lib.core.pooling import global_avg_pool, regional_avg_pool, regional_max_pool
from regattn_lib.core.regions import region_cells, rmac_regions
from regattn_lib.core.whitening import PCAWhitening

#: A region source: uint8 images (N, 3, H, W) -> one (R_i, 4) int array of (x, y, w, h)
#: regions in input pixels per image (e.g. RPN proposals).
RegionFn = Callable[[torch.Tensor], list[np.ndarray]]

#: Anything that maps (k (N, R, C), g (N, C)) to alpha (N, R): a ``RegionalAttention``, its DDP
#: wrapper, or a plain callable.
AttentionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / max(||x||, eps)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


class SharedSteps:
    """The steps that heads evaluated on one feature map share: the pooling of equal regions,
    the whitening of equal pooled vectors, and the whole output of equal (attention, whitening,
    regions), each computed once.

    Make one per feature map (extraction makes one per batch) and pass it to every head of that
    map; it keeps what it computed for as long as it lives, so let it go with the batch.
    ``computed`` counts the steps actually run, by kind (``'pool'``, ``'whiten'``, ``'output'``).
    """

    def __init__(self) -> None:
        self._memo: dict[tuple, Any] = {}
        self.computed: dict[str, int] = {}

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, the remembered result after."""
        if key not in self._memo:
            self._memo[key] = compute()
            self.computed[key[0]] = self.computed.get(key[0], 0) + 1
        return self._memo[key]


@dataclass
class RegionalFeatures:
    """Everything pooled from one batch of same-size images.

    ``max_pooled`` x_i (N, R, C); ``avg_pooled`` k_i (N, R, C); ``global_avg`` g (N, C);
    ``regions`` (R, 4) in input pixels (x, y, w, h) and ``cells`` (R, 4) inclusive feature
    cells, ``None`` for vectors pooled elsewhere (training's cached crops).
    """

    max_pooled: torch.Tensor
    avg_pooled: torch.Tensor
    global_avg: torch.Tensor
    regions: np.ndarray | None = None
    cells: np.ndarray | None = None


@dataclass(eq=False)
class RegionalOutput:
    """What the descriptor's path gives for one group of images.

    ``features``: the pooled regions; ``alpha`` (N, R), ``None`` for R-MAC; ``weighted_mean``
    (N, C): mean_i alpha_i x_i of the raw x_i (classification training's fc input);
    ``whitened`` (N, R, D): L2(P(x_i - mu)); ``descriptor`` (N, D): the L2-normalised
    descriptor. The last three are computed when first read.
    """

    features: RegionalFeatures
    alpha: torch.Tensor | None
    whitening: PCAWhitening | None = None
    shared: SharedSteps | None = field(default=None, repr=False)
    share_key: tuple = field(default=(), repr=False)

    @cached_property
    def weighted_mean(self) -> torch.Tensor:
        return weighted_mean(self.features.max_pooled, self.alpha)

    @cached_property
    def whitened(self) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return whiten_regions(self.features.max_pooled, self.whitening)

        if self.shared is None:
            return compute()
        return self.shared.get(("whiten", *self.share_key, id(self.whitening)), compute)

    @cached_property
    def descriptor(self) -> torch.Tensor:
        return weighted_l2_mean(self.whitened, self.alpha)

    def weights(self) -> torch.Tensor:
        """alpha, with R-MAC's implicit weights (all 1) made explicit, on the CPU."""
        if self.alpha is None:
            return torch.ones(self.features.max_pooled.shape[:2])
        return self.alpha.detach().cpu()


def batch_regions(
    images: torch.Tensor,
    levels: int = 5,
    full_image_region: bool = False,
    region_fn: RegionFn | None = None,
) -> list[tuple[slice, np.ndarray]]:
    """The regions of a batch of same-size images, as (images, regions) groups.

    Parameters
    ----------
    images:
        uint8 (N, 3, H, W); only the size is read unless ``region_fn`` looks at the pixels.
    levels:
        R-MAC scales L (paper: 5).
    full_image_region:
        Prepend the full-image region (cirtorch's variant; off in the authors' code).
    region_fn:
        ``None`` (default): the R-MAC grid, one group for the whole batch. Otherwise a
        ``RegionFn`` giving each image its own regions: one group per image.
    """
    if region_fn is None:
        grid = rmac_regions(images.shape[2], images.shape[3], levels, full_image_region)
        return [(slice(None), grid)]
    per_image = region_fn(images)
    if len(per_image) != images.shape[0]:
        raise ValueError(
            f"region_fn returned {len(per_image)} region sets for {images.shape[0]} images"
        )
    return [
        (slice(i, i + 1), np.asarray(r, dtype=np.int64).reshape(-1, 4))
        for i, r in enumerate(per_image)
    ]


def pool_regions(feats: torch.Tensor, regions: np.ndarray, stride: int = 32) -> RegionalFeatures:
    """Pool a feature map (N, C, h, w) over ``regions`` given in input pixels.

    ``stride``: input pixels per feature cell (32 for every backbone here); regions map to cells
    as the authors' RoI pooling does (``regions.region_cells``).
    """
    cells = region_cells(regions, feats.shape[2], feats.shape[3], stride)
    return RegionalFeatures(
        max_pooled=regional_max_pool(feats, cells),
        avg_pooled=regional_avg_pool(feats, cells),
        global_avg=global_avg_pool(feats),
        regions=np.asarray(regions),
        cells=cells,
    )


def attention_weights(
    attention: AttentionFn | None,
    regional_avg: torch.Tensor,
    global_avg: torch.Tensor,
) -> torch.Tensor | None:
    """alpha (N, R) in fp32 from k_i (N, R, C) and g (N, C), or ``None`` (R-MAC: all 1).

    ``attention``: a ``RegionalAttention``, a wrapper of one (DistributedDataParallel) or any
    callable (k, g) -> alpha. A module runs in its own parameters' dtype, whatever the backbone's precision was. Gradients flow
    to its parameters (training uses this function too).
    """
    if attention is None:
        return None
    params = attention.parameters() if isinstance(attention, torch.nn.Module) else iter(())
    first = next(params, None)
    if first is not None:
        regional_avg, global_avg = regional_avg.to(first.dtype), global_avg.to(first.dtype)
    return attention(regional_avg, global_avg).float()


def whiten_regions(regional: torch.Tensor, whitening: PCAWhitening | None = None) -> torch.Tensor:
    """L2( P (x_i - mu) ) of each regional vector (N, R, C) -> (N, R, D), in fp32; without a
    whitening, L2(x_i)."""
    x = regional.float()
    if whitening is not None:
        x = whitening.apply(x)
    return l2_normalize(x)


def weighted_l2_mean(
    normalized: torch.Tensor,
    alpha: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L2( (1/R) sum_i alpha_i xhat_i ) of whitened, normalised regional vectors (N, R, D)
    (``whiten_regions``); ``alpha`` ``None`` is R-MAC; ``region_mask`` as in ``aggregate``."""
    x = normalized
    w = torch.ones(x.shape[:2], device=x.device) if alpha is None else alpha.float()
    if region_mask is not None:
        w = w * region_mask.float()
        count = region_mask.float().sum(1, keepdim=True).clamp_min(1)
    else:
        count = torch.full((x.shape[0], 1), float(x.shape[1]), device=x.device)
    f = (w[..., None] * x).sum(1) / count
    return l2_normalize(f)


def aggregate(
    regional: torch.Tensor,
    alpha: torch.Tensor | None = None,
    whitening: PCAWhitening | None = None,
    region_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine regional vectors into one global descriptor per image.

    Parameters
    ----------
    regional:
        Raw max-pooled regional vectors x_i, (N, R, C).
    alpha:
        Attention weights (N, R), not normalised (authors' setting); ``None`` means all 1,
        which is the R-MAC baseline.
    whitening:
        PCA-whitening applied to each x_i before its L2 normalisation; ``None`` skips it.
    region_mask:
        Optional (N, R) bool, False for padding regions (images with fewer regions); the mean
        is then over each image's own regions.

    Returns (N, D) L2-normalised descriptors: ``weighted_l2_mean(whiten_regions(...))``.
    """
    return weighted_l2_mean(whiten_regions(regional, whitening), alpha, region_mask)


def describe_pooled(
    features: RegionalFeatures,
    attention: AttentionFn | None = None,
    whitening: PCAWhitening | None = None,
    shared: SharedSteps | None = None,
    share_key: tuple = (),
) -> RegionalOutput:
    """Pooled regions -> alpha, and the weighted mean and descriptor on demand.

    ``attention`` ``None`` gives R-MAC; ``whitening`` ``None`` skips PCA-whitening (L2 only);
    ``shared`` and ``share_key`` (where the pooled vectors came from) let heads on one feature
    map whiten equal vectors once.
    """
    alpha = attention_weights(attention, features.avg_pooled, features.global_avg)
    return RegionalOutput(features, alpha, whitening, shared, share_key)


def describe(
    feats: torch.Tensor,
    images: torch.Tensor,
    *,
    levels: int = 5,
    attention: AttentionFn | None = None,
    whitening: PCAWhitening | None = None,
    full_image_region: bool = False,
    region_fn: RegionFn | None = None,
    stride: int = 32,
    shared: SharedSteps | None = None,
) -> list[tuple[slice, RegionalOutput]]:
    """The descriptor's one path: a batch's feature map (N, C, h, w) and its uint8 images
    (N, 3, H, W) -> one ``RegionalOutput`` per group of images sharing their regions
    (``batch_regions``: one group for the R-MAC grid, one per image for a ``region_fn``).

    ``levels``, ``full_image_region`` and ``region_fn`` choose the regions (``batch_regions``);
    ``stride``: input pixels per feature cell (the backbone's); ``attention`` ``None`` is R-MAC;
    ``whitening`` ``None`` skips it; ``shared``: the feature map's ``SharedSteps``, so that
    several calls on one map pool equal regions (and whiten equal vectors) once.
    """
    out = []
    for sl, regions in batch_regions(images, levels, full_image_region, region_fn):
        where = (sl.start, sl.stop, regions.tobytes(), stride)

        def pool(sl: slice = sl, regions: np.ndarray = regions) -> RegionalFeatures:
            return pool_regions(feats[sl], regions, stride)

        if shared is None:
            out.append((sl, describe_pooled(pool(), attention, whitening)))
            continue
        features = shared.get(("pool", *where), pool)

        def output(features: RegionalFeatures = features, where: tuple = where) -> RegionalOutput:
            return describe_pooled(features, attention, whitening, shared, where)

        # heads asking for the same attention and whitening on the same regions (the ablation's
        # row, the scale study's at its L, the state-of-the-art table's) share one output. The
        # key holds the attention itself (kept alive, so its identity is never reused) and the
        # whitening's id (the output holds the whitening, which keeps that id alive too)
        key = ("output", attention, id(whitening), *where)
        out.append((sl, shared.get(key, output)))
    return out


def describe_feature_map(
    feats: torch.Tensor,
    regions: np.ndarray,
    attention: AttentionFn | None = None,
    whitening: PCAWhitening | None = None,
    stride: int = 32,
) -> RegionalOutput:
    """Feature map (N, C, h, w) + one set of regions for all its images -> ``RegionalOutput``
    (``pool_regions`` then ``describe_pooled``)."""
    return describe_pooled(pool_regions(feats, regions, stride), attention, whitening)


def weighted_mean(regional: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """mean_i alpha_i * x_i of raw (not whitened, not normalised) x_i (N, R, C) -> (N, C): the
    vector the authors' training feeds to the frozen fc1000."""
    return regional.mean(1) if alpha is None else (alpha[..., None] * regional).mean(1)
