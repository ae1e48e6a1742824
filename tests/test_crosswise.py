"""Crosswise PCA-whitening (issue 23, the paper-quick profile): each test set is whitened with
statistics learned on the other set's database images, never on its own."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from toys import ToyBackbone

from regattn_lib.core.whitening import CrosswiseWhitening, PCAWhitening
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments.preflight import profile_download_bytes, profile_keys
from regattn_lib.experiments.profiles import PAPER, PAPER_QUICK, get_profile
from regattn_lib.extraction import methods


def _tiny_set(root: Path, name: str, n: int, seed: int, tint: tuple[int, int, int]) -> list[str]:
    """A classic-protocol test set of ``n`` block-noise JPEGs with its own colour cast."""
    folder = root / "test" / name
    (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"{name}_{i:02d}" for i in range(n)]
    for nm in names:
        blocks = rng.integers(0, 128, (5, 5, 3)) + np.array(tint)
        im = np.kron(blocks, np.ones((32, 32, 1)))[:128, :160].clip(0, 255).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(im)).save(folder / "jpg" / f"{nm}.jpg", quality=95)
    gnd = [{"bbx": [0.0, 0.0, 150.0, 120.0], "ok": [0, 1], "junk": []}]
    cfg = {"imlist": names, "qimlist": [names[0]], "gnd": gnd}
    (folder / f"gnd_{name}.pkl").write_bytes(pickle.dumps(cfg))
    return names


@pytest.fixture
def crosswise_ctx(tmp_path):
    data = tmp_path / "data"
    _tiny_set(data, "seta", 6, seed=1, tint=(120, 0, 0))
    _tiny_set(data, "setb", 7, seed=2, tint=(0, 0, 120))
    prof = get_profile(
        "smoke",
        datasets=("seta", "setb"),
        revisited=(),
        synthetic=None,
        whitening_set="crosswise",
        whitening_partners=(("seta", "setb"), ("setb", "seta")),
        whitening_image_size=128,
        whitening_levels=2,
        whitening_dims=None,
        whitening_max_images=None,
    )
    return P.Context(
        prof, data, tmp_path / "res", torch.device("cpu"), backbone_factory=ToyBackbone
    )


def test_crosswise_whitening_is_learned_on_the_other_set_only(crosswise_ctx, monkeypatch):
    ctx = crosswise_ctx
    seen: list[list[str]] = []
    real = P.accumulate_images

    def spy(paths, *a, **k):
        seen.append(sorted(Path(p).stem for p in paths))
        return real(paths, *a, **k)

    monkeypatch.setattr(P, "accumulate_images", spy)
    w = P.learn_whitening(ctx, progress=False)
    assert isinstance(w, CrosswiseWhitening)
    assert w.partners == {"seta": "setb", "setb": "seta"}
    # one pass per partner set, each over that set's images alone
    assert sorted(seen) == [
        [f"seta_{i:02d}" for i in range(6)],
        [f"setb_{i:02d}" for i in range(7)],
    ]
    wa, wb = w.for_dataset("seta"), w.for_dataset("setb")
    assert wa.meta["set"] == "setb" and wa.meta["n_images"] == 7
    assert wb.meta["set"] == "seta" and wb.meta["n_images"] == 6
    # the same as learning on the other set directly, and not what the set's own images give
    on_b = P.learn_whitening(P.whitening_context(ctx, "setb"), progress=False)
    on_a = P.learn_whitening(P.whitening_context(ctx, "seta"), progress=False)
    assert torch.equal(wa.projection, on_b.projection) and torch.equal(wa.mean, on_b.mean)
    assert torch.equal(wb.projection, on_a.projection)
    assert not torch.allclose(wa.mean, wb.mean, atol=1e-3)  # the two whitenings differ
    assert not torch.allclose(wa.projection, wb.projection, atol=1e-3)
    assert len(seen) == 2  # both came from the cache
    # each head gets the evaluated set's whitening: the other set's
    head = methods.build_head("rmac", levels=2, whitening=w)
    assert P.heads_for_dataset({"r": head}, "seta")["r"].whitening is wa
    assert P.heads_for_dataset({"r": head}, "setb")["r"].whitening is wb
    with pytest.raises(TypeError, match="for_dataset"):
        w.apply(torch.zeros(1, 4))
    # descriptors of each set are whitened with the other set's whitening
    for name, other in (("seta", on_b), ("setb", on_a)):
        ds = P.dataset(ctx, name)
        got = P.describe(ctx, ds, {"r": head}, progress=False)["r"]
        ref = P.describe(ctx, ds, {"r": methods.build_head("rmac", levels=2, whitening=other)})
        torch.testing.assert_close(got.db, ref["r"].db)
    # a truncated crosswise whitening stays per dataset
    assert w.truncate(2).for_dataset("seta").out_dim == 2


def test_crosswise_refuses_a_set_whitened_on_its_own_images(crosswise_ctx):
    bad = crosswise_ctx.profile.with_overrides(whitening_partners=[["seta", "seta"]])
    with pytest.raises(ValueError, match="same"):
        P.whitening_partners(bad)
    with pytest.raises(ValueError, match="no whitening partner for 'setb'"):
        P.whitening_partners(
            crosswise_ctx.profile.with_overrides(whitening_partners=[["seta", "setb"]])
        )
    # the revisited sets hold the classic sets' images
    with pytest.raises(ValueError, match="same"):
        P.whitening_partners(
            PAPER_QUICK.with_overrides(whitening_partners=[["oxford5k", "roxford5k"]])
        )
    assert P.whitening_partners(PAPER_QUICK) == {
        "oxford5k": "paris6k",
        "paris6k": "oxford5k",
        "roxford5k": "paris6k",
        "rparis6k": "oxford5k",
    }


def test_paper_quick_profile_requests_exactly_the_needed_files():
    keys = profile_keys(PAPER_QUICK)
    assert sorted(keys) == sorted(
        [
            "gnd_oxford5k",
            "gnd_paris6k",
            "gnd_roxford5k",
            "gnd_rparis6k",
            "images_oxford5k",
            "images_paris6k_1",
            "images_paris6k_2",
            "caffe_resnet101_features",
            "official_attention",
            "rpn_fasterrcnn_coco",
        ]
    )
    n, fetch, extract = profile_download_bytes(PAPER_QUICK)
    assert n == 10 and 4.5e9 < fetch < 5.5e9 and extract < 5e9  # "about 5 GB"
    assert profile_download_bytes(PAPER)[1] > 60e9
    # the same backbone, sets, sizes and released weights as the paper profile: its files are
    # at the same places, so a later paper run reuses them
    assert set(keys) < set(profile_keys(PAPER))
    for field in ("backbone", "datasets", "revisited", "image_size", "levels", "precision"):
        assert getattr(PAPER_QUICK, field) == getattr(PAPER, field), field
    assert PAPER_QUICK.distractors is None and PAPER_QUICK.train.train_set is None
    assert any("crosswise" in n and "PCA Landmark" in n for n in PAPER_QUICK.notes)
    # every field reachable by overrides, as for the other profiles
    p = get_profile("paper-quick", {"whitening_set": "sfm120k", "train": {"train_set": "imagenet"}})
    assert p.whitening_set == "sfm120k" and p.train.train_set == "imagenet"


def test_untrained_rows_point_to_the_full_profile(tmp_path):
    ctx = P.Context(PAPER_QUICK, tmp_path, tmp_path, torch.device("cpu"))
    table = pd.DataFrame(
        {
            "method": [P.RMAC, P.CONTEXT],
            "weights": [P.NO_ATTENTION, P.RELEASED],
            "oxford5k": [1.0, 2.0],
        }
    )
    out = P.untrained_rows(ctx, table)
    assert list(out["method"]) == [P.RMAC, P.REGIONAL, P.CONTEXT]
    row = out[out["method"] == P.REGIONAL].iloc[0]
    assert np.isnan(row["oxford5k"]) and "--profile paper" in row["weights"]
    assert "needs training" in row["weights"]
    full = P.Context(PAPER, tmp_path, tmp_path, torch.device("cpu"))
    assert P.untrained_rows(full, table) is table


def test_pca_whitening_unchanged_for_single_set_profiles():
    assert PAPER.whitening_set == "sfm120k" and PAPER.whitening_partners == ()
    assert not isinstance(PCAWhitening, CrosswiseWhitening)
