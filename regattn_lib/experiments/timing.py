"""Seconds per image of each method, measured as the paper's time column."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from regattn_lib.datasets.retrieval import RetrievalDataset
from regattn_lib.experiments.pipeline import Context
from regattn_lib.extraction.heads import Head
from regattn_lib.runtime.environment import resolve_precision


@dataclass(frozen=True)
class ImageTiming:
    """Seconds per image of one method, as the paper's time column.

    ``median_s``: median over the ``n`` timed images; ``times_s``: each image's time;
    ``device``: the GPU's or CPU's name; ``precision``: the backbone's (``fp32``, ``fp16``,
    ``bf16``); ``image_size``: the longest side the images were resized to.
    """

    median_s: float
    device: str
    precision: str
    n: int
    image_size: int | None
    times_s: tuple[float, ...]


@torch.no_grad()
def time_per_image(
    ctx: Context,
    ds: RetrievalDataset,
    heads: Mapping[str, Head],
    n_images: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, ImageTiming]:
    """Seconds per image of each method (backbone + its head), measured as the paper's column.

    The first ``n_images`` database images (default 20) are decoded and resized to the
    profile's ``timing_image_size`` (``None``: ``image_size``, 1024 px in the paper) and put
    on the device before any timing, so decoding is excluded. Per method: one untimed warm-up
    pass on each distinct image shape, then one image at a time, the device synchronised
    before and after each; each image's time covers normalisation, the backbone in the
    profile's ``precision`` and the head up to the descriptor on the host. Returns method ->
    :class:`ImageTiming` (median over the images, device and precision named). ``clock`` is
    the timer (default ``time.perf_counter``).
    """
    from regattn_lib.datasets.images import prepare_image
    from regattn_lib.experiments.bench_report import device_name
    from regattn_lib.extraction.image_stream import backbone_features

    p, dev, bb = ctx.profile, ctx.device, ctx.backbone
    size = p.timing_image_size if p.timing_image_size is not None else p.image_size
    precision = resolve_precision(p.precision, dev)
    paths = list(ds.db_paths)[:n_images]
    if not paths:
        raise ValueError(f"{ds.name}: no database images to time")
    images = [
        torch.from_numpy(np.ascontiguousarray(prepare_image(path, size)))
        .permute(2, 0, 1)[None]
        .to(dev)
        for path in paths
    ]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(head: Head, batch: torch.Tensor) -> torch.Tensor:
        feats = backbone_features(bb, bb.preprocess(batch), precision)
        return head(feats, batch).cpu()

    warmup = list({tuple(im.shape): im for im in images}.values())
    out = {}
    for name, head in heads.items():
        for im in warmup:
            step(head, im)
        times = []
        for im in images:
            sync()
            t0 = clock()
            step(head, im)
            sync()
            times.append(clock() - t0)
        out[name] = ImageTiming(
            float(np.median(times)), device_name(dev), precision, len(times), size, tuple(times)
        )
    return out
