"""R-MAC regions (Tolias et al. 2016) on the authors' rigid grid, and their feature-map cells.

Regions are given in input pixels as integer rows ``(x, y, w, h)``. The grid follows the
authors' code exactly: overlap 0.4 between neighbouring regions, 2..7 candidate steps along
the long side, square regions of side ``floor(2 * min(H, W) / (l + 1))`` at level ``l``, and a
border shift that keeps every region inside the image. Order: level by level, and within a
level row by row (y outer, x inner).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: Desired overlap between neighbouring regions (authors' setting).
RMAC_OVERLAP = 0.4
#: Candidate numbers of regions along the long side (authors' setting).
RMAC_STEPS = (2, 3, 4, 5, 6, 7)


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """Round half away from zero, as Caffe and PyTorch 0.3 did (Python's ``round`` does not)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def rmac_regions(height: int, width: int, levels: int, full_image: bool = False) -> np.ndarray:
    """R-MAC regions of an image of ``height`` x ``width`` input pixels.

    Parameters
    ----------
    height, width:
        Image size in pixels (of the resized input, not of the feature map).
    levels:
        Number of scales ``L`` (paper: 5 at test and in training, 3 for PCA learning).
    full_image:
        Prepend the full-image region (cirtorch's variant). Off by default: the authors'
        grid does not include it.

    Returns
    -------
    np.ndarray of int64, shape (R, 4), columns (x, y, w, h). For 4:3 images L = 5 gives 70
    regions and L = 3 gives 20; for square images L = 5 gives 55. A fresh array each call (the
    grid of a size is computed once: every head of an extraction asks for it per image).
    """
    return _rmac_grid(int(height), int(width), int(levels), bool(full_image)).copy()


@lru_cache(maxsize=256)
def _rmac_grid(height: int, width: int, levels: int, full_image: bool) -> np.ndarray:
    if height < 1 or width < 1:
        raise ValueError(f"rmac_regions: image size must be positive, got {height}x{width}")
    if levels < 1:
        raise ValueError(f"rmac_regions: levels must be >= 1, got {levels}")
    short = min(height, width)
    steps = np.asarray(RMAC_STEPS, dtype=np.float64)
    # Overlap between neighbouring regions of the first level, for each candidate step count.
    b = (max(height, width) - short) / (steps - 1)
    idx = int(np.argmin(np.abs((short**2 - short * b) / short**2 - RMAC_OVERLAP))) + 1
    extra_w = idx if height < width else 0
    extra_h = idx if height > width else 0

    rows: list[tuple[int, int, int, int]] = []
    if full_image:
        rows.append((0, 0, width, height))
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        half = math.floor(side / 2 - 1)
        n_w = level + extra_w
        n_h = level + extra_h
        step_w = (width - side) / (n_w - 1) if n_w > 1 else 0.0
        step_h = (height - side) / (n_h - 1) if n_h > 1 else 0.0
        cen_w = np.floor(half + step_w * np.arange(n_w)) - half
        cen_h = np.floor(half + step_h * np.arange(n_h)) - half
        for y in cen_h:
            for x in cen_w:
                xi, yi = int(x), int(y)
                # Border shift: keep the region inside the image.
                xi -= max(0, xi + side - width)
                yi -= max(0, yi + side - height)
                rows.append((xi, yi, side, side))
    return np.asarray(rows, dtype=np.int64)


def region_cells(
    regions: np.ndarray, feat_height: int, feat_width: int, stride: int = 32
) -> np.ndarray:
    """Feature-map cells covered by each region, as the authors' RoI pooling computes them.

    Corners are inclusive (``x2 = x + w - 1``), divided by ``stride`` and rounded half away
    from zero; the cell range is inclusive and clipped to the map. Returns int64 (R, 4) rows
    ``(c0, r0, c1, r1)``: columns ``c0..c1`` and rows ``r0..r1``, both ends included.
    """
    regions = np.asarray(regions, dtype=np.int64).reshape(-1, 4)
    x1 = regions[:, 0]
    y1 = regions[:, 1]
    x2 = x1 + regions[:, 2] - 1
    y2 = y1 + regions[:, 3] - 1
    c0 = round_half_away(x1 / stride)
    r0 = round_half_away(y1 / stride)
    c1 = round_half_away(x2 / stride)
    r1 = round_half_away(y2 / stride)
    # RoI pooling: an empty extent still covers one cell; then everything is clipped.
    c1 = np.maximum(c1, c0)
    r1 = np.maximum(r1, r0)
    c0 = np.clip(c0, 0, feat_width - 1)
    c1 = np.clip(c1, 0, feat_width - 1)
    r0 = np.clip(r0, 0, feat_height - 1)
    r1 = np.clip(r1, 0, feat_height - 1)
    return np.stack([c0, r0, c1, r1], axis=1).astype(np.int64)
