"""Image reading, resizing and query cropping, as the authors' test script prepares images.

Images travel as ``uint8`` RGB arrays of shape (H, W, 3); each backbone does its own
normalisation (BGR / mean / std) in ``Backbone.preprocess``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

#: What PIL raises on a file it cannot decode (corrupt, not an image, a decompression bomb).
DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)
#: Smallest side the stride-32 backbones accept: below it the feature map would be empty.
MIN_SIDE = 32


class ImageError(ValueError):
    """An image that cannot be used, with the file or the reason named."""


_TRUNCATED_LOCK = threading.Lock()


@contextlib.contextmanager
def truncated_images_allowed():
    """PIL decodes truncated files as far as they go (grey after the end) inside the block.

    PIL reads ``ImageFile.LOAD_TRUNCATED_IMAGES`` at decode time, so it is set only for the
    duration of one decode and restored after, under a lock, instead of once at import (which
    would make every caller in the process lenient).
    """
    with _TRUNCATED_LOCK:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def _decode(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def load_rgb(path: str | os.PathLike, allow_truncated: bool = False) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); grey and CMYK files are converted.

    ``allow_truncated=True`` decodes a truncated file as far as it goes, as revisitop does for
    its distractors (the missing part is grey), with a warning naming the file; default False.
    Raises ``ImageError`` naming the file when it is missing, undecodable, or truncated
    (unless allowed).
    """
    path = Path(path)
    try:
        try:
            rgb = _decode(path)
        except OSError as e:
            if not allow_truncated or isinstance(e, FileNotFoundError | UnidentifiedImageError):
                raise
            with truncated_images_allowed():
                rgb = _decode(path)
            warnings.warn(f"{path}: truncated image file decoded partially ({e})", stacklevel=2)
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except DECODE_ERRORS as e:
        raise ImageError(f"cannot read image {path}: {e}") from e
    return np.array(rgb, dtype=np.uint8)  # writable: torch.from_numpy warns on read-only arrays


def check_rgb(image: np.ndarray | torch.Tensor, name: str = "image") -> None:
    """Raise ``ImageError`` unless ``image`` is a uint8 (H, W, 3) array with both sides >= 32."""
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ImageError(
            f"{name}: expected an RGB image of shape (H, W, 3), got shape {shape}; "
            "convert grey or RGBA images to RGB first (load_rgb does this for files)"
        )
    dtype = image.dtype
    if dtype not in (np.uint8, torch.uint8):
        raise ImageError(f"{name}: expected uint8 pixels (0-255), got dtype {dtype}")
    if min(shape[0], shape[1]) < MIN_SIDE:
        raise ImageError(
            f"{name}: image of {shape[1]}x{shape[0]} px is smaller than {MIN_SIDE} px on a side; "
            "the stride-32 feature map would be empty"
        )


def scaled_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(H, W) after resizing so that the longest side is ``longest`` (aspect ratio kept)."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_longest(image: np.ndarray, longest: int | None) -> tuple[np.ndarray, float]:
    """Resize uint8 RGB so its longest side is ``longest`` (bilinear); ``None`` keeps it.

    Returns the resized image and the ratio ``longest / max(H, W)`` (1.0 when not resized): the
    authors' ``ratio``, by which they scale a query box (:func:`crop_box`); the sides are
    ``round(H * ratio)`` and ``round(W * ratio)``. Bilinear without antialiasing matches
    OpenCV's default ``INTER_LINEAR`` used by the authors.
    """
    h, w = image.shape[:2]
    if longest is None or max(h, w) == longest:
        return image, 1.0
    nh, nw = scaled_size(h, w, longest)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    out = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out, longest / max(h, w)


def crop_box(image: np.ndarray, bbx: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """Crop ``image`` to ``bbx`` = [x1, y1, x2, y2] given in original pixels times ``scale``.

    As the authors' test script crops a query: the full image is resized first (``scale`` =
    S / max(H, W), see :func:`resize_longest`), then ``roi = np.round(bbx * scale)`` and
    ``image[roi[1]:roi[3], roi[0]:roi[2]]``: each coordinate rounded half to even (numpy's
    rule: 10.5 -> 10, 11.5 -> 12), the end exclusive. The product is taken in float32, as
    theirs was (a float32 box array times a scalar stays float32 in the numpy of the time).
    Unlike their code the box is clipped to the image, so a box reaching past the border
    cannot wrap around as numpy's negative indices would (inside the image nothing changes).

    Raises ``ImageError`` for an empty box or one that lies outside the image.
    """
    h, w = image.shape[:2]
    box = np.asarray(bbx, dtype=np.float32)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ImageError(f"query box must be 4 finite numbers [x1, y1, x2, y2], got {list(bbx)}")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ImageError(f"empty query box {list(bbx)}")
    x1, y1, x2, y2 = (int(v) for v in np.round(box * np.float32(scale)))
    c0, r0, c1, r1 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if c1 - c0 < 1 or r1 - r0 < 1:
        raise ImageError(f"query box {list(bbx)} lies outside the {w}x{h} image")
    return image[r0:r1, c0:c1]


def prepare_image(
    path: str | os.PathLike,
    longest: int | None,
    bbx: Sequence[float] | None = None,
    allow_truncated: bool = False,
) -> np.ndarray:
    """Load, resize to ``longest`` and, for a query, crop to its box (spec section 2).

    ``allow_truncated``: as for ``load_rgb`` (default False).
    """
    image = load_rgb(path, allow_truncated)
    image, scale = resize_longest(image, longest)
    if bbx is not None:
        image = crop_box(image, bbx, scale)
    try:
        check_rgb(image, str(path))
    except ImageError as e:
        raise ImageError(
            f"{e} (after resizing to {longest} px{' and cropping' if bbx else ''})"
        ) from e
    return image
