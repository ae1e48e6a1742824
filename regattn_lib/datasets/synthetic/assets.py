"""The objects a scene is made of, and the photos they and the backgrounds draw from.

Photos come from scikit-image's bundled data (``skimage.data``), so nothing is downloaded.
Objects are uint8 RGBA sprites (straight alpha), built lazily per (config, seed) by ``Assets``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from regattn_lib.datasets.synthetic.config import STREAM_CODES, SyntheticConfig, stream_rng
from regattn_lib.datasets.synthetic.patterns import blend2, colour, colour_pair, pattern, to_u8

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
def photo_tiles(tile: int) -> tuple[tuple[np.ndarray, bool], ...]:
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
def texture_photos() -> tuple[np.ndarray, ...]:
    """The grey background textures (brick, grass, gravel), float32 in [0, 1]."""
    return tuple(_load_photo(n) for n in _TEXTURE_PHOTOS)


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
            np.asarray(Image.fromarray(to_u8(t)).resize((w, h), Image.BILINEAR), np.float32) / 255
        )
        if grey:  # tint grey photos so that they are not all alike
            c1, c2 = colour_pair(rng, val=(0.1, 1.0))
            base = blend2(base, c1, c2)
        else:
            base = base * rng.uniform(0.85, 1.15, 3).astype(np.float32)
        n_overlays = rng.integers(0, 2)
    else:
        base = pattern(rng, h, w)
        n_overlays = rng.integers(1, 4)
    for _ in range(n_overlays):
        oh, ow = max(2, int(h * rng.uniform(0.2, 0.5))), max(2, int(w * rng.uniform(0.2, 0.5)))
        y, x = rng.integers(0, h - oh + 1), rng.integers(0, w - ow + 1)
        a = rng.uniform(0.75, 1.0)
        base[y : y + oh, x : x + ow] = (1 - a) * base[y : y + oh, x : x + ow] + a * pattern(
            rng, oh, ow
        )
    if rng.random() < 0.4:
        b = max(1, round(min(h, w) * rng.uniform(0.03, 0.07)))
        c = colour(rng)
        base[:b], base[-b:], base[:, :b], base[:, -b:] = c, c, c, c
    return np.dstack([to_u8(base), _silhouette(rng, h, w)])


class Assets:
    """The objects of one (config, seed), built lazily and cached: identical in every process.

    Parameters:
        cfg: the config (object counts, ``object_size``, ``photo_tile``, ``photo_fraction``).
        seed: the base seed.
    """

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.textures = texture_photos()
        tiles = photo_tiles(cfg.photo_tile)
        counts = _object_counts(cfg)
        want = {r: round(cfg.photo_fraction * n) for r, n in counts.items()}
        # Scale every role's share alike when tiles run out, so that "built on a photo" never
        # tells a landmark from a distractor.
        total = sum(want.values())
        if total > len(tiles):
            want = {r: len(tiles) * k // total for r, k in want.items()}
        order = stream_rng(seed, "tiles").permutation(len(tiles))
        self.tile_of: dict[tuple[str, int], tuple[np.ndarray, bool]] = {}
        pos = 0
        for role in counts:  # fixed role order: disjoint tiles across roles and objects
            rng = stream_rng(seed, "photo-choice", STREAM_CODES[role])
            chosen = rng.permutation(counts[role])[: want[role]]
            for i in sorted(chosen.tolist()):
                self.tile_of[(role, i)] = tiles[order[pos]]
                pos += 1
        self.n_photo_objects = pos
        # The metric-learning split takes only the tiles the other splits left (none when they
        # used all), so no texture of a test landmark can appear in it, and adding it moved no
        # other object's tile.
        metric = _metric_counts(cfg)
        want = {r: round(cfg.photo_fraction * n) for r, n in metric.items()}
        left = len(tiles) - pos
        if sum(want.values()) > left:
            want = {r: left * k // max(sum(want.values()), 1) for r, k in want.items()}
        for role in metric:
            rng = stream_rng(seed, "photo-choice", STREAM_CODES[role])
            for i in sorted(rng.permutation(metric[role])[: want[role]].tolist()):
                self.tile_of[(role, i)] = tiles[order[pos]]
                pos += 1
        self.n_metric_photo_objects = pos - self.n_photo_objects
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def obj(self, role: str, idx: int) -> np.ndarray:
        """Object ``idx`` of ``role`` (a ``STREAM_CODES`` object role): uint8 RGBA sprite."""
        key = (role, idx)
        if key not in self._cache:
            rng = stream_rng(self.seed, role, idx)
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


def _metric_counts(cfg: SyntheticConfig) -> dict[str, int]:
    return {
        "metric-landmark": cfg.n_metric_landmarks + cfg.n_metric_val_landmarks,
        "clutter-metric": cfg.n_clutter_objects,
    }
