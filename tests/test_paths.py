"""Where a run writes: results beside the run's data root unless told otherwise, so a run rooted
elsewhere never writes into the repository."""

from __future__ import annotations

from pathlib import Path

from regattn_lib.runtime import paths


def test_results_default_beside_the_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("REGATTN_RESULTS", raising=False)
    monkeypatch.delenv("REGATTN_DATA", raising=False)
    assert paths.results_root("demo") == paths.REPO_ROOT / "results" / "demo"
    assert paths.results_root("paper", data=tmp_path / "data") == tmp_path / "results" / "paper"
    monkeypatch.setenv("REGATTN_DATA", str(tmp_path / "elsewhere" / "data"))
    assert paths.results_root("paper") == tmp_path / "elsewhere" / "results" / "paper"
    monkeypatch.setenv("REGATTN_RESULTS", str(tmp_path / "chosen"))
    assert paths.results_root("paper") == tmp_path / "chosen" / "paper"
    assert paths.results_root("paper", tmp_path / "arg") == tmp_path / "arg" / "paper"


def test_setup_rooted_elsewhere_writes_beside_its_data(monkeypatch, tmp_path):
    from regattn_lib.experiments import pipeline

    monkeypatch.delenv("REGATTN_RESULTS", raising=False)
    ctx = pipeline.setup("smoke", data_root=tmp_path / "data", device="cpu")
    assert ctx.results == tmp_path / "results" / "smoke"
    assert all(Path(d).is_relative_to(tmp_path) for d in ctx.dirs.values())
    assert ctx.dirs["tables"].is_dir()
    assert not ctx.results.is_relative_to(paths.REPO_ROOT)
