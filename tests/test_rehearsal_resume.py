"""The rehearsal killed during downloads and during extraction, then rerun: nothing finished is
fetched or extracted twice.

It relies on these interfaces of the library: downloads resume from ``<dest>.part`` with an
HTTP Range request; descriptor extraction writes finished shards of ``$REGATTN_SHARD_IMAGES``
images at ``<data>/cache/<profile>/_distractors/<key>.parts/*.pt`` (removed once the part is
complete) and loads, never rewrites, the shards it finds; archives are extracted once
(``.<archive>.done`` markers)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from rehearsal_runs import (
    CK,
    FX,
    LM,
    body_gets,
    kill,
    need_official_weights,
    rehearsal,
    tail,
    wait_for,
)

from regattn_lib.datasets import archives


@pytest.mark.slow  # about 75 s on 2 cores: notebook 05 alone, three times
def test_interrupted_rehearsal_reruns_download_and_extract_nothing_twice(tmp_path):
    """Kill the rehearsal (notebook 05: it downloads the distractors and extracts them) during
    the distractor download, then during the distractor extraction, and rerun it: finished
    downloads are not fetched again, the partial one resumes with a Range request, finished
    extraction shards and extracted archives are not redone."""
    need_official_weights()
    work = tmp_path / "regattn-rehearsal-rr"
    data = work / "data"
    tars = data / "distractors" / "revisitop1m"
    mirror_log = work / "mirror.log"
    # run 1: the distractor archives crawl at 20 kB/s; killed once one of them is half there
    log1 = tmp_path / "run1.log"
    proc = rehearsal(
        tmp_path,
        "rr",
        "--fresh",
        "--",
        "--only",
        "05",
        log=log1,
        REHEARSAL_THROTTLE="20000",
        REHEARSAL_THROTTLE_MATCH=r"revisitop1m\.[0-9]+\.tar\.gz$",
    )
    part = wait_for(
        proc,
        lambda: next(
            (p for p in tars.glob("revisitop1m.*.tar.gz.part") if p.stat().st_size > 0), None
        ),
        "a partial distractor archive",
        log1,
    )
    kill(proc, data)
    part_size = part.stat().st_size
    entries = json.loads((work / "fixtures" / "manifest_override.json").read_text())["files"]

    def finished(e) -> bool:  # on disk, or extracted and deleted (distractor archives)
        dest = data / e["dest"]
        return dest.is_file() or (
            e.get("extract_to") and archives.done_marker(dest, data / e["extract_to"]).is_file()
        )

    done1 = {str(FX.mirror_path(Path(), e["url"])) for e in entries.values() if finished(e)}
    assert done1, "nothing had finished downloading before the kill"
    markers1 = {p: p.stat().st_mtime_ns for p in data.rglob(".*.done")}
    n1 = len(LM.read_log(mirror_log))
    # run 2: full speed; killed once the distractor extraction has written a shard
    log2 = tmp_path / "run2.log"
    proc = rehearsal(tmp_path, "rr", "--", "--only", "05", log=log2)
    cache = data / "cache" / "paper" / "_distractors"
    wait_for(proc, lambda: list(cache.glob("*.parts/*.pt")), "a distractor extraction shard", log2)
    kill(proc, data)
    shards = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("*.parts/*.pt")}
    # run 3: to the end, watching that no finished shard is written again
    rewritten: set[Path] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for p, sig in shards.items():
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # merged and removed once the whole part is done
                if (st.st_ino, st.st_mtime_ns) != sig:
                    rewritten.add(p)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    log3 = tmp_path / "run3.log"
    proc = rehearsal(tmp_path, "rr", "--", "--only", "05", log=log3)
    try:
        rc = proc.wait(timeout=1200)
    finally:
        stop.set()
        watcher.join()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == 0, tail(log3)
    problems: list[str] = []
    CK.check_paper_table(
        pd.read_csv(work / "results" / "paper" / "tables" / "sota.csv"), "sota", problems
    )
    assert problems == []
    records = LM.read_log(mirror_log)
    later = body_gets(records[n1:])
    again = sorted({r["path"] for r in later} & done1)
    assert not again, f"downloaded again after run 1: {again}"
    resumed = [r for r in later if r["path"].endswith(part.name[: -len(".part")])]
    assert resumed and resumed[0]["range"] == f"bytes={part_size}-", resumed[:1]
    starts = {}
    for r in body_gets(records):
        if r["range"] is None:
            starts[r["path"]] = starts.get(r["path"], 0) + 1
    assert max(starts.values()) == 1, {p: n for p, n in starts.items() if n > 1}
    assert shards, "no finished shard at the second kill"
    assert not rewritten, f"extracted again: {sorted(map(str, rewritten))}"
    for marker, mtime in markers1.items():
        assert marker.stat().st_mtime_ns == mtime, f"{marker}: archive extracted again"
    assert list(cache.glob("*.pt")), "the distractor descriptors were not cached"
