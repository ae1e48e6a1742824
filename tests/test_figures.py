"""The figure helpers that decide what is drawn: the heat map, alpha relative to its mean, the
rows of the attention-map figure and the ranked lists' names."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from regattn_lib.experiments import figures as F
from regattn_lib.experiments import pipeline as P
from regattn_lib.extraction.extract import Descriptors


def test_attention_heatmap_averages_overlapping_regions():
    # two regions on a 2 x 3 image: (x, y, w, h) = (0, 0, 2, 2) with alpha 1, (1, 0, 2, 1) with 3
    heat = F.attention_heatmap(2, 3, np.array([[0, 0, 2, 2], [1, 0, 2, 1]]), np.array([1.0, 3.0]))
    expected = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(heat, expected)


def test_relative_alpha_is_one_for_rmac_and_scale_free():
    np.testing.assert_allclose(F.relative_alpha(np.ones(7)), np.ones(7))
    a = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3
    np.testing.assert_allclose(F.relative_alpha(a), [1 / 3, 2 / 3, 1.0, 2.0])
    np.testing.assert_allclose(F.relative_alpha(10 * a), F.relative_alpha(a))
    np.testing.assert_allclose(F.relative_alpha(np.zeros(3)), np.ones(3))


def test_attention_rows_take_context_first_and_skip_missing_routes():
    atts = {P.RMAC: None, P.REGIONAL: "r", P.CONTEXT: "c", P.METRIC_REGIONAL: "mr"}
    rows = F.attention_rows(atts)
    assert list(rows) == [P.RMAC, P.CONTEXT, P.METRIC_REGIONAL]
    assert rows[P.CONTEXT] == "c" and rows[P.METRIC_REGIONAL] == "mr"
    assert list(F.attention_rows({P.RMAC: None, P.REGIONAL: "r"})) == [P.RMAC, P.REGIONAL]


@pytest.fixture
def tiny_dataset(tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(p)
        paths.append(p)
    return SimpleNamespace(
        qimlist=["q0"],
        query_paths=[paths[0]],
        query_bbxs=[None],
        db_paths=paths[1:],
        gnd=[{"ok": [2], "junk": []}],
    )


def _desc(query_axis: int) -> Descriptors:
    db = torch.eye(3)  # database image i is axis i
    return Descriptors(db, db[[query_axis]], ["a", "b", "c"], ["q0"])


def test_ranked_lists_one_figure_per_pick_and_method_present(tiny_dataset):
    # R-MAC's query matches database image 2 (the positive), ours' matches image 0 (a negative)
    descs = {"R-MAC": _desc(2), "Ours": _desc(0)}
    figs = F.ranked_lists(tiny_dataset, descs, [("best", "x", 0), ("worst", "y", 0)], k=2)
    assert sorted(figs) == [
        "ranked_best_ours",
        "ranked_best_r-mac",
        "ranked_worst_ours",
        "ranked_worst_r-mac",
    ]
    first = {n: f.axes[1].get_title() for n, f in figs.items()}  # axes[0] is the query
    assert first["ranked_best_r-mac"] == "positive" and first["ranked_best_ours"] == "negative"
    descs["Ours (metric learning)"] = _desc(2)
    figs = F.ranked_lists(tiny_dataset, descs, [("best", "x", 0)], k=2)
    assert sorted(figs) == ["ranked_best_ours", "ranked_best_ours-metric", "ranked_best_r-mac"]
    metric = figs["ranked_best_ours-metric"]
    assert metric.axes[1].get_title() == "positive"
    assert "Ours (metric learning) - query q0" in metric.texts[0].get_text()


def test_classification_room_bars_are_the_table_accuracies_and_the_oracle_is_hatched():
    table = pd.DataFrame(
        {
            "row": ["fc alone (alpha = 1)", "oracle: alpha from the object masks", "+ regional"],
            "val_acc": [0.6, 0.8, 0.62],
            "acc gain": [0.0, 0.2, 0.02],
            "acc gain low": [0.0, 0.15, -0.01],
            "acc gain high": [0.0, 0.25, 0.05],
        }
    )
    fig = F.plot_classification_room(table)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() == pytest.approx(0.6)]
    # drawn top to bottom in the table's order
    by_y = sorted(bars, key=lambda b: -b.get_y())
    assert [round(b.get_width(), 6) for b in by_y] == [0.6, 0.8, 0.62]
    assert [b.get_hatch() for b in by_y] == [None, "//", None]
    (line,) = [ln for ln in ax.lines if list(ln.get_xdata()) == [0.6, 0.6]]
    assert line.get_linestyle() == "--"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table["row"])
