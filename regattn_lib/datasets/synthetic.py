"""Offline synthetic retrieval benchmark: planar landmarks among clutter, in the real sets' layout.

The paper's claim is that regional attention lets landmark regions count more than background
clutter in an R-MAC descriptor. This generator builds a world where that is the whole story:
each database image is a cluttered scene (textured background, random shapes, faded patterns,
and *distractor objects* that recur across images) that may contain one *landmark*, a planar
textured object seen under a perspective warp, at a scale from large to tiny, with its own
lighting, blur and partial occlusion. Queries are separate images of each landmark. Everything
is written exactly as the revisited Oxford/Paris sets are, so every downstream code path is the
real one:

- ``<root>/test/<name>/jpg/{db_NNNNN,q_NNN}.jpg`` and ``<root>/test/<name>/gnd_<name>.pkl``:
  ``{'imlist', 'qimlist', 'gnd'}``, one ``gnd`` dict per query with ``bbx`` [x1, y1, x2, y2]
  (floats, query pixels), ``easy``, ``hard``, ``junk`` and the classic ``ok`` (sorted
  easy + hard), 0-based indices into ``imlist``; plain Python objects only. Queries are not in
  ``imlist`` (revisited convention). ``annotations.json`` beside it records, per image, the
  landmark, its visible and area fractions, label, visible box and warped corners.
- ``<root>/train/<name>-whiten/jpg/w_NNNNN.jpg``: the same kind of scenes with *other*
  landmark instances, for learning the PCA-whitening (``annotations.json`` names each image's
  landmark, for learned whitening).
- ``<root>/train/<name>-cls/{train,val}/class_NN/*.jpg``: an ImageFolder classification set for
  training the attention. Its classes are a third set of objects made by the same generator,
  among a separate pool of distractor objects, so the attention is not tuned to the benchmark.

Every object (landmarks, whitening landmarks, classes, distractors) comes from one generator:
a base that is either a tile cut from a photo shipped with scikit-image (tiles never shared
between two objects; grey photos are tinted) or a procedural pattern (grating/plaid,
checkerboard, blobs, glyph-like strokes, rings, window grid, Mondrian), with procedural
motif overlays, an optional frame and a silhouette (mostly rectangles, also ellipses, rounded
rectangles and polygons). Landmarks and distractors thus differ only in role, never in style,
so nothing but identity tells them apart. The brick/grass/gravel photos are used only in
backgrounds.

Ground-truth labels (thresholds are ``SyntheticConfig`` fields, defaults in brackets). For a
database view, ``visible`` = visible landmark pixels / pixels of the whole warped landmark
(parts outside the frame count as hidden), ``area`` = visible landmark pixels / image pixels:

- junk if ``visible < junk_max_visible`` [0.25] or ``area < junk_max_area`` [0.012] (tiny or
  mostly hidden: barely visible);
- easy if, otherwise, ``visible >= easy_min_visible`` [0.7] and ``area >= easy_min_area``
  [0.08] (large and mostly visible);
- hard otherwise (small, heavily occluded or cut by the frame, but recognisable).

Views are drawn per landmark in proportions ``view_mix`` of *targets* easy/hard/junk (large and
unoccluded; small, half hidden behind an occluder or half out of frame; tiny or almost fully
hidden), but the label is always the one measured from the rendered masks.

Determinism: every image draws from ``numpy.random.default_rng([seed, role, *index])`` and
every object from its own role and index, so the output is byte-identical whatever the number
of worker processes. Each output folder is built in a hidden temporary sibling and renamed into
place after its ``meta.json`` (config, seed, generator version, counts) is written last, so an
interrupted run never leaves a folder that looks complete. A folder whose ``meta.json``
matches is skipped; one made by this generator with another config, seed or version is
*regenerated* (replaced) with a warning, because the folder name is per profile and stale data
would silently mismatch the code; a folder that this generator did not make is never touched
(``FileExistsError``).
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from regattn_lib.paths import data_root as _data_root

__all__ = [
    "GENERATOR",
    "GENERATOR_VERSION",
    "SYNTHETIC_PRESETS",
    "SyntheticConfig",
    "SyntheticPaths",
    "generate_synthetic",
    "synthetic_paths",
    "tiny_config",
    "view_label",
]

GENERATOR = "regattn_lib.datasets.synthetic"
#: Bump whenever the rendering changes, so that datasets made by older code are regenerated.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that defines a synthetic benchmark (the seed is passed separately).

    Sizes are in pixels; "scale" is the square root of the warped object's area over the
    image's area (0.5 = the object covers a quarter of the image).

    Parameters:
        name: dataset name, used for the folders and ``gnd_<name>.pkl`` (``"synthetic-smoke"``).
        image_size: longest image side (256).
        aspect_ratios: width:height ratios drawn uniformly per image (4:3, 3:4, 1:1).
        object_size: longest side of each object's texture before warping (96).
        photo_tile: side of the square tiles cut from scikit-image photos, at the photos'
            resolution capped to 800 px (112).
        photo_fraction: share of the objects of each role built on a photo tile, the rest on a
            procedural pattern; scaled down for all roles alike when tiles run out (0.5).
        n_landmarks: retrieval landmarks, one query each (12).
        views_per_landmark: database images of each landmark (8).
        view_mix: targeted share of easy, hard and junk views of each landmark
            ((0.4, 0.4, 0.2)); labels are measured, not assigned.
        n_distractor_images: database images with no landmark (60).
        n_clutter_objects: size of each split's own pool of recurring distractor objects (40).
        clutter_per_scene: (min, max) distractor objects per scene, inclusive ((2, 5)).
        clutter_scale: (min, max) scale of a distractor object ((0.08, 0.3)).
        main_clutter_prob: chance that a landmark-free image shows one distractor object at
            landmark size, so that a large object alone does not reveal a landmark (0.7).
        query_scale: (min, max) scale of the landmark in a query ((0.4, 0.65)).
        n_whiten_landmarks: landmark instances of the whitening split (15).
        n_whiten_images: images of the whitening split, views of landmark ``i % n`` (150).
        n_cls_classes: classes of the classification split (6).
        n_cls_train: training images per class (20).
        n_cls_val: validation images per class (6).
        cls_scale: (min, max) scale of the class object ((0.3, 0.65)).
        easy_min_visible: least visible fraction of an easy view (0.7).
        easy_min_area: least area fraction of an easy view (0.08).
        junk_max_visible: a view less visible than this is junk (0.25).
        junk_max_area: a view with a smaller area fraction is junk (0.012).
        jpeg_quality: JPEG quality of every image (90).
    """

    name: str = "synthetic-smoke"
    image_size: int = 256
    aspect_ratios: tuple[tuple[int, int], ...] = ((4, 3), (3, 4), (1, 1))
    object_size: int = 96
    photo_tile: int = 112
    photo_fraction: float = 0.5
    n_landmarks: int = 12
    views_per_landmark: int = 8
    view_mix: tuple[float, float, float] = (0.4, 0.4, 0.2)
    n_distractor_images: int = 60
    n_clutter_objects: int = 40
    clutter_per_scene: tuple[int, int] = (2, 5)
    clutter_scale: tuple[float, float] = (0.08, 0.3)
    main_clutter_prob: float = 0.7
    query_scale: tuple[float, float] = (0.4, 0.65)
    n_whiten_landmarks: int = 15
    n_whiten_images: int = 150
    n_cls_classes: int = 6
    n_cls_train: int = 20
    n_cls_val: int = 6
    cls_scale: tuple[float, float] = (0.3, 0.65)
    easy_min_visible: float = 0.7
    easy_min_area: float = 0.08
    junk_max_visible: float = 0.25
    junk_max_area: float = 0.012
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if min(self.image_size * min(a, b) / max(a, b) for a, b in self.aspect_ratios) < 32:
            raise ValueError("image_size too small: the shorter side must stay >= 32 px")
        if self.n_landmarks < 1 or self.views_per_landmark < 1:
            raise ValueError("need at least one landmark with one view")
        if self.n_clutter_objects < 1 or self.n_whiten_landmarks < 1 or self.n_cls_classes < 1:
            raise ValueError("object pools must not be empty")
        if abs(sum(self.view_mix) - 1.0) > 1e-6 or min(self.view_mix) < 0:
            raise ValueError(
                f"view_mix must be 3 non-negative shares summing to 1: {self.view_mix}"
            )


#: ``smoke``: 168 retrieval images + 150 whitening + 156 classification, 256 px, seconds.
#: ``demo``: 1,650 retrieval images (50 queries) + 1,500 whitening + 1,500 classification, 512 px.
SYNTHETIC_PRESETS: dict[str, SyntheticConfig] = {
    "smoke": SyntheticConfig(),
    "demo": SyntheticConfig(
        name="synthetic-demo",
        image_size=512,
        object_size=192,
        n_landmarks=50,
        views_per_landmark=12,
        n_distractor_images=1000,
        n_clutter_objects=120,
        n_whiten_landmarks=60,
        n_whiten_images=1500,
        n_cls_classes=20,
        n_cls_train=60,
        n_cls_val=15,
    ),
}


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


def view_label(visible: float, area: float, cfg: SyntheticConfig) -> str:
    """``'easy'``, ``'hard'`` or ``'junk'`` for a view, by the thresholds of ``cfg``.

    Parameters:
        visible: visible landmark pixels over the whole warped landmark's pixels.
        area: visible landmark pixels over the image's pixels.
        cfg: the config holding the thresholds (see the module docstring).
    """
    if visible < cfg.junk_max_visible or area < cfg.junk_max_area:
        return "junk"
    if visible >= cfg.easy_min_visible and area >= cfg.easy_min_area:
        return "easy"
    return "hard"


# --------------------------------------------------------------------------------------------
# Seeds: one integer code per stream, so that no two images or objects share a random stream.

_CODE = {
    "tiles": 1,
    "photo-choice": 2,
    "order": 3,
    "view": 10,
    "clutter-image": 11,
    "query": 12,
    "whiten": 13,
    "cls-train": 14,
    "cls-val": 15,
    "landmark": 20,
    "whiten-landmark": 21,
    "cls": 22,
    "clutter-retrieval": 23,
    "clutter-whiten": 24,
    "clutter-cls": 25,
}


def _rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _CODE[stream], *index]))


# --------------------------------------------------------------------------------------------
# Source photos.

# Photos whose tiles become objects, and textures reserved for backgrounds: disjoint, so that
# background clutter never shares content with an object.
_OBJECT_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "text",
    "page",
    "hubble_deep_field",
    "retina",
    "moon",
    "cell",
    "immunohistochemistry",
    "logo",
    "clock",
    "stereo_motorcycle",
)
_TEXTURE_PHOTOS = ("brick", "grass", "gravel")
_MAX_PHOTO_SIDE = 800


def _load_photo(name: str) -> np.ndarray:
    """A scikit-image photo as float32 RGB or grey in [0, 1], longest side <= 800."""
    import skimage.data

    im = getattr(skimage.data, name)()
    if isinstance(im, tuple):  # stereo_motorcycle: (left, right, disparity)
        im = im[0]
    im = np.asarray(im)
    if im.ndim == 3 and im.shape[2] == 4:  # logo: flatten its transparency onto white
        a = im[..., 3:].astype(np.float32) / 255
        im = (im[..., :3] * a + 255 * (1 - a)).round().astype(np.uint8)
    pil = Image.fromarray(im)
    scale = _MAX_PHOTO_SIDE / max(pil.size)
    if scale < 1:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    return np.asarray(pil, dtype=np.float32) / 255


@lru_cache(maxsize=4)
def _photo_tiles(tile: int) -> tuple[tuple[np.ndarray, bool], ...]:
    """Non-overlapping ``tile`` x ``tile`` crops of the object photos that carry texture.

    Returns (tile float32 in [0, 1], is_grey) pairs in a fixed order. Flat tiles (sky, paper,
    black space) are dropped: an object cut from them would be a plain rectangle.
    """
    out = []
    for name in _OBJECT_PHOTOS:
        im = _load_photo(name)
        grey = im.ndim == 2
        h, w = im.shape[:2]
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                t = im[y : y + tile, x : x + tile]
                lum = t if grey else t.mean(axis=2)
                edges = np.abs(np.diff(lum, axis=0)).mean() + np.abs(np.diff(lum, axis=1)).mean()
                if lum.std() > 0.08 and edges > 0.008:
                    out.append((t, grey))
    return tuple(out)


@lru_cache(maxsize=1)
def _texture_photos() -> tuple[np.ndarray, ...]:
    return tuple(_load_photo(n) for n in _TEXTURE_PHOTOS)


# --------------------------------------------------------------------------------------------
# Colours and procedural patterns. Patterns are float32 (h, w, 3) in [0, 1].


def _colour(rng: np.random.Generator, sat=(0.3, 1.0), val=(0.25, 1.0)) -> np.ndarray:
    h = rng.random()
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)), np.float32)


def _colour_pair(rng: np.random.Generator, sat=(0.3, 1.0), val=(0.15, 1.0)) -> tuple:
    c1 = _colour(rng, sat, val)
    # Contrast makes a pattern readable after blur and downscaling.
    for _ in range(20):
        c2 = _colour(rng, sat, val)
        if np.abs(c1 - c2).sum() > 0.6:
            break
    return c1, c2


def _to_u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    s = float(max(h, w))
    yy = (np.arange(h, dtype=np.float32) / s)[:, None]
    xx = (np.arange(w, dtype=np.float32) / s)[None, :]
    return yy, xx


def _blend2(t: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    return c1 + (c2 - c1) * t[..., None].astype(np.float32)


def _pat_grating(rng, h, w):
    yy, xx = _coords(h, w)
    th, f, ph = rng.uniform(0, np.pi), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
    v = np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + ph)
    if rng.random() < 0.5:  # plaid
        th2, f2 = rng.uniform(0, np.pi), rng.uniform(2, 9)
        v = 0.5 * (v + np.sin(2 * np.pi * f2 * (xx * np.cos(th2) + yy * np.sin(th2))))
    if rng.random() < 0.5:  # square wave
        v = np.sign(v)
    return _blend2((v + 1) / 2, *_colour_pair(rng))


def _pat_checker(rng, h, w):
    yy, xx = _coords(h, w)
    th, n = rng.uniform(0, np.pi / 2), rng.integers(3, 10)
    u = xx * np.cos(th) + yy * np.sin(th)
    v = -xx * np.sin(th) + yy * np.cos(th)
    t = (np.floor(u * n) + np.floor(v * n * rng.uniform(0.6, 1.6))) % 2
    return _blend2(t, *_colour_pair(rng))


def _pat_blobs(rng, h, w):
    g = rng.random((rng.integers(3, 8), rng.integers(3, 8))).astype(np.float32)
    f = np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC))
    q = np.quantile(f, [0.33, 0.66])
    idx = (f > q[0]).astype(np.int64) + (f > q[1])
    palette = np.stack([_colour(rng), _colour(rng), _colour(rng)])
    return palette[idx]


def _pat_glyphs(rng, h, w):
    bg, fg = _colour_pair(rng)
    im = Image.new("RGB", (w, h), tuple(int(c * 255) for c in bg))
    d = ImageDraw.Draw(im)
    s = min(h, w)
    for _ in range(rng.integers(3, 10)):
        col = tuple(int(c * 255) for c in (fg if rng.random() < 0.7 else _colour(rng)))
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
    yy, xx = _coords(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h / max(h, w), rng.uniform(0.2, 0.8) * w / max(h, w)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    v = np.sin(2 * np.pi * rng.uniform(3, 10) * r)
    if rng.random() < 0.5:  # dartboard sectors
        v = v * np.sign(np.sin(rng.integers(3, 9) * np.arctan2(yy - cy, xx - cx)))
    return _blend2(v > 0, *_colour_pair(rng))


def _pat_facade(rng, h, w):
    wall, win = _colour_pair(rng, sat=(0.1, 0.7))
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
    palette = [_colour(rng) for _ in range(4)] + [np.array([0.95, 0.95, 0.92], np.float32)]
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


def _pattern(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return _PATTERNS[rng.integers(len(_PATTERNS))](rng, max(h, 2), max(w, 2))


# --------------------------------------------------------------------------------------------
# Objects: uint8 RGBA sprites (straight alpha).


def _silhouette(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.choice(4, p=[0.6, 0.15, 0.1, 0.15])
    if kind == 0:
        return np.full((h, w), 255, np.uint8)
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if kind == 1:
        d.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif kind == 2:
        d.rounded_rectangle(
            (0, 0, w - 1, h - 1), radius=min(h, w) * rng.uniform(0.15, 0.4), fill=255
        )
    else:
        n = rng.integers(5, 9)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.75, 1.0, n)
        pts = [
            ((1 + r * np.cos(a)) * (w - 1) / 2, (1 + r * np.sin(a)) * (h - 1) / 2)
            for a, r in zip(ang, rad, strict=True)
        ]
        d.polygon(pts, fill=255)
    return np.asarray(m)


def _make_object(
    rng: np.random.Generator, size: int, tile: tuple[np.ndarray, bool] | None
) -> np.ndarray:
    """One object: photo tile or procedural base, motif overlays, optional frame, silhouette."""
    aspect = math.exp(rng.uniform(-0.45, 0.45))
    w, h = (size, round(size / aspect)) if aspect >= 1 else (round(size * aspect), size)
    if tile is not None:
        t, grey = tile
        base = (
            np.asarray(Image.fromarray(_to_u8(t)).resize((w, h), Image.BILINEAR), np.float32) / 255
        )
        if grey:  # tint grey photos so that they are not all alike
            c1, c2 = _colour_pair(rng, val=(0.1, 1.0))
            base = _blend2(base, c1, c2)
        else:
            base = base * rng.uniform(0.85, 1.15, 3).astype(np.float32)
        n_overlays = rng.integers(0, 2)
    else:
        base = _pattern(rng, h, w)
        n_overlays = rng.integers(1, 4)
    for _ in range(n_overlays):
        oh, ow = max(2, int(h * rng.uniform(0.2, 0.5))), max(2, int(w * rng.uniform(0.2, 0.5)))
        y, x = rng.integers(0, h - oh + 1), rng.integers(0, w - ow + 1)
        a = rng.uniform(0.75, 1.0)
        base[y : y + oh, x : x + ow] = (1 - a) * base[y : y + oh, x : x + ow] + a * _pattern(
            rng, oh, ow
        )
    if rng.random() < 0.4:
        b = max(1, round(min(h, w) * rng.uniform(0.03, 0.07)))
        c = _colour(rng)
        base[:b], base[-b:], base[:, :b], base[:, -b:] = c, c, c, c
    return np.dstack([_to_u8(base), _silhouette(rng, h, w)])


class _Assets:
    """The objects of one (config, seed), built lazily and cached: identical in every process."""

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.textures = _texture_photos()
        tiles = _photo_tiles(cfg.photo_tile)
        counts = _object_counts(cfg)
        want = {r: round(cfg.photo_fraction * n) for r, n in counts.items()}
        # Scale every role's share alike when tiles run out, so that "built on a photo" never
        # tells a landmark from a distractor.
        total = sum(want.values())
        if total > len(tiles):
            want = {r: len(tiles) * k // total for r, k in want.items()}
        order = _rng(seed, "tiles").permutation(len(tiles))
        self.tile_of: dict[tuple[str, int], tuple[np.ndarray, bool]] = {}
        pos = 0
        for role in counts:  # fixed role order: disjoint tiles across roles and objects
            chosen = _rng(seed, "photo-choice", _CODE[role]).permutation(counts[role])[: want[role]]
            for i in sorted(chosen.tolist()):
                self.tile_of[(role, i)] = tiles[order[pos]]
                pos += 1
        self.n_photo_objects = pos
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def obj(self, role: str, idx: int) -> np.ndarray:
        key = (role, idx)
        if key not in self._cache:
            rng = _rng(self.seed, role, idx)
            self._cache[key] = _make_object(rng, self.cfg.object_size, self.tile_of.get(key))
        return self._cache[key]


def _object_counts(cfg: SyntheticConfig) -> dict[str, int]:
    return {
        "landmark": cfg.n_landmarks,
        "whiten-landmark": cfg.n_whiten_landmarks,
        "cls": cfg.n_cls_classes,
        "clutter-retrieval": cfg.n_clutter_objects,
        "clutter-whiten": cfg.n_clutter_objects,
        "clutter-cls": cfg.n_clutter_objects,
    }


# --------------------------------------------------------------------------------------------
# Geometry and compositing.


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 matrix mapping the 4 points ``src`` (x, y) onto ``dst`` (direct linear solve)."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def _polygon_area(q: np.ndarray) -> float:
    x, y = q[:, 0], q[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _quad(
    rng,
    hw: tuple[int, int],
    aspect: float,
    scale: float,
    out_of_frame: float = 0.0,
    centre: tuple[float, float] | None = None,
    cut: float = 0.0,
) -> np.ndarray:
    """Corners (4, 2) of a warped rectangle of the given scale, clockwise from top-left.

    Rotation up to 20 degrees, a trapezoid foreshortening (an out-of-plane turn) and corner
    jitter. The centre is drawn so that at most ``out_of_frame`` of the quad's width or height
    falls outside the image, unless ``centre`` fixes it; ``cut`` > 0 instead puts exactly that
    fraction of the width or height past one random image border.
    """
    H, W = hw
    area = scale * scale * H * W
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    q = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    side = rng.integers(4)
    shrink = rng.uniform(0.0, 0.3)
    if side < 2:  # left or right edge farther away: shorter
        q[[0, 3] if side == 0 else [1, 2], 1] *= 1 - shrink
    else:  # top or bottom edge farther away
        q[[0, 1] if side == 2 else [2, 3], 0] *= 1 - shrink
    q += rng.normal(0, 0.03 * math.sqrt(area), q.shape)
    th = math.radians(rng.uniform(-20, 20))
    q = q @ np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    if centre is None:
        ext = q.max(axis=0) - q.min(axis=0)
        lo = (0.5 - out_of_frame) * ext
        hi = np.array([W, H]) - lo
        centre = tuple(
            rng.uniform(lo[k], hi[k]) if hi[k] > lo[k] else (W, H)[k] / 2 for k in range(2)
        )
        if cut > 0:
            k, far = int(rng.integers(2)), rng.random() < 0.5
            c = (0.5 - cut) * ext[k]
            centre = list(centre)
            centre[k] = (W, H)[k] - c if far else c
    return q + np.asarray(centre)


def _paste(
    canvas: np.ndarray,
    sprite: np.ndarray,
    quad: np.ndarray,
    rng: np.random.Generator,
    blur: float = 0.0,
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Warp ``sprite`` onto ``quad`` of ``canvas`` in place, with a random lighting change.

    Returns the warped alpha (before blur) and its box (y0, y1, x0, x1), or None when the quad
    misses the image.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.transform import warp

    H, W = canvas.shape[:2]
    x0, y0 = max(0, math.floor(quad[:, 0].min())), max(0, math.floor(quad[:, 1].min()))
    x1, y1 = min(W, math.ceil(quad[:, 0].max()) + 1), min(H, math.ceil(quad[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    sh, sw = sprite.shape[:2]
    k = max(
        np.linalg.norm(quad[1] - quad[0]),
        np.linalg.norm(quad[2] - quad[1]),
        np.linalg.norm(quad[3] - quad[2]),
        np.linalg.norm(quad[0] - quad[3]),
    ) / max(sh, sw)
    if k < 0.6:  # shrink first with an antialiasing filter: bilinear warping alone would alias
        sw, sh = max(2, round(sw * k * 1.25)), max(2, round(sh * k * 1.25))
        sprite = np.asarray(Image.fromarray(sprite).resize((sw, sh), Image.BILINEAR))
    tex = sprite.astype(np.float32) / 255
    rgb, a = tex[..., :3], tex[..., 3:]
    gain = rng.uniform(0.65, 1.35) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    gamma = math.exp(rng.uniform(-0.35, 0.35))
    rgb = np.clip(gain * rgb**gamma + rng.uniform(-0.06, 0.06), 0, 1)
    # Premultiplied, so that the zero fill outside the sprite blends correctly at the edges.
    tex = np.dstack([rgb * a, a]).astype(np.float32)
    src = np.array([[0, 0], [sw - 1, 0], [sw - 1, sh - 1], [0, sh - 1]], float)
    hom = _homography(src, quad - [x0, y0])
    patch = warp(
        tex,
        np.linalg.inv(hom),
        output_shape=(y1 - y0, x1 - x0),
        order=1,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    ).astype(np.float32)
    alpha = patch[..., 3].copy()
    if blur > 0:
        patch = gaussian_filter(patch, sigma=(blur, blur, 0))
    region = canvas[y0:y1, x0:x1]
    region *= 1 - patch[..., 3:]
    region += patch[..., :3]
    return alpha, (y0, y1, x0, x1)


def _log_uniform(rng, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _aspect(sprite: np.ndarray) -> float:
    return sprite.shape[1] / sprite.shape[0]


def _image_shape(rng, cfg: SyntheticConfig) -> tuple[int, int]:
    a, b = cfg.aspect_ratios[rng.integers(len(cfg.aspect_ratios))]
    if a >= b:
        return round(cfg.image_size * b / a), cfg.image_size
    return cfg.image_size, round(cfg.image_size * a / b)


# --------------------------------------------------------------------------------------------
# Scenes.


def _background(rng, hw: tuple[int, int], textures: Sequence[np.ndarray]) -> np.ndarray:
    """Clutter: gradient, low-frequency colour noise, tinted texture layers, faded patterns
    and random shapes."""
    H, W = hw
    yy, xx = _coords(H, W)
    th = rng.uniform(0, 2 * np.pi)
    t = xx * math.cos(th) + yy * math.sin(th)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = _blend2(t, *_colour_pair(rng, sat=(0.0, 0.6), val=(0.2, 0.95)))
    noise = Image.fromarray(_to_u8(rng.random((rng.integers(3, 7), rng.integers(3, 7), 3))))
    img += (np.asarray(noise.resize((W, H), Image.BICUBIC), np.float32) / 255 - 0.5) * 0.25
    for _ in range(rng.integers(1, 4)):
        tex = textures[rng.integers(len(textures))]
        kind = rng.integers(3)
        if kind == 0:  # faint full-image layer
            y0, y1, x0, x1, a = 0, H, 0, W, rng.uniform(0.25, 0.5)
        elif kind == 1:  # ground band
            y0, y1, x0, x1, a = int(H * rng.uniform(0.4, 0.8)), H, 0, W, rng.uniform(0.7, 1.0)
        else:  # a wall or a patch
            hh, ww = int(H * rng.uniform(0.2, 0.7)), int(W * rng.uniform(0.2, 0.7))
            y0, x0 = rng.integers(0, H - hh + 1), rng.integers(0, W - ww + 1)
            y1, x1, a = y0 + hh, x0 + ww, rng.uniform(0.6, 1.0)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        ch, cw = (
            int(tex.shape[0] * rng.uniform(0.2, 1.0)),
            int(tex.shape[1] * rng.uniform(0.2, 1.0)),
        )
        cy, cx = rng.integers(0, tex.shape[0] - ch + 1), rng.integers(0, tex.shape[1] - cw + 1)
        crop = Image.fromarray(_to_u8(tex[cy : cy + ch, cx : cx + cw])).resize(
            (x1 - x0, y1 - y0), Image.BILINEAR
        )
        layer = _blend2(np.asarray(crop, np.float32) / 255, *_colour_pair(rng, sat=(0.0, 0.6)))
        img[y0:y1, x0:x1] = (1 - a) * img[y0:y1, x0:x1] + a * layer
    for _ in range(rng.integers(0, 3)):  # faded murals / signs: clutter, not objects
        hh, ww = max(4, int(H * rng.uniform(0.1, 0.4))), max(4, int(W * rng.uniform(0.1, 0.4)))
        y0, x0 = rng.integers(0, H - hh + 1), rng.integers(0, W - ww + 1)
        a = rng.uniform(0.2, 0.5)
        img[y0 : y0 + hh, x0 : x0 + ww] = (1 - a) * img[y0 : y0 + hh, x0 : x0 + ww] + a * _pattern(
            rng, hh, ww
        )
    pil = Image.fromarray(_to_u8(img))
    d = ImageDraw.Draw(pil)
    s = min(H, W)
    for _ in range(rng.integers(5, 15)):
        col = tuple(int(c * 255) for c in _colour(rng, sat=(0.0, 0.8), val=(0.1, 0.95)))
        x0, y0 = rng.uniform(-0.1, 1.0) * W, rng.uniform(-0.1, 1.0) * H
        x1, y1 = x0 + rng.uniform(0.03, 0.3) * W, y0 + rng.uniform(0.03, 0.3) * H
        kind = rng.integers(5)
        if kind == 0:
            d.rectangle((x0, y0, x1, y1), fill=col)
        elif kind == 1:
            d.ellipse((x0, y0, x1, y1), fill=col)
        elif kind == 2:
            pts = [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(rng.integers(3, 6))]
            d.polygon(pts, fill=col)
        elif kind == 3:
            d.line((x0, y0, x1, y1), fill=col, width=max(1, int(s * rng.uniform(0.005, 0.03))))
        else:
            d.arc(
                (x0, y0, x1, y1),
                rng.uniform(0, 360),
                rng.uniform(0, 360),
                fill=col,
                width=max(1, int(s * rng.uniform(0.005, 0.02))),
            )
    return np.asarray(pil, np.float32) / 255


def _finish(img: np.ndarray, rng, cfg: SyntheticConfig) -> np.ndarray:
    """Camera effects on the whole image: blur, global lighting, sensor noise; uint8 out."""
    pil = Image.fromarray(_to_u8(img))
    if rng.random() < 0.35:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * cfg.image_size / 512))
    out = np.asarray(pil, np.float32) / 255
    out = rng.uniform(0.75, 1.25) * out ** math.exp(rng.uniform(-0.25, 0.25)) + rng.uniform(
        -0.05, 0.05
    )
    out += rng.normal(0, rng.uniform(0.005, 0.025), out.shape).astype(np.float32)
    return _to_u8(out)


def _place_clutter(
    canvas,
    rng,
    assets: _Assets,
    role: str,
    n: int,
    cfg: SyntheticConfig,
    vis: np.ndarray | None = None,
) -> None:
    """Paste ``n`` distractor objects of the ``role`` pool anywhere; they hide ``vis``."""
    for _ in range(n):
        sprite = assets.obj(role, int(rng.integers(cfg.n_clutter_objects)))
        quad = _quad(rng, canvas.shape[:2], _aspect(sprite), rng.uniform(*cfg.clutter_scale), 0.3)
        res = _paste(
            canvas, sprite, quad, rng, blur=rng.uniform(0, 1.0) if rng.random() < 0.3 else 0.0
        )
        if res is not None and vis is not None:
            a, (y0, y1, x0, x1) = res
            vis[y0:y1, x0:x1] *= 1 - a


def _occlude(canvas, rng, vis: np.ndarray, quad: np.ndarray, fraction: float) -> None:
    """Cover about ``fraction`` of the landmark's box from one side with a fresh slab (a pillar,
    a tree, a wall), drawn from no pool so that it never recurs."""
    H, W = canvas.shape[:2]
    x0, y0 = quad.min(axis=0)
    x1, y1 = quad.max(axis=0)
    side = rng.integers(4)
    m = 0.1 * max(x1 - x0, y1 - y0)
    if side == 0:
        box = (x0 - m, y0 - m, x0 + fraction * (x1 - x0), y1 + m)
    elif side == 1:
        box = (x1 - fraction * (x1 - x0), y0 - m, x1 + m, y1 + m)
    elif side == 2:
        box = (x0 - m, y0 - m, x1 + m, y0 + fraction * (y1 - y0))
    else:
        box = (x0 - m, y1 - fraction * (y1 - y0), x1 + m, y1 + m)
    bw, bh = max(4, int(box[2] - box[0])), max(4, int(box[3] - box[1]))
    sprite = np.dstack(
        [
            _to_u8(_pattern(rng, min(bh, 256), min(bw, 256))),
            np.full((min(bh, 256), min(bw, 256)), 255, np.uint8),
        ]
    )
    q = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    res = _paste(canvas, sprite, q, rng)
    if res is not None:
        a, (ya, yb, xa, xb) = res
        vis[ya:yb, xa:xb] *= 1 - a


def _render_scene(
    rng,
    cfg: SyntheticConfig,
    assets: _Assets,
    clutter_role: str,
    main: np.ndarray | None,
    target: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One image: background, clutter behind, the main object, occluders, clutter in front.

    ``target`` picks how the main object is shown: ``'easy'``, ``'hard'``, ``'junk'``
    (database views), ``'query'`` (large, unoccluded, no clutter in front), ``'cls'`` or
    ``'clutter'`` (a distractor at landmark size).
    """
    hw = _image_shape(rng, cfg)
    H, W = hw
    canvas = _background(rng, hw, assets.textures)
    lo, hi = cfg.clutter_per_scene
    n = int(rng.integers(lo, hi + 1))
    n_front = 0 if target == "query" else int(rng.integers(0, n + 1)) // 2
    _place_clutter(canvas, rng, assets, clutter_role, n - n_front, cfg)
    info: dict[str, Any] = {"height": H, "width": W}
    if main is None:
        _place_clutter(canvas, rng, assets, clutter_role, n_front, cfg)
        return _finish(canvas, rng, cfg), info

    out, cut, slab, small_occluders = 0.0, 0.0, 0.0, 0
    if target == "easy":
        scale = _log_uniform(rng, 0.36, 0.75)
        small_occluders = int(rng.random() < 0.4)
    elif target == "hard":
        mode = rng.integers(3)
        if mode == 0:  # small
            scale = _log_uniform(rng, 0.13, 0.26)
            small_occluders = int(rng.random() < 0.3)
        elif mode == 1:  # half hidden
            scale, slab = _log_uniform(rng, 0.3, 0.65), rng.uniform(0.4, 0.65)
        else:  # half out of frame
            scale, cut = _log_uniform(rng, 0.35, 0.7), rng.uniform(0.35, 0.6)
    elif target == "junk":
        if rng.random() < 0.6:  # tiny
            scale = _log_uniform(rng, 0.05, 0.095)
        else:  # almost fully hidden
            scale, slab = _log_uniform(rng, 0.3, 0.6), rng.uniform(0.82, 0.95)
    elif target == "query":
        scale = rng.uniform(*cfg.query_scale)
    elif target == "cls":
        scale, out = rng.uniform(*cfg.cls_scale), rng.uniform(0.0, 0.15)
        small_occluders = int(rng.random() < 0.3)
    elif target == "clutter":
        scale = _log_uniform(rng, 0.3, 0.7)
    else:
        raise ValueError(f"unknown target {target!r}")

    quad = _quad(rng, hw, _aspect(main), scale, out, cut=cut)
    full_area = _polygon_area(quad) * float(main[..., 3].mean()) / 255
    blur = rng.uniform(0.3, 1.5) * cfg.image_size / 512 if rng.random() < 0.3 else 0.0
    res = _paste(canvas, main, quad, rng, blur=blur)
    vis = np.zeros(hw, np.float32)
    if res is not None:
        a, (y0, y1, x0, x1) = res
        vis[y0:y1, x0:x1] = a
    main_mask = vis > 0.5
    if slab > 0:
        _occlude(canvas, rng, vis, quad, slab)
    for _ in range(small_occluders):
        sprite = assets.obj(clutter_role, int(rng.integers(cfg.n_clutter_objects)))
        centre = quad[rng.integers(4)] * 0.5 + quad.mean(axis=0) * 0.5
        lin = math.sqrt(full_area / (H * W)) * rng.uniform(0.15, 0.3)
        res = _paste(
            canvas, sprite, _quad(rng, hw, _aspect(sprite), lin, centre=tuple(centre)), rng
        )
        if res is not None:
            a, (y0, y1, x0, x1) = res
            vis[y0:y1, x0:x1] *= 1 - a
    _place_clutter(canvas, rng, assets, clutter_role, n_front, cfg, vis)

    visible_px = float(vis.sum())
    mask = main_mask if target == "query" else vis > 0.5
    info.update(
        visible_fraction=min(1.0, visible_px / max(full_area, 1e-6)),
        area_fraction=visible_px / (H * W),
        bbx=_mask_box(mask),
        quad=[[round(float(x), 2), round(float(y), 2)] for x, y in quad],
    )
    return _finish(canvas, rng, cfg), info


def _mask_box(mask: np.ndarray) -> list[float] | None:
    """[x1, y1, x2, y2] (pixel edges, floats) around the True pixels, None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# --------------------------------------------------------------------------------------------
# Jobs: one per image, run in this process or in a pool. A job is
# (kind, stream, index tuple, output path, extra) and returns (path, info).

_STATE: dict[str, Any] = {}


def _set_assets(cfg: SyntheticConfig, seed: int) -> None:
    if _STATE.get("key") != (cfg, seed):
        _STATE["key"], _STATE["assets"] = (cfg, seed), _Assets(cfg, seed)


def _render(job: tuple) -> tuple[str, dict[str, Any]]:
    kind, stream, index, path, extra = job
    cfg, seed = _STATE["key"]
    assets: _Assets = _STATE["assets"]
    rng = _rng(seed, stream, *index)
    if kind == "clutter-image":
        main = assets.obj(extra["clutter_role"], int(rng.integers(cfg.n_clutter_objects)))
        if rng.random() >= cfg.main_clutter_prob:
            main = None
        img, info = _render_scene(rng, cfg, assets, extra["clutter_role"], main, "clutter")
        info = {"height": info["height"], "width": info["width"]}  # no landmark to annotate
    else:
        main = assets.obj(extra["role"], extra["object"])
        img, info = _render_scene(rng, cfg, assets, extra["clutter_role"], main, extra["target"])
        if kind in ("view", "whiten"):
            info["label"] = view_label(info["visible_fraction"], info["area_fraction"], cfg)
    Image.fromarray(img).save(path, "JPEG", quality=cfg.jpeg_quality)
    return path, info


def _run_one(job: tuple) -> tuple[str, dict[str, Any]]:
    # A module-level indirection, so that tests can patch ``_render`` in-process.
    return _render(job)


class _Runner:
    """Runs jobs in order, in this process (workers <= 1) or in a process pool."""

    def __init__(self, cfg: SyntheticConfig, seed: int, workers: int):
        self.cfg, self.seed, self.workers = cfg, seed, workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Runner:
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context(),
                initializer=_set_assets,
                initargs=(self.cfg, self.seed),
            )
        else:
            _set_assets(self.cfg, self.seed)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        _STATE.clear()  # the sprite cache of a demo run holds ~100 MB

    def map(self, jobs: list[tuple]) -> Iterator[tuple[str, dict[str, Any]]]:
        if self.pool is None:
            return map(_run_one, jobs)
        return self.pool.map(
            _run_one, jobs, chunksize=max(1, min(16, len(jobs) // (8 * self.workers)))
        )


def _collect(runner: _Runner, jobs: list[tuple], desc: str, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(jobs), desc=desc, disable=not progress, unit="img") as bar:
        for _, info in runner.map(jobs):
            out.append(info)
            bar.update(1)
    return out


def _view_targets(n: int, mix: Sequence[float]) -> list[str]:
    n_easy = round(mix[0] * n)
    n_hard = min(n - n_easy, round(mix[1] * n))
    return ["easy"] * n_easy + ["hard"] * n_hard + ["junk"] * (n - n_easy - n_hard)


# --------------------------------------------------------------------------------------------
# The three parts. Each writes into ``tmp`` and returns the counts for meta.json.


def _build_retrieval(
    tmp: Path, cfg: SyntheticConfig, seed: int, runner: _Runner, progress: bool
) -> dict:
    jpg = tmp / "jpg"
    jpg.mkdir()
    targets = _view_targets(cfg.views_per_landmark, cfg.view_mix)
    items = [
        ("view", (lm, k), targets[k])
        for lm in range(cfg.n_landmarks)
        for k in range(cfg.views_per_landmark)
    ]
    items += [("clutter-image", (j,), None) for j in range(cfg.n_distractor_images)]
    # Shuffled, so that neither names nor indices give away which images show a landmark.
    order = _rng(seed, "order").permutation(len(items))
    imlist = [f"db_{i:05d}" for i in range(len(items))]
    qimlist = [f"q_{lm:03d}" for lm in range(cfg.n_landmarks)]
    base = {"clutter_role": "clutter-retrieval", "role": "landmark"}
    jobs = []
    for name, k in zip(imlist, order.tolist(), strict=True):
        kind, index, target = items[k]
        extra = dict(base, object=index[0], target=target)
        jobs.append((kind, kind, index, str(jpg / f"{name}.jpg"), extra))
    for lm, name in enumerate(qimlist):
        jobs.append(
            (
                "query",
                "query",
                (lm,),
                str(jpg / f"{name}.jpg"),
                dict(base, object=lm, target="query"),
            )
        )
    infos = _collect(runner, jobs, f"{cfg.name} retrieval", progress)
    db_info, q_info = infos[: len(imlist)], infos[len(imlist) :]
    for info, k in zip(db_info, order.tolist(), strict=True):
        kind, index, _ = items[k]
        info["landmark"] = index[0] if kind == "view" else None
    gnd = []
    for lm, qi in enumerate(q_info):
        lists: dict[str, list[int]] = {"easy": [], "hard": [], "junk": []}
        for i, info in enumerate(db_info):
            if info["landmark"] == lm:
                lists[info["label"]].append(i)
        if qi["bbx"] is None:  # cannot happen with query scales >= 0.05; guard the contract
            raise RuntimeError(f"query {lm} has no visible landmark")
        gnd.append({"bbx": qi["bbx"], **lists, "ok": sorted(lists["easy"] + lists["hard"])})
    with open(tmp / f"gnd_{cfg.name}.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f, protocol=4)
    for lm, qi in enumerate(q_info):
        qi["landmark"] = lm
    _write_json(
        tmp / "annotations.json",
        {
            "images": dict(zip(imlist, (_rounded(i) for i in db_info), strict=True)),
            "queries": dict(zip(qimlist, (_rounded(i) for i in q_info), strict=True)),
        },
    )
    labels = [i.get("label") for i in db_info]
    return {
        "database": len(imlist),
        "queries": len(qimlist),
        "easy": labels.count("easy"),
        "hard": labels.count("hard"),
        "junk": labels.count("junk"),
        "distractor_images": cfg.n_distractor_images,
        "photo_objects_all_splits": _Assets(cfg, seed).n_photo_objects,
    }


def _build_whiten(
    tmp: Path, cfg: SyntheticConfig, seed: int, runner: _Runner, progress: bool
) -> dict:
    jpg = tmp / "jpg"
    jpg.mkdir()
    names = [f"w_{i:05d}" for i in range(cfg.n_whiten_images)]
    jobs = []
    for i, name in enumerate(names):
        # Targets cycle through the view mix, so every whitening landmark gets varied views.
        target = _view_targets(20, cfg.view_mix)[(i // cfg.n_whiten_landmarks) % 20]
        extra = {
            "clutter_role": "clutter-whiten",
            "role": "whiten-landmark",
            "object": i % cfg.n_whiten_landmarks,
            "target": target,
        }
        jobs.append(("whiten", "whiten", (i,), str(jpg / f"{name}.jpg"), extra))
    infos = _collect(runner, jobs, f"{cfg.name} whiten", progress)
    _write_json(
        tmp / "annotations.json",
        {
            "images": {
                n: {"landmark": i % cfg.n_whiten_landmarks, **_rounded(info)}
                for i, (n, info) in enumerate(zip(names, infos, strict=True))
            },
        },
    )
    return {"images": len(names), "landmarks": cfg.n_whiten_landmarks}


def _build_cls(tmp: Path, cfg: SyntheticConfig, seed: int, runner: _Runner, progress: bool) -> dict:
    classes = [f"class_{c:02d}" for c in range(cfg.n_cls_classes)]
    jobs = []
    for split, n, stream in (
        ("train", cfg.n_cls_train, "cls-train"),
        ("val", cfg.n_cls_val, "cls-val"),
    ):
        for c, cname in enumerate(classes):
            d = tmp / split / cname
            d.mkdir(parents=True)
            extra = {"clutter_role": "clutter-cls", "role": "cls", "object": c, "target": "cls"}
            jobs += [
                ("cls", stream, (c, i), str(d / f"{cname}_{i:04d}.jpg"), extra) for i in range(n)
            ]
    _collect(runner, jobs, f"{cfg.name} cls", progress)
    return {"classes": classes, "train_per_class": cfg.n_cls_train, "val_per_class": cfg.n_cls_val}


def _rounded(info: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in info.items()}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Folders: skip, build in a temporary sibling, install.

_PARTS: dict[str, Callable[..., dict]] = {
    "retrieval": _build_retrieval,
    "whiten": _build_whiten,
    "cls": _build_cls,
}


def _identity(cfg: SyntheticConfig, seed: int, part: str) -> dict[str, Any]:
    # Through JSON so that tuples compare equal to the lists read back from meta.json.
    return json.loads(
        json.dumps(
            {
                "generator": GENERATOR,
                "version": GENERATOR_VERSION,
                "part": part,
                "seed": seed,
                "config": asdict(cfg),
            }
        )
    )


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(folder: Path, ident: dict[str, Any]) -> bool:
    meta = _read_meta(folder)
    return meta is not None and all(meta.get(k) == v for k, v in ident.items())


def _check_replaceable(folder: Path) -> None:
    if folder.exists():
        meta = _read_meta(folder)
        if meta is None or meta.get("generator") != GENERATOR:
            raise FileExistsError(
                f"{folder} exists and was not made by {GENERATOR} (no matching meta.json); "
                "move it away or pick another dataset name"
            )


def _build_part(
    part: str, final: Path, cfg: SyntheticConfig, seed: int, runner: _Runner, progress: bool
) -> None:
    ident = _identity(cfg, seed, part)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        counts = _PARTS[part](tmp, cfg, seed, runner, progress)
        _write_json(tmp / "meta.json", {**ident, "counts": counts})  # last: marks it complete
        if final.exists():
            if _is_current(final, ident):  # another process finished it meanwhile
                return
            warnings.warn(
                f"regenerating {final}: it was made with another config, seed or version",
                stacklevel=3,
            )
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "data")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _resolve(profile_or_config: str | SyntheticConfig) -> SyntheticConfig:
    if isinstance(profile_or_config, SyntheticConfig):
        return profile_or_config
    try:
        return SYNTHETIC_PRESETS[profile_or_config]
    except KeyError:
        raise ValueError(
            f"unknown synthetic profile {profile_or_config!r}; choose one of {sorted(SYNTHETIC_PRESETS)} "
            "or pass a SyntheticConfig"
        ) from None


def generate_synthetic(
    profile_or_config: str | SyntheticConfig = "smoke",
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> SyntheticPaths:
    """Generate (or find already generated) a synthetic benchmark; return its folders.

    Parameters:
        profile_or_config: a key of ``SYNTHETIC_PRESETS`` (``"smoke"``, ``"demo"``) or a
            ``SyntheticConfig`` (default ``"smoke"``).
        data_root: the data root; None uses ``paths.data_root()`` (``$REGATTN_DATA`` or the
            repository's ``data/``).
        seed: base seed of every random stream (0). Same config and seed give byte-identical
            files.
        progress: show tqdm progress bars (True).
        workers: processes to render with; None uses ``min(2, cpu count)``, 1 renders in this
            process. The output does not depend on it. With more than one, a script calling
            this must guard its entry point (``if __name__ == "__main__":``) on platforms
            whose start method is not fork.

    Parts (retrieval, whitening, classification) already generated with the same config, seed
    and generator version are skipped; stale ones made by this generator are replaced with a
    warning; folders not made by it raise ``FileExistsError`` before any work.
    """
    cfg = _resolve(profile_or_config)
    sp = synthetic_paths(cfg.name, data_root)
    folders = {"retrieval": sp.retrieval_dir, "whiten": sp.whiten_dir, "cls": sp.cls_dir}
    todo = [p for p, d in folders.items() if not _is_current(d, _identity(cfg, seed, p))]
    if not todo:
        return sp
    for p in todo:
        _check_replaceable(folders[p])
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    with _Runner(cfg, seed, workers) as runner:
        for p in todo:
            _build_part(p, folders[p], cfg, seed, runner, progress)
    return sp


def tiny_config(name: str = "synthetic-tiny") -> SyntheticConfig:
    """A config far smaller than ``smoke`` (about 40 images of 128 px), for unit tests.

    Parameters:
        name: dataset name (``"synthetic-tiny"``).
    """
    return replace(
        SYNTHETIC_PRESETS["smoke"],
        name=name,
        image_size=128,
        object_size=48,
        n_landmarks=3,
        views_per_landmark=5,
        n_distractor_images=4,
        n_clutter_objects=6,
        n_whiten_landmarks=2,
        n_whiten_images=4,
        n_cls_classes=2,
        n_cls_train=3,
        n_cls_val=2,
    )
