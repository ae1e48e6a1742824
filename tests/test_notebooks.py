"""The whole notebook series on the smoke profile, through run_all.sh and papermill (CPU).

Checks the results contract: every table exists with finite values in range, every figure
was written, and every executed notebook is saved.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from regattn_lib.experiments import proxy as PX

REPO = Path(__file__).resolve().parents[1]
TABLES = [
    "ablation",
    "rpn",
    "scale_study",
    "sota",
    "revisited",
    "whitening",
    "datasets",
    "training",
    "classification_room",
    "per_query",
    "object_attention",
    "photo_search",
    "metric_training",
]
FIGURES = [
    "classification_room",
    "scale_study",
    "per_query_ap",
    "ranked_best_ours",
    "ranked_worst_r-mac",
    "ranked_best_ours-metric",
    "ranked_worst_ours-metric",
    "attention_maps",
    "queries",
    "training_context",
    "object_attention",
    "photo_search",
    "photo_attention",
]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    env = dict(os.environ, REGATTN_RESULTS=str(out))
    # One override reaches every notebook through run_all --overrides (checked in the scale table).
    overrides = out / "overrides.yaml"
    overrides.write_text("scale_levels: [1, 2, 3, 4, 5]\n")
    proc = subprocess.run(
        [
            str(REPO / "run_all.sh"),
            "--profile",
            "smoke",
            "--device",
            "cpu",
            "--overrides",
            str(overrides),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(" ok (") == 8, proc.stdout
    return out / "smoke"


def _percent_columns(df):
    """mAP / AP / mP@k columns (ours and paper), not gains, differences or times."""
    keep = ("mAP", "mP@", " ours", " paper", "AP ")
    skip = ("gain", "diff", "time")
    return [c for c in df.columns if any(k in c for k in keep) and not any(k in c for k in skip)]


@pytest.mark.slow
def test_every_table_exists_with_finite_values_in_range(smoke_results):
    for name in TABLES:
        df = pd.read_csv(smoke_results / "tables" / f"{name}.csv")
        assert len(df) > 0, name
        assert (smoke_results / "tables" / f"{name}.md").is_file()
        for c in _percent_columns(df):
            v = df[c].dropna()  # empty cells: rows only the paper has, and the reverse
            assert len(v) > 0 and v.map(math.isfinite).all(), (name, c)
            assert v.between(0, 100).all(), (name, c, v.tolist())
    for name, row in (("ablation", "R-MAC + PCA"), ("sota", "R-MAC"), ("sota", "Ours")):
        df = pd.read_csv(smoke_results / "tables" / f"{name}.csv").set_index("method")
        ours = [c for c in df.columns if c.endswith(" ours")]
        assert ours and df.loc[row, ours].map(math.isfinite).all(), (name, row)
    abl = pd.read_csv(smoke_results / "tables" / "ablation.csv")
    # every gain carries its paired-bootstrap interval, and the interval holds the gain
    gain = "synthetic-smoke ours gain"
    assert {gain, f"{gain} low", f"{gain} high"} <= set(abl.columns)
    assert (abl[f"{gain} low"] <= abl[gain] + 1e-9).all() and (
        abl[gain] <= abl[f"{gain} high"] + 1e-9
    ).all()
    obj = pd.read_csv(smoke_results / "tables" / "object_attention.csv")
    assert (
        set(obj["images"]) == {"queries", "database"} and obj["uniform share"].between(0, 1).all()
    )
    photos = pd.read_csv(smoke_results / "tables" / "photo_search.csv")
    assert list(photos.columns) == ["rank", "path", "score"] and photos["rank"].tolist()[0] == 1
    assert list(abl["method"][:3]) == ["R-MAC + PCA", "+ regional attention", "+ context awareness"]
    assert (abl["time_s ours"].dropna() > 0).all()
    scale = pd.read_csv(smoke_results / "tables" / "scale_study.csv")
    assert sorted(scale["levels"].unique()) == [
        1,
        2,
        3,
        4,
        5,
    ]  # the override, not the profile's 1..6
    rev = pd.read_csv(smoke_results / "tables" / "revisited.csv")
    assert {"easy mAP", "medium mAP", "hard mAP"} <= set(rev.columns)


@pytest.mark.slow
def test_metric_learned_rows_beside_the_papers_recipe(smoke_results):
    """The smoke profile learns both attention kinds by metric learning too: its log names the
    sweep's pick per kind, and every table with attention rows shows them, labelled."""
    log = pd.read_csv(smoke_results / "tables" / "metric_training.csv")
    assert sorted(log["kind"].unique()) == ["metric-context", "metric-regional"]
    assert log.groupby("kind")["chosen"].sum().tolist() == [1, 1]
    # epoch 0 is R-MAC (alpha = 1) and the kept epoch is the best on validation
    assert (log["val mAP"] >= log["val mAP R-MAC"] - 1e-9).all()
    assert (log["epochs"] == 3).all() and set(log["lr"]) == {1e-3, 1e-2}
    # every run's validation curve: epochs 0..3, its maximum the log's kept epoch (the
    # full-precision log beside it; the table keeps 4 significant digits)
    curves = pd.read_csv(smoke_results / "metrics" / "metric_history.csv")
    full = pd.read_csv(smoke_results / "metrics" / "metric_training.csv")
    keys = ["kind", "stage", "seed", "lr", "weight_decay"]
    assert len(curves) == 4 * len(full) and len(full) == len(log)
    for _, run in full.iterrows():
        curve = curves[(curves[keys] == run[keys]).all(axis=1)]
        assert curve["epoch"].tolist() == [0, 1, 2, 3]
        assert curve["val_map"].iloc[0] == pytest.approx(run["val mAP R-MAC"])
        assert curve["val_map"].max() == pytest.approx(run["val mAP"])
        assert int(curve["val_map"].to_numpy().argmax()) == run["best_epoch"]
    label = "trained here by metric learning (beyond the paper)"
    metric_rows = [
        "+ regional attention (metric learning)",
        "+ context awareness (metric learning)",
    ]
    for name in ("ablation", "rpn"):
        df = pd.read_csv(smoke_results / "tables" / f"{name}.csv").set_index("method")
        assert (df.loc[metric_rows, "weights"] == label).all(), name
    abl = pd.read_csv(smoke_results / "tables" / "ablation.csv").set_index("method")
    vs = "synthetic-smoke ours vs paper's recipe gain"
    assert abl[vs].notna().tolist() == [False, False, False, True, True]
    # the paired gain over the recipe is the difference of the two rows' mAPs
    for metric, recipe in zip(
        metric_rows, ["+ regional attention", "+ context awareness"], strict=True
    ):
        want = abl.loc[metric, "synthetic-smoke ours"] - abl.loc[recipe, "synthetic-smoke ours"]
        assert abs(abl.loc[metric, vs] - want) < 0.02  # the CSV keeps 4 significant digits
        assert abl.loc[metric, f"{vs} low"] <= abl.loc[metric, vs] <= abl.loc[metric, f"{vs} high"]
    sota = pd.read_csv(smoke_results / "tables" / "sota.csv")
    assert {"Ours (metric learning)", "Ours (metric learning)+QE"} <= set(sota["method"])
    rev = pd.read_csv(smoke_results / "tables" / "revisited.csv")
    assert "Ours (metric learning)" in set(rev["method"])
    perq = pd.read_csv(smoke_results / "tables" / "per_query.csv")
    assert "AP Ours (metric learning)" in perq.columns
    obj = pd.read_csv(smoke_results / "tables" / "object_attention.csv")
    assert set(metric_rows) <= set(obj["method"])
    splits = (smoke_results / "splits.sha256").read_text().splitlines()
    assert any("/synthetic-smoke-metric/" in line for line in splits)


@pytest.mark.slow
def test_classification_room_reads_what_training_validated(smoke_results):
    room = pd.read_csv(smoke_results / "tables" / "classification_room.csv").set_index("row")
    training = pd.read_csv(smoke_results / "tables" / "training.csv").set_index("stage")
    assert list(room.index) == [
        PX.FC_ALONE,
        PX.ORACLE,
        "+ regional attention",
        "+ context awareness",
    ]
    # the room re-reads the training's own validation features: the same losses (4 digits)
    for row, stage in (
        (PX.FC_ALONE, "fc"),
        ("+ regional attention", "regional"),
        ("+ context awareness", "context"),
    ):
        assert room.loc[row, "val_loss"] == pytest.approx(
            training.loc[stage, "kept val_loss"], rel=1e-3
        )
        assert room.loc[row, "val_acc"] == pytest.approx(
            training.loc[stage, "kept val_acc"], abs=1e-3
        )
    assert room.loc[PX.FC_ALONE, "acc gain"] == 0
    assert 0 < room.loc[PX.ORACLE, "mean object share"] < 1


@pytest.mark.slow
def test_figures_notebooks_and_metrics_written(smoke_results):
    for name in FIGURES:
        png = smoke_results / "figures" / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 5000, name
        assert png.read_bytes()[:4] == b"\x89PNG"
    executed = sorted(p.name for p in (smoke_results / "notebooks").glob("*.ipynb"))
    assert executed == [
        f"{n}.ipynb"
        for n in (
            "01_data_prep",
            "02_train_attention",
            "03_ablations",
            "04_scale_study",
            "05_sota_table",
            "06_qualitative",
            "07_query_explorer",
            "08_search_your_photos",
        )
    ]
    m = json.loads((smoke_results / "metrics" / "06_qualitative.json").read_text())
    assert m["queries"] == 12


@pytest.mark.slow
def test_the_series_writes_its_manifest_and_report(smoke_results):
    from regattn_lib.experiments.report_page import report_is_current, report_table

    manifest = json.loads((smoke_results / "run.json").read_text())
    assert len(manifest["notebooks"]) == 8 and len(manifest["runs"]) == 1
    (run,) = manifest["runs"].values()
    assert run["profile"] == "smoke" and run["status"] == "ok" and run["machine"]["cpus"]
    assert "tables/ablation.csv" in manifest["notebooks"]["03_ablations"]["outputs"]
    report = (smoke_results / "REPORT.md").read_text()
    assert report_is_current(smoke_results)
    for name in ("ablation", "rpn", "sota"):
        assert report_table(report, name) is not None, name
    assert "## Scale study" in report and "synthetic stand-in" in report
    assert "Made by run `" in report and "Mixed runs" not in report


def test_run_all_rejects_bad_arguments():
    proc = subprocess.run(
        [str(REPO / "run_all.sh"), "--profile", "nope"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown profile 'nope'" in proc.stderr
