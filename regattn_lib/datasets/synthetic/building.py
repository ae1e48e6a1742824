"""Writing a synthetic benchmark: one rendering job per image (in this process or a pool), the
four parts (retrieval with its ground truth, whitening, classification, metric learning), each built in a
temporary sibling folder and installed atomically, skipped when already current.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from regattn_lib.datasets.synthetic.assets import Assets
from regattn_lib.datasets.synthetic.config import (
    CLS_FIELDS,
    GENERATOR,
    GENERATOR_VERSION,
    METRIC_FIELDS,
    SyntheticConfig,
    resolve_config,
    stream_rng,
    view_label,
)
from regattn_lib.datasets.synthetic.layout import (
    MASK_DIR,
    SyntheticPaths,
    save_landmark_mask,
    synthetic_paths,
)
from regattn_lib.datasets.synthetic.rendering import render_scene

# Jobs: one per image, run in this process or in a pool. A job is
# (kind, stream, index tuple, output path, extra) and returns (path, info); ``extra["mask"]``,
# when set, is where the landmark mask goes.

_STATE: dict[str, Any] = {}


def _set_assets(cfg: SyntheticConfig, seed: int) -> None:
    if _STATE.get("key") != (cfg, seed):
        _STATE["key"], _STATE["assets"] = (cfg, seed), Assets(cfg, seed)


def _render(job: tuple) -> tuple[str, dict[str, Any]]:
    kind, stream, index, path, extra = job
    cfg, seed = _STATE["key"]
    assets: Assets = _STATE["assets"]
    rng = stream_rng(seed, stream, *index)
    if kind == "clutter-image":
        main = assets.obj(extra["clutter_role"], int(rng.integers(cfg.n_clutter_objects)))
        if rng.random() >= cfg.main_clutter_prob:
            main = None
        img, mask, info = render_scene(rng, cfg, assets, extra["clutter_role"], main, "clutter")
        info = {"height": info["height"], "width": info["width"]}  # no landmark to annotate
        mask = np.zeros_like(mask)  # the object shown is a distractor
    else:
        main = assets.obj(extra["role"], extra["object"])
        img, mask, info = render_scene(
            rng,
            cfg,
            assets,
            extra["clutter_role"],
            main,
            extra["target"],
            extra.get("distractor_prob", 0.0),
        )
        if kind in ("view", "whiten", "metric") or (kind == "cls" and extra["target"] != "cls"):
            info["label"] = view_label(info["visible_fraction"], info["area_fraction"], cfg)
    Image.fromarray(img).save(path, "JPEG", quality=cfg.jpeg_quality)
    if extra.get("mask") is not None:
        save_landmark_mask(extra["mask"], mask)
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
# The four parts. Each writes into ``tmp`` and returns the counts for meta.json.


def _build_retrieval(
    tmp: Path, cfg: SyntheticConfig, seed: int, runner: _Runner, progress: bool
) -> dict:
    jpg, masks = tmp / "jpg", tmp / MASK_DIR
    jpg.mkdir()
    masks.mkdir()
    targets = _view_targets(cfg.views_per_landmark, cfg.view_mix)
    items = [
        ("view", (lm, k), targets[k])
        for lm in range(cfg.n_landmarks)
        for k in range(cfg.views_per_landmark)
    ]
    items += [("clutter-image", (j,), None) for j in range(cfg.n_distractor_images)]
    # Shuffled, so that neither names nor indices give away which images show a landmark.
    order = stream_rng(seed, "order").permutation(len(items))
    imlist = [f"db_{i:05d}" for i in range(len(items))]
    qimlist = [f"q_{lm:03d}" for lm in range(cfg.n_landmarks)]
    base = {"clutter_role": "clutter-retrieval", "role": "landmark"}
    jobs = []
    for name, k in zip(imlist, order.tolist(), strict=True):
        kind, index, target = items[k]
        extra = dict(base, object=index[0], target=target, mask=str(masks / f"{name}.png"))
        jobs.append((kind, kind, index, str(jpg / f"{name}.jpg"), extra))
    for lm, name in enumerate(qimlist):
        jobs.append(
            (
                "query",
                "query",
                (lm,),
                str(jpg / f"{name}.jpg"),
                dict(base, object=lm, target="query", mask=str(masks / f"{name}.png")),
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
        "photo_objects_all_splits": Assets(cfg, seed).n_photo_objects,
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
    """``train/<class>/`` and ``val/<class>/`` images (an ImageFolder), with the class object's
    mask of each in ``masks/<split>/<class>/`` (what the classification oracle reads). Under
    ``cls_views="database"`` every class's images are easy, hard and junk views in
    ``cls_view_mix`` shares, as the database shows a landmark; under ``"whole"`` the object is
    large and whole."""
    classes = [f"class_{c:02d}" for c in range(cfg.n_cls_classes)]
    jobs = []
    for split, n, stream in (
        ("train", cfg.n_cls_train, "cls-train"),
        ("val", cfg.n_cls_val, "cls-val"),
    ):
        targets = _view_targets(n, cfg.cls_view_mix) if cfg.cls_views == "database" else ["cls"] * n
        for c, cname in enumerate(classes):
            d = tmp / split / cname
            d.mkdir(parents=True)
            (tmp / MASK_DIR / split / cname).mkdir(parents=True)
            for i in range(n):
                extra = {
                    "clutter_role": "clutter-cls",
                    "role": "cls",
                    "object": c,
                    "target": targets[i],
                    "distractor_prob": cfg.cls_distractor_prob,
                    "mask": str(tmp / MASK_DIR / split / cname / f"{cname}_{i:04d}.png"),
                }
                jobs.append(("cls", stream, (c, i), str(d / f"{cname}_{i:04d}.jpg"), extra))
    infos = _collect(runner, jobs, f"{cfg.name} cls", progress)
    labels = [i.get("label", "whole") for i in infos]
    return {
        "classes": classes,
        "train_per_class": cfg.n_cls_train,
        "val_per_class": cfg.n_cls_val,
        "views": {k: labels.count(k) for k in ("whole", "easy", "hard", "junk")},
        "with_distractor": sum(bool(i.get("distractor")) for i in infos),
    }


def metric_db_name(cfg: SyntheticConfig) -> str:
    """File name of the metric-learning split's tuples, in cirtorch's
    ``retrieval-SfM-120k.pkl`` layout (``datasets.sfm120k_tuples.tuples_from_db`` reads both)."""
    return f"{cfg.name}-metric.pkl"


def _build_metric(
    tmp: Path, cfg: SyntheticConfig, seed: int, runner: _Runner, progress: bool
) -> dict:
    """Landmark views for learning the attention with a retrieval loss: ``train`` and ``val``
    landmarks (disjoint), each seen ``metric_views_per_landmark`` times (a large whole view
    as the test queries show a landmark, then easy and hard views), among the split's own
    clutter objects. Tuples as cirtorch's: per split ``cids`` (image names), ``cluster``
    (landmark), and (query, positive) pairs ``qidxs``/``pidxs``: every view with the next
    view of its landmark, round the cycle."""
    jpg, masks = tmp / "jpg", tmp / MASK_DIR
    jpg.mkdir()
    masks.mkdir()
    v = cfg.metric_views_per_landmark
    targets = ["query", *_view_targets(v - 1, (0.5, 0.5, 0.0))]
    splits = {"train": range(cfg.n_metric_landmarks)}
    splits["val"] = range(
        cfg.n_metric_landmarks, cfg.n_metric_landmarks + cfg.n_metric_val_landmarks
    )
    jobs, names, where = [], [], []
    for split, landmarks in splits.items():
        for lm in landmarks:
            for k in range(v):
                name = f"m_{len(names):05d}"
                extra = {
                    "clutter_role": "clutter-metric",
                    "role": "metric-landmark",
                    "object": lm,
                    "target": targets[k],
                    "mask": str(masks / f"{name}.png"),
                }
                jobs.append(("metric", "metric", (lm, k), str(jpg / f"{name}.jpg"), extra))
                names.append(name)
                where.append((split, lm, k))
    infos = _collect(runner, jobs, f"{cfg.name} metric", progress)
    db: dict[str, dict[str, list]] = {}
    for split in splits:
        rows = [(n, lm, k) for n, (sp, lm, k) in zip(names, where, strict=True) if sp == split]
        pos = {(lm, k): i for i, (_, lm, k) in enumerate(rows)}
        db[split] = {
            "cids": [n for n, _, _ in rows],
            "cluster": [lm for _, lm, _ in rows],
            "qidxs": [pos[(lm, k)] for _, lm, k in rows],
            "pidxs": [pos[(lm, (k + 1) % v)] for _, lm, k in rows],
        }
    with open(tmp / metric_db_name(cfg), "wb") as f:
        pickle.dump(db, f, protocol=4)
    _write_json(
        tmp / "annotations.json",
        {
            "images": {
                n: {"split": sp, "landmark": lm, **_rounded(info)}
                for n, (sp, lm, _), info in zip(names, where, infos, strict=True)
            },
        },
    )
    labels = [i.get("label") for i in infos]
    return {
        "train_landmarks": cfg.n_metric_landmarks,
        "val_landmarks": cfg.n_metric_val_landmarks,
        "views_per_landmark": v,
        "images": len(names),
        "easy": labels.count("easy"),
        "hard": labels.count("hard"),
        "junk": labels.count("junk"),
        "photo_objects": Assets(cfg, seed).n_metric_photo_objects,
    }


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
    "metric": _build_metric,
}


def _part_config(cfg: SyntheticConfig, part: str) -> dict[str, Any]:
    """The config a part depends on: all of it, less the metric split's own fields
    (``METRIC_FIELDS``) outside the metric split and the classification split's newer ones
    (``CLS_FIELDS``) outside the classification split."""
    config = asdict(cfg)
    for own_part, fields in (("metric", METRIC_FIELDS), ("cls", CLS_FIELDS)):
        if part != own_part:
            for name in fields:
                config.pop(name)
    return config


def _identity(cfg: SyntheticConfig, seed: int, part: str) -> dict[str, Any]:
    # Through JSON so that tuples compare equal to the lists read back from meta.json.
    return json.loads(
        json.dumps(
            {
                "generator": GENERATOR,
                "version": GENERATOR_VERSION,
                "part": part,
                "seed": seed,
                "config": _part_config(cfg, part),
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


def generate_synthetic(
    profile_or_config: str | SyntheticConfig = "smoke",
    data_root: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    parts: Sequence[str] | None = None,
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
        parts: generate only these parts (``"retrieval"``, ``"whiten"``, ``"cls"``,
            ``"metric"``); None: all four. The classification proxy's variants
            (``experiments.proxy``) need only ``("cls",)``.

    Parts (retrieval, whitening, classification, metric) already generated with the same config, seed
    and generator version are skipped; stale ones made by this generator are replaced with a
    warning; folders not made by it raise ``FileExistsError`` before any work.
    """
    cfg = resolve_config(profile_or_config)
    sp = synthetic_paths(cfg.name, data_root)
    folders = {
        "retrieval": sp.retrieval_dir,
        "whiten": sp.whiten_dir,
        "cls": sp.cls_dir,
        "metric": sp.metric_dir,
    }
    if parts is not None:
        unknown = sorted(set(parts) - set(folders))
        if unknown:
            raise ValueError(f"unknown synthetic parts {unknown}; choose among {sorted(folders)}")
        folders = {p: d for p, d in folders.items() if p in parts}
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
