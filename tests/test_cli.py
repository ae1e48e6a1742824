import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_eval_command_prints_map_for_every_protocol_and_hits_the_cache():
    # the repository's data root: the synthetic smoke set is shared with the notebook test
    cmd = [sys.executable, "-m", "regattn_lib", "eval", "--profile", "smoke", "--methods", "rmac", "mac",
           "--quiet", "--device", "cpu"]  # fmt: skip
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
    cache = REPO / "data" / "cache" / "smoke" / "synthetic-smoke"
    assert list(cache.glob("R-MAC + PCA-*.pt")) and list(cache.glob("MAC-*.pt"))
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    # the cache gives the same numbers
    assert second.stdout.splitlines()[1:-1] == lines[1:-1]
