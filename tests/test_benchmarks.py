"""The benchmarks run end to end at a tiny size and report sane values; search backends agree.

No timing is asserted here (speed lives in benchmarks/, as ratios measured in one run).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from regattn_lib.core.regions import region_cells
from regattn_lib.core.search import cosine_ranks, faiss_available, faiss_index, faiss_ranks

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    """A data root holding a freshly generated synthetic-smoke set (about 7 s)."""
    from regattn_lib.datasets.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic("smoke", root, progress=False, workers=1)
    return root


@pytest.fixture
def restore_threads():
    """``--threads`` sets torch's global thread count; give the next tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def common_args(smoke_root: Path, tmp_path: Path) -> list[str]:
    """One pass, one thread (two OpenMP threads stall at every barrier on a busy shared CPU),
    random whitening and attention, everything under the test's folders."""
    return [
        "--repeats",
        "1",
        "--threads",
        "1",
        "--whitening",
        "random",
        "--attention",
        "random",
        "--data-root",
        str(smoke_root),
        "--results-root",
        str(tmp_path / "results"),
        "--out-dir",
        str(tmp_path / "bench"),
    ]


# ----------------------------------------------------------------------------- extraction
def test_extract_throughput_tiny_cpu_run(smoke_root, tmp_path, restore_threads):
    bench = load_script("extract_throughput")
    argv = ["--device", "cpu", "--n-images", "6", "--image-size", "128"]
    argv += common_args(smoke_root, tmp_path)
    bench.main(argv)
    r = json.loads((tmp_path / "bench" / "extract_cpu.json").read_text())
    assert (tmp_path / "bench" / "extract_cpu.md").read_text().startswith("# Extraction")
    assert r["device"] and r["device_kind"] == "cpu" and r["backbone"] == "efficientnet-lite0"
    assert r["image_size"] == 128 and r["n_images"] == 6 and r["levels"] == 3
    assert r["n_images_map"] == 156 + 12  # the whole smoke set, db + queries
    assert r["command"].endswith(" ".join(argv)) and "extract_throughput.py" in r["command"]
    assert r["baseline_images_per_s"] > 0 and r["engine_images_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["engine_images_per_s"] / r["baseline_images_per_s"])
    # Both pipelines in fp32 on the CPU: the same descriptors up to summation order.
    assert 0 <= r["max_cosine_distance"] < 1e-3
    assert math.isfinite(r["map_delta"]) and abs(r["map_delta"]) < 0.5
    assert r["gpu_busy_share"] is None and r["compile"] is None
    assert r["engine_autocast"] == "fp32" and r["fp16_overflow_batches"] == 0
    assert set(r["per_method"]) == {"R-MAC + PCA", "+ regional attention", "+ context awareness"}
    for m in r["per_method"].values():
        assert m["speedup"] > 0 and m["time_per_image_s"] > 0
        assert 0 <= m["map_engine"]["medium"] <= 100
        assert abs(m["map_engine"]["medium"] - m["map_baseline"]["medium"]) < 0.5
    assert r["per_method"]["+ context awareness"]["attention"].startswith("random init")


def test_random_resnet_is_calibrated_so_fp16_does_not_overflow(
    smoke_root, tmp_path, restore_threads
):
    # The GPU session's likely case: no ResNet-101 weights offline, fp16 engine.
    bench = load_script("extract_throughput")
    argv = ["--device", "cpu", "--backbone", "caffe-resnet101", "--weights", "random"]
    argv += ["--precision", "fp16", "--n-images", "2", "--image-size", "64", "--no-map"]
    argv += common_args(smoke_root, tmp_path)
    r = bench.main(argv)
    assert r["backbone_weights"] == "random" and r["engine_autocast"] == "fp16"
    assert r["fp16_overflow_batches"] == 0
    # fp16 really ran, and stayed finite; a random network amplifies rounding, so a loose bound
    assert 0 < r["max_cosine_distance"] < 0.1


def test_usual_pipeline_pooling_matches_hand_computed_cells():
    bench = load_script("extract_throughput")
    up = load_script("usual_pipeline")
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # C=2, h=3, w=4
    # Region (x=0, y=0, w=64, h=64) at stride 32: cells round(0/32)=0 .. round(63/32)=2, rows
    # and columns. Region (96, 32, 32, 32): columns 3 .. round(127/32)=4 -> clipped to 3,
    # rows 1 .. round(63/32)=2.
    regions = np.array([[0, 0, 64, 64], [96, 32, 32, 32]])
    assert region_cells(regions, 3, 4).tolist() == [[0, 0, 2, 2], [3, 1, 3, 2]]
    maxs, avgs = up.pool_region_loop(fmap, regions, 32)
    expected_max = fmap[:, 0:3, 0:3].amax(dim=(1, 2)), fmap[:, 1:3, 3].amax(dim=1)
    torch.testing.assert_close(maxs, torch.stack(expected_max))
    torch.testing.assert_close(avgs[1], fmap[:, 1:3, 3].mean(dim=1))
    assert bench.merged_length([(0, 2), (1, 3), (5, 6)]) == 4


# ----------------------------------------------------------------------------- search
def test_search_1m_small_run(tmp_path):
    bench = load_script("search_1m")
    r = bench.main(["--n", "20000", "--repeats", "1", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "search_cpu.json").read_text())
    assert saved["n"] == 20000 and saved["dim"] == 2048 and saved["queries"] == 70
    assert saved["memory"]["fp32_gb"] == pytest.approx(20000 * 2048 * 4 / 1e9)
    rows = {row["backend"]: row for row in r["results"]}
    assert rows["torch-cpu-fp32"]["queries_per_s"] > 0
    assert rows["torch-cpu-fp32"]["top1_is_source"] == 1.0
    if faiss_available():
        ag = rows["faiss-cpu"]["agreement_with_torch_cpu_fp32"]
        assert rows["faiss-cpu"]["top1_is_source"] == 1.0
        assert ag["top1"] == 1.0 and ag["topk_overlap"] > 0.99
    else:
        assert "faiss-cpu" not in rows


def test_cosine_ranks_defaults_unchanged_and_fp16_option():
    g = np.random.default_rng(0)
    q, db = unit(g.normal(size=(5, 32))), unit(g.normal(size=(3000, 32)))
    naive = np.argsort(-(q @ db.T), axis=1, kind="stable").T
    np.testing.assert_array_equal(cosine_ranks(q, db, topk=20, chunk=512), naive[:20])
    half = cosine_ranks(q, db, topk=20, chunk=512, db_dtype=torch.float16)
    assert half.shape == (20, 5)
    np.testing.assert_array_equal(half[0], naive[0])  # the best match survives fp16
    with pytest.raises(ValueError, match="backend"):
        cosine_ranks(q, db, backend="annoy")


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
@pytest.mark.parametrize("topk", [1, 5, 40])
def test_chunked_topk_with_many_ties_is_the_stable_order(chunk, topk):
    # Small-integer vectors: many exactly equal scores, also across the top-k boundary.
    g = np.random.default_rng(2)
    q = g.integers(-1, 2, size=(4, 3)).astype(np.float32)
    db = g.integers(-1, 2, size=(300, 3)).astype(np.float32)
    stable = np.argsort(-(q @ db.T), axis=1, kind="stable").T
    np.testing.assert_array_equal(cosine_ranks(q, db, topk=topk, chunk=chunk), stable[:topk])


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_backend_equals_torch_without_ties():
    g = np.random.default_rng(1)
    q, db = unit(g.normal(size=(6, 64))), unit(g.normal(size=(5000, 64)))
    ref = cosine_ranks(q, db, topk=50)
    np.testing.assert_array_equal(cosine_ranks(q, db, topk=50, backend="faiss"), ref)
    index = faiss_index(torch.from_numpy(db), chunk=1000)  # added in 5 chunks
    np.testing.assert_array_equal(faiss_ranks(q, index, topk=50), ref)
    assert faiss_ranks(q[:1], db).shape == (5000, 1)  # topk=None: the full ranking


def test_bench_report_paths_command_and_files(tmp_path):
    from regattn_lib.experiments.bench_report import command_line, shown_path, write_report

    assert shown_path(REPO / "benchmarks" / "search_1m.py") == "benchmarks/search_1m.py"
    assert shown_path("/somewhere/else.py") == "/somewhere/else.py"
    cmd = command_line(REPO / "benchmarks" / "search_1m.py", ["--n", "1000", "--name", "a b"])
    assert cmd.endswith("benchmarks/search_1m.py --n 1000 --name 'a b'")

    text = write_report(tmp_path / "out", "r", {"x": 1.5}, lambda r: f"x = {r['x']}\n")
    assert text == "x = 1.5\n"
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {"x": 1.5}
    assert (tmp_path / "out" / "r.md").read_text() == text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.json", "r.md"]


def test_gpu_session_script_uses_only_existing_options():
    import re
    import subprocess

    script = REPO / "benchmarks" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    parsers = {
        "$bench": load_script("extract_throughput"),
        "search_1m.py": load_script("search_1m"),
    }
    seen = {key: 0 for key in parsers}
    limits = []
    for line in text.splitlines():
        if not line.startswith("step "):
            continue
        limits.append(int(line.split()[2]))
        key = next((k for k in parsers if k in line), None)
        if key is None:  # the rehearsal: run_all's options, checked by its own tests
            assert "scripts/rehearse_paper.sh" in line, line
            continue
        seen[key] += 1
        flags = re.findall(r"\s(--[a-z0-9-]+)", line)
        parser_flags = set()
        for action in parsers[key].build_parser()._actions:
            parser_flags.update(action.option_strings)
        assert set(flags) <= parser_flags, (line, set(flags) - parser_flags)
    assert seen == {"$bench": 4, "search_1m.py": 1} and len(limits) == 6
    # one device call of at most 9 minutes: the steps' limits leave a minute for the install
    assert sum(limits) <= 9 * 60 - 60, limits
