"""The frozen part of metric learning on images: their pooled regions, computed once through
the extraction head's own path (``extraction.heads.RegionPoolsHead`` inside
``extraction.extract.extract_images``, at the profile's image size and levels), kept on disk,
then whitened into a ``training.metric.RegionCache``. An epoch then costs only the attention.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.extraction.extract import extract_images
from regattn_lib.extraction.heads import RegionPoolsHead, split_region_pools
from regattn_lib.runtime.atomic import atomic_torch_save
from regattn_lib.training.metric import RegionCache, cache_regions


def pooled_regions(
    paths: Sequence[str | os.PathLike],
    backbone: nn.Module,
    image_size: int,
    levels: int,
    cache_file: str | os.PathLike | None = None,
    bbxs: Sequence[Sequence[float]] | None = None,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    progress: bool | str = True,
) -> list[torch.Tensor]:
    """Per image, its ``RegionPoolsHead`` rows (2R + 1, C) at ``image_size`` and ``levels``.

    ``bbxs``: query boxes, one per path (cropped as the extraction crops queries), or ``None``.
    ``cache_file``: where they are kept (written atomically, fp32, with the image names it
    holds); a file whose names differ from ``paths`` raises ``ValueError`` naming it (its key
    should have told them apart), one that matches is read instead of running the backbone.
    """
    names = [Path(p).name for p in paths]
    if cache_file is not None and Path(cache_file).is_file():
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        if saved["names"] != names:
            raise ValueError(f"{cache_file}: cached for other images than the {len(names)} asked")
        return saved["pools"]
    head = RegionPoolsHead(levels=levels)
    pools = extract_images(
        paths,
        backbone,
        {"pools": head},
        image_size,
        bbxs,
        device=device,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
    )["pools"]
    pools = [p.float().contiguous() for p in pools]
    if cache_file is not None:
        atomic_torch_save(cache_file, {"names": names, "pools": pools})
    return pools


def region_cache(pools: Sequence[torch.Tensor], whitening: PCAWhitening | None) -> RegionCache:
    """The training cache of images from their pooled rows (``pooled_regions``)."""
    x, k, g = zip(*(split_region_pools(p) for p in pools), strict=True)
    return cache_regions(list(x), list(k), list(g), whitening)
