"""Sharded extraction: shard arithmetic, and 2 torchrun processes (gloo, CPU) against one."""

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

from regattn_lib.backbones import build_backbone
from regattn_lib.distributed import DistInfo, extract_distributed, shard_batches
from regattn_lib.extract import extract_images
from regattn_lib.heads import RegionalHead
from regattn_lib.image_stream import size_batches

REPO = Path(__file__).resolve().parents[1]
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


def test_single_process_falls_back_to_extract_images(image_dir):
    paths = sorted(image_dir.glob("*.jpg"))[:4]
    bb = build_backbone("efficientnet-lite0", pretrained=False)
    heads = {"rmac": RegionalHead(name="rmac", levels=2)}
    info = DistInfo(device=torch.device("cpu"))
    with torch_threads(1):
        got = extract_distributed(paths, bb, heads, 64, batch_size=2, info=info, progress=False)
        ref = extract_images(paths, bb, heads, 64, device="cpu", batch_size=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(got["rmac"], ref["rmac"], strict=True))


def test_torchrun_two_processes_equal_single_process(image_dir, tmp_path):
    out = tmp_path / "rmac.pt"
    # torchrun gives each process one intra-op thread; oneDNN's results depend on the thread
    # count (not on the batch split), so the reference below runs with one thread too.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "regattn_lib.distributed", "--image-dir", str(image_dir), "--image-size", "96",
        "--levels", "3", "--batch-size", "3", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got["config"]["world_size"] == 2 and got["config"]["backend"] == "gloo"

    paths = sorted(image_dir.glob("*.jpg"))
    assert got["db_names"] == [p.stem for p in paths]
    bb = build_backbone("efficientnet-lite0")
    with torch_threads(1):
        ref = extract_images(
            paths, bb, {"rmac": RegionalHead(name="rmac", levels=3)}, 96,
            device="cpu", batch_size=3, progress=False,
        )["rmac"]  # fmt: skip
    assert got["db"].shape == (12, 1280)
    assert torch.equal(got["db"], torch.stack(ref))
    assert got["queries"].shape == (0, 1280)
