import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from toys import ToyBackbone

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import describe_feature_map, pool_regions
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.whitening import learn_pca_whitening
from regattn_lib.datasets.images import ImageError, prepare_image
from regattn_lib.extraction.extract import extract_dataset, extract_images
from regattn_lib.extraction.heads import RegionalHead
from regattn_lib.extraction.image_stream import size_batches, target_size
from regattn_lib.extraction.methods import build_head, method_of, whitening_head


@dataclass
class ToyDataset:
    name: str
    db_paths: list
    query_paths: list
    query_bbxs: list


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(96, 128), (128, 96), (96, 128), (100, 100), (96, 128)]):
        p = tmp_path / f"im{i}.jpg"
        # 32-px colour blocks: structure that survives the stride-32 pooling
        blocks = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
        im = np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))[:h, :w]
        Image.fromarray(np.ascontiguousarray(im)).save(p, quality=95)
        paths.append(p)
    return paths


def test_size_batches_groups_by_size_and_keeps_order():
    sizes = [(1, 2), (3, 4), (1, 2), (1, 2), (3, 4)]
    assert size_batches(sizes, 2) == [[0, 2], [3], [1, 4]]


def test_target_size_matches_prepared_image(images):
    for bbx in (None, [10.2, 5.5, 80.7, 60.1]):
        for longest in (None, 150, 200):
            h, w = target_size(images[0], longest, bbx)
            assert prepare_image(images[0], longest, bbx).shape[:2] == (h, w)


def test_batched_extraction_equals_one_image_at_a_time(images):
    bb = ToyBackbone()
    att = RegionalAttention(4, hidden=3, context=True)
    heads = {
        "rmac": build_head("rmac", levels=2),
        "ctx": build_head(method_of(att), levels=2, attention=att),
        "mac": build_head("mac", name="mac"),
    }
    out = extract_images(images, bb, heads, image_size=None, batch_size=4, progress=False)
    for i, p in enumerate(images):
        image = torch.from_numpy(prepare_image(p, None)).permute(2, 0, 1)[None]
        regions = rmac_regions(image.shape[2], image.shape[3], 2)
        single = describe_feature_map(bb.features(image), regions, att).descriptor[0]
        torch.testing.assert_close(out["ctx"][i], single)
    assert all(abs(float(v.norm()) - 1) < 1e-5 for v in out["rmac"] + out["mac"])


def test_regional_vectors_head_returns_all_regions(images):
    out = extract_images(
        images[:1], ToyBackbone(), {"v": whitening_head("regional", levels=2)}, None, progress=False
    )
    assert out["v"][0].shape == (8, 4)  # 96x128: 2 + 6 regions
    feats = torch.rand(2, 5, 19, 25)  # max pooling alone equals pool_regions' max pooling
    ref = pool_regions(feats, rmac_regions(600, 800, 3)).max_pooled
    assert torch.equal(
        whitening_head("regional", levels=3)(feats, torch.zeros(2, 3, 600, 800)), ref
    )


def _with_activation(att, activation):
    other = RegionalAttention(att.in_channels, att.hidden, att.context, activation)
    other.load_state_dict(att.state_dict())
    return other


def test_dataset_cache_hit_and_invalidation(images, tmp_path, monkeypatch):
    ds = ToyDataset("toy", images[:3], images[3:], [None, [5, 5, 60, 60]])
    bb = ToyBackbone()
    first = extract_dataset(
        ds, bb, {"r": build_head("rmac", levels=2)}, None, cache_dir=tmp_path / "c", progress=False
    )
    assert len(list((tmp_path / "c" / "toy").glob("*.pt"))) == 1
    import regattn_lib.extraction.extract as ex

    calls = []
    real = ex.iter_images
    monkeypatch.setattr(ex, "iter_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = extract_dataset(
        ds, bb, {"r": build_head("rmac", levels=2)}, None, cache_dir=tmp_path / "c", progress=False
    )
    assert calls == [] and torch.equal(again["r"].db, first["r"].db)
    # a changed setting (levels, whitening, attention weights, image list) never reuses vectors
    changed = extract_dataset(
        ds, bb, {"r": build_head("rmac", levels=3)}, None, cache_dir=tmp_path / "c", progress=False
    )
    assert calls and changed["r"].config["levels"] == 3
    assert len(list((tmp_path / "c" / "toy").glob("*.pt"))) == 2
    assert first["r"].query_names == ["im3", "im4"] and first["r"].queries.shape == (2, 4)
    # the attention's weights or activation, the whitening and the image list change the key
    att = RegionalAttention(4, 3, context=True)
    variants = [
        build_head(method_of(att), levels=2, attention=att),
        RegionalHead(levels=2, attention=RegionalAttention(4, 3, context=True)),  # other weights
        RegionalHead(levels=2, attention=_with_activation(att, "softplus")),  # same weights
        RegionalHead(
            levels=2, whitening=learn_pca_whitening(torch.randn(50, 4, dtype=torch.float64))
        ),
    ]
    for head in variants:
        calls.clear()
        extract_dataset(ds, bb, {"v": head}, None, cache_dir=tmp_path / "c", progress=False)
        assert calls, head  # extracted, never served from another setting's file
    assert len(list((tmp_path / "c" / "toy").glob("*.pt"))) == 2 + len(variants)
    fewer = ToyDataset("toy", images[:2], images[3:], [None, [5, 5, 60, 60]])
    calls.clear()
    extract_dataset(
        fewer,
        bb,
        {"r": build_head("rmac", levels=2)},
        None,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert calls  # another image list
    # the same method under another label (ablation vs SOTA table) reuses the same file
    calls.clear()
    relabelled = extract_dataset(
        ds,
        bb,
        {"R-MAC": build_head("rmac", name="x", levels=2)},
        None,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert calls == [] and torch.equal(relabelled["R-MAC"].db, first["r"].db)


def test_corrupt_image_is_named(images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        extract_images(
            [images[0], bad],
            ToyBackbone(),
            {"r": build_head("rmac", levels=1)},
            None,
            progress=False,
        )


def test_too_small_after_crop_is_named(images):
    with pytest.raises(ImageError, match="smaller than 32"):
        extract_images(
            [images[0]],
            ToyBackbone(),
            {"r": build_head("rmac", levels=1)},
            None,
            bbxs=[[0, 0, 20, 20]],
            progress=False,
        )


def test_cam_needs_fc():
    with pytest.raises(ValueError, match="fc"):
        build_head("cam", name="cam")


def test_precision_option_is_validated(images):
    with pytest.raises(ValueError, match="precision"):
        extract_images(
            images[:1],
            ToyBackbone(),
            {"r": build_head("rmac", levels=1)},
            None,
            precision="fp8",
            progress=False,
        )


def test_zero_descriptor_is_reported(images):
    class Dead(ToyBackbone):
        def forward(self, x):
            return torch.zeros(x.shape[0], 4, 3, 4)

    with pytest.warns(UserWarning, match="im0.jpg"):
        extract_images(
            images[:1], Dead(), {"r": build_head("rmac", levels=1)}, None, progress=False
        )


def test_autocast_precisions_are_close_to_fp32_and_auto_is_fp32_on_cpu(images):
    torch.manual_seed(0)  # the attention's initialisation: an unseeded one made the test flaky
    bb = ToyBackbone()
    heads = {
        "ctx": build_head("context", levels=2, attention=RegionalAttention(4, 3, context=True))
    }
    run = {
        p: extract_images(images, bb, heads, None, precision=p, progress=False)["ctx"]
        for p in ("fp32", "auto", "fp16", "bf16")
    }
    worst = {}
    for p in ("fp16", "bf16"):
        for i in range(len(images)):
            assert not torch.equal(run[p][i], run["fp32"][i])  # the autocast really ran
        worst[p] = max(1 - float(run[p][i] @ run["fp32"][i]) for i in range(len(images)))
    assert all(torch.equal(a, b) for a, b in zip(run["auto"], run["fp32"], strict=True))
    assert worst["bf16"] < 1e-3
    assert worst["fp16"] < worst["bf16"] / 10  # 3 more mantissa bits


def test_resolve_precision_per_device():
    from regattn_lib.runtime.environment import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_precision("auto", d) for d in (cpu, cuda)] == ["fp32", "fp16"]
    assert [resolve_precision(p, cpu) for p in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]


def test_fp16_overflow_falls_back_to_fp32(images):
    class Huge(ToyBackbone):
        def forward(self, x):
            return super().forward(x) * 1e5  # above fp16's 65504 under autocast

    with pytest.warns(UserWarning, match="overflowed"):
        out = extract_images(
            images[:2],
            Huge(),
            {"m": build_head("mac", name="mac")},
            None,
            precision="fp16",
            progress=False,
        )
    ref = extract_images(
        images[:2],
        Huge(),
        {"m": build_head("mac", name="mac")},
        None,
        precision="fp32",
        progress=False,
    )
    for a, b in zip(out["m"], ref["m"], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_each_precision_gets_its_own_cache_file(images, tmp_path):
    ds = ToyDataset("toy", images[:3], images[3:], [[0, 0, 90, 90], [0, 0, 120, 90]])
    heads = {"r": build_head("rmac", levels=1)}
    for p in ("fp32", "auto", "fp16", "bf16"):
        extract_dataset(ds, ToyBackbone(), heads, None, tmp_path, precision=p, progress=False)
    assert len(list((tmp_path / "toy").glob("*.pt"))) == 3  # auto is fp32 on the CPU


# --- bad images, shared distractors, resumable passes (issue 11: defects 2, 3, 10) ------------


class CountingBackbone(ToyBackbone):
    """ToyBackbone that counts the images it sees and can fail after ``fail_after`` of them."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.images, self.fail_after = 0, fail_after

    def forward(self, x):
        if self.fail_after is not None and self.images >= self.fail_after:
            raise RuntimeError("killed")
        self.images += x.shape[0]
        return super().forward(x)


def _jpeg(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
    im = np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))[:h, :w]
    Image.fromarray(np.ascontiguousarray(im)).save(path, quality=95)
    return path


def _truncated(path, seed=7):
    """A 96x128 JPEG cut after 60% of its bytes (noise: the entropy-coded data dominate)."""
    noise = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


@pytest.fixture
def bad_images(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    broken = d / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return {
        "broken": broken,
        "tiny": _jpeg(d / "tiny.jpg", 200, 6),
        "truncated": _truncated(d / "trunc.jpg"),
    }


def test_truncated_jpeg_decodes_as_far_as_it_goes_only_where_allowed(bad_images):
    from PIL import ImageFile

    from regattn_lib.datasets.images import load_rgb

    p = bad_images["truncated"]
    with pytest.raises(ImageError, match="trunc.jpg"):
        load_rgb(p)
    with pytest.warns(UserWarning, match="trunc.jpg"):
        im = load_rgb(p, allow_truncated=True)
    assert im.shape == (96, 128, 3)
    assert (im[-8:] == 128).all() and not (im[:8] == 128).all()  # grey after the cut, image before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # scoped, not a global side effect


def test_bad_database_images_are_skipped_and_listed(images, bad_images, tmp_path):
    from regattn_lib.extraction.extract import write_skipped_images

    db = [images[0], bad_images["broken"], images[1], bad_images["tiny"], bad_images["truncated"]]
    ds = ToyDataset("toy", db, images[3:], [None, None])
    bb = CountingBackbone()
    with pytest.warns(UserWarning, match="trunc.jpg"):
        out = extract_dataset(
            ds, bb, {"r": build_head("rmac", levels=1)}, None, tmp_path / "c", progress=False
        )
    d = out["r"]
    assert [(s.index, s.name) for s in d.skipped] == [(1, "broken"), (3, "tiny")]
    assert "broken.jpg" in d.skipped[0].reason and "smaller than 32" in d.skipped[1].reason
    assert d.db.shape == (5, 4) and d.db_names == ["im0", "broken", "im1", "tiny", "trunc"]
    assert (d.db[[1, 3]] == 0).all() and (d.db[[0, 2, 4]].norm(dim=1) > 0.99).all()
    assert bb.images == 3 + 2  # decodable database images + queries
    again = extract_dataset(
        ds, bb, {"r": build_head("rmac", levels=1)}, None, tmp_path / "c", progress=False
    )
    assert bb.images == 5 and again["r"].skipped == d.skipped  # the list survives the cache
    csv = write_skipped_images(tmp_path / "skipped_images.csv", out)
    lines = csv.read_text().splitlines()
    assert lines[0] == "dataset,part,index,name,reason,path" and len(lines) == 3
    assert lines[1].startswith("toy,db,1,broken,") and lines[2].startswith("toy,db,3,tiny,")


def test_a_bad_query_is_an_error_naming_the_file(images, bad_images, tmp_path):
    for bad in ("broken", "truncated"):
        ds = ToyDataset("toy", images[:2], [images[3], bad_images[bad]], [None, None])
        with pytest.raises(ImageError, match=bad_images[bad].name):
            extract_dataset(
                ds,
                ToyBackbone(),
                {"r": build_head("rmac", levels=1)},
                None,
                tmp_path,
                progress=False,
            )


@dataclass
class ToyDistractorDataset(ToyDataset):
    distractors: list


def test_distractors_are_extracted_once_for_every_dataset(images, tmp_path):
    dist = [_jpeg(tmp_path / f"d{i}.jpg", 96, 128, seed=10 + i) for i in range(4)]
    ox = ToyDistractorDataset("ox", images[:2] + dist, [images[4]], [None], dist)
    pa = ToyDistractorDataset("pa", images[2:4] + dist, [images[4]], [None], dist)
    heads = {"r": build_head("rmac", levels=1), "mac": build_head("mac", name="mac")}
    bb = CountingBackbone()
    a = extract_dataset(ox, bb, heads, None, tmp_path / "c", progress=False)
    assert bb.images == 2 + 1 + 4
    b = extract_dataset(pa, bb, heads, None, tmp_path / "c", progress=False)
    assert bb.images == 7 + 2 + 1  # Paris: its own images only, the distractors come cached
    for name in heads:
        assert a[name].db.shape == (6, 4) and torch.equal(a[name].db[2:], b[name].db[2:])
        assert b[name].db_names == ["im2", "im3", "d0", "d1", "d2", "d3"]
    plain = ToyDataset("ox", images[:2], [images[4]], [None])
    c = extract_dataset(plain, bb, heads, None, tmp_path / "c", progress=False)
    assert bb.images == 10 and torch.equal(c["r"].db, a["r"].db[:2])  # same core file
    fresh = extract_dataset(ox, ToyBackbone(), heads, None, None, progress=False)
    assert all(torch.equal(fresh[n].db, a[n].db) for n in heads)


def test_interrupted_extraction_resumes_from_finished_shards(images, bad_images, tmp_path):
    db = images[:3] + [bad_images["broken"]] + images[3:]  # 6 images, one skipped
    dist = [_jpeg(tmp_path / f"d{i}.jpg", 128, 96, seed=20 + i) for i in range(3)]
    ds = ToyDistractorDataset("toy", db + dist, [images[1], images[2]], [None, None], dist)
    heads = {"r": build_head("rmac", levels=2)}
    ref = extract_dataset(ds, ToyBackbone(), heads, None, None, progress=False)["r"]
    # killed at the 5th database image: shards [0, 2) and [2, 4) (im2 + the bad file) were
    # written, [4, 6) was not finished (im3 done, im4 not)
    with pytest.raises(RuntimeError, match="killed"):
        extract_dataset(
            ds,
            CountingBackbone(fail_after=4),
            heads,
            None,
            tmp_path / "c",
            shard_size=2,
            progress=False,
        )
    assert len(list((tmp_path / "c").rglob("*.parts/db/*.pt"))) == 2
    bb = CountingBackbone()
    out = extract_dataset(ds, bb, heads, None, tmp_path / "c", shard_size=2, progress=False)["r"]
    assert bb.images == 2 + 2 + 3  # the unfinished db shard, the queries, the distractors
    assert torch.equal(out.db, ref.db) and torch.equal(out.queries, ref.queries)
    assert [s.index for s in out.skipped] == [3] and not list((tmp_path / "c").rglob("*.parts"))
    # killed at the last distractor (after 5 db images, 2 queries and 2 distractors): the
    # dataset's file and the finished distractor shard are reused
    mac = {"m": build_head("mac", name="mac")}
    with pytest.raises(RuntimeError, match="killed"):
        extract_dataset(
            ds,
            CountingBackbone(fail_after=9),
            mac,
            None,
            tmp_path / "c2",
            shard_size=2,
            progress=False,
        )
    bb = CountingBackbone()
    out = extract_dataset(ds, bb, mac, None, tmp_path / "c2", shard_size=2, progress=False)["m"]
    ref = extract_dataset(ds, ToyBackbone(), mac, None, None, progress=False)["m"]
    assert bb.images == 1 and torch.equal(out.db, ref.db)


# --- the whitening pass: streamed, one pass for every kind, resumable (defects 2, 3) ---------


def _whitening_context(tmp_path, n=7, small=()):
    """A smoke Context whose whitening set is ``n`` toy JPEGs (+ ``small`` (h, w) images)."""
    from regattn_lib.experiments import pipeline as P
    from regattn_lib.experiments.profiles import get_profile

    jpg = tmp_path / "data" / "train" / "toywhite" / "jpg"
    jpg.mkdir(parents=True)
    shapes = [(96, 128), (128, 96), (100, 100)]
    for i in range(n):
        _jpeg(jpg / f"w{i:02d}.jpg", *shapes[i % 3], seed=100 + i)
    for j, (h, w) in enumerate(small):
        _jpeg(jpg / f"x{j:02d}.jpg", h, w, seed=200 + j)
    prof = get_profile(
        "smoke",
        whitening_set="toywhite",
        whitening_image_size=128,
        whitening_levels=2,
        whitening_max_images=None,
    )
    ctx = P.Context(prof, tmp_path / "data", tmp_path / "res", torch.device("cpu"))
    return ctx


def test_whitening_pass_streams_every_kind_in_one_pass(tmp_path, monkeypatch):
    from regattn_lib.core.whitening import learn_pca_whitening
    from regattn_lib.experiments import pipeline as P
    from regattn_lib.experiments.profiles import PAPER

    assert P.whitening_min_side(PAPER) == 200  # the authors' rule at their 800 px
    ctx = _whitening_context(tmp_path, small=[(90, 120)])  # short side 90: skipped below
    monkeypatch.setattr(P, "whitening_min_side", lambda profile: 95)
    bb = CountingBackbone()
    ctx = ctx.with_backbone(bb)
    out = P.learn_whitenings(ctx, ["regional", "mac"], progress=False)
    assert bb.images == 7  # one pass for both kinds; the small image is never decoded
    paths = P._whitening_paths(ctx)
    assert [Path(s["path"]).name for s in out["regional"].meta["skipped"]] == ["x00.jpg"]
    assert "shorter side under 95" in out["mac"].meta["skipped"][0]["reason"]
    # the streamed statistics give the whitening of the stacked vectors
    kept = [p for p in paths if p.name != "x00.jpg"]
    heads = {
        "regional": whitening_head("regional", levels=2),
        "mac": build_head("mac", name="mac"),
    }
    ref = extract_images(kept, ToyBackbone(), heads, 128, progress=False)
    for kind in heads:
        stacked = torch.cat([v.reshape(-1, 4) for v in ref[kind]])
        w = learn_pca_whitening(stacked)
        assert out[kind].meta["n_vectors"] == len(stacked) and out[kind].meta["n_images"] == 7
        torch.testing.assert_close(out[kind].mean, w.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(out[kind].apply(stacked), w.apply(stacked), rtol=1e-4, atol=1e-4)
    # cached: a rerun extracts nothing; no checkpoint is left behind
    P.learn_whitenings(ctx, ["regional", "mac"], progress=False)
    assert bb.images == 7 and not list(ctx.cache_dir.rglob("pass-*"))


def test_a_whitening_learned_beside_others_equals_it_learned_alone(tmp_path):
    """Notebook 01 learns the regional and the baselines' whitenings in one pass
    (``studies.learn_series_whitenings``) where notebook 05 learned the baselines' alone: each
    kind's statistics must not depend on its companions, to the bit."""
    from regattn_lib.experiments import pipeline as P

    together = P.learn_whitenings(
        _whitening_context(tmp_path / "a"), ["regional", "mac", "spoc"], progress=False
    )
    for kind in ("regional", "mac", "spoc"):
        alone = P.learn_whitenings(_whitening_context(tmp_path / kind), [kind], progress=False)
        assert torch.equal(together[kind].mean, alone[kind].mean), kind
        assert torch.equal(together[kind].projection, alone[kind].projection), kind


def test_whitening_pass_resumes_after_an_interruption(tmp_path, monkeypatch):
    from regattn_lib.experiments import pipeline as P

    monkeypatch.setattr(P, "WHITENING_GROUP", 2)
    ref_ctx = _whitening_context(tmp_path / "ref")
    ref_ctx = ref_ctx.with_backbone(ToyBackbone())
    ref = P.learn_whitenings(ref_ctx, ["regional"], progress=False)["regional"]
    ctx = _whitening_context(tmp_path / "run")
    ctx = ctx.with_backbone(CountingBackbone(fail_after=5))  # groups [0, 2), [2, 4) finished
    with pytest.raises(RuntimeError, match="killed"):
        P.learn_whitenings(ctx, ["regional"], progress=False, checkpoint_s=0)
    assert len(list(ctx.cache_dir.rglob("pass-*/statistics.pt"))) == 1
    bb = CountingBackbone()
    ctx = ctx.with_backbone(bb)
    w = P.learn_whitenings(ctx, ["regional"], progress=False, checkpoint_s=0)["regional"]
    assert bb.images == 7 - 4
    assert torch.equal(w.mean, ref.mean) and torch.equal(w.projection, ref.projection)
    assert w.meta["n_vectors"] == ref.meta["n_vectors"]


def test_whitening_cache_key_covers_every_image_name(tmp_path):
    from regattn_lib.experiments import pipeline as P

    ctx = _whitening_context(tmp_path, n=1)
    ctx = ctx.with_backbone(ToyBackbone())
    a = [Path(f"/x/img{i:03d}.jpg") for i in range(80)]
    b = a[:60] + [Path("/x/other.jpg")] + a[61:]  # same first 50 names, same count
    fa, _ = P._whitening_files(ctx, ["regional"], a)
    fb, _ = P._whitening_files(ctx, ["regional"], b)
    assert fa["regional"] != fb["regional"]


def test_shard_size_from_the_environment(images, tmp_path, monkeypatch):
    ds = ToyDataset("toy", images[:4], images[4:], [None])
    monkeypatch.setenv("REGATTN_SHARD_IMAGES", "1")
    with pytest.raises(RuntimeError, match="killed"):
        extract_dataset(
            ds,
            CountingBackbone(fail_after=3),
            {"r": build_head("rmac", levels=1)},
            None,
            tmp_path,
            progress=False,
        )
    assert len(list(tmp_path.rglob("*.parts/db/*.pt"))) == 3  # one shard per finished image
    bb = CountingBackbone()
    extract_dataset(ds, bb, {"r": build_head("rmac", levels=1)}, None, tmp_path, progress=False)
    assert bb.images == 1 + 1
    monkeypatch.setenv("REGATTN_SHARD_IMAGES", "many")
    with pytest.raises(ValueError, match="REGATTN_SHARD_IMAGES"):
        extract_dataset(ds, bb, {"r": build_head("rmac", levels=2)}, None, tmp_path, progress=False)


def test_a_new_generator_version_seed_or_config_gets_new_cache_keys(images, tmp_path):
    from regattn_lib.runtime.identity import cache_key, content_stamp

    root = tmp_path / "set"
    root.mkdir()
    assert content_stamp(root) is None and content_stamp(None) is None  # downloaded sets
    metas = [
        {"generator": "gen", "version": 1, "seed": 0, "config": {"n": 3}},
        {"generator": "gen", "version": 2, "seed": 0, "config": {"n": 3}},
        {"generator": "gen", "version": 2, "seed": 7, "config": {"n": 3}},
        {"generator": "gen", "version": 2, "seed": 7, "config": {"n": 4}},
    ]
    (root / "meta.json").write_text(json.dumps(metas[0]))
    assert content_stamp(root) == f"gen@1 seed 0 config {cache_key({'config': {'n': 3}})}"
    ds = ToyDataset("toy", images[:3], images[3:], [None, None])
    ds.root = root
    heads = {"r": build_head("rmac", levels=2)}
    for k, meta in enumerate(metas):
        (root / "meta.json").write_text(json.dumps(meta))
        extract_dataset(ds, ToyBackbone(), heads, None, cache_dir=tmp_path / "c", progress=False)
        # each change of version, seed or config: a new cache file, the old vectors not reused
        assert len(list((tmp_path / "c" / "toy").glob("*.pt"))) == k + 1
    extract_dataset(ds, ToyBackbone(), heads, None, cache_dir=tmp_path / "c", progress=False)
    assert len(list((tmp_path / "c" / "toy").glob("*.pt"))) == len(metas)  # same meta: reused
