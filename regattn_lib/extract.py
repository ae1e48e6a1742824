"""Batched, cached descriptor extraction for one or several method configurations at once.

The backbone runs once per image for all requested heads (R-MAC, + regional attention,
+ context awareness, MAC, ...). Images are grouped by their size after resizing (bucketing),
so batching never changes a descriptor; decoding and resizing run in DataLoader workers; on
CUDA the backbone runs in fp16 autocast with channels_last (``precision="fp32"`` turns that
off; a batch whose fp16 features overflow is redone in fp32); pooling, attention and whitening
always run in fp32. fp16 rather than bf16: with bf16's 8-bit mantissa, once PCA-whitening
amplified the low-variance directions, descriptors were up to 0.047 in cosine distance from
fp32 and mAP moved by 2.6 points; fp16 stayed within 2.6e-4 and 0.18 points
(``results/bench/extract_cpu_{bf16,fp16}_demo512.md``) and is as fast on tensor cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from . import baselines
from .attention import RegionalAttention
from .descriptor import aggregate, l2_normalize, pool_regions
from .images import MIN_SIDE, ImageError, crop_box, prepare_image, scaled_size
from .io_utils import atomic_torch_save, sha256_file
from .regions import rmac_regions
from .whitening import PCAWhitening

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Default images per forward pass on CUDA (batch 1 on the CPU).
CUDA_BATCH = 16


# ----------------------------------------------------------------------------- heads
class Head:
    """Turns a batch's feature map into per-image outputs. Subclasses define ``__call__``."""

    name: str = "head"

    def __call__(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cache_key(self) -> dict[str, Any]:
        """Everything about the head that changes its output."""
        raise NotImplementedError


def _module_digest(module: nn.Module | None) -> str | None:
    if module is None:
        return None
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def _whitening_digest(w: PCAWhitening | None) -> str | None:
    if w is None:
        return None
    h = hashlib.sha256(w.mean.numpy().tobytes())
    h.update(w.projection.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class RegionalHead(Head):
    """The paper's descriptor: R-MAC regions, optional attention, whitening, aggregation.

    Parameters: ``levels`` (L, paper 5); ``attention`` (``None`` = R-MAC baseline);
    ``whitening`` (``PCAWhitening`` or ``None``); ``full_image_region`` (cirtorch variant,
    off); ``region_fn`` (images (N,3,H,W) -> list of (R_i, 4) regions per image, e.g. RPN
    proposals; ``None`` = the R-MAC grid); ``region_source`` names it for the cache key.
    """

    name: str = "rmac"
    levels: int = 5
    attention: RegionalAttention | None = None
    whitening: PCAWhitening | None = None
    full_image_region: bool = False
    region_fn: Callable[[torch.Tensor], list[np.ndarray]] | None = None
    region_source: str = "rmac-grid"

    def __call__(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.region_fn is None:
            regions = [
                rmac_regions(images.shape[2], images.shape[3], self.levels, self.full_image_region)
            ]
            groups = [(slice(None), regions[0])]
        else:
            groups = [(slice(i, i + 1), r) for i, r in enumerate(self.region_fn(images))]
        out = []
        for sl, regions in groups:
            pooled = pool_regions(feats[sl], regions)
            alpha = None
            if self.attention is not None:
                alpha = self.attention(pooled.avg_pooled, pooled.global_avg).float()
            out.append(aggregate(pooled.max_pooled, alpha, self.whitening))
        return torch.cat(out)

    def cache_key(self) -> dict[str, Any]:
        att = self.attention
        return {
            "head": "regional",
            "levels": self.levels,
            "attention": None
            if att is None
            else {"context": att.context, "digest": _module_digest(att)},
            "whitening": _whitening_digest(self.whitening),
            "full_image_region": self.full_image_region,
            "regions": self.region_source,
        }


@dataclass
class RegionalVectorsHead(Head):
    """Raw regional max-pooled vectors (R, C) per image: the input of whitening learning."""

    name: str = "regional-vectors"
    levels: int = 3

    def __call__(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        regions = rmac_regions(images.shape[2], images.shape[3], self.levels)
        return pool_regions(feats, regions).max_pooled

    def cache_key(self) -> dict[str, Any]:
        return {"head": "regional-vectors", "levels": self.levels}


GLOBAL_POOLINGS = ("mac", "spoc", "crow", "cam")


@dataclass
class GlobalHead(Head):
    """A global-pooling baseline (MAC, SPoC, CroW, CAM), L2 -> optional whitening -> L2.

    ``raw=True`` returns the pooled vectors before normalisation (whitening learning).
    ``fc_weight`` (classes, C) is required for CAM.
    """

    name: str = "mac"
    pooling: str = "mac"
    whitening: PCAWhitening | None = None
    fc_weight: torch.Tensor | None = None
    raw: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in GLOBAL_POOLINGS:
            raise ValueError(f"pooling must be one of {GLOBAL_POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cam" and self.fc_weight is None:
            raise ValueError("CAM pooling needs the backbone's fc weights (fc_weight)")

    def __call__(self, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cam":
            v = baselines.cam(feats, self.fc_weight)
        else:
            v = getattr(baselines, self.pooling)(feats)
        if self.raw:
            return v
        v = l2_normalize(v)
        if self.whitening is not None:
            v = l2_normalize(self.whitening.apply(v))
        return v

    def cache_key(self) -> dict[str, Any]:
        return {"head": "global", "pooling": self.pooling, "raw": self.raw,
                "whitening": _whitening_digest(self.whitening)}  # fmt: skip


# ----------------------------------------------------------------------------- image loading
def target_size(
    path: str | os.PathLike, longest: int | None, bbx: Sequence[float] | None
) -> tuple[int, int]:
    """(H, W) an image will have after resizing (and cropping), read from its header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:
        raise ImageError(f"cannot read image {path}: {e}") from e
    if longest is not None:
        h2, w2 = scaled_size(h, w, longest)
        scale = longest / max(h, w)  # the ratio prepare_image scales the box by (crop_box)
    else:
        h2, w2, scale = h, w, 1.0
    if bbx is None:
        return h2, w2
    dummy = np.empty((h2, w2, 0), dtype=np.uint8)  # crop arithmetic without decoding
    crop = crop_box(dummy, bbx, scale)
    return crop.shape[0], crop.shape[1]


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, paths, longest, bbxs):
        self.paths, self.longest, self.bbxs = list(paths), longest, bbxs

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        bbx = None if self.bbxs is None else self.bbxs[i]
        im = prepare_image(self.paths[i], self.longest, bbx)
        return i, torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)


def _collate(items):
    idx = [i for i, _ in items]
    return idx, torch.stack([t for _, t in items])


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Group image indices by size into batches of at most ``batch_size`` (input order kept)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(tuple(s), []).append(i)
    return [
        idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)
    ]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``'fp32'``, ``'fp16'`` or ``'bf16'``: what ``precision`` means on ``device``.

    ``"auto"`` is fp16 on CUDA and fp32 on the CPU (CPU fp16 kernels are emulated and slow);
    ``"fp16"`` and ``"bf16"`` force autocast on any device, so the GPU's numerics can be
    checked on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def _backbone_features(backbone: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """fp32 feature maps of a preprocessed batch, the backbone run under ``precision``."""
    if precision == "fp32":
        return backbone(x).float()
    with torch.autocast(x.device.type, dtype=_AUTOCAST[precision]):
        feats = backbone(x.contiguous(memory_format=torch.channels_last))
    feats = feats.float()
    if precision == "fp16" and not torch.isfinite(feats).all():
        # fp16 tops out at 65504; a rare image with huge activations is redone in fp32
        warnings.warn("fp16 features overflowed; batch recomputed in fp32", stacklevel=3)
        feats = backbone(x).float()
    return feats


@torch.no_grad()
def extract_images(
    paths: Sequence[str | os.PathLike],
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    bbxs: Sequence[Sequence[float]] | None = None,
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    precision: str = "auto",
    progress: bool | str = True,
) -> dict[str, list[torch.Tensor]]:
    """Run the backbone once per image and every head on its feature map.

    Parameters
    ----------
    paths:
        Image files. Unreadable or too-small images raise ``ImageError`` naming the file.
    heads:
        name -> ``Head``; each returns one tensor per image.
    image_size:
        Longest side after resizing (paper: 1024 at test); ``None`` keeps the original size.
    bbxs:
        Query boxes [x1, y1, x2, y2] in original pixels, one per path, or ``None``.
    batch_size:
        Images per forward pass; only images of the same size share a batch. ``None``: 16 on
        CUDA, 1 on the CPU, where large batches of depthwise convolutions run slower per image
        (measured: EfficientNet-Lite0 at 512 px, batch 16 about 3x slower than batch 1).
    num_workers:
        DataLoader workers decoding and resizing (default: 0 on a 2-core CPU, else up to 8).
    precision:
        ``"auto"`` (default): fp16 autocast + channels_last on CUDA, fp32 on the CPU;
        ``"fp16"`` / ``"bf16"``: that autocast + channels_last on any device; ``"fp32"``:
        fp32 everywhere. See :func:`resolve_precision` and the module docstring.

    Returns name -> list of per-image output tensors (on the CPU), in input order.
    """
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if batch_size is None:
        batch_size = CUDA_BATCH if dev.type == "cuda" else 1
    sizes = [
        target_size(p, image_size, None if bbxs is None else bbxs[i]) for i, p in enumerate(paths)
    ]
    for p, (h, w) in zip(paths, sizes, strict=True):
        if min(h, w) < MIN_SIDE:
            raise ImageError(
                f"{p}: {w}x{h} px after resizing/cropping is smaller than {MIN_SIDE} px"
            )
    if num_workers is None:
        cpus = os.cpu_count() or 1
        num_workers = 0 if cpus <= 2 else min(8, cpus - 1)
    loader = torch.utils.data.DataLoader(
        _ImageSet(paths, image_size, bbxs),
        batch_sampler=size_batches(sizes, batch_size),
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    outputs: dict[str, list[torch.Tensor | None]] = {k: [None] * len(paths) for k in heads}
    desc = progress if isinstance(progress, str) else "extract"
    bar = tqdm(total=len(paths), desc=desc, disable=not progress, unit="img")
    for idx, batch in loader:
        batch = batch.to(dev, non_blocking=True)
        x = backbone.preprocess(batch)
        feats = _backbone_features(backbone, x, precision)
        for name, head in heads.items():
            out = head(feats, batch).cpu()
            zero = out.reshape(len(idx), -1).abs().amax(1) == 0
            if zero.any():
                bad = [str(paths[idx[j]]) for j in torch.nonzero(zero).flatten().tolist()]
                warnings.warn(
                    f"{name}: all-zero descriptor (no active feature) for {bad}", stacklevel=2
                )
            for j, i in enumerate(idx):
                outputs[name][i] = out[j]
        bar.update(len(idx))
    bar.close()
    return outputs  # type: ignore[return-value]


# ----------------------------------------------------------------------------- cached datasets
@dataclass
class Descriptors:
    """Database and query descriptors of one method on one dataset."""

    db: torch.Tensor
    queries: torch.Tensor
    db_names: list[str]
    query_names: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.db.numpy(), self.queries.numpy()


def _list_digest(items: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps([str(i) for i in items]).encode()).hexdigest()[:16]


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def extract_dataset(
    dataset: Any,
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    cache_dir: str | os.PathLike | None = None,
    crop_queries: bool = True,
    cached_only: bool = False,
    **kwargs: Any,
) -> dict[str, Descriptors]:
    """Descriptors of a retrieval dataset's database and queries for every head, cached.

    ``dataset`` needs ``name``, ``db_paths``, ``query_paths`` and ``query_bbxs`` (a
    ``datasets.RetrievalDataset``). Queries are cropped to their boxes (spec section 2) unless
    ``crop_queries=False``. The cache file of each head is keyed by a hash of the dataset's
    image lists and boxes, the backbone and its weights, the image size, the head's settings
    (attention and whitening digests included) and the precision; a rerun with the same
    settings loads instantly, a changed setting never reuses stale vectors. Writes are atomic.
    ``cached_only=True`` never extracts: heads without a cache file raise ``FileNotFoundError``
    naming them (viewers that must not recompute a database). ``kwargs`` go to ``extract_images``.
    """
    db_paths = [Path(p) for p in dataset.db_paths]
    q_paths = [Path(p) for p in dataset.query_paths]
    bbxs = list(dataset.query_bbxs) if crop_queries else None
    precision = resolve_precision(
        kwargs.get("precision", "auto"), resolve_device(kwargs.get("device", "auto"))
    )
    common = {
        "dataset": dataset.name,
        "db": _list_digest([p.name for p in db_paths]),
        "queries": _list_digest([p.name for p in q_paths]),
        "bbxs": _list_digest(bbxs or []),
        "backbone": getattr(backbone, "name", type(backbone).__name__),
        "weights": getattr(backbone, "weights_id", None),
        "image_size": image_size,
        "bf16": precision == "bf16",
    }
    if precision == "fp16":
        common["fp16"] = True  # an extra key, so fp32/bf16 caches keep their old names
    result: dict[str, Descriptors] = {}
    todo: dict[str, Head] = {}
    files: dict[str, Path | None] = {}
    for name, head in heads.items():
        key = cache_key({**common, **head.cache_key()})
        f = None if cache_dir is None else Path(cache_dir) / dataset.name / f"{name}-{key}.pt"
        files[name] = f
        if f is not None and f.is_file():
            d = torch.load(f, map_location="cpu", weights_only=True)
            result[name] = Descriptors(
                d["db"], d["queries"], d["db_names"], d["query_names"], d["config"]
            )
        else:
            todo[name] = head
    if todo and cached_only:
        missing = ", ".join(f"{n!r} ({files[n] or 'no cache_dir'})" for n in todo)
        raise FileNotFoundError(f"no cached descriptors of {dataset.name} for {missing}")
    if todo:
        progress = kwargs.pop("progress", True)
        db = extract_images(
            db_paths,
            backbone,
            todo,
            image_size,
            None,
            progress=progress and f"{dataset.name} db",
            **kwargs,
        )
        qs = extract_images(
            q_paths,
            backbone,
            todo,
            image_size,
            bbxs,
            progress=progress and f"{dataset.name} queries",
            **kwargs,
        )
        for name, head in todo.items():
            config = {**common, **head.cache_key(), "name": name}
            d = Descriptors(
                torch.stack(db[name]).float(),
                torch.stack(qs[name]).float(),
                [p.stem for p in db_paths],
                [p.stem for p in q_paths],
                config,
            )
            result[name] = d
            if files[name] is not None:
                atomic_torch_save(files[name], {"db": d.db, "queries": d.queries, "db_names": d.db_names,
                                                "query_names": d.query_names, "config": config})  # fmt: skip
    return {name: result[name] for name in heads}


def file_digest(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file (for cache keys), ``None`` for no file."""
    return None if path is None else sha256_file(path)
