"""The paper's global descriptor: f = L2( mean_i alpha_i * L2( P (x_i - mu) ) ).

x_i are the regional max-pooled vectors (R-MAC), alpha_i the attention weights (all 1 for the
R-MAC baseline), P and mu the PCA-whitening. ``aggregate`` is the pure operation;
``RegionalDescriptor`` wires backbone, regions, pooling, attention and whitening together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .attention import RegionalAttention
from .images import check_rgb
from .pooling import global_avg_pool, regional_avg_pool, regional_max_pool
from .regions import region_cells, rmac_regions
from .whitening import PCAWhitening

#: A region source: (height, width) of the input -> (R, 4) int regions (x, y, w, h).
RegionFn = Callable[[int, int], np.ndarray]


def l2_normalize(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / max(||x||, eps)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


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

    Returns (N, D) L2-normalised descriptors.
    """
    x = regional.float()
    if whitening is not None:
        x = whitening.apply(x)
    x = l2_normalize(x)
    w = torch.ones(x.shape[:2], device=x.device) if alpha is None else alpha.float()
    if region_mask is not None:
        w = w * region_mask.float()
        count = region_mask.float().sum(1, keepdim=True).clamp_min(1)
    else:
        count = torch.full((x.shape[0], 1), float(x.shape[1]), device=x.device)
    f = (w[..., None] * x).sum(1) / count
    return l2_normalize(f)


@dataclass
class RegionalFeatures:
    """Everything pooled from one batch of same-size images.

    ``regions`` (R, 4) in input pixels (x, y, w, h); ``cells`` (R, 4) inclusive feature cells;
    ``max_pooled`` x_i (N, R, C); ``avg_pooled`` k_i (N, R, C); ``global_avg`` g (N, C).
    """

    regions: np.ndarray
    cells: np.ndarray
    max_pooled: torch.Tensor
    avg_pooled: torch.Tensor
    global_avg: torch.Tensor


def pool_regions(feats: torch.Tensor, regions: np.ndarray, stride: int = 32) -> RegionalFeatures:
    """Pool a feature map (N, C, h, w) over ``regions`` given in input pixels."""
    cells = region_cells(regions, feats.shape[2], feats.shape[3], stride)
    return RegionalFeatures(
        regions=np.asarray(regions),
        cells=cells,
        max_pooled=regional_max_pool(feats, cells),
        avg_pooled=regional_avg_pool(feats, cells),
        global_avg=global_avg_pool(feats),
    )


class RegionalDescriptor(nn.Module):
    """Backbone -> R-MAC regions -> (attention) -> whitening -> global descriptor.

    Parameters
    ----------
    backbone:
        A ``regattn_lib.backbones.Backbone`` (frozen feature extractor at stride 32).
    levels:
        R-MAC scales L (paper: 5).
    attention:
        ``None`` for the R-MAC baseline, else a ``RegionalAttention`` (regional or context).
    whitening:
        ``PCAWhitening`` learned on the same backbone, or ``None``.
    full_image_region:
        Prepend the full-image region (cirtorch's variant; off in the authors' code).
    region_fn:
        Replaces the R-MAC grid, e.g. RPN proposals: called as ``region_fn(height, width)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        levels: int = 5,
        attention: RegionalAttention | None = None,
        whitening: PCAWhitening | None = None,
        full_image_region: bool = False,
        region_fn: RegionFn | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.levels = levels
        self.attention = attention
        self.whitening = whitening
        self.full_image_region = full_image_region
        self.region_fn = region_fn

    def regions_for(self, height: int, width: int) -> np.ndarray:
        if self.region_fn is not None:
            return np.asarray(self.region_fn(height, width), dtype=np.int64).reshape(-1, 4)
        return rmac_regions(height, width, self.levels, self.full_image_region)

    def pooled(self, images: torch.Tensor) -> RegionalFeatures:
        """uint8 RGB (N, 3, H, W), all of one size -> ``RegionalFeatures``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 RGB images (N, 3, H, W), got {tuple(images.shape)}")
        check_rgb(images[0].permute(1, 2, 0), "input batch")
        feats = self.backbone.features(images)
        regions = self.regions_for(images.shape[2], images.shape[3])
        return pool_regions(feats, regions, getattr(self.backbone, "stride", 32))

    def weights(self, pooled: RegionalFeatures) -> torch.Tensor | None:
        """Attention weights alpha (N, R), or ``None`` for the baseline."""
        if self.attention is None:
            return None
        att_dtype = self.attention.conv_att_1.weight.dtype
        return self.attention(
            pooled.avg_pooled.to(att_dtype), pooled.global_avg.to(att_dtype)
        ).float()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, 3, H, W) of one size -> descriptors (N, D)."""
        pooled = self.pooled(images)
        return aggregate(pooled.max_pooled, self.weights(pooled), self.whitening)

    @torch.no_grad()
    def describe(self, images: torch.Tensor) -> dict:
        """Like ``forward`` but also returns regions and weights (for figures and the explorer)."""
        pooled = self.pooled(images)
        alpha = self.weights(pooled)
        desc = aggregate(pooled.max_pooled, alpha, self.whitening)
        if alpha is None:
            alpha = torch.ones(pooled.max_pooled.shape[:2])
        return {"descriptor": desc, "regions": pooled.regions, "alpha": alpha.cpu()}

    @torch.no_grad()
    def describe_list(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images of different sizes, uint8 (H, W, 3) each -> (M, D), in input order.

        Images are grouped by size so batching never changes a descriptor.
        """
        device = next(self.backbone.parameters()).device
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            check_rgb(im, f"image {i}")
            groups.setdefault(tuple(im.shape[:2]), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for idx in groups.values():
            batch = torch.stack([torch.from_numpy(np.ascontiguousarray(images[i])) for i in idx])
            desc = self(batch.permute(0, 3, 1, 2).to(device))
            for j, i in enumerate(idx):
                out[i] = desc[j].cpu()
        return torch.stack(out)  # type: ignore[arg-type]
