"""A small folder of real photographs to try own-photo search on, built offline from the
photographs scikit-image ships (``skimage.data``), with edited copies whose originals a
search should find.

The copies are the kinds of change a photo collection holds: a crop, a smaller JPEG at low
quality, a darker exposure, a copy stored sideways with an EXIF orientation tag. The folder is a
demonstration of behaviour, not a benchmark: eight photos are far too few to measure quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from regattn_lib.runtime.atomic import atomic_write

#: Colour photographs (name in ``skimage.data``) and grey ones turned to RGB.
PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field", "immunohistochemistry")
GREY_PHOTOS = ("camera", "coins")
#: Photos that get edited copies under ``copies/``.
EDITED = ("astronaut", "coffee", "rocket")
#: EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise to stand upright.
ORIENTATION_ROTATE_90 = 6
_ORIENTATION_TAG = 0x0112


def _photo(name: str) -> np.ndarray:
    import skimage.data

    im = getattr(skimage.data, name)()
    return np.stack([im] * 3, axis=-1) if im.ndim == 2 else np.ascontiguousarray(im[..., :3])


def _save(path: Path, image: np.ndarray, quality: int = 92, exif: Image.Exif | None = None) -> None:
    def write(tmp: Path) -> None:
        kwargs = {"format": "JPEG", "quality": quality}
        if exif is not None:
            kwargs["exif"] = exif
        Image.fromarray(image).save(tmp, **kwargs)

    atomic_write(path, write)


def edited_copies(image: np.ndarray) -> dict[str, np.ndarray | tuple[np.ndarray, Image.Exif]]:
    """The copies of one photo, by file suffix: ``crop`` (the central 70%), ``small`` (half
    size), ``dark`` (exposure x 0.6) and ``sideways`` (stored turned, with the EXIF tag that
    turns it back)."""
    h, w = image.shape[:2]
    crop = image[int(0.15 * h) : int(0.85 * h), int(0.15 * w) : int(0.85 * w)]
    small = np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.BILINEAR))
    dark = (image.astype(np.float32) * 0.6).round().astype(np.uint8)
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = ORIENTATION_ROTATE_90
    stored = np.ascontiguousarray(np.rot90(image, k=1))  # upright after a clockwise turn
    return {"crop": crop, "small": small, "dark": dark, "sideways": (stored, exif)}


def example_photos(dest: str | os.PathLike) -> Path:
    """Write the example folder under ``dest`` (once; a complete folder is left as it is).

    Layout: ``<name>.jpg`` for each of ``PHOTOS`` and ``GREY_PHOTOS``, and
    ``copies/<name>_<edit>.jpg`` for each of ``EDITED``. Returns ``dest``.
    """
    dest = Path(dest)
    done = dest / ".complete"
    if done.is_file():
        return dest
    for name in PHOTOS + GREY_PHOTOS:
        _save(dest / f"{name}.jpg", _photo(name))
    for name in EDITED:
        for edit, copy in edited_copies(_photo(name)).items():
            path = dest / "copies" / f"{name}_{edit}.jpg"
            if isinstance(copy, tuple):
                _save(path, copy[0], exif=copy[1])
            else:
                _save(path, copy, quality=40 if edit == "small" else 92)
    done.write_text("scikit-image photographs and edited copies\n")
    return dest


def original_of(path: str) -> str | None:
    """``copies/coffee_dark.jpg`` -> ``coffee.jpg``; ``None`` for an original."""
    p = Path(path)
    if p.parent.name != "copies":
        return None
    return p.stem.rsplit("_", 1)[0] + ".jpg"


def scene_of(path: str) -> str:
    """The photo a file shows: its original's name for a copy, its own name otherwise."""
    return original_of(path) or Path(path).name


def copy_ranks(index: object) -> list[dict[str, object]]:
    """For each edited copy in an indexed example folder, searched over the whole folder: the
    rank of its original, and the best rank of a photo of another scene (the copy itself and
    its sibling copies show the same scene, so the original need not be second; it should come
    before every other scene).

    ``index``: a ``apps.photos.index.FolderIndex`` of ``example_photos``.
    """
    from regattn_lib.apps.photos.search import search_folder

    rows = []
    folder = Path(index.folder)
    for path in index.paths:
        original = original_of(path)
        if original is None:
            continue
        hits = search_folder(index, folder / path, top=len(index.paths))
        rank = {h.path: h.rank for h in hits}
        other = min(h.rank for h in hits if scene_of(h.path) != original)
        rows.append(
            {
                "query": path,
                "original": original,
                "rank of original": rank.get(original),
                "first other scene": other,
                "score of original": next(h.score for h in hits if h.path == original),
            }
        )
    return rows
