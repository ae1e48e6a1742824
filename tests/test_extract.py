from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from regattn_lib.attention import RegionalAttention
from regattn_lib.descriptor import RegionalDescriptor
from regattn_lib.extract import (
    GlobalHead,
    RegionalHead,
    RegionalVectorsHead,
    extract_dataset,
    extract_images,
    size_batches,
    target_size,
)
from regattn_lib.images import ImageError, prepare_image


class ToyBackbone(nn.Module):
    name = "toy"
    weights_id = "toy-1"
    stride = 32
    channels = 4

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)
        g = torch.Generator().manual_seed(0)
        nn.init.normal_(self.proj.weight, generator=g)
        nn.init.uniform_(self.proj.bias, 0.1, 0.5, generator=g)  # some channels always active

    def preprocess(self, images):
        return images.float() / 255

    def forward(self, x):
        return torch.relu(nn.functional.avg_pool2d(self.proj(x), 32, ceil_mode=True))

    def features(self, images):
        return self(self.preprocess(images))


@dataclass
class ToyDataset:
    name: str
    db_paths: list
    query_paths: list
    query_bbxs: list


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(96, 128), (128, 96), (96, 128), (100, 100), (96, 128)]):
        p = tmp_path / f"im{i}.jpg"
        # 32-px colour blocks: structure that survives the stride-32 pooling
        blocks = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
        im = np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))[:h, :w]
        Image.fromarray(np.ascontiguousarray(im)).save(p, quality=95)
        paths.append(p)
    return paths


def test_size_batches_groups_by_size_and_keeps_order():
    sizes = [(1, 2), (3, 4), (1, 2), (1, 2), (3, 4)]
    assert size_batches(sizes, 2) == [[0, 2], [3], [1, 4]]


def test_target_size_matches_prepared_image(images):
    for bbx in (None, [10.2, 5.5, 80.7, 60.1]):
        for longest in (None, 150, 200):
            h, w = target_size(images[0], longest, bbx)
            assert prepare_image(images[0], longest, bbx).shape[:2] == (h, w)


def test_batched_extraction_equals_one_image_at_a_time(images):
    bb = ToyBackbone()
    att = RegionalAttention(4, hidden=3, context=True)
    heads = {"rmac": RegionalHead(levels=2), "ctx": RegionalHead(levels=2, attention=att),
             "mac": GlobalHead(name="mac", pooling="mac")}  # fmt: skip
    out = extract_images(images, bb, heads, image_size=None, batch_size=4, progress=False)
    ref = RegionalDescriptor(bb, levels=2, attention=att)
    for i, p in enumerate(images):
        single = ref(torch.from_numpy(prepare_image(p, None)).permute(2, 0, 1)[None])[0]
        torch.testing.assert_close(out["ctx"][i], single)
    assert all(abs(float(v.norm()) - 1) < 1e-5 for v in out["rmac"] + out["mac"])


def test_regional_vectors_head_returns_all_regions(images):
    out = extract_images(
        images[:1], ToyBackbone(), {"v": RegionalVectorsHead(levels=2)}, None, progress=False
    )
    assert out["v"][0].shape == (8, 4)  # 96x128: 2 + 6 regions


def test_dataset_cache_hit_and_invalidation(images, tmp_path, monkeypatch):
    ds = ToyDataset("toy", images[:3], images[3:], [None, [5, 5, 60, 60]])
    bb = ToyBackbone()
    first = extract_dataset(
        ds, bb, {"r": RegionalHead(levels=2)}, None, cache_dir=tmp_path / "c", progress=False
    )
    assert len(list((tmp_path / "c" / "toy").glob("r-*.pt"))) == 1
    import regattn_lib.extract as ex

    calls = []
    real = ex.extract_images
    monkeypatch.setattr(ex, "extract_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = extract_dataset(
        ds, bb, {"r": RegionalHead(levels=2)}, None, cache_dir=tmp_path / "c", progress=False
    )
    assert calls == [] and torch.equal(again["r"].db, first["r"].db)
    # a changed setting (levels, whitening, attention weights, image list) never reuses vectors
    changed = extract_dataset(
        ds, bb, {"r": RegionalHead(levels=3)}, None, cache_dir=tmp_path / "c", progress=False
    )
    assert calls and changed["r"].config["levels"] == 3
    assert len(list((tmp_path / "c" / "toy").glob("r-*.pt"))) == 2
    assert first["r"].query_names == ["im3", "im4"] and first["r"].queries.shape == (2, 4)


def test_corrupt_image_is_named(images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        extract_images(
            [images[0], bad], ToyBackbone(), {"r": RegionalHead(levels=1)}, None, progress=False
        )


def test_too_small_after_crop_is_named(images):
    with pytest.raises(ImageError, match="smaller than 32"):
        extract_images([images[0]], ToyBackbone(), {"r": RegionalHead(levels=1)}, None,
                       bbxs=[[0, 0, 20, 20]], progress=False)  # fmt: skip


def test_cam_needs_fc():
    with pytest.raises(ValueError, match="fc"):
        GlobalHead(name="cam", pooling="cam")


def test_precision_option_is_validated(images):
    with pytest.raises(ValueError, match="precision"):
        extract_images(
            images[:1],
            ToyBackbone(),
            {"r": RegionalHead(levels=1)},
            None,
            precision="fp8",
            progress=False,
        )


def test_zero_descriptor_is_reported(images):
    class Dead(ToyBackbone):
        def forward(self, x):
            return torch.zeros(x.shape[0], 4, 3, 4)

    with pytest.warns(UserWarning, match="im0.jpg"):
        extract_images(images[:1], Dead(), {"r": RegionalHead(levels=1)}, None, progress=False)


def test_autocast_precisions_are_close_to_fp32_and_auto_is_fp32_on_cpu(images):
    bb = ToyBackbone()
    heads = {"ctx": RegionalHead(levels=2, attention=RegionalAttention(4, hidden=3, context=True))}
    run = {p: extract_images(images, bb, heads, None, precision=p, progress=False)["ctx"]
           for p in ("fp32", "auto", "fp16", "bf16")}  # fmt: skip
    worst = {}
    for p in ("fp16", "bf16"):
        for i in range(len(images)):
            assert not torch.equal(run[p][i], run["fp32"][i])  # the autocast really ran
        worst[p] = max(1 - float(run[p][i] @ run["fp32"][i]) for i in range(len(images)))
    assert all(torch.equal(a, b) for a, b in zip(run["auto"], run["fp32"], strict=True))
    assert worst["bf16"] < 1e-3
    assert worst["fp16"] < worst["bf16"] / 10  # 3 more mantissa bits


def test_resolve_precision_per_device():
    from regattn_lib.extract import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_precision("auto", d) for d in (cpu, cuda)] == ["fp32", "fp16"]
    assert [resolve_precision(p, cpu) for p in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]


def test_fp16_overflow_falls_back_to_fp32(images):
    class Huge(ToyBackbone):
        def forward(self, x):
            return super().forward(x) * 1e5  # above fp16's 65504 under autocast

    with pytest.warns(UserWarning, match="overflowed"):
        out = extract_images(images[:2], Huge(), {"m": GlobalHead(name="mac", pooling="mac")},
                             None, precision="fp16", progress=False)  # fmt: skip
    ref = extract_images(images[:2], Huge(), {"m": GlobalHead(name="mac", pooling="mac")},
                         None, precision="fp32", progress=False)  # fmt: skip
    for a, b in zip(out["m"], ref["m"], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_each_precision_gets_its_own_cache_file(images, tmp_path):
    ds = ToyDataset("toy", images[:3], images[3:], [[0, 0, 90, 90], [0, 0, 120, 90]])
    heads = {"r": RegionalHead(levels=1)}
    for p in ("fp32", "auto", "fp16", "bf16"):
        extract_dataset(ds, ToyBackbone(), heads, None, tmp_path, precision=p, progress=False)
    assert len(list((tmp_path / "toy").glob("r-*.pt"))) == 3  # auto is fp32 on the CPU
