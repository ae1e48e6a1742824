"""Image reading, resizing and query cropping, as the authors' test script prepares images.

Images travel as ``uint8`` RGB arrays of shape (H, W, 3); each backbone does its own
normalisation (BGR / mean / std) in ``Backbone.preprocess``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

#: Smallest side the stride-32 backbones accept: below it the feature map would be empty.
MIN_SIDE = 32


class ImageError(ValueError):
    """An image that cannot be used, with the file or the reason named."""


_TRUNCATED_LOCK = threading.Lock()


@contextlib.contextmanager
def _truncated_images_allowed():
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
            with _truncated_images_allowed():
                rgb = _decode(path)
            warnings.warn(f"{path}: truncated image file decoded partially ({e})", stacklevel=2)
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as e:
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

    Returns the resized image and the scale factor applied. Bilinear without antialiasing
    matches OpenCV's default ``INTER_LINEAR`` used by the authors.
    """
    h, w = image.shape[:2]
    if longest is None or max(h, w) == longest:
        return image, 1.0
    nh, nw = scaled_size(h, w, longest)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    out = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out, nh / h


def crop_box(image: np.ndarray, bbx: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """Crop ``image`` to ``bbx`` = [x1, y1, x2, y2] given in original pixels times ``scale``.

    As the authors do for queries: the full image is resized first, then cropped to the box
    scaled by the same factor. Coordinates are floored/ceiled outward and clipped to the image.
    """
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) * scale for v in bbx)
    if not (x2 > x1 and y2 > y1):
        raise ImageError(f"empty query box {list(bbx)}")
    c0, r0 = max(0, math.floor(x1)), max(0, math.floor(y1))
    c1, r1 = min(w, math.ceil(x2)), min(h, math.ceil(y2))
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
