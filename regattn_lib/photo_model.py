"""What a folder of one's own photos is described with, and how a photo is read.

The model: a profile's backbone, its attention (shipped with the repository, trained here or
the authors' release) and its whitening (shipped or cached), each falling back to "none" with
a note that says so. Reading: EXIF orientation applied, truncated files used as far as they
decode when most of the picture is there, and every unusable file turned into an
``ImageError`` whose message is the reason it is skipped.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .attention import RegionalAttention
from .heads import RegionalHead
from .image_stream import resolve_device, resolve_precision
from .images import (
    DECODE_ERRORS,
    ImageError,
    check_rgb,
    crop_box,
    resize_longest,
    truncated_images_allowed,
)
from .paths import data_root as resolve_data_root
from .paths import results_root
from .profiles import Profile, get_profile
from .whitening import CrosswiseWhitening, PCAWhitening

try:  # HEIC/HEIF photos (phones) decode only with this optional plug-in
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pillow_heif = None

#: Descriptor methods a folder can be indexed with (rows of the paper's ablation).
PHOTO_METHODS = ("rmac", "regional", "context")
#: Weights the repository ships, per profile: ``assets/<profile>/attention_<kind>.pt`` and
#: ``assets/<profile>/whitening.pt``; looked at before anything trained or downloaded.
SHIPPED_DIR = Path(__file__).resolve().parent / "assets"
#: A truncated file is used when at least this fraction of its rows decoded.
MIN_DECODED_FRACTION = 0.5
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".m4v", ".3gp", ".mts", ".wmv", ".webm"}
HEIF_SUFFIXES = {".heic", ".heif", ".avif"}
#: EXIF orientations that swap width and height (90 or 270 degrees).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


def shipped_weights(profile: str, name: str) -> Path | None:
    """``regattn_lib/assets/<profile>/<name>`` when the repository ships it, else ``None``.

    ``name``: ``attention_regional.pt``, ``attention_context.pt`` (training artefacts) or
    ``whitening.pt`` (a saved ``PCAWhitening``).
    """
    f = SHIPPED_DIR / profile / name
    return f if f.is_file() else None


@dataclass
class PhotoModel:
    """Backbone + descriptor head used for a folder, and where each part came from.

    ``method``: the method in use after any fallback; ``attention_source`` and
    ``whitening_source`` name the weights (or "none"); ``notes``: the fallbacks taken.
    """

    profile: Profile
    method: str
    backbone: torch.nn.Module
    head: RegionalHead
    device: torch.device
    precision: str
    attention_source: str
    whitening_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def min_side(self) -> int:
        """Shortest original side a photo needs: the profile's (``whitening_min_side``)."""
        from .pipeline import whitening_min_side

        return whitening_min_side(self.profile)

    def key(self) -> dict[str, Any]:
        """Everything that changes a descriptor (cache key of a folder's index)."""
        bb = self.backbone
        return {
            "backbone": getattr(bb, "name", type(bb).__name__),
            "weights": getattr(bb, "cache_id", None),
            "image_size": self.profile.image_size,
            "precision": self.precision,
            "min_side": self.min_side,
            **self.head.cache_key(),
        }

    def describe(self) -> str:
        """One line: backbone and weights, attention, whitening, size, levels, device."""
        bb = self.backbone
        weights = str(getattr(bb, "weights_id", "?"))[:12]
        return (
            f"backbone {getattr(bb, 'name', type(bb).__name__)} (weights sha256 {weights}...); "
            f"attention: {self.attention_source}; whitening: {self.whitening_source}; "
            f"{self.profile.image_size} px, L = {self.head.levels}, {self.precision} on "
            f"{self.device.type}"
        )


def _context(profile: Profile, data_root: str | os.PathLike | None, device: str) -> Any:
    from .pipeline import Context

    # a Context without results folders: a search never creates results/<profile>/
    res = results_root(profile.name)
    return Context(
        profile,
        resolve_data_root(data_root),
        res,
        resolve_device(device),
        {"models": res / "models"},
    )


def _attention(ctx: Any, kind: str, notes: list[str]) -> tuple[RegionalAttention | None, str]:
    from . import pipeline as P
    from .training.checkpoint import load_trained_attention

    f = shipped_weights(ctx.profile.name, f"attention_{kind}.pt")
    try:
        if f is not None:
            att, source = load_trained_attention(f), f"{kind}, shipped ({f.name})"
        else:
            att = P.load_attention(ctx, kind)
            source = f"{kind}, {P.provenance(att)}"
    except (FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        notes.append(f"{e}; falling back to R-MAC without attention")
        return None, "none (R-MAC)"
    channels = getattr(ctx.backbone, "channels", att.in_channels)
    if att.in_channels != channels:
        notes.append(
            f"the {kind} attention has {att.in_channels} channels, the backbone "
            f"{channels}; using R-MAC without attention"
        )
        return None, "none (R-MAC)"
    return att.to(ctx.device).eval(), source


def _whitening(ctx: Any, notes: list[str]) -> tuple[PCAWhitening | None, str]:
    from . import pipeline as P

    f = shipped_weights(ctx.profile.name, "whitening.pt")
    if f is not None:
        w = PCAWhitening.load(f)
        return w, f"PCA {w.in_dim} -> {w.out_dim}, shipped ({f.name})"
    # cached only, and never a download of the whitening images (SfM-120k is 20 GB)
    offline = replace(ctx, profile=replace(ctx.profile, download=False))
    offline.__dict__["backbone"] = ctx.backbone  # share the cached_property's network
    try:
        w = P.learn_whitening(offline, progress=False, cached_only=True)
    except (FileNotFoundError, OSError, ValueError) as e:
        notes.append(
            f"no cached whitening for profile {ctx.profile.name!r} ({str(e)[:200]}); "
            "descriptors are not whitened"
        )
        return None, "none"
    if isinstance(w, CrosswiseWhitening):  # own photos: the first test set's whitening
        first = ctx.profile.datasets[0]
        w = w.for_dataset(first)
        return (
            w,
            f"PCA {w.in_dim} -> {w.out_dim}, cached (crosswise: {first}'s, {w.meta.get('set')})",
        )
    return w, f"PCA {w.in_dim} -> {w.out_dim}, cached ({ctx.profile.whitening_set})"


def load_photo_model(
    profile: str | Profile = "demo",
    method: str = "context",
    device: str = "auto",
    data_root: str | os.PathLike | None = None,
) -> PhotoModel:
    """The backbone and head of ``profile`` for ``method``, with fallbacks named in ``notes``.

    ``profile``: ``demo`` (EfficientNet-Lite0, default) or ``paper`` (the authors' ResNet-101
    and released context attention), or a ``Profile``. ``method``: ``rmac``, ``regional`` or
    ``context`` (default). The attention is looked for in :func:`shipped_weights`, then where
    ``pipeline.load_attention`` finds it; missing (or of another channel count) it falls back
    to R-MAC. The whitening: shipped, else the profile's cached one, else none.
    """
    if method not in PHOTO_METHODS:
        raise ValueError(f"method must be one of {PHOTO_METHODS}, got {method!r}")
    prof = get_profile(profile)
    ctx = _context(prof, data_root, device)
    notes: list[str] = []
    att, att_source = (None, "none (R-MAC)") if method == "rmac" else _attention(ctx, method, notes)
    white, white_source = _whitening(ctx, notes)
    head = RegionalHead(
        name=method if att is not None else "rmac",
        levels=prof.levels,
        attention=att,
        whitening=white,
    )
    return PhotoModel(
        prof,
        head.name,
        ctx.backbone.eval(),
        head,
        ctx.device,
        resolve_precision(prof.precision, ctx.device),
        att_source,
        white_source,
        notes,
    )


# ----------------------------------------------------------------------------- reading photos
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


def _decode(data: bytes, path: Path, longest: int | None) -> np.ndarray:
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
    image = _decode(data, path, longest)
    resized, _ = resize_longest(image, longest)
    if box is not None:
        # the ratio of the original (not of a reduced JPEG decode) scales the box
        scale = 1.0 if longest is None else longest / max(h, w)
        resized = crop_box(resized, box, scale)
    check_rgb(resized, str(path))
    return Photo(resized, (h, w), hashlib.sha256(data).hexdigest())
