"""Image reading, resizing and query cropping, as the authors' test script prepares images,
and the reading of one's own photos (``read_photo``: EXIF orientation applied, HEIC through an
optional plug-in, truncated files used as far as they decode when most of the picture is there,
every unusable file an ``ImageError`` whose message is the reason it is skipped).

Images travel as ``uint8`` RGB arrays of shape (H, W, 3); each backbone does its own
normalisation (BGR / mean / std) in ``Backbone.preprocess``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF photos (phones) decode only with this optional plug-in
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pillow_heif = None

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
#: A truncated file is used when at least this fraction of its rows decoded.
MIN_DECODED_FRACTION = 0.5
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".3gp", ".mts", ".wmv", ".webm"}
HEIF_SUFFIXES = {".heic", ".heif", ".avif"}
#: EXIF orientations that swap width and height (90 or 270 degrees).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112  # EXIF Orientation


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


# ----------------------------------------------------------------------------- own photos
class Photo(NamedTuple):
    """A photo ready for the backbone: uint8 RGB (H, W, 3) resized (and cropped), upright;
    ``original``: (H, W) after EXIF orientation, before resizing; ``sha256`` of the file."""

    image: np.ndarray
    original: tuple[int, int]
    sha256: str


def _not_image_reason(path: Path, error: Exception) -> str:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "not an image (video file)"
    if suffix in HEIF_SUFFIXES and pillow_heif is None:
        return f"{suffix[1:].upper()} image without a decoder (pip install pillow-heif)"
    if isinstance(error, UnidentifiedImageError):  # its message repeats the path
        return "not an image (unrecognised file format)"
    return f"not an image this reader can decode ({error})"


def oriented_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image as displayed (EXIF orientation applied), from its header only.

    Raises ``ImageError`` naming the file: missing, or not an image (with the reason).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(_ORIENTATION_TAG)
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except PermissionError as e:
        raise ImageError(f"unreadable: {e.strerror}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(_not_image_reason(path, e)) from e
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)


def _decoded_fraction(stored: np.ndarray) -> float:
    """Fraction of rows before the uniform grey (128) rows PIL leaves after a truncation."""
    grey = (stored == 128).all(axis=(1, 2))
    if not grey[-1]:
        return 1.0
    tail = len(grey) if grey.all() else int(np.argmin(grey[::-1]))  # trailing grey rows
    return 1.0 - tail / len(grey)


def _decode_photo(data: bytes, path: Path, longest: int | None) -> np.ndarray:
    """Upright uint8 RGB of a file's bytes; a JPEG much larger than needed decodes reduced."""

    def open_reduced() -> Image.Image:
        im = Image.open(io.BytesIO(data))
        if longest is not None and max(im.size) > 2 * longest:
            # libjpeg's 1/2..1/8 scaling, kept at >= 2x the target so the bilinear resize after
            # it does not alias; no-op for other formats
            s = 2 * longest / max(im.size)
            im.draft("RGB", (math.ceil(im.size[0] * s), math.ceil(im.size[1] * s)))
        im.load()
        return im

    try:
        try:
            im = open_reduced()
        except OSError as e:
            if isinstance(e, UnidentifiedImageError):
                raise
            with truncated_images_allowed():
                im = open_reduced()
            fraction = _decoded_fraction(np.asarray(im.convert("RGB")))
            if fraction < MIN_DECODED_FRACTION:
                raise ImageError(
                    f"truncated file: only {fraction:.0%} of the image decoded "
                    f"(under {MIN_DECODED_FRACTION:.0%})"
                ) from e
        upright = ImageOps.exif_transpose(im).convert("RGB")
    except ImageError:
        raise
    except DECODE_ERRORS as e:
        raise ImageError(f"cannot decode: {e}") from e
    return np.array(upright, dtype=np.uint8)


def read_photo(
    path: str | os.PathLike,
    longest: int | None,
    min_side: int = 0,
    box: Sequence[float] | None = None,
) -> Photo:
    """Read a photo upright (EXIF orientation), resize its longest side to ``longest`` and,
    for a query, crop it to ``box`` = (x1, y1, x2, y2) in the upright original's pixels.

    The crop is the paper's query crop (``images.crop_box``): the whole image is resized, then
    cut at ``round(box * longest / max(H, W))``. Raises ``ImageError`` whose message is the
    reason the file cannot be used: missing; not an image; shorter side under ``min_side``
    (default 0); truncated with under ``MIN_DECODED_FRACTION`` decoded (a truncated file is
    otherwise used as far as it goes); under 32 px after resizing or cropping; a box outside
    the image.
    """
    path = Path(path)
    h, w = oriented_size(path)
    if min(h, w) < min_side:
        raise ImageError(f"too small: {w}x{h} px, shorter side under the profile's {min_side} px")
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x2 > x1 and y2 > y1):
            raise ImageError(
                f"query box {list(box)} is empty: (x1, y1, x2, y2) needs x2 > x1, y2 > y1"
            )
        if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            raise ImageError(f"query box {list(box)} lies outside {path} ({w}x{h} px upright)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from e
    image = _decode_photo(data, path, longest)
    resized, _ = resize_longest(image, longest)
    if box is not None:
        # the ratio of the original (not of a reduced JPEG decode) scales the box
        scale = 1.0 if longest is None else longest / max(h, w)
        resized = crop_box(resized, box, scale)
    check_rgb(resized, str(path))
    return Photo(resized, (h, w), hashlib.sha256(data).hexdigest())
