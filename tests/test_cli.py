import subprocess
import sys
from pathlib import Path

from regattn_lib.runtime.paths import data_root

REPO = Path(__file__).resolve().parents[1]


def test_eval_command_prints_map_for_every_protocol_and_hits_the_cache():
    # the session's temporary data root (conftest): the smoke set is shared with other tests
    cmd = [
        sys.executable,
        "-m",
        "regattn_lib",
        "eval",
        "--profile",
        "smoke",
        "--methods",
        "rmac",
        "mac",
        "--quiet",
        "--device",
        "cpu",
    ]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stdout.splitlines()
    assert lines[0].startswith("synthetic-smoke: 156 database images, 12 queries")
    rows = [ln.split() for ln in lines if ln.split()[:1] in (["MAC"], ["R-MAC"])]
    protocols = {r[-6] for r in rows}
    assert protocols == {"classic", "easy", "medium", "hard"}
    whitening = {" ".join(r[:-7]): r[-7] for r in rows}
    assert whitening == {"R-MAC + PCA": "PCA-256d", "MAC": "none"}
    maps = [float(r[-5]) for r in rows]
    assert all(0 < m <= 100 for m in maps)
    cache = data_root() / "cache" / "smoke" / "synthetic-smoke"
    assert len(list(cache.glob("*.pt"))) >= 2  # one file per method, named by its cache key
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    # the cache gives the same numbers
    assert second.stdout.splitlines()[1:-1] == lines[1:-1]


def _descs(db, queries):
    import torch

    from regattn_lib.extraction.extract import Descriptors

    return Descriptors(torch.tensor(db), torch.tensor(queries), ["a", "b"], ["q"])


def _table(maps):
    import pandas as pd

    return pd.DataFrame(
        {"method": ["m"] * len(maps), "protocol": list(maps), "mAP": list(maps.values())}
    )


def test_precision_differences_hand_computed():
    from regattn_lib.apps.cli import precision_differences

    ref = {"m": _descs([[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8]])}
    # the same database; the query turned by 90 degrees (distance 1); one vector scaled (0)
    other = {"m": _descs([[2.0, 0.0], [0.0, 1.0]], [[-0.8, 0.6]])}
    diff = precision_differences(
        ref, other, _table({"classic": 50.0, "hard": 20.0}), _table({"classic": 49.0, "hard": 22.5})
    )
    row = diff.iloc[0]
    assert row["method"] == "m"
    assert abs(row["max cos distance"] - 1.0) < 1e-12 and row["median cos distance"] == 0.0
    assert row["max |mAP change|"] == 2.5


def test_eval_precision_option_scores_each_and_compares(monkeypatch, capsys):
    import types

    import torch

    from regattn_lib.apps import cli as cli
    from regattn_lib.experiments import pipeline as P
    from regattn_lib.experiments.profiles import get_profile

    ctx = types.SimpleNamespace(
        profile=get_profile("paper"), device=torch.device("cpu"), cache_dir=Path("/nowhere")
    )
    ds = types.SimpleNamespace(n_db=2, n_queries=1)
    calls = []
    monkeypatch.setattr(P, "setup", lambda *a, **k: ctx)
    monkeypatch.setattr(P, "prepare_data", lambda *a, **k: None)
    monkeypatch.setattr(P, "learn_whitening", lambda *a, **k: None)
    monkeypatch.setattr(P, "dataset", lambda c, name: ds)
    monkeypatch.setattr(cli, "_heads", lambda c, m, w: {"m": types.SimpleNamespace(whitening=None)})

    def describe(c, d, heads, progress=True, precision=None):
        calls.append(precision)
        q = [[0.6, 0.8]] if precision == "fp32" else [[0.8, 0.6]]  # cosine 0.96
        return {"m": _descs([[1.0, 0.0], [0.0, 1.0]], q)}

    monkeypatch.setattr(P, "describe", describe)
    maps = {"fp32": 50.0, "fp16": 47.5}
    monkeypatch.setattr(
        P,
        "score",
        lambda descs, d, qe_k=0: {
            "m": {
                "protocols": {
                    "classic": {
                        "map": maps["fp32" if float(descs["m"].queries[0, 0]) < 0.7 else "fp16"],
                        "mp": {1: 100.0},
                        "n_queries": 1,
                    }
                },
                "kappas": [1],
            }
        },
    )
    assert (
        cli.main(["eval", "--profile", "paper", "--dataset", "x", "--precision", "fp32", "fp16"])
        == 0
    )
    out = capsys.readouterr().out
    assert calls == ["fp32", "fp16"]
    assert "backbone precision fp32:" in out and "backbone precision fp16:" in out
    assert "fp16 against fp32 (whitening learned in fp32 for both)" in out
    last = [ln.split() for ln in out.splitlines() if ln.split()[:1] == ["m"]][-1]
    # the query moved by 1 - 0.96 = 0.04, the two database vectors not at all (median 0)
    assert last == ["m", "4.00e-02", "0.00e+00", "2.50"]
    # without --precision: the profile's (paper: fp32), one table, no comparison
    calls.clear()
    cli.main(["eval", "--profile", "paper", "--dataset", "x"])
    assert calls == ["fp32"] and "against" not in capsys.readouterr().out
