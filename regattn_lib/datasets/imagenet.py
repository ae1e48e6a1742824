"""ImageFolder-style splits (``<split>/<class>/*.JPEG``): ILSVRC-2012 and any local classification set.

Class order is the sorted folder names, which for ImageNet is the sorted WordNet ids: the order of
the 1000 outputs of every ImageNet classifier (and of the frozen fc the attention trains under).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from regattn_lib.runtime.paths import data_root as resolve_data_root

#: File suffixes read as images (lower case; matching ignores case), as torchvision's ImageFolder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Environment variable naming a folder that holds ImageNet's ``train/`` and ``val/``.
IMAGENET_ENV = "REGATTN_IMAGENET"


@dataclass
class ImageFolderSplit:
    """One split of an ImageFolder tree: image paths, integer labels and class names."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def list_images(folder: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
    """Image files under ``folder`` (recursive, hidden files and folders skipped), sorted by
    relative path. ``extensions`` are matched case-insensitively."""
    folder = Path(folder)
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in extensions and p.is_file() and not _is_hidden(p.relative_to(folder))
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_image_folder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """Read ``root/<class>/**/<image>``.

    Returns ``(paths, labels, classes)``: classes are the sorted sub-folder names (hidden ones
    skipped), labels index into them, and images are listed class by class in sorted order.
    Raises ``FileNotFoundError`` when ``root`` is missing, has no class folders, or a class
    folder holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = len(list_images(root))
        raise FileNotFoundError(
            f"{root} has no class sub-folders (found {loose} images directly inside); "
            "expected <split>/<class>/<image> with one folder per class"
        )
    paths: list[Path] = []
    labels: list[int] = []
    empty = []
    for i, c in enumerate(classes):
        imgs = list_images(root / c)
        if not imgs:
            empty.append(c)
        paths.extend(imgs)
        labels.extend([i] * len(imgs))
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise FileNotFoundError(f"{root}: {len(empty)} class folder(s) hold no image: {shown}")
    return paths, labels, classes


def _imagenet_help(base: Path, split: str) -> str:
    return (
        f"ImageNet (ILSVRC-2012) {split} split not found at {base / split}.\n"
        "ImageNet cannot be downloaded automatically: register at https://image-net.org, "
        "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, and lay them out as\n"
        f"  {base}/train/<wnid>/*.JPEG   (untar the train tar, then each per-class n*.tar "
        "into a folder of the same WordNet id)\n"
        f"  {base}/val/<wnid>/*.JPEG     (the val tar is flat: move each of the 50,000 images "
        "into its class folder using the devkit ground truth, e.g. the widely used valprep.sh "
        "or Kaggle's LOC_val_solution.csv)\n"
        f"Put it there, link it there, or set ${IMAGENET_ENV} to the folder holding train/ "
        "and val/. Class order is the sorted WordNet ids (n01440764 first)."
    )


def classification_root(data_root: str | os.PathLike | None = None, name: str = "imagenet") -> Path:
    """The folder holding ``train/`` and ``val/`` of a classification set: ``$REGATTN_IMAGENET``
    for ``name='imagenet'`` when set (ImageNet often lives on another disk), else
    ``<data_root>/train/<name>``."""
    if name == "imagenet" and os.environ.get(IMAGENET_ENV):
        return Path(os.environ[IMAGENET_ENV]).expanduser()
    return resolve_data_root(data_root) / "train" / name


def imagenet_split(
    data_root: str | os.PathLike | None = None, split: str = "train", name: str = "imagenet"
) -> ImageFolderSplit:
    """A classification split laid out as ``<base>/<split>/<class>/*``.

    Parameters
    ----------
    data_root:
        Data root (``paths.data_root``); the base folder is ``<data_root>/train/<name>``.
        For ``name='imagenet'`` the environment variable ``$REGATTN_IMAGENET``, when set, names
        the base folder instead (ImageNet often lives on another disk).
    split:
        ``'train'`` or ``'val'`` (any sub-folder name works for other sets).
    name:
        ``'imagenet'`` (default) or a local set such as ``'synthetic-smoke-cls'``.

    Raises ``FileNotFoundError`` explaining the layout (for ImageNet, also that it must be
    obtained by hand and how to reorganise val into class folders).
    """
    base = classification_root(data_root, name)
    folder = base / split
    try:
        paths, labels, classes = list_image_folder(folder)
    except FileNotFoundError as e:
        if name == "imagenet":
            raise FileNotFoundError(f"{e}\n{_imagenet_help(base, split)}") from e
        raise FileNotFoundError(
            f"{e}\nexpected the classification set {name!r} as {base}/{split}/<class>/<image>"
        ) from e
    return ImageFolderSplit(folder, paths, labels, classes)
