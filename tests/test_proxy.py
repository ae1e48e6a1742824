"""The classification proxy: its masks, the oracle, the room table and the design rule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from regattn_lib.datasets import synthetic as syn
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import proxy as PX
from regattn_lib.experiments.profiles import PROFILES
from regattn_lib.training.augment import val_crop
from tests.toys import ToyBackbone


def test_val_crop_mask_lies_over_the_validation_crop():
    rng = np.random.default_rng(0)
    mask = np.zeros((90, 130), bool)
    mask[20:70, 30:100] = True
    mask[rng.random(mask.shape) < 0.05] = True
    image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    crop = val_crop(image, 64, 60)
    want = crop[0].numpy() >= 128
    got = PX.val_crop_mask(mask, 64, 60)
    assert got.shape == (60, 60)
    # the image's 8-bit rounding may flip only pixels whose interpolated value is 0.5 exactly
    assert (got != want).mean() < 0.002
    assert got.sum() > 0.3 * got.size


def test_oracle_alpha_is_the_mask_share_plus_eps_rescaled_to_mean_one():
    alpha = PX.oracle_alpha(np.array([[0.0, 0.49, 0.99]]))
    raw = np.array([0.01, 0.5, 1.0])
    np.testing.assert_allclose(alpha.numpy()[0], raw / raw.mean(), rtol=1e-6)
    assert float(alpha.mean()) == pytest.approx(1.0)


def test_per_image_scores_by_hand():
    # two regions, two channels: x_1 = (1, 0), x_2 = (0, 1); the fc is the identity
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    g = x.mean(1)
    fc = torch.nn.Linear(2, 2, bias=False)
    fc.weight.data = torch.eye(2)
    y = torch.tensor([0])
    loss, correct = PX.per_image_scores(fc, (x, x, g), y)  # alpha = 1: logits (0.5, 0.5)
    assert loss[0] == pytest.approx(math.log(2))
    loss, correct = PX.per_image_scores(fc, (x, x, g), y, alpha=torch.tensor([[2.0, 0.0]]))
    # mean_i alpha_i x_i = (1, 0): cross-entropy log(1 + e^-1), right
    assert loss[0] == pytest.approx(math.log(1 + math.exp(-1)))
    assert correct[0] == 1.0
    loss, correct = PX.per_image_scores(fc, (x, x, g), y, alpha=torch.tensor([[0.0, 2.0]]))
    assert loss[0] == pytest.approx(math.log(1 + math.exp(1)))
    assert correct[0] == 0.0


def _study(rows):
    return pd.DataFrame(
        [{"design": d, "row": r, "val_loss": loss, "val_acc": acc} for d, r, loss, acc in rows]
    )


def test_chosen_design_keeps_the_largest_oracle_drop_among_designs_the_fc_can_classify():
    study = _study(
        [
            ("unreadable", PX.FC_ALONE, 2.0, 0.3),  # the largest drop, but the fc fails
            ("unreadable", PX.ORACLE, 0.5, 0.9),
            ("small room", PX.FC_ALONE, 0.6, 0.8),
            ("small room", PX.ORACLE, 0.5, 0.82),
            ("large room", PX.FC_ALONE, 0.9, 0.7),
            ("large room", PX.ORACLE, 0.6, 0.8),
        ]
    )
    assert PX.chosen_design(study) == "large room"
    with pytest.raises(ValueError, match="validation accuracy"):
        PX.chosen_design(study[study["design"] == "unreadable"])


def test_database_design_writes_views_distractors_and_masks_and_leaves_other_splits(tmp_path):
    cfg = replace(syn.tiny_config(), n_cls_train=4, cls_views="whole", cls_distractor_prob=0.0)
    sp = syn.generate_synthetic(cfg, tmp_path, progress=False, workers=1)
    others = {
        part: (getattr(sp, attr) / "meta.json").read_text()
        for part, attr in syn.SPLIT_FOLDERS.items()
        if part != "classification"
    }
    before = syn.split_hash_lines(sp)
    proxy = replace(cfg, cls_views="database", cls_distractor_prob=1.0)
    with pytest.warns(UserWarning, match="cls") as caught:
        syn.generate_synthetic(proxy, tmp_path, progress=False, workers=1)
    assert len(caught) == 1  # only the classification split was regenerated
    after = syn.split_hash_lines(sp)
    for part in others:
        assert after[part] == before[part]
        assert (getattr(sp, syn.SPLIT_FOLDERS[part]) / "meta.json").read_text() == others[part]
    assert after["classification"] != before["classification"]
    import json

    counts = json.loads((sp.cls_dir / "meta.json").read_text())["counts"]
    # per class: 4 training images -> 2 easy + 2 hard, 2 validation -> 1 + 1
    assert counts["views"] == {"whole": 0, "easy": 6, "hard": 6, "junk": 0}
    assert counts["with_distractor"] == 12
    img = sp.cls_dir / "val" / "class_01" / "class_01_0001.jpg"
    mask = syn.load_landmark_mask(sp.cls_dir, syn.cls_mask_name(sp.cls_dir, img))
    from PIL import Image

    with Image.open(img) as im:
        assert mask.shape == (im.height, im.width)
    assert 0 < mask.mean() < 1
    with pytest.raises(ValueError, match="not inside"):
        syn.cls_mask_name(sp.cls_dir, tmp_path / "elsewhere.jpg")


def test_bad_proxy_settings_are_named():
    with pytest.raises(ValueError, match="cls_views"):
        replace(syn.tiny_config(), cls_views="crowded")
    with pytest.raises(ValueError, match="cls_view_mix"):
        replace(syn.tiny_config(), cls_view_mix=(0.5, 0.6, 0.0))
    with pytest.raises(ValueError, match="cls_distractor_prob"):
        replace(syn.tiny_config(), cls_distractor_prob=1.5)
    with pytest.raises(ValueError, match="unknown synthetic parts"):
        syn.generate_synthetic(syn.tiny_config(), "/nonexistent", parts=("cls", "nope"))


def test_proxy_study_reproduces_what_training_validated(tmp_path):
    profile = replace(PROFILES["smoke"], synthetic=syn.tiny_config(), image_size=128)
    ctx = P.setup(
        profile,
        data_root=tmp_path / "data",
        results=tmp_path / "results",
        device="cpu",
        overrides={
            "train": {
                "fc_iterations": 6,
                "recipe": {
                    "iterations": 6,
                    "checkpoint_every": 3,
                    "resize_min": 96,
                    "resize_max": 100,
                    "crop": 96,
                    "val_resize": 96,
                    "val_crop": 96,
                },
            }
        },
    ).with_backbone(ToyBackbone())
    study = PX.proxy_study(ctx, {"whole": {"cls_views": "whole"}, "database": {}}, ("regional",))
    assert list(study["design"].unique()) == ["whole", "database"]
    assert set(study["attention lr"]) == {1e-3}  # the smoke recipe's: the authors' rate
    for design in ("whole", "database"):
        rows = study[study["design"] == design].set_index("row")
        assert list(rows.index) == [
            PX.FC_ALONE,
            PX.ORACLE,
            "+ regional attention (paper's recipe)",
        ]
        # the fc alone and the kept attention are exactly what training validated
        slug = PX._slug(design)
        for row, run in (
            (PX.FC_ALONE, "fc"),
            ("+ regional attention (paper's recipe)", "regional-lr0.001"),
        ):
            hist = pd.read_csv(ctx.dirs["models"] / "proxy" / slug / run / "history.csv")
            val = hist.dropna(subset=["val_loss"])
            # the smoke recipe keeps the best validated weights of either stage
            assert rows.loc[row, "val_loss"] == pytest.approx(val["val_loss"].min(), rel=1e-5)
        assert rows.loc[PX.FC_ALONE, "acc gain"] == 0
        assert rows.loc[PX.ORACLE, "acc gain low"] <= rows.loc[PX.ORACLE, "acc gain"]
        assert 0 < rows.loc[PX.ORACLE, "mean object share"] < 1
    assert (tmp_path / "data" / "train" / "synthetic-tiny-proxy-database-cls" / "masks").is_dir()
