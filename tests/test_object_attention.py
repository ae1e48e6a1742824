"""Attention on the object: hand-computed overlaps and shares, mask geometry = image geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from regattn_lib.datasets.images import prepare_image
from regattn_lib.experiments.object_attention import (
    object_share,
    prepare_mask,
    region_overlaps,
    summarize_shares,
)


def test_region_overlaps_hand_computed():
    mask = np.zeros((4, 6), bool)
    mask[:2, :3] = True  # the top-left 2 x 3 block
    regions = np.array([[0, 0, 3, 2], [0, 0, 6, 4], [3, 2, 3, 2], [2, 1, 2, 2], [5, 3, 4, 4]])
    # all in; 6 of 24; none; (row 1, col 2) only of 4 pixels; clipped to 1 pixel, outside
    np.testing.assert_allclose(region_overlaps(regions, mask), [1.0, 0.25, 0.0, 0.25, 0.0])


def test_object_share_weights_regions_by_alpha():
    overlaps = np.array([1.0, 0.0, 0.5])
    assert object_share(None, overlaps) == pytest.approx(0.5)
    # (3 * 1 + 1 * 0 + 0 * 0.5) / 4
    assert object_share(np.array([3.0, 1.0, 0.0]), overlaps) == pytest.approx(0.75)
    # a global scale of alpha changes nothing (alpha is not normalised)
    assert object_share(np.array([6.0, 2.0, 0.0]), overlaps) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="2 attention weights for 3 regions"):
        object_share(np.ones(2), overlaps)


def test_prepared_mask_lies_over_the_prepared_image(tmp_path):
    # a white square on black: its mask, prepared like the image, marks the same pixels
    image = np.zeros((300, 400, 3), np.uint8)
    image[60:180, 100:260] = 255
    path = tmp_path / "im.png"
    Image.fromarray(image).save(path)
    mask = image[..., 0] > 0
    for longest, bbx in ((None, None), (200, None), (200, [50.0, 20.0, 300.0, 250.0])):
        prepared = prepare_image(path, longest, bbx)
        m = prepare_mask(mask, longest, bbx)
        assert m.shape == prepared.shape[:2]
        agree = (prepared[..., 0] >= 128) == m
        assert agree.mean() > 0.995  # only antialiased border pixels may differ


def test_summary_difference_and_interval():
    s = summarize_shares([0.6, 0.5, np.nan, 0.7], [0.4, 0.3, 0.2, 0.5])
    assert s.n == 3 and s.attention == pytest.approx(0.6) and s.uniform == pytest.approx(0.4)
    # every image gains exactly 0.2: a point interval
    assert s.difference == pytest.approx(0.2) and s.low == pytest.approx(0.2)
    assert s.high == pytest.approx(0.2)


def test_object_attention_table_on_a_synthetic_set(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch
    from torch import nn

    from regattn_lib.datasets.retrieval import load_retrieval_dataset
    from regattn_lib.datasets.synthetic import generate_synthetic
    from regattn_lib.experiments import pipeline as P
    from regattn_lib.experiments import studies as S

    class Toy(nn.Module):
        stride = 32

        def preprocess(self, x):
            return x.float() / 255

        def forward(self, x):
            return nn.functional.avg_pool2d(x, 32, ceil_mode=True)

    generate_synthetic("smoke", tmp_path, progress=False, workers=1)
    ds = load_retrieval_dataset("synthetic-smoke", data_root=tmp_path)
    profile = SimpleNamespace(
        datasets=("synthetic-smoke",), image_size=128, levels=2, precision="fp32"
    )
    ctx = SimpleNamespace(profile=profile, backbone=Toy(), device=torch.device("cpu"))
    uniform = lambda k, g: torch.ones(k.shape[:2])  # noqa: E731
    brightest = lambda k, g: k.mean(-1) * 10  # noqa: E731
    monkeypatch.setattr(P, "dataset", lambda c, name: ds)
    monkeypatch.setattr(
        P, "available_attention", lambda c: {P.RMAC: None, "uniform": uniform, "bright": brightest}
    )
    table = S.object_attention(ctx, n_db=5)
    assert list(table["images"]) == ["queries", "queries", "database", "database"]
    assert list(table["method"]) == ["uniform", "bright"] * 2
    db = table[table["images"] == "database"]
    assert (db["n"] == 5).all()  # the first 5 database images that show a landmark
    assert (table[table["images"] == "queries"]["n"] == len(ds.qimlist)).all()
    # uniform weights are R-MAC: the same share, a difference of exactly zero
    u = table[table["method"] == "uniform"]
    assert np.allclose(u["attention share"], u["uniform share"]) and np.allclose(u["difference"], 0)
    assert np.allclose(u["alpha cv"], 0)  # constant weights: no spread within an image
    assert (table[table["method"] == "bright"]["alpha cv"] > 0).all()
    assert ((table["uniform share"] > 0) & (table["uniform share"] <= 1)).all()
    b = table[table["method"] == "bright"]
    assert (b["difference low"] <= b["difference"]).all() and (
        b["difference"] <= b["difference high"]
    ).all()


# ----------------------------------------------------------------- the attention's room
def test_oracle_descriptor_weights_regions_by_their_landmark_share():
    from regattn_lib.experiments.attention_room import CEILING_EPS, oracle_descriptors

    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # two regions, C = 2
    rows = torch.cat([x, x, torch.zeros(1, 2)])  # (2R + 1, C): max, avg, global
    (d,) = oracle_descriptors([rows], [np.array([1.0, 0.0])], None)
    # L2(1.01 * L2(x_0) + 0.01 * L2(x_1)) = L2(1.01 * (0.6, 0.8) + 0.01 * (0, 1))
    v = np.array([1.01 * 0.6, 1.01 * 0.8 + 0.01])
    assert CEILING_EPS == 0.01
    np.testing.assert_allclose(d.numpy(), v / np.linalg.norm(v), rtol=1e-6)
    with pytest.raises(ValueError, match="3 region shares for 2 pooled regions"):
        oracle_descriptors([rows], [np.zeros(3)], None)


def test_mask_supervised_attention_learns_the_marked_regions():
    from regattn_lib.experiments.attention_room import train_mask_attention
    from regattn_lib.training.metric import cache_regions, cached_alpha

    gen = torch.Generator().manual_seed(0)

    def toy(n):  # channel 0 of k marks the landmark's regions, which o_i says are on it
        k = torch.rand(n, 6, 8, generator=gen)
        on = torch.rand(n, 6, generator=gen) > 0.5
        k[..., 0] = on.float() * 3
        x = torch.rand(n, 6, 8, generator=gen)
        return cache_regions(x, k, k.mean(1), None), [o.float().numpy() for o in on]

    (train, ts), (val, vs) = toy(40), toy(20)
    att, info = train_mask_attention(train, ts, val, vs, context=False, hidden=8, steps=200)
    assert info["step"] > 1 and info["val_mse"] < 0.05
    alpha = torch.stack(cached_alpha(val, att))
    on = torch.as_tensor(np.stack(vs)) > 0.5
    # every marked region above every other one; with lr 0 the start stays, far worse
    assert alpha[on].min() > alpha[~on].max() and alpha[on].mean() > 3 * alpha[~on].mean()
    _, none = train_mask_attention(train, ts, val, vs, context=False, hidden=8, steps=1, lr=0.0)
    assert none["val_mse"] > 4 * info["val_mse"]
