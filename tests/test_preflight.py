"""The up-front check: device for every profile, each file of the paper profile (mirror and
merged manifest), disk need from what is missing, memory, importing files obtained another
way."""

from __future__ import annotations

import json
import math
import shutil
import socket
from pathlib import Path

import pytest
import torch
from test_downloads import FAST, PAYLOAD, SHA, site  # noqa: F401  (site: the loopback server)

from regattn_lib.datasets import downloads as dl
from regattn_lib.datasets import manifest as mf
from regattn_lib.datasets.archives import done_marker
from regattn_lib.datasets.downloads import ChecksumError, import_local
from regattn_lib.datasets.manifest import load_manifest
from regattn_lib.experiments import preflight as pf
from regattn_lib.experiments.preflight import main, paper_checks, profile_checks
from regattn_lib.experiments.profiles import PAPER, get_profile
from regattn_lib.runtime.atomic import sha256_file

# gnd x4, images x3, SfM whitening db + images, SfM-120k training db (metric learning), Caffe
# features, attention, RPN, 1M list, and the first ceil(100,000 / 10,010) = 10 revisitop1m
# archives for the 100k distractors
WANTED = 14 + 10


def by_name(checks):
    return {c.what: c for c in checks}


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch):
    monkeypatch.delenv("REGATTN_MIRROR", raising=False)
    monkeypatch.delenv("REGATTN_MANIFEST", raising=False)
    monkeypatch.delenv("REGATTN_IMPORT_FROM", raising=False)


def test_offline_checks_name_every_missing_file_with_url_and_destination(tmp_path):
    checks = by_name(paper_checks(tmp_path / "data", "cpu", False, network=False))
    files = load_manifest()
    missing = [c for c in checks.values() if c.detail.startswith("MISSING, not checked")]
    assert len(missing) == WANTED and all(c.required and not c.ok for c in missing)
    assert [k for k in checks if k.startswith("revisitop1m_tar_")] == [
        f"revisitop1m_tar_{i:03d}" for i in range(1, 11)
    ]
    att = checks["official_attention"]
    assert files["official_attention"]["url"] in att.detail
    assert str(tmp_path / "data" / files["official_attention"]["dest"]) in att.detail
    assert checks["device"].ok  # --device cpu accepts running without CUDA
    assert not checks["ImageNet (ILSVRC-2012) for training"].required
    assert not (tmp_path / "data").exists()  # a check writes nothing
    assert "sfm_db_retrieval-SfM-120k" in checks  # the paper profile learns by metric learning


def test_the_metric_learning_cache_is_counted_on_sfm120k_only():
    """2R + 1 rows of C fp32 channels for at most 2 x query_size + pool_size images per split
    (train 91,642 and val 6,403 images): by hand for the paper profile's L = 5 (R = 70 for
    4:3) and ResNet-101's 2048 channels; nothing for profiles without SfM-120k."""
    from regattn_lib.experiments.preflight import metric_cache_bytes
    from regattn_lib.experiments.profiles import get_profile

    rows, images = 2 * 70 + 1, (2 * 2000 + 20000) + 6403
    assert metric_cache_bytes(get_profile("paper")) == 4 * 2048 * rows * images
    small = get_profile("paper", {"metric": {"query_size": 10, "pool_size": 30}})
    assert metric_cache_bytes(small) == 4 * 2048 * rows * (50 + 50)
    for name in ("paper-quick", "demo", "smoke"):
        assert metric_cache_bytes(get_profile(name)) == 0
    assert metric_cache_bytes(get_profile("paper", {"metric": {"enabled": False}})) == 0


# --- device ------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
def test_cuda_without_a_gpu_stops_every_profile_with_one_line(
    profile, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["--profile", profile, "--device", "cuda", "--data-root", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1 and out.out == ""
    (line,) = out.err.splitlines()
    assert "--device cuda: no usable CUDA GPU" in line and "--device auto or cpu" in line


def test_auto_and_cpu_never_fail_for_the_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("auto", "cpu"):
        assert main(["--profile", "smoke", "--device", device]) == 0
        out = capsys.readouterr()
        assert out.err == "" and "offline, nothing to download" in out.out
    assert pf.device_check("auto").detail == "auto -> cpu (no CUDA device)"


def test_a_broken_cuda_driver_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA driver version is insufficient\n  long trace ...")

    monkeypatch.setattr(torch, "ones", broken)
    c = pf.device_check("cuda")
    assert not c.ok
    assert c.detail == (
        "--device cuda: not usable (RuntimeError: CUDA driver version is insufficient)"
    )
    assert "only 1 CUDA device" in pf.device_check("cuda:1").detail
    assert not pf.device_check("nonsense").ok


# --- reachability: each URL, the file itself ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_status_needs_the_file_itself(site):  # noqa: F811
    ok = site.add("/f.bin", PAYLOAD)
    assert pf.url_status(ok) == ("ok", "HTTP 200 to HEAD")
    assert site.requests == [("/f.bin", "HEAD")]  # no body fetched
    nohead = site.add("/g.bin", PAYLOAD, "nohead")
    status, why = pf.url_status(nohead)
    assert status == "ok" and why == "HTTP 206 to GET (HEAD refused: HTTP 405)"
    assert site.requests[-2:] == [("/g.bin", "HEAD"), ("/g.bin", "bytes=0-0")]
    assert site.statuses[-1] == 206
    assert pf.url_status(site.base + "/nope.bin")[0] == "missing"  # the host answers, not the file
    status, why = pf.url_status(f"http://127.0.0.1:{free_port()}/x", timeout=2)
    assert status == "unreachable"


def test_each_url_is_checked_through_the_mirror(site, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("REGATTN_MIRROR", site.base + "/mirror")
    files = load_manifest()
    served = ("official_attention", "gnd_oxford5k", "revisitop1m_tar_003")
    for key in served:
        site.add("/mirror/" + mf.mirror_path(files[key]["url"]), b"x")
    checks = by_name(profile_checks(PAPER, tmp_path / "data", timeout=5))
    needed = [k for k, c in checks.items() if k in files]
    assert len(needed) == WANTED
    heads = [p for p, r in site.requests if r == "HEAD"]
    assert sorted(heads) == sorted("/mirror/" + mf.mirror_path(files[k]["url"]) for k in needed)
    for key in needed:
        c, url = checks[key], files[key]["url"]
        mirrored = f"{site.base}/mirror/{mf.mirror_path(url)}"
        assert url in c.detail and f"via mirror {mirrored}" in c.detail
        if key in served:
            assert c.ok and c.detail.startswith("will download: ")
        else:  # the mirror answers 404: missing, not reachable
            assert not c.ok and c.detail.startswith(f"MISSING (HTTP 404 Not Found at {mirrored})")


def test_an_unreachable_host_is_probed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("REGATTN_MIRROR", f"http://127.0.0.1:{free_port()}")
    calls = []
    real = pf.url_status
    monkeypatch.setattr(pf, "url_status", lambda u, t: calls.append(u) or real(u, t))
    checks = by_name(profile_checks(PAPER, tmp_path, timeout=2))
    assert len(calls) == 1
    assert sum("MISSING and unreachable" in c.detail for c in checks.values()) == WANTED


# --- disk --------------------------------------------------------------------------------------


def entry(name: str, approx: int, extracted: int | None = None, keep: bool = True) -> dict:
    e = {"url": f"http://example.org/{name}", "dest": f"d/{name}", "approx_bytes": approx}
    if extracted is not None:
        e.update(extract_to=f"x/{name}", extracted_bytes=extracted, keep_archive=keep)
    return e


def test_disk_need_counts_only_what_is_missing(tmp_path):
    files = {
        "pkl": entry("a.pkl", 1_000),
        "kept": entry("k.tgz", 5_000_000, 6_000_000),
        "drop1": entry("r1.tgz", 300, 400, keep=False),
        "drop2": entry("r2.tgz", 200, 400, keep=False),
    }
    items = [pf.item_state(k, e, tmp_path) for k, e in files.items()]
    # kept archives add up; deleted ones are on disk one at a time: max(300, 200)
    assert pf.disk_need(items) == (1_000 + 5_000_000 + 300, 6_000_000 + 400 + 400)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "k.tgz.part").write_bytes(b"\0" * 2_000_000)  # resumed, not refetched
    (tmp_path / "d" / "a.pkl").write_bytes(b"p")
    items = [pf.item_state(k, e, tmp_path) for k, e in files.items()]
    assert pf.disk_need(items) == (3_000_000 + 300, 6_000_000 + 800)
    (tmp_path / "d" / "k.tgz").write_bytes(b"archive")  # downloaded, not extracted
    done_marker(tmp_path / "d" / "r1.tgz", tmp_path / "x" / "r1.tgz").parent.mkdir(parents=True)
    done_marker(tmp_path / "d" / "r1.tgz", tmp_path / "x" / "r1.tgz").write_text("{}")
    items = {k: pf.item_state(k, e, tmp_path) for k, e in files.items()}
    assert items["kept"].state.startswith("downloaded, to be extracted")
    assert items["drop1"].done and items["pkl"].done
    assert pf.disk_need(list(items.values())) == (200, 6_000_000 + 400)
    # a test set's images put in place by hand (no marker): nothing left for that archive
    (tmp_path / "x" / "k.tgz").mkdir(parents=True)
    (tmp_path / "x" / "k.tgz" / "img.jpg").write_bytes(b"jpg")
    assert pf.item_state("kept", files["kept"], tmp_path).done


def make_everything_present(root: Path, profile) -> None:
    files = load_manifest()
    for key in pf.profile_keys(profile) + ["revisitop1m_list"]:
        e = files[key]
        (root / e["dest"]).parent.mkdir(parents=True, exist_ok=True)
        (root / e["dest"]).write_bytes(b"here")
        if e.get("extract_to"):
            marker = done_marker(root / e["dest"], root / e["extract_to"])
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")
    base = root / "distractors" / "revisitop1m"
    (base / "revisitop1m.txt").write_text("a/1.jpg\na/2.jpg\na/3.jpg\na/4.jpg\n")
    for n in ("a/1.jpg", "a/2.jpg", "a/3.jpg"):
        (base / "jpg" / n).parent.mkdir(parents=True, exist_ok=True)
        (base / "jpg" / n).write_bytes(b"jpg")


def test_rerun_with_everything_present_needs_nothing_and_never_fails_for_disk(
    tmp_path, monkeypatch
):
    profile = PAPER.with_overrides(n_distractors=3)
    make_everything_present(tmp_path, profile)
    # the descriptor caches of the first run (a sparse file of the estimated size)
    cache = pf.cache_bytes_needed(profile, tmp_path, 3)
    # SfM-120k's metric-learning regions, twice: shards and the file built from them
    metric = 2 * 4 * 2048 * (2 * 70 + 1) * (24000 + 6403)
    assert cache == 4 * 2048 * ((5118 + 6447 + 5063 + 6392) * 32 + 3 * 12) + metric
    (tmp_path / "cache" / "paper").mkdir(parents=True)
    with open(tmp_path / "cache" / "paper" / "descriptors.pt", "wb") as f:
        f.truncate(cache)
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0))
    monkeypatch.setattr(pf, "mem_available", lambda *a: 64 << 30)
    checks = by_name(profile_checks(profile, tmp_path, network=False))
    assert all(c.ok for c in checks.values() if c.required), [
        c for c in checks.values() if not c.ok
    ]
    assert checks["disk space"].detail.startswith(f"0.0 GB free at {tmp_path.resolve()}; 0.0 GB")
    assert "0 of 3 images missing" in checks["distractors"].detail
    # one image gone: one archive to fetch again, and the disk check now fails with numbers
    (tmp_path / "distractors" / "revisitop1m" / "jpg" / "a" / "3.jpg").unlink()
    checks = by_name(profile_checks(profile, tmp_path, network=False))
    tar = load_manifest()["revisitop1m_tar_001"]
    assert not checks["revisitop1m_tar_001"].ok
    need = (tar["approx_bytes"] + tar["extracted_bytes"]) / 1e9
    assert not checks["disk space"].ok and f"; {need:.1f} GB needed" in checks["disk space"].detail


def test_revisitop1m_archives_counted_from_the_list(tmp_path):
    profile = PAPER.with_overrides(n_distractors=25_000)
    keys, (note,), n = pf.distractor_plan(profile, tmp_path)
    per = 1_001_001 / 100
    assert n == 25_000 and math.ceil(25_000 / per) == 3
    assert keys == [
        "revisitop1m_list",
        "revisitop1m_tar_001",
        "revisitop1m_tar_002",
        "revisitop1m_tar_003",
    ]
    assert "25000 of 25000 images missing" in note.detail and not note.required
    # archives already extracted are skipped
    jpg = tmp_path / "distractors" / "revisitop1m" / "jpg"
    jpg.mkdir(parents=True)
    done_marker(tmp_path / load_manifest()["revisitop1m_tar_002"]["dest"], jpg).write_text("{}")
    keys, _, _ = pf.distractor_plan(profile, tmp_path)
    assert keys[1:] == ["revisitop1m_tar_001", "revisitop1m_tar_003", "revisitop1m_tar_004"]
    # a list shorter than wanted is a clear failure
    (tmp_path / "distractors" / "revisitop1m" / "revisitop1m.txt").write_text("a.jpg\n\nb.jpg\n")
    _, (bad,), _ = pf.distractor_plan(profile, tmp_path)
    assert not bad.ok and "lists 2 images, 25000 wanted" in bad.detail


def test_auto_distractors_with_a_flickr100k_copy_need_no_download(tmp_path):
    profile = PAPER.with_overrides(distractors="auto", n_distractors=100_000)
    keys, (note,), _ = pf.distractor_plan(profile, tmp_path)
    assert keys[:2] == ["revisitop1m_list", "revisitop1m_tar_001"]
    assert "standing in for Flickr100k" in note.detail
    copy = tmp_path / "distractors" / "flickr100k" / "part1"
    copy.mkdir(parents=True)
    (copy / "1.jpg").write_bytes(b"jpg")
    keys, (note,), n = pf.distractor_plan(profile, tmp_path)
    assert keys == [] and n == 1 and note.ok
    assert note.detail.startswith("Flickr100k, local copy at") and "1 images" in note.detail
    keys, (bad,), _ = pf.distractor_plan(
        profile.with_overrides(distractors="flickr100k"), tmp_path / "elsewhere"
    )
    assert not bad.ok and "no longer distributed" in bad.detail


# --- memory ------------------------------------------------------------------------------------


def test_memory_for_the_whitening_pass(tmp_path):
    # 3 fp64 2048x2048 matrices + 512 vectors x 2048 x (4 + 8) bytes + 2 GiB for the process
    assert pf.whitening_memory_bytes(2048) == 100_663_296 + 12_582_912 + 2_147_483_648
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:    1024 kB\n")
    c = pf.memory_check(PAPER, meminfo)
    assert not c.ok and c.required and c.detail.startswith("0.0 GB available (MemAvailable)")
    meminfo.write_text("MemAvailable:   8388608 kB\n")
    c = pf.memory_check(PAPER, meminfo)
    assert c.ok and c.detail.startswith("8.6 GB available") and "~2.3 GB" in c.detail
    c = pf.memory_check(PAPER, tmp_path / "absent")
    assert c.ok and not c.required and "MemAvailable unknown" in c.detail


# --- imports -----------------------------------------------------------------------------------


def test_import_copies_a_verified_file_and_records_it(tmp_path, official_weights):
    src_dir = tmp_path / "usb" / "nested"
    src_dir.mkdir(parents=True)
    (src_dir / official_weights.name).write_bytes(official_weights.read_bytes())
    root = tmp_path / "data"
    source = import_local("official_attention", [tmp_path / "usb"], root)
    assert source == src_dir / official_weights.name
    dest = root / load_manifest()["official_attention"]["dest"]
    assert sha256_file(dest) == load_manifest()["official_attention"]["sha256"]
    lock = json.loads((root / "downloads.lock.json").read_text())
    assert lock[load_manifest()["official_attention"]["url"]]["sha256"] == sha256_file(dest)
    assert import_local("official_attention", [tmp_path / "usb"], root) is None  # already there


def test_import_refuses_a_wrong_file_and_leaves_it_alone(tmp_path):
    (tmp_path / "usb").mkdir()
    fake = tmp_path / "usb" / "ContextAwareRegionalAttention_weights.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match=r"usb/ContextAwareRegionalAttention_weights.pth"):
        import_local("official_attention", [tmp_path / "usb"], tmp_path / "data")
    assert fake.read_bytes() == b"not the weights"
    assert not (tmp_path / "data" / "weights").exists() or not any(
        (tmp_path / "data" / "weights").iterdir()
    )


def test_import_without_a_manifest_hash_trusts_then_pins_it(tmp_path):
    dest_name = load_manifest()["gnd_oxford5k"]["dest"].rsplit("/", 1)[-1]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / dest_name).write_bytes(b"first copy")
    root = tmp_path / "data"
    assert dl.checksum_source("gnd_oxford5k", root) is None
    assert import_local("gnd_oxford5k", [tmp_path / "a"], root)
    assert dl.checksum_source("gnd_oxford5k", root) == "lock file"
    dest = root / load_manifest()["gnd_oxford5k"]["dest"]
    assert dest.read_bytes() == b"first copy"
    dest.unlink()  # lost later; the lock file still pins the first copy's hash
    (tmp_path / "a" / dest_name).write_bytes(b"another file")
    with pytest.raises(ChecksumError, match="lock file"):
        import_local("gnd_oxford5k", [tmp_path / "a"], root)


def test_import_folder_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_local("gnd_oxford5k", [tmp_path / "nowhere"], tmp_path / "data")


def test_preflight_command_imports_from_the_environment_folder(
    tmp_path, official_weights, monkeypatch, capsys
):
    usb = tmp_path / "usb"
    usb.mkdir()
    shutil.copy(official_weights, usb)
    (usb / "gnd_oxford5k.pkl").write_bytes(b"a ground truth obtained elsewhere")
    monkeypatch.setenv("REGATTN_IMPORT_FROM", str(usb))
    root = tmp_path / "data"
    code = main(["--profile", "paper", "--device", "cpu", "--no-network", "--data-root", str(root)])
    out = capsys.readouterr()
    assert code == 1  # the other datasets are still missing
    lines = {ln.split()[2].rstrip(":"): ln for ln in out.out.splitlines() if ln.count(" ") > 2}
    att = lines["official_attention"]
    assert (
        att.startswith("[preflight] ok") and f"imported from {usb / official_weights.name}" in att
    )
    assert att.endswith("verified against the manifest's sha256")
    gnd = lines["gnd_oxford5k"]
    assert gnd.startswith("[preflight] ok") and gnd.endswith(
        "sha256 recorded (no published checksum)"
    )
    rec = dl.lock_record(load_manifest()["gnd_oxford5k"]["url"], root / "downloads.lock.json")
    assert rec["sha256"] == sha256_file(usb / "gnd_oxford5k.pkl")
    missing = out.err.split("missing", 1)[1]
    assert "official_attention" not in missing and "gnd_oxford5k," not in missing
    assert "gnd_paris6k" in missing


def test_preflight_uses_the_merged_manifest(tmp_path, monkeypatch):
    override = tmp_path / "m.json"
    e = dict(load_manifest()["gnd_oxford5k"], dest="elsewhere/gnd.pkl")
    override.write_text(json.dumps({"files": {"gnd_oxford5k": e}}))
    monkeypatch.setenv("REGATTN_MANIFEST", str(override))
    checks = by_name(profile_checks(get_profile("paper"), tmp_path, network=False))
    assert str(tmp_path.resolve() / "elsewhere" / "gnd.pkl") in checks["gnd_oxford5k"].detail
    assert FAST and PAYLOAD and SHA  # the loopback server's helpers are shared with these tests
