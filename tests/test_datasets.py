"""Dataset loading on tiny fake data: cirtorch layout, Paris blacklist, missing-file messages,
user folders and queries files, ImageFolder reader, distractors, whitening sets."""

from __future__ import annotations

import functools
import io
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regattn_lib.datasets import downloads as dl
from regattn_lib.datasets import manifest as mf
from regattn_lib.datasets.imagenet import imagenet_split, list_image_folder
from regattn_lib.datasets.retrieval import (
    PARIS_BLACKLIST,
    RetrievalDataset,
    add_distractors,
    cid2filename,
    load_folder_dataset,
    load_retrieval_dataset,
    parse_queries_file,
    remove_images,
    resolve_distractors,
    whitening_images,
)


def jpg(path: Path, size=(40, 32), color=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def make_set(data: Path, name: str, imlist, qimlist, gnd, images=True) -> Path:
    root = data / "test" / name
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    (root / f"gnd_{name}.pkl").write_bytes(pickle.dumps(cfg))
    if images:
        for n in set(imlist) | set(qimlist):
            jpg(root / "jpg" / f"{n}.jpg")
    return root


SYN_GND = [
    {"bbx": [1, 2, 30, 20], "ok": [0, 1], "easy": [0], "hard": [1], "junk": [2]},
    {
        "bbx": np.array([0.5, 0.5, 10.0, 12.0]),
        "ok": np.array([2]),
        "easy": [],
        "hard": [2],
        "junk": [],
    },
]


def test_local_synthetic_set_both_protocols(tmp_path):
    make_set(tmp_path, "synthetic-smoke", ["d0", "d1", "d2"], ["q0", "q1"], SYN_GND)
    ds = load_retrieval_dataset("synthetic-smoke", data_root=tmp_path)
    root = tmp_path.resolve() / "test" / "synthetic-smoke"
    assert ds.kind == "both" and ds.protocols == ["classic", "easy", "medium", "hard"]
    assert ds.db_paths == [root / "jpg" / f"d{i}.jpg" for i in range(3)]
    assert ds.query_paths == [root / "jpg" / "q0.jpg", root / "jpg" / "q1.jpg"]
    assert ds.query_bbxs == [[1.0, 2.0, 30.0, 20.0], [0.5, 0.5, 10.0, 12.0]]
    assert (ds.n_db, ds.n_queries) == (3, 2)
    assert ds.gnd[1]["ok"] == [2] and isinstance(ds.gnd[1]["ok"][0], int)
    assert ds.gnd_for("medium") == [{"ok": [0, 1], "junk": [2]}, {"ok": [2], "junk": []}]
    assert ds.gnd_for("hard") == [{"ok": [1], "junk": [2, 0]}, {"ok": [2], "junk": []}]
    assert ds.gnd_for("classic")[0] == {"ok": [0, 1], "junk": [2]}


def test_classic_set_and_revisited_fallback_to_classic_images(tmp_path):
    make_set(
        tmp_path,
        "oxford5k",
        ["a", "b", "c"],
        ["a"],
        [{"bbx": [0, 0, 9, 9], "ok": [0, 2], "junk": [1]}],
    )
    ox = load_retrieval_dataset("oxford5k", data_root=tmp_path)
    assert ox.kind == "classic" and ox.excluded == []
    with pytest.raises(ValueError, match="not available"):
        ox.gnd_for("easy")
    # roxford5k without its own jpg/ uses oxford5k's photos.
    make_set(
        tmp_path,
        "roxford5k",
        ["b", "c"],
        ["a"],
        [{"bbx": [0, 0, 9, 9], "easy": [1], "hard": [], "junk": [0]}],
        images=False,
    )
    rox = load_retrieval_dataset("roxford5k", data_root=tmp_path)
    assert rox.kind == "revisited"
    assert rox.db_paths[0] == tmp_path.resolve() / "test" / "oxford5k" / "jpg" / "b.jpg"


def test_remove_images_hand_made():
    imlist = ["p_a", "paris_louvre_000136", "p_b", "paris_pompidou_000195", "p_c"]
    gnd = [
        {"ok": [0, 1, 2, 4], "junk": [3], "bbx": [0, 0, 1, 1]},
        {"easy": [4], "hard": [1, 2], "junk": []},
    ]
    kept, new, removed = remove_images(imlist, gnd, PARIS_BLACKLIST)
    # old -> new: 0 -> 0, 2 -> 1, 4 -> 2; 1 and 3 are gone
    assert kept == ["p_a", "p_b", "p_c"]
    assert removed == ["paris_louvre_000136", "paris_pompidou_000195"]
    assert new[0] == {"ok": [0, 1, 2], "junk": [], "bbx": [0, 0, 1, 1]}
    assert new[1] == {"easy": [2], "hard": [1], "junk": []}
    assert gnd[0]["ok"] == [0, 1, 2, 4]  # input untouched


def test_paris6k_blacklist_applied_on_load(tmp_path):
    imlist = ["paris_x_1", "paris_triomphe_000867", "paris_x_2", "paris_x_3"]
    make_set(
        tmp_path,
        "paris6k",
        imlist,
        ["paris_x_1"],
        [{"bbx": [0, 0, 5, 5], "ok": [2, 3, 1], "junk": [1, 0]}],
    )
    (tmp_path / "test" / "paris6k" / "jpg" / "paris_triomphe_000867.jpg").unlink()  # corrupt/absent
    ds = load_retrieval_dataset("paris6k", data_root=tmp_path)
    assert ds.imlist == ["paris_x_1", "paris_x_2", "paris_x_3"]
    assert ds.excluded == ["paris_triomphe_000867"]
    # old 2 -> 1, old 3 -> 2, old 1 dropped; junk old 0 -> 0
    assert ds.gnd[0]["ok"] == [1, 2] and ds.gnd[0]["junk"] == [0]


def test_missing_gnd_message_lists_urls_and_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_retrieval_dataset("roxford5k", data_root=tmp_path)
    msg = str(e.value)
    root = tmp_path.resolve()
    assert "http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/roxford5k/gnd_roxford5k.pkl" in msg
    assert str(root / "test" / "roxford5k" / "gnd_roxford5k.pkl") in msg
    assert "oxbuild_images-v1.tgz" in msg and str(root / "test" / "oxford5k" / "jpg") in msg
    with pytest.raises(FileNotFoundError) as e:
        load_retrieval_dataset("rparis6k", data_root=tmp_path)
    assert "paris_1-v1.tgz" in str(e.value) and "paris_2-v1.tgz" in str(e.value)


def test_missing_images_message(tmp_path):
    make_set(
        tmp_path, "oxford5k", ["a", "b"], ["a"], [{"bbx": [0, 0, 9, 9], "ok": [0], "junk": []}]
    )
    (tmp_path / "test" / "oxford5k" / "jpg" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_retrieval_dataset("oxford5k", data_root=tmp_path)
    msg = str(e.value)
    assert "1 of 3 images" in msg and "b.jpg" in msg and "oxbuild_images-v1.tgz" in msg
    ds = load_retrieval_dataset("oxford5k", data_root=tmp_path, check_images=False)
    assert ds.n_db == 2


def test_unknown_local_set_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gnd_mine\.pkl.*oxford5k"):
        load_retrieval_dataset("mine", data_root=tmp_path)


def test_download_true_fetches_gnd_and_images(tmp_path, monkeypatch):
    # A loopback server stands in for the dataset hosts.
    site = tmp_path / "site"
    site.mkdir()
    gnd = {
        "imlist": ["all_souls_1", "ashmolean_2"],
        "qimlist": ["all_souls_1"],
        "gnd": [{"bbx": [0, 0, 5, 5], "ok": [0], "junk": [1]}],
    }
    (site / "gnd_oxford5k.pkl").write_bytes(pickle.dumps(gnd))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for n in gnd["imlist"]:
            b = io.BytesIO()
            Image.new("RGB", (40, 32)).save(b, format="JPEG")
            info = tarfile.TarInfo(f"oxbuild_images/{n}.jpg")
            info.size = len(b.getvalue())
            tf.addfile(info, io.BytesIO(b.getvalue()))
    (site / "ox.tgz").write_bytes(buf.getvalue())

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    real = mf.load_manifest()
    real["gnd_oxford5k"]["url"] = f"{base}/gnd_oxford5k.pkl"
    real["images_oxford5k"]["url"] = f"{base}/ox.tgz"
    monkeypatch.setattr(mf, "load_manifest", lambda: real)
    try:
        data = tmp_path / "data"
        ds = load_retrieval_dataset("oxford5k", data_root=data, download=True)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert all(p.is_file() for p in ds.db_paths)
    assert ds.db_paths[1] == data.resolve() / "test" / "oxford5k" / "jpg" / "ashmolean_2.jpg"
    lock = dl.lock_record(f"{base}/gnd_oxford5k.pkl", data / "downloads.lock.json")
    assert lock is not None and lock["size"] == (site / "gnd_oxford5k.pkl").stat().st_size
    # A tampered pickle is refused next time (checked against the lock record).
    (data / "test" / "oxford5k" / "gnd_oxford5k.pkl").write_bytes(
        pickle.dumps({**gnd, "imlist": ["x"]})
    )
    with pytest.raises(dl.ChecksumError):
        load_retrieval_dataset("oxford5k", data_root=data)


# --- distractors -------------------------------------------------------------------------------


def small_set(tmp_path) -> RetrievalDataset:
    make_set(
        tmp_path,
        "synthetic-smoke",
        ["d0", "d1"],
        ["q0"],
        [{"bbx": [0, 0, 4, 4], "ok": [1], "easy": [1], "hard": [], "junk": []}],
    )
    return load_retrieval_dataset("synthetic-smoke", data_root=tmp_path)


def test_revisitop1m_first_n(tmp_path):
    ds = small_set(tmp_path)
    base = tmp_path / "distractors" / "revisitop1m"
    names = ["0/a.jpg", "0/b.jpg", "1/c.jpg"]
    base.mkdir(parents=True)
    (base / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    for n in names[:2]:
        jpg(base / "jpg" / n)
    out = add_distractors(ds, "revisitop1m", n=2, data_root=tmp_path)
    assert out.n_db == 4 and ds.n_db == 2  # original untouched
    assert out.db_paths[2:] == [
        tmp_path.resolve() / "distractors" / "revisitop1m" / "jpg" / n for n in names[:2]
    ]
    assert out.db_paths[:2] == ds.db_paths
    assert any("stand in for Flickr100k" in s for s in out.notes)
    assert out.label == "synthetic-smoke+revisitop1m[:2]"
    with pytest.raises(
        FileNotFoundError, match=r"1 of 3 revisitop1m distractors are missing.*c\.jpg"
    ):
        add_distractors(ds, "revisitop1m", data_root=tmp_path)
    with pytest.raises(ValueError, match="lists 3"):
        add_distractors(ds, "revisitop1m", n=5, data_root=tmp_path)


def test_distractor_errors_and_flickr100k(tmp_path):
    ds = small_set(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        add_distractors(ds, "revisitop1m", n=10, data_root=tmp_path)
    assert "http://ptak.felk.cvut.cz/revisitop/revisitop1m/revisitop1m.txt" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        add_distractors(ds, "flickr100k", data_root=tmp_path)
    assert str(tmp_path.resolve() / "distractors" / "flickr100k") in str(e.value)
    assert "revisitop1m" in str(e.value)
    for n in ["z/9.jpg", "a/2.jpg", "a/1.jpg"]:
        jpg(tmp_path / "distractors" / "flickr100k" / n)
    out = add_distractors(ds, "flickr100k", n=2, data_root=tmp_path)
    f = tmp_path.resolve() / "distractors" / "flickr100k"
    assert out.distractors == [f / "a" / "1.jpg", f / "a" / "2.jpg"]
    assert out.distractor_source == f"flickr100k[:2] (local copy at {f})"
    assert out.notes == [f"distractors: 2 Flickr100k images from the local copy at {f}"]
    with pytest.raises(ValueError, match="unknown distractor"):
        add_distractors(ds, "flickr1m", data_root=tmp_path)


def test_auto_distractors_use_a_flickr100k_copy_when_present(tmp_path):
    ds = small_set(tmp_path)
    base = tmp_path / "distractors" / "revisitop1m"
    base.mkdir(parents=True)
    (base / "revisitop1m.txt").write_text("0/a.jpg\n0/b.jpg\n0/c.jpg\n")
    for n in ("0/a.jpg", "0/b.jpg"):
        jpg(base / "jpg" / n)
    flickr = tmp_path.resolve() / "distractors" / "flickr100k"
    # no copy, then a folder without images (a README, a hidden file): the stand-in is used
    for step in ("absent", "no images"):
        if step == "no images":
            (flickr / ".hidden").mkdir(parents=True)
            jpg(flickr / ".hidden" / "x.jpg")
            (flickr / "README.txt").write_text("put Flickr100k here")
        assert resolve_distractors("auto", tmp_path) == "revisitop1m"
        out = add_distractors(ds, "auto", n=2, data_root=tmp_path)
        assert out.distractor_source == "revisitop1m[:2] standing in for Flickr100k"
        assert out.label == "synthetic-smoke+revisitop1m[:2] standing in for Flickr100k"
        assert out.distractors == [base.resolve() / "jpg" / "0" / n for n in ("a.jpg", "b.jpg")]
        (note,) = out.notes
        assert "first 2 revisitop1m images stand in for Flickr100k" in note
        assert str(flickr) in note
    # one image of a local copy, in a sub-folder: it is used, and the shortfall is said
    jpg(flickr / "sub" / "1.jpg")
    assert resolve_distractors("auto", tmp_path) == "flickr100k"
    out = add_distractors(ds, "auto", n=2, data_root=tmp_path)
    assert out.distractors == [flickr / "sub" / "1.jpg"]
    assert out.distractor_source == f"flickr100k[:2] (local copy at {flickr})"
    assert out.notes == [
        f"distractors: 1 Flickr100k images from the local copy at {flickr}, fewer than the 2 asked"
    ]
    assert resolve_distractors("revisitop1m", tmp_path) == "revisitop1m"
    with pytest.raises(ValueError, match="unknown distractor set 'flickr1m'"):
        resolve_distractors("flickr1m", tmp_path)


# --- user folders --------------------------------------------------------------------------------


def test_folder_dataset_with_queries(tmp_path):
    f = tmp_path / "photos"
    jpg(f / "b.jpg")
    jpg(f / "sub" / "a.PNG", fmt="PNG")
    jpg(f / "sub" / "c.jpeg")
    jpg(f / "w.webp", fmt="WEBP")
    jpg(f / ".hidden" / "x.jpg")
    (f / "notes.txt").write_text("not an image")
    q = tmp_path / "queries.txt"
    q.write_text("# my queries\n\nb.jpg 1 2 30.5 20\nsub/a.PNG\n")
    ds = load_folder_dataset(f, q)
    assert ds.name == "photos" and ds.kind == "none" and ds.gnd == []
    assert ds.imlist == ["b.jpg", "sub/a.PNG", "sub/c.jpeg", "w.webp"]
    fr = f.resolve()
    assert ds.db_paths[1] == fr / "sub" / "a.PNG"
    assert ds.query_paths == [fr / "b.jpg", fr / "sub" / "a.PNG"]
    assert ds.query_bbxs == [[1.0, 2.0, 30.5, 20.0], None]
    assert ds.protocols == []
    with pytest.raises(ValueError, match="not available"):
        ds.gnd_for("classic")
    assert load_folder_dataset(f, name="mine").n_queries == 0


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("b.jpg 1 2 3", "got 4 fields"),
        ("b.jpg 1 2 x 4", "must be numbers"),
        ("b.jpg 5 2 3 4", "empty box"),
        ("nope.jpg", "not found"),
    ],
)
def test_queries_file_errors_name_file_and_line(tmp_path, line, why):
    f = tmp_path / "photos"
    jpg(f / "b.jpg")
    q = tmp_path / "q.txt"
    q.write_text(f"b.jpg\n# comment\n{line}\n")
    with pytest.raises(ValueError, match=rf"q\.txt, line 3: .*{why}"):
        parse_queries_file(q, f)


def test_folder_dataset_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_folder_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .* images"):
        load_folder_dataset(tmp_path / "empty")


# --- ImageFolder / ImageNet ----------------------------------------------------------------------


def test_image_folder_order(tmp_path):
    split = tmp_path / "train" / "synthetic-smoke-cls" / "train"
    for rel in ["n02/b.JPEG", "n02/a.JPEG", "n01/z.jpg", "n10/deep/q.png"]:
        jpg(split / rel)
    (split / "n01" / "readme.txt").write_text("x")
    paths, labels, classes = list_image_folder(split)
    assert classes == ["n01", "n02", "n10"]
    assert [p.relative_to(split).as_posix() for p in paths] == [
        "n01/z.jpg",
        "n02/a.JPEG",
        "n02/b.JPEG",
        "n10/deep/q.png",
    ]
    assert labels == [0, 1, 1, 2]
    s = imagenet_split(tmp_path, "train", name="synthetic-smoke-cls")
    assert len(s) == 4 and s.class_to_idx == {"n01": 0, "n02": 1, "n10": 2}


def test_imagenet_missing_and_flat_val(tmp_path, monkeypatch):
    monkeypatch.delenv("REGATTN_IMAGENET", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        imagenet_split(tmp_path, "val")
    msg = str(e.value)
    assert "cannot be downloaded automatically" in msg and "image-net.org" in msg
    assert str(tmp_path.resolve() / "train" / "imagenet" / "val") in msg
    assert "class folder" in msg and "REGATTN_IMAGENET" in msg
    flat = tmp_path / "inet"
    jpg(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    jpg(flat / "train" / "n01" / "x.JPEG")
    monkeypatch.setenv("REGATTN_IMAGENET", str(flat))
    with pytest.raises(FileNotFoundError, match=r"no class sub-folders \(found 1 images"):
        imagenet_split(split="val")
    assert imagenet_split(split="train").classes == ["n01"]
    (flat / "train" / "n02").mkdir()
    with pytest.raises(FileNotFoundError, match="1 class folder.*n02"):
        imagenet_split(split="train")
    with pytest.raises(FileNotFoundError, match="synthetic-smoke-cls"):
        imagenet_split(tmp_path, "val", name="synthetic-smoke-cls")


# --- whitening ------------------------------------------------------------------------------------


def test_whitening_local_and_landmarks(tmp_path):
    for n in ["b.jpg", "a.jpg"]:
        jpg(tmp_path / "train" / "synthetic-smoke-whiten" / "jpg" / n)
    got = whitening_images("synthetic-smoke-whiten", data_root=tmp_path)
    assert [p.name for p in got] == ["a.jpg", "b.jpg"]
    with pytest.raises(FileNotFoundError, match="folder="):
        whitening_images("landmarks", data_root=tmp_path)
    assert whitening_images("landmarks", folder=tmp_path / "train")[0].name == "a.jpg"
    with pytest.raises(FileNotFoundError, match="no whitening images"):
        whitening_images("nothing-here", data_root=tmp_path)


def test_whitening_sfm120k(tmp_path):
    assert cid2filename("abcdef123456", "ims") == Path("ims/56/34/12/abcdef123456")
    base = tmp_path / "train" / "retrieval-SfM-120k"
    with pytest.raises(FileNotFoundError) as e:
        whitening_images("sfm120k", data_root=tmp_path)
    assert "train/dbs/retrieval-SfM-120k-whiten.pkl" in str(e.value)
    assert "ims.tar.gz" in str(e.value) and str(base.resolve() / "ims") in str(e.value)
    base.mkdir(parents=True)
    cids = ["0000aabbcc", "0000ddeeff"]
    (base / "retrieval-SfM-120k-whiten.pkl").write_bytes(pickle.dumps({"cids": cids, "qidxs": [0]}))
    (base / "retrieval-SfM-120k.pkl").write_bytes(
        pickle.dumps({"train": {"cids": cids[:1]}, "val": {"cids": cids[1:]}})
    )
    ims = base / "ims"
    jpg(ims / "cc" / "bb" / "aa" / "0000aabbcc", fmt="JPEG")
    with pytest.raises(FileNotFoundError, match="1 of 2 SfM-120k images missing"):
        whitening_images("sfm120k", data_root=tmp_path)
    jpg(ims / "ff" / "ee" / "dd" / "0000ddeeff", fmt="JPEG")
    r = ims.resolve()
    assert whitening_images("sfm120k", data_root=tmp_path) == [
        r / "cc" / "bb" / "aa" / "0000aabbcc",
        r / "ff" / "ee" / "dd" / "0000ddeeff",
    ]
    assert whitening_images("sfm120k", data_root=tmp_path, split="val") == [
        r / "ff" / "ee" / "dd" / "0000ddeeff"
    ]
    with pytest.raises(ValueError, match="split"):
        whitening_images("sfm120k", data_root=tmp_path, split="test")
