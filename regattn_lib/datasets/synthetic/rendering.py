"""Drawing one image: a cluttered background, distractor objects, the main object under a
perspective warp, occluders and camera effects; the main object's visibility is tracked per
pixel for the labels, boxes and masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from regattn_lib.datasets.synthetic.assets import Assets
from regattn_lib.datasets.synthetic.config import SyntheticConfig
from regattn_lib.datasets.synthetic.patterns import (
    blend2,
    colour,
    colour_pair,
    coords,
    pattern,
    to_u8,
)

if TYPE_CHECKING:
    from skimage.transform import ProjectiveTransform

#: The 256 uint8 levels as float32 in [0, 1]; lighting curves are evaluated on them.
_LEVELS = np.arange(256, dtype=np.float32) / 255

# --------------------------------------------------------------------------------------------
# Geometry and compositing.


def projective_transform(src: np.ndarray, dst: np.ndarray) -> ProjectiveTransform:
    """The ``skimage.transform.ProjectiveTransform`` taking the 4 points ``src`` (x, y) onto
    ``dst``; ``ValueError`` when they are degenerate (3 of them on a line)."""
    from skimage.transform import ProjectiveTransform

    if hasattr(ProjectiveTransform, "from_estimate"):  # scikit-image >= 0.26
        tf = ProjectiveTransform.from_estimate(src, dst)
        ok = bool(tf)
    else:
        tf = ProjectiveTransform()
        ok = tf.estimate(src, dst)
    if not ok:
        raise ValueError(f"no projective transform maps {src.tolist()} onto {dst.tolist()}")
    return tf


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
    a = sprite[..., 3].astype(np.float32) / 255
    gain = rng.uniform(0.65, 1.35) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    gamma = math.exp(rng.uniform(-0.35, 0.35))
    # Lighting as a per-channel lookup table over the 256 levels of the uint8 sprite.
    curves = np.clip(gain * _LEVELS[:, None] ** gamma + rng.uniform(-0.06, 0.06), 0, 1)
    # Premultiplied, so that the zero fill outside the sprite blends correctly at the edges.
    tex = np.empty(sprite.shape, np.float32)
    for ch in range(3):
        np.multiply(np.take(curves[:, ch], sprite[..., ch]), a, out=tex[..., ch])
    tex[..., 3] = a
    src = np.array([[0, 0], [sw - 1, 0], [sw - 1, sh - 1], [0, sh - 1]], float)
    patch = warp(
        tex,
        projective_transform(quad - [x0, y0], src),  # output pixel -> sprite pixel
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
    keep = 1 - patch[..., 3]
    for ch in range(3):
        region[..., ch] *= keep
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
    yy, xx = coords(H, W)
    th = rng.uniform(0, 2 * np.pi)
    t = xx * math.cos(th) + yy * math.sin(th)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = blend2(t, *colour_pair(rng, sat=(0.0, 0.6), val=(0.2, 0.95)))
    noise = Image.fromarray(to_u8(rng.random((rng.integers(3, 7), rng.integers(3, 7), 3))))
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
        crop = Image.fromarray(to_u8(tex[cy : cy + ch, cx : cx + cw])).resize(
            (x1 - x0, y1 - y0), Image.BILINEAR
        )
        layer = blend2(np.asarray(crop, np.float32) / 255, *colour_pair(rng, sat=(0.0, 0.6)))
        img[y0:y1, x0:x1] = (1 - a) * img[y0:y1, x0:x1] + a * layer
    for _ in range(rng.integers(0, 3)):  # faded murals / signs: clutter, not objects
        hh, ww = max(4, int(H * rng.uniform(0.1, 0.4))), max(4, int(W * rng.uniform(0.1, 0.4)))
        y0, x0 = rng.integers(0, H - hh + 1), rng.integers(0, W - ww + 1)
        a = rng.uniform(0.2, 0.5)
        img[y0 : y0 + hh, x0 : x0 + ww] = (1 - a) * img[y0 : y0 + hh, x0 : x0 + ww] + a * pattern(
            rng, hh, ww
        )
    pil = Image.fromarray(to_u8(img))
    d = ImageDraw.Draw(pil)
    s = min(H, W)
    for _ in range(rng.integers(5, 15)):
        col = tuple(int(c * 255) for c in colour(rng, sat=(0.0, 0.8), val=(0.1, 0.95)))
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
    pil = Image.fromarray(to_u8(img))
    if rng.random() < 0.35:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * cfg.image_size / 512))
    gain = rng.uniform(0.75, 1.25)
    gamma = math.exp(rng.uniform(-0.25, 0.25))
    offset = rng.uniform(-0.05, 0.05)
    # 8-bit input: the lighting curve is evaluated once per level, not once per pixel.
    out = np.take(gain * _LEVELS**gamma + offset, np.asarray(pil))
    out += rng.normal(0, rng.uniform(0.005, 0.025), out.shape).astype(np.float32)
    return to_u8(out)


def _place_clutter(
    canvas,
    rng,
    assets: Assets,
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
            to_u8(pattern(rng, min(bh, 256), min(bw, 256))),
            np.full((min(bh, 256), min(bw, 256)), 255, np.uint8),
        ]
    )
    q = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    res = _paste(canvas, sprite, q, rng)
    if res is not None:
        a, (ya, yb, xa, xb) = res
        vis[ya:yb, xa:xb] *= 1 - a


def render_scene(
    rng,
    cfg: SyntheticConfig,
    assets: Assets,
    clutter_role: str,
    main: np.ndarray | None,
    target: str,
    distractor_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One image: background, clutter behind, (a same-size distractor,) the main object,
    occluders, clutter in front.

    ``target`` picks how the main object is shown: ``'easy'``, ``'hard'``, ``'junk'``
    (database views), ``'query'`` (large, unoccluded, no clutter in front), ``'cls'`` or
    ``'clutter'`` (a distractor at landmark size). ``distractor_prob``: chance of one more
    recurring distractor at landmark size behind the main object (the classification proxy's;
    0 draws nothing, so every other image keeps its random stream).

    Returns the uint8 (H, W, 3) image, the bool (H, W) mask of the main object's visible
    pixels (warped alpha above one half, less what occluders and clutter in front cover;
    all False without a main object) and the annotation (size; with a main object its visible
    and area fractions, box of the mask and warped corners).
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
        return _finish(canvas, rng, cfg), np.zeros(hw, bool), info

    if distractor_prob > 0 and rng.random() < distractor_prob:
        sprite = assets.obj(clutter_role, int(rng.integers(cfg.n_clutter_objects)))
        quad = _quad(rng, hw, _aspect(sprite), _log_uniform(rng, 0.3, 0.7), 0.3)
        _paste(canvas, sprite, quad, rng)
        info["distractor"] = True
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
    mask = vis > 0.5
    info.update(
        visible_fraction=min(1.0, visible_px / max(full_area, 1e-6)),
        area_fraction=visible_px / (H * W),
        bbx=_mask_box(mask),
        quad=[[round(float(x), 2), round(float(y), 2)] for x, y in quad],
    )
    return _finish(canvas, rng, cfg), mask, info


def _mask_box(mask: np.ndarray) -> list[float] | None:
    """[x1, y1, x2, y2] (pixel edges, floats) around the True pixels, None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
