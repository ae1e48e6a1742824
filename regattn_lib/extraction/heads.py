"""Descriptor heads: what ``extract`` computes from a batch's feature map.

A head turns the backbone's (N, C, h, w) features into per-image outputs (R-MAC with optional
regional attention and whitening, raw regional vectors for whitening learning, global-pooling
baselines) and names everything that changes its output in ``cache_key`` (attention weights
and whitening as digests), so cached descriptors are never reused across settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from regattn_lib.core import baselines
from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import (
    RegionalOutput,
    RegionFn,
    SharedSteps,
    describe,
    l2_normalize,
)
from regattn_lib.core.pooling import regional_max_pool
from regattn_lib.core.regions import region_cells, rmac_regions
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.runtime.identity import module_digest, whitening_digest


class Head:
    """Turns a batch's feature map into per-image outputs. Subclasses define ``__call__``."""

    name: str = "head"

    def __call__(
        self, feats: torch.Tensor, images: torch.Tensor, shared: SharedSteps | None = None
    ) -> torch.Tensor:
        """Per-image outputs of a batch; ``shared``: the feature map's ``SharedSteps`` (heads
        that pool or whiten use it, the others ignore it)."""
        raise NotImplementedError

    def cache_key(self) -> dict[str, Any]:
        """Everything about the head that changes its output."""
        raise NotImplementedError


@dataclass
class RegionalHead(Head):
    """The paper's descriptor: R-MAC regions, optional attention, whitening, aggregation.

    Parameters: ``levels`` (L, paper 5); ``attention`` (``None`` = R-MAC baseline);
    ``whitening`` (``PCAWhitening`` or ``None``); ``full_image_region`` (cirtorch variant,
    off); ``region_fn`` (images (N,3,H,W) -> list of (R_i, 4) regions per image, e.g. RPN
    proposals; ``None`` = the R-MAC grid); ``region_source`` names it for the cache key;
    ``stride`` (input pixels per feature cell: 32, the backbone's, part of its identity in the
    cache key).
    """

    name: str = "rmac"
    levels: int = 5
    attention: RegionalAttention | None = None
    whitening: PCAWhitening | None = None
    full_image_region: bool = False
    region_fn: RegionFn | None = None
    region_source: str = "rmac-grid"
    stride: int = 32

    def describe(
        self, feats: torch.Tensor, images: torch.Tensor, shared: SharedSteps | None = None
    ) -> list[tuple[slice, RegionalOutput]]:
        """``descriptor.describe`` with this head's settings: per group of images sharing their
        regions, the pooled features, alpha, the raw weighted mean and the descriptor."""
        return describe(
            feats,
            images,
            levels=self.levels,
            attention=self.attention,
            whitening=self.whitening,
            full_image_region=self.full_image_region,
            region_fn=self.region_fn,
            stride=self.stride,
            shared=shared,
        )

    def __call__(
        self, feats: torch.Tensor, images: torch.Tensor, shared: SharedSteps | None = None
    ) -> torch.Tensor:
        return torch.cat([out.descriptor for _, out in self.describe(feats, images, shared)])

    def cache_key(self) -> dict[str, Any]:
        att = self.attention
        return {
            "head": "regional",
            "levels": self.levels,
            "attention": None
            if att is None
            else {
                "context": getattr(att, "context", None),
                "activation": getattr(att, "activation", None),
                "digest": module_digest(att),
            },
            "whitening": whitening_digest(self.whitening),
            "full_image_region": self.full_image_region,
            "regions": self.region_source,
        }


@dataclass
class RegionalVectorsHead(Head):
    """Raw regional max-pooled vectors (R, C) per image: the input of whitening learning."""

    name: str = "regional-vectors"
    levels: int = 3
    stride: int = 32

    def __call__(
        self, feats: torch.Tensor, images: torch.Tensor, shared: SharedSteps | None = None
    ) -> torch.Tensor:
        regions = rmac_regions(images.shape[2], images.shape[3], self.levels)
        # max pooling only: the average and global pools of pool_regions are not needed here
        # (they took half the time of the whitening pass at 800 px)
        cells = region_cells(regions, feats.shape[2], feats.shape[3], self.stride)
        return regional_max_pool(feats, cells)

    def cache_key(self) -> dict[str, Any]:
        return {"head": "regional-vectors", "levels": self.levels}


@dataclass
class RegionPoolsHead(Head):
    """The pooled regions a regional head describes from, per image: ``(2R + 1, C)`` rows, the
    R max-pooled regions, the R average-pooled regions, then the global average pool (unpack
    with ``split_region_pools``). Pooled by ``RegionalHead.describe`` itself (R-MAC grid at
    ``levels``), so a descriptor computed from these rows is the extracted one: what metric
    learning caches, since backbone and pooling are frozen."""

    name: str = "region-pools"
    levels: int = 5
    stride: int = 32

    def __call__(
        self, feats: torch.Tensor, images: torch.Tensor, shared: SharedSteps | None = None
    ) -> torch.Tensor:
        head = RegionalHead(levels=self.levels, stride=self.stride)
        groups = head.describe(feats, images, shared)
        if len(groups) != 1:  # one batch is one image size, so one R-MAC grid
            raise ValueError(f"RegionPoolsHead: {len(groups)} region grids in one batch")
        f = groups[0][1].features
        return torch.cat([f.max_pooled, f.avg_pooled, f.global_avg[:, None]], 1)

    def cache_key(self) -> dict[str, Any]:
        return {"head": "region-pools", "levels": self.levels, "stride": self.stride}


def split_region_pools(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's ``RegionPoolsHead`` output -> (max-pooled (R, C), average-pooled (R, C),
    global average (C,))."""
    r = (rows.shape[0] - 1) // 2
    if rows.dim() != 2 or rows.shape[0] != 2 * r + 1:
        raise ValueError(f"not a RegionPoolsHead output: shape {tuple(rows.shape)}")
    return rows[:r], rows[r : 2 * r], rows[2 * r]


GLOBAL_POOLINGS = ("mac", "spoc", "crow", "cam")


@dataclass
class GlobalHead(Head):
    """A global-pooling baseline (MAC, SPoC, CroW, CAM), L2 -> optional whitening -> L2.

    ``fc_weight`` (classes, C) is required for CAM.
    """

    name: str = "mac"
    pooling: str = "mac"
    whitening: PCAWhitening | None = None
    fc_weight: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.pooling not in GLOBAL_POOLINGS:
            raise ValueError(f"pooling must be one of {GLOBAL_POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cam" and self.fc_weight is None:
            raise ValueError("CAM pooling needs the backbone's fc weights (fc_weight)")

    def __call__(
        self, feats: torch.Tensor, images: torch.Tensor, shared: SharedSteps | None = None
    ) -> torch.Tensor:
        if self.pooling == "cam":
            v = baselines.cam(feats, self.fc_weight)
        else:
            v = getattr(baselines, self.pooling)(feats)
        v = l2_normalize(v)
        if self.whitening is not None:
            v = l2_normalize(self.whitening.apply(v))
        return v

    def cache_key(self) -> dict[str, Any]:
        return {
            "head": "global",
            "pooling": self.pooling,
            "whitening": whitening_digest(self.whitening),
        }
