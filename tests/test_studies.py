"""The table builders of ``studies``: column naming and scores on small hand-computed cases.

Descriptors are unit vectors in the plane at chosen angles from the query (angle 0), so the
ranking is the order of the angles; average QE with the top 1 turns the query halfway to its
nearest neighbour, which keeps every ranking below unchanged, so the +QE rows equal the plain
ones.
"""

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import studies as S
from regattn_lib.experiments import tables as T
from regattn_lib.extraction.extract import Descriptors
from regattn_lib.extraction.methods import build_head, method_of


def _vectors(angles):
    a = torch.tensor(angles, dtype=torch.float32)
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def _descriptors(db_angles):
    return Descriptors(
        _vectors(db_angles), _vectors([0.0]), [f"d{i}" for i in range(len(db_angles))], ["q"]
    )


@dataclass
class FakeSet:
    name: str
    gnd: list
    distractors: list = field(default_factory=list)
    qimlist: list = field(default_factory=lambda: ["q"])
    notes: list = field(default_factory=list)


def _context(**profile):
    return SimpleNamespace(profile=SimpleNamespace(qe_k=1, **profile))


HEADS = {"A": SimpleNamespace(attention=None), "B": SimpleNamespace(attention=None)}


def test_sota_names_the_distractor_columns_105k_106k_and_scores_each(monkeypatch):
    # database 0..2, the positive is 0; the distractor (index 3) is nearer than A's positive
    angles = {"A": [0.1, 1.0, 2.0], "B": [2.0, 0.1, 1.0]}
    distractor = {"A": 0.05, "B": 0.5}

    def dataset(ctx, name, distractors=False):
        return FakeSet(
            name, [{"ok": [0], "junk": []}], ["x"] if distractors else [], notes=[f"note of {name}"]
        )

    def describe(ctx, ds, heads):
        return {m: _descriptors(angles[m] + [distractor[m]] * bool(ds.distractors)) for m in heads}

    monkeypatch.setattr(S, "sota_heads", lambda ctx, w: HEADS)
    monkeypatch.setattr(P, "dataset", dataset)
    monkeypatch.setattr(P, "describe", describe)
    ctx = _context(datasets=("oxford5k", "paris6k", "synthetic-demo"), distractors=1)
    table, notes = S.sota(ctx, whitening=None)

    assert list(table["method"]) == ["A", "B", "A+QE", "B+QE"]
    assert [c for c in table.columns if " gain" not in c] == [
        "method",
        T.WEIGHTS,
        "oxford5k",
        "paris6k",
        "synthetic-demo",
        "oxford105k",
        "paris106k",
        "synthetic-demo+distractors",
    ]
    assert set(table[T.WEIGHTS]) == {P.NO_ATTENTION}
    # positive first: AP 1; third: (0 + 1/3) / 2; second: (0 + 1/2) / 2; fourth: (0 + 1/4) / 2
    plain = [100.0, 100 / 6, 100.0, 100 / 6]
    distracted = [25.0, 12.5, 25.0, 12.5]
    for col in ("oxford5k", "paris6k", "synthetic-demo"):
        assert table[col].tolist() == pytest.approx(plain)
    for col in ("oxford105k", "paris106k", "synthetic-demo+distractors"):
        assert table[col].tolist() == pytest.approx(distracted)
    # each column's gain over the first row (no R-MAC here), one query: a point interval
    gains = [0.0, 100 / 6 - 100, 0.0, 100 / 6 - 100]
    for col in ("oxford5k", "oxford105k"):
        base = table[col].iloc[0]
        assert table[f"{col} gain"].tolist() == pytest.approx((table[col] - base).tolist())
        assert table[f"{col} gain low"].tolist() == pytest.approx(table[f"{col} gain"].tolist())
    assert table["oxford5k gain"].tolist() == pytest.approx(gains)
    assert notes[:3] == ["note of oxford5k", "note of paris6k", "note of synthetic-demo"]
    assert "CAM is left out" in notes[-1]


def test_sota_without_distractors_has_only_the_plain_columns(monkeypatch):
    monkeypatch.setattr(S, "sota_heads", lambda ctx, w: {"A": HEADS["A"]})
    monkeypatch.setattr(
        P, "dataset", lambda ctx, name, distractors=False: FakeSet(name, [{"ok": [0], "junk": []}])
    )
    monkeypatch.setattr(P, "describe", lambda ctx, ds, heads: {"A": _descriptors([0.1, 1.0])})
    table, _ = S.sota(_context(datasets=("oxford5k",), distractors=None), whitening=None)
    assert [c for c in table.columns if " gain" not in c] == ["method", T.WEIGHTS, "oxford5k"]


def test_revisited_reports_map_and_mp10_per_protocol(monkeypatch):
    # one query; easy = [0], hard = [2], junk = [1]
    gnd = [{"easy": [0], "hard": [2], "junk": [1]}]
    # R-MAC ranks the database 0, 1, 2, 3; ours 3, 2, 1, 0
    angles = {"R-MAC": [0.1, 0.5, 1.0, 2.0], "Ours": [2.0, 1.0, 0.5, 0.1]}
    heads = {**{k: SimpleNamespace(attention=None) for k in ("R-MAC", "Ours")}, "MAC": None}
    monkeypatch.setattr(S, "sota_heads", lambda ctx, w: heads)
    monkeypatch.setattr(P, "dataset", lambda ctx, name: FakeSet(name, gnd))
    monkeypatch.setattr(P, "describe", lambda ctx, ds, h: {m: _descriptors(angles[m]) for m in h})
    table = S.revisited(_context(revisited=("roxford5k",)), whitening=None)

    assert list(table["method"]) == ["R-MAC", "Ours", "R-MAC+QE", "Ours+QE"]
    assert set(table["dataset"]) == {"roxford5k"}
    rows = table.set_index("method")
    for m in ("R-MAC", "R-MAC+QE"):  # every positive ahead of everything but junk
        assert rows.loc[m, ["easy mAP", "medium mAP", "hard mAP"]].tolist() == [100.0] * 3
        assert rows.loc[m, ["easy mP@10", "medium mP@10", "hard mP@10"]].tolist() == [100.0] * 3
    for m in ("Ours", "Ours+QE"):
        # easy: 0 is 4th with 1 (junk) and 2 (hard: junk here) ahead -> 2nd: AP (0 + 1/2) / 2;
        # mP@10 over the first 2: 1/2. medium: 2 is 2nd, 0 is 4th with junk 1 ahead -> 3rd:
        # AP ((0 + 1/2) + (1/2 + 2/3)) / 2 / 2 = 5/12; mP@10 over the first 3: 2/3.
        # hard: 2 is 2nd (3 ahead of it): as easy.
        assert rows.loc[m, ["easy mAP", "medium mAP", "hard mAP"]].tolist() == pytest.approx(
            [25.0, 500 / 12, 25.0]
        )
        assert rows.loc[m, ["easy mP@10", "medium mP@10", "hard mP@10"]].tolist() == pytest.approx(
            [50.0, 200 / 3, 50.0]
        )
    assert np.all(table[T.WEIGHTS] == P.NO_ATTENTION)


def test_a_trained_attention_counts_once_per_seed(monkeypatch):
    from regattn_lib.core.attention import RegionalAttention

    models = [RegionalAttention(2, hidden=2, context=False) for _ in range(3)]
    for m in models:
        m.provenance = P.TRAINED
    monkeypatch.setattr(P, "attention_seeds", lambda ctx: {P.RMAC: [None], P.REGIONAL: models})
    heads = {
        P.RMAC: build_head("rmac", levels=1),
        P.REGIONAL: build_head(method_of(models[0]), levels=1, attention=models[0]),
    }
    expanded, groups = S.expand_seeds(None, heads)
    assert groups == {
        P.RMAC: [P.RMAC],
        P.REGIONAL: [P.REGIONAL, f"{P.REGIONAL}|seed1", f"{P.REGIONAL}|seed2"],
    }
    assert [expanded[k].attention for k in groups[P.REGIONAL]] == models

    # the positive (database 0) comes 1st, 2nd and 3rd under the three seeds: APs 100,
    # (0 + 1/2) / 2 = 25 and (0 + 1/3) / 2 = 16.7 (revisitop's interpolation, as above)
    angles = {
        P.RMAC: [0.1, 1.0, 2.0],
        P.REGIONAL: [0.1, 1.0, 2.0],
        f"{P.REGIONAL}|seed1": [0.5, 0.1, 2.0],
        f"{P.REGIONAL}|seed2": [0.5, 0.2, 0.1],
    }
    monkeypatch.setattr(P, "describe", lambda ctx, ds, h: {k: _descriptors(angles[k]) for k in h})
    scores = S.seeded_score(
        None, FakeSet("x", [{"ok": [0], "junk": []}]), heads, protocols=["classic"]
    )
    seeded = scores[P.REGIONAL]["protocols"]["classic"]
    assert scores[P.REGIONAL]["seeds"] == 3 and scores[P.RMAC]["seeds"] == 1
    assert seeded["map_seeds"] == pytest.approx([100.0, 25.0, 50 / 3])
    assert seeded["map"] == pytest.approx((100 + 25 + 50 / 3) / 3)
    assert seeded["aps"].shape == (3, 1)
    gains = T.gain_intervals(
        {m: s["protocols"]["classic"]["aps"] for m, s in scores.items()}, P.RMAC, "x"
    )
    assert gains["x gain"][1] == pytest.approx((0 - 75 - 250 / 3) / 3)
    assert gains["x gain seed sd"][1] == pytest.approx(np.std([0, -75, -250 / 3], ddof=1))


def test_training_summary_reports_the_kept_weights_and_the_last_validation(tmp_path):
    import pandas as pd

    history = pd.DataFrame(
        {"step": [25, 50, 75], "val_loss": [0.6, 0.5, 0.7], "val_acc": [0.8, 0.85, 0.84]}
    )
    torch.save({"config": {"selected_step": 50}}, tmp_path / "attention.pt")
    selected = SimpleNamespace(
        history=history, steps=75, finished=True, artefact=tmp_path / "attention.pt"
    )
    unfinished = SimpleNamespace(history=history, steps=75, finished=False, artefact=None)
    table = T.training_summary({"regional": selected, "context": unfinished}).set_index("stage")
    assert table.loc["regional", "kept step"] == 50
    assert (
        table.loc["regional", "kept val_loss"] == 0.5
        and table.loc["regional", "kept val_acc"] == 0.85
    )
    assert table.loc["regional", "last val_loss"] == 0.7
    # no artefact yet: the last iteration's weights are what there is
    assert table.loc["context", "kept step"] == 75 and table.loc["context", "kept val_loss"] == 0.7


def test_describe_series_runs_every_head_of_notebooks_03_to_06_in_one_pass(monkeypatch):
    """The RPN ablation's heads carry the ablation's own labels: the one pass must keep both
    (a merge by label would drop the RPN's and leave notebook 03 a second backbone pass), and
    the SOTA, RPN and whitening-table heads go only to the tables' datasets, not to the
    revisited-only ones."""
    grid = {"R-MAC + PCA": SimpleNamespace(attention=None, tag="grid")}
    rpn = {"R-MAC + PCA": SimpleNamespace(attention=None, tag="rpn")}
    sota = {"MAC": SimpleNamespace(attention=None, tag="mac")}
    monkeypatch.setattr(S, "series_heads", lambda ctx, w: dict(grid))
    monkeypatch.setattr(S, "rpn_heads", lambda ctx, w: (dict(rpn), "rpn label"))
    monkeypatch.setattr(S, "sota_heads", lambda ctx, w: dict(sota))
    # the whitening table's heads (notebook 03) share the pass too
    white = {"R-MAC, no whitening": SimpleNamespace(attention=None, tag="white")}
    monkeypatch.setattr(S, "whitening_study_heads", lambda ctx: (dict(white), {}))
    monkeypatch.setattr(P, "dataset", lambda ctx, name: name)
    calls = {}
    monkeypatch.setattr(
        P, "describe", lambda ctx, ds, heads, progress=True: calls.setdefault(ds, heads)
    )
    ctx = _context(datasets=("set-a",), revisited=("set-a", "set-r"))
    S.describe_series(ctx, whitening=None)
    assert list(calls) == ["set-a", "set-r"]  # one pass per set
    assert sorted(h.tag for h in calls["set-a"].values()) == ["grid", "mac", "rpn", "white"]
    assert [h.tag for h in calls["set-r"].values()] == ["grid"]
