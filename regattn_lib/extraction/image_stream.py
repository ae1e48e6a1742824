"""Streaming the backbone and descriptor heads over image files.

Images are read header-first (sizes for bucketing, bad or tiny files known before decoding),
grouped by their size after resizing so batching never changes a descriptor (``size_batches``),
decoded and resized in DataLoader workers, and run through the backbone under the resolved
precision (``resolve_precision``: fp16 autocast + channels_last on CUDA, fp32 on the CPU; a
batch whose fp16 features overflow is redone in fp32). ``iter_images`` yields one
``ImageOutput`` per image and keeps nothing; a bad database image is yielded as a
``SkippedImage`` with the reason instead of failing the pass.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from regattn_lib.core.descriptor import SharedSteps
from regattn_lib.datasets.images import MIN_SIDE, ImageError, crop_box, prepare_image, scaled_size
from regattn_lib.extraction.heads import Head
from regattn_lib.runtime.environment import resolve_device, resolve_precision

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Default images per forward pass on CUDA (batch 1 on the CPU).
CUDA_BATCH = 16


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
        return {
            "index": self.index,
            "name": self.name,
            "path": self.path,
            "reason": self.reason,
            "part": self.part,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SkippedImage:
        return cls(
            int(d["index"]),
            str(d["name"]),
            str(d["path"]),
            str(d["reason"]),
            str(d.get("part", "db")),
        )


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


def backbone_features(backbone: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
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


def _plan_batches(
    paths: Sequence[str | os.PathLike],
    groups: list[list[int]],
    image_size: int | None,
    bbxs: Sequence[Sequence[float] | None] | None,
    batch_size: int,
    on_bad: str,
    min_original_side: int | None,
    skipped: Callable[[int, str], ImageOutput],
) -> tuple[list[list[int]], list[int], list[list[ImageOutput]]]:
    """From the image headers alone: the batches (same-size images of one group), the group of
    each batch, and each group's images skipped before any decoding."""
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
                skips.append(
                    skipped(i, f"original {ow}x{oh} px: shorter side under {min_original_side} px")
                )
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
    return batches, batch_group, header_skips


def _heads_on_batch(
    backbone: nn.Module,
    heads: Mapping[str, Head],
    batch: torch.Tensor,
    precision: str,
    idx: Sequence[int],
    paths: Sequence[str | os.PathLike],
) -> dict[str, torch.Tensor]:
    """One backbone pass over a batch, then every head on its feature map (on the CPU); an
    all-zero descriptor is warned about, naming its file."""
    feats = backbone_features(backbone, backbone.preprocess(batch), precision)
    outs = {}
    shared = SharedSteps()  # the heads pool equal regions and whiten equal vectors once
    for name, head in heads.items():
        out = head(feats, batch, shared).cpu()
        zero = out.reshape(len(idx), -1).abs().amax(1) == 0
        if zero.any():
            names = [str(paths[idx[j]]) for j in torch.nonzero(zero).flatten().tolist()]
            warnings.warn(
                f"{name}: all-zero descriptor (no active feature) for {names}", stacklevel=3
            )
        outs[name] = out
    return outs


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
    batches, batch_group, header_skips = _plan_batches(
        paths, groups, image_size, bbxs, batch_size, on_bad, min_original_side, skipped
    )
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
            outs = _heads_on_batch(
                backbone, heads, batch.to(dev, non_blocking=True), precision, idx, paths
            )
            for j, i in enumerate(idx):
                yield ImageOutput(i, {name: out[j] for name, out in outs.items()}, None)
            bar.update(len(idx))
        for g in range(next_group, len(groups)):
            yield from header_skips[g]
            bar.update(len(header_skips[g]))
    finally:
        bar.close()


def group_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of ``size`` indices covering ``range(n)``."""
    if size < 1:
        raise ValueError(f"shard/group size must be >= 1, got {size}")
    return [(s, min(s + size, n)) for s in range(0, n, size)]
