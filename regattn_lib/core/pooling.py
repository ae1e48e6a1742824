"""Pooling of a feature map over R-MAC regions: pure functions, vectorised over regions and images.

Regions arrive as feature-map cells ``(c0, r0, c1, r1)`` with inclusive ends
(``regions.region_cells``); all images of a batch share one region set (same input size).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import roi_pool


def _cells_tensor(cells: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(cells), dtype=torch.float32, device=device).reshape(-1, 4)


def regional_max_pool(feats: torch.Tensor, cells: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Max over each region's cells: (N, C, h, w), (R, 4) -> (N, R, C) (the R-MAC vectors x_i).

    Uses torchvision's RoI max pooling on boxes given directly in cell units (scale 1), so the
    cell ranges are exactly those of ``region_cells``; computed in fp32.
    """
    n, c = feats.shape[:2]
    boxes = _cells_tensor(cells, feats.device)
    r = boxes.shape[0]
    idx = torch.arange(n, device=feats.device, dtype=torch.float32).repeat_interleave(r)
    rois = torch.cat([idx[:, None], boxes.repeat(n, 1)], dim=1)
    pooled = roi_pool(feats.float(), rois, output_size=(1, 1), spatial_scale=1.0)
    return pooled.reshape(n, r, c)


def region_masks(
    cells: np.ndarray | torch.Tensor, height: int, width: int, device: torch.device | None = None
) -> torch.Tensor:
    """Averaging masks (R, h*w): 1/area on each region's cells, 0 elsewhere."""
    cells_t = torch.as_tensor(np.asarray(cells), dtype=torch.long, device=device).reshape(-1, 4)
    cols = torch.arange(width, device=device)
    rows = torch.arange(height, device=device)
    in_c = (cols[None] >= cells_t[:, 0:1]) & (cols[None] <= cells_t[:, 2:3])  # (R, w)
    in_r = (rows[None] >= cells_t[:, 1:2]) & (rows[None] <= cells_t[:, 3:4])  # (R, h)
    mask = (in_r[:, :, None] & in_c[:, None, :]).float().reshape(len(cells_t), -1)
    return mask / mask.sum(1, keepdim=True)


def regional_avg_pool(feats: torch.Tensor, cells: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mean over each region's cells: (N, C, h, w), (R, 4) -> (N, R, C) (attention input k_i).

    One matrix product with the averaging masks; computed in fp32.
    """
    n, c, h, w = feats.shape
    masks = region_masks(cells, h, w, feats.device)  # (R, hw)
    return torch.einsum("nck,rk->nrc", feats.float().reshape(n, c, h * w), masks)


def global_avg_pool(feats: torch.Tensor) -> torch.Tensor:
    """Mean over the whole map: (N, C, h, w) -> (N, C) (the context vector g)."""
    return feats.float().mean(dim=(2, 3))


def global_max_pool(feats: torch.Tensor) -> torch.Tensor:
    """Max over the whole map: (N, C, h, w) -> (N, C) (MAC)."""
    return feats.float().amax(dim=(2, 3))
