"""Where a synthetic benchmark lives on disk, and its landmark masks (written and read)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from regattn_lib.runtime.paths import data_root as _data_root

#: Folder of the landmark masks, beside ``jpg/`` in a retrieval folder.
MASK_DIR = "masks"


@dataclass(frozen=True)
class SyntheticPaths:
    """Where a generated benchmark lives.

    Parameters:
        name: dataset name (``gnd_<name>.pkl``).
        root: the data root.
        retrieval_dir: ``<root>/test/<name>`` (``jpg/``, ``masks/``, the gnd pickle,
            ``annotations.json``).
        gnd_path: ``<retrieval_dir>/gnd_<name>.pkl``.
        whiten_dir: ``<root>/train/<name>-whiten`` (``jpg/``).
        cls_dir: ``<root>/train/<name>-cls`` (``train/<class>/``, ``val/<class>/``).
        metric_dir: ``<root>/train/<name>-metric`` (``jpg/``, ``masks/``, the tuples
            ``<name>-metric.pkl``, ``annotations.json``): landmark views for metric learning.
    """

    name: str
    root: Path
    retrieval_dir: Path
    gnd_path: Path
    whiten_dir: Path
    cls_dir: Path
    metric_dir: Path


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
        metric_dir=root / "train" / f"{name}-metric",
    )


def landmark_mask_path(dataset_root: str | os.PathLike, image_name: str) -> Path:
    """``<dataset_root>/masks/<stem>.png``: the mask file of a database image or query.

    Parameters:
        dataset_root: a synthetic retrieval folder (``SyntheticPaths.retrieval_dir``, or the
            ``root`` of its ``RetrievalDataset``).
        image_name: the image's name as in ``imlist``/``qimlist`` (``"db_00003"``), with or
            without ``.jpg``.
    """
    stem = image_name.removesuffix(".jpg")
    return Path(dataset_root) / MASK_DIR / f"{stem}.png"


def cls_mask_name(cls_dir: str | os.PathLike, image_path: str | os.PathLike) -> str:
    """The name under which :func:`load_landmark_mask` finds a classification image's object
    mask: its path inside ``cls_dir`` without the suffix (``"val/class_00/class_00_0003"``).

    Raises ``ValueError`` for an image outside ``cls_dir``."""
    try:
        rel = Path(image_path).resolve().relative_to(Path(cls_dir).resolve())
    except ValueError:
        raise ValueError(f"{image_path} is not inside the classification split {cls_dir}") from None
    return rel.with_suffix("").as_posix()


def save_landmark_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a bool (H, W) mask as a 1-bit PNG (lossless; a few hundred bytes)."""
    Image.fromarray(np.asarray(mask, bool)).save(path, "PNG")


def load_landmark_mask(dataset_root: str | os.PathLike, image_name: str) -> np.ndarray:
    """The landmark mask of a synthetic database image or query: bool (H, W), the image's size.

    True where the landmark is visible (its warped texture covers more than half the pixel and
    no occluder or clutter object hides it); all False for an image without a landmark.

    Parameters:
        dataset_root: the synthetic retrieval folder (``<data_root>/test/<name>``).
        image_name: the image's name as in ``imlist``/``qimlist``, with or without ``.jpg``.

    Raises ``FileNotFoundError`` when there is no mask (not a synthetic set, or one written
    before masks were kept: ``generate_synthetic`` regenerates it).
    """
    path = landmark_mask_path(dataset_root, image_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no landmark mask {path}: masks exist only for synthetic sets made by "
            "regattn_lib.datasets.synthetic.generate_synthetic (version 2 or later)"
        )
    with Image.open(path) as im:
        return np.asarray(im.convert("1"), dtype=bool)


#: The parts of a synthetic benchmark in its hash list, with their folder in ``SyntheticPaths``.
SPLIT_FOLDERS = {
    "retrieval": "retrieval_dir",
    "whitening": "whiten_dir",
    "classification": "cls_dir",
    "metric": "metric_dir",
}


def split_hash_lines(paths: SyntheticPaths) -> dict[str, list[str]]:
    """Per part (``SPLIT_FOLDERS``), one ``sha256sum`` line per file, paths relative to the
    data root and sorted: ``"<sha256>  test/synthetic-demo/jpg/db_00000.jpg"``.

    ``cd <data root> && sha256sum -c splits.sha256`` checks a copy; two draws are the same split
    exactly when their lines are. Raises ``FileNotFoundError`` naming a part not generated.
    """
    from regattn_lib.runtime.atomic import sha256_file

    out: dict[str, list[str]] = {}
    for part, attr in SPLIT_FOLDERS.items():
        folder = Path(getattr(paths, attr))
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"{folder}: the {part} split is not generated (no meta.json)")
        files = sorted(f for f in folder.rglob("*") if f.is_file())
        out[part] = [f"{sha256_file(f)}  {f.relative_to(paths.root).as_posix()}" for f in files]
    return out


def split_digest(lines: list[str]) -> str:
    """One sha256 over a part's hash lines: equal exactly when every file and name is."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def metric_tuples(paths: SyntheticPaths, split: str):
    """The ``split`` ('train' or 'val') of the metric-learning split's tuples, read by the
    same reader as SfM-120k's (``sfm120k_tuples.tuples_from_db``), and its image paths.

    Returns ``(tuples, image_paths)``. Raises ``FileNotFoundError`` naming the file when the
    split is not generated.
    """
    import pickle

    from regattn_lib.datasets.sfm120k_tuples import tuples_from_db

    pkl = Path(paths.metric_dir) / f"{paths.name}-metric.pkl"
    if not pkl.is_file():
        raise FileNotFoundError(
            f"no metric-learning tuples {pkl}: generate_synthetic writes them (generator "
            "version 2, with the metric split)"
        )
    with open(pkl, "rb") as f:  # written by this generator: plain lists and str only
        db = pickle.load(f)
    tuples = tuples_from_db(db, split, source=str(pkl))
    return tuples, [Path(paths.metric_dir) / "jpg" / f"{c}.jpg" for c in tuples.cids]
