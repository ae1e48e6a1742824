"""Settings of the synthetic benchmark: the config, its presets, view labels and random streams."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

GENERATOR = "regattn_lib.datasets.synthetic"
#: Bump whenever the rendering or the files written change, so that datasets made by older
#: code are regenerated. 2: warps by scikit-image's ``ProjectiveTransform``; landmark masks.
GENERATOR_VERSION = 2


#: The ways the classification split can show its class object (``SyntheticConfig.cls_views``).
CLS_VIEWS = ("whole", "database")


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
        cls_scale: (min, max) scale of the class object in ``cls_views="whole"`` images
            ((0.3, 0.65)).
        cls_views: how the classification split shows its class object (``"database"``):
            ``"database"``, drawn as the database draws a landmark's views (easy; hard: small,
            half hidden or cut by the frame; junk) in ``cls_view_mix`` shares, among the same
            kind of clutter: the faithful proxy of the paper's premise; ``"whole"``, large and
            whole at ``cls_scale`` (the first proxy). The default design was chosen on the
            classification validation split alone (``experiments.proxy.proxy_study``,
            ``results/demo/tables/proxy_variants.md``).
        cls_view_mix: easy, hard and junk shares of a class's images under
            ``cls_views="database"`` ((0.5, 0.5, 0.0): with junk views the fc alone fell below
            half of the validation images).
        cls_distractor_prob: chance that a classification image also shows one recurring
            distractor object at landmark size, as the database's distractor images do (0.7,
            ``main_clutter_prob``'s value).
        n_metric_landmarks: training landmarks of the metric-learning split (16).
        n_metric_val_landmarks: validation landmarks of the metric-learning split, disjoint
            from the training ones (6).
        metric_views_per_landmark: images of each metric-learning landmark: one large, whole
            view as the test queries show a landmark, the others easy and hard database-like
            views in equal shares (4).
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
    cls_views: str = "database"
    cls_view_mix: tuple[float, float, float] = (0.5, 0.5, 0.0)
    cls_distractor_prob: float = 0.7
    n_metric_landmarks: int = 16
    n_metric_val_landmarks: int = 6
    metric_views_per_landmark: int = 4
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
        if self.n_metric_landmarks < 1 or self.n_metric_val_landmarks < 1:
            raise ValueError("the metric-learning split needs training and validation landmarks")
        if self.metric_views_per_landmark < 2:
            raise ValueError("metric_views_per_landmark must be >= 2 (a query and a positive)")
        for field in ("view_mix", "cls_view_mix"):
            mix = getattr(self, field)
            if len(mix) != 3 or abs(sum(mix) - 1.0) > 1e-6 or min(mix) < 0:
                raise ValueError(f"{field} must be 3 non-negative shares summing to 1: {mix}")
        if self.cls_views not in CLS_VIEWS:
            raise ValueError(f"cls_views must be one of {CLS_VIEWS}: {self.cls_views!r}")
        if not 0.0 <= self.cls_distractor_prob <= 1.0:
            raise ValueError(f"cls_distractor_prob must lie in [0, 1]: {self.cls_distractor_prob}")


#: ``smoke``: 168 retrieval images + 150 whitening + 156 classification + 88 metric, 256 px.
#: ``demo``: 1,650 retrieval images (50 queries) + 1,500 whitening + 1,500 classification +
#: 1,200 metric (160 + 40 landmarks), 512 px.
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
        n_metric_landmarks=160,
        n_metric_val_landmarks=40,
        metric_views_per_landmark=6,
    ),
}

#: The fields only the metric-learning split depends on: left out of the other splits'
#: identity (``meta.json``), so that adding the split left them and their caches as they were.
METRIC_FIELDS = ("n_metric_landmarks", "n_metric_val_landmarks", "metric_views_per_landmark")
#: The fields only the classification split depends on and that came with the faithful proxy:
#: left out of the other splits' identities for the same reason.
CLS_FIELDS = ("cls_views", "cls_view_mix", "cls_distractor_prob")


def view_label(visible: float, area: float, cfg: SyntheticConfig) -> str:
    """``'easy'``, ``'hard'`` or ``'junk'`` for a view, by the thresholds of ``cfg``.

    Parameters:
        visible: visible landmark pixels over the whole warped landmark's pixels.
        area: visible landmark pixels over the image's pixels.
        cfg: the config holding the thresholds (see the package docstring).
    """
    if visible < cfg.junk_max_visible or area < cfg.junk_max_area:
        return "junk"
    if visible >= cfg.easy_min_visible and area >= cfg.easy_min_area:
        return "easy"
    return "hard"


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
        n_metric_landmarks=3,
        n_metric_val_landmarks=2,
        metric_views_per_landmark=3,
    )


def resolve_config(profile_or_config: str | SyntheticConfig) -> SyntheticConfig:
    """The config itself, or the preset of that name (``ValueError`` for an unknown name)."""
    if isinstance(profile_or_config, SyntheticConfig):
        return profile_or_config
    try:
        return SYNTHETIC_PRESETS[profile_or_config]
    except KeyError:
        raise ValueError(
            f"unknown synthetic profile {profile_or_config!r}; choose one of {sorted(SYNTHETIC_PRESETS)} "
            "or pass a SyntheticConfig"
        ) from None


# Seeds: one integer code per stream, so that no two images or objects share a random stream.

STREAM_CODES = {
    "tiles": 1,
    "photo-choice": 2,
    "order": 3,
    "view": 10,
    "clutter-image": 11,
    "query": 12,
    "whiten": 13,
    "cls-train": 14,
    "cls-val": 15,
    "metric": 16,
    "landmark": 20,
    "whiten-landmark": 21,
    "cls": 22,
    "clutter-retrieval": 23,
    "clutter-whiten": 24,
    "clutter-cls": 25,
    "metric-landmark": 26,
    "clutter-metric": 27,
}


def stream_rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    """The random generator of image or object ``index`` of ``stream`` (a ``STREAM_CODES`` key)."""
    return np.random.default_rng(np.random.SeedSequence([seed, STREAM_CODES[stream], *index]))
