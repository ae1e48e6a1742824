"""The synthetic benchmark: layout, ground truth, determinism, atomic and skipped generation."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion
from skimage.transform import warp

import regattn_lib.datasets.synthetic as syn
from regattn_lib.datasets.synthetic import (
    SYNTHETIC_PRESETS,
    SyntheticConfig,
    assets,
    building,
    generate_synthetic,
    load_landmark_mask,
    rendering,
    tiny_config,
    view_label,
)

CFG = tiny_config()
_REAL_RENDER = building._render


def _gen(root: Path, cfg: SyntheticConfig = CFG, seed: int = 0, workers: int = 1):
    return generate_synthetic(cfg, data_root=root, seed=seed, progress=False, workers=workers)


class _NoGlobals(pickle.Unpickler):
    """Refuses every class or function: only plain containers, str, int and float load."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} in the pickle")


def _load_gnd(path: Path) -> dict:
    return _NoGlobals(io.BytesIO(path.read_bytes())).load()


def _files(sp) -> dict[str, bytes]:
    """Every file of the four folders, by path relative to the data root."""
    out = {}
    for d in (sp.retrieval_dir, sp.whiten_dir, sp.cls_dir, sp.metric_dir):
        for p in sorted(d.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(sp.root))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp("synth"))


def test_layout_and_pickle_keys(tiny):
    name = CFG.name
    assert tiny.retrieval_dir == tiny.root / "test" / name
    assert tiny.gnd_path == tiny.retrieval_dir / f"gnd_{name}.pkl"
    assert tiny.whiten_dir == tiny.root / "train" / f"{name}-whiten"
    assert tiny.cls_dir == tiny.root / "train" / f"{name}-cls"
    gnd = _load_gnd(tiny.gnd_path)  # no numpy or other globals inside
    assert set(gnd) == {"imlist", "qimlist", "gnd"}
    n_db = CFG.n_landmarks * CFG.views_per_landmark + CFG.n_distractor_images
    assert len(gnd["imlist"]) == n_db == 19
    assert len(gnd["qimlist"]) == len(gnd["gnd"]) == CFG.n_landmarks == 3
    jpgs = {p.stem for p in (tiny.retrieval_dir / "jpg").glob("*.jpg")}
    assert jpgs == set(gnd["imlist"]) | set(gnd["qimlist"])
    assert not set(gnd["imlist"]) & set(gnd["qimlist"])  # queries are not database images
    for g in gnd["gnd"]:
        assert set(g) == {"bbx", "easy", "hard", "junk", "ok"}
        assert len(g["bbx"]) == 4 and all(type(v) is float for v in g["bbx"])
        assert all(type(i) is int for k in ("easy", "hard", "junk", "ok") for i in g[k])
    assert len(list((tiny.whiten_dir / "jpg").glob("*.jpg"))) == CFG.n_whiten_images
    for part in (tiny.retrieval_dir, tiny.whiten_dir, tiny.cls_dir):
        meta = json.loads((part / "meta.json").read_text())
        assert meta["seed"] == 0 and meta["config"]["name"] == name
        assert meta["generator"] == syn.GENERATOR and meta["version"] == syn.GENERATOR_VERSION


def test_ground_truth_is_consistent(tiny):
    gnd = _load_gnd(tiny.gnd_path)
    ann = json.loads((tiny.retrieval_dir / "annotations.json").read_text())
    n = len(gnd["imlist"])
    listed = set()
    for q, g in enumerate(gnd["gnd"]):
        for k in ("easy", "hard", "junk", "ok"):
            assert g[k] == sorted(g[k]) and all(0 <= i < n for i in g[k])
        assert g["ok"] == sorted(g["easy"] + g["hard"])
        e, h, j = set(g["easy"]), set(g["hard"]), set(g["junk"])
        assert not (e & h or e & j or h & j)
        # Exactly the views of this query's landmark, each under its measured label.
        views = {i for i, name in enumerate(gnd["imlist"]) if ann["images"][name]["landmark"] == q}
        assert e | h | j == views and len(views) == CFG.views_per_landmark
        for i in views:
            a = ann["images"][gnd["imlist"][i]]
            label = view_label(a["visible_fraction"], a["area_fraction"], CFG)
            assert i in {"easy": e, "hard": h, "junk": j}[label] and a["label"] == label
        listed |= views
    clutter = {i for i, name in enumerate(gnd["imlist"]) if ann["images"][name]["landmark"] is None}
    assert len(clutter) == CFG.n_distractor_images and not clutter & listed


def test_query_box_holds_the_landmark(tiny):
    gnd = _load_gnd(tiny.gnd_path)
    ann = json.loads((tiny.retrieval_dir / "annotations.json").read_text())
    bank = assets.Assets(CFG, 0)
    sprites = [bank.obj("landmark", lm) for lm in range(CFG.n_landmarks)]
    for q, (qname, g) in enumerate(zip(gnd["qimlist"], gnd["gnd"], strict=True)):
        img = np.asarray(
            Image.open(tiny.retrieval_dir / "jpg" / f"{qname}.jpg").convert("L"), float
        )
        H, W = img.shape
        x1, y1, x2, y2 = g["bbx"]
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        quad = np.array(ann["queries"][qname]["quad"])
        # Queries keep the landmark inside the frame: the box is within the warped corners.
        assert x1 >= quad[:, 0].min() - 1 and x2 <= quad[:, 0].max() + 2
        assert y1 >= quad[:, 1].min() - 1 and y2 <= quad[:, 1].max() + 2
        assert (x2 - x1) * (y2 - y1) >= 0.1 * H * W  # query_scale >= 0.4
        # The pixels inside the quad are this landmark's texture, not another's: correlate the
        # image with each landmark sprite warped onto the quad.
        corr = []
        for sp in sprites:
            sh, sw = sp.shape[:2]
            src = np.array([[0, 0], [sw - 1, 0], [sw - 1, sh - 1], [0, sh - 1]], float)
            to_sprite = rendering.projective_transform(quad, src)
            tex = np.dstack([sp[..., :3].mean(axis=2), sp[..., 3]]).astype(np.float32) / 255
            w = warp(tex, to_sprite, output_shape=(H, W), order=1, cval=0.0)
            inside = w[..., 1] > 0.99
            corr.append(np.corrcoef(img[inside], w[..., 0][inside])[0, 1])
            if len(corr) == q + 1:
                assert inside[int(y1) : int(y2), int(x1) : int(x2)].mean() > 0.3
        assert np.argmax(corr) == q and corr[q] > 0.5, corr


def test_cls_split_is_an_image_folder(tiny):
    classes = [f"class_{c:02d}" for c in range(CFG.n_cls_classes)]
    for split, n in (("train", CFG.n_cls_train), ("val", CFG.n_cls_val)):
        assert sorted(p.name for p in (tiny.cls_dir / split).iterdir()) == classes
        for c in classes:
            files = sorted((tiny.cls_dir / split / c).glob("*.jpg"))
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.mode == "RGB" and max(im.size) == CFG.image_size
    meta = json.loads((tiny.cls_dir / "meta.json").read_text())
    assert meta["counts"]["classes"] == classes


def test_same_seed_identical_other_seed_different(tiny, tmp_path):
    ref = _files(tiny)
    # retrieval: 19 + 3 images and their masks, gnd, annotations, meta; whiten: 4 + 2;
    # cls: 2 x (3 + 2) images and their masks + meta; metric: (3 + 2) landmarks x 3 views and
    # their masks, tuples, annotations, meta
    n_metric, n_cls = (3 + 2) * 3, 2 * (3 + 2)
    assert len(ref) == (2 * (19 + 3) + 3) + (4 + 2) + (2 * n_cls + 1) + (2 * n_metric + 3)
    assert sum(k.endswith(".png") for k in ref) == 19 + 3 + n_cls + n_metric
    again = _gen(tmp_path / "a", workers=2)  # the worker count must not change a byte
    assert _files(again) == ref
    other = _files(_gen(tmp_path / "b", seed=1))
    assert other.keys() == ref.keys()
    assert (
        other[f"test/{CFG.name}/gnd_{CFG.name}.pkl"] != ref[f"test/{CFG.name}/gnd_{CFG.name}.pkl"]
    )
    jpgs = [k for k in ref if k.endswith(".jpg")]
    assert all(other[k] != ref[k] for k in jpgs)
    a = np.asarray(Image.open(io.BytesIO(ref[jpgs[0]])))
    b = np.asarray(Image.open(tiny.root / jpgs[0]))
    assert np.array_equal(a, b)


def _failing_render(after: int):
    calls = {"n": 0}

    def render(job):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt("simulated interruption")
        return _REAL_RENDER(job)

    return render


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_dir()]


def test_interrupted_run_leaves_no_dataset_then_completes(tiny, tmp_path, monkeypatch):
    sp = syn.synthetic_paths(CFG.name, tmp_path)
    monkeypatch.setattr(building, "_render", _failing_render(after=5))
    with pytest.raises(KeyboardInterrupt):
        _gen(tmp_path)
    assert not sp.retrieval_dir.exists() and not sp.whiten_dir.exists() and not sp.cls_dir.exists()
    assert _leftovers(tmp_path) == []
    # Interrupted in the whitening part: the finished retrieval part stays, and counts as done.
    n_retrieval = 19 + CFG.n_landmarks
    monkeypatch.setattr(building, "_render", _failing_render(after=n_retrieval + 2))
    with pytest.raises(KeyboardInterrupt):
        _gen(tmp_path)
    assert (sp.retrieval_dir / "meta.json").is_file() and not sp.whiten_dir.exists()
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(building, "_render", _failing_render(after=10_000))
    _gen(tmp_path)
    assert _files(sp) == _files(tiny)


def test_rerun_with_same_config_is_skipped(tiny, monkeypatch):
    folders = (tiny.retrieval_dir, tiny.whiten_dir, tiny.cls_dir, tiny.metric_dir)
    stamp = [p.stat().st_mtime_ns for p in folders]
    monkeypatch.setattr(building, "_render", _failing_render(after=0))  # any rendering would raise
    assert _gen(tiny.root) == tiny
    assert stamp == [p.stat().st_mtime_ns for p in folders]


def test_changed_config_regenerates_and_foreign_folder_is_kept(tmp_path):
    sp = _gen(tmp_path)
    changed = replace(CFG, n_cls_val=1)
    with pytest.warns(UserWarning, match="regenerating"):
        _gen(tmp_path, changed)
    meta = json.loads((sp.cls_dir / "meta.json").read_text())
    assert meta["config"]["n_cls_val"] == 1
    assert len(list((sp.cls_dir / "val" / "class_00").glob("*.jpg"))) == 1
    assert _leftovers(tmp_path) == []
    foreign = syn.synthetic_paths("synthetic-foreign", tmp_path)
    (foreign.whiten_dir / "jpg").mkdir(parents=True)
    (foreign.whiten_dir / "jpg" / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not made by"):
        _gen(tmp_path, replace(CFG, name="synthetic-foreign"))
    assert (foreign.whiten_dir / "jpg" / "mine.jpg").read_bytes() == b"user data"
    assert not foreign.retrieval_dir.exists()  # checked before any work


def test_view_label_thresholds():
    c = SyntheticConfig()
    assert view_label(1.0, 0.2, c) == "easy"
    assert view_label(0.7, 0.08, c) == "easy"  # thresholds are inclusive for easy
    assert view_label(0.69, 0.2, c) == "hard"
    assert view_label(1.0, 0.079, c) == "hard"
    assert view_label(0.25, 0.012, c) == "hard"
    assert view_label(0.24, 0.5, c) == "junk"
    assert view_label(1.0, 0.0119, c) == "junk"


def test_presets_and_bad_profile():
    smoke, demo = SYNTHETIC_PRESETS["smoke"], SYNTHETIC_PRESETS["demo"]
    assert (smoke.image_size, smoke.n_landmarks, smoke.views_per_landmark) == (256, 12, 8)
    assert smoke.n_distractor_images == 60 and smoke.n_whiten_images == 150
    assert (smoke.n_cls_classes, smoke.n_cls_train, smoke.n_cls_val) == (6, 20, 6)
    assert (demo.image_size, demo.n_landmarks, demo.views_per_landmark) == (512, 50, 12)
    assert demo.n_distractor_images == 1000 and demo.n_whiten_images == 1500
    assert (demo.n_cls_classes, demo.n_cls_train, demo.n_cls_val) == (20, 60, 15)
    with pytest.raises(ValueError, match="unknown synthetic profile"):
        generate_synthetic("nope")
    with pytest.raises(ValueError, match="view_mix"):
        SyntheticConfig(view_mix=(0.5, 0.5, 0.5))


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_masks_match_images_and_annotations(tiny):
    gnd = _load_gnd(tiny.gnd_path)
    ann = json.loads((tiny.retrieval_dir / "annotations.json").read_text())
    images = [(n, ann["images"][n]) for n in gnd["imlist"]]
    images += [(n, ann["queries"][n]) for n in gnd["qimlist"]]
    for name, a in images:
        mask = load_landmark_mask(tiny.retrieval_dir, name)
        with Image.open(tiny.retrieval_dir / "jpg" / f"{name}.jpg") as im:
            assert mask.dtype == bool and mask.shape == (im.height, im.width)
        assert np.array_equal(load_landmark_mask(tiny.retrieval_dir, f"{name}.jpg"), mask)
        if a["landmark"] is None:  # a distractor image: nothing is the landmark
            assert not mask.any()
            continue
        assert mask.any() and _mask_box(mask) == a["bbx"]
        # The annotated area is the soft visible coverage; the mask thresholds it at one
        # half, so the two differ by less than the pixels on the mask's boundary.
        boundary = binary_dilation(mask) & ~binary_erosion(mask)
        assert abs(mask.sum() - a["area_fraction"] * mask.size) <= boundary.sum()
    for qname, g in zip(gnd["qimlist"], gnd["gnd"], strict=True):
        assert _mask_box(load_landmark_mask(tiny.retrieval_dir, qname)) == g["bbx"]
    labels = {a.get("label") for _, a in images}
    assert {"easy", "hard"} <= labels  # both kinds were checked non-empty above


@pytest.mark.parametrize("target", ["query", "easy", "cls"])
def test_mask_is_where_the_landmark_was_drawn(monkeypatch, target):
    """On a flat background, with no clutter, occluders or camera effects, the mask holds
    exactly the pixels the landmark was drawn on, up to its antialiased rim."""
    flat = -1.0  # below every colour: any pixel the landmark touches moves away from it
    monkeypatch.setattr(
        rendering, "_background", lambda rng, hw, textures: np.full((*hw, 3), flat, np.float32)
    )
    monkeypatch.setattr(rendering, "_finish", lambda img, rng, cfg: img)
    cfg = replace(CFG, clutter_per_scene=(0, 0))
    bank = assets.Assets(cfg, 0)
    for seed in range(6):
        rng = np.random.default_rng([seed, 99])
        img, mask, info = rendering.render_scene(
            rng, cfg, bank, "clutter-retrieval", bank.obj("landmark", seed % 3), target
        )
        assert mask.shape == img.shape[:2] and mask.dtype == bool
        drawn = np.abs(img - flat).max(axis=2) > 0.5 / 255
        assert mask.sum() >= 0.5 * info["area_fraction"] * mask.size > 0
        assert not (mask & ~drawn).any()  # every mask pixel was drawn on
        # Drawn beyond the mask's 2-pixel rim (antialiasing, blur): only small occluders
        # (pieces of clutter over 'easy' and 'cls' landmarks), never over a query's.
        beyond_rim = drawn & ~binary_dilation(mask, iterations=2)
        if target == "query":
            assert not beyond_rim.any()


def test_old_sets_without_masks_are_regenerated_with_them(tiny, tmp_path):
    sp = syn.synthetic_paths(CFG.name, tmp_path)
    for src, dst in zip(
        (tiny.retrieval_dir, tiny.whiten_dir, tiny.cls_dir),
        (sp.retrieval_dir, sp.whiten_dir, sp.cls_dir),
        strict=True,
    ):
        shutil.copytree(src, dst)
    # What version 1 wrote: no masks/ folder, version 1 in meta.json.
    shutil.rmtree(sp.retrieval_dir / "masks")
    meta = json.loads((sp.retrieval_dir / "meta.json").read_text())
    (sp.retrieval_dir / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(FileNotFoundError, match="no landmark mask"):
        load_landmark_mask(sp.retrieval_dir, "q_000")
    with pytest.warns(UserWarning, match="regenerating"):
        _gen(tmp_path)
    assert _files(sp) == _files(tiny)  # masks included, byte for byte
    assert load_landmark_mask(sp.retrieval_dir, "q_000").any()


def test_split_hash_lines_check_with_sha256sum_and_change_with_the_seed(tiny, tmp_path):
    import hashlib
    import subprocess

    lines = syn.split_hash_lines(tiny)
    assert (
        list(lines)
        == list(syn.SPLIT_FOLDERS)
        == ["retrieval", "whitening", "classification", "metric"]
    )
    first = lines["retrieval"][0]
    digest, rel = first.split("  ", 1)
    assert rel.startswith(f"test/{CFG.name}/") and "/" not in digest
    assert hashlib.sha256((tiny.root / rel).read_bytes()).hexdigest() == digest
    n_files = sum(
        1
        for d in (tiny.retrieval_dir, tiny.whiten_dir, tiny.cls_dir, tiny.metric_dir)
        for f in d.rglob("*")
        if f.is_file()
    )
    assert sum(map(len, lines.values())) == n_files
    listing = tmp_path / "splits.sha256"
    listing.write_text("".join(x + "\n" for part in lines.values() for x in part))
    check = subprocess.run(
        ["sha256sum", "--check", "--quiet", str(listing)],
        cwd=tiny.root,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # same seed elsewhere: the same lines; another seed: every split another draw
    assert syn.split_hash_lines(_gen(tmp_path / "again")) == lines
    other = syn.split_hash_lines(_gen(tmp_path / "seed1", seed=1))
    for part in lines:
        assert syn.split_digest(other[part]) != syn.split_digest(lines[part]), part


def test_split_hash_lines_name_a_split_not_generated(tmp_path):
    sp = syn.synthetic_paths("nothing-here", tmp_path)
    with pytest.raises(FileNotFoundError, match="retrieval split is not generated"):
        syn.split_hash_lines(sp)


# ----------------------------------------------------------------------------- metric split
def test_metric_split_tuples_in_cirtorchs_layout(tiny):
    ann = json.loads((tiny.metric_dir / "annotations.json").read_text())["images"]
    seen: dict[str, set[int]] = {}
    for split, n_landmarks in (("train", 3), ("val", 2)):
        tuples, paths = syn.metric_tuples(tiny, split)
        assert len(tuples) == 3 * n_landmarks and tuples.n_clusters == n_landmarks
        assert all(p.is_file() for p in paths)
        assert all((tiny.metric_dir / "masks" / f"{c}.png").is_file() for c in tuples.cids)
        # every view is a query once, its positive the next view of the same landmark
        assert sorted(tuples.qidxs.tolist()) == list(range(len(tuples)))
        assert (tuples.cluster[tuples.qidxs] == tuples.cluster[tuples.pidxs]).all()
        assert (tuples.qidxs != tuples.pidxs).all()
        assert [ann[c]["split"] for c in tuples.cids] == [split] * len(tuples)
        assert [ann[c]["landmark"] for c in tuples.cids] == tuples.cluster.tolist()
        seen[split] = set(tuples.cluster.tolist())
        # the first view of each landmark is large and whole, as a test query shows it
        firsts = [c for i, c in enumerate(tuples.cids) if i % 3 == 0]
        assert all(ann[c]["label"] == "easy" for c in firsts)
    assert not seen["train"] & seen["val"]  # validation landmarks are other landmarks
    with pytest.raises(ValueError, match="split must be one of"):
        syn.metric_tuples(tiny, "test")


def test_metric_objects_take_only_tiles_the_other_splits_left():
    for cfg in (SYNTHETIC_PRESETS["smoke"], SYNTHETIC_PRESETS["demo"]):
        a = assets.Assets(cfg, 0)
        metric_roles = ("metric-landmark", "clutter-metric")
        mine = {id(t[0]) for (role, _), t in a.tile_of.items() if role in metric_roles}
        others = {id(t[0]) for (role, _), t in a.tile_of.items() if role not in metric_roles}
        assert not mine & others, cfg.name
        assert a.n_metric_photo_objects == len(mine)
        n_tiles = len(assets.photo_tiles(cfg.photo_tile))
        assert a.n_photo_objects + a.n_metric_photo_objects <= n_tiles
    # the demo's other splits leave few tiles: its metric split takes them all, the rest of its
    # objects are procedural; the smoke's leave more than its metric split wants
    demo = assets.Assets(SYNTHETIC_PRESETS["demo"], 0)
    left = len(assets.photo_tiles(demo.cfg.photo_tile)) - demo.n_photo_objects
    assert 0 < demo.n_metric_photo_objects <= left < 5  # shares floored as for the others
    smoke = assets.Assets(SYNTHETIC_PRESETS["smoke"], 0)
    wanted = round(0.5 * (16 + 6)) + round(0.5 * 40)  # photo_fraction of its objects
    assert smoke.n_metric_photo_objects == wanted


def test_metric_fields_leave_the_other_splits_untouched(tmp_path):
    sp = _gen(tmp_path)
    before = {d: _files_of(d) for d in (sp.retrieval_dir, sp.whiten_dir, sp.cls_dir)}
    stamps = {d: d.stat().st_mtime_ns for d in before}
    changed = replace(CFG, n_metric_landmarks=4)
    with pytest.warns(UserWarning, match="regenerating"):
        _gen(tmp_path, changed)
    for d, files in before.items():  # not regenerated, not a byte changed
        assert d.stat().st_mtime_ns == stamps[d] and _files_of(d) == files, d
    tuples, _ = syn.metric_tuples(sp, "train")
    assert tuples.n_clusters == 4
    meta = json.loads((sp.retrieval_dir / "meta.json").read_text())
    assert "n_metric_landmarks" not in meta["config"]


def _files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
