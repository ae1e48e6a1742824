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

Long passes survive bad data and interruptions: ``iter_images`` streams per-image outputs
(nothing accumulates unless the caller keeps it), skips undecodable or tiny database images
with the reason (``SkippedImage``) and decodes truncated files as far as they go;
``extract_dataset`` writes finished work in shards so a rerun resumes, and caches the
distractors once for every dataset they are added to; ``accumulate_images`` feeds the
whitening statistics without keeping the vectors.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from . import baselines
from .attention import RegionalAttention
from .descriptor import aggregate, l2_normalize, pool_regions
from .images import MIN_SIDE, ImageError, crop_box, prepare_image, scaled_size
from .io_utils import atomic_torch_save, atomic_write_text
from .pooling import regional_max_pool
from .regions import region_cells, rmac_regions
from .whitening import CovarianceAccumulator, PCAWhitening

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
            else {
                "context": att.context,
                "activation": att.activation,
                "digest": _module_digest(att),
            },
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
        # max pooling only: the average and global pools of pool_regions are not needed here
        # (they took half the time of the whitening pass at 800 px)
        return regional_max_pool(feats, region_cells(regions, feats.shape[2], feats.shape[3]))

    def cache_key(self) -> dict[str, Any]:
        return {"head": "regional-vectors", "levels": self.levels}


GLOBAL_POOLINGS = ("mac", "spoc", "crow", "cam")


@dataclass
class GlobalHead(Head):
    """A global-pooling baseline (MAC, SPoC, CroW, CAM), L2 -> optional whitening -> L2.

    ``fc_weight`` (classes, C) is required for CAM.
    """

    name: str = "mac"
    pooling: str = "mac"
    whitening: PCAWhitening | None = None
    fc_weight: torch.Tensor | None = None

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
        v = l2_normalize(v)
        if self.whitening is not None:
            v = l2_normalize(self.whitening.apply(v))
        return v

    def cache_key(self) -> dict[str, Any]:
        return {"head": "global", "pooling": self.pooling,
                "whitening": _whitening_digest(self.whitening)}  # fmt: skip


# ----------------------------------------------------------------------------- image loading
ON_BAD = ("raise", "skip")


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of a pass, and why.

    ``index``: its position in the list of the pass (for a dataset's descriptors: the database
    index, distractors counted after ``imlist``); ``name``: file stem; ``part``: ``'db'``,
    ``'distractors'`` or ``'whitening'``.
    """

    index: int
    name: str
    path: str
    reason: str
    part: str = "db"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "path": self.path,
                "reason": self.reason, "part": self.part}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SkippedImage:
        return cls(int(d["index"]), str(d["name"]), str(d["path"]), str(d["reason"]),
                   str(d.get("part", "db")))  # fmt: skip


class ImageOutput(NamedTuple):
    """One image of a stream: its index and either every head's output or why it was skipped."""

    index: int
    outputs: dict[str, torch.Tensor] | None
    skipped: SkippedImage | None


def _image_sizes(
    path: str | os.PathLike, longest: int | None, bbx: Sequence[float] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W) of the original, (H, W) after resizing and cropping), from the header only."""
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
        return (h, w), (h2, w2)
    dummy = np.empty((h2, w2, 0), dtype=np.uint8)  # crop arithmetic without decoding
    crop = crop_box(dummy, bbx, scale)
    return (h, w), (crop.shape[0], crop.shape[1])


def target_size(
    path: str | os.PathLike, longest: int | None, bbx: Sequence[float] | None
) -> tuple[int, int]:
    """(H, W) an image will have after resizing (and cropping), read from its header only."""
    return _image_sizes(path, longest, bbx)[1]


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, paths, longest, bbxs, skip_bad: bool = False):
        self.paths, self.longest, self.bbxs = list(paths), longest, bbxs
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        bbx = None if self.bbxs is None else self.bbxs[i]
        if not self.skip_bad:
            im = prepare_image(self.paths[i], self.longest, bbx)
            return i, torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1), None
        try:
            # A truncated file decodes as far as it goes (revisitop's treatment of distractors).
            im = prepare_image(self.paths[i], self.longest, bbx, allow_truncated=True)
        except ImageError as e:
            return i, None, str(e)
        return i, torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1), None


def _collate(items):
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, reason) for i, t, reason in items if t is None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


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
def iter_images(
    paths: Sequence[str | os.PathLike],
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    bbxs: Sequence[Sequence[float] | None] | None = None,
    *,
    groups: Sequence[Sequence[int]] | None = None,
    on_bad: str = "raise",
    min_original_side: int | None = None,
    part: str = "db",
    device: str | torch.device | None = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    precision: str = "auto",
    progress: bool | str = True,
) -> Iterator[ImageOutput]:
    """Stream the backbone and every head over images, one ``ImageOutput`` per image.

    Nothing is kept: the caller consumes each image's outputs (e.g. accumulates them). Images
    are yielded in batch order, not input order.

    Parameters (the others as in ``extract_images``)
    ----------
    groups:
        Lists of indices into ``paths`` to extract, processed one group after the other; a
        batch never mixes two groups, so a group is complete before the next one starts (the
        unit of a resumable shard). Default ``None``: every image, one group. Images in no
        group are not read at all.
    on_bad:
        ``"raise"`` (default): an unreadable, truncated or too-small image raises
        ``ImageError`` naming the file. ``"skip"``: a truncated file is decoded as far as it
        goes (with a warning); an undecodable one, or one under ``MIN_SIDE`` px after resizing,
        is yielded as skipped with the reason.
    min_original_side:
        Images whose original shorter side is below this are yielded as skipped whatever
        ``on_bad`` says (the authors' rule for whitening images: 200 px). Default ``None``.
    part:
        Label of the skipped images (``SkippedImage.part``).
    """
    if on_bad not in ON_BAD:
        raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if batch_size is None:
        batch_size = CUDA_BATCH if dev.type == "cuda" else 1
    groups = [range(len(paths))] if groups is None else groups
    groups = [list(g) for g in groups]

    def skipped(i: int, reason: str) -> ImageOutput:
        p = Path(paths[i])
        return ImageOutput(i, None, SkippedImage(i, p.stem, str(p), reason, part))

    # Header pass: sizes for bucketing; bad or excluded images are known before any decoding.
    batches: list[list[int]] = []
    batch_group: list[int] = []
    header_skips: list[list[ImageOutput]] = []
    for g, idx in enumerate(groups):
        sizes, valid, skips = [], [], []
        for i in idx:
            bbx = None if bbxs is None else bbxs[i]
            try:
                (oh, ow), (h, w) = _image_sizes(paths[i], image_size, bbx)
            except ImageError as e:
                if on_bad == "raise":
                    raise
                skips.append(skipped(i, str(e)))
                continue
            if min_original_side is not None and min(oh, ow) < min_original_side:
                skips.append(skipped(i, f"original {ow}x{oh} px: shorter side under "
                                        f"{min_original_side} px"))  # fmt: skip
            elif min(h, w) < MIN_SIDE:
                reason = (
                    f"{paths[i]}: {w}x{h} px after resizing/cropping is smaller than {MIN_SIDE} px"
                )
                if on_bad == "raise":
                    raise ImageError(reason)
                skips.append(skipped(i, reason))
            else:
                sizes.append((h, w))
                valid.append(i)
        header_skips.append(skips)
        for b in size_batches(sizes, batch_size):
            batches.append([valid[j] for j in b])
            batch_group.append(g)
    if num_workers is None:
        cpus = os.cpu_count() or 1
        num_workers = 0 if cpus <= 2 else min(8, cpus - 1)
    loader = torch.utils.data.DataLoader(
        _ImageSet(paths, image_size, bbxs, skip_bad=on_bad == "skip"),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    desc = progress if isinstance(progress, str) else "extract"
    bar = tqdm(total=sum(len(g) for g in groups), desc=desc, disable=not progress, unit="img")
    next_group = 0  # header skips of groups before it have been yielded
    try:
        for b, (idx, batch, bad) in enumerate(loader):
            while next_group <= batch_group[b]:
                yield from header_skips[next_group]
                bar.update(len(header_skips[next_group]))
                next_group += 1
            for i, reason in bad:
                yield skipped(i, reason)
            bar.update(len(bad))
            if batch is None:
                continue
            batch = batch.to(dev, non_blocking=True)
            x = backbone.preprocess(batch)
            feats = _backbone_features(backbone, x, precision)
            outs = {}
            for name, head in heads.items():
                out = head(feats, batch).cpu()
                zero = out.reshape(len(idx), -1).abs().amax(1) == 0
                if zero.any():
                    names = [str(paths[idx[j]]) for j in torch.nonzero(zero).flatten().tolist()]
                    warnings.warn(
                        f"{name}: all-zero descriptor (no active feature) for {names}",
                        stacklevel=2,
                    )
                outs[name] = out
            for j, i in enumerate(idx):
                yield ImageOutput(i, {name: out[j] for name, out in outs.items()}, None)
            bar.update(len(idx))
        for g in range(next_group, len(groups)):
            yield from header_skips[g]
            bar.update(len(header_skips[g]))
    finally:
        bar.close()


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
        Image files. Unreadable, truncated or too-small images raise ``ImageError`` naming the
        file (``iter_images(on_bad="skip")`` skips them instead).
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

    Returns name -> list of per-image output tensors (on the CPU), in input order. Holds every
    output in memory: large passes stream with ``iter_images`` instead.
    """
    outputs: dict[str, list[torch.Tensor | None]] = {k: [None] * len(paths) for k in heads}
    for item in iter_images(
        paths, backbone, heads, image_size, bbxs, device=device, batch_size=batch_size,
        num_workers=num_workers, precision=precision, progress=progress,
    ):  # fmt: skip
        assert item.outputs is not None  # on_bad="raise": no image is skipped
        for name, out in item.outputs.items():
            outputs[name][item.index] = out
    return outputs  # type: ignore[return-value]


# ----------------------------------------------------------------------------- streamed statistics
def _group_ranges(n: int, size: int) -> list[tuple[int, int]]:
    if size < 1:
        raise ValueError(f"shard/group size must be >= 1, got {size}")
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def accumulate_images(
    paths: Sequence[str | os.PathLike],
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    *,
    group_size: int = 1000,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_s: float = 300.0,
    min_original_side: int | None = None,
    block_rows: int = 4096,
    **kwargs: Any,
) -> tuple[dict[str, CovarianceAccumulator], list[SkippedImage]]:
    """Stream every head's outputs, as rows (-1, C), into one fp64 accumulator per head.

    The whitening pass: no vector is kept beyond the accumulators' buffers, so memory does not
    grow with the number of images. Bad images are skipped (``iter_images(on_bad="skip")``)
    and returned with the reason, as are those below ``min_original_side`` (default ``None``).

    Resumable: images go in consecutive groups of ``group_size`` (default 1000); after each
    group the accumulators merge their buffered rows, and when ``checkpoint_s`` seconds (default
    300; 0: after every group) have passed since the last save, the state is written atomically
    to ``checkpoint`` (one C x C fp64 matrix per head, 32 MB at C = 2048). A rerun with the
    same ``paths`` and ``group_size`` continues after the last saved group, and gives exactly
    the result of an uninterrupted pass (the same blocks merged in the same order). The caller
    deletes the checkpoint once it has used the result. ``kwargs`` go to ``iter_images``
    (device, batch_size, num_workers, precision, progress).
    """
    ranges = _group_ranges(len(paths), group_size)
    state = None
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if (
            state.get("n_paths"),
            state.get("group_size"),
            sorted(state.get("accumulators", {})),
        ) != (len(paths), group_size, sorted(heads)):
            warnings.warn(f"{checkpoint}: made for another pass; starting over", stacklevel=2)
            state = None
    if state is None:
        accs = {name: CovarianceAccumulator(block_rows) for name in heads}
        skipped: list[SkippedImage] = []
        done = 0
    else:
        accs = {
            n: CovarianceAccumulator.from_state_dict(a) for n, a in state["accumulators"].items()
        }
        skipped = [SkippedImage.from_dict(d) for d in state["skipped"]]
        done = int(state["done_groups"])

    def save(n_done: int) -> None:
        atomic_torch_save(checkpoint, {
            "n_paths": len(paths), "group_size": group_size, "done_groups": n_done,
            "accumulators": {n: a.state_dict() for n, a in accs.items()},
            "skipped": [s.to_dict() for s in skipped],
        })  # fmt: skip

    todo = ranges[done:]
    group_of = {}
    for g, (s, e) in enumerate(todo):
        group_of.update(dict.fromkeys(range(s, e), g))
    left = [e - s for s, e in todo]
    last_save = time.monotonic()
    stream = iter_images(paths, backbone, heads, image_size, groups=[range(s, e) for s, e in todo],
                         on_bad="skip", min_original_side=min_original_side, part="whitening",
                         **kwargs)  # fmt: skip
    for item in stream:
        if item.skipped is not None:
            skipped.append(item.skipped)
        else:
            for name, out in item.outputs.items():
                accs[name].update(out.reshape(-1, out.shape[-1]))
        g = group_of[item.index]
        left[g] -= 1
        if left[g] == 0:
            for a in accs.values():
                a.flush()  # fixed merge points: a resumed pass merges the same blocks
            if checkpoint is not None and time.monotonic() - last_save >= checkpoint_s:
                save(done + g + 1)
                last_save = time.monotonic()
    skipped.sort(key=lambda s: s.index)
    return accs, skipped


# ----------------------------------------------------------------------------- cached datasets
@dataclass
class Descriptors:
    """Database and query descriptors of one method on one dataset.

    ``skipped``: database images that could not be used (``SkippedImage``, index = database
    row). Their rows of ``db`` are zero and ``pipeline.rank`` ranks them after every extracted
    image, so a skipped positive counts as a miss and skipping never raises the mAP; the
    ground truth keeps its indices.
    """

    db: torch.Tensor
    queries: torch.Tensor
    db_names: list[str]
    query_names: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    skipped: list[SkippedImage] = field(default_factory=list)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.db.numpy(), self.queries.numpy()

    @property
    def skipped_indices(self) -> list[int]:
        return sorted({s.index for s in self.skipped})


def list_digest(items: Sequence[Any]) -> str:
    """Short sha256 of a list (names, boxes) for cache keys: every element counts."""
    return hashlib.sha256(json.dumps([str(i) for i in items]).encode()).hexdigest()[:16]


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Images per shard file while a part of a dataset is being extracted (resumable unit);
#: ``$REGATTN_SHARD_IMAGES`` overrides it (and the whitening pass's group size).
SHARD_IMAGES = 500


def env_number(name: str, default: int | float, kind: type = int) -> Any:
    """``kind($name)`` when the variable is set (must be > 0 for int, >= 0 for float), else
    ``default``; a bad value raises ``ValueError`` naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number, got {raw!r}") from None
    if value < (1 if kind is int else 0):
        raise ValueError(f"${name} must be {'> 0' if kind is int else '>= 0'}, got {raw!r}")
    return value


def _extract_part(
    paths: Sequence[Path],
    bbxs: Sequence[Sequence[float] | None] | None,
    backbone: nn.Module,
    heads: Mapping[str, Head],
    shard_dirs: Mapping[str, Path | None],
    image_size: int | None,
    shard_size: int,
    on_bad: str,
    part: str,
    **kwargs: Any,
) -> dict[str, tuple[torch.Tensor | None, list[SkippedImage]]]:
    """Every head's outputs on ``paths`` as (N, ...) rows (zero rows for skipped images).

    Work is written in shards of ``shard_size`` images (``<shard_dir>/<start>-<end>.pt``,
    atomically) as soon as a shard is complete; existing shards are loaded instead of being
    extracted, so a rerun after an interruption only extracts the unfinished shards. Returns
    name -> (rows or ``None`` when ``paths`` is empty, skipped images).
    """
    chunks = _group_ranges(len(paths), shard_size)

    def shard_file(name: str, c: tuple[int, int]) -> Path | None:
        d = shard_dirs.get(name)
        return None if d is None else d / f"{c[0]:08d}-{c[1]:08d}.pt"

    have = {n: {c for c in chunks if (f := shard_file(n, c)) is not None and f.is_file()}
            for n in heads}  # fmt: skip
    todo = [c for c in chunks if any(c not in have[n] for n in heads)]
    run = {n: h for n, h in heads.items() if any(c not in have[n] for c in todo)}
    memory: dict[str, dict[tuple[int, int], dict[str, Any]]] = {n: {} for n in heads}
    if todo:
        chunk_of: dict[int, tuple[int, int]] = {}
        for c in todo:
            chunk_of.update(dict.fromkeys(range(*c), c))
        open_: dict[tuple[int, int], dict[str, Any]] = {}
        groups = [range(*c) for c in todo]
        for item in iter_images(paths, backbone, run, image_size, bbxs, groups=groups,
                                on_bad=on_bad, part=part, **kwargs):  # fmt: skip
            c = chunk_of[item.index]
            buf = open_.setdefault(c, {"out": {n: {} for n in run}, "skipped": [], "count": 0})
            if item.skipped is not None:
                buf["skipped"].append(item.skipped)
            else:
                for n, t in item.outputs.items():
                    buf["out"][n][item.index] = t
            buf["count"] += 1
            if buf["count"] < c[1] - c[0]:
                continue
            del open_[c]
            for n in run:
                if c in have[n]:
                    continue
                index = sorted(buf["out"][n])
                shard = {
                    "start": c[0], "end": c[1], "index": index,
                    "rows": torch.stack([buf["out"][n][i] for i in index]) if index else None,
                    "skipped": [s.to_dict() for s in sorted(buf["skipped"], key=lambda s: s.index)],
                }  # fmt: skip
                f = shard_file(n, c)
                if f is None:
                    memory[n][c] = shard
                else:
                    atomic_torch_save(f, shard)
    out: dict[str, tuple[torch.Tensor | None, list[SkippedImage]]] = {}
    for n in heads:
        rows: torch.Tensor | None = None
        skipped: list[SkippedImage] = []
        for c in chunks:
            f = shard_file(n, c)
            shard = (
                memory[n][c] if f is None else torch.load(f, map_location="cpu", weights_only=True)
            )
            skipped += [SkippedImage.from_dict(d) for d in shard["skipped"]]
            if shard["rows"] is None:
                continue
            if rows is None:
                rows = torch.zeros(
                    (len(paths), *shard["rows"].shape[1:]), dtype=shard["rows"].dtype
                )
            rows[shard["index"]] = shard["rows"]
        if chunks and rows is None:
            reasons = "; ".join(s.reason for s in skipped[:3])
            raise ImageError(f"none of the {len(paths)} {part} images could be used: {reasons}")
        out[n] = (rows, skipped)
    return out


def _remove_shards(dirs: Iterable[Path | None]) -> None:
    for d in dirs:
        if d is not None and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _stems(paths: Sequence[Path]) -> list[str]:
    return [p.stem for p in paths]


def extract_dataset(
    dataset: Any,
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    cache_dir: str | os.PathLike | None = None,
    crop_queries: bool = True,
    cached_only: bool = False,
    shard_size: int | None = None,
    **kwargs: Any,
) -> dict[str, Descriptors]:
    """Descriptors of a retrieval dataset's database and queries for every head, cached.

    ``dataset`` needs ``name``, ``db_paths``, ``query_paths`` and ``query_bbxs`` (a
    ``datasets.RetrievalDataset``); its ``distractors`` (optional) are the last database paths.
    Queries are cropped to their boxes (spec section 2) unless ``crop_queries=False``.

    Bad database images (undecodable, or under 32 px after resizing) are skipped and listed in
    ``Descriptors.skipped``; a truncated file decodes as far as it goes. A bad query raises
    ``ImageError`` naming the file.

    Caching: the dataset's own images (``imlist`` and queries) go to one file per head keyed
    by a hash of the dataset's name, image lists and boxes, the backbone and its weights, the
    image size, the head's settings (attention and whitening digests included) and the
    precision: a rerun with the same settings loads instantly, a changed setting never reuses
    stale vectors. The distractors go to ``<cache_dir>/_distractors/<key>.pt``, keyed by the
    distractor list, backbone, weights, image size, precision and head settings but not the
    dataset, so Oxford + distractors and Paris + distractors share one extraction (and a set
    with distractors reuses the file of the same set without). While a part is extracted,
    finished work is written in shards of ``shard_size`` images (default
    ``$REGATTN_SHARD_IMAGES``, else ``SHARD_IMAGES`` = 500) beside its file, so a rerun after an interruption extracts only the unfinished shards.
    Writes are atomic. ``cached_only=True`` never extracts: heads without a cache file raise
    ``FileNotFoundError`` naming them (viewers that must not recompute a database).
    ``kwargs`` go to ``iter_images`` (device, batch_size, num_workers, precision, progress).
    """
    if shard_size is None:
        shard_size = env_number("REGATTN_SHARD_IMAGES", SHARD_IMAGES)
    all_db = [Path(p) for p in dataset.db_paths]
    n_dist = len(getattr(dataset, "distractors", None) or [])
    core_paths, dist_paths = all_db[: len(all_db) - n_dist], all_db[len(all_db) - n_dist :]
    q_paths = [Path(p) for p in dataset.query_paths]
    bbxs = list(dataset.query_bbxs) if crop_queries else None
    precision = resolve_precision(
        kwargs.get("precision", "auto"), resolve_device(kwargs.get("device", "auto"))
    )
    backbone_key = {
        "backbone": getattr(backbone, "name", type(backbone).__name__),
        # weights and input convention (backbones.Backbone.cache_id)
        "weights": getattr(backbone, "cache_id", getattr(backbone, "weights_id", None)),
        "image_size": image_size,
        "bf16": precision == "bf16",
    }
    if precision == "fp16":
        backbone_key["fp16"] = True  # an extra key, so fp32/bf16 caches keep their old names
    common = {
        "dataset": dataset.name,
        "db": list_digest([p.name for p in core_paths]),
        "queries": list_digest([p.name for p in q_paths]),
        "bbxs": list_digest(bbxs or []),
        **backbone_key,
    }
    dist_common = {"part": "distractors", "images": list_digest([p.name for p in dist_paths]),
                   "n_images": len(dist_paths), **backbone_key}  # fmt: skip
    root = None if cache_dir is None else Path(cache_dir)
    files: dict[str, Path | None] = {}
    dist_files: dict[str, Path | None] = {}
    for name, head in heads.items():
        key = cache_key({**common, **head.cache_key()})
        # named by the key alone: one method under several labels (the ablation's "R-MAC + PCA",
        # the SOTA table's "R-MAC", the scale study's L = 5) is extracted once
        files[name] = None if root is None else root / dataset.name / f"{key}.pt"
        dkey = cache_key({**dist_common, **head.cache_key()})
        dist_files[name] = (
            None if root is None or not n_dist else root / "_distractors" / f"{dkey}.pt"
        )
    todo = {n: h for n, h in heads.items() if files[n] is None or not files[n].is_file()}
    dist_todo = {n: h for n, h in heads.items()
                 if n_dist and (dist_files[n] is None or not dist_files[n].is_file())}  # fmt: skip
    if cached_only and (todo or dist_todo):
        missing = [f"{n!r} ({files[n] or 'no cache_dir'})" for n in todo]
        missing += [f"{n!r} distractors ({dist_files[n] or 'no cache_dir'})" for n in dist_todo]
        raise FileNotFoundError(f"no cached descriptors of {dataset.name} for {', '.join(missing)}")
    progress = kwargs.pop("progress", True)
    result: dict[str, Descriptors] = {}
    for name in heads:
        if name not in todo:
            d = torch.load(files[name], map_location="cpu", weights_only=True)
            result[name] = Descriptors(
                d["db"], d["queries"], d["db_names"], d["query_names"], d["config"],
                [SkippedImage.from_dict(s) for s in d.get("skipped", [])],
            )  # fmt: skip
    if todo:
        parts = {n: None if files[n] is None else files[n].with_suffix(".parts") for n in todo}
        db = _extract_part(
            core_paths, None, backbone, todo, {n: p and p / "db" for n, p in parts.items()},
            image_size, shard_size, "skip", "db", progress=progress and f"{dataset.name} db",
            **kwargs,
        )  # fmt: skip
        qs = _extract_part(
            q_paths, bbxs, backbone, todo, {n: p and p / "queries" for n, p in parts.items()},
            image_size, shard_size, "raise", "queries",
            progress=progress and f"{dataset.name} queries", **kwargs,
        )  # fmt: skip
        for name, head in todo.items():
            config = {**common, **head.cache_key(), "name": name}
            db_rows, skipped = db[name]
            q_rows = qs[name][0]
            dim = (db_rows if db_rows is not None else q_rows).shape[1:]
            d = Descriptors(
                (db_rows if db_rows is not None else torch.zeros((0, *dim))).float(),
                (q_rows if q_rows is not None else torch.zeros((0, *dim))).float(),
                _stems(core_paths), _stems(q_paths), config, skipped,
            )  # fmt: skip
            result[name] = d
            if files[name] is not None:
                saved = {"db": d.db, "queries": d.queries, "db_names": d.db_names,
                         "query_names": d.query_names, "config": config,
                         "skipped": [s.to_dict() for s in skipped]}  # fmt: skip
                atomic_torch_save(files[name], saved)
        _remove_shards(parts.values())
    if n_dist:
        _add_distractors(result, dist_paths, dist_files, dist_todo, backbone, image_size,
                         shard_size, progress, dist_common, **kwargs)  # fmt: skip
    return {name: result[name] for name in heads}


def _add_distractors(
    result: dict[str, Descriptors],
    paths: Sequence[Path],
    files: Mapping[str, Path | None],
    todo: Mapping[str, Head],
    backbone: nn.Module,
    image_size: int | None,
    shard_size: int,
    progress: bool | str,
    common: Mapping[str, Any],
    **kwargs: Any,
) -> None:
    """Append the (shared, cached) distractor rows to each head's database, in place."""
    dist: dict[str, dict[str, Any]] = {}
    if todo:
        parts = {n: None if files[n] is None else files[n].with_suffix(".parts") for n in todo}
        out = _extract_part(
            paths, None, backbone, todo, parts, image_size, shard_size, "skip", "distractors",
            progress=progress and "distractors", **kwargs,
        )  # fmt: skip
        for name, head in todo.items():
            rows, skipped = out[name]
            d = {"db": rows.float(), "db_names": _stems(paths),
                 "config": {**common, **head.cache_key()},
                 "skipped": [s.to_dict() for s in skipped]}  # fmt: skip
            dist[name] = d
            if files[name] is not None:
                atomic_torch_save(files[name], d)
        _remove_shards(parts.values())
    for name, core in result.items():
        # one head's distractor rows in memory at a time besides the results (100k x 2048 fp32
        # is 0.8 GB per head)
        d = dist.pop(name, None)
        if d is None:
            d = torch.load(files[name], map_location="cpu", weights_only=True)
        offset = core.db.shape[0]
        skipped = core.skipped + [
            replace(SkippedImage.from_dict(s), index=s["index"] + offset) for s in d["skipped"]
        ]
        config = {**core.config, "distractors": {"images": common["images"],
                                                  "n_images": common["n_images"]}}  # fmt: skip
        result[name] = Descriptors(
            torch.cat([core.db, d["db"]]) if core.db.numel() else d["db"], core.queries,
            core.db_names + list(d["db_names"]), core.query_names, config, skipped,
        )  # fmt: skip


def write_skipped_images(
    path: str | os.PathLike,
    skipped: Descriptors | Mapping[str, Descriptors] | Iterable[SkippedImage | Mapping[str, Any]],
    dataset: str | None = None,
) -> Path:
    """Write the skipped images as CSV (``dataset,part,index,name,reason,path``), atomically.

    ``skipped``: a ``Descriptors`` (its ``skipped``), a mapping of them (one row per image,
    however many methods skipped it), or ``SkippedImage`` records / their dicts (e.g. a
    whitening's ``meta["skipped"]``). ``dataset`` fills the first column (default: the
    descriptors' dataset name, else empty). A file with only the header means nothing was
    skipped. Returns the path.
    """
    if isinstance(skipped, Descriptors):
        skipped = {"": skipped}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    if isinstance(skipped, Mapping):
        for d in skipped.values():
            ds_name = dataset if dataset is not None else str(d.config.get("dataset", ""))
            for s in d.skipped:
                rows.setdefault((s.part, s.index), {"dataset": ds_name, **s.to_dict()})
    else:
        for s in skipped:
            rec = s if isinstance(s, SkippedImage) else SkippedImage.from_dict(s)
            rows.setdefault((rec.part, rec.index), {"dataset": dataset or "", **rec.to_dict()})
    cols = ["dataset", "part", "index", "name", "reason", "path"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for key in sorted(rows, key=lambda k: k[1]):
        writer.writerow({c: rows[key][c] for c in cols})
    return atomic_write_text(path, buf.getvalue())
