"""What the rehearsal tests share: the scripts they drive (loaded once), and running, killing
and watching ``scripts/rehearse_paper.sh`` in a process group of its own.

The rehearsals themselves are split over three files (``test_rehearsal_run``,
``test_rehearsal_quick``, ``test_rehearsal_resume``) so that ``pytest -n 2 --dist loadfile``
(run_tests.sh) runs them on both workers; the mirror, fixture and checker tests stay in
``test_rehearsal``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


LM = load_script("loopback_mirror")
FX = load_script("paper_fixtures")
CK = load_script("check_paper_results")


def need_official_weights() -> None:
    try:
        FX.official_attention_file()
    except FileNotFoundError as e:
        pytest.skip(f"the fixtures serve the authors' real attention file: {e}")


def rehearsal(root: Path, name: str, *args: str, log: Path, **env: str) -> subprocess.Popen:
    full = {**os.environ, "REHEARSAL_ROOT": str(root), **env}
    full.pop("REGATTN_RESULTS", None)
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            ["bash", str(REPO / "scripts" / "rehearse_paper.sh"), name, *args],
            cwd=REPO,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def rehearse_to_the_end(root: Path, name: str, *args: str, log: Path, timeout: int) -> int:
    """A rehearsal run to its end (killed with its process group after ``timeout`` s): its exit
    code."""
    proc = rehearsal(root, name, *args, log=log)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def repository_outputs() -> dict[str, int]:
    """Every file under the repository's results/ and data/, with its modification time."""
    return {
        str(f.relative_to(REPO)): f.stat().st_mtime_ns
        for d in ("results", "data")
        for f in (REPO / d).rglob("*")
        if f.is_file()
    }


def our_processes(data_root: Path) -> list[int]:
    """Processes started by a rehearsal of ``data_root`` (its REGATTN_DATA), e.g. the Jupyter
    kernels, which run in process groups of their own."""
    want = f"REGATTN_DATA={data_root}".encode()
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if want in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


def kill(proc: subprocess.Popen, data_root: Path) -> None:
    """SIGKILL the rehearsal's process group, then wait for (or end) the rest of its processes."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while (left := our_processes(data_root)) and time.monotonic() < deadline:
        time.sleep(0.2)  # kernels notice their parent is gone and exit on their own
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(proc: subprocess.Popen, found, what: str, log: Path, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = found()
        if hit:
            return hit
        if proc.poll() is not None:
            pytest.fail(f"the rehearsal ended (exit {proc.returncode}) before {what}:\n{tail(log)}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} within {timeout:.0f} s:\n{tail(log)}")


def body_gets(records: list[dict]) -> list[dict]:
    """GETs that fetch content: not HEAD, not the preflight's one-byte probes."""
    return [r for r in records if r["method"] == "GET" and r["range"] != "bytes=0-0"]
