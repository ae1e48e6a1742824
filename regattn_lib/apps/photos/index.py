"""A folder of one's own photos as a searchable database: one descriptor per image, cached.

``index_folder`` describes every image under a folder (recursive; hidden files and folders
ignored) and caches the result under ``<data>/cache/folders/<key>/``, the key covering the
folder's absolute path and everything that changes a descriptor (profile, method, backbone
weights, attention and whitening digests, image size, precision). A rerun describes only new
or changed files: a file whose size and modification time are unchanged is reused; when they
changed but the size did not, its content hash decides. Removed files are dropped. Files that
cannot be used (not an image, unreadable, truncated beyond use, too small) are skipped with
the reason, remembered, and never stop the index. Work is written in atomic shards as it goes,
so an interrupted index resumes where it stopped and never leaves a corrupt cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from regattn_lib.apps.photos.model import PhotoModel, load_photo_model
from regattn_lib.datasets.images import ImageError, read_photo
from regattn_lib.experiments.profiles import Profile
from regattn_lib.runtime.atomic import atomic_torch_save, atomic_write_json, sha256_file
from regattn_lib.runtime.environment import env_number
from regattn_lib.runtime.paths import data_root as resolve_data_root
from regattn_lib.runtime.shards import SHARD_IMAGES, ShardStore

#: Version of the cache layout (a change makes old caches be rebuilt, never misread).
INDEX_FORMAT = 1


@dataclass
class FileRecord:
    """What the index knows of one file: its stat and hash, and a descriptor or a reason."""

    size: int
    mtime_ns: int
    sha256: str | None
    vector: torch.Tensor | None = None
    reason: str | None = None


@dataclass
class FolderIndex:
    """The descriptors of a folder's usable images and the files that were skipped.

    ``paths``: relative POSIX paths of the described images, sorted, one row of ``vectors``
    (N, D) each (L2-normalised); ``skipped``: (relative path, reason); ``model``: what
    described them; ``extracted``: images described by the ``index_folder`` call that made
    this object (0 when everything came from the cache); ``examined``: files it read
    (described or newly skipped); ``removed``: cached files no longer in the folder.
    """

    folder: Path
    paths: list[str]
    vectors: torch.Tensor
    skipped: list[tuple[str, str]]
    model: PhotoModel
    cache_dir: Path
    extracted: int = 0
    examined: int = 0
    removed: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.paths)} images indexed in {self.folder} ({self.extracted} described "
            f"now, {self.removed} removed), {len(self.skipped)} files skipped"
        )


def list_folder_files(folder: str | os.PathLike) -> list[str]:
    """Every regular file under ``folder`` as a sorted relative POSIX path, recursively.

    Files and folders whose name starts with ``'.'`` are ignored (``.thumbnails``, ``.git``,
    macOS ``._*`` sidecars); symbolic links to folders are not followed.
    """
    root = Path(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.is_file():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def folder_cache_dir(
    folder: str | os.PathLike, model: PhotoModel, data_root: str | os.PathLike | None = None
) -> Path:
    """``<data>/cache/folders/<key>/``: key = digest of the absolute folder path, the profile,
    the method and every descriptor setting of ``model`` (``PhotoModel.key``)."""
    parts = {
        "folder": str(Path(folder).expanduser().resolve()),
        "profile": model.profile.name,
        "method": model.method,
        "model": model.key(),
        "format": INDEX_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return resolve_data_root(data_root) / "cache" / "folders" / digest[:16]


# ----------------------------------------------------------------------------- cache files
def _records_payload(records: dict[str, FileRecord], config: dict[str, Any]) -> dict[str, Any]:
    """What an index file or one of its shards holds."""
    names = sorted(records)
    described = [n for n in names if records[n].vector is not None]
    return {
        "format": INDEX_FORMAT,
        "config": config,
        "paths": names,
        "size": [records[n].size for n in names],
        "mtime_ns": [records[n].mtime_ns for n in names],
        "sha256": [records[n].sha256 for n in names],
        "reason": [records[n].reason for n in names],
        "described": described,
        "vectors": torch.stack([records[n].vector for n in described]) if described else None,
    }


def _load_records(path: Path, config: dict[str, Any]) -> dict[str, FileRecord]:
    """The records of an index or shard file; ``{}`` when absent or made for other settings."""
    if not path.is_file():
        return {}
    d = torch.load(path, map_location="cpu", weights_only=True)
    if d.get("format") != INDEX_FORMAT or d.get("config") != config:
        # a cache of another model, format or library version: never mixed in, said once
        warnings.warn(
            f"{path}: made with other settings (format {d.get('format')!r}); its photos are "
            "described again",
            stacklevel=3,
        )
        return {}
    rows = {n: i for i, n in enumerate(d["described"])}
    return {
        n: FileRecord(size, mtime, sha, None if n not in rows else d["vectors"][rows[n]], reason)
        for n, size, mtime, sha, reason in zip(
            d["paths"], d["size"], d["mtime_ns"], d["sha256"], d["reason"], strict=True
        )
    }


def _config(model: PhotoModel, folder: Path) -> dict[str, Any]:
    # JSON round trip: the stored config compares equal to a fresh one (tuples become lists)
    return json.loads(
        json.dumps(
            {"folder": str(folder), "method": model.method, "model": model.key()}, default=str
        )
    )


# ----------------------------------------------------------------------------- describing
class _FileSet(torch.utils.data.Dataset):
    """Reads one file per item in a DataLoader worker: (path, image tensor or None, sha256,
    reason)."""

    def __init__(self, folder: Path, names: Sequence[str], longest: int | None, min_side: int):
        self.folder, self.names, self.longest, self.min_side = (
            folder,
            list(names),
            longest,
            min_side,
        )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None, str | None]:
        name = self.names[i]
        try:
            photo = read_photo(self.folder / name, self.longest, self.min_side)
        except ImageError as e:
            return name, None, None, str(e)
        return name, torch.from_numpy(photo.image).permute(2, 0, 1), photo.sha256, None


@torch.no_grad()
def describe_images(model: PhotoModel, images: torch.Tensor) -> torch.Tensor:
    """Descriptors (N, D) of uint8 RGB images (N, 3, H, W) of one size: the backbone in the
    model's precision, then its head (regions, attention, whitening, L2)."""
    from regattn_lib.extraction.image_stream import (
        backbone_features,  # the backbone runner extraction uses
    )

    batch = images.to(model.device)
    feats = backbone_features(model.backbone, model.backbone.preprocess(batch), model.precision)
    return model.head(feats, batch).float().cpu()


def _describe_files(
    model: PhotoModel, folder: Path, names: Sequence[str], progress: bool
) -> Iterator[tuple[str, torch.Tensor | None, str | None, str | None]]:
    """(name, descriptor or None, sha256, reason) per file, one image per forward pass (photos
    come in many sizes; decoding in DataLoader workers keeps the device busy)."""
    cpus = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(
        _FileSet(folder, names, model.profile.image_size, model.min_side),
        batch_size=None,
        num_workers=0 if cpus <= 2 else min(8, cpus - 1),
    )
    for name, image, sha, reason in tqdm(
        loader, desc="index", unit="file", disable=not progress or not names
    ):
        vector = None if image is None else describe_images(model, image[None])[0]
        yield name, vector, sha, reason


def index_folder(
    folder: str | os.PathLike,
    profile: str | Profile = "demo",
    method: str = "context",
    device: str = "auto",
    progress: bool = True,
    *,
    model: PhotoModel | None = None,
    data_root: str | os.PathLike | None = None,
    shard_images: int | None = None,
) -> FolderIndex:
    """Describe every image under ``folder`` (cached, incremental, resumable).

    Parameters
    ----------
    folder:
        The photo folder (recursive; names starting with '.' ignored).
    profile, method, device:
        As ``apps.photos.model.load_photo_model`` (defaults ``demo``, ``context``, ``auto``); the
        model's notes say which backbone, attention and whitening were used and any fallback.
    progress:
        A tqdm bar over the files read now (default True).
    model:
        An already loaded ``PhotoModel`` (then ``profile``, ``method``, ``device`` are unused).
    data_root:
        Where the cache goes (default ``paths.data_root()``: ``$REGATTN_DATA`` or ``data/``).
    shard_images:
        Files per resumable shard (default ``$REGATTN_SHARD_IMAGES``, else 500).

    Raises ``FileNotFoundError`` naming the folder when it is not a directory.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder not found: {folder}")
    if model is None:
        model = load_photo_model(profile, method, device, data_root)
    if shard_images is None:
        shard_images = env_number("REGATTN_SHARD_IMAGES", SHARD_IMAGES)
    cache = folder_cache_dir(folder, model, data_root)
    config = _config(model, folder)
    index_file, parts = cache / "index.pt", ShardStore(cache / "parts")
    known = _load_records(index_file, config)
    before = set(known)
    for part in parts.names():  # an interrupted run's finished shards
        known.update(_load_records(parts.path(part), config))
    names = list_folder_files(folder)
    keep: dict[str, FileRecord] = {}
    todo: list[str] = []
    stats: dict[str, os.stat_result] = {}
    for name in names:
        st = stats[name] = (folder / name).stat()
        rec = known.get(name)
        if rec is not None and (rec.size, rec.mtime_ns) == (st.st_size, st.st_mtime_ns):
            keep[name] = rec
        elif (
            rec is not None
            and rec.size == st.st_size
            and rec.sha256 is not None
            and sha256_file(folder / name) == rec.sha256
        ):
            keep[name] = FileRecord(st.st_size, st.st_mtime_ns, rec.sha256, rec.vector, rec.reason)
        else:
            todo.append(name)
    removed = len(before - set(names))
    changed = (
        bool(todo)
        or removed > 0
        or set(keep) != before
        or any(keep[n].mtime_ns != known[n].mtime_ns for n in keep)
    )
    extracted = 0
    shard: dict[str, FileRecord] = {}
    n_parts = len(parts.names())
    for name, vector, sha, reason in _describe_files(model, folder, todo, progress):
        st = stats[name]  # taken before reading: a file changed meanwhile is redone next run
        keep[name] = shard[name] = FileRecord(st.st_size, st.st_mtime_ns, sha, vector, reason)
        extracted += vector is not None
        if len(shard) >= shard_images:
            parts.save(f"{n_parts:06d}", _records_payload(shard, config))
            n_parts, shard = n_parts + 1, {}
    if changed or n_parts:
        atomic_torch_save(index_file, _records_payload(keep, config))
        atomic_write_json(
            cache / "folder.json",
            {"folder": str(folder), "model": model.describe(), "images": len(keep)},
        )
        parts.clear()
    return _folder_index(folder, keep, model, cache, extracted, len(todo), removed)


def _folder_index(
    folder: Path,
    records: dict[str, FileRecord],
    model: PhotoModel,
    cache: Path,
    extracted: int,
    examined: int,
    removed: int,
) -> FolderIndex:
    described = [n for n in sorted(records) if records[n].vector is not None]
    vectors = (
        torch.stack([records[n].vector for n in described]) if described else torch.zeros((0, 0))
    )
    skipped = [(n, str(records[n].reason)) for n in sorted(records) if records[n].vector is None]
    return FolderIndex(
        folder,
        described,
        vectors,
        skipped,
        model,
        cache,
        extracted,
        examined,
        removed,
        list(model.notes),
    )
