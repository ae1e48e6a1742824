"""The paper profile's attention: released context weights, the regional model trained here
(fc first when the backbone has none), labelled rows, and a plan said before training."""

import shutil

import pandas as pd
import pytest
import torch
from torch import nn

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import tables as T
from regattn_lib.experiments import training_plan as TP
from regattn_lib.experiments.reports import PAPER_ABLATION


class _TinyBackbone(nn.Module):
    name = "tiny"
    channels = 8

    def __init__(self, with_fc: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=32, padding=1)
        self.fc = nn.Linear(8, 1000) if with_fc else None
        self.calls = 0

    def features(self, x):
        self.calls += 1
        return self.conv(x.float())


def _fake_imagenet(root, n_train: int, n_val: int, seed: int) -> list[str]:
    """A two-class ImageNet layout of random 64 x 80 JPEGs; returns the class ids."""
    import numpy as np
    from PIL import Image

    wnids = ["n01440764", "n01443537"]
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in wnids:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{i}.JPEG")
    return wnids


def _ctx(tmp_path, profile="paper", with_fc=False, **overrides):
    ctx = P.setup(
        profile,
        data_root=tmp_path / "data",
        results=tmp_path / "res",
        device="cpu",
        overrides=overrides,
    )
    ctx = ctx.with_backbone(_TinyBackbone(with_fc))  # skip building ResNet-101
    return ctx


def _place_official(ctx, official_weights):
    dest = ctx.data_root / "weights" / official_weights.name
    dest.parent.mkdir(parents=True)
    shutil.copyfile(official_weights, dest)


def test_paper_trains_only_the_regional_model(tmp_path):
    ctx = _ctx(tmp_path)
    assert TP.kinds_to_train(ctx) == ["regional"]
    with pytest.raises(ValueError, match="released context weights|released context"):
        TP.training_plan(ctx, ["context"])
    smoke = _ctx(tmp_path, "smoke")
    assert TP.kinds_to_train(smoke) == ["regional", "context"]


def test_route_a_without_fc_and_route_b_with_it(tmp_path):
    plan_a = TP.training_plan(_ctx(tmp_path, with_fc=False, train={"recipe": {"crop": 64}}))
    assert plan_a.fc_iterations == plan_a.iterations == 16_000
    assert len(plan_a.deviations) == 1 and "no ImageNet classifier" in plan_a.deviations[0]
    assert plan_a.seconds_per_iteration is not None and plan_a.seconds_per_iteration > 0
    assert plan_a.estimated_seconds == pytest.approx(32_000 * plan_a.seconds_per_iteration)
    plan_b = TP.training_plan(_ctx(tmp_path, with_fc=True, train={"recipe": {"crop": 64}}))
    assert plan_b.fc_iterations == 0 and plan_b.deviations == []
    assert plan_b.estimated_seconds == pytest.approx(16_000 * plan_b.seconds_per_iteration)
    assert "regional attention for 16000 iterations" in plan_b.describe(torch.device("cpu"))


def test_released_weights_are_never_replaced_by_a_trained_file(tmp_path, official_weights):
    ctx = _ctx(tmp_path)
    _place_official(ctx, official_weights)
    # a stray trained context file in models/ must not shadow the authors' weights
    trained = RegionalAttention(2048, 64, context=True)
    torch.save({"state_dict": trained.state_dict()}, P.attention_file(ctx, "context"))
    att = P.load_attention(ctx, "context")
    assert P.provenance(att) == P.RELEASED
    official = torch.load(official_weights, map_location="cpu", weights_only=True)
    assert torch.equal(
        att.state_dict()["conv_att_1.weight"].flatten(), official["conv_att_1.weight"].flatten()
    )
    with pytest.raises(FileNotFoundError, match="released only the context-aware"):
        P.load_attention(ctx, "regional")
    assert P.provenance(None) == P.NO_ATTENTION


def test_notebook_training_without_imagenet_says_so_and_trains_nothing(
    tmp_path, capsys, official_weights
):
    ctx = _ctx(tmp_path)
    _place_official(ctx, official_weights)
    assert not TP.can_train(ctx)
    assert TP.notebook_training(ctx) == {}
    out = capsys.readouterr().out
    assert "not training" in out and "released context-aware" in out
    assert ctx.backbone.calls == 0 and TP.training_notes(ctx) == []


def test_tables_label_every_row_and_keep_paper_only_rows(tmp_path):
    ours = pd.DataFrame(
        {
            "method": ["R-MAC + PCA", "+ context awareness"],
            "weights": [P.NO_ATTENTION, P.RELEASED],
            "oxford5k": [70.0, 75.0],
            "paris6k": [85.0, 86.0],
        }
    )
    table, notes = T.compare_to_paper(ours, PAPER_ABLATION, ["oxford5k", "paris6k"])
    assert list(table.columns[:2]) == ["method", "weights"] and notes == []
    by = table.set_index("method")
    assert by.loc["+ regional attention", "weights"] == T.PAPER_ONLY  # not computed here
    assert by.loc["+ context awareness", "weights"] == P.RELEASED
    assert by.loc["+ context awareness", "oxford5k diff"] == pytest.approx(75.0 - 76.8)


def test_weights_column_is_carried_not_compared_on_other_datasets():
    ours = pd.DataFrame(
        {
            "method": ["R-MAC + PCA", "+ context awareness"],
            "weights": [P.NO_ATTENTION, P.TRAINED],
            "synthetic": [40.0, 42.0],
            "time_s": [0.1, 0.2],
        }
    )
    table, notes = T.compare_to_paper(
        ours, PAPER_ABLATION, ["weights", "synthetic"], extra=["weights", "time_s"]
    )
    assert list(table["weights"][:2]) == [P.NO_ATTENTION, P.TRAINED] and len(notes) == 1
    assert "weights ours" not in table.columns and "time_s ours" in table.columns
    assert table.set_index("method").loc["+ context awareness", "synthetic ours gain"] == 2.0


def test_skipped_images_are_reported_beside_the_tables_with_a_note(tmp_path):
    from regattn_lib.extraction.extract import Descriptors
    from regattn_lib.extraction.image_stream import SkippedImage

    ctx = P.setup("smoke", data_root=tmp_path / "d", results=tmp_path / "r", device="cpu")
    clean = Descriptors(torch.ones(3, 2), torch.ones(1, 2), ["a", "b", "c"], ["q"])
    assert P.report_skipped(ctx, "set", clean) is None and P.skipped_notes(ctx) == []
    bad = SkippedImage(7, "cut", "/x/cut.jpg", "truncated", "distractors")
    d = Descriptors(torch.ones(8, 2), torch.ones(1, 2), list("abcdefgh"), ["q"], skipped=[bad])
    csv = P.report_skipped(ctx, "oxford5k+revisitop1m", d)
    rows = pd.read_csv(csv)
    assert list(rows["name"]) == ["cut"] and list(rows["index"]) == [7]
    P.report_skipped(ctx, "whitening-sfm", [bad.to_dict(), {**bad.to_dict(), "index": 2}])
    notes = P.skipped_notes(ctx)
    assert len(notes) == 2 and "oxford5k+revisitop1m: 1 image(s)" in notes[0]
    assert "whitening-sfm: 2 image(s)" in notes[1]


def test_paper_training_reads_imagenet_from_the_variable(tmp_path, monkeypatch):
    """A fake two-class ImageNet named by $REGATTN_IMAGENET (the data root holds none): route
    (a) trains a fc, then the regional attention under it, on those classes."""

    from regattn_lib.datasets.imagenet import IMAGENET_ENV
    from regattn_lib.training.checkpoint import load_trained_attention

    wnids = _fake_imagenet(tmp_path / "imagenet", n_train=3, n_val=1, seed=0)
    monkeypatch.setenv(IMAGENET_ENV, str(tmp_path / "imagenet"))
    sizes = dict(crop=64, resize_min=64, resize_max=64, val_resize=64, val_crop=64)
    recipe = dict(sizes, iterations=2, val_images=2, checkpoint_every=2, batch_size=2, hidden=4)
    recipe.update(accumulation=1, num_workers=0, progress=False, plot=False)
    ctx = _ctx(tmp_path, train={"recipe": recipe})
    assert TP.can_train(ctx) and TP.kinds_to_train(ctx) == ["regional"]
    runs = TP.train_profile_attention(ctx)
    assert set(runs) == {"fc", "regional"} and runs["regional"].finished
    att = load_trained_attention(P.attention_file(ctx, "regional"))
    assert att.training_config["classes"] == wnids and att.training_config["steps"] == 2


def test_seeds_train_one_model_each_and_the_regularisation_study_compares_variants(
    tmp_path, monkeypatch, official_weights
):

    from regattn_lib.datasets.imagenet import IMAGENET_ENV
    from regattn_lib.experiments.regularisation import regularisation_study

    _fake_imagenet(tmp_path / "imagenet", n_train=3, n_val=2, seed=1)
    monkeypatch.setenv(IMAGENET_ENV, str(tmp_path / "imagenet"))
    sizes = dict(crop=64, resize_min=64, resize_max=64, val_resize=64, val_crop=64)
    recipe = dict(sizes, iterations=4, val_images=4, checkpoint_every=2, batch_size=2, hidden=4)
    recipe.update(accumulation=1, num_workers=0, progress=False, plot=False, lr=0.5)
    recipe.update(feature_cache_views=1)
    ctx = _ctx(tmp_path, train={"recipe": recipe, "seeds": (0, 1)})
    _place_official(ctx, official_weights)
    runs = TP.train_profile_attention(ctx)
    assert set(runs) == {"fc", "regional", "regional seed 1"}
    first, second = P.attention_file(ctx, "regional"), P.attention_file(ctx, "regional", 1)
    assert first.name == "attention_regional.pt" and second.name == "attention_regional_seed1.pt"
    models = P.attention_seeds(ctx)[P.REGIONAL]
    assert len(models) == 2
    a, b = (m.conv_att_1.weight for m in models)
    assert not torch.equal(a, b)  # another initialisation and sampling
    # both seeds trained on one set of cached views: the backbone ran for one cache only
    assert len(list((ctx.cache_dir / "train_features").glob("*"))) == 1

    variants = {"recipe": {}, "dropout": {"input_dropout": 0.5}}
    table = regularisation_study(ctx, variants, iterations=4)
    assert list(table["variant"]) == ["fc alone (alpha = 1)", "recipe", "dropout"]
    assert table["settings"].tolist()[1:] == ["as the profile", "input_dropout=0.5"]
    assert table["best at iteration"].tolist()[0] == 0  # the fc's own loss: the starting point
    assert (table["best at iteration"][1:].isin([2, 4])).all()
    assert (table["best val_loss"] <= table["last val_loss"] + 1e-12).all()
