"""A folder of photos as a searchable database (photo_model, photo_index, photo_search).

Real photographs shipped by scikit-image; every file and cache goes under tmp_path. These
tests prove behaviour (what is indexed, skipped, reused, cropped, ranked), not quality.
"""

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from regattn_lib.apps import cli as cli
from regattn_lib.apps.photos import index as photo_index
from regattn_lib.apps.photos import model as photo_model
from regattn_lib.apps.photos.index import folder_cache_dir, index_folder, list_folder_files
from regattn_lib.apps.photos.model import load_photo_model
from regattn_lib.apps.photos.search import SearchHit, query_vector, search_folder
from regattn_lib.core.whitening import learn_pca_whitening
from regattn_lib.datasets.images import (
    ImageError,
    crop_box,
    oriented_size,
    read_photo,
    resize_longest,
)
from regattn_lib.experiments.profiles import get_profile
from regattn_lib.training.checkpoint import load_trained_attention

ORIGINALS = ("astronaut", "coffee", "rocket")
UNRELATED = ("chelsea", "hubble_deep_field", "camera", "coins", "immunohistochemistry", "moon")


def photo(name: str) -> np.ndarray:
    im = getattr(skdata, name)()
    return np.stack([im] * 3, axis=-1) if im.ndim == 2 else im[..., :3]


def save(path: Path, image: np.ndarray, quality: int = 92, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality, **kw)
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Caches, results and shipped weights all under tmp_path."""
    monkeypatch.setenv("REGATTN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("REGATTN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(photo_model, "SHIPPED_DIR", tmp_path / "assets")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Demo model (EfficientNet-Lite0, R-MAC) at a small image size, nothing shipped."""
    root = tmp_path_factory.mktemp("model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(photo_model, "SHIPPED_DIR", root / "assets")
        return load_photo_model(get_profile("demo", image_size=160), "rmac", "cpu", root)


def make_folder(folder: Path, names=ORIGINALS) -> Path:
    for n in names:
        save(folder / f"{n}.jpg", photo(n))
    return folder


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[None], b[None])[0])


# ----------------------------------------------------------------------------- CLI
def test_cli_prints_fixed_lines_and_json_and_lists_skipped_files_once(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos")
    save(folder / "sub" / "cat.jpg", photo("chelsea"))
    (folder / "notes.txt").write_text("not a photo")
    args = ["--device", "cpu", "--quiet", "--method", "context"]
    assert cli.main(["index", str(folder), *args]) == 0
    out = capsys.readouterr().out
    assert "4 images indexed" in out and "1 files skipped" in out
    assert out.count("notes.txt") == 1
    assert re.search(r"^  notes\.txt: not an image", out, re.M)
    # the demo's trained attention and whitening are absent here: R-MAC, unwhitened, said so
    assert "model: backbone efficientnet-lite0" in out
    assert "attention: none (R-MAC); whitening: none" in out
    assert "falling back to R-MAC without attention" in out

    query = str(folder / "sub" / "cat.jpg")
    assert cli.main(["search", str(folder), query, "--top", "3", *args]) == 0
    plain = capsys.readouterr()
    lines = plain.out.splitlines()
    assert len(lines) == 3
    assert all(re.fullmatch(r" {2}\d  -?\d\.\d{4}  \S+", ln) for ln in lines), lines
    assert lines[0] == "  1  1.0000  sub/cat.jpg"  # a query in the folder ranks first
    assert [int(ln.split()[0]) for ln in lines] == [1, 2, 3]
    scores = [float(ln.split()[1]) for ln in lines]
    assert scores == sorted(scores, reverse=True)
    assert "model: backbone efficientnet-lite0" in plain.err
    assert "notes.txt" not in plain.err  # listed by the index run already

    assert cli.main(["search", str(folder), query, "--top", "3", "--json", *args]) == 0
    js = capsys.readouterr()
    hits = json.loads(js.out)  # stdout holds the JSON list and nothing else
    assert [set(h) for h in hits] == [{"rank", "path", "score"}] * 3
    assert [(h["rank"], h["path"], f"{h['score']:.4f}") for h in hits] == [
        (int(r), p, s) for r, s, p in (ln.split() for ln in lines)
    ]
    assert "attention: none (R-MAC)" in js.err


def test_cli_errors_name_the_missing_folder_query_and_bad_box(tmp_path, capsys):
    folder = make_folder(tmp_path / "photos", ORIGINALS[:1])
    missing = tmp_path / "nowhere"
    assert cli.main(["index", str(missing), "--device", "cpu", "--quiet"]) == 2
    assert str(missing) in capsys.readouterr().err
    q = tmp_path / "no-query.jpg"
    assert cli.main(["search", str(folder), str(q), "--device", "cpu", "--quiet"]) == 2
    assert f"query image not found: {q}" in capsys.readouterr().err
    q = folder / "astronaut.jpg"  # 512 x 512
    box = ["600", "0", "700", "100"]
    assert cli.main(["search", str(folder), str(q), "--box", *box, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "lies outside" in err and str(q) in err and "512x512" in err


def test_library_errors_name_the_missing_paths(tmp_path, model):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gone"))):
        index_folder(tmp_path / "gone", model=model, progress=False)
    index = index_folder(make_folder(tmp_path / "p", ORIGINALS[:1]), model=model, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        search_folder(index, tmp_path / "missing.jpg")


# ----------------------------------------------------------------------------- incremental index
def test_rerun_describes_only_new_or_changed_files_and_drops_removed_ones(tmp_path, model):
    folder = make_folder(tmp_path / "photos", ORIGINALS + ("chelsea",))
    bmp = save(folder / "raw.bmp", photo("coins"))  # uncompressed: a new content keeps its size
    first = index_folder(folder, model=model, progress=False)
    assert (first.extracted, first.examined, first.removed) == (5, 5, 0)
    assert first.paths == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "raw.bmp", "rocket.jpg"]
    assert first.cache_dir.parent == tmp_path / "data" / "cache" / "folders"

    again = index_folder(folder, model=model, progress=False)
    assert (again.extracted, again.examined) == (0, 0)
    assert torch.equal(again.vectors, first.vectors)

    # touched, same content: the hash decides, nothing is described again
    st = bmp.stat()
    os.utime(bmp, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = index_folder(folder, model=model, progress=False)
    assert (touched.extracted, touched.examined) == (0, 0)
    assert index_folder(folder, model=model, progress=False).examined == 0  # new mtime kept

    # same size, new content, new mtime: described again
    save(bmp, 255 - photo("coins"))
    assert bmp.stat().st_size == st.st_size
    os.utime(bmp, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    changed = index_folder(folder, model=model, progress=False)
    assert (changed.extracted, changed.examined) == (1, 1)
    row = changed.paths.index("raw.bmp")
    assert cosine(changed.vectors[row], first.vectors[row]) < 0.999
    others = [i for i in range(5) if i != row]
    assert torch.equal(changed.vectors[others], first.vectors[others])

    save(folder / "new" / "moon.jpg", photo("moon"))
    (folder / "chelsea.jpg").unlink()
    updated = index_folder(folder, model=model, progress=False)
    assert (updated.extracted, updated.removed) == (1, 1)
    assert "chelsea.jpg" not in updated.paths and "new/moon.jpg" in updated.paths
    assert updated.vectors.shape[0] == len(updated.paths) == 5


def test_an_interrupted_index_leaves_no_index_file_and_resumes_from_its_shards(
    tmp_path, model, monkeypatch
):
    folder = make_folder(tmp_path / "photos", ORIGINALS + UNRELATED[:2])
    real = photo_index.describe_images
    calls = []

    def interrupted(m, images):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(m, images)

    monkeypatch.setattr(photo_index, "describe_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index_folder(folder, model=model, progress=False, shard_images=2)
    cache = folder_cache_dir(folder, model)
    assert not (cache / "index.pt").exists()
    assert [p.name for p in (cache / "parts").glob("*.pt")] == ["000000.pt"]
    monkeypatch.setattr(photo_index, "describe_images", real)
    resumed = index_folder(folder, model=model, progress=False, shard_images=2)
    assert resumed.extracted == 3  # the 2 files of the finished shard were not described again
    assert len(resumed.paths) == 5 and not (cache / "parts").exists()
    fresh = index_folder(folder, model=model, progress=False, data_root=tmp_path / "other")
    assert torch.allclose(resumed.vectors, fresh.vectors, atol=1e-6)


# ----------------------------------------------------------------------------- skipped files
def test_unusable_files_are_skipped_once_with_a_reason_and_hidden_files_ignored(tmp_path, model):
    folder = make_folder(tmp_path / "photos", ORIGINALS[:2])
    (folder / "notes.txt").write_text("shopping list")
    (folder / "clip.mp4").write_bytes(os.urandom(2000))
    save(folder / "tiny.png", np.zeros((4, 4, 3), np.uint8))
    jpeg = (folder / "coffee.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 10])  # 10%: beyond use
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 9 // 10])  # 90%: used as far as it goes
    save(folder / ".hidden.jpg", photo("rocket"))
    save(folder / ".thumbs" / "rocket.jpg", photo("rocket"))
    index = index_folder(folder, model=model, progress=False)
    assert index.paths == ["astronaut.jpg", "coffee.jpg", "cut.jpg"]
    reasons = dict(index.skipped)
    assert sorted(reasons) == ["broken.jpg", "clip.mp4", "notes.txt", "tiny.png"]
    assert len(index.skipped) == 4
    assert reasons["clip.mp4"] == "not an image (video file)"
    assert reasons["notes.txt"].startswith("not an image")
    assert re.fullmatch(
        r"truncated file: only \d+% of the image decoded \(under 50%\)", reasons["broken.jpg"]
    )
    assert reasons["tiny.png"] == "too small: 4x4 px, shorter side under the profile's 128 px"
    assert index_folder(folder, model=model, progress=False).examined == 0  # remembered
    assert list_folder_files(folder) == sorted(index.paths + list(reasons))


# ----------------------------------------------------------------------------- EXIF
def test_a_photo_with_exif_orientation_6_is_indexed_upright(tmp_path, model):
    upright = photo("chelsea")  # 451 x 300
    folder = tmp_path / "photos"
    save(folder / "upright.jpg", upright, quality=95)
    # orientation 6: displayed after a 90-degree clockwise turn, so stored turned the other way
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    save(folder / "rotated.jpg", stored, quality=95, exif=exif)
    save(tmp_path / "no-exif.jpg", stored, quality=95)
    assert oriented_size(folder / "rotated.jpg") == (300, 451)
    assert oriented_size(tmp_path / "no-exif.jpg") == (451, 300)
    index = index_folder(folder, model=model, progress=False)
    up, rot = (index.vectors[index.paths.index(n)] for n in ("upright.jpg", "rotated.jpg"))
    assert cosine(up, rot) > 0.99
    # the same pixels without the tag are described sideways: the check above can fail
    assert cosine(up, query_vector(index, tmp_path / "no-exif.jpg")) < 0.99
    a = read_photo(folder / "rotated.jpg", 160).image
    assert a.shape == read_photo(folder / "upright.jpg", 160).image.shape == (106, 160, 3)


# ----------------------------------------------------------------------------- query box
def test_the_box_is_the_papers_query_crop_in_original_pixels(tmp_path):
    path = save(tmp_path / "rocket.png", photo("rocket"))  # 640 x 427, lossless
    full, scale = resize_longest(photo("rocket"), 320)
    assert scale == 0.5
    crop = read_photo(path, 320, box=(100, 50, 300, 250)).image
    assert np.array_equal(crop, full[25:125, 50:150])
    # box * 0.5 = (50.5, 25.5, 150.5, 125.5), rounded half to even: (50, 26, 150, 126)
    crop = read_photo(path, 320, box=(101, 51, 301, 251)).image
    assert np.array_equal(crop, full[26:126, 50:150])
    assert np.array_equal(crop, crop_box(full, (101, 51, 301, 251), 0.5))
    for box in [(700, 0, 800, 100), (0, 430, 100, 500), (-90, -50, -10, -1)]:
        with pytest.raises(ImageError, match=re.escape(f"lies outside {path} (640x427 px")):
            read_photo(path, 320, box=box)
    with pytest.raises(ImageError, match=re.escape("query box [50, 50, 40, 90] is empty")):
        read_photo(path, 320, box=(50, 50, 40, 90))


def test_a_box_query_searches_with_the_cropped_region(tmp_path, model):
    folder = make_folder(tmp_path / "photos")
    index = index_folder(folder, model=model, progress=False)
    q = folder / "rocket.jpg"
    whole, boxed = query_vector(index, q), query_vector(index, q, box=(200, 0, 440, 427))
    assert cosine(whole, boxed) < 0.999  # the box changed the query
    hits = search_folder(index, q, box=(200, 0, 440, 427), top=2)
    assert [h.rank for h in hits] == [1, 2] and hits[0].score >= hits[1].score
    scores = (index.vectors @ boxed).tolist()
    assert hits[0] == SearchHit(1, index.paths[int(np.argmax(scores))], pytest.approx(max(scores)))


# ----------------------------------------------------------------------------- ranking
def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(buf).convert("RGB"))


def _copies(image: np.ndarray) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((int(w * 0.6), int(h * 0.6)), Image.BILINEAR)
    brighter = np.clip(image.astype(np.float32) * 1.25 + 10, 0, 255).astype(np.uint8)
    return {
        "resized": np.array(small),
        "cropped": image[h // 12 : -h // 12, w // 12 : -w // 12],
        "jpeg": _jpeg(image, 25),
        "brighter": brighter,
    }


def test_each_transformed_copy_finds_its_original_first(tmp_path, model):
    folder = make_folder(tmp_path / "photos", ORIGINALS + UNRELATED)
    index = index_folder(folder, model=model, progress=False)
    assert len(index.paths) == 9
    found = {}
    for name in ORIGINALS:
        for kind, copy in _copies(photo(name)).items():
            q = save(tmp_path / "queries" / f"{name}-{kind}.png", copy)
            found[(name, kind)] = search_folder(index, q, top=2)[0].path
    assert found == {key: f"{key[0]}.jpg" for key in found}
    self_hit = search_folder(index, folder / "coffee.jpg", top=1)[0]
    assert self_hit.path == "coffee.jpg" and self_hit.score == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- model choice
def _attention_file(path: Path, channels: int) -> Path:
    from regattn_lib.core.attention import RegionalAttention

    att = RegionalAttention(channels, 64, context=True)
    cfg = {
        "stage": "attention",
        "in_channels": channels,
        "hidden": 64,
        "context": True,
        "activation": "tanh",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": att.state_dict(), "config": cfg}, path)
    return path


def test_shipped_weights_come_first_and_a_wrong_channel_count_falls_back(tmp_path):
    demo = get_profile("demo", image_size=160)
    bare = load_photo_model(demo, "context", "cpu")
    assert (bare.method, bare.attention_source, bare.whitening_source) == (
        "rmac",
        "none (R-MAC)",
        "none",
    )
    assert any("attention_context.pt" in n for n in bare.notes)
    assets = tmp_path / "assets" / "demo"
    _attention_file(assets / "attention_context.pt", 1280)
    torch.manual_seed(0)
    learn_pca_whitening(torch.randn(3000, 1280)).save(assets / "whitening.pt")
    shipped = load_photo_model(demo, "context", "cpu")
    assert shipped.method == "context" and shipped.notes == []
    assert shipped.attention_source == "context, shipped (attention_context.pt)"
    assert shipped.whitening_source == "PCA 1280 -> 1280, shipped (whitening.pt)"
    assert "attention: context, shipped" in shipped.describe()
    expected = load_trained_attention(assets / "attention_context.pt").state_dict()
    got = shipped.head.attention.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    folder = make_folder(tmp_path / "p", ORIGINALS[:1])
    assert folder_cache_dir(folder, shipped) != folder_cache_dir(folder, bare)
    _attention_file(assets / "attention_context.pt", 2048)  # the authors' ResNet-101 size
    wrong = load_photo_model(demo, "context", "cpu")
    assert wrong.method == "rmac" and wrong.head.whitening is not None
    assert wrong.notes == [
        "the context attention has 2048 channels, the backbone 1280; using R-MAC without attention"
    ]


def test_example_folder_holds_real_photos_and_copies_that_find_their_originals(tmp_path, model):
    from regattn_lib.apps.photos.examples import (
        EDITED,
        GREY_PHOTOS,
        PHOTOS,
        copy_ranks,
        example_photos,
        original_of,
    )

    folder = example_photos(tmp_path / "examples")
    names = list_folder_files(folder)
    assert len(names) == len(PHOTOS) + len(GREY_PHOTOS) + 4 * len(EDITED)
    assert (
        original_of("copies/coffee_dark.jpg") == "coffee.jpg" and original_of("coffee.jpg") is None
    )
    # the sideways copy is stored turned, with the EXIF tag that stands it up again
    upright = read_photo(folder / "copies" / "rocket_sideways.jpg", None)
    assert upright.original == read_photo(folder / "rocket.jpg", None).original
    index = index_folder(folder, model=model, progress=False)
    ranks = copy_ranks(index)
    assert len(ranks) == 4 * len(EDITED)
    # behaviour, not quality: the copy itself ranks first, and the original before any photo of
    # another scene (sibling copies of the same photo may come in between)
    assert all(r["rank of original"] < r["first other scene"] for r in ranks), ranks


def test_the_explorer_opens_a_folder_of_photos(tmp_path):
    from regattn_lib.apps.explorer.folder import folder_source
    from regattn_lib.apps.explorer.model import QueryExplorer
    from regattn_lib.apps.photos.examples import edited_copies
    from regattn_lib.experiments import pipeline as P

    folder = make_folder(tmp_path / "photos", ORIGINALS + UNRELATED[:2])
    save(folder / "copies" / "coffee_small.jpg", photo("coffee")[::2, ::2])
    stored, exif = edited_copies(photo("rocket"))["sideways"]
    save(folder / "copies" / "rocket_sideways.jpg", stored, exif=exif)
    ctx = P.setup("smoke", data_root=tmp_path / "data", results=tmp_path / "res", device="cpu")
    source = folder_source(ctx, folder, progress=False)
    # no trained attention here: R-MAC only, rather than the same R-MAC under three names
    assert list(source.heads) == ["R-MAC + PCA"]
    assert source.ds.imlist == source.ds.qimlist == list_folder_files(folder)
    ex = QueryExplorer(ctx, source=source)
    q = source.ds.qimlist.index("copies/coffee_small.jpg")
    state = ex.select_query(q)
    assert state["names"][:2] == ["coffee_small", "coffee"]  # itself, then its original
    assert ex.protocols == [] and set(state["labels"]) == {"unlabelled"}
    # the attention view of a photo stored sideways is drawn upright, as it was described
    assert source.upright
    sideways = folder / "copies" / "rocket_sideways.jpg"
    image, _, _ = P.attention_for_image(ctx, sideways, None, upright=True)
    upright = read_photo(folder / "rocket.jpg", ctx.profile.image_size).image
    assert image.shape == upright.shape != P.attention_for_image(ctx, sideways, None)[0].shape
    ex.select_query(source.ds.qimlist.index("copies/rocket_sideways.jpg"))
    assert ex.attention_view("query")[0][:2] == b"\xff\xd8"


def test_the_notebook_panel_searches_with_and_without_a_box(tmp_path, model):
    from regattn_lib.apps.photos.view import (
        PhotoSearchPanel,
        attention_pair,
        hits_table,
        photo_attention,
    )

    folder = make_folder(tmp_path / "photos")
    index = index_folder(folder, model=model, progress=False)
    panel = PhotoSearchPanel(index, top=2)
    panel.query.value = "coffee.jpg"
    hits = panel.refresh()
    assert [h.path for h in hits][:1] == ["coffee.jpg"] and len(hits) == 2
    assert list(hits_table(hits).columns) == ["rank", "path", "score"]
    panel.use_box.value = True
    assert panel.box_pixels(folder / "coffee.jpg") == pytest.approx([120.0, 80.0, 480.0, 320.0])
    assert len(panel.refresh()) == 2
    image, regions, alpha = photo_attention(model, folder / "coffee.jpg", [120, 80, 480, 320])
    assert (
        image.shape[:2]
        == read_photo(folder / "coffee.jpg", 160, box=[120, 80, 480, 320]).image.shape[:2]
    )
    assert np.allclose(alpha, 1.0) and len(alpha) == len(regions)  # R-MAC: every weight 1
    fig = attention_pair(model, folder / "coffee.jpg", folder / "rocket.jpg")
    assert len(fig.axes) == 2


def test_the_repository_ships_small_demo_weights_that_load(monkeypatch):
    from regattn_lib.core.whitening import PCAWhitening

    monkeypatch.undo()  # the real assets folder, not the isolated one
    shipped = photo_model.SHIPPED_DIR / "demo"
    for name in ("attention_regional.pt", "attention_context.pt", "whitening.pt"):
        assert (shipped / name).stat().st_size < 5 * 2**20, name
    assert load_trained_attention(shipped / "attention_context.pt").in_channels == 1280  # Lite0
    assert load_trained_attention(shipped / "attention_regional.pt").context is False
    w = PCAWhitening.load(shipped / "whitening.pt")
    assert w.projection.dtype == torch.float32 and w.in_dim == 1280
    assert "commit" in (shipped / "SOURCE.md").read_text()
