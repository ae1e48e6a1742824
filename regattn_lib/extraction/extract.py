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

Long passes survive bad data and interruptions: ``image_stream.iter_images`` streams
per-image outputs (nothing accumulates unless the caller keeps it), skips undecodable or tiny
database images with the reason (``SkippedImage``) and decodes truncated files as far as they
go; ``extract_dataset`` writes finished work in shards so a rerun resumes, and caches the
distractors once for every dataset they are added to; ``whitening_stream.accumulate_images``
feeds the whitening statistics without keeping the vectors. The heads live in ``heads``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regattn_lib.datasets.images import ImageError
from regattn_lib.extraction.heads import Head
from regattn_lib.extraction.image_stream import SkippedImage, group_ranges, iter_images
from regattn_lib.runtime.atomic import atomic_torch_save, atomic_write_text
from regattn_lib.runtime.environment import env_number, resolve_device, resolve_precision
from regattn_lib.runtime.identity import (
    backbone_name,
    backbone_weights_id,
    cache_key,
    content_stamp,
    list_digest,
)
from regattn_lib.runtime.shards import SHARD_IMAGES, ShardStore


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
        (``benchmarks/extract_throughput.py --sweep-batch-sizes`` measures it).
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
        paths,
        backbone,
        heads,
        image_size,
        bbxs,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        precision=precision,
        progress=progress,
    ):
        assert item.outputs is not None  # on_bad="raise": no image is skipped
        for name, out in item.outputs.items():
            outputs[name][item.index] = out
    return outputs  # type: ignore[return-value]


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


def _extract_part(
    paths: Sequence[Path],
    bbxs: Sequence[Sequence[float] | None] | None,
    backbone: nn.Module,
    heads: Mapping[str, Head],
    shards: Mapping[str, ShardStore],
    image_size: int | None,
    shard_size: int,
    on_bad: str,
    part: str,
    **kwargs: Any,
) -> dict[str, tuple[torch.Tensor | None, list[SkippedImage]]]:
    """Every head's outputs on ``paths`` as (N, ...) rows (zero rows for skipped images).

    Work is written to each head's ``ShardStore`` in shards of ``shard_size`` images (named
    ``<start>-<end>``) as soon as a shard is complete; existing shards are loaded instead of
    being extracted, so a rerun after an interruption only extracts the unfinished shards.
    Returns name -> (rows or ``None`` when ``paths`` is empty, skipped images).
    """
    chunks = group_ranges(len(paths), shard_size)

    def shard_name(c: tuple[int, int]) -> str:
        return f"{c[0]:08d}-{c[1]:08d}"

    have = {n: {c for c in chunks if shards[n].has(shard_name(c))} for n in heads}
    todo = [c for c in chunks if any(c not in have[n] for n in heads)]
    run = {n: h for n, h in heads.items() if any(c not in have[n] for c in todo)}
    if todo:
        chunk_of: dict[int, tuple[int, int]] = {}
        for c in todo:
            chunk_of.update(dict.fromkeys(range(*c), c))
        open_: dict[tuple[int, int], dict[str, Any]] = {}
        groups = [range(*c) for c in todo]
        for item in iter_images(
            paths,
            backbone,
            run,
            image_size,
            bbxs,
            groups=groups,
            on_bad=on_bad,
            part=part,
            **kwargs,
        ):
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
                    "start": c[0],
                    "end": c[1],
                    "index": index,
                    "rows": torch.stack([buf["out"][n][i] for i in index]) if index else None,
                    "skipped": [s.to_dict() for s in sorted(buf["skipped"], key=lambda s: s.index)],
                }
                shards[n].save(shard_name(c), shard)
    out: dict[str, tuple[torch.Tensor | None, list[SkippedImage]]] = {}
    for n in heads:
        rows: torch.Tensor | None = None
        skipped: list[SkippedImage] = []
        for c in chunks:
            shard = shards[n].load(shard_name(c))
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


def _shard_stores(files: Mapping[str, Path | None], part: str | None) -> dict[str, ShardStore]:
    """Each head's shards, beside its cache file (``<key>.parts/<part>/``), in memory without
    one."""
    return {
        n: ShardStore(None if f is None else f.with_suffix(".parts") / (part or ""))
        for n, f in files.items()
    }


def _clear_shards(files: Mapping[str, Path | None]) -> None:
    for store in _shard_stores(files, None).values():
        store.clear()


def _stems(paths: Sequence[Path]) -> list[str]:
    return [p.stem for p in paths]


def _backbone_key(backbone: nn.Module, image_size: int | None, precision: str) -> dict[str, Any]:
    """What of the backbone and its input a descriptor cache key holds."""
    key = {
        "backbone": backbone_name(backbone),
        # weights and input convention (backbones.Backbone.cache_id)
        "weights": backbone_weights_id(backbone),
        "image_size": image_size,
        "bf16": precision == "bf16",
    }
    if precision == "fp16":
        key["fp16"] = True  # an extra key, so fp32/bf16 caches keep their old names
    return key


def _cache_files(
    heads: Mapping[str, Head], common: Mapping[str, Any], folder: Path | None
) -> dict[str, Path | None]:
    """Each head's cache file in ``folder`` (``None`` without one), named by its key alone: one
    method under several labels (the ablation's "R-MAC + PCA", the SOTA table's "R-MAC", the
    scale study's L = 5) is extracted once."""
    return {
        name: None if folder is None else folder / f"{cache_key({**common, **head.cache_key()})}.pt"
        for name, head in heads.items()
    }


def _load_descriptors(file: Path) -> Descriptors:
    d = torch.load(file, map_location="cpu", weights_only=True)
    return Descriptors(
        d["db"],
        d["queries"],
        d["db_names"],
        d["query_names"],
        d["config"],
        [SkippedImage.from_dict(s) for s in d.get("skipped", [])],
    )


def _save_descriptors(file: Path, d: Descriptors) -> None:
    atomic_torch_save(
        file,
        {
            "db": d.db,
            "queries": d.queries,
            "db_names": d.db_names,
            "query_names": d.query_names,
            "config": d.config,
            "skipped": [s.to_dict() for s in d.skipped],
        },
    )


def _extract_own(
    name: str,
    parts: tuple[Sequence[Path], Sequence[Path], list | None],
    backbone: nn.Module,
    todo: Mapping[str, Head],
    files: Mapping[str, Path | None],
    common: Mapping[str, Any],
    image_size: int | None,
    shard_size: int,
    progress: bool | str,
    **kwargs: Any,
) -> dict[str, Descriptors]:
    """The database and query descriptors of ``todo``'s heads on a set's own images (``parts``:
    database paths, query paths, query boxes), each saved to its file."""
    core_paths, q_paths, bbxs = parts
    # database images that cannot be used are skipped; a bad query is an error
    db, qs = (
        _extract_part(
            paths,
            boxes,
            backbone,
            todo,
            _shard_stores(files, part),
            image_size,
            shard_size,
            on_bad,
            part,
            progress=progress and f"{name} {part}",
            **kwargs,
        )
        for part, paths, boxes, on_bad in (
            ("db", core_paths, None, "skip"),
            ("queries", q_paths, bbxs, "raise"),
        )
    )
    result = {}
    for key, head in todo.items():
        db_rows, skipped = db[key]
        q_rows = qs[key][0]
        dim = (db_rows if db_rows is not None else q_rows).shape[1:]
        d = Descriptors(
            (db_rows if db_rows is not None else torch.zeros((0, *dim))).float(),
            (q_rows if q_rows is not None else torch.zeros((0, *dim))).float(),
            _stems(core_paths),
            _stems(q_paths),
            {**common, **head.cache_key(), "name": key},
            skipped,
        )
        result[key] = d
        if files[key] is not None:
            _save_descriptors(files[key], d)
    _clear_shards(files)
    return result


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
    backbone_key = _backbone_key(backbone, image_size, precision)
    common = {
        "dataset": dataset.name,
        "db": list_digest([p.name for p in core_paths]),
        "queries": list_digest([p.name for p in q_paths]),
        "bbxs": list_digest(bbxs or []),
        **backbone_key,
    }
    stamp = content_stamp(getattr(dataset, "root", None))
    if stamp is not None:  # only generated sets: downloaded sets keep their keys
        common["content"] = stamp
    dist_common = {
        "part": "distractors",
        "images": list_digest([p.name for p in dist_paths]),
        "n_images": len(dist_paths),
        **backbone_key,
    }
    root = None if cache_dir is None else Path(cache_dir)
    files = _cache_files(heads, common, None if root is None else root / dataset.name)
    dist_files = _cache_files(
        heads, dist_common, None if root is None or not n_dist else root / "_distractors"
    )
    todo = {n: h for n, h in heads.items() if files[n] is None or not files[n].is_file()}
    dist_todo = {
        n: h
        for n, h in heads.items()
        if n_dist and (dist_files[n] is None or not dist_files[n].is_file())
    }
    if cached_only and (todo or dist_todo):
        missing = [f"{n!r} ({files[n] or 'no cache_dir'})" for n in todo]
        missing += [f"{n!r} distractors ({dist_files[n] or 'no cache_dir'})" for n in dist_todo]
        raise FileNotFoundError(f"no cached descriptors of {dataset.name} for {', '.join(missing)}")
    progress = kwargs.pop("progress", True)
    result: dict[str, Descriptors] = {}
    for name in heads:
        if name not in todo:
            result[name] = _load_descriptors(files[name])
    if todo:
        result.update(
            _extract_own(
                dataset.name,
                (core_paths, q_paths, bbxs),
                backbone,
                todo,
                {n: files[n] for n in todo},
                common,
                image_size,
                shard_size,
                progress,
                **kwargs,
            )
        )
    if n_dist:
        _add_distractors(
            result,
            dist_paths,
            dist_files,
            dist_todo,
            backbone,
            image_size,
            shard_size,
            progress,
            dist_common,
            **kwargs,
        )
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
        out = _extract_part(
            paths,
            None,
            backbone,
            todo,
            _shard_stores({n: files[n] for n in todo}, None),
            image_size,
            shard_size,
            "skip",
            "distractors",
            progress=progress and "distractors",
            **kwargs,
        )
        for name, head in todo.items():
            rows, skipped = out[name]
            d = {
                "db": rows.float(),
                "db_names": _stems(paths),
                "config": {**common, **head.cache_key()},
                "skipped": [s.to_dict() for s in skipped],
            }
            dist[name] = d
            if files[name] is not None:
                atomic_torch_save(files[name], d)
        _clear_shards({n: files[n] for n in todo})
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
        config = {
            **core.config,
            "distractors": {"images": common["images"], "n_images": common["n_images"]},
        }
        result[name] = Descriptors(
            torch.cat([core.db, d["db"]]) if core.db.numel() else d["db"],
            core.queries,
            core.db_names + list(d["db_names"]),
            core.query_names,
            config,
            skipped,
        )


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
