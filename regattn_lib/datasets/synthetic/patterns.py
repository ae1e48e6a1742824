"""Colours and procedural patterns: float32 (h, w, 3) images in [0, 1].

They texture objects that are not cut from a photo, the overlays on every object, faded
background murals and occluder slabs.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw


def colour(rng: np.random.Generator, sat=(0.3, 1.0), val=(0.25, 1.0)) -> np.ndarray:
    """A random RGB colour (float32, 3) of uniform hue, saturation in ``sat``, value in ``val``."""
    h = rng.random()
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)), np.float32)


def colour_pair(
    rng: np.random.Generator, sat=(0.3, 1.0), val=(0.15, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours that differ clearly (L1 distance > 0.6 when 20 draws allow it)."""
    c1 = colour(rng, sat, val)
    # Contrast makes a pattern readable after blur and downscaling.
    for _ in range(20):
        c2 = colour(rng, sat, val)
        if np.abs(c1 - c2).sum() > 0.6:
            break
    return c1, c2


def to_u8(a: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped) to rounded uint8."""
    out = np.clip(a, 0, 1)
    out *= 255
    out += 0.5
    return out.astype(np.uint8)


def coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (h, 1) and column (1, w) coordinates, both in units of the longer side."""
    s = float(max(h, w))
    yy = (np.arange(h, dtype=np.float32) / s)[:, None]
    xx = (np.arange(w, dtype=np.float32) / s)[None, :]
    return yy, xx


def blend2(t: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32: ``c1`` where ``t`` is 0, ``c2`` where it is 1, linear between."""
    t = np.asarray(t, np.float32)
    step = c2 - c1
    out = np.empty((*t.shape, 3), np.float32)
    # Channel by channel: numpy broadcasts over a trailing axis of 3 several times slower.
    for k in range(3):
        np.multiply(t, step[k], out=out[..., k])
        out[..., k] += c1[k]
    return out


def _pat_grating(rng, h, w):
    yy, xx = coords(h, w)
    th, f, ph = rng.uniform(0, np.pi), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
    v = np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + ph)
    if rng.random() < 0.5:  # plaid
        th2, f2 = rng.uniform(0, np.pi), rng.uniform(2, 9)
        v = 0.5 * (v + np.sin(2 * np.pi * f2 * (xx * np.cos(th2) + yy * np.sin(th2))))
    if rng.random() < 0.5:  # square wave
        v = np.sign(v)
    return blend2((v + 1) / 2, *colour_pair(rng))


def _pat_checker(rng, h, w):
    yy, xx = coords(h, w)
    th, n = rng.uniform(0, np.pi / 2), rng.integers(3, 10)
    u = xx * np.cos(th) + yy * np.sin(th)
    v = -xx * np.sin(th) + yy * np.cos(th)
    t = (np.floor(u * n) + np.floor(v * n * rng.uniform(0.6, 1.6))) % 2
    return blend2(t, *colour_pair(rng))


def _pat_blobs(rng, h, w):
    g = rng.random((rng.integers(3, 8), rng.integers(3, 8))).astype(np.float32)
    f = np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC))
    q = np.quantile(f, [0.33, 0.66])
    idx = (f > q[0]).astype(np.int64) + (f > q[1])
    palette = np.stack([colour(rng), colour(rng), colour(rng)])
    return palette[idx]


def _pat_glyphs(rng, h, w):
    bg, fg = colour_pair(rng)
    im = Image.new("RGB", (w, h), tuple(int(c * 255) for c in bg))
    d = ImageDraw.Draw(im)
    s = min(h, w)
    for _ in range(rng.integers(3, 10)):
        col = tuple(int(c * 255) for c in (fg if rng.random() < 0.7 else colour(rng)))
        width = max(1, int(s * rng.uniform(0.03, 0.09)))
        if rng.random() < 0.65:
            pts = [
                (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
                for _ in range(rng.integers(2, 5))
            ]
            d.line(pts, fill=col, width=width, joint="curve")
        else:
            cx, cy, r = (
                rng.uniform(0.2, 0.8) * w,
                rng.uniform(0.2, 0.8) * h,
                rng.uniform(0.1, 0.3) * s,
            )
            a0 = rng.uniform(0, 360)
            d.arc(
                (cx - r, cy - r, cx + r, cy + r),
                a0,
                a0 + rng.uniform(90, 330),
                fill=col,
                width=width,
            )
    return np.asarray(im, dtype=np.float32) / 255


def _pat_rings(rng, h, w):
    yy, xx = coords(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h / max(h, w), rng.uniform(0.2, 0.8) * w / max(h, w)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    v = np.sin(2 * np.pi * rng.uniform(3, 10) * r)
    if rng.random() < 0.5:  # dartboard sectors
        v = v * np.sign(np.sin(rng.integers(3, 9) * np.arctan2(yy - cy, xx - cx)))
    return blend2(v > 0, *colour_pair(rng))


def _pat_facade(rng, h, w):
    wall, win = colour_pair(rng, sat=(0.1, 0.7))
    im = Image.new("RGB", (w, h), tuple(int(c * 255) for c in wall))
    d = ImageDraw.Draw(im)
    rows, cols = rng.integers(2, 7), rng.integers(2, 8)
    mx, my = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)
    bar = tuple(int(c * 255) for c in wall) if rng.random() < 0.5 else None
    for i in range(rows):
        for j in range(cols):
            x0, y0 = w * (j + mx / 2) / cols, h * (i + my / 2) / rows
            x1, y1 = w * (j + 1 - mx / 2) / cols, h * (i + 1 - my / 2) / rows
            d.rectangle((x0, y0, x1, y1), fill=tuple(int(c * 255) for c in win))
            if bar is not None:  # window crosses
                d.line(((x0 + x1) / 2, y0, (x0 + x1) / 2, y1), fill=bar, width=1)
                d.line((x0, (y0 + y1) / 2, x1, (y0 + y1) / 2), fill=bar, width=1)
    return np.asarray(im, dtype=np.float32) / 255


def _pat_mondrian(rng, h, w):
    palette = [colour(rng) for _ in range(4)] + [np.array([0.95, 0.95, 0.92], np.float32)]
    im = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(im)
    line = max(1, int(min(h, w) * 0.025))
    boxes = [(0.0, 0.0, float(w), float(h))]
    for _ in range(rng.integers(4, 9)):
        k = rng.integers(len(boxes))
        x0, y0, x1, y1 = boxes.pop(k)
        if (x1 - x0) > (y1 - y0):
            xm = x0 + (x1 - x0) * rng.uniform(0.3, 0.7)
            boxes += [(x0, y0, xm, y1), (xm, y0, x1, y1)]
        else:
            ym = y0 + (y1 - y0) * rng.uniform(0.3, 0.7)
            boxes += [(x0, y0, x1, ym), (x0, ym, x1, y1)]
    for b in boxes:
        col = tuple(int(c * 255) for c in palette[rng.integers(len(palette))])
        d.rectangle(b, fill=col, outline=(20, 20, 20), width=line)
    return np.asarray(im, dtype=np.float32) / 255


_PATTERNS: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _pat_grating,
    _pat_checker,
    _pat_blobs,
    _pat_glyphs,
    _pat_rings,
    _pat_facade,
    _pat_mondrian,
)


def pattern(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random procedural pattern of at least 2 x 2 pixels."""
    return _PATTERNS[rng.integers(len(_PATTERNS))](rng, max(h, 2), max(w, 2))
