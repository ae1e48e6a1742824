"""Training augmentation, the authors' way: random shorter side, random square crop, no flip.

Every random choice is drawn up front as a :class:`SampleSpec` from one seeded generator, so the
sample stream does not depend on batching, threading or image sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SampleSpec:
    """One drawn training sample: the item's index and its augmentation.

    ``short`` is the target shorter side (0 for cached features); ``fy``, ``fx`` in [0, 1)
    place the crop (fractions of the free range), so the crop can be placed without knowing
    the image's size when the sample is drawn.
    """

    index: int
    short: int = 0
    fy: float = 0.0
    fx: float = 0.0


def draw_samples(
    generator: torch.Generator, n_items: int, count: int, short_range: tuple[int, int] | None
) -> list[SampleSpec]:
    """Draw ``count`` samples uniformly with replacement from ``n_items`` items.

    Parameters
    ----------
    generator:
        The sampler's generator; it is the only source of randomness, so its state fixes the
        stream. Each sample draws its index, then its shorter side, then its crop place, so the
        stream of samples does not depend on how they are grouped into batches.
    n_items:
        Number of items (images, or cached views).
    count:
        Samples to draw.
    short_range:
        Inclusive (min, max) of the random shorter side; ``None`` draws indices only (cache).
    """
    out = []
    for _ in range(count):
        index = int(torch.randint(n_items, (1,), generator=generator))
        if short_range is None:
            out.append(SampleSpec(index))
            continue
        short = int(torch.randint(short_range[0], short_range[1] + 1, (1,), generator=generator))
        fy, fx = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        out.append(SampleSpec(index, short, fy, fx))
    return out


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to ``short``; the longer side is truncated as in
    the authors' ``__resize`` (``int(short * long / short_side)``)."""
    if height <= width:
        return short, short * width // height
    return short * height // width, short


def crop_offsets(height: int, width: int, crop: int, fy: float, fx: float) -> tuple[int, int]:
    """(top, left) of a ``crop`` x ``crop`` window placed at fractions ``fy``, ``fx`` in [0, 1)
    of the free range: uniform over the valid offsets as torchvision's ``RandomCrop``."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit a {width}x{height} image")
    top = min(int(math.floor(fy * (height - crop + 1))), height - crop)
    left = min(int(math.floor(fx * (width - crop + 1))), width - crop)
    return top, left


def center_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of a centred ``crop`` window, rounded as torchvision's ``CenterCrop``."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit a {width}x{height} image")
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def resize_shorter(image: np.ndarray, short: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (3, H', W') with shorter side ``short`` (bilinear, no
    antialiasing, as the project's other resizes)."""
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, short)
    # load_rgb gives a read-only view of the PIL buffer: copy only when needed.
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    if (nh, nw) == (h, w):
        return t.contiguous()
    t = F.interpolate(t[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return t[0].round().clamp(0, 255).to(torch.uint8)


def train_crop(image: np.ndarray, spec: SampleSpec, crop: int) -> torch.Tensor:
    """The training augmentation: resize shorter side to ``spec.short``, crop ``crop`` x
    ``crop`` at ``spec``'s place; no flip. uint8 (H, W, 3) -> uint8 (3, crop, crop)."""
    t = resize_shorter(image, spec.short)
    top, left = crop_offsets(t.shape[1], t.shape[2], crop, spec.fy, spec.fx)
    return t[:, top : top + crop, left : left + crop].contiguous()


def val_crop(image: np.ndarray, short: int, crop: int) -> torch.Tensor:
    """The validation transform: shorter side ``short``, centre ``crop`` x ``crop``."""
    t = resize_shorter(image, short)
    top, left = center_offsets(t.shape[1], t.shape[2], crop)
    return t[:, top : top + crop, left : left + crop].contiguous()


def fixed_subset(n: int, k: int, seed: int) -> list[int]:
    """A fixed random subset of ``k`` of ``range(n)`` (all when ``k >= n``), sorted."""
    if k >= n:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:k].tolist())


def remap_labels(
    labels: Sequence[int], classes: Sequence[str], fc_classes: Sequence[str]
) -> list[int]:
    """Map labels indexing ``classes`` to indices into ``fc_classes`` (e.g. an ImageNet subset's
    labels to the 1000 outputs of an ImageNet fc, matched by WordNet id)."""
    where = {c: i for i, c in enumerate(fc_classes)}
    missing = [c for c in classes if c not in where]
    if missing:
        raise ValueError(f"classes not among the fc's classes: {missing[:5]}")
    return [where[classes[y]] for y in labels]
