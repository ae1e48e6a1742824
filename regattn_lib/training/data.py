"""Data for the training loop: threaded image loading, the sample stream sliced over ranks, and
the optional cache of pooled backbone features (``TrainConfig.feature_cache_views``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from regattn_lib.datasets.images import load_rgb
from regattn_lib.runtime.atomic import atomic_torch_save
from regattn_lib.runtime.identity import backbone_name, backbone_weights_id, cache_key
from regattn_lib.training.augment import SampleSpec, draw_samples, train_crop, val_crop
from regattn_lib.training.config import CACHE_SEED_OFFSET, TrainConfig

if TYPE_CHECKING:
    from regattn_lib.training.model import AttentionClassifier

T = TypeVar("T")


class Loader:
    """Runs image loading in a thread pool (decoding and resizing release the GIL), or inline."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def load_train_crop(path: str | os.PathLike, spec: SampleSpec, crop: int) -> torch.Tensor:
    return train_crop(load_rgb(path), spec, crop)


def load_val_crop(path: str | os.PathLike, short: int, crop: int) -> torch.Tensor:
    return val_crop(load_rgb(path), short, crop)


@dataclass
class Draw:
    specs: list[SampleSpec]
    payload: list[Future] | None
    sampler_state: torch.Tensor  # the sampler's state right after this draw


def rank_slice(global_batch: Sequence[T], rank: int, per_rank: int) -> list[T]:
    """This rank's part of a global batch that every rank draws identically: items
    ``[rank * per_rank, (rank + 1) * per_rank)``. The ranks' parts, in rank order, are the global
    batch, so W ranks of ``per_rank`` train on the samples of one process of ``W * per_rank``."""
    return list(global_batch[rank * per_rank : (rank + 1) * per_rank])


def rank_shard(n: int, rank: int, world: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``range(n)``: this rank's validation images.

    Every index goes to exactly one rank; there is no padding (ranks may get one image more
    than others), so summed losses and counts over the ranks are those of one process.
    """
    return list(range(rank, n, world))


class Stream:
    """Batches of samples, drawn one iteration ahead so the next images load meanwhile.

    The sampler's state is remembered right after each draw: a checkpoint after iteration t
    stores the state after t's draw, not after the prefetched draw of t + 1.
    """

    def __init__(
        self,
        sampler: torch.Generator,
        n_items: int,
        batch: int,
        rank: int,
        world: int,
        short_range: tuple[int, int] | None,
        load: Callable[[SampleSpec], Any] | None,
        loader: Loader,
    ) -> None:
        self.sampler, self.n_items, self.batch = sampler, n_items, batch
        self.rank, self.world, self.short_range = rank, world, short_range
        self.load, self.loader = load, loader
        self._ahead: Draw | None = None

    def _draw(self) -> Draw:
        # Every process draws the whole global batch and takes its slice: the stream (and the
        # checkpointed state) is the same on all ranks, and sharding is by rank.
        specs = draw_samples(self.sampler, self.n_items, self.batch * self.world, self.short_range)
        specs = rank_slice(specs, self.rank, self.batch)
        state = self.sampler.get_state()
        payload = None
        if self.load is not None:
            payload = [self.loader.submit(self.load, s) for s in specs]
        return Draw(specs, payload, state)

    def next(self, prefetch: bool) -> Draw:
        current = self._ahead if self._ahead is not None else self._draw()
        self._ahead = self._draw() if prefetch else None
        return current


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


#: Crops per backbone pass when features are cached on the CPU: one. Depthwise convolutions
#: run slower per image in batches there (EfficientNet-Lite0 at 384 px on 2 cores: 0.065 s
#: per crop one at a time, 0.135 s in batches of 16), as extraction found
#: (``extraction.extract.extract_images``: batch 1 on the CPU).
CPU_CACHE_BATCH = 1


def cache_batch_size(model: AttentionClassifier, cfg: TrainConfig) -> int:
    """Crops per backbone pass of the feature cache: ``cfg.val_batch_size`` on a GPU,
    ``CPU_CACHE_BATCH`` on the CPU. Pooled features do not depend on it beyond rounding."""
    device = next(model.backbone.parameters()).device
    return cfg.val_batch_size if device.type == "cuda" else CPU_CACHE_BATCH


def stack_pooled(
    model: AttentionClassifier,
    futures: Sequence[Future],
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backbone on loaded crops in chunks of ``batch``; pooled features on the CPU."""
    parts = []
    for s in range(0, len(futures), batch):
        images = torch.stack([f.result() for f in futures[s : s + batch]])
        parts.append(tuple(t.cpu() for t in model.pooled(images)))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def build_cache(
    model: AttentionClassifier,
    paths: Sequence[str | os.PathLike],
    cfg: TrainConfig,
    loader: Loader,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled features of ``feature_cache_views`` views of every image, view-major: row
    ``v * N + i`` is view v of image i. Views come from their own generator (``seed + 1``)."""
    gen = torch.Generator().manual_seed(cfg.views_seed + CACHE_SEED_OFFSET)
    n = len(paths)
    specs = []
    for _ in range(cfg.feature_cache_views):
        for i in range(n):
            s = draw_samples(gen, 1, 1, (cfg.resize_min, cfg.resize_max))[0]
            specs.append(replace(s, index=i))
    futures = [loader.submit(load_train_crop, paths[s.index], s, cfg.crop) for s in specs]
    return stack_pooled(model, futures, cache_batch_size(model, cfg))


def features_key(
    model: AttentionClassifier,
    paths: Sequence[str | os.PathLike],
    val_paths: Sequence[str | os.PathLike],
    cfg: TrainConfig,
) -> str:
    """Hash of everything the cached training/validation features depend on."""
    parts = {
        "paths": [str(p) for p in paths],
        "val": [str(p) for p in val_paths],
        "views": cfg.feature_cache_views,
        "seed": cfg.views_seed,
        "resize": [cfg.resize_min, cfg.resize_max],
        "crop": cfg.crop,
        "val_resize": cfg.val_resize,
        "val_crop": cfg.val_crop,
        "levels": cfg.levels,
        "backbone": backbone_name(model.backbone),
        "weights": backbone_weights_id(model.backbone),
    }
    return cache_key(parts)


def cached_features(
    model: AttentionClassifier,
    paths: Sequence[str | os.PathLike],
    val_paths: Sequence[str | os.PathLike],
    cfg: TrainConfig,
    loader: Loader,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """Training views and validation features, from ``cfg.feature_cache_dir`` when present.

    The fc stage and both attention stages of one profile use the same images and views, so
    the backbone runs once for all three when they share a cache folder.
    """
    f = None
    if cfg.feature_cache_dir is not None:
        f = (
            Path(cfg.feature_cache_dir)
            / f"features-{features_key(model, paths, val_paths, cfg)}.pt"
        )
        if f.is_file():
            d = torch.load(f, map_location="cpu", weights_only=True)
            train = tuple(t.float() for t in d["train"])
            return train, (tuple(t.float() for t in d["val"]) if d["val"] is not None else None)
    cache = build_cache(model, paths, cfg, loader)
    futures = [loader.submit(load_val_crop, p, cfg.val_resize, cfg.val_crop) for p in val_paths]
    val_cache = stack_pooled(model, futures, cache_batch_size(model, cfg)) if futures else None
    if f is not None and dist_rank_world()[0] == 0:
        half = {
            "train": [t.half() for t in cache],
            "val": None if val_cache is None else [t.half() for t in val_cache],
        }
        atomic_torch_save(f, half)
        # train on exactly what a later run will load, so a first run and a rerun agree
        cache = tuple(t.float() for t in half["train"])
        val_cache = None if half["val"] is None else tuple(t.float() for t in half["val"])
    return cache, val_cache


@dataclass
class TrainBatches:
    """Training batches: a stream of samples and, with ``cache``, the cached pooled features
    the samples index (``labels`` then label the cached views); else the stream loads images."""

    stream: Stream
    labels: torch.Tensor
    cache: tuple[torch.Tensor, ...] | None = None

    def get(
        self, draw: Draw, model: AttentionClassifier, device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        """(x, k, g, y) of a draw, on ``device``."""
        if self.cache is not None:
            idx = torch.tensor([s.index for s in draw.specs])
            x, k, g = (t[idx].to(device) for t in self.cache)
            return x, k, g, self.labels[idx].to(device)
        assert draw.payload is not None
        x, k, g = model.pooled(torch.stack([f.result() for f in draw.payload]))
        return x, k, g, self.labels[[s.index for s in draw.specs]].to(device)


def train_batches(
    model: AttentionClassifier,
    sampler: torch.Generator,
    paths: Sequence[str | os.PathLike],
    labels: torch.Tensor,
    val_paths: Sequence[str | os.PathLike],
    cfg: TrainConfig,
    loader: Loader,
    rank: int,
    world: int,
) -> tuple[TrainBatches, tuple[torch.Tensor, ...] | None]:
    """The training batches and the cached validation features (``None``: load images).

    ``sampler`` draws the samples; ``labels`` label ``paths``; ``rank`` of ``world`` picks this
    process's slice of each global batch.
    """
    if cfg.feature_cache_views > 0:
        cache, val_cache = cached_features(model, paths, val_paths, cfg, loader)
        stream = Stream(sampler, cache[0].shape[0], cfg.batch_size, rank, world, None, None, loader)
        return TrainBatches(stream, labels.repeat(cfg.feature_cache_views), cache), val_cache

    def load(s: SampleSpec) -> torch.Tensor:
        return load_train_crop(paths[s.index], s, cfg.crop)

    short_range = (cfg.resize_min, cfg.resize_max)
    stream = Stream(sampler, len(paths), cfg.batch_size, rank, world, short_range, load, loader)
    return TrainBatches(stream, labels), None
