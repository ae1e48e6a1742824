"""The run manifest ``results/<profile>/run.json``: which run made which table and figure.

``run_all.sh`` calls it three times (``begin``, ``notebook`` after each notebook, ``finish``)::

    python -m regattn_lib.experiments.run_manifest begin --results DIR --profile P --device D
        [--overrides FILE] [--from NN] [--only NN]          # prints the run id
    python -m regattn_lib.experiments.run_manifest notebook --results DIR --run ID --name NAME
        --status ok|failed --started EPOCH_S --wall-s S
    python -m regattn_lib.experiments.run_manifest finish --results DIR --run ID
    python -m regattn_lib.experiments.report_page DIR                        # then REPORT.md

The manifest holds every run that wrote into the folder (commit, profile, overrides, seeds,
machine, wall time) and, per notebook, the run that last executed it, its wall time and the
files it wrote. A run resumed with ``--from`` or ``--only`` replaces only its own notebooks'
entries, so the report can say when its tables come from different runs. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regattn_lib.runtime.atomic import atomic_write_json
from regattn_lib.runtime.paths import REPO_ROOT

MANIFEST = "run.json"
#: Folders under results/<profile>/ whose files a notebook writes (its outputs).
OUTPUT_DIRS = ("tables", "figures", "metrics")


def manifest_path(results: str | os.PathLike) -> Path:
    return Path(results) / MANIFEST


def load(results: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a results folder (an empty one when no run wrote it)."""
    path = manifest_path(results)
    if not path.is_file():
        return {"runs": {}, "notebooks": {}}
    data = json.loads(path.read_text())
    data.setdefault("runs", {})
    data.setdefault("notebooks", {})
    return data


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the run ran on: CPU model and count, OS, Python, torch, the GPU if any."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        info["gpu"] = None
    return info


def begin(
    results: str | os.PathLike,
    profile: str,
    device: str = "auto",
    overrides: str | None = None,
    start_from: str | None = None,
    only: str | None = None,
) -> str:
    """Record a new run in the manifest (earlier runs' notebooks stay) and return its id."""
    from regattn_lib.experiments.profiles import get_profile, load_overrides

    over = load_overrides(overrides) if overrides else None
    prof = get_profile(profile, over)
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    started = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + (
        f"-{commit[:7]}" if commit else ""
    )
    data = load(results)
    data["profile"] = profile
    data["runs"][run_id] = {
        "commit": commit,
        "dirty": bool(dirty) if dirty is not None else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "profile": profile,
        "device": device,
        "overrides": over,
        "from": start_from,
        "only": only,
        "seeds": list(prof.train.seeds),
        "machine": machine(),
        "status": "running",
    }
    data["last_run"] = run_id
    atomic_write_json(manifest_path(results), data)
    return run_id


def outputs_since(results: str | os.PathLike, since: float) -> list[str]:
    """Files under tables/, figures/, metrics/ modified at or after ``since`` (epoch seconds)."""
    root = Path(results)
    found = []
    for d in OUTPUT_DIRS:
        for p in sorted((root / d).glob("*")):
            if p.is_file() and p.stat().st_mtime >= since - 1:
                found.append(p.relative_to(root).as_posix())
    return found


def _step_label(source: str, width: int = 130) -> str:
    """A code cell's name in the time table: its statements (not blank lines, comments, imports
    or a bare name left to display), comments cut, joined by "; " and cut to ``width``
    characters, so a cell's costly call shows even when it is not its first line."""
    statements = []
    for line in source.splitlines():
        s = line.split("  #")[0].strip()
        if s and not s.startswith(("#", "import ", "from ")) and not s.isidentifier():
            statements.append(s)
    label = "; ".join(statements) or "(empty cell)"
    return label if len(label) <= width else label[: width - 3] + "..."


def slowest_steps(executed: str | os.PathLike, n: int = 4, min_s: float = 5.0) -> list[dict]:
    """The ``n`` slowest code cells of a notebook executed by papermill (at least ``min_s``
    seconds each; papermill's per-cell ``duration``): ``[{"step": label, "s": seconds}]``,
    slowest first. Empty when the file is missing or holds no timings."""
    try:
        nb = json.loads(Path(executed).read_text())
    except (OSError, ValueError):
        return []
    steps = []
    for cell in nb.get("cells", []):
        d = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.get("cell_type") == "code" and isinstance(d, (int, float)) and d >= min_s:
            src = cell.get("source", "")
            label = _step_label("".join(src) if isinstance(src, list) else src)
            steps.append({"step": label, "s": round(float(d), 1)})
    return sorted(steps, key=lambda r: -r["s"])[:n]


def notebook(
    results: str | os.PathLike, run_id: str, name: str, status: str, started: float, wall_s: float
) -> None:
    """Record one executed notebook: its run, status, wall time, its slowest steps (from
    ``notebooks/<name>.ipynb``, papermill's output) and the files it wrote."""
    data = load(results)
    outputs = outputs_since(results, started)
    # a file now written by this notebook is no longer another notebook's output
    for other in data["notebooks"].values():
        other["outputs"] = [o for o in other.get("outputs", []) if o not in outputs]
    data["notebooks"][name] = {
        "run": run_id,
        "status": status,
        "wall_s": round(float(wall_s), 1),
        "slowest_steps": slowest_steps(Path(results) / "notebooks" / f"{name}.ipynb"),
        "outputs": outputs,
    }
    atomic_write_json(manifest_path(results), data)


def finish(results: str | os.PathLike, run_id: str, status: str = "ok") -> Path:
    """Close the run: its status and wall time (the sum of its notebooks')."""
    data = load(results)
    run = data["runs"].get(run_id, {})
    run["status"] = status
    run["wall_s"] = round(
        sum(nb["wall_s"] for nb in data["notebooks"].values() if nb.get("run") == run_id), 1
    )
    data["runs"][run_id] = run
    # the whole series as last executed (each notebook's latest run), at a fixed key that the
    # README and docs quote (run ids change with every run)
    data["series_wall_min"] = round(sum(nb["wall_s"] for nb in data["notebooks"].values()) / 60, 1)
    return atomic_write_json(manifest_path(results), data)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regattn_lib.experiments.run_manifest")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("begin")
    b.add_argument("--results", required=True)
    b.add_argument("--profile", required=True)
    b.add_argument("--device", default="auto")
    b.add_argument("--overrides", default=None)
    b.add_argument("--from", dest="start_from", default=None)
    b.add_argument("--only", default=None)
    n = sub.add_parser("notebook")
    n.add_argument("--results", required=True)
    n.add_argument("--run", required=True)
    n.add_argument("--name", required=True)
    n.add_argument("--status", required=True, choices=("ok", "failed"))
    n.add_argument("--started", type=float, required=True)
    n.add_argument("--wall-s", type=float, required=True)
    f = sub.add_parser("finish")
    f.add_argument("--results", required=True)
    f.add_argument("--run", required=True)
    f.add_argument("--status", default="ok", choices=("ok", "failed"))
    args = ap.parse_args(argv)
    if args.cmd == "begin":
        print(
            begin(
                args.results,
                args.profile,
                args.device,
                args.overrides or None,
                args.start_from or None,
                args.only or None,
            )
        )
    elif args.cmd == "notebook":
        notebook(args.results, args.run, args.name, args.status, args.started, args.wall_s)
    else:
        print(finish(args.results, args.run, args.status))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
