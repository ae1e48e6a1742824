"""Sharded extraction (shard arithmetic, 2 torchrun processes against one) and the training's
rank slicing."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regattn_lib.extraction.distributed import shard_batches
from regattn_lib.extraction.extract import extract_images
from regattn_lib.extraction.image_stream import size_batches
from regattn_lib.extraction.methods import build_head
from regattn_lib.models.factory import build_backbone
from regattn_lib.training.data import Loader, Stream, rank_shard, rank_slice

REPO = Path(__file__).resolve().parents[1]
#: A torchrun launch of two processes on this machine, the module to run to follow.
TORCHRUN_2 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
]
#: (W, H) of the generated images: three sizes, so three buckets with a partial last batch.
SIZES = [(96, 72), (72, 96), (80, 80)]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """12 small random JPEGs of 3 sizes, interleaved so buckets are not contiguous."""
    d = tmp_path_factory.mktemp("dist-images")
    g = np.random.default_rng(0)
    for i in range(12):
        w, h = SIZES[i % 3]
        pixels = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(d / f"im{i:02d}.jpg", quality=90)
    return d


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_shards_cover_every_image_once_and_rebuild_global_batches():
    sizes = [(64, 48), (48, 64), (64, 64)] * 7 + [(64, 48)] * 5  # 26 images
    batches = size_batches(sizes, 4)
    shards = shard_batches(sizes, 4, 3)
    assert sorted(i for s in shards for i in s) == list(range(26))
    for shard in shards:
        # Re-bucketing a shard (what extract_images does on it) gives whole global batches.
        local = size_batches([sizes[i] for i in shard], 4)
        assert all([shard[j] for j in b] in batches for b in local)
    # Balanced by pixels: loads 3 x (4 batches of 64x48 ...) differ by at most one batch.
    loads = [sum(sizes[i][0] * sizes[i][1] for i in s) for s in shards]
    assert max(loads) - min(loads) <= 4 * 64 * 64


def test_more_ranks_than_batches_leaves_empty_shards():
    shards = shard_batches([(64, 64)] * 3, 4, 3)
    assert shards == [[0, 1, 2], [], []]
    with pytest.raises(ValueError, match="world_size"):
        shard_batches([(64, 64)], 4, 0)


@pytest.mark.parametrize(
    ("world", "expected"),
    [
        (1, [[0, 1, 2, 3, 4, 5, 6]]),
        (2, [[0, 2, 4, 6], [1, 3, 5]]),
        (3, [[0, 3, 6], [1, 4], [2, 5]]),
    ],
)
def test_validation_shards_cover_every_image_once_without_padding(world, expected):
    shards = [rank_shard(7, r, world) for r in range(world)]
    assert shards == expected
    assert sorted(i for s in shards for i in s) == list(range(7))  # each image once, no pad


@pytest.mark.parametrize(
    ("world", "expected"),
    [
        (1, [["a", "b"]]),
        (2, [["a", "b"], ["c", "d"]]),
        (3, [["a", "b"], ["c", "d"], ["e", "f"]]),
    ],
)
def test_ddp_ranks_take_consecutive_slices_of_the_global_batch(world, expected):
    global_batch = list("abcdef")[: 2 * world]  # what every rank draws: per_rank 2 x world
    parts = [rank_slice(global_batch, r, 2) for r in range(world)]
    assert parts == expected
    assert [x for p in parts for x in p] == global_batch  # the union is the batch, once


def test_ddp_streams_see_the_samples_of_one_process_with_the_global_batch():
    """W ranks of batch b, each with its own sampler seeded alike, train on exactly the
    samples of one process of batch W * b (so the run does not depend on the world size)."""
    loader = Loader(0)

    def stream(rank: int, world: int, batch: int) -> Stream:
        gen = torch.Generator().manual_seed(5)
        return Stream(gen, 10, batch, rank, world, (70, 75), None, loader)

    single = stream(0, 1, 6)
    ranks = [stream(r, 3, 2) for r in range(3)]
    for it in range(4):
        whole = single.next(prefetch=it < 3)
        parts = [s.next(prefetch=it < 3) for s in ranks]
        assert [spec for p in parts for spec in p.specs] == whole.specs
        # the checkpointed sampler state is the same on every rank and equals one process's
        assert all(torch.equal(p.sampler_state, whole.sampler_state) for p in parts)


def test_torchrun_two_processes_equal_single_process(image_dir, tmp_path):
    out = tmp_path / "rmac.pt"
    # torchrun gives each process one intra-op thread; oneDNN's results depend on the thread
    # count (not on the batch split), so the reference below runs with one thread too.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        *TORCHRUN_2,
        "regattn_lib.extraction.distributed",
        "--image-dir",
        str(image_dir),
        "--image-size",
        "96",
        "--levels",
        "3",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got["config"]["world_size"] == 2 and got["config"]["backend"] == "gloo"

    paths = sorted(image_dir.glob("*.jpg"))
    assert got["db_names"] == [p.stem for p in paths]
    bb = build_backbone("efficientnet-lite0")
    with torch_threads(1):
        ref = extract_images(
            paths,
            bb,
            {"rmac": build_head("rmac", name="rmac", levels=3)},
            96,
            device="cpu",
            batch_size=3,
            progress=False,
        )["rmac"]
    assert got["db"].shape == (12, 1280)
    assert torch.equal(got["db"], torch.stack(ref))
    assert got["queries"].shape == (0, 1280)


def test_torchrun_builds_the_metric_learning_cache_notebook_02_reads(tmp_path):
    """``python -m regattn_lib.experiments.metric_plan`` under torchrun (2 gloo processes,
    several resumable shards) writes the pooled regions of the metric split, under the key
    notebook 02 looks for, equal to one process's."""
    from regattn_lib.datasets.synthetic import generate_synthetic, metric_tuples
    from regattn_lib.experiments import metric_plan as MP
    from regattn_lib.experiments import pipeline as P
    from regattn_lib.training.metric_data import pooled_regions

    root, results = tmp_path / "data", tmp_path / "results"
    sp = generate_synthetic("smoke", root, progress=False, workers=1, parts=("metric",))
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("image_size: 96\n")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "REGATTN_SHARD_IMAGES": "25",
        "REGATTN_RESULTS": str(results),
    }
    cmd = [
        *TORCHRUN_2,
        "regattn_lib.experiments.metric_plan",
        "--profile",
        "smoke",
        "--overrides",
        str(overrides),
        "--data-root",
        str(root),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train: " in proc.stdout and "pairs cached" in proc.stdout
    caches = sorted((root / "cache" / "smoke" / "metric").glob("*.pt"))
    assert [c.name.split("-")[0] for c in caches] == ["train", "val"]
    assert not list((root / "cache" / "smoke" / "metric").glob("*.parts"))  # shards cleared

    ctx = P.setup("smoke", root, results, device="cpu", overrides={"image_size": 96})
    pools = MP.metric_pools(ctx, progress=False)  # found in the cache: no backbone needed
    bb = build_backbone("efficientnet-lite0")
    for split in ("train", "val"):
        _, paths = metric_tuples(sp, split)
        with torch_threads(1):
            ref = pooled_regions(paths, bb, 96, ctx.profile.levels, device="cpu", progress=False)
        got = pools[split][1]
        assert len(got) == len(ref) == len(paths)
        assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
