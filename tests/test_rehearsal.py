"""The paper dress rehearsal (issue 11): the loopback mirror, the miniature fixtures and the
result checker. The rehearsal runs themselves: ``test_rehearsal_run``, ``test_rehearsal_quick``,
``test_rehearsal_resume`` (helpers in ``rehearsal_runs``).
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import os
import pickletools
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageFile
from rehearsal_runs import CK, FX, LM, REPO, need_official_weights

from regattn_lib.datasets import archives, safe_pickle
from regattn_lib.datasets import downloads as dl
from regattn_lib.datasets.imagenet import list_image_folder
from regattn_lib.datasets.retrieval import (
    add_distractors,
    cid2filename,
    load_retrieval_dataset,
    whitening_images,
)
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import reports as R
from regattn_lib.experiments.profiles import PAPER, Profile

REAL_MANIFEST = json.loads((REPO / "regattn_lib" / "datasets" / "manifest.json").read_text())[
    "files"
]


# ----------------------------------------------------------------------------- mirror
@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "root"
    data = bytes(range(256)) * 4
    (root / "example.org" / "a").mkdir(parents=True)
    (root / "example.org" / "a" / "b.bin").write_bytes(data)
    (root / "secret.txt").write_bytes(b"outside the served host folders")
    log = tmp_path / "mirror.log"
    server = LM.start_in_thread(root, log=log)
    yield server, data, log
    server.shutdown()
    server.server_close()


def _request(server, method: str, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_parse_range_spans():
    assert LM.parse_range(None, 100) is None
    assert LM.parse_range("bytes=0-9", 100) == (0, 9)
    assert LM.parse_range("bytes=90-", 100) == (90, 99)
    assert LM.parse_range("bytes=90-500", 100) == (90, 99)  # clipped to the end
    assert LM.parse_range("bytes=-10", 100) == (90, 99)  # the last 10 bytes
    assert LM.parse_range("bytes=-500", 100) == (0, 99)
    assert LM.parse_range("bytes=100-", 100) == "unsatisfiable"
    assert LM.parse_range("bytes=5-2", 100) == "unsatisfiable"
    assert LM.parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file
    assert LM.parse_range("items=0-1", 100) is None


def test_mirror_head_get_and_404(mirror):
    server, data, log = mirror
    resp, body = _request(server, "HEAD", "/example.org/a/b.bin")
    assert resp.status == 200 and body == b""
    assert resp.getheader("Content-Length") == str(len(data))
    assert resp.getheader("Accept-Ranges") == "bytes"
    resp, body = _request(server, "GET", "/example.org/a/b.bin")
    assert resp.status == 200 and body == data
    # percent-encoded paths (a client may quote '~' or spaces) map to the same file
    assert _request(server, "GET", "/example.org/%61/b.bin")[1] == data
    for missing in (
        "/example.org/a/none.bin",
        "/example.org/a",
        "/example.org/a/../../../etc/passwd",
    ):
        assert _request(server, "GET", missing)[0].status == 404, missing
    assert _request(server, "HEAD", "/nowhere/x")[0].status == 404
    records = server.wait_for_records(7)  # 1 HEAD + 2 GET found, 3 GET + 1 HEAD missing
    assert len(records) == 7
    (head,) = [r for r in records if (r["method"], r["status"]) == ("HEAD", 200)]
    gets = [r for r in records if (r["method"], r["status"]) == ("GET", 200)]
    assert len(gets) == 2 and all(g["bytes"] == len(data) and g["complete"] for g in gets)
    assert head["bytes"] == 0 and all(g["range"] is None for g in gets)
    assert sorted(r["status"] for r in records).count(404) == 4


def test_mirror_ranges(mirror):
    server, data, log = mirror
    resp, body = _request(server, "GET", "/example.org/a/b.bin", {"Range": "bytes=10-19"})
    assert resp.status == 206 and body == data[10:20]
    assert resp.getheader("Content-Range") == f"bytes 10-19/{len(data)}"
    assert resp.getheader("Content-Length") == "10"
    resp, body = _request(server, "GET", "/example.org/a/b.bin", {"Range": "bytes=1000-"})
    assert resp.status == 206 and body == data[1000:]
    resp, body = _request(server, "GET", "/example.org/a/b.bin", {"Range": "bytes=-24"})
    assert resp.status == 206 and body == data[-24:]
    resp, body = _request(server, "GET", "/example.org/a/b.bin", {"Range": f"bytes={len(data)}-"})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{len(data)}"
    resp, body = _request(server, "GET", "/example.org/a/b.bin", {"Range": "bytes=0-1,4-5"})
    assert resp.status == 200 and body == data
    resp, body = _request(server, "HEAD", "/example.org/a/b.bin", {"Range": "bytes=0-0"})
    assert resp.status == 206 and body == b"" and resp.getheader("Content-Length") == "1"
    # one line per request, written after the answer (so read through wait_for_records); two
    # requests in quick succession may log in either order (seen under load)
    ranges = [(r["range"], r["status"], r["bytes"]) for r in server.wait_for_records(6)]
    assert len(ranges) == 6
    for expected in [
        ("bytes=10-19", 206, 10),
        ("bytes=1000-", 206, 24),
        ("bytes=-24", 206, 24),
        (f"bytes={len(data)}-", 416, 0),
        ("bytes=0-1,4-5", 200, len(data)),
    ]:
        assert expected in ranges


def test_mirror_wait_for_records_names_the_log_when_requests_are_missing(mirror):
    server, _, log = mirror
    with pytest.raises(TimeoutError, match="mirror.log: 0 of 1 requests logged"):
        server.wait_for_records(1, timeout=0.05)


def test_mirror_resumes_the_library_download_with_a_range(mirror, tmp_path):
    """The project's downloader resumes a partial file through the mirror (HTTP 206)."""
    server, data, log = mirror
    dest = tmp_path / "dl" / "b.bin"
    dest.parent.mkdir()
    (dest.parent / "b.bin.part").write_bytes(data[:300])
    digest = FX.sha256_file(mirror[0].root / "example.org" / "a" / "b.bin")
    dl.download(
        f"{server.base_url}/example.org/a/b.bin",
        dest,
        sha256=digest,
        size=len(data),
        lock_file=tmp_path / "lock.json",
        progress=False,
    )
    assert dest.read_bytes() == data
    (rec,) = [r for r in server.wait_for_records(1) if r["method"] == "GET"]
    assert rec["range"] == "bytes=300-" and rec["status"] == 206 and rec["bytes"] == len(data) - 300


def test_mirror_throttle_lets_a_client_cut_a_download(tmp_path):
    root = tmp_path / "root"
    (root / "h").mkdir(parents=True)
    big = os.urandom(64 * 1024)
    (root / "h" / "slow.tar.gz").write_bytes(big)
    (root / "h" / "fast.pkl").write_bytes(big)
    log = tmp_path / "mirror.log"
    server = LM.start_in_thread(root, throttle=4000, throttle_match=r"\.tar\.gz$", log=log)
    try:
        with urllib.request.urlopen(f"{server.base_url}/h/fast.pkl", timeout=10) as r:
            assert r.read() == big  # not throttled: 64 KB at once
        r = urllib.request.urlopen(f"{server.base_url}/h/slow.tar.gz", timeout=10)
        assert r.read(1000) == big[:1000]
        r.close()  # the client goes away midway, as a killed download does
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            slow = [x for x in LM.read_log(log) if x["path"] == "h/slow.tar.gz"]
            if slow:
                break
            time.sleep(0.1)
    finally:
        server.shutdown()
        server.server_close()
    (rec,) = slow
    assert rec["complete"] is False and 1000 <= rec["bytes"] < len(big)


def test_mirror_cli_writes_its_port_and_stops_on_sigterm(tmp_path):
    root = tmp_path / "root"
    (root / "h").mkdir(parents=True)
    (root / "h" / "f.txt").write_text("hello")
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "loopback_mirror.py"),
            str(root),
            "--port-file",
            str(port_file),
            "--log",
            str(tmp_path / "log"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/h/f.txt", timeout=10) as r:
            assert r.read() == b"hello"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped" in out
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/h/f.txt", timeout=2)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """The miniature fixtures without the two large weight files (built in ~2 s)."""
    need_official_weights()
    return FX.build(tmp_path_factory.mktemp("fx"), seed=0, weights=False)


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf.getmembers()}


def _read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tf:
        return tf.extractfile(name).read()


def test_fixture_manifest_override_describes_the_mirror_files(fixture):
    files = json.loads(fixture.manifest_override.read_text())["files"]
    assert set(files) == set(fixture.files) and "official_attention" in files
    assert {
        "images_oxford5k",
        "images_paris6k_1",
        "images_paris6k_2",
        "gnd_oxford5k",
        "gnd_paris6k",
        "gnd_roxford5k",
        "gnd_rparis6k",
        "revisitop1m_list",
        "revisitop1m_tar_001",
        "revisitop1m_tar_003",
        "sfm120k_ims",
        "sfm_db_retrieval-SfM-120k-whiten",
    } <= set(files)
    for key, e in files.items():
        real = REAL_MANIFEST[key]
        assert (e["url"], e["dest"], e.get("extract_to")) == (
            real["url"],
            real["dest"],
            real.get("extract_to"),
        )
        path = FX.mirror_path(fixture.mirror, e["url"])
        assert path == fixture.files[key] and path.is_file()
        assert e["sha256"] == FX.sha256_file(path) and e["size"] == path.stat().st_size
        assert e["approx_bytes"] == e["size"]
        if e.get("extract_to"):
            assert e["extracted_bytes"] == sum(
                m.size for m in _members(path).values() if m.isfile()
            )
    # the authors' attention weights are their real file, with the real manifest hash
    assert files["official_attention"]["sha256"] == REAL_MANIFEST["official_attention"]["sha256"]
    assert not (fixture.mirror / "download.pytorch.org").exists()  # weights=False


def test_fixture_image_archives_have_the_real_inner_layout(fixture):
    ox = safe_pickle.safe_load_pickle(fixture.files["gnd_oxford5k"])
    members = _members(fixture.files["images_oxford5k"])
    assert all(m.isfile() and "/" not in n and n.endswith(".jpg") for n, m in members.items())
    assert {n[:-4] for n in members} == set(ox["imlist"])  # flat <name>.jpg, every image
    pa = safe_pickle.safe_load_pickle(fixture.files["gnd_paris6k"])
    names = set()
    for key, landmarks in FX.PARIS_ARCHIVE_LANDMARKS.items():
        mem = _members(fixture.files[key])
        dirs = {n for n, m in mem.items() if m.isdir()}
        assert dirs == {"paris", *(f"paris/{lm}" for lm in landmarks)}
        for n, m in mem.items():
            if m.isfile():
                top, lm, fname = n.split("/")
                assert top == "paris" and lm in landmarks and fname.startswith(f"paris_{lm}_")
                names.add(fname[:-4])
    assert names == set(pa["imlist"]) and set(FX.PARIS_BLACKLIST) <= names
    # the blacklisted files are broken (empty or cut short); every other image decodes
    for key in FX.PARIS_ARCHIVE_LANDMARKS:
        with tarfile.open(fixture.files[key]) as tf:
            for m in tf.getmembers():
                if not m.isfile():
                    continue
                data = tf.extractfile(m).read()
                broken = False
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                except OSError:
                    broken = True
                assert broken == (Path(m.name).stem in FX.PARIS_BLACKLIST), m.name


def test_fixture_gnd_pickles_have_the_real_types(fixture):
    ox = safe_pickle.safe_load_pickle(fixture.files["gnd_oxford5k"])
    rox = safe_pickle.safe_load_pickle(fixture.files["gnd_roxford5k"])
    for cfg in (ox, safe_pickle.safe_load_pickle(fixture.files["gnd_paris6k"])):
        assert isinstance(cfg["imlist"], list) and isinstance(cfg["qimlist"], list)
        for q, g in zip(cfg["qimlist"], cfg["gnd"], strict=True):
            assert set(g) == {"bbx", "ok", "junk"}
            assert len(g["bbx"]) == 4 and all(isinstance(v, float) for v in g["bbx"])
            assert all(
                isinstance(i, int) and 0 <= i < len(cfg["imlist"]) for i in g["ok"] + g["junk"]
            )
            assert cfg["imlist"].index(q) in g["ok"]  # classic: the query is a database image
    for cfg in (rox, safe_pickle.safe_load_pickle(fixture.files["gnd_rparis6k"])):
        assert not set(cfg["qimlist"]) & set(cfg["imlist"])  # revisited: queries not in the db
        for g in cfg["gnd"]:
            assert set(g) == {"bbx", "easy", "hard", "junk"}
            assert isinstance(g["bbx"], np.ndarray) and g["bbx"].dtype == np.float64
            for k in ("easy", "hard", "junk"):
                assert g[k].dtype == np.int64 and len(g[k]) and g[k].max() < len(cfg["imlist"])
    # ROxford5k: the classic queries plus a new one, the classic database without them
    assert rox["qimlist"][:-1] == ox["qimlist"] and rox["qimlist"][-1] in ox["imlist"]
    assert set(rox["imlist"]) == set(ox["imlist"]) - set(rox["qimlist"])
    # numpy arrays named as pre-numpy-2 pickles name them
    globals_ = {
        a
        for op, a, _ in pickletools.genops(fixture.files["gnd_roxford5k"].read_bytes())
        if op.name == "GLOBAL"
    }
    assert "numpy.core.multiarray _reconstruct" in globals_


def test_fixture_known_answer_queries_have_only_near_duplicate_positives(fixture):
    """Every oxford5k query's positives are the same picture; every other image is unrelated
    (pixel distances after resizing to the query's size), so its AP must be 100."""
    ox = safe_pickle.safe_load_pickle(fixture.files["gnd_oxford5k"])
    assert ox["qimlist"] == fixture.expected["known_answer"]["queries"]
    arc = fixture.files["images_oxford5k"]

    def pixels(name, size):
        im = Image.open(io.BytesIO(_read_member(arc, f"{name}.jpg"))).convert("RGB")
        return np.asarray(im.resize(size, Image.BILINEAR), dtype=float)

    for q, g in zip(ox["qimlist"], ox["gnd"], strict=True):
        size = Image.open(io.BytesIO(_read_member(arc, f"{q}.jpg"))).size
        ref = pixels(q, size)
        assert len(g["ok"]) == 3 and g["bbx"][0] < 2 and g["bbx"][2] > size[0] - 2
        for i, name in enumerate(ox["imlist"]):
            dist = np.abs(pixels(name, size) - ref).mean()
            if i in g["ok"]:
                assert dist < 6, (q, name, dist)
            elif i not in g["junk"]:
                assert dist > 25, (q, name, dist)


def _data_root_from_mirror(fixture, root: Path) -> Path:
    """What the downloads would leave: every file at its dest, archives extracted as the
    library extracts them."""
    entries = json.loads(fixture.manifest_override.read_text())["files"]
    for key, e in entries.items():
        dest = root / e["dest"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixture.files[key], dest)
        if e.get("extract_to"):
            archives.extract_archive(
                dest, root / e["extract_to"], flatten=key.startswith("images_")
            )
    return root


def test_fixture_loads_through_the_library(fixture, tmp_path):
    root = _data_root_from_mirror(fixture, tmp_path / "data")
    for name, want in fixture.expected["datasets"].items():
        ds = load_retrieval_dataset(name, root)
        assert (ds.n_db, ds.n_queries) == (want["database"], want["queries"]), name
    paris = load_retrieval_dataset("paris6k", root)
    assert sorted(paris.excluded) == sorted(FX.PARIS_BLACKLIST)
    assert all(i < paris.n_db for g in paris.gnd for i in g["ok"] + g["junk"])
    white = whitening_images("sfm120k", root)
    assert len(white) == FX.N_WHITENING and all(p.is_file() for p in white)
    small = [p for p in white if min(Image.open(p).size) < 200]
    assert [p.name for p in small] == fixture.expected["whitening"]["under_200px"]
    assert sorted(min(Image.open(p).size) for p in small) == [30, 150]
    assert fixture.expected["must_report_skipped"][1] == small[-1].name
    n = fixture.expected["distractors"]["total"]
    ox = add_distractors(load_retrieval_dataset("oxford5k", root), "revisitop1m", n, root)
    assert len(ox.distractors) == n and all(p.is_file() for p in ox.distractors)
    paths, labels, classes = list_image_folder(fixture.local / "train" / "imagenet" / "train")
    assert classes == list(FX.IMAGENET_WNIDS) and len(paths) == 4 * FX.IMAGENET_TRAIN


def test_fixture_distractors_and_whitening_layout(fixture):
    listed = fixture.files["revisitop1m_list"].read_text().splitlines()
    in_tars = []
    for k in range(1, len(FX.N_DISTRACTORS) + 1):
        names = list(_members(fixture.files[f"revisitop1m_tar_{k:03d}"]))
        assert len(names) == FX.N_DISTRACTORS[k - 1]
        in_tars += names
    assert in_tars == listed and len(set(listed)) == len(listed)
    assert all(n.count("/") == 2 and n.endswith(".jpg") for n in listed)
    special = fixture.expected["distractors"]
    arc = {n: k for k in range(1, 4) for n in _members(fixture.files[f"revisitop1m_tar_{k:03d}"])}
    truncated = _read_member(
        fixture.files[f"revisitop1m_tar_{arc[special['truncated']]:03d}"], special["truncated"]
    )
    with pytest.raises(OSError), Image.open(io.BytesIO(truncated)) as im:
        im.load()  # truncated: PIL refuses it unless told to decode what is there
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(io.BytesIO(truncated)) as im:
            im.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    tiny = _read_member(
        fixture.files[f"revisitop1m_tar_{arc[special['tiny']]:03d}"], special["tiny"]
    )
    assert Image.open(io.BytesIO(tiny)).size[0] < 10
    # SfM-120k: cid2filename paths without a top folder or an extension
    whiten = safe_pickle.safe_load_pickle(fixture.files["sfm_db_retrieval-SfM-120k-whiten"])
    assert set(whiten) == {"cids", "cluster", "qidxs", "pidxs"}
    members = _members(fixture.files["sfm120k_ims"])
    assert set(members) == {str(cid2filename(c, ".").relative_to(".")) for c in whiten["cids"]}
    db = safe_pickle.safe_load_pickle(fixture.files["sfm_db_retrieval-SfM-120k"])
    assert set(db) == {"train", "val"} and set(db["train"]) == set(whiten)


def test_fixture_is_deterministic(fixture, tmp_path):
    again = FX.build(tmp_path / "again", seed=0, weights=False)
    a = json.loads(fixture.manifest_override.read_text())["files"]
    b = json.loads(again.manifest_override.read_text())["files"]
    assert {k: e["sha256"] for k, e in a.items()} == {k: e["sha256"] for k, e in b.items()}
    other = FX.build(tmp_path / "other", seed=1, weights=False)
    c = json.loads(other.manifest_override.read_text())["files"]
    assert c["images_oxford5k"]["sha256"] != a["images_oxford5k"]["sha256"]
    # a finished build is reused, not rebuilt
    stamp = again.files["images_oxford5k"].stat().st_mtime_ns
    FX.build(tmp_path / "again", seed=0, weights=False)
    assert again.files["images_oxford5k"].stat().st_mtime_ns == stamp


#: Profile / TrainSettings / TrainConfig fields the overrides may set: sizes only.
SIZE_FIELDS = {
    "image_size",
    "whitening_image_size",
    "whitening_dims",
    "whitening_study_dims",
    "global_whitening_dims",
    "n_distractors",
    "rpn_proposals",
    "train",
    "metric",
}
TRAIN_SIZE_FIELDS = {"recipe"}
METRIC_SIZE_FIELDS = {"epochs", "query_size", "pool_size"}
RECIPE_SIZE_FIELDS = {
    "iterations",
    "batch_size",
    "accumulation",
    "resize_min",
    "resize_max",
    "crop",
    "val_resize",
    "val_crop",
    "val_images",
    "checkpoint_every",
    "log_every",
    "val_batch_size",
    "num_workers",
}


def test_overrides_are_sizes_of_existing_fields(fixture):
    ov = yaml.safe_load(fixture.overrides.read_text())
    fields = {f.name for f in dataclasses.fields(Profile)}
    assert set(ov) <= SIZE_FIELDS and set(ov) - {"train"} <= fields
    assert (
        set(ov["train"]) <= TRAIN_SIZE_FIELDS and set(ov["train"]["recipe"]) <= RECIPE_SIZE_FIELDS
    )
    assert set(ov["metric"]) <= METRIC_SIZE_FIELDS
    assert ov["n_distractors"] == fixture.expected["distractors"]["total"]
    recipe = dataclasses.replace(PAPER.train.recipe, **ov["train"]["recipe"]).validate()
    assert recipe.crop <= recipe.resize_min and recipe.iterations >= recipe.checkpoint_every
    profile = dataclasses.replace(
        PAPER, **{k: v for k, v in ov.items() if k not in ("train", "metric")}
    )
    assert profile.backbone == PAPER.backbone and profile.datasets == PAPER.datasets


@pytest.mark.slow  # a ResNet-101 pass over the whitening set and oxford5k: ~10 s on 2 cores
def test_fixture_weights_have_the_publishers_layouts(fixture, tmp_path):
    """cirtorch's key layout, a convention the detector reads off the file (cirtorch's RGB
    input), a network stable enough that the known answer holds (every oxford5k AP 100), and
    the layout of torchvision's COCO Faster R-CNN file."""
    import torchvision
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from regattn_lib.experiments import pipeline as P
    from regattn_lib.experiments import studies as S
    from regattn_lib.models.factory import build_backbone

    state = FX.caffe_features_state(0)
    ref = torch.nn.Sequential(*list(torchvision.models.resnet101().children())[:-2]).state_dict()
    assert list(state) == [k for k in ref if not k.endswith("num_batches_tracked")]
    path = tmp_path / "features.pth"
    torch.save(state, path)
    backbone = build_backbone("caffe-resnet101", weights_path=path)
    meta = backbone.input_metadata()
    assert (meta["input_convention"], meta["convention_source"]) == ("rgb-imagenet", "detected")
    root = _data_root_from_mirror(fixture, tmp_path / "data")
    overrides = yaml.safe_load(fixture.overrides.read_text())
    ctx = P.setup(
        "paper", data_root=root, results=tmp_path / "results", device="cpu", overrides=overrides
    )
    ctx = ctx.with_backbone(backbone)  # the fixture's network
    perq, _ = S.per_query(ctx, P.learn_whitening(ctx, progress=False), "oxford5k")
    assert list(perq["query"]) == fixture.expected["known_answer"]["queries"]
    aps = perq[[c for c in perq.columns if c.startswith("AP ")]].to_numpy()
    assert aps.shape[1] == 2 and np.allclose(aps, 100.0), perq
    rpn = FX.rpn_state(0)
    builder = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    assert set(rpn) == {k for k in builder.state_dict() if not k.endswith("num_batches_tracked")}
    builder.load_state_dict(rpn)  # strict, as the library loads the COCO file


# ----------------------------------------------------------------------------- checker
def _write_good_tables(tables: Path, expected: dict | None = None) -> None:
    """Tables as notebooks 01-06 write them, with every row and label the checker wants."""
    from regattn_lib.experiments.tables import compare_to_paper

    tables.mkdir(parents=True, exist_ok=True)
    labels = {
        "R-MAC + PCA": "none (no attention)",
        "+ regional attention": "trained here",
        "+ context awareness": "released weights",
    }
    abl = pd.DataFrame(
        {
            "method": list(labels),
            "oxford5k": [60.0, 62.5, 64.0],
            "paris6k": [70.0, 71.0, 72.5],
            "time_s": [0.5, 0.6, 0.61],
        }
    )
    # beyond the paper: the attention learned by metric learning (the paper profile's rows)
    metric = {m: P.TRAINED_METRIC for m in (P.METRIC_REGIONAL, P.METRIC_CONTEXT)}
    abl = pd.concat(
        [
            abl,
            pd.DataFrame(
                {
                    "method": list(metric),
                    "oxford5k": [63.0, 64.5],
                    "paris6k": [71.5, 73.0],
                    "time_s": [0.6, 0.61],
                }
            ),
        ],
        ignore_index=True,
    )
    labels = {**labels, **metric}
    t, _ = compare_to_paper(abl, R.PAPER_ABLATION, ["oxford5k", "paris6k"], extra=["time_s"])
    t["weights"] = [labels[m] for m in t["method"]]
    R.write_table(t, tables, "ablation")
    t, _ = compare_to_paper(abl.drop(columns="time_s"), R.PAPER_RPN, ["oxford5k", "paris6k"])
    t["weights"] = [labels[m] for m in t["method"]]
    R.write_table(t, tables, "rpn")
    R.write_table(
        pd.DataFrame(
            [
                {"kind": k, "chosen": c, "val mAP": 60.0 + c, "val mAP R-MAC": 58.0}
                for k in P.METRIC_KINDS.values()
                for c in (False, True)
            ]
        ),
        tables,
        "metric_training",
    )
    methods = ["MAC", "SPoC", "CroW", "R-MAC", "Ours", CK.OURS_METRIC]
    methods += [f"{m}+QE" for m in methods]
    cols = ["oxford5k", "paris6k", "oxford105k", "paris106k"]
    sota = pd.DataFrame({"method": methods, **{c: np.linspace(50, 80, len(methods)) for c in cols}})
    t, _ = compare_to_paper(sota, R.PAPER_SOTA, cols, baseline="R-MAC")
    t["weights"] = [
        "paper only"
        if m.startswith(("SDCF", "CAM"))
        else P.TRAINED_METRIC
        if m.startswith(CK.OURS_METRIC)
        else "released weights"
        if m.startswith("Ours")
        else "none (no attention)"
        for m in t["method"]
    ]
    R.write_table(t, tables, "sota")
    rows = [
        {
            "dataset": d,
            "method": m,
            "levels": lv,
            "regions_4x3": 1,
            "mAP": 50.0 + lv,
            "weights": labels[m],
        }
        for d in ("oxford5k", "paris6k")
        for lv in PAPER.scale_levels
        for m in labels
    ]
    R.write_table(pd.DataFrame(rows), tables, "scale_study")
    rows = [
        {
            "dataset": d,
            "method": m,
            **{c: 40.0 for c in CK.PROTOCOL_COLUMNS},
            "weights": P.TRAINED_METRIC
            if m.startswith(CK.OURS_METRIC)
            else "released weights"
            if m.startswith("Ours")
            else "none (no attention)",
        }
        for d in ("roxford5k", "rparis6k")
        for m in (*CK.REVISITED_METHODS, *CK.METRIC_ROWS["sota"])
    ]
    R.write_table(pd.DataFrame(rows), tables, "revisited")
    rows = [
        {"dataset": d, "method": m, "whitening vectors": 10, "classic mAP": 40.0}
        for d in ("oxford5k", "paris6k")
        for m in ("R-MAC, no whitening", "R-MAC + PCA-whitening 128-d")
    ]
    R.write_table(pd.DataFrame(rows), tables, "whitening")
    counts = (expected or {}).get("datasets") or {
        d: {"database": 9, "queries": 2} for d in ("oxford5k", "paris6k", "roxford5k", "rparis6k")
    }
    R.write_table(
        pd.DataFrame([{"dataset": d, **c} for d, c in counts.items()]), tables, "datasets"
    )
    queries = (expected or {}).get("known_answer", {}).get("queries", ["q1", "q2"])
    R.write_table(
        pd.DataFrame({"query": queries, "AP R-MAC": 100.0, "AP Ours": 100.0, "gain": 0.0}),
        tables,
        "per_query",
    )
    skipped = (expected or {}).get("must_report_skipped", [])
    R.write_table(
        pd.DataFrame({"name": skipped, "reason": "4x128 px after resizing"}),
        tables,
        "skipped_images",
    )


EXPECTED = {
    "must_report_skipped": ["b095733bf6af8d1a0f10205b0dd7dcf1"],
    "known_answer": {
        "dataset": "oxford5k",
        "queries": ["all_souls_000013", "balliol_000051"],
        "ap": 100.0,
    },
    "datasets": {
        "oxford5k": {"database": 34, "queries": 5},
        "paris6k": {"database": 33, "queries": 4},
        "roxford5k": {"database": 28, "queries": 6},
        "rparis6k": {"database": 28, "queries": 5},
    },
}


@pytest.fixture
def good(tmp_path):
    from regattn_lib.experiments.report_page import write_report

    _write_good_tables(tmp_path / "tables", EXPECTED)
    write_report(tmp_path, profile="paper")
    return tmp_path


def test_paper_report_has_the_papers_rows_columns_and_values(good):
    from regattn_lib.experiments.report_page import report_table

    text = (good / "REPORT.md").read_text()
    abl = report_table(text, "ablation").set_index("method")
    # the paper's rows in its order, then the attention learned by metric learning (beyond it)
    paper_rows = list(R.PAPER_ABLATION["method"])
    assert list(abl.index) == [*paper_rows, P.METRIC_REGIONAL, P.METRIC_CONTEXT]
    assert abl.loc["+ context awareness", "Oxford5k paper"] == "76.8"
    assert abl.loc["R-MAC + PCA", "Oxford5k ours (diff)"] == "60 (-10.1)"
    sota = report_table(text, "sota").set_index("method")
    assert (
        sota.loc["SDCF", "Paris106k paper"] == "74.3"
        and sota.loc["Ours+QE", "Oxford5k paper"] == ""
    )
    assert "Synthetic" not in text and "synthetic stand-in" not in text


def test_checker_names_a_wrong_paper_value_in_the_report(good):
    path = good / "REPORT.md"
    path.write_text(path.read_text().replace("| 76.8 |", "| 76.9 |", 1))
    problems = CK.check_results(good, EXPECTED)
    assert any("REPORT.md ablation: '+ context awareness' Oxford5k paper" in p for p in problems)
    path.unlink()
    assert any(p.startswith("no report") for p in CK.check_results(good, EXPECTED))


def _edit(results: Path, name: str, fn) -> None:
    path = results / "tables" / f"{name}.csv"
    df = fn(pd.read_csv(path))
    df.to_csv(path, index=False)


def test_checker_passes_complete_tables(good, tmp_path):
    assert CK.check_results(good, EXPECTED) == []
    (tmp_path / "expected.json").write_text(json.dumps(EXPECTED))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "check_paper_results.py"),
            str(good),
            "--expected",
            str(tmp_path / "expected.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "known answer AP 100 on 2 queries" in proc.stdout


def test_checker_names_a_missing_row_and_table(good):
    _edit(good, "ablation", lambda df: df[df["method"] != "+ regional attention"])
    _edit(good, "scale_study", lambda df: df[df["levels"] != 7])
    (good / "tables" / "rpn.csv").unlink()
    problems = CK.check_results(good, EXPECTED)
    assert "ablation: the paper's row '+ regional attention' is missing" in problems
    assert any(p.startswith("rpn: table") and "missing" in p for p in problems)
    assert "scale_study: no row for oxford5k, 'R-MAC + PCA', L = 7" in problems
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_paper_results.py"), str(good)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "+ regional attention" in proc.stderr


def test_checker_rejects_nan_and_wrong_paper_values(good):
    def sota(df):
        df.loc[df["method"] == "R-MAC", "oxford105k ours"] = np.nan
        df.loc[df["method"] == "Ours", "paris6k paper"] = 80.0  # the paper says 87.5
        df.loc[df["method"] == "CroW", "oxford5k diff"] = 0.0
        return df

    _edit(good, "sota", sota)
    _edit(good, "revisited", lambda df: df.assign(**{"hard mAP": [np.nan] + [1.0] * (len(df) - 1)}))
    problems = CK.check_results(good, EXPECTED)
    assert "sota: row 'R-MAC', column 'oxford105k ours' is nan, not a finite number" in problems
    assert any("'Ours', column 'paris6k paper' is 80, the paper has 87.5" in p for p in problems)
    assert any("'CroW', column 'oxford5k diff' is 0," in p for p in problems)
    assert "revisited: roxford5k, 'R-MAC': ['hard mAP'] not finite" in problems
    assert len(problems) == 4


def test_checker_requires_weights_labels(good):
    _edit(
        good,
        "ablation",
        lambda df: df.assign(
            weights=["released weights", "released weights", None, P.TRAINED_METRIC, "trained here"]
        ),
    )
    _edit(good, "revisited", lambda df: df.drop(columns="weights"))
    _edit(
        good,
        "sota",
        lambda df: df.assign(
            weights=df["weights"].replace("released weights", "none (no attention)")
        ),
    )
    problems = CK.check_results(good, EXPECTED)
    assert any("'+ regional attention' says 'released weights'" in p for p in problems)
    assert any(
        "'+ context awareness' is not labelled 'released weights' or 'trained here'" in p
        and "(found nan)" in p
        for p in problems
    )
    assert any(p.startswith("revisited: missing column(s) ['weights']") for p in problems)
    # an attention row may not say it has none; R-MAC rows may
    assert any("sota: row 'Ours' is not labelled" in p for p in problems)
    assert not any("'R-MAC'" in p for p in problems)
    # a metric-learned row says so
    assert any(
        f"ablation: row '{P.METRIC_CONTEXT}' is not labelled '{P.TRAINED_METRIC}'" in p
        for p in problems
    )
    assert not any(f"row '{P.METRIC_REGIONAL}'" in p for p in problems)


def test_checker_requires_the_metric_learned_rows_where_the_profile_learns_them(good):
    """The paper profile learns attention by metric learning on SfM-120k (beyond the paper):
    its log and rows are required; paper-quick learns none and needs none."""
    _edit(good, "ablation", lambda df: df[df["method"] != P.METRIC_REGIONAL])
    _edit(
        good,
        "sota",
        lambda df: df.assign(
            **{"paris6k ours": np.where(df["method"] == CK.OURS_METRIC, np.nan, df["paris6k ours"])}
        ),
    )
    _edit(
        good,
        "scale_study",
        lambda df: df[~((df["method"] == P.METRIC_CONTEXT) & (df["levels"] == 3))],
    )
    _edit(good, "metric_training", lambda df: df.assign(chosen=False))
    _edit(
        good,
        "revisited",
        lambda df: df.assign(
            weights=np.where(
                (df["dataset"] == "rparis6k") & (df["method"] == CK.OURS_METRIC),
                "trained here",
                df["weights"],
            )
        ),
    )
    problems = CK.check_results(good, EXPECTED)
    assert f"ablation: no row '{P.METRIC_REGIONAL}' (metric learning)" in problems
    assert f"sota: row '{CK.OURS_METRIC}': ['paris6k ours'] missing or not finite" in problems
    for ds in ("oxford5k", "paris6k"):
        assert f"scale_study: {ds}, '{P.METRIC_CONTEXT}', L = 3: no finite mAP" in problems
    for kind in P.METRIC_KINDS.values():
        assert f"metric_training: 0 chosen run(s) of {kind}, not 1" in problems
    assert (
        f"revisited: row '{CK.OURS_METRIC}' is not labelled '{P.TRAINED_METRIC}' in column "
        "'weights' (found 'trained here')" in problems
    )
    assert not any("paper-quick" in p for p in problems)
    (good / "tables" / "metric_training.csv").unlink()
    assert any("metric_training: table" in p for p in CK.check_results(good, EXPECTED))
    # a profile without metric learning has no such rows at all
    _edit(good, "sota", lambda df: df[~df["method"].str.startswith(CK.OURS_METRIC)])
    assert f"sota: no row '{CK.OURS_METRIC}' (metric learning)" in CK.check_results(good, EXPECTED)
    quick = CK.check_results(good, EXPECTED, profile="paper-quick")
    assert not any("metric" in p for p in quick), quick


def test_checker_verifies_the_known_answer_and_counts(good):
    _edit(good, "per_query", lambda df: df.assign(**{"AP Ours": [100.0, 99.5]}))
    _edit(good, "datasets", lambda df: df.assign(database=[34, 53, 28, 28]))  # blacklist kept
    problems = CK.check_results(good, EXPECTED)
    assert (
        "per_query: known-answer query 'balliol_000051': AP Ours = 99.5, must be 100 "
        "(its positives are near duplicates)" in problems
    )
    assert "datasets: paris6k has database = 53, the fixture has 33" in problems
    assert len(problems) == 2
    (good / "tables" / "per_query.csv").unlink()
    assert any("per_query.csv is missing" in p for p in CK.check_results(good, EXPECTED))


def test_checker_requires_a_report_of_the_skipped_images(good):
    assert CK.check_results(good, EXPECTED) == []
    for f in (good / "tables").glob("skipped_images.*"):
        f.unlink()
    # a warning in an executed notebook is not a report
    (good / "notebooks").mkdir()
    (good / "notebooks" / "05_sota_table.log").write_text(
        "skipped b095733bf6af8d1a0f10205b0dd7dcf1"
    )
    assert CK.check_results(good, EXPECTED) == [
        "skipped images: 'b095733bf6af8d1a0f10205b0dd7dcf1', which cannot be used, is named in "
        f"no report under {good} (tables, metrics; notebooks/ not counted)"
    ]


# ----------------------------------------------------------------------------- paper-quick
def _quick_tables(good: Path) -> None:
    """The good tables as the paper-quick profile writes them: no trained regional attention
    (its rows empty, labelled as needing training), no 105k/106k columns."""
    from regattn_lib.experiments.pipeline import NOT_TRAINED

    def untrained(df):
        sel = df["method"] == "+ regional attention"
        for c in df.columns:
            if c.endswith((" ours", " diff")):
                df.loc[sel, c] = np.nan
        df.loc[sel, "weights"] = NOT_TRAINED
        return df

    _edit(good, "ablation", untrained)
    _edit(good, "rpn", untrained)
    _edit(good, "sota", lambda df: df[[c for c in df.columns if "10" not in c.split()[0]]])
    _edit(good, "scale_study", lambda df: df[df["method"] != "+ regional attention"])


def test_checker_paper_quick_allows_what_the_profile_leaves_out(good):
    _quick_tables(good)
    assert CK.check_results(good, EXPECTED, profile="paper-quick") == []
    # the full profile's check still wants them
    problems = CK.check_results(good, EXPECTED)
    assert any("'+ regional attention', column 'oxford5k ours' is nan" in p for p in problems)
    assert any("oxford105k" in p for p in problems)
    # an empty row must say why, and the paper's values must stay
    _edit(
        good,
        "ablation",
        lambda df: df.assign(
            weights=df["weights"].replace(
                df.loc[df["method"] == "+ regional attention", "weights"].iloc[0], "paper only"
            )
        ),
    )
    _edit(good, "rpn", lambda df: df.assign(**{"paris6k paper": 1.0}))
    problems = CK.check_results(good, EXPECTED, profile="paper-quick")
    assert any("ablation: row '+ regional attention' is empty" in p for p in problems)
    assert any(
        "rpn: row '+ regional attention', column 'paris6k paper' is 1" in p for p in problems
    )


def test_checker_reads_the_mirror_log_for_unneeded_requests(tmp_path):
    log = tmp_path / "mirror.log"
    ok = {"path": "www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"}
    sfm = {"path": "cmp.felk.cvut.cz/cnnimageretrieval/data/train/ims/ims.tar.gz"}
    rev = {"path": "ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.1.tar.gz"}
    log.write_text("".join(json.dumps(r) + "\n" for r in (sfm, ok, rev)))
    quick = CK.get_profile("paper-quick")
    problems: list[str] = []
    CK.check_requests(log, quick, problems)
    assert len(problems) == 2 and "SfM-120k" in problems[0] and "distractors" in problems[1]
    problems = []
    assert len(CK.check_requests(log, quick, problems, start=1)) == 2 and len(problems) == 1
    problems = []
    CK.check_requests(log, CK.get_profile("paper"), problems)
    assert problems == []
