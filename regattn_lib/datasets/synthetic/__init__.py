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
- ``<root>/test/<name>/masks/{db_NNNNN,q_NNN}.png``: the landmark mask of every database image
  and query, a 1-bit PNG of the image's size, True where the landmark is visible (warped
  alpha above one half, less occluders and clutter in front; all False without a landmark).
  ``load_landmark_mask(retrieval_dir, image_name)`` reads one as a bool (H, W) array.
- ``<root>/train/<name>-whiten/jpg/w_NNNNN.jpg``: the same kind of scenes with *other*
  landmark instances, for learning the PCA-whitening (``annotations.json`` names each image's
  landmark, for learned whitening).
- ``<root>/train/<name>-cls/{train,val}/class_NN/*.jpg``: an ImageFolder classification set for
  training the attention. Its classes are a third set of objects made by the same generator,
  among a separate pool of distractor objects, so the attention is not tuned to the benchmark.
- ``<root>/train/<name>-metric/jpg/m_NNNNN.jpg`` (+ ``masks/``): views of a fourth set of
  landmarks for learning the attention with a retrieval loss, ``train`` and ``val`` landmarks
  disjoint, and their tuples ``<name>-metric.pkl`` in cirtorch's ``retrieval-SfM-120k.pkl``
  layout (``cids``, ``cluster``, ``qidxs``, ``pidxs``; ``metric_tuples`` reads them). Its
  objects take only the photo tiles the other splits left (2 in the demo preset: nearly all
  procedural patterns), so no texture of a test landmark appears in it, and its config fields are
  left out of the other parts' identity: adding it changed no byte of them.

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

Modules: ``config`` (settings, presets, labels, random streams), ``patterns`` (colours and
procedural textures), ``assets`` (source photos and objects), ``rendering`` (one image),
``layout`` (folders), ``building`` (jobs, the four parts, atomic install).
"""

from regattn_lib.datasets.synthetic.building import generate_synthetic
from regattn_lib.datasets.synthetic.config import (
    GENERATOR,
    GENERATOR_VERSION,
    SYNTHETIC_PRESETS,
    SyntheticConfig,
    tiny_config,
    view_label,
)
from regattn_lib.datasets.synthetic.layout import (
    SPLIT_FOLDERS,
    SyntheticPaths,
    cls_mask_name,
    load_landmark_mask,
    metric_tuples,
    split_digest,
    split_hash_lines,
    synthetic_paths,
)

__all__ = [
    "SPLIT_FOLDERS",
    "GENERATOR",
    "GENERATOR_VERSION",
    "SYNTHETIC_PRESETS",
    "SyntheticConfig",
    "SyntheticPaths",
    "cls_mask_name",
    "generate_synthetic",
    "load_landmark_mask",
    "metric_tuples",
    "split_digest",
    "split_hash_lines",
    "synthetic_paths",
    "tiny_config",
    "view_label",
]
