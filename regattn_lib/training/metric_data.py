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
from regattn_lib.runtime.environment import env_number
from regattn_lib.runtime.shards import SHARD_IMAGES, ShardStore
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
    shard_images: int | None = None,
) -> list[torch.Tensor]:
    """Per image, its ``RegionPoolsHead`` rows (2R + 1, C) at ``image_size`` and ``levels``.

    ``bbxs``: query boxes, one per path (cropped as the extraction crops queries), or ``None``.
    ``cache_file``: where they are kept (written atomically, fp32, with the image names it
    holds); a file whose names differ from ``paths`` raises ``ValueError`` naming it (its key
    should have told them apart), one that matches is read instead of running the backbone.

    Resumable: with a ``cache_file``, every ``shard_images`` images (default
    ``$REGATTN_SHARD_IMAGES``, else 500) are saved as a shard in ``<cache_file>.parts/`` as soon
    as they are done, so an interrupted pass (SfM-120k's tens of thousands of images) redoes
    only the shard in hand; the shards are removed once the file is written. Under ``torchrun``
    every process takes its part of each shard (``extraction.distributed``); rank 0 decides
    what to reuse, writes, and alone returns the pools (the others return an empty list).
    """
    from regattn_lib.extraction.distributed import (
        extract_distributed,
        init_distributed,
        launched_by_torchrun,
        rank0_value,
    )
    from regattn_lib.extraction.image_stream import CUDA_BATCH

    info = init_distributed(device) if launched_by_torchrun() else None
    main = info is None or info.is_main
    names = [Path(p).name for p in paths]
    parts = None if cache_file is None else Path(f"{cache_file}.parts")
    # every decision below is rank 0's, so that all processes take the same branches (their
    # collectives would wait for each other forever otherwise); only rank 0 reads or deletes
    if rank0_value(info, cache_file is not None and Path(cache_file).is_file()):
        if not main:
            return []  # under torchrun only rank 0's return holds the pools
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        if saved["names"] != names:
            raise ValueError(f"{cache_file}: cached for other images than the {len(names)} asked")
        ShardStore(parts).clear()  # a run killed between writing the file and clearing them
        return saved["pools"]
    head = {"pools": RegionPoolsHead(levels=levels)}
    store = ShardStore(parts)
    size = shard_images or env_number("REGATTN_SHARD_IMAGES", SHARD_IMAGES)
    pools: list[torch.Tensor] = []
    for start in range(0, len(paths), size):
        shard, part = f"{start:09d}", slice(start, start + size)
        saved = None
        if main and store.has(shard):
            saved = store.load(shard)
            if saved["names"] != names[part]:
                store.discard(shard)  # another image list's leftover: redo it
                saved = None
        if rank0_value(info, saved is not None):
            pools += saved["pools"] if main else []
            continue
        opts = dict(precision=precision, progress=progress)
        boxes = None if bbxs is None else list(bbxs[part])
        if info is not None:
            batch = batch_size or (CUDA_BATCH if info.device.type == "cuda" else 1)
            got = extract_distributed(
                paths[part], backbone, head, image_size, boxes, batch_size=batch, info=info, **opts
            )
        else:
            got = extract_images(
                paths[part],
                backbone,
                head,
                image_size,
                boxes,
                device=device,
                batch_size=batch_size,
                **opts,
            )
        done = [p.float().contiguous() for p in got["pools"]]
        if main:
            store.save(shard, {"names": names[part], "pools": done})
            pools += done
    if cache_file is not None and main:
        atomic_torch_save(cache_file, {"names": names, "pools": pools})
        store.clear()
    return pools


def region_cache(pools: Sequence[torch.Tensor], whitening: PCAWhitening | None) -> RegionCache:
    """The training cache of images from their pooled rows (``pooled_regions``)."""
    x, k, g = zip(*(split_region_pools(p) for p in pools), strict=True)
    return cache_regions(list(x), list(k), list(g), whitening)
