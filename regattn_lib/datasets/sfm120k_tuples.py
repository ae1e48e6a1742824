"""The training tuples of SfM-120k as cirtorch trains on them (``TuplesDataset``).

``retrieval-SfM-120k.pkl`` holds ``train`` and ``val``, each with ``cids`` (image ids; paths by
``retrieval.cid2filename``), ``cluster`` (the 3D model of each image), ``qidxs`` and ``pidxs``
(query and positive indices into ``cids``, pair by pair). Negatives are not stored: they are
mined each epoch among other clusters (``training.metric.mine_hard_negatives``). The pickle is
read through the restricted, checksummed unpickler (``safe_pickle``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regattn_lib.datasets import downloads as dl
from regattn_lib.datasets.retrieval import SFM_NAME, cid2filename
from regattn_lib.datasets.safe_pickle import safe_load_pickle
from regattn_lib.runtime.paths import data_root as resolve_data_root

#: The splits of ``retrieval-SfM-120k.pkl``.
SPLITS = ("train", "val")
#: Manifest key of ``retrieval-SfM-120k.pkl``.
DB_KEY = f"sfm_db_{SFM_NAME}"


@dataclass(frozen=True)
class SfMTuples:
    """One split: ``cids`` (N,), ``cluster`` (N,) int64, ``qidxs`` and ``pidxs`` (pairs,)
    int64 indices into ``cids``."""

    split: str
    cids: tuple[str, ...]
    cluster: np.ndarray
    qidxs: np.ndarray
    pidxs: np.ndarray

    def __len__(self) -> int:
        return len(self.cids)

    @property
    def n_pairs(self) -> int:
        return int(self.qidxs.size)

    @property
    def n_clusters(self) -> int:
        return int(np.unique(self.cluster).size)

    def image_paths(self, ims_root: str | os.PathLike) -> list[Path]:
        """Each image's path under the extracted ``ims`` folder (cirtorch's ``cid2filename``)."""
        return [cid2filename(c, ims_root) for c in self.cids]


def tuples_from_db(db: Mapping[str, Any], split: str, source: str = "database") -> SfMTuples:
    """Check and convert ``db[split]`` of an unpickled ``retrieval-SfM-120k.pkl``."""
    if split not in SPLITS:
        raise ValueError(f"SfM-120k tuples: split must be one of {SPLITS}, not {split!r}")
    if split not in db:
        raise KeyError(f"{source}: no {split!r} split (keys {sorted(db)})")
    part = db[split]
    missing = [k for k in ("cids", "cluster", "qidxs", "pidxs") if k not in part]
    if missing:
        raise KeyError(f"{source}[{split!r}]: missing {missing}")
    cids = tuple(str(c) for c in part["cids"])
    cluster = np.asarray(part["cluster"], dtype=np.int64).reshape(-1)
    qidxs = np.asarray(part["qidxs"], dtype=np.int64).reshape(-1)
    pidxs = np.asarray(part["pidxs"], dtype=np.int64).reshape(-1)
    n = len(cids)
    if cluster.size != n:
        raise ValueError(f"{source}[{split!r}]: {cluster.size} cluster ids for {n} images")
    if qidxs.size != pidxs.size:
        raise ValueError(f"{source}[{split!r}]: {qidxs.size} queries but {pidxs.size} positives")
    for name, v in (("qidxs", qidxs), ("pidxs", pidxs)):
        if v.size and (v.min() < 0 or v.max() >= n):
            raise ValueError(f"{source}[{split!r}]: {name} outside the {n} images")
    return SfMTuples(split, cids, cluster, qidxs, pidxs)


def read_sfm120k_tuples(
    path: str | os.PathLike,
    split: str,
    expected_sha256: str | None = None,
    lock_file: str | os.PathLike | None = None,
) -> SfMTuples:
    """The ``split`` ('train' or 'val') of a ``retrieval-SfM-120k.pkl`` file, unpickled by
    ``safe_load_pickle`` (hash checked against ``expected_sha256`` or the lock file)."""
    db = safe_load_pickle(path, expected_sha256, lock_file)
    if not isinstance(db, Mapping):
        raise ValueError(f"{path}: not a SfM-120k database (a {type(db).__name__})")
    return tuples_from_db(db, split, source=str(path))


def sfm120k_tuples(
    split: str, data_root: str | os.PathLike | None = None, download: bool = False
) -> SfMTuples:
    """The ``split`` of ``<data_root>/train/retrieval-SfM-120k/retrieval-SfM-120k.pkl``
    (where ``retrieval.whitening_images`` finds it), downloaded with ``download=True``."""
    root = resolve_data_root(data_root)
    pkl = root / "train" / SFM_NAME / f"{SFM_NAME}.pkl"
    if not pkl.is_file():
        if not download:
            raise FileNotFoundError(f"SfM-120k database {pkl} not found (download=True fetches it)")
        dl.download_entry(DB_KEY, root)
    return read_sfm120k_tuples(pkl, split, lock_file=root / dl.LOCK_NAME)


def subset_tuples(
    tuples: SfMTuples, query_size: int, pool_size: int, seed: int = 0
) -> tuple[SfMTuples, np.ndarray]:
    """The part of a split that metric learning caches: ``query_size`` (query, positive) pairs
    and a pool of ``pool_size`` images, both drawn once with ``seed`` (all of them where the
    split has fewer), as cirtorch's ``TuplesDataset`` draws its 2,000 queries and 20,000-image
    pool, except that cirtorch redraws both every epoch from the whole split. Returns (the
    subset, re-indexed: its pairs index its own images, in the split's order; the indices of
    its images in ``tuples``)."""
    if query_size < 1 or pool_size < 0:
        raise ValueError(
            f"SfM-120k subset: query_size must be >= 1 and pool_size >= 0, "
            f"got {query_size} and {pool_size}"
        )
    rng = np.random.default_rng(seed)
    pairs = np.sort(rng.permutation(tuples.n_pairs)[:query_size])
    pool = rng.permutation(len(tuples))[:pool_size]
    keep = np.union1d(np.union1d(tuples.qidxs[pairs], tuples.pidxs[pairs]), pool)
    new_index = np.full(len(tuples), -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.size)
    sub = SfMTuples(
        tuples.split,
        tuple(tuples.cids[i] for i in keep.tolist()),
        tuples.cluster[keep],
        new_index[tuples.qidxs[pairs]],
        new_index[tuples.pidxs[pairs]],
    )
    return sub, keep


def drop_images(tuples: SfMTuples, drop: Sequence[int]) -> SfMTuples:
    """``tuples`` without the images ``drop`` (indices; e.g. unreadable or too small) and
    every pair that used one of them."""
    gone = np.zeros(len(tuples), dtype=bool)
    gone[np.asarray(list(drop), dtype=np.int64)] = True
    keep = np.flatnonzero(~gone)
    new_index = np.full(len(tuples), -1, dtype=np.int64)
    new_index[keep] = np.arange(keep.size)
    ok = ~(gone[tuples.qidxs] | gone[tuples.pidxs])
    return SfMTuples(
        tuples.split,
        tuple(tuples.cids[i] for i in keep.tolist()),
        tuples.cluster[keep],
        new_index[tuples.qidxs[ok]],
        new_index[tuples.pidxs[ok]],
    )
