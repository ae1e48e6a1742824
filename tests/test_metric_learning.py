"""Metric learning of the attention (beyond the paper): cirtorch's contrastive loss and hard
negatives, the cached descriptor, the alpha = 1 start, the trainer on a toy problem, and the
SfM-120k tuple reader."""

from __future__ import annotations

import importlib.util
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import pool_regions, weighted_l2_mean, whiten_regions
from regattn_lib.core.whitening import learn_pca_whitening
from regattn_lib.datasets.downloads import ChecksumError
from regattn_lib.datasets.retrieval import cid2filename
from regattn_lib.datasets.safe_pickle import safe_load_pickle
from regattn_lib.datasets.sfm120k_tuples import read_sfm120k_tuples, sfm120k_tuples
from regattn_lib.extraction import methods
from regattn_lib.training.metric import (
    ContrastiveLoss,
    cache_regions,
    cached_alpha,
    contrastive_loss,
    describe_cached,
    init_alpha_one,
    mine_hard_negatives,
    softplus_preimage_of_one,
    tuple_labels,
)
from regattn_lib.training.metric_train import (
    MetricSplit,
    cluster_gnd,
    split_map,
    train_metric_attention,
)

REPO = Path(__file__).resolve().parents[1]


def _vec(*v: float) -> list[float]:
    return list(v)


# ------------------------------------------------------------------------ contrastive loss
# Two tuples (q, p, n1, n2) of unit 2-D vectors. Distances from each query:
#   tuple 1, q = (1, 0):  p (0.6, 0.8) d^2 = 0.8;  n1 (0, 1) d = sqrt 2;  n2 (0.8, 0.6) d = sqrt 0.4
#   tuple 2, q = (0, 1):  p (0, 1) d = 0;  n1 (0.6, 0.8) d = sqrt 0.4;  n2 (-1, 0) d = sqrt 2
# margin 0.7: positives 0.8 / 2 + 0 = 0.4; a negative at sqrt 0.4 = 0.632456 gives
#   (0.7 - 0.632456)^2 / 2 = 0.00228113; those at sqrt 2 > 0.7 give 0. Sum 0.40456226.
# margin 1.0: a negative at sqrt 0.4 gives (1 - 0.632456)^2 / 2 = 0.06754447; sum 0.53508894.
TUPLES = torch.tensor(
    [
        _vec(1, 0),
        _vec(0.6, 0.8),
        _vec(0, 1),
        _vec(0.8, 0.6),
        _vec(0, 1),
        _vec(0, 1),
        _vec(0.6, 0.8),
        _vec(-1, 0),
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([-1, 1, 0, 0, -1, 1, 0, 0])


def test_contrastive_loss_against_hand_computed_values():
    assert torch.equal(tuple_labels(2, 2), LABELS.float())
    neg = (0.7 - math.sqrt(0.4)) ** 2 / 2
    assert neg == pytest.approx(0.00228113, abs=1e-8)
    loss = contrastive_loss(TUPLES, LABELS, margin=0.7, eps=0.0)
    assert loss.item() == pytest.approx(0.40456226, abs=1e-8)
    assert loss.item() == pytest.approx(0.4 + 2 * neg, abs=1e-12)
    loss = contrastive_loss(TUPLES, LABELS, margin=1.0, eps=0.0)
    assert loss.item() == pytest.approx(0.53508894, abs=1e-8)
    # cirtorch's defaults: margin 0.7, eps 1e-6 inside the distance (a shift of ~1e-6 here)
    assert contrastive_loss(TUPLES, LABELS).item() == pytest.approx(0.40456226, abs=1e-5)
    assert ContrastiveLoss()(TUPLES, LABELS).item() == contrastive_loss(TUPLES, LABELS).item()
    # one tuple alone is its part of the sum
    assert contrastive_loss(TUPLES[4:], LABELS[4:], eps=0.0).item() == pytest.approx(neg, abs=1e-12)


def test_contrastive_loss_gradient_is_finite_at_zero_distance_and_layout_is_checked():
    x = TUPLES.clone().requires_grad_(True)
    contrastive_loss(x, LABELS).backward()  # tuple 2's positive equals its query
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="labels"):
        contrastive_loss(TUPLES, torch.zeros(8))
    with pytest.raises(ValueError, match="start with its query"):
        contrastive_loss(TUPLES, torch.tensor([1, -1, 0, 0, -1, 1, 0, 0]))


# ------------------------------------------------------------------------------- mining
# A pool of 9 unit vectors at these angles (degrees) and cluster ids:
POOL = [(50, 3), (0, 0), (175, 4), (20, 1), (90, 5), (10, 1), (60, 2), (30, 2), (40, 0)]
#   query A at 0 deg, cluster 0: pool by similarity 1 5 3 7 8 0 6 4 2
#     1 (own cluster) skip, 5 (c1), 3 (c1 again) skip, 7 (c2), 8 (own) skip, 0 (c3),
#     6 (c2 again) skip, 4 (c5), 2 (c4)                                  -> 5 7 0 4 2
#   query B at 90 deg, cluster 2: pool by similarity 4 6 0 8 7 3 5 2 1
#     4 (c5), 6 (own) skip, 0 (c3), 8 (c0), 7 (own) skip, 3 (c1), 5 (c1 again) skip, 2 (c4)
#                                                                        -> 4 0 8 3 2


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_hard_negatives_one_per_cluster_none_from_the_query_cluster():
    pool = torch.tensor([_unit(a) for a, _ in POOL])
    clusters = [c for _, c in POOL]
    queries = torch.tensor([_unit(0), _unit(90)])
    got = mine_hard_negatives(queries, pool, clusters, [0, 2], nnum=5)
    assert got.tolist() == [[5, 7, 0, 4, 2], [4, 0, 8, 3, 2]]
    got3 = mine_hard_negatives(queries, pool, np.array(clusters), torch.tensor([0, 2]), nnum=3)
    assert got3.tolist() == [[5, 7, 0], [4, 0, 8]]
    # five clusters besides each query's: a sixth negative cannot be found
    with pytest.raises(ValueError, match="only 5 other clusters"):
        mine_hard_negatives(queries, pool, clusters, [0, 2], nnum=6)


# --------------------------------------------------------------- the descriptor trained
def _regions(gen: torch.Generator, n: int, r: int, c: int):
    x = torch.randn(n, r, c, generator=gen).abs()
    k = x * 0.5 + 0.1 * torch.rand(n, r, c, generator=gen)
    return x, k, k.mean(1)


@pytest.mark.parametrize("context", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_alpha_one_init_gives_exactly_rmac(context, activation):
    assert torch.nn.functional.softplus(softplus_preimage_of_one()) == 1.0
    assert torch.nn.functional.softplus(softplus_preimage_of_one(torch.float64)) == 1.0
    torch.manual_seed(0)
    att = init_alpha_one(RegionalAttention(12, hidden=8, context=context, activation=activation))
    gen = torch.Generator().manual_seed(1)
    x, k, g = _regions(gen, 4, 7, 12)
    alpha = att(100 * k, 100 * g)
    assert torch.equal(alpha, torch.ones(4, 7))
    w = learn_pca_whitening(torch.randn(200, 12, generator=gen))
    cache = cache_regions(x, k, g, w)
    rmac = weighted_l2_mean(whiten_regions(x, w), None)
    assert torch.equal(describe_cached(cache, att), rmac)
    assert torch.equal(describe_cached(cache, None), rmac)
    # the start can still learn: a gradient reaches the first layer's weights (tanh: at once)
    if activation == "tanh":
        describe_cached(cache, att)[:, 0].sum().backward()
        assert att.conv_att_1.weight.grad.abs().sum() > 0


def test_cached_descriptor_is_the_extraction_heads():
    """Regions pooled from a feature map, cached, then described give what ``RegionalHead``
    extracts from that map; images of two sizes (two region counts) keep their order."""
    torch.manual_seed(0)
    att = RegionalAttention(16, hidden=8, context=True)
    gen = torch.Generator().manual_seed(2)
    w = learn_pca_whitening(torch.randn(300, 16, generator=gen))
    head = methods.build_head(methods.method_of(att), levels=3, attention=att, whitening=w)
    xs, ks, gs, extracted = [], [], [], []
    for h, wd in ((256, 320), (320, 256), (256, 256)):
        images = torch.zeros(2, 3, h, wd, dtype=torch.uint8)
        feats = torch.rand(2, 16, h // 32, wd // 32, generator=gen)
        with torch.no_grad():
            extracted.append(head(feats, images))
        pooled = pool_regions(feats, head.describe(feats, images)[0][1].features.regions)
        xs += list(pooled.max_pooled)
        ks += list(pooled.avg_pooled)
        gs += list(pooled.global_avg)
    order = [4, 0, 5, 1, 3, 2]  # interleave the groups
    cache = cache_regions([xs[i] for i in order], [ks[i] for i in order], [gs[i] for i in order], w)
    assert len(cache.groups) == 2  # 4:3 and 3:4 share a region count at L = 3, the square not
    with torch.no_grad():
        trained = describe_cached(cache, att)
        torch.testing.assert_close(trained, torch.cat(extracted)[order], atol=1e-6, rtol=0)
        some = describe_cached(cache, att, [3, 0], chunk=1)
    torch.testing.assert_close(some, trained[[3, 0]], atol=1e-7, rtol=0)
    alphas = cached_alpha(cache, att)
    assert [a.shape[0] for a in alphas] == [cache.regions(i) for i in range(6)]


# ------------------------------------------------------------------ the toy problem
R, C, SIGNAL = 6, 16, 2


def _toy(gen: torch.Generator, n_landmarks: int, views: int = 3):
    """Each landmark a random signature; in each of its views region ``SIGNAL`` carries it
    (plus noise) and a marker on channel 0 that ``k`` shows; the other regions are noise."""
    xs, cluster = [], []
    for lm in range(n_landmarks):
        s = torch.randn(C, generator=gen)
        s[0] = 0
        for _ in range(views):
            x = torch.randn(R, C, generator=gen)
            x[:, 0] = 0.3 * torch.randn(R, generator=gen)
            x[SIGNAL] = s + 0.3 * torch.randn(C, generator=gen)
            x[SIGNAL, 0] = 2.0
            xs.append(x)
            cluster.append(lm)
    x = torch.stack(xs)
    k = x + 0.1 * torch.randn(x.shape, generator=gen)
    return x, k, k.mean(1), np.array(cluster)


@pytest.fixture(scope="module")
def toy_splits():
    gen = torch.Generator().manual_seed(0)
    xt, kt, gt, ct = _toy(gen, 40)
    xv, kv, gv, cv = _toy(gen, 15)  # other landmarks
    w = learn_pca_whitening(xt.reshape(-1, C))
    q = np.arange(0, len(ct), 3)  # views 0 and 2 as queries, view 1 their positive
    train = MetricSplit(cache_regions(xt, kt, gt, w), ct, np.r_[q, q + 2], np.r_[q + 1, q + 1])
    val = MetricSplit(cache_regions(xv, kv, gv, w), cv, np.arange(0, 45, 3), np.arange(1, 45, 3))
    return train, val


def _train(splits, lr: float, epochs: int = 5, seed: int = 0):
    torch.manual_seed(0)
    att = init_alpha_one(RegionalAttention(C, hidden=8, context=False))
    start = [p.detach().clone() for p in att.parameters()]
    result = train_metric_attention(
        att, *splits, epochs=epochs, lr=lr, nnum=3, seed=seed, progress=False
    )
    return result, start


def _improved(result, val: MetricSplit) -> bool:
    """What training must achieve on the toy: a later epoch kept, with a val mAP 20 points
    higher than R-MAC's, and the signal region weighted most."""
    h = result.history
    alpha = torch.stack(cached_alpha(val.cache, result.attention)).mean(0)
    return (
        result.best_epoch > 0
        and result.best_val_map > h[0]["val_map"] + 20
        and int(alpha.argmax()) == SIGNAL
    )


def test_toy_training_finds_the_signal_region(toy_splits):
    result, _ = _train(toy_splits, lr=1e-2)
    h = result.history
    assert [r["epoch"] for r in h] == list(range(6))
    assert h[0]["alpha_cv"] == 0 and math.isnan(h[0]["loss"])  # epoch 0 is R-MAC
    assert split_map(toy_splits[1], None) == h[0]["val_map"]
    assert _improved(result, toy_splits[1])
    alpha = torch.stack(cached_alpha(toy_splits[1].cache, result.attention)).mean(0)
    assert alpha[SIGNAL] > 2 * alpha[[i for i in range(R) if i != SIGNAL]].max()
    # the kept module is the best epoch's
    assert split_map(toy_splits[1], result.attention) == result.best_val_map
    assert result.best_val_map == max(r["val_map"] for r in h)


def test_toy_training_with_learning_rate_zero_fails_to_improve(toy_splits):
    result, start = _train(toy_splits, lr=0.0, epochs=3)
    assert not _improved(result, toy_splits[1])
    assert result.best_epoch == 0
    assert len({r["val_map"] for r in result.history}) == 1
    assert all(torch.equal(a, b) for a, b in zip(start, result.attention.parameters(), strict=True))
    for a in cached_alpha(toy_splits[1].cache, result.attention):
        assert torch.equal(a, torch.ones(R))


def test_toy_training_is_deterministic(toy_splits):
    a, _ = _train(toy_splits, lr=1e-2, epochs=2, seed=3)
    b, _ = _train(toy_splits, lr=1e-2, epochs=2, seed=3)
    np.testing.assert_equal(a.history, b.history)  # NaN (epoch 0's loss) equal to NaN
    assert a.history[-1]["epoch"] == 2 and a.history[-1]["loss"] > 0
    for p, q in zip(a.attention.parameters(), b.attention.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cluster_gnd_never_counts_the_query_as_its_own_positive():
    gnd = cluster_gnd([7, 7, 3, 7, 3], [0, 2])
    assert gnd == [{"ok": [1, 3], "junk": [0]}, {"ok": [4], "junk": [2]}]


# --------------------------------------------------------------- SfM-120k tuple reader
def _load_script(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rehearsal_fixture(tmp_path_factory):
    """The rehearsal's miniature fixtures (``scripts/paper_fixtures.py``), without weights."""
    fx = _load_script("paper_fixtures")
    try:
        fx.official_attention_file()
    except FileNotFoundError as e:
        pytest.skip(f"the fixtures serve the authors' real attention file: {e}")
    return fx.build(tmp_path_factory.mktemp("fx"), seed=0, weights=False)


def test_tuple_reader_against_the_rehearsal_fixture(rehearsal_fixture, tmp_path):
    pkl = rehearsal_fixture.files["sfm_db_retrieval-SfM-120k"]
    whiten = safe_load_pickle(rehearsal_fixture.files["sfm_db_retrieval-SfM-120k-whiten"])
    train = read_sfm120k_tuples(pkl, "train")
    val = read_sfm120k_tuples(pkl, "val")
    # the fixture: 48 images in clusters of 4, the first half train, each cluster's first image
    # a query and its second the positive
    assert (len(train), len(val)) == (24, 24)
    assert list(train.cids) + list(val.cids) == list(whiten["cids"])
    assert train.cluster.tolist() == [i // 4 for i in range(24)]
    assert val.cluster.tolist() == [6 + i // 4 for i in range(24)]
    for split in (train, val):
        assert split.qidxs.tolist() == [0, 4, 8, 12, 16, 20]
        assert split.pidxs.tolist() == [1, 5, 9, 13, 17, 21]
        assert split.n_pairs == 6 and split.n_clusters == 6
        assert (split.cluster[split.qidxs] == split.cluster[split.pidxs]).all()
    assert train.image_paths("ims")[0] == cid2filename(train.cids[0], "ims")
    # found in a data root where the downloads put it
    dest = tmp_path / "train" / "retrieval-SfM-120k" / "retrieval-SfM-120k.pkl"
    dest.parent.mkdir(parents=True)
    shutil.copyfile(pkl, dest)
    assert sfm120k_tuples("val", tmp_path).cids == val.cids
    with pytest.raises(ChecksumError):
        read_sfm120k_tuples(pkl, "train", expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="split"):
        read_sfm120k_tuples(pkl, "whiten")
    with pytest.raises(FileNotFoundError, match="download=True"):
        sfm120k_tuples("train", tmp_path / "empty")


# ----------------------------------------------------- images -> cache: the extracted descriptor
def _photos(folder: Path, sizes) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate(sizes):
        p = folder / f"im_{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def test_images_through_the_region_cache_give_the_extracted_descriptor(tmp_path):
    """pooled_regions (the extraction path, RegionPoolsHead) -> region_cache -> describe_cached
    is, image for image, what extract_images gives with the regional head of the same attention
    and whitening: the descriptor trained is the descriptor extracted."""
    from toys import ToyBackbone

    from regattn_lib.extraction.extract import extract_images
    from regattn_lib.training.metric_data import pooled_regions, region_cache

    paths = _photos(tmp_path / "im", [(200, 150), (150, 200), (160, 160), (200, 150)])
    bb = ToyBackbone()
    torch.manual_seed(1)
    att = RegionalAttention(4, hidden=8, context=True)
    w = learn_pca_whitening(torch.randn(200, 4, generator=torch.Generator().manual_seed(3)))
    head = methods.build_head("context", levels=3, attention=att, whitening=w)
    want = torch.stack(
        extract_images(paths, bb, {"d": head}, 160, device="cpu", progress=False)["d"]
    )
    cache_file = tmp_path / "pools.pt"
    pools = pooled_regions(paths, bb, 160, 3, cache_file=cache_file, device="cpu", progress=False)
    assert cache_file.is_file() and len(pools) == 4
    with torch.no_grad():
        got = describe_cached(region_cache(pools, w), att)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # read back from the file, not recomputed; other images are refused by name
    again = pooled_regions(paths, None, 160, 3, cache_file=cache_file, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again, pools, strict=True))
    with pytest.raises(ValueError, match="pools.pt: cached for other images"):
        pooled_regions(paths[:2], None, 160, 3, cache_file=cache_file, progress=False)


def test_split_region_pools_unpacks_the_heads_rows_and_rejects_other_shapes():
    from regattn_lib.extraction.heads import split_region_pools

    rows = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)  # R = 2, C = 3
    x, k, g = split_region_pools(rows)
    assert x.tolist() == rows[:2].tolist() and k.tolist() == rows[2:4].tolist()
    assert g.tolist() == [12.0, 13.0, 14.0]
    with pytest.raises(ValueError, match="not a RegionPoolsHead output"):
        split_region_pools(torch.zeros(4, 3))


def test_paired_intervals_compare_each_metric_row_with_its_recipe_row():
    from regattn_lib.experiments.tables import paired_intervals

    aps = {
        "rmac": np.array([50.0, 60.0, 70.0]),
        "recipe": np.array([52.0, 61.0, 70.0]),
        "metric": np.array([55.0, 64.0, 73.0]),  # +3 on every query over the recipe
    }
    cols = paired_intervals(aps, {"metric": "recipe", "missing": "nowhere"}, "set vs recipe")
    gain, low, high = (cols[f"set vs recipe gain{s}"] for s in ("", " low", " high"))
    assert np.isnan(gain[:2]).all() and np.isnan(low[:2]).all()
    assert gain[2] == pytest.approx(3.0) and low[2] == pytest.approx(3.0)
    assert high[2] == pytest.approx(3.0)  # a constant difference: a zero-width interval


def test_metric_split_keeps_the_first_landmarks_and_only_their_pairs():
    from regattn_lib.datasets.sfm120k_tuples import SfMTuples
    from regattn_lib.experiments.metric_plan import metric_split

    tuples = SfMTuples(
        "train",
        tuple(f"im{i}" for i in range(6)),
        np.array([5, 5, 3, 3, 9, 9]),
        np.array([0, 1, 2, 3, 4, 5]),
        np.array([1, 0, 3, 2, 5, 4]),
    )
    gen = torch.Generator().manual_seed(0)
    pools = [torch.rand(5, 4, generator=gen) for _ in range(6)]  # R = 2, C = 4
    full = metric_split(tuples, pools, None)
    assert len(full.cache) == 6 and full.qidxs.tolist() == [0, 1, 2, 3, 4, 5]
    two = metric_split(tuples, pools, None, landmarks=2)  # landmarks 3 and 5 (sorted ids)
    assert two.cluster.tolist() == [5, 5, 3, 3]
    assert two.qidxs.tolist() == [0, 1, 2, 3] and two.pidxs.tolist() == [1, 0, 3, 2]
    with torch.no_grad():
        torch.testing.assert_close(
            describe_cached(two.cache, None), describe_cached(full.cache, None)[:4]
        )


# ----------------------------------------------------- SfM-120k: the cached part of a split
def _tuples(n_images: int, pairs: list[tuple[int, int]], cluster: list[int]):
    from regattn_lib.datasets.sfm120k_tuples import SfMTuples

    q, p = zip(*pairs, strict=True)
    return SfMTuples(
        "train",
        tuple(f"c{i}" for i in range(n_images)),
        np.asarray(cluster, dtype=np.int64),
        np.asarray(q, dtype=np.int64),
        np.asarray(p, dtype=np.int64),
    )


def test_sfm_subset_keeps_the_drawn_pairs_and_pool_and_reindexes_them():
    from regattn_lib.datasets.sfm120k_tuples import subset_tuples

    t = _tuples(10, [(0, 1), (4, 5), (8, 9)], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # everything fits: the split itself, same order, same pairs
    whole, keep = subset_tuples(t, 5, 50)
    assert keep.tolist() == list(range(10)) and whole.cids == t.cids
    assert whole.qidxs.tolist() == [0, 4, 8] and whole.pidxs.tolist() == [1, 5, 9]
    # one pair and no pool: just that pair's two images, indexed 0 and 1
    sub, keep = subset_tuples(t, 1, 0, seed=3)
    assert sub.qidxs.tolist() == [0] and sub.pidxs.tolist() == [1]
    assert len(keep) == 2 and keep[1] == keep[0] + 1 and keep[0] in (0, 4, 8)
    assert sub.cids == (f"c{keep[0]}", f"c{keep[1]}")
    assert sub.cluster.tolist() == [t.cluster[keep[0]]] * 2
    # a pool of 3 beside 2 pairs: at most 2 x 2 + 3 images, each pair maps to its own images
    sub, keep = subset_tuples(t, 2, 3, seed=1)
    assert 4 <= len(keep) <= 7 and sorted(set(keep.tolist())) == keep.tolist()
    for q, p in zip(sub.qidxs, sub.pidxs, strict=True):
        assert (sub.cids[q], sub.cids[p]) in {("c0", "c1"), ("c4", "c5"), ("c8", "c9")}
    # the draw is fixed by the seed
    again, keep2 = subset_tuples(t, 2, 3, seed=1)
    assert keep2.tolist() == keep.tolist() and again.qidxs.tolist() == sub.qidxs.tolist()
    with pytest.raises(ValueError, match="query_size"):
        subset_tuples(t, 0, 3)


def test_sfm_drop_images_removes_them_and_their_pairs():
    from regattn_lib.datasets.sfm120k_tuples import drop_images

    t = _tuples(6, [(0, 1), (2, 3), (4, 5)], [0, 0, 1, 1, 2, 2])
    out = drop_images(t, [3])
    assert out.cids == ("c0", "c1", "c2", "c4", "c5")
    assert out.cluster.tolist() == [0, 0, 1, 2, 2]
    assert out.qidxs.tolist() == [0, 3] and out.pidxs.tolist() == [1, 4]


def test_pooled_regions_resumes_from_its_shards(tmp_path):
    """An interrupted pass keeps its finished shards: a rerun reads them instead of running the
    backbone, extracts the rest, writes the same file and removes the shards."""
    from toys import ToyBackbone

    from regattn_lib.training.metric_data import pooled_regions

    paths = _photos(tmp_path / "im", [(200, 150), (150, 200), (160, 160), (200, 150), (96, 96)])
    bb = ToyBackbone()
    want = pooled_regions(paths, bb, 160, 3, device="cpu", progress=False)

    class Stops(ToyBackbone):
        calls = 0

        def forward(self, x):
            Stops.calls += 1
            if Stops.calls > 2:
                raise KeyboardInterrupt  # killed during the second shard
            return super().forward(x)

    cache_file = tmp_path / "pools.pt"
    with pytest.raises(KeyboardInterrupt):
        pooled_regions(
            paths,
            Stops(),
            160,
            3,
            cache_file=cache_file,
            device="cpu",
            progress=False,
            shard_images=2,
        )
    parts = Path(f"{cache_file}.parts")
    assert not cache_file.exists() and sorted(p.name for p in parts.glob("*.pt")) == [
        "000000000.pt"
    ]

    class Counts(ToyBackbone):
        seen = 0

        def forward(self, x):
            Counts.seen += x.shape[0]
            return super().forward(x)

    got = pooled_regions(
        paths,
        Counts(),
        160,
        3,
        cache_file=cache_file,
        device="cpu",
        progress=False,
        shard_images=2,
    )
    assert Counts.seen == 3  # the first shard's two images were read back, not recomputed
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert cache_file.is_file() and not parts.exists()


def test_unusable_images_are_named_from_their_headers(tmp_path):
    """A file that is no image, and one whose short side falls under MIN_SIDE once resized:
    the SfM-120k route leaves them out (with their pairs) and reports them."""
    from regattn_lib.datasets.images import MIN_SIDE
    from regattn_lib.experiments.metric_plan import unusable_images

    ok, thin = _photos(tmp_path / "im", [(200, 150), (300, 30)])
    junk = tmp_path / "im" / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    bad = unusable_images([ok, junk, thin], 128)
    assert [i for i, _ in bad] == [1, 2]
    assert "junk.jpg" in bad[0][1]
    # 300 x 30 px scaled to a 128 px long side: 128 x 12.8, rounded to 13 rows
    assert bad[1][1] == f"13x128 px after resizing to 128: under {MIN_SIDE} px"
    assert [i for i, _ in unusable_images([ok, thin], None)] == [1]  # 30 px as it is
    assert unusable_images([ok], 1024) == []


def test_an_interrupted_metric_sweep_resumes_at_the_run_in_hand(toy_splits, tmp_path, monkeypatch):
    """train_metric keeps every run as it finishes: after an interruption the rerun reads the
    finished runs back (same log, same weights) and trains only the others."""
    from types import SimpleNamespace

    from regattn_lib.experiments import metric_plan as MP
    from regattn_lib.experiments.profiles import get_profile

    profile = get_profile(
        "smoke",
        {"metric": {"epochs": 2, "lrs": [1e-3, 1e-2], "nnum": 3}, "train": {"seeds": [0, 1]}},
    )
    dirs = {"models": tmp_path / "models", "metrics": tmp_path / "metrics"}
    for d in dirs.values():
        d.mkdir()
    ctx = SimpleNamespace(profile=profile, dirs=dirs, backbone=SimpleNamespace(name="toy"))
    train, val = toy_splits
    monkeypatch.setattr(MP, "metric_splits", lambda ctx, w, progress: {"train": train, "val": val})
    calls = []
    real = MP.train_metric_attention

    def counted(att, *a, **k):
        calls.append(k["lr"])
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed in the context model's sweep
        return real(att, *a, **k)

    monkeypatch.setattr(MP, "train_metric_attention", counted)
    with pytest.raises(KeyboardInterrupt):
        MP.train_metric(ctx, None, progress=False)
    assert len(list((dirs["models"] / "metric_runs").glob("*.pt"))) == 3
    calls.clear()
    log = MP.train_metric(ctx, None, progress=False)
    # 2 kinds x (2 rates + 1 more seed) = 6 runs; the 3 finished ones were read back
    assert len(log) == 6 and len(calls) == 3
    monkeypatch.setattr(MP, "train_metric_attention", real)
    (dirs["metrics"] / f"{MP.METRIC_LOG}.csv").unlink()  # as if the log had not been written
    for f in dirs["models"].glob("attention_*.pt"):
        f.unlink()
    again = MP.train_metric(ctx, None, progress=False)
    cols = [c for c in log.columns if c != "time_s"]
    pd.testing.assert_frame_equal(again[cols], log[cols])
    # a fresh sweep from nothing gives the same log: reading back changed no result
    fresh = tmp_path / "fresh"
    ctx.dirs = {k: fresh / k for k in dirs}
    for d in ctx.dirs.values():
        d.mkdir(parents=True)
    pd.testing.assert_frame_equal(MP.train_metric(ctx, None, progress=False)[cols], log[cols])
