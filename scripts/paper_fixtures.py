"""Miniature, format-faithful copies of every remote artefact of the paper profile (issue 11).

``python scripts/paper_fixtures.py OUT_DIR [--seed N] [--no-weights] [--force]`` writes::

    OUT_DIR/mirror/<host>/<path>          each file as its publisher serves it (what a
                                          $REGATTN_MIRROR must hold), in the real format
    OUT_DIR/local/train/imagenet/{train,val}/<wnid>/*.JPEG
                                          a tiny ILSVRC-2012 layout (ImageNet is never
                                          downloaded: the rehearsal copies it into the data root)
    OUT_DIR/manifest_override.json        {"files": {key: entry}}: the manifest entries of the
                                          miniature files with their sha256 and size
    OUT_DIR/overrides.yaml                size-only overrides of the paper profile
    OUT_DIR/expected.json                 what the result checker verifies (counts, the
                                          known-answer queries)
    OUT_DIR/.complete                     stamp: a rerun with the same version and seed reuses
                                          the folder

Deterministic for a seed (archives are written with fixed times and owners) and fast: about
ten seconds on two cores, most of it spent making the two ~170 MB weight files.

What each artefact mimics (read in the publishers' code, see the function docstrings):

- ``oxbuild_images-v1.tgz``: flat ``<name>.jpg`` members. ``paris_{1,2}-v1.tgz``: nested
  ``paris/<landmark>/<name>.jpg`` with directory members, the landmarks split between the two
  archives as the originals are; the 20 blacklisted Paris names (PAPER_SPEC section 5) are in
  the archives as corrupt files (empty or cut short) and, as the brief asks, in the paris6k
  imlist and ground truth, so that their removal and the renumbering are exercised.
- gnd pickles (cirtorch/revisitop ``configdataset``): dicts with ``imlist``, ``qimlist`` (names
  without extension) and ``gnd``. Classic (oxford5k, paris6k): ``bbx`` (4 floats), ``ok`` and
  ``junk`` (lists of int); every query is also a database image and is listed in its own
  ``ok``. Revisited (roxford5k, rparis6k): ``bbx``, ``easy``, ``hard``, ``junk`` as numpy arrays;
  the query images (the classic queries plus new ones) are not in the database. Protocol-2
  pickles whose numpy global is ``numpy.core.multiarray`` as in the files made before numpy 2.
- ``revisitop1m.txt`` (revisitop ``read_imlist``): one path per line relative to ``jpg/``, with
  its extension; ``revisitop1m.<k>.tar.gz`` holds those paths as members (revisitop extracts
  them into the folder that becomes ``jpg/``). The real list's naming scheme is not spelled
  out in the sources read; nested hashed names are used (``<h[:1]>/<h[1:3]>/<h>.jpg``). Among
  the distractors are one truncated JPEG and one image a few pixels wide.
- SfM-120k (cirtorch ``download_train``, ``cid2filename``): ``ims.tar.gz`` is extracted into
  ``train/retrieval-SfM-120k/ims/`` and read at ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``,
  so its members are ``<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>`` without a top folder and
  without an extension. ``retrieval-SfM-120k-whiten.pkl``: ``cids``, ``cluster``, ``qidxs``,
  ``pidxs`` (lists); ``retrieval-SfM-120k.pkl``: the same under ``train`` and ``val``. One
  whitening image is under 200 px on its short side (the authors skip those).
- ``imagenet-caffe-resnet101-features-10a101d.pth``: the state dict of
  ``nn.Sequential(*list(resnet101().children())[:-2])`` (keys ``0.weight``, ``1.*``,
  ``4.0.conv1.weight`` ...; no ``num_batches_tracked``, as files saved before PyTorch 0.4.1):
  random Caffe weights (residual branches damped, see ``RESIDUAL_SCALE``) whose BatchNorm
  statistics are calibrated on scikit-image photos, converted for the input cirtorch feeds
  every network (RGB / 255, ImageNet mean and std: BGR -> RGB and 255 * std folded into
  conv1), so that the convention detector must pick that convention.
- ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``: the state dict of torchvision's pretrained
  Faster R-CNN R50-FPN as its builder makes it (frozen BatchNorm in the backbone), random weights.
- ``ContextAwareRegionalAttention_weights.pth``: the authors' real file, copied as is.

Known answer: every oxford5k query's positives (``ok``) are the query itself and two near
duplicates (the same picture slightly resized and re-encoded), its box covers the whole image
but a pixel, its junk is a cropped variant, and every other database image is an unrelated
picture: each oxford5k query's AP must be 100 whatever the network (the per-query table of
notebook 06 is written for the profile's first set, oxford5k).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from regattn_lib.datasets import retrieval

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "regattn_lib" / "datasets" / "manifest.json"
#: Bumped whenever the fixture's content changes, so that a reused folder is rebuilt.
VERSION = 4
#: Fixed archive member time (2017-07-14), so that archives are byte-identical per seed.
MTIME = 1_500_000_000
#: The authors' released context-aware attention, copied into the mirror as is: the
#: ``shared/official/`` copy beside the checkout (or beside the folder of a git worktree).
OFFICIAL_ATTENTION_CANDIDATES = tuple(
    base / "shared" / "official" / "ContextAwareRegionalAttention_weights.pth"
    for base in (REPO, REPO.parent, REPO.parent.parent)
)
OFFICIAL_ENV = "REGATTN_OFFICIAL_ATTENTION"

OXFORD_QUERY_LANDMARKS = ("all_souls", "ashmolean", "balliol", "bodleian", "christ_church")
OXFORD_QUERY_NUMBERS = (13, 58, 51, 107, 179)
OXFORD_OTHER_LANDMARKS = (
    "cornmarket",
    "hertford",
    "keble",
    "magdalen",
    "pitt_rivers",
    "radcliffe_camera",
    "oxford",
)
PARIS_ARCHIVE_LANDMARKS = {
    "images_paris6k_1": ("defense", "eiffel", "general", "invalides", "louvre", "moulinrouge"),
    "images_paris6k_2": (
        "museedorsay",
        "notredame",
        "pantheon",
        "pompidou",
        "sacrecoeur",
        "triomphe",
    ),
}
PARIS_QUERIES = (
    "paris_defense_000605",
    "paris_eiffel_000266",
    "paris_louvre_000081",
    "paris_notredame_000581",
)
PARIS_NEW_QUERY = "paris_pantheon_000547"
#: PAPER_SPEC section 5: the library's own list, so the fixtures hold exactly what it skips.
PARIS_BLACKLIST = retrieval.PARIS_BLACKLIST
#: The first four ILSVRC-2012 WordNet ids in sorted order.
IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")

N_DISTRACTORS = (100, 100, 40)  # per revisitop1m tar
N_WHITENING = 48
N_OXFORD_OTHERS = 12
N_PARIS_OTHERS = 9
IMAGENET_TRAIN, IMAGENET_VAL = 6, 2
#: Archive -> bytes of its member files (the manifest's ``extracted_bytes``), filled by _tar_gz.
EXTRACTED_BYTES: dict[Path, int] = {}


@dataclass
class Fixture:
    """What ``build`` wrote: folders, the per-key mirror files and the expectations."""

    root: Path
    mirror: Path
    local: Path
    manifest_override: Path
    overrides: Path
    expected: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)  # manifest key -> mirror file


# ----------------------------------------------------------------------------- images
def _size(rng: np.random.Generator, lo: int = 112, hi: int = 160) -> tuple[int, int]:
    """(width, height): long side in [lo, hi], 4:3 landscape or portrait."""
    long = int(rng.integers(lo, hi + 1))
    short = int(round(long * 3 / 4))
    return (long, short) if rng.random() < 0.7 else (short, long)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def scene(rng: np.random.Generator, width: int, height: int, shapes: int = 7) -> Image.Image:
    """A random picture: a two-colour gradient, a few filled shapes and stripes, mild noise."""
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
    arr = a * (1 - t[..., None]) + b * t[..., None]
    im = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(shapes):
        x0, y0 = rng.integers(-width // 4, width), rng.integers(-height // 4, height)
        w, h = rng.integers(width // 8, width // 2), rng.integers(height // 8, height // 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle(box, fill=_colour(rng))
        elif kind == 1:
            draw.ellipse(box, fill=_colour(rng))
        else:
            step = max(2, int(rng.integers(3, 9)))
            c = _colour(rng)
            for x in range(box[0], box[2], 2 * step):
                draw.rectangle([x, box[1], x + step - 1, box[3]], fill=c)
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray((np.asarray(im, float) + noise).clip(0, 255).astype(np.uint8))


def landmark(rng: np.random.Generator, width: int = 96, height: int = 80) -> Image.Image:
    """A planar 'building': a facade of coloured windows under a roof, on its own colours."""
    im = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(im)
    roof = int(height * rng.uniform(0.2, 0.35))
    draw.polygon([(0, roof), (width // 2, 0), (width - 1, roof)], fill=_colour(rng))
    rows, cols = int(rng.integers(2, 4)), int(rng.integers(3, 6))
    win = _colour(rng)
    for r in range(rows):
        for c in range(cols):
            x0 = int((c + 0.2) * width / cols)
            y0 = roof + int((r + 0.2) * (height - roof) / rows)
            x1 = int((c + 0.8) * width / cols)
            y1 = roof + int((r + 0.75) * (height - roof) / rows)
            draw.rectangle([x0, y0, x1, y1], fill=win if (r + c) % 3 else _colour(rng))
    return im


def view(rng: np.random.Generator, mark: Image.Image, scale: float) -> Image.Image:
    """The landmark ``mark`` seen in a new random scene, ``scale`` of the short side."""
    w, h = _size(rng)
    im = scene(rng, w, h, shapes=4)
    side = int(min(w, h) * scale)
    m = mark.resize((side, int(side * mark.height / mark.width)), Image.BILINEAR)
    x = int(rng.integers(0, max(1, w - m.width)))
    y = int(rng.integers(0, max(1, h - m.height)))
    im.paste(m, (x, y))
    return im


def near_duplicate(im: Image.Image, factor: float, brightness: float = 1.0) -> Image.Image:
    """The same picture slightly resized (and brightened): saved at another JPEG quality."""
    out = im.resize((round(im.width * factor), round(im.height * factor)), Image.BILINEAR)
    return ImageEnhance.Brightness(out).enhance(brightness) if brightness != 1.0 else out


def cropped_variant(rng: np.random.Generator, im: Image.Image) -> Image.Image:
    """About half of the picture, enlarged and recoloured: a 'hard' or 'junk' view."""
    cw, ch = int(im.width * 0.6), int(im.height * 0.6)
    x, y = int(rng.integers(0, im.width - cw)), int(rng.integers(0, im.height - ch))
    out = im.crop((x, y, x + cw, y + ch)).resize(im.size, Image.BILINEAR)
    return ImageEnhance.Color(out).enhance(float(rng.uniform(0.5, 1.5)))


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- writers
def _tar_gz(path: Path, members: Iterable[tuple[str, bytes | None]]) -> Path:
    """A gzip'd tar of ``(name, data)`` (``data=None``: a directory), byte-identical per input.

    The bytes of its member files are recorded in ``EXTRACTED_BYTES[path]``."""
    total = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
                total += len(data)
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(raw.getvalue())
    EXTRACTED_BYTES[path] = total
    return path


def _pickle(path: Path, obj: Any) -> Path:
    """Protocol-2 pickle naming numpy's ``numpy.core.multiarray`` (as pre-numpy-2 files do)."""
    data = pickle.dumps(obj, protocol=2)
    # Protocol 2 writes globals as text lines ('c<module>\n<name>\n'): a plain rename is safe.
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def mirror_path(mirror: Path, url: str) -> Path:
    """``<mirror>/<host>/<path>`` of a canonical URL (the layout ``$REGATTN_MIRROR`` reads)."""
    parts = urlsplit(url)
    return mirror / parts.netloc / parts.path.lstrip("/")


# ----------------------------------------------------------------------------- test sets
def _names(rng: np.random.Generator, prefix: str, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        name = f"{prefix}_{int(rng.integers(1, 999_999 if prefix == 'oxford' else 1_200)):06d}"
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _gt_files(
    stem: str, query: str, box: list[float], good: list[str], ok: list[str], junk: list[str]
) -> dict[str, str]:
    """The classic ground-truth text files of one query (VGG's gt_files layout)."""
    names = lambda xs: "".join(f"{n}\n" for n in xs)  # noqa: E731
    return {
        f"{stem}_query.txt": f"{query} {' '.join(f'{v:.1f}' for v in box)}\n",
        f"{stem}_good.txt": names(good),
        f"{stem}_ok.txt": names(ok),
        f"{stem}_junk.txt": names(junk),
    }


def _revisited_gnd(imlist: list[str], queries: list[str], groups: list[tuple]) -> dict[str, Any]:
    """A revisited gnd pickle (revisitop's layout: int64 index arrays, float64 boxes) of the
    groups ``(query, easy names, hard name, junk name, box)``; queries are not in ``imlist``."""
    idx = {n: i for i, n in enumerate(imlist)}
    return {
        "imlist": imlist,
        "qimlist": queries,
        "gnd": [
            {
                "bbx": np.array(box, dtype=np.float64),
                "easy": np.array(sorted(idx[n] for n in easy), dtype=np.int64),
                "hard": np.array([idx[hard]], dtype=np.int64),
                "junk": np.array([idx[junk]], dtype=np.int64),
            }
            for _, easy, hard, junk, box in groups
        ],
    }


def _inset_box(im: Image.Image, rng: np.random.Generator) -> list[float]:
    """A box covering the whole picture but about a pixel, with fractional corners."""
    return [
        float(rng.uniform(0.5, 1.5)),
        float(rng.uniform(0.5, 1.5)),
        float(im.width - rng.uniform(0.5, 1.5)),
        float(im.height - rng.uniform(0.5, 1.5)),
    ]


def oxford(rng: np.random.Generator) -> dict[str, Any]:
    """Oxford5k and ROxford5k in miniature; every classic query a known answer.

    Returns ``images`` (name -> JPEG bytes), the two gnd dicts and the classic text files.
    """
    images: dict[str, bytes] = {}
    taken: set[str] = set()
    groups = []  # (query name, dup names, hard name, junk name, box)
    for lm, num in zip(OXFORD_QUERY_LANDMARKS, OXFORD_QUERY_NUMBERS, strict=True):
        q = f"{lm}_{num:06d}"
        taken.add(q)
        pic = scene(rng, *_size(rng, 128, 160))
        images[q] = jpeg(pic, 92)
        d1, d2, hard, junk = _names(rng, lm, 4, taken)
        images[d1] = jpeg(near_duplicate(pic, 0.9), 80)
        images[d2] = jpeg(near_duplicate(pic, 0.95, 1.03), 86)
        images[hard] = jpeg(cropped_variant(rng, pic), 88)
        images[junk] = jpeg(cropped_variant(rng, cropped_variant(rng, pic)), 88)
        groups.append((q, [d1, d2], hard, junk, _inset_box(pic, rng)))
    others = []
    for i in range(N_OXFORD_OTHERS):
        (name,) = _names(rng, OXFORD_OTHER_LANDMARKS[i % len(OXFORD_OTHER_LANDMARKS)], 1, taken)
        images[name] = jpeg(scene(rng, *_size(rng)), 90)
        others.append(name)
    # ROxford5k's new query: an oxford5k database picture with its own near duplicate and view
    new_q = others[0]
    pic = Image.open(io.BytesIO(images[new_q])).convert("RGB")
    new_dup, new_hard, new_junk = _names(rng, "magdalen", 3, taken)
    images[new_dup] = jpeg(near_duplicate(pic, 0.92), 84)
    images[new_hard] = jpeg(cropped_variant(rng, pic), 88)
    images[new_junk] = jpeg(cropped_variant(rng, cropped_variant(rng, pic)), 88)
    imlist = list(images)
    order = rng.permutation(len(imlist))
    imlist = [imlist[i] for i in order]
    idx = {n: i for i, n in enumerate(imlist)}
    classic = {
        "imlist": imlist,
        "qimlist": [g[0] for g in groups],
        "gnd": [
            {
                "bbx": box,
                "ok": sorted(idx[n] for n in [q, *dups]),
                "junk": sorted([idx[hard], idx[junk]]),
            }
            for q, dups, hard, junk, box in groups
        ],
    }
    rqueries = [*(g[0] for g in groups), new_q]
    rimlist = [n for n in imlist if n not in set(rqueries)]
    new_box = _inset_box(pic, rng)
    rgroups = [*groups, (new_q, [new_dup], new_hard, new_junk, new_box)]
    revisited = _revisited_gnd(rimlist, rqueries, rgroups)
    gt = {}
    for k, (q, dups, hard, junk, box) in enumerate(groups):
        gt.update(
            _gt_files(
                f"{q.rsplit('_', 1)[0]}_{k + 1}", f"oxc1_{q}", box, [q, *dups], [], [hard, junk]
            )
        )
    return {
        "images": images,
        "classic": classic,
        "revisited": revisited,
        "gt": gt,
        "known_answer": [g[0] for g in groups],
    }


def _corrupt(rng: np.random.Generator, k: int) -> bytes:
    """A broken image file: empty, or a JPEG cut after its first third."""
    if k % 3 == 0:
        return b""
    data = jpeg(scene(rng, *_size(rng)), 85)
    return data[: len(data) // 3]


def paris(rng: np.random.Generator) -> dict[str, Any]:
    """Paris6k and RParis6k in miniature: landmark views, the 20 blacklisted names included."""
    images: dict[str, bytes] = {}
    taken = set(PARIS_QUERIES) | {PARIS_NEW_QUERY} | set(PARIS_BLACKLIST)
    groups = []  # (query, easy views, hard view, junk view, box)
    for q in [*PARIS_QUERIES, PARIS_NEW_QUERY]:
        lm = q.split("_")[1]
        mark = landmark(rng)
        pic = view(rng, mark, 0.8)
        images[q] = jpeg(pic, 92)
        n_easy = 2 if q == PARIS_NEW_QUERY else 3
        names = _names(rng, f"paris_{lm}", n_easy, taken)
        for n in names:
            images[n] = jpeg(view(rng, mark, float(rng.uniform(0.6, 0.8))), 88)
        hard, junk = _names(rng, f"paris_{lm}", 2, taken)
        images[hard] = jpeg(cropped_variant(rng, view(rng, mark, 0.45)), 85)
        images[junk] = jpeg(view(rng, mark, 0.25), 85)  # a glimpse of the landmark
        w, h = pic.size
        box = [float(w * 0.1), float(h * 0.08), float(w * 0.92), float(h * 0.95)]
        groups.append((q, names, hard, junk, box))
    all_landmarks = [lm for lms in PARIS_ARCHIVE_LANDMARKS.values() for lm in lms]
    for i in range(N_PARIS_OTHERS):
        (name,) = _names(rng, f"paris_{all_landmarks[(3 * i) % len(all_landmarks)]}", 1, taken)
        images[name] = jpeg(scene(rng, *_size(rng)), 90)
    for k, name in enumerate(PARIS_BLACKLIST):
        images[name] = _corrupt(rng, k)
    imlist = list(images)
    order = rng.permutation(len(imlist))
    imlist = [imlist[i] for i in order]
    idx = {n: i for i, n in enumerate(imlist)}
    old = groups[: len(PARIS_QUERIES)]

    def blacklisted_of(q: str) -> list[str]:
        lm = q.split("_")[1]
        return [n for n in PARIS_BLACKLIST if n.split("_")[1] == lm]

    gnd = []
    for j, (q, easy, hard, junk, box) in enumerate(old):
        bad = blacklisted_of(q)
        # blacklisted names of the query's landmark: half counted as positives, half as junk,
        # so that their removal must renumber both lists
        ok = sorted(idx[n] for n in [q, *easy, hard, *bad[: len(bad) // 2 + j % 2]])
        junks = sorted(idx[n] for n in [junk, *bad[len(bad) // 2 + j % 2 :]])
        gnd.append({"bbx": box, "ok": ok, "junk": junks})
    classic = {"imlist": imlist, "qimlist": list(PARIS_QUERIES), "gnd": gnd}
    rqueries = [g[0] for g in groups]
    drop = set(rqueries) | set(PARIS_BLACKLIST)
    rimlist = [n for n in imlist if n not in drop]
    revisited = _revisited_gnd(rimlist, rqueries, groups)
    gt = {}
    for k, (q, easy, hard, junk, box) in enumerate(old):
        gt.update(_gt_files(f"{q.split('_')[1]}_{k + 1}", q, box, [q, *easy], [hard], [junk]))
    return {"images": images, "classic": classic, "revisited": revisited, "gt": gt}


def paris_archives(images: dict[str, bytes]) -> dict[str, list[tuple[str, bytes | None]]]:
    """Members of paris_1 / paris_2: ``paris/``, ``paris/<landmark>/``, then the images."""
    out = {}
    for key, landmarks in PARIS_ARCHIVE_LANDMARKS.items():
        members: list[tuple[str, bytes | None]] = [("paris", None)]
        for lm in landmarks:
            members.append((f"paris/{lm}", None))
            members += [
                (f"paris/{lm}/{n}.jpg", data)
                for n, data in sorted(images.items())
                if n.split("_")[1] == lm
            ]
        out[key] = members
    return out


# ----------------------------------------------------------------------------- other data
def distractors(rng: np.random.Generator) -> tuple[list[list[tuple[str, bytes]]], list[str], dict]:
    """revisitop1m in miniature: per tar its members, the list, and the special images."""
    tars: list[list[tuple[str, bytes]]] = []
    names: list[str] = []
    special = {}
    total = sum(N_DISTRACTORS)
    truncated_at, tiny_at = int(N_DISTRACTORS[0] * 0.37), N_DISTRACTORS[0] + 13
    i = 0
    for n in N_DISTRACTORS:
        members = []
        for _ in range(n):
            h = hashlib.md5(rng.bytes(16)).hexdigest()
            name = f"{h[:1]}/{h[1:3]}/{h}.jpg"
            if i == truncated_at:  # cut short inside the entropy-coded data
                data = jpeg(scene(rng, *_size(rng)), 90)
                data = data[: int(len(data) * 0.6)]
                special["truncated"] = name
            elif i == tiny_at:  # a few pixels wide
                data = jpeg(scene(rng, 4, 120, shapes=1), 90)
                special["tiny"] = name
            else:
                data = jpeg(scene(rng, *_size(rng, 96, 160)), 88)
            members.append((name, data))
            names.append(name)
            i += 1
        tars.append(members)
    assert len(names) == total
    return tars, names, special


def sfm120k(rng: np.random.Generator) -> tuple[list[tuple[str, bytes]], dict, dict, dict]:
    """SfM-120k in miniature: ``ims`` members, the whiten / 120k / 30k-whiten db pickles."""
    cids, members = [], []
    # short sides under 200 px, which the authors skip: 150 px, and 30 px, under the rule
    # however it is scaled to a smaller whitening image size (the rehearsal's 160 px)
    small = {int(N_WHITENING * 0.4): (240, 150), int(N_WHITENING * 0.7): (180, 30)}
    small_cids = []
    for i in range(N_WHITENING):
        cid = hashlib.sha1(rng.bytes(20)).hexdigest()[:32]
        if i in small:
            w, h = small[i]
            small_cids.append(cid)
        else:
            short = int(rng.integers(200, 241))
            long = int(rng.integers(max(short, 240), 301))
            w, h = (long, short) if rng.random() < 0.7 else (short, long)
        members.append((f"{cid[-2:]}/{cid[-4:-2]}/{cid[-6:-4]}/{cid}", jpeg(scene(rng, w, h), 88)))
        cids.append(cid)
    cluster = [i // 4 for i in range(N_WHITENING)]
    qidxs = [i for i in range(N_WHITENING) if i % 4 == 0]
    pidxs = [i + 1 for i in qidxs]
    whiten = {"cids": cids, "cluster": cluster, "qidxs": qidxs, "pidxs": pidxs}
    half = N_WHITENING // 2

    def split(lo: int, hi: int) -> dict:
        q = [i - lo for i in qidxs if lo <= i < hi]
        return {
            "cids": cids[lo:hi],
            "cluster": cluster[lo:hi],
            "qidxs": q,
            "pidxs": [i + 1 for i in q],
        }

    db120k = {"train": split(0, half), "val": split(half, N_WHITENING)}
    whiten30k = {
        k: (v[:half] if k == "cids" or k == "cluster" else [i for i in v if i < half])
        for k, v in whiten.items()
    }
    return members, whiten, db120k, {"whiten30k": whiten30k, "small_cids": small_cids}


def imagenet(rng: np.random.Generator, root: Path) -> dict[str, int]:
    """``root/train/imagenet/{train,val}/<wnid>/<wnid>_<k>.JPEG``: one motif per class."""
    counts = {}
    base = root / "train" / "imagenet"
    for c, wnid in enumerate(IMAGENET_WNIDS):
        motif = landmark(rng, 64, 56)
        for split, n in (("train", IMAGENET_TRAIN), ("val", IMAGENET_VAL)):
            d = base / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                im = view(rng, motif, float(rng.uniform(0.6, 0.85)))
                name = (
                    f"{wnid}_{k + 1}.JPEG"
                    if split == "train"
                    else f"ILSVRC2012_val_{c:04d}{k:04d}.JPEG"
                )
                (d / name).write_bytes(jpeg(im, 90))
            counts[split] = counts.get(split, 0) + n
    return counts


# ----------------------------------------------------------------------------- weights
#: Residual branches damped this much (``bn3.weight`` of every bottleneck) before the
#: BatchNorm calibration: a plain random ResNet-101 is chaotic (a one-grey-level change moves
#: its descriptors far), damped it is about as stable as a trained one, so that near duplicates
#: stay near (``caffe_weights.random_caffe_state_dict``).
RESIDUAL_SCALE = 0.2


def caffe_features_state(seed: int) -> OrderedDict:
    """cirtorch's ResNet-101 features file in miniature: random Caffe weights, BatchNorm
    calibrated on scikit-image photos under the Caffe convention, then converted the usual way
    (BGR -> RGB and 255 * std folded into conv1) for cirtorch's RGB / 255 ImageNet input; keys
    of ``nn.Sequential(*list(resnet101().children())[:-2])``, no ``num_batches_tracked``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import torch

    from regattn_lib.models.caffe_weights import random_caffe_state_dict

    with torch.random.fork_rng():
        state = random_caffe_state_dict(
            "cirtorch", "rgb-imagenet", seed=seed, image_size=128, residual_scale=RESIDUAL_SCALE
        )
    # files saved before PyTorch 0.4.1 have no num_batches_tracked
    return OrderedDict(
        (k, v.clone()) for k, v in state.items() if not k.endswith("num_batches_tracked")
    )


def rpn_state(seed: int) -> OrderedDict:
    """torchvision's COCO Faster R-CNN R50-FPN state dict layout, random weights."""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc

    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        # as fasterrcnn_resnet50_fpn builds its pretrained model: frozen BatchNorm, 3 trainable
        # layers, 91 COCO classes
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=misc.FrozenBatchNorm2d), 3)
        model = FasterRCNN(backbone, num_classes=91)
    return model.state_dict()


def official_attention_file() -> Path:
    """The authors' released attention weights (``$REGATTN_OFFICIAL_ATTENTION`` or shared/)."""
    env = os.environ.get(OFFICIAL_ENV)
    for p in ([Path(env)] if env else []) + list(OFFICIAL_ATTENTION_CANDIDATES):
        if p.is_file():
            return p
    raise FileNotFoundError(
        "the authors' ContextAwareRegionalAttention_weights.pth was not found (looked at "
        f"${OFFICIAL_ENV} and {', '.join(map(str, OFFICIAL_ATTENTION_CANDIDATES))})"
    )


# ----------------------------------------------------------------------------- overrides
def overrides_yaml(n_distractors: int) -> str:
    """Size-only overrides of the paper profile for the miniature data (YAML)."""
    return f"""\
# Size overrides of the paper profile for the miniature rehearsal fixtures (issue 11).
# Only sizes: every behaviour (backbone, datasets, protocols, recipe) stays the paper's.
image_size: 128            # test images are 112-160 px
whitening_image_size: 160  # whitening images are 240-300 px (one under 200 px: skipped)
# the miniature whitening set gives a few hundred regional vectors: keep the dimensions
# below their rank, as the full 2048 of the paper would whiten noise
whitening_dims: 128
whitening_study_dims: [32, 128]  # the whitening table, likewise below the rank
global_whitening_dims: 32
n_distractors: {n_distractors}  # all of the fixture's revisitop1m images
rpn_proposals: 20
metric:  # metric learning on the miniature SfM-120k (6 pairs, 24 images per split): two epochs,
  epochs: 2        # and the caps at the split's size, so the preflight's disk estimate of the
  query_size: 6    # cached regions counts these images, not the real SfM-120k's
  pool_size: 24
train:
  recipe:  # the fc trained first (no classifier in cirtorch's file) takes as many iterations
    iterations: 8
    batch_size: 2
    accumulation: 2
    resize_min: 100
    resize_max: 104
    crop: 96
    val_resize: 96
    val_crop: 96
    val_images: 4
    checkpoint_every: 4
    log_every: 2
    val_batch_size: 4
    num_workers: 0
"""


# ----------------------------------------------------------------------------- build
def _manifest() -> dict[str, dict[str, Any]]:
    with open(MANIFEST) as f:
        return json.load(f)["files"]


def _stamp(seed: int, weights: bool) -> dict[str, Any]:
    return {"version": VERSION, "seed": seed, "weights": weights}


def is_complete(out_dir: str | os.PathLike, seed: int = 0, weights: bool = True) -> bool:
    """Whether ``out_dir`` holds a finished build of this version, seed and weights choice."""
    stamp = Path(out_dir) / ".complete"
    try:
        return json.loads(stamp.read_text()) == _stamp(seed, weights)
    except (OSError, ValueError):
        return False


def load(out_dir: str | os.PathLike) -> Fixture:
    """The ``Fixture`` of a finished build."""
    root = Path(out_dir).resolve()
    expected = json.loads((root / "expected.json").read_text())
    return Fixture(
        root,
        root / "mirror",
        root / "local",
        root / "manifest_override.json",
        root / "overrides.yaml",
        expected,
        {k: root / p for k, p in expected["mirror_files"].items()},
    )


def build(
    out_dir: str | os.PathLike, seed: int = 0, weights: bool = True, force: bool = False
) -> Fixture:
    """Write the miniature paper fixtures into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    out_dir:
        Target folder; a finished build with the same version, seed and ``weights`` is reused
        unless ``force`` (anything else there is replaced).
    seed:
        Seeds every random choice (default 0).
    weights:
        Also make the two ~170 MB weight files (default True); ``False`` leaves them (and their
        manifest entries) out, for quick format tests.
    """
    out = Path(out_dir).resolve()
    if not force and is_complete(out, seed, weights):
        return load(out)
    for sub in ("mirror", "local"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / ".complete").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    mirror, local = out / "mirror", out / "local"
    manifest = _manifest()
    rng = np.random.default_rng(seed)
    files: dict[str, Path] = {}

    def put(key: str) -> Path:
        files[key] = mirror_path(mirror, manifest[key]["url"])
        files[key].parent.mkdir(parents=True, exist_ok=True)
        return files[key]

    ox = oxford(rng)
    _tar_gz(put("images_oxford5k"), [(f"{n}.jpg", d) for n, d in sorted(ox["images"].items())])
    _pickle(put("gnd_oxford5k"), ox["classic"])
    _pickle(put("gnd_roxford5k"), ox["revisited"])
    _tar_gz(put("gt_oxford5k"), [(n, t.encode()) for n, t in sorted(ox["gt"].items())])
    pa = paris(rng)
    for key, members in paris_archives(pa["images"]).items():
        _tar_gz(put(key), [(n, d) for n, d in members])
    _pickle(put("gnd_paris6k"), pa["classic"])
    _pickle(put("gnd_rparis6k"), pa["revisited"])
    _tar_gz(put("gt_paris6k"), [(n, t.encode()) for n, t in sorted(pa["gt"].items())])

    tars, dnames, special = distractors(rng)
    put("revisitop1m_list").write_text("".join(f"{n}\n" for n in dnames))
    for k, members in enumerate(tars, start=1):
        _tar_gz(put(f"revisitop1m_tar_{k:03d}"), members)

    ims, whiten, db120k, extra = sfm120k(rng)
    _tar_gz(put("sfm120k_ims"), ims)
    _pickle(put("sfm_db_retrieval-SfM-120k-whiten"), whiten)
    _pickle(put("sfm_db_retrieval-SfM-120k"), db120k)
    _pickle(put("sfm_db_retrieval-SfM-30k-whiten"), extra["whiten30k"])

    inet = imagenet(rng, local)
    shutil.copyfile(official_attention_file(), put("official_attention"))
    if weights:
        import torch

        # plain OrderedDicts without ``_metadata``, as the 2017 conversion left them
        torch.save(OrderedDict(caffe_features_state(seed)), put("caffe_resnet101_features"))
        torch.save(rpn_state(seed), put("rpn_fasterrcnn_coco"))

    entries = {}
    for key, path in files.items():
        e = {k: v for k, v in manifest[key].items()}
        e["sha256"], e["size"] = sha256_file(path), path.stat().st_size
        if "sha256_prefix" in e:
            e["sha256_prefix"] = None  # the real file's hash prefix does not apply here
        # the preflight's disk estimate: this file's real sizes, not the full data set's
        e["approx_bytes"] = e["size"]
        if e.get("extract_to"):
            e["extracted_bytes"] = EXTRACTED_BYTES[path]
        e["note"] = f"rehearsal fixture (scripts/paper_fixtures.py v{VERSION}, seed {seed})"
        entries[key] = e
    (out / "manifest_override.json").write_text(
        json.dumps(
            {"_doc": "miniature paper fixtures: REGATTN_MANIFEST override", "files": entries},
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    (out / "overrides.yaml").write_text(overrides_yaml(len(dnames)))
    n_ox, n_pa = len(ox["classic"]["imlist"]), len(pa["classic"]["imlist"]) - len(PARIS_BLACKLIST)
    expected = {
        "version": VERSION,
        "seed": seed,
        "profile": "paper",
        "known_answer": {"dataset": "oxford5k", "queries": ox["known_answer"], "ap": 100.0},
        "datasets": {
            "oxford5k": {"database": n_ox, "queries": len(ox["classic"]["qimlist"])},
            "paris6k": {"database": n_pa, "queries": len(pa["classic"]["qimlist"])},
            "roxford5k": {
                "database": len(ox["revisited"]["imlist"]),
                "queries": len(ox["revisited"]["qimlist"]),
            },
            "rparis6k": {
                "database": len(pa["revisited"]["imlist"]),
                "queries": len(pa["revisited"]["qimlist"]),
            },
        },
        "paris_blacklist_in_imlist": len(PARIS_BLACKLIST),
        "distractors": {
            "total": len(dnames),
            "tars": [len(t) for t in tars],
            "truncated": special["truncated"],
            "tiny": special["tiny"],
        },
        "whitening": {"images": N_WHITENING, "under_200px": extra["small_cids"]},
        # images that must be skipped and named in a report beside the results: the distractor
        # a few pixels wide, the whitening image 30 px high
        "must_report_skipped": [Path(special["tiny"]).stem, extra["small_cids"][-1]],
        "imagenet": {"classes": len(IMAGENET_WNIDS), **inet},
        "weights": weights,
        "mirror_files": {k: str(p.relative_to(out)) for k, p in sorted(files.items())},
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    (out / ".complete").write_text(json.dumps(_stamp(seed, weights)))
    return load(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    ap.add_argument(
        "--no-weights",
        action="store_true",
        help="leave out the two ~170 MB weight files (quick format checks)",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if a build is there")
    args = ap.parse_args(argv)
    reused = not args.force and is_complete(args.out_dir, args.seed, not args.no_weights)
    fx = build(args.out_dir, args.seed, not args.no_weights, args.force)
    size = sum(p.stat().st_size for p in fx.files.values())
    print(
        f"paper_fixtures: {'reused' if reused else 'built'} {fx.root} ({len(fx.files)} mirror "
        f"files, {size / 1e6:.1f} MB); manifest override {fx.manifest_override}, overrides "
        f"{fx.overrides}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
