"""The query explorer on the smoke profile, driven through its methods (no browser).

The module fixture builds what the explorer reads with the library where it is missing (a
fresh clone: smoke data, whitening, attention, descriptor cache), then every check compares
what the explorer shows with an independent computation from the cached descriptors.
"""

import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from regattn_lib.apps.explorer import model as explorer_model
from regattn_lib.apps.explorer.imaging import level_regions
from regattn_lib.apps.explorer.model import K_MAX, QueryExplorer
from regattn_lib.apps.explorer.source import MissingCacheError, build_cache
from regattn_lib.apps.explorer.view import ExplorerView, open_explorer
from regattn_lib.core.evaluate import compute_map, evaluate, protocol_gnd
from regattn_lib.core.qe import average_query_expansion
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.search import cosine_ranks
from regattn_lib.experiments import pipeline as P

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "07_query_explorer.ipynb"


@pytest.fixture(scope="module")
def ctx():
    c = P.setup("smoke", device="cpu")
    build_cache(c)
    return c


@pytest.fixture(scope="module")
def explorer(ctx):
    return QueryExplorer(ctx)


@pytest.fixture
def ex(explorer):
    """The module's explorer back at its defaults (tests change its selection)."""
    explorer.select_query(0)
    explorer.select_method(explorer.methods[-1])
    explorer.set_qe(False)
    explorer.set_protocol("classic")
    explorer.set_k(8)
    return explorer


def _png(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_loads_the_three_ablation_methods_from_the_cache_without_extracting(ctx):
    refuse = mock.Mock(side_effect=AssertionError("the explorer extracted images"))
    with (
        mock.patch("regattn_lib.extraction.extract.extract_images", refuse),
        mock.patch.object(explorer_model, "extract_images", refuse),
    ):
        ex = QueryExplorer(ctx)
    assert ex.methods == [P.RMAC, P.REGIONAL, P.CONTEXT]
    assert ex.protocols == ["classic", "easy", "medium", "hard"]
    assert len(ex.db_thumbs) == ex.ds.n_db == 156 and len(ex.query_thumbs) == ex.ds.n_queries
    assert all(t[:2] == b"\xff\xd8" for t in ex.db_thumbs + ex.query_thumbs)  # JPEG
    refuse.assert_not_called()


def test_select_query_shows_that_querys_ranking_and_ap(ex):
    desc = ex.descriptors[ex.methods[-1]]
    ranks = cosine_ranks(desc.queries, desc.db)
    _, aps, _, _ = compute_map(ranks, protocol_gnd(ex.ds.gnd, "classic"))
    tops = set()
    for q in range(ex.ds.n_queries):
        s = ex.select_query(q)
        assert s["query"] == q and s["query_name"] == ex.ds.qimlist[q]
        assert s["topk"] == ranks[:8, q].tolist()
        assert s["names"] == [ex.ds.imlist[i] for i in s["topk"]]
        assert s["ap"] == pytest.approx(100 * aps[q])
        tops.add(tuple(s["topk"]))
    assert len(tops) == ex.ds.n_queries  # every query changes the results


@pytest.mark.parametrize("protocol", ["classic", "easy", "medium", "hard"])
def test_ap_of_every_method_equals_evaluate(ex, protocol):
    ex.set_protocol(protocol)
    want = {
        m: evaluate(P.rank(d), ex.ds.gnd, protocols=[protocol])["protocols"][protocol]["aps"]
        for m, d in ex.descriptors.items()
    }
    for q in range(ex.ds.n_queries):
        s = ex.select_query(q)
        for m in ex.methods:
            np.testing.assert_allclose(s["ap_by_method"][m], want[m][q], equal_nan=True)
        assert s["ap_by_method"][s["method"]] == s["ap"] or np.isnan(s["ap"])


def test_labels_follow_the_protocol(ex):
    ex.set_k(30)
    ranks = ex.ranking(ex.methods[-1], False)
    # A query with a hard positive among its top 30, to see it change label with the protocol.
    q = next(q for q, g in enumerate(ex.ds.gnd) if set(ranks[:30, q]) & set(g["hard"]))
    ex.select_query(q)
    g = ex.ds.gnd[q]
    for protocol in ex.protocols:
        s = ex.set_protocol(protocol)
        pg = protocol_gnd(ex.ds.gnd, protocol)[q]
        for i, label in zip(s["topk"], s["labels"], strict=True):
            if i in pg["ok"]:
                assert label == ("hard" if i in g["hard"] else "positive")
            else:
                assert label == ("junk" if i in pg["junk"] else "negative")
    assert "hard" in ex.set_protocol("classic")["labels"]
    assert "hard" not in ex.set_protocol("easy")["labels"]  # hard ones are junk under easy


def test_select_method_switches_the_ranking(ex):
    seen = {}
    for m in ex.methods:
        s = ex.select_method(m)
        assert s["method"] == m
        assert s["topk"] == P.rank(ex.descriptors[m])[:8, 0].tolist()
        seen[m] = s["topk"]
    # the regional attention reorders some query's list (not necessarily the first one's)
    reordered = 0
    for q in range(ex.ds.n_queries):
        ex.select_query(q)
        lists = [ex.select_method(m)["topk"] for m in (P.RMAC, P.REGIONAL)]
        reordered += lists[0] != lists[1]
    assert reordered > 0


def test_qe_toggle_ranks_as_average_query_expansion(ex, ctx):
    changed = 0
    for m in ex.methods:
        ex.select_method(m)
        d = ex.descriptors[m]
        expanded = average_query_expansion(d.queries, d.db, k=ctx.profile.qe_k)
        want = cosine_ranks(expanded, d.db)
        for q in range(ex.ds.n_queries):
            ex.select_query(q)
            plain = ex.set_qe(False)["topk"]
            s = ex.set_qe(True)
            assert s["qe"] and s["topk"] == want[:8, q].tolist()
            changed += plain != s["topk"]
    assert changed > 0


def test_k_and_rankings_are_memoised(ex):
    assert len(ex.set_k(3)["topk"]) == 3
    assert len(ex.set_k(10_000)["topk"]) == K_MAX
    with mock.patch.object(P, "rank", side_effect=AssertionError("ranked again")):
        for q in range(ex.ds.n_queries):
            ex.select_query(q)  # rankings of the default method were computed before


def test_non_image_upload_gives_a_message_not_a_traceback(ex):
    before = ex.select_query(2)
    for data, name, words in (
        (b"%PDF-1.4 not a photo", "paper.pdf", "not an image"),
        (b"", "empty.jpg", "empty"),
        (_png((1000, 20)), "strip.png", "smaller than 32"),
    ):
        s = ex.upload(data, name)
        assert s["error"] and name in s["message"] and words in s["message"], s["message"]
        assert s["query"] == 2 and s["topk"] == before["topk"]  # the view is unchanged


@pytest.mark.parametrize("index", [0, 17, 155])
def test_uploading_a_database_image_finds_it_first(ex, index):
    data = Path(ex.ds.db_paths[index]).read_bytes()
    for m in ex.methods:
        ex.select_method(m)
        s = ex.upload(data, "mine.jpg")
        assert not s["error"] and "mine.jpg" in s["message"]
        assert s["upload"] == "mine.jpg" and s["query"] is None and s["ap"] is None
        assert s["topk"][0] == index
        assert set(s["labels"]) == {"unlabelled"}
        # Same pixels, same code path: the upload's descriptor is the cached one.
        vec = ex.descriptors[m].db[index][None]
        np.testing.assert_allclose(ex._upload.vectors[m], vec, atol=1e-5)
        expanded = average_query_expansion(vec, ex.descriptors[m].db, k=ex.qe_k)
        want = cosine_ranks(expanded, ex.descriptors[m].db)[:8, 0].tolist()
        assert ex.set_qe(True)["topk"] == want
        ex.set_qe(False)
    assert ex.select_query(0)["upload"] is None


def test_attention_view_paints_alpha_with_the_grid_of_level_l(ex):
    ex.select_query(3)
    for levels in (1, 2, 3):
        ex.set_levels(levels)
        jpeg, caption = ex.attention_view("query")
        assert jpeg[:2] == b"\xff\xd8" and f"L={levels}" in caption and P.CONTEXT in caption
        # every query shows its landmark: the share of the weight on it, beside R-MAC's
        share = re.search(r"landmark share (\d\.\d\d) \(uniform (\d\.\d\d)\)", caption)
        assert share and 0 < float(share[2]) <= 1 and 0 <= float(share[1]) <= 1
    s = ex.select_result(2)
    _, caption = ex.attention_view("result")
    assert s["result"] == s["topk"][2] and ex.ds.imlist[s["result"]] in caption
    assert len(level_regions(300, 400, 3)) == len(rmac_regions(300, 400, 3)) - len(
        rmac_regions(300, 400, 2)
    )
    ex.select_method(P.RMAC)
    assert ex.attention_method() == P.CONTEXT  # R-MAC has no alpha: the best model's is shown


def test_query_table_gains_are_ap_differences(ex):
    df = ex.query_table("classic")
    assert list(df["query"]) == ex.ds.qimlist
    np.testing.assert_allclose(df[f"gain {P.CONTEXT}"], df[f"AP {P.CONTEXT}"] - df[f"AP {P.RMAC}"])
    fb = ex.fixes_and_breaks(P.REGIONAL)
    gains = df.set_index("query")[f"gain {P.REGIONAL}"]
    assert all(g > 0 and gains[n] == pytest.approx(g) for _, n, g in fb["fixes"])
    assert all(g < 0 for _, _, g in fb["breaks"])
    if fb["fixes"]:
        assert fb["fixes"][0][2] == pytest.approx(gains.max())


def test_widgets_drive_the_explorer(ctx):
    ex = QueryExplorer(ctx, view=ExplorerView)
    v = ex.view
    v.query.value = 4
    assert ex.state()["query"] == 4
    names = [t["label"].value for t in v.tiles[:8]]
    assert all(n in html for n, html in zip(ex.state()["names"], names, strict=True))
    v.method.value = P.RMAC
    assert ex.state()["method"] == P.RMAC and f"{ex.state()['ap']:.1f} %" in v.ap.value
    v.k.value = 5
    assert [t["box"].layout.display for t in v.tiles[:6]] == [None] * 5 + ["none"]
    v.tiles[1]["box"].children[2].click()  # the tile's "attention" button
    assert ex.state()["result"] == ex.state()["topk"][1]
    assert ex.ds.imlist[ex.state()["result"]] in v.heat_caption.value
    v.file.value = (
        {
            "name": "notes.txt",
            "type": "text/plain",
            "size": 5,
            "content": memoryview(b"hello"),
            "last_modified": datetime.now(UTC),
        },
    )
    assert "notes.txt" in v.message.value and "not an image" in v.message.value
    assert ex.state()["query"] == 4


def test_missing_descriptor_cache_names_the_command(ctx):
    other = P.setup("smoke", device="cpu", image_size=224)  # no notebook caches this size
    before = sorted(other.cache_dir.rglob("*"))
    with pytest.raises(MissingCacheError, match=r"run \./run_all\.sh --profile smoke --only 03"):
        QueryExplorer(other)
    assert sorted(other.cache_dir.rglob("*")) == before  # nothing was extracted
    shown = open_explorer(other)
    assert "./run_all.sh --profile smoke --only 03" in shown.value


def test_missing_whitening_names_the_command_without_learning_it(ctx, tmp_path):
    for sub in ("test", "train"):
        os.symlink(ctx.data_root / sub, tmp_path / sub)
    empty = P.setup("smoke", device="cpu", data_root=tmp_path, results=ctx.results)
    with pytest.raises(MissingCacheError, match=r"whitening.*--profile smoke --only 03"):
        QueryExplorer(empty)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


@pytest.mark.slow
def test_notebook_runs_headless_under_papermill(ctx, tmp_path):
    import nbformat
    import papermill as pm

    out = tmp_path / "07.ipynb"
    pm.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"device": "cpu"},
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert any(
        "gain + context awareness" in o.get("data", {}).get("text/html", "") for o in outputs
    )
