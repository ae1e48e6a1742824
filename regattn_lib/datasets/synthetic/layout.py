"""Where a synthetic benchmark lives on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from regattn_lib.paths import data_root as _data_root


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated benchmark lives.

    Parameters:
        name: dataset name (``gnd_<name>.pkl``).
        root: the data root.
        retrieval_dir: ``<root>/test/<name>`` (``jpg/``, the gnd pickle, ``annotations.json``).
        gnd_path: ``<retrieval_dir>/gnd_<name>.pkl``.
        whiten_dir: ``<root>/train/<name>-whiten`` (``jpg/``).
        cls_dir: ``<root>/train/<name>-cls`` (``train/<class>/``, ``val/<class>/``).
    """

    name: str
    root: Path
    retrieval_dir: Path
    gnd_path: Path
    whiten_dir: Path
    cls_dir: Path


def synthetic_paths(name: str, data_root: str | os.PathLike | None = None) -> SyntheticPaths:
    """The folders of dataset ``name`` under ``data_root`` (``paths.data_root`` default: None)."""
    root = _data_root(data_root)
    retrieval = root / "test" / name
    return SyntheticPaths(
        name=name,
        root=root,
        retrieval_dir=retrieval,
        gnd_path=retrieval / f"gnd_{name}.pkl",
        whiten_dir=root / "train" / f"{name}-whiten",
        cls_dir=root / "train" / f"{name}-cls",
    )
