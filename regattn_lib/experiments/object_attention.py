"""Does the attention weight the object above the clutter? Measured against the landmark masks
that the synthetic generator keeps.

For one image with regions r_i, attention weights alpha_i and a landmark mask, each region's
overlap o_i is the share of its pixels that belong to the landmark. The attention's share of
the object is sum_i alpha_i o_i / sum_i alpha_i; R-MAC (alpha_i = 1) gives the uniform share
mean_i o_i. Attention that favours the object has a higher share than the uniform one; the
difference, averaged over images, gets a bootstrap interval over images (``stats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from regattn_lib.core.stats import bootstrap_mean_interval
from regattn_lib.datasets.images import crop_box, scaled_size


def prepare_mask(
    mask: np.ndarray, longest: int | None, bbx: Sequence[float] | None = None
) -> np.ndarray:
    """A boolean (H, W) mask resized and cropped exactly as ``images.prepare_image`` resizes and
    crops its image (bilinear, then >= 0.5; the authors' query crop), so pixel (y, x) of the
    result lies over pixel (y, x) of the prepared image."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    scale = 1.0
    if longest is not None and max(h, w) != longest:
        nh, nw = scaled_size(h, w, longest)
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
        m = t[0, 0].numpy() >= 0.5
        scale = longest / max(h, w)
    if bbx is not None:
        m = crop_box(m, bbx, scale)
    return np.ascontiguousarray(m)


def region_overlaps(regions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(R,) share of each region's pixels (x, y, w, h; clipped to the mask) that are True."""
    m = np.asarray(mask, dtype=np.float64)
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    out = []
    for x, y, w, h in np.asarray(regions, dtype=np.int64).reshape(-1, 4).tolist():
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, m.shape[1]), min(y + h, m.shape[0])
        area = max(x1 - x0, 0) * max(y1 - y0, 0)
        if area == 0:
            out.append(0.0)
            continue
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        out.append(inside / area)
    return np.asarray(out)


def object_share(alpha: np.ndarray | None, overlaps: np.ndarray) -> float:
    """sum_i alpha_i o_i / sum_i alpha_i; ``alpha=None`` (R-MAC) gives mean_i o_i."""
    o = np.asarray(overlaps, dtype=np.float64)
    if o.size == 0:
        return float("nan")
    a = np.ones_like(o) if alpha is None else np.asarray(alpha, dtype=np.float64).reshape(-1)
    if a.shape != o.shape:
        raise ValueError(f"{a.size} attention weights for {o.size} regions")
    return float((a * o).sum() / a.sum())


@dataclass(frozen=True)
class ObjectAttention:
    """Mean object share of the attention and of uniform weights over ``n`` images, and the
    mean per-image difference with its bootstrap interval (``low``, ``high``)."""

    attention: float
    uniform: float
    difference: float
    low: float
    high: float
    n: int


def summarize_shares(attention: Sequence[float], uniform: Sequence[float]) -> ObjectAttention:
    """Per-image shares (NaN for images without a landmark are left out) -> ``ObjectAttention``."""
    a = np.asarray(attention, dtype=np.float64)
    u = np.asarray(uniform, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(u))
    a, u = a[keep], u[keep]
    diff, low, high = bootstrap_mean_interval(a - u)
    mean_a = float(a.mean()) if a.size else float("nan")
    mean_u = float(u.mean()) if u.size else float("nan")
    return ObjectAttention(mean_a, mean_u, diff, low, high, int(a.size))


def image_shares(
    image_regions: np.ndarray,
    alphas: dict[str, np.ndarray],
    mask: np.ndarray,
) -> dict[str, float] | None:
    """Object share of each method's alpha and of uniform weights (key ``"uniform"``) for one
    prepared image; ``None`` when the image shows no landmark (empty mask)."""
    if not mask.any():
        return None
    overlaps = region_overlaps(image_regions, mask)
    out = {label: object_share(alpha, overlaps) for label, alpha in alphas.items()}
    out["uniform"] = object_share(None, overlaps)
    return out
