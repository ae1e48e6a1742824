"""The compact tables, the run manifest, the report page, reproducible figures, `regattn`."""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from decimal import ROUND_HALF_UP, Decimal

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from regattn_lib.experiments import report_page, reports, run_manifest  # noqa: E402
from regattn_lib.experiments.compact import compact  # noqa: E402
from regattn_lib.experiments.profiles import get_profile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "results" / "demo"


def _half_up(x: float, signed: bool = True) -> str:
    q = Decimal(repr(float(x))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{q:+}" if signed else f"{q}"


def _regional_gain_text(df: pd.DataFrame) -> str:
    """The regional row's classic gain as the compact layout should write it, rebuilt here from
    the CSV's own cells (rounded half up from their decimal text)."""
    row = df.set_index("method").loc["+ regional attention"]
    col = "synthetic-demo ours gain"
    g, lo, hi = (_half_up(row[f"{col}{s}"]) for s in ("", " low", " high"))
    return f"{g} [{lo}, {hi}] sd {_half_up(row[f'{col} seed sd'], signed=False)}"


def test_compact_merges_gains_and_drops_medium_repeats_but_the_csv_keeps_all(tmp_path):
    df = pd.read_csv(DEMO / "tables" / "ablation.csv")
    table, notes = compact(df)
    # 27 CSV columns become 12: each gain, its interval and seed sd in one cell
    assert len(df.columns) == 27 and len(table.columns) == 12
    assert "synthetic-demo medium ours" not in table.columns
    cell = table.set_index("method").loc["+ regional attention"]
    assert cell["synthetic-demo ours gain [95% interval] sd"] == _regional_gain_text(df)
    metric = table.set_index("method").loc["+ regional attention (metric learning)"]
    vs = df.set_index("method").loc["+ regional attention (metric learning)"]
    # rounded half up from the CSV's decimal text, as the compact layout does
    two = [
        Decimal(repr(float(vs[f"synthetic-demo ours vs paper's recipe gain{s}"]))).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP
        )
        for s in ("", " low", " high")
    ]
    want = "{:+} [{:+}, {:+}]".format(*two)
    assert metric["synthetic-demo ours vs paper's recipe gain [95% interval]"] == want
    assert any("medium ours" in n for n in notes)
    csv, md = reports.write_table(df, tmp_path, "ablation", notes=["a note"])
    assert pd.read_csv(csv).columns.tolist() == df.columns.tolist()
    assert "> a note" in md.read_text() and "gain low" not in md.read_text()


def test_paper_profile_compact_puts_the_diff_beside_ours():
    df = pd.DataFrame(
        {"method": ["R-MAC + PCA"], "oxford5k paper": [70.1], "oxford5k ours": [71.2],
         "oxford5k diff": [1.1]}
    )  # fmt: skip
    table, _ = compact(df)
    assert table.loc[0, "oxford5k ours (diff)"] == "71.2 (+1.1)"


def test_figures_are_byte_identical_on_a_rerun(tmp_path):
    digests = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot([1, 3, 2])
        reports.save_figure(fig, tmp_path / str(i), "f")
        plt.close(fig)
        digests.append(
            [
                hashlib.sha256((tmp_path / str(i) / f"f.{e}").read_bytes()).digest()
                for e in ("png", "pdf")
            ]
        )
        time.sleep(1.1)  # a PDF creation date would differ by now
    assert digests[0] == digests[1]
    assert b"CreationDate" not in (tmp_path / "0" / "f.pdf").read_bytes()
    assert b"Software" not in (tmp_path / "0" / "f.png").read_bytes()


def test_manifest_records_runs_and_the_report_says_when_tables_mix_runs(tmp_path):
    res = tmp_path / "demo"
    shutil.copytree(DEMO / "tables", res / "tables")
    first = run_manifest.begin(res, "demo", "cpu")
    t0 = time.time()
    for p in (res / "tables").glob("*"):
        os.utime(p, (t0, t0))
    run_manifest.notebook(res, first, "03_ablations", "ok", t0, 12.0)
    run_manifest.finish(res, first)
    data = run_manifest.load(res)
    seeds = list(get_profile("demo").train.seeds)
    assert data["runs"][first]["seeds"] == seeds and data["runs"][first]["wall_s"] == 12.0
    assert "tables/ablation.csv" in data["notebooks"]["03_ablations"]["outputs"]
    text = report_page.build_report(res)
    assert f"Made by run `{first}` (notebook `03_ablations`" in text and "Mixed runs" not in text
    time.sleep(1.1)
    second = run_manifest.begin(res, "demo", "cpu", only="05")
    assert second != first
    t1 = time.time() + 2
    os.utime(res / "tables" / "sota.csv", (t1, t1))
    run_manifest.notebook(res, second, "05_sota_table", "ok", t1, 3.0)
    run_manifest.finish(res, second)
    text = report_page.build_report(res)
    assert "**Mixed runs:** this page is built from tables of 2 different runs" in text
    assert f"Made by run `{second}` (notebook `05_sota_table`" in text
    assert f"Made by run `{first}` (notebook `03_ablations`" in text


def test_demo_report_layout():
    text = (DEMO / "REPORT.md").read_text()
    assert "synthetic stand-in" in text and "Hard gain [95%] (ours)" in text
    gain = _regional_gain_text(pd.read_csv(DEMO / "tables" / "ablation.csv"))
    assert "Oxford5k gain (paper)" in text and gain in text
    assert text.count("## How this run differs from the paper") == 1
    assert "figures/scale_study.png" in text


def test_regattn_console_command_is_declared_and_prints_help():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["regattn"] == "regattn_lib.apps.cli:main"
    module, _, name = scripts["regattn"].partition(":")
    main = getattr(importlib.import_module(module), name)
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    # the installed command, where the environment was installed from this pyproject
    exe = Path(sys.executable).parent / "regattn"
    if exe.is_file():
        out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage: regattn" in out.stdout, out.stderr
        assert "report" in out.stdout and "eval" in out.stdout
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "regattn"]
    assert all(ep.value == scripts["regattn"] for ep in eps)


def test_python_m_regattn_lib_still_works():
    out = subprocess.run(
        [sys.executable, "-m", "regattn_lib", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "usage: python -m regattn_lib" in out.stdout


def _cell(source: list[str], seconds: float | None, kind: str = "code") -> dict:
    meta = {} if seconds is None else {"papermill": {"duration": seconds}}
    return {"cell_type": kind, "source": source, "metadata": meta}


def test_slowest_steps_read_papermills_cell_times_and_reach_the_report(tmp_path):
    res = tmp_path / "demo"
    cells = [
        _cell(["# set-up\n", "from x import y\n", "ctx = P.setup(profile)\n"], 2.0),
        _cell(["whitening = P.learn_whitening(ctx)\n", "whitening.meta"], 181.24),
        _cell(["# a comment only\n", "log = MP.notebook_metric(ctx)  " + "x" * 150], 1087.6),
        _cell(["slow markdown"], 99.0, kind="markdown"),
        _cell(["summary = P.prepare_data(ctx)\n"], 226.9),
        _cell(["no_timing = 1\n"], None),
    ]
    nb = res / "notebooks" / "02_train_attention.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text(json.dumps({"cells": cells}))
    assert run_manifest.slowest_steps(nb, n=2) == [
        {"step": "log = MP.notebook_metric(ctx)  " + "x" * 96 + "...", "s": 1087.6},
        {"step": "summary = P.prepare_data(ctx)", "s": 226.9},
    ]
    steps = run_manifest.slowest_steps(nb)  # default: 4 steps of at least 5 s
    assert [s["s"] for s in steps] == [1087.6, 226.9, 181.2]
    assert run_manifest.slowest_steps(res / "missing.ipynb") == []
    run = run_manifest.begin(res, "demo", "cpu")
    run_manifest.notebook(res, run, "02_train_attention", "ok", time.time(), 1500.0)
    run_manifest.finish(res, run)
    header = "\n".join(report_page.run_header(run_manifest.load(res)))
    assert "Slowest steps: 02 `log = MP.notebook_metric(ctx)" in header
    # a cell's statements joined, its bare display name left out
    assert "02 `whitening = P.learn_whitening(ctx); whitening.meta` 3 min 1 s." in header
