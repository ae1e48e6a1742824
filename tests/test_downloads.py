"""Downloads against a real loopback HTTP server: resume, retries, checksums, lock file,
quarantine; atomic and traversal-safe archive extraction; restricted unpickling."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from regattn_lib.datasets import downloads as dl
from regattn_lib.datasets import manifest as mf
from regattn_lib.datasets.archives import extract_archive
from regattn_lib.datasets.downloads import (
    ChecksumError,
    DownloadError,
    download,
    download_entry,
    lock_record,
)
from regattn_lib.datasets.manifest import manifest_entry
from regattn_lib.datasets.safe_pickle import UnsafePickleError, safe_load_pickle

PAYLOAD = np.random.default_rng(0).integers(0, 256, 150_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Site:
    """What the test server serves, how it misbehaves, and what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, set[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.statuses: list[int] = []
        self.base = ""

    def add(self, path: str, data: bytes, *modes: str) -> str:
        self.files[path] = data
        self.modes[path] = set(modes)
        return self.base + path

    def hits(self, path: str) -> list[str | None]:
        """The Range header of every request made for ``path``."""
        return [r for p, r in self.requests if p == path]


def make_handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status, body: bytes, headers: dict[str, str] | None = None, head=False):
            site.statuses.append(status)
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_HEAD(self):
            site.requests.append((self.path, "HEAD"))
            if self.path not in site.files:
                return self._send(404, b"", head=True)
            if "nohead" in site.modes[self.path]:
                return self._send(405, b"", head=True)
            return self._send(200, site.files[self.path], head=True)

        def do_GET(self):
            rng = self.headers.get("Range")
            site.requests.append((self.path, rng))
            n_before = len(site.hits(self.path)) - 1
            if self.path not in site.files:
                return self._send(404, b"not found")
            data, modes = site.files[self.path], site.modes[self.path]
            if "corrupt" in modes:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if "fail_first" in modes and n_before == 0:
                return self._send(503, b"busy")
            if "drop_first" in modes and n_before == 0:
                # Announce the whole file, send half of it, then hang up.
                site.statuses.append(200)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            if rng and "norange" not in modes:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                start = int(m.group(1))
                end = min(int(m.group(2) or len(data) - 1), len(data) - 1)
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                cr = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start : end + 1], {"Content-Range": cr})
            return self._send(200, data)

    return Handler


@pytest.fixture
def site():
    s = Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(s))
    s.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield s
    httpd.shutdown()
    httpd.server_close()
    t.join()


FAST = {"backoff": 0.01, "timeout": 5, "progress": False}


def test_complete_download_with_sha_then_no_network(site, tmp_path):
    url = site.add("/f.bin", PAYLOAD)
    dest = tmp_path / "sub" / "f.bin"
    lock = tmp_path / "lock.json"
    out = download(url, dest, sha256=SHA, size=len(PAYLOAD), lock_file=lock, **FAST)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("f.bin.part").exists()
    assert site.hits("/f.bin") == [None]
    assert not lock.exists()  # hash known from the caller: nothing to record
    # Present and verified: returned without any request.
    download(url, dest, sha256=SHA, lock_file=lock, **FAST)
    assert len(site.requests) == 1


def test_interrupted_download_resumes_with_range(site, tmp_path):
    url = site.add("/big.bin", PAYLOAD, "drop_first")
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="after 1 attempts"):
        download(url, dest, sha256=SHA, lock_file=tmp_path / "l.json", retries=0, **FAST)
    part = tmp_path / "big.bin.part"
    half = len(PAYLOAD) // 2
    assert part.stat().st_size == half and not dest.exists()
    # A new run resumes from the partial file.
    download(url, dest, sha256=SHA, lock_file=tmp_path / "l.json", **FAST)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert site.hits("/big.bin") == [None, f"bytes={half}-"]
    assert site.statuses == [200, 206]


def test_retry_within_one_call_resumes(site, tmp_path):
    url = site.add("/big.bin", PAYLOAD, "drop_first")
    download(url, tmp_path / "b", sha256=SHA, lock_file=tmp_path / "l.json", retries=2, **FAST)
    assert (tmp_path / "b").read_bytes() == PAYLOAD
    assert site.hits("/big.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_server_without_range_support_restarts_from_zero(site, tmp_path):
    url = site.add("/nr.bin", PAYLOAD, "drop_first", "norange")
    dest = tmp_path / "nr.bin"
    download(url, dest, sha256=SHA, lock_file=tmp_path / "l.json", retries=1, **FAST)
    assert dest.read_bytes() == PAYLOAD  # not half + whole appended
    assert site.hits("/nr.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert site.statuses == [200, 200]


def test_already_complete_part_file_416(site, tmp_path):
    url = site.add("/c.bin", PAYLOAD)
    dest = tmp_path / "c.bin"
    (tmp_path / "c.bin.part").write_bytes(PAYLOAD)
    download(url, dest, sha256=SHA, lock_file=tmp_path / "l.json", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert site.statuses == [416]


def test_part_file_longer_than_remote_restarts(site, tmp_path):
    url = site.add("/long.bin", PAYLOAD)
    (tmp_path / "long.bin.part").write_bytes(PAYLOAD + b"stale tail")
    download(url, tmp_path / "long.bin", sha256=SHA, lock_file=tmp_path / "l.json", **FAST)
    assert (tmp_path / "long.bin").read_bytes() == PAYLOAD
    assert site.hits("/long.bin") == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert site.statuses == [416, 200]


def test_5xx_is_retried(site, tmp_path):
    url = site.add("/busy.bin", PAYLOAD, "fail_first")
    download(url, tmp_path / "x", sha256=SHA, lock_file=tmp_path / "l.json", **FAST)
    assert site.statuses == [503, 200]


def test_404_is_not_retried(site, tmp_path):
    url = site.base + "/missing.bin"
    with pytest.raises(DownloadError) as e:
        download(url, tmp_path / "m.bin", lock_file=tmp_path / "l.json", retries=3, **FAST)
    assert url in str(e.value) and "404" in str(e.value)
    assert site.statuses == [404]
    assert not (tmp_path / "m.bin").exists()


def test_corrupted_file_is_quarantined(site, tmp_path):
    url = site.add("/bad.bin", PAYLOAD, "corrupt")
    dest = tmp_path / "bad.bin"
    with pytest.raises(ChecksumError) as e:
        download(url, dest, sha256=SHA, lock_file=tmp_path / "l.json", **FAST)
    msg = str(e.value)
    actual = hashlib.sha256(bytes([PAYLOAD[0] ^ 0xFF]) + PAYLOAD[1:]).hexdigest()
    assert url in msg and str(dest) in msg and SHA in msg and actual in msg
    assert not dest.exists() and not (tmp_path / "bad.bin.part").exists()
    quarantined = list((tmp_path / "bad.bin.quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith("bad.bin.")
    assert hashlib.sha256(quarantined[0].read_bytes()).hexdigest() == actual


def test_size_mismatch_is_caught(site, tmp_path):
    url = site.add("/s.bin", PAYLOAD)
    with pytest.raises(ChecksumError, match=f"{len(PAYLOAD)} bytes"):
        download(url, tmp_path / "s.bin", size=len(PAYLOAD) + 1, lock_file=tmp_path / "l", **FAST)


def test_unknown_hash_is_recorded_then_enforced(site, tmp_path):
    url = site.add("/u.bin", PAYLOAD)
    dest = tmp_path / "u.bin"
    lock = tmp_path / "data" / "downloads.lock.json"
    download(url, dest, lock_file=lock, **FAST)
    rec = json.loads(lock.read_text())[url]
    assert rec["sha256"] == SHA and rec["size"] == len(PAYLOAD)
    assert rec["path"] == str(dest.resolve())
    assert lock_record(url, lock) == rec
    # Second run: verified against the record, no request.
    download(url, dest, lock_file=lock, **FAST)
    assert len(site.requests) == 1
    # A tampered local file now fails and is moved aside.
    dest.write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(ChecksumError) as e:
        download(url, dest, lock_file=lock, **FAST)
    assert url in str(e.value) and SHA in str(e.value) and "lock file" in str(e.value)
    assert not dest.exists()
    # The server's copy changes: the fresh download no longer matches the record.
    site.files["/u.bin"] = b"other bytes"
    with pytest.raises(ChecksumError):
        download(url, dest, lock_file=lock, **FAST)
    assert len(list((tmp_path / "u.bin.quarantine").iterdir())) == 2


def test_download_entry_uses_manifest_prefix(site, tmp_path, monkeypatch):
    url = site.add("/w.pth", PAYLOAD)
    entries = {
        "good": {"url": url, "dest": "weights/w.pth", "sha256": None, "sha256_prefix": SHA[:8]},
        "bad": {"url": url, "dest": "weights/v.pth", "sha256": None, "sha256_prefix": "00000000"},
    }
    monkeypatch.setattr(mf, "load_manifest", lambda: entries)
    out = download_entry("good", data_root=tmp_path, **FAST)
    assert out == tmp_path / "weights" / "w.pth" and out.read_bytes() == PAYLOAD
    with pytest.raises(ChecksumError):
        download_entry("bad", data_root=tmp_path, **FAST)


def test_manifest_entries():
    att = manifest_entry("official_attention")
    assert att["size"] == 1049729
    assert att["sha256"] == "038e6a852e3b64a9b3b9dc6b105047e04b65cf36f4b1df99fbb9d692ec704f8e"
    assert att["dest"] == "weights/ContextAwareRegionalAttention_weights.pth"
    tv = manifest_entry("torchvision_resnet101")
    assert tv["url"] == "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    assert tv["sha256_prefix"] == "63fe2227"
    g = manifest_entry("gnd_roxford5k")
    assert g["url"].endswith("/test/roxford5k/gnd_roxford5k.pkl")
    assert g["dest"] == "test/roxford5k/gnd_roxford5k.pkl"
    assert manifest_entry("revisitop1m_tar_100")["url"].endswith("/jpg/revisitop1m.100.tar.gz")
    for key, e in mf.load_manifest().items():
        assert e["url"].startswith(("http://", "https://")), key
        assert not Path(e["dest"]).is_absolute() and ".." not in Path(e["dest"]).parts
    with pytest.raises(KeyError, match="gnd_oxford5k"):
        manifest_entry("nope")


def test_prefix_only_download_records_the_full_hash(site, tmp_path):
    url = site.add("/p.pth", PAYLOAD)
    lock = tmp_path / "lock.json"
    download(url, tmp_path / "p.pth", sha256=SHA[:8], lock_file=lock, **FAST)
    first = lock_record(url, lock)
    assert first["sha256"] == SHA and first["size"] == len(PAYLOAD)
    download(url, tmp_path / "p.pth", sha256=SHA[:8], lock_file=lock, **FAST)
    assert lock_record(url, lock) == first  # verified again, the record left as it was
    # a file with the right prefix but another full hash is caught by the record
    (tmp_path / "p.pth").write_bytes(b"other")
    with pytest.raises(ChecksumError, match="lock file"):
        download(
            url,
            tmp_path / "p.pth",
            sha256=hashlib.sha256(b"other").hexdigest()[:8],
            lock_file=lock,
            **FAST,
        )


# --- mirror and manifest override --------------------------------------------------------------

GND_URL = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/oxford5k/gnd_oxford5k.pkl"


def test_mirror_path_and_resolve_url(monkeypatch):
    monkeypatch.delenv("REGATTN_MIRROR", raising=False)
    assert mf.mirror_path(GND_URL) == (
        "cmp.felk.cvut.cz/cnnimageretrieval/data/test/oxford5k/gnd_oxford5k.pkl"
    )
    assert mf.mirror_path("https://h.org:8443/a/b.tgz?x=1") == "h.org:8443/a/b.tgz?x=1"
    assert mf.resolve_url(GND_URL) == GND_URL  # no mirror: the canonical URL
    monkeypatch.setenv("REGATTN_MIRROR", "http://127.0.0.1:9/base/")
    assert mf.resolve_url(GND_URL) == (
        "http://127.0.0.1:9/base/cmp.felk.cvut.cz/cnnimageretrieval/data/test/oxford5k/"
        "gnd_oxford5k.pkl"
    )
    for e in mf.load_manifest().values():  # every entry is redirected, host first
        parts = urlsplit(e["url"])
        assert mf.resolve_url(e["url"]) == f"http://127.0.0.1:9/base/{parts.netloc}{parts.path}"
    assert mf.resolve_url("file:///tmp/x.pth") == "file:///tmp/x.pth"  # local files stay
    with pytest.raises(ValueError, match="http"):
        mf.mirror_path("file:///tmp/x.pth")
    monkeypatch.setenv("REGATTN_MIRROR", "ftp.example.org/mirror")
    with pytest.raises(ValueError, match="REGATTN_MIRROR"):
        mf.resolve_url(GND_URL)


def write_manifest(path: Path, files: dict) -> Path:
    path.write_text(json.dumps({"files": files}))
    return path


def tiny_attention_file(path: Path) -> bytes:
    import torch

    g = torch.Generator().manual_seed(0)
    state = {
        "conv_att_1.weight": torch.randn(4, 8, 1, generator=g),
        "conv_att_1.bias": torch.randn(4, generator=g),
        "conv_att_2.weight": torch.randn(1, 4, 1, generator=g),
        "conv_att_2.bias": torch.randn(1, generator=g),
    }
    torch.save(state, path)
    return path.read_bytes()


def test_every_download_goes_through_the_mirror_into_the_data_root_in_use(
    site, tmp_path, monkeypatch
):
    """Attention, RPN, ResNet weights and datasets: fetched from <mirror>/<host><path>, checked
    against the override manifest, recorded in the lock file of the data root passed in."""
    from regattn_lib.models import backbone_weights as BW
    from regattn_lib.models.attention_weights import load_official_attention
    from regattn_lib.models.rpn import RPNRegions

    monkeypatch.setenv("REGATTN_DATA", str(tmp_path / "default-root"))  # must stay untouched
    monkeypatch.setenv("REGATTN_MIRROR", site.base + "/mirror")
    att = tiny_attention_file(tmp_path / "att.pth")
    import torch

    torch.save({"w": torch.arange(3)}, tmp_path / "rpn.pth")
    rpn = (tmp_path / "rpn.pth").read_bytes()
    served = {
        "official_attention": (att, {"sha256": hashlib.sha256(att).hexdigest(), "size": len(att)}),
        "rpn_fasterrcnn_coco": (rpn, {"sha256_prefix": hashlib.sha256(rpn).hexdigest()[:8]}),
        "torchvision_resnet101": (
            PAYLOAD,
            {"sha256": None, "sha256_prefix": SHA[:8], "size": len(PAYLOAD)},
        ),
        "gnd_oxford5k": (b"gnd bytes", {}),
    }
    files = {}
    for key, (data, fields) in served.items():
        entry = {**manifest_entry(key), **fields}
        del entry["key"]
        files[key] = entry
        site.add("/mirror/" + mf.mirror_path(entry["url"]), data)
    monkeypatch.setenv("REGATTN_MANIFEST", str(write_manifest(tmp_path / "m.json", files)))
    root = tmp_path / "root"

    module = load_official_attention(data_root=root)
    assert module.hidden == 4 and module.in_channels == 4
    assert torch.equal(RPNRegions._coco_state(root, True)["w"], torch.arange(3))
    tv = BW.ensure_weights("torchvision-resnet101", data_root=root)
    gnd = dl.download_entry("gnd_oxford5k", root, **FAST)

    assert tv.read_bytes() == PAYLOAD and gnd.read_bytes() == b"gnd bytes"
    wanted = sorted("/mirror/" + mf.mirror_path(e["url"]) for e in files.values())
    assert sorted(p for p, _ in site.requests) == wanted  # each once, each from the mirror
    lock = json.loads((root / "downloads.lock.json").read_text())
    # keyed by the canonical URLs; the attention's full hash is known, so it is not recorded
    assert sorted(lock) == sorted(files[k]["url"] for k in files if k != "official_attention")
    assert lock[files["gnd_oxford5k"]["url"]]["sha256"] == hashlib.sha256(b"gnd bytes").hexdigest()
    assert not (tmp_path / "default-root").exists()
    # Another mirror later: the files are the same files (records keyed by canonical URL).
    monkeypatch.setenv("REGATTN_MIRROR", site.base + "/elsewhere")
    assert dl.download_entry("gnd_oxford5k", root, **FAST) == gnd
    assert len(site.requests) == len(wanted)


def test_manifest_override_supplies_hashes_and_a_wrong_one_is_quarantined(
    site, tmp_path, monkeypatch
):
    monkeypatch.setenv("REGATTN_MIRROR", site.base)
    mirror_url = site.add("/" + mf.mirror_path(GND_URL), PAYLOAD)
    package = mf.load_manifest()
    gnd = {**package["gnd_oxford5k"], "sha256": SHA, "size": len(PAYLOAD)}
    extra = {"url": "https://example.org/x.bin", "dest": "x/x.bin"}
    override = write_manifest(tmp_path / "m.json", {"gnd_oxford5k": gnd, "fixture_x": extra})
    monkeypatch.setenv("REGATTN_MANIFEST", str(override))
    merged = mf.load_manifest()
    assert merged["gnd_oxford5k"] == gnd and merged["fixture_x"] == extra
    assert {k: v for k, v in merged.items() if k not in ("gnd_oxford5k", "fixture_x")} == {
        k: v for k, v in package.items() if k != "gnd_oxford5k"
    }
    ok = dl.download_entry("gnd_oxford5k", tmp_path / "a", **FAST)
    assert ok.read_bytes() == PAYLOAD
    assert not (tmp_path / "a" / "downloads.lock.json").exists()  # the override's hash is known

    write_manifest(override, {"gnd_oxford5k": {**gnd, "sha256": "0" * 64}})
    dest = tmp_path / "b" / gnd["dest"]
    with pytest.raises(ChecksumError) as e:
        dl.download_entry("gnd_oxford5k", tmp_path / "b", **FAST)
    msg = str(e.value)
    assert GND_URL in msg and mirror_url in msg and "0" * 64 in msg and SHA in msg
    assert not dest.exists()
    (moved,) = dest.with_name(dest.name + ".quarantine").iterdir()
    assert moved.read_bytes() == PAYLOAD


def test_mirror_failure_names_both_urls(site, tmp_path, monkeypatch):
    monkeypatch.setenv("REGATTN_MIRROR", site.base + "/m")
    with pytest.raises(DownloadError) as e:
        dl.download_entry("gnd_oxford5k", tmp_path, **FAST)
    msg = str(e.value)
    assert GND_URL in msg and f"{site.base}/m/{mf.mirror_path(GND_URL)}" in msg and "404" in msg


def test_a_local_folder_serves_as_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / mf.mirror_path(GND_URL)).parent.mkdir(parents=True)
    (mirror / mf.mirror_path(GND_URL)).write_bytes(PAYLOAD)
    monkeypatch.setenv("REGATTN_MIRROR", mirror.as_uri())
    out = dl.download_entry("gnd_oxford5k", tmp_path / "data", **FAST)
    assert out.read_bytes() == PAYLOAD
    assert lock_record(GND_URL, tmp_path / "data" / "downloads.lock.json")["sha256"] == SHA


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "does not exist"),
        ("{not json", "cannot read"),
        ('{"entries": {}}', "files"),
        ('{"files": {"k": {"url": "http://h/x", "dest": "../x"}}}', "inside the data root"),
        ('{"files": {"k": {"url": "http://h/x", "dest": "x", "sha256": "xyz"}}}', "hex"),
        ('{"files": {"k": {"dest": "x"}}}', "url"),
        ('{"files": {"k": {"url": "http://h/x", "dest": "x", "size": "12"}}}', "byte count"),
    ],
)
def test_malformed_manifest_override_is_named(tmp_path, monkeypatch, content, why):
    path = tmp_path / "override.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("REGATTN_MANIFEST", str(path))
    with pytest.raises(mf.ManifestError, match=why) as e:
        mf.load_manifest()
    assert str(path) in str(e.value)


# --- archives ----------------------------------------------------------------------------------


def make_tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_served_tarball_downloaded_and_extracted(site, tmp_path):
    blob = make_tar({"top/a.txt": b"alpha", "top/sub/b.txt": b"beta"})
    url = site.add("/a.tar.gz", blob)
    arc = download(url, tmp_path / "a.tar.gz", lock_file=tmp_path / "l.json", **FAST)
    out = extract_archive(arc, tmp_path / "x")
    assert (out / "top" / "a.txt").read_bytes() == b"alpha"
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (out / ".a.tar.gz.done").exists()
    # Marked done: a second call does not extract again.
    (out / "top" / "a.txt").unlink()
    extract_archive(arc, tmp_path / "x")
    assert not (out / "top" / "a.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if "extracting" in p.name] == []


def test_flatten_merges_two_archives(tmp_path):
    a = tmp_path / "p1.tgz"
    b = tmp_path / "p2.tgz"
    a.write_bytes(make_tar({"paris/louvre/x1.jpg": b"1", "paris/eiffel/x2.jpg": b"2"}))
    b.write_bytes(make_tar({"paris/pompidou/x3.jpg": b"3"}))
    jpg = tmp_path / "jpg"
    extract_archive(a, jpg, flatten=True)
    extract_archive(b, jpg, flatten=True)
    assert sorted(p.name for p in jpg.iterdir()) == [
        ".p1.tgz.done",
        ".p2.tgz.done",
        "x1.jpg",
        "x2.jpg",
        "x3.jpg",
    ]


def test_failed_extraction_leaves_nothing(tmp_path, monkeypatch):
    arc = tmp_path / "a.tar"
    arc.write_bytes(make_tar({"a.txt": b"a", "b.txt": b"b"}, mode="w"))
    calls = []
    real = tarfile.TarFile.makefile

    def boom(self, tarinfo, targetpath):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(self, tarinfo, targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", boom)
    with pytest.raises(OSError, match="disk full"):
        extract_archive(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]


@pytest.mark.parametrize("bad", ["../evil", "../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_tar_traversal_rejected(tmp_path, bad):
    arc = tmp_path / "t.tgz"
    arc.write_bytes(make_tar({"fine.txt": b"x", bad: b"evil"}))
    with pytest.raises(DownloadError, match="path traversal") as e:
        extract_archive(arc, tmp_path / "d" / "out")
    assert str(arc) in str(e.value) and repr(bad) in str(e.value)
    assert not (tmp_path / "d" / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "d").iterdir()) == []


def test_tar_symlink_and_zip_traversal_rejected(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    (tmp_path / "l.tar").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="not a regular file"):
        extract_archive(tmp_path / "l.tar", tmp_path / "o1")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(DownloadError, match="path traversal"):
        extract_archive(tmp_path / "z.zip", tmp_path / "o2")
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as zf:
        zf.writestr("d/e.txt", "e")
    assert (extract_archive(tmp_path / "good.zip", tmp_path / "o3") / "d" / "e.txt").exists()


# --- pickles -----------------------------------------------------------------------------------


class Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.remove, (self.target,))


def gnd_like() -> dict:
    return {
        "imlist": ["a", "b"],
        "qimlist": ["q"],
        "gnd": [{"bbx": [1.0, 2.0, 3.0, 4.0], "ok": np.array([0, 1]), "junk": []}],
        "scale": np.float64(0.5),
    }


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_safe_load_pickle_plain_data(tmp_path, protocol):
    p = tmp_path / "gnd.pkl"
    p.write_bytes(pickle.dumps(gnd_like(), protocol=protocol))
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    obj = safe_load_pickle(p, expected_sha256=sha, lock_file=tmp_path / "l.json")
    np.testing.assert_array_equal(obj["gnd"][0]["ok"], [0, 1])
    assert obj["imlist"] == ["a", "b"] and obj["scale"] == 0.5
    with pytest.raises(ChecksumError, match="not unpickled"):
        safe_load_pickle(p, expected_sha256="0" * 64, lock_file=tmp_path / "l.json")


def test_safe_load_pickle_protocol_2_empty_array_and_python2_names(tmp_path):
    # protocol 2 pickles an empty array's bytes as __builtin__.bytes (a Python 2 name)
    p = tmp_path / "gnd.pkl"
    data = pickle.dumps({"gnd": [{"junk": np.zeros(0, dtype=np.int64)}]}, protocol=2)
    assert b"__builtin__" in data
    p.write_bytes(data)
    assert safe_load_pickle(p, lock_file=tmp_path / "l.json")["gnd"][0]["junk"].shape == (0,)
    # the mapping does not open a way around the allow list
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"c__builtin__\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load_pickle(evil, lock_file=tmp_path / "l.json")


def test_safe_load_pickle_rejects_code(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"gnd": [Evil(str(victim))]}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*(posix|os)\.remove"):
        safe_load_pickle(p, lock_file=tmp_path / "l.json")
    assert victim.read_text() == "still here"


def test_safe_load_pickle_uses_lock_record(site, tmp_path):
    url = site.add("/gnd.pkl", pickle.dumps(gnd_like()))
    lock = tmp_path / "lock.json"
    p = download(url, tmp_path / "gnd.pkl", lock_file=lock, **FAST)
    assert safe_load_pickle(p, lock_file=lock)["qimlist"] == ["q"]
    p.write_bytes(pickle.dumps({"imlist": ["tampered"]}))
    with pytest.raises(ChecksumError, match=re.escape(url)):
        safe_load_pickle(p, lock_file=lock)
