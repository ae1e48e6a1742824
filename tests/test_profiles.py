"""Profile overrides: what a notebook's `overrides` parameter and run_all --overrides apply."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments.profiles import (
    DEFAULT_SYNTHETIC_SEED,
    PAPER,
    SMOKE,
    apply_overrides,
    get_profile,
    load_overrides,
    seed_data_root,
)

REPO = Path(__file__).resolve().parents[1]


def test_nested_override_changes_one_field_and_keeps_the_rest():
    p = get_profile("paper", {"image_size": 128, "train": {"recipe": {"iterations": 4}}})
    assert p.image_size == 128 and p.train.recipe.iterations == 4
    # everything else is the paper's
    assert p.train.recipe.lr == PAPER.train.recipe.lr == 1e-3
    assert p.train.source == PAPER.train.source and p.levels == 5
    assert PAPER.train.recipe.iterations != 4  # the shared default was not mutated


def test_lists_become_tuples_and_keywords_apply_first():
    p = get_profile("smoke", {"scale_levels": [1, 3]}, levels=4)
    assert p.scale_levels == (1, 3) and p.levels == 4
    assert get_profile("smoke", None, image_size=None) == SMOKE  # None keeps the value


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"imag_size": 1}, "profile.imag_size"),
        ({"train": {"recipe": {"iters": 1}}}, "profile.train.recipe.iters"),
    ],
)
def test_unknown_names_are_named(bad, where):
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        apply_overrides(PAPER, bad)


def test_setup_applies_overrides(tmp_path):
    ctx = P.setup("smoke", data_root=tmp_path, results=tmp_path / "r", overrides={"levels": 2})
    assert ctx.profile.levels == 2 and ctx.profile.name == "smoke"


def test_cli_checks_the_file_and_writes_papermill_parameters(tmp_path):
    good = tmp_path / "o.yaml"
    good.write_text("image_size: 96\ntrain:\n  recipe:\n    iterations: 3\n")
    out = tmp_path / "params.yaml"
    run = [sys.executable, "-m", "regattn_lib.experiments.profiles", "--profile", "paper"]
    ok = subprocess.run(
        [*run, "--overrides", str(good), "--papermill-params", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(out.read_text()) == {
        "overrides": {"image_size": 96, "train": {"recipe": {"iterations": 3}}}
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping\n")
    res = subprocess.run([*run, "--overrides", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and str(bad) in res.stderr
    with pytest.raises(ValueError, match="bad.yaml"):
        load_overrides(bad)


# ----------------------------------------------------------------------------- synthetic_seed
def test_another_synthetic_seed_gets_its_own_data_results_cache_and_note(tmp_path, monkeypatch):
    monkeypatch.delenv("REGATTN_RESULTS")  # results beside the data root
    default = P.setup("smoke", data_root=tmp_path / "data")
    assert default.profile.synthetic_seed == DEFAULT_SYNTHETIC_SEED == 0
    assert default.data_root == (tmp_path / "data").resolve()
    assert default.results == (tmp_path / "results" / "smoke").resolve()
    assert default.cache_dir == default.data_root / "cache" / "smoke"
    assert default.profile.notes == SMOKE.notes  # the committed runs' tables do not change
    ctx = P.setup("smoke", data_root=tmp_path / "data", overrides={"synthetic_seed": 7})
    assert ctx.profile.run_name == "smoke-seed7"
    assert ctx.data_root == (tmp_path / "data" / "synthetic-seed-7").resolve()
    assert ctx.results == (tmp_path / "results" / "smoke-seed7").resolve()
    assert ctx.cache_dir == ctx.data_root / "cache" / "smoke-seed7"
    (note,) = set(ctx.profile.notes) - set(SMOKE.notes)
    assert "synthetic_seed=7" in note and "committed results use 0" in note
    # asking twice (a profile passed back in) does not repeat the note
    assert get_profile(ctx.profile).notes == ctx.profile.notes
    assert seed_data_root(SMOKE, tmp_path) == tmp_path


def test_a_seed_on_a_profile_without_synthetic_data_is_refused():
    with pytest.raises(ValueError, match="synthetic_seed=3: profile 'paper' has no synthetic"):
        get_profile("paper", {"synthetic_seed": 3})
    assert get_profile("paper", {"synthetic_seed": 0}).run_name == "paper"


def test_cli_prints_the_run_name_run_all_uses(tmp_path):
    seeded = tmp_path / "seed.yaml"
    seeded.write_text("synthetic_seed: 5\n")
    run = [sys.executable, "-m", "regattn_lib.experiments.profiles", "--run-name"]
    for args, want in [
        (["--profile", "demo"], "demo"),
        (["--profile", "demo", "--overrides", str(seeded)], "demo-seed5"),
    ]:
        out = subprocess.run([*run, *args], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0 and out.stdout == want + "\n", out.stderr
