"""Pictures of the query explorer: JPEG thumbnails, attention heat maps and uploaded images."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from regattn_lib.core.regions import rmac_regions
from regattn_lib.datasets.images import ImageError, truncated_images_allowed
from regattn_lib.experiments.figures import attention_heatmap


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnail(
    path: str | os.PathLike, size: int, bbx: Sequence[float] | None = None, square: bool = True
) -> bytes:
    """JPEG bytes of an image shrunk to ``size`` px on its long side, its box drawn if given;
    ``square`` centres it on a ``size`` x ``size`` canvas so that grids of them line up."""
    with truncated_images_allowed(), Image.open(path) as im:  # a cut-off distractor still shows
        full = im.size
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        # a photo is shown upright (EXIF), as its descriptor sees it; a query box refers to
        # the stored pixels, so a boxed image is left as stored
        small = (im if bbx is not None else ImageOps.exif_transpose(im)).convert("RGB")
    small.thumbnail((size, size))
    if bbx is not None:
        sx, sy = small.width / full[0], small.height / full[1]
        box = [bbx[0] * sx, bbx[1] * sy, bbx[2] * sx, bbx[3] * sy]
        ImageDraw.Draw(small).rectangle(box, outline="yellow", width=max(2, size // 80))
    if not square:
        return _jpeg(small)
    canvas = Image.new("RGB", (size, size), "#f0f0f0")
    canvas.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return _jpeg(canvas)


def level_regions(height: int, width: int, levels: int) -> np.ndarray:
    """The R-MAC regions of level ``levels`` alone (the finest grid of 1..L)."""
    coarser = len(rmac_regions(height, width, levels - 1)) if levels > 1 else 0
    return rmac_regions(height, width, levels)[coarser:]


def heat_overlay(
    image: np.ndarray, regions: np.ndarray, alpha: np.ndarray, grid: np.ndarray
) -> bytes:
    """JPEG of ``image`` with the mean alpha per pixel as a jet heat map and ``grid`` drawn."""
    from matplotlib import colormaps

    heat = attention_heatmap(image.shape[0], image.shape[1], regions, alpha)
    lo, hi = float(heat.min()), float(heat.max())
    # Uniform weights (R-MAC) have no range: paint them mid-scale rather than divide by zero.
    norm = (heat - lo) / (hi - lo) if hi - lo > 1e-9 else np.full_like(heat, 0.5)
    colour = (colormaps["jet"](norm)[..., :3] * 255).astype(np.float32)
    blend = (0.55 * image.astype(np.float32) + 0.45 * colour).clip(0, 255).astype(np.uint8)
    out = Image.fromarray(blend)
    draw = ImageDraw.Draw(out)
    for x, y, w, h in np.asarray(grid):
        draw.rectangle([int(x), int(y), int(x + w - 1), int(y + h - 1)], outline="white")
    return _jpeg(out)


def read_upload(data: bytes, name: str) -> Image.Image:
    """The uploaded bytes as an RGB image; ``ImageError`` with a readable reason otherwise."""
    if not data:
        raise ImageError(f"{name!r} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(
            f"{name!r} is not an image that can be read ({type(e).__name__}); "
            "upload a JPEG, PNG or WebP photo"
        ) from None


@contextmanager
def one_image_threads(device: torch.device):
    """One CPU thread for the backbone on a single image, restored afterwards.

    One image gains little from intra-op threads, but on a busy CPU their synchronisation can
    cost many times the forward itself, which decides whether a query switch feels instant.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
