"""The ablation's time column (``timing.time_per_image``) and the profile's precision reaching
every extraction of the pipeline. No speed is asserted: a fake clock gives known durations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from regattn_lib.datasets import images as I
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import studies as S
from regattn_lib.experiments import timing as T
from regattn_lib.experiments.bench_report import device_name
from regattn_lib.experiments.profiles import PAPER, get_profile
from regattn_lib.extraction.methods import build_head


class LoggingBackbone(nn.Module):
    """A tiny stride-32 backbone that logs each forward's input shape into ``events``."""

    name, weights_id, stride, channels = "toy", "toy-1", 32, 4

    def __init__(self, events: list):
        super().__init__()
        self.events = events
        self.proj = nn.Conv2d(3, 4, 1)
        nn.init.uniform_(self.proj.bias, 0.1, 0.5)  # some channels always active

    def preprocess(self, images):
        return images.float() / 255

    def forward(self, x):
        self.events.append(("forward", tuple(x.shape[-2:])))
        return torch.relu(nn.functional.avg_pool2d(self.proj(x), 32, ceil_mode=True))


@dataclass
class FakeSet:
    name: str
    db_paths: list
    protocols: tuple = ("classic",)


def _context(tmp_path: Path, events: list, **overrides) -> P.Context:
    profile = get_profile("smoke", **overrides)
    ctx = P.Context(profile, tmp_path / "data", tmp_path / "results", torch.device("cpu"), {})
    ctx = ctx.with_backbone(LoggingBackbone(events))
    return ctx


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(60, 80), (80, 60), (60, 80), (60, 80), (80, 60)]):
        p = tmp_path / f"db{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_time_per_image_excludes_decoding_and_takes_the_median(tmp_path, photos, monkeypatch):
    events: list = []
    real_prepare = I.prepare_image

    def logged_prepare(path, longest, bbx=None):
        events.append(("decode", Path(path).name))
        return real_prepare(path, longest, bbx)

    monkeypatch.setattr(I, "prepare_image", logged_prepare)
    durations = iter([0.5, 0.1, 0.3, 0.2, 0.9, 2.0, 1.0, 4.0, 3.0, 5.0])
    now = [0.0]
    starting = [True]

    def clock() -> float:  # start, end, start, end...: each end is start + the next duration
        events.append(("clock",))
        if not starting[0]:
            now[0] += next(durations)
        starting[0] = not starting[0]
        return now[0]

    ctx = _context(tmp_path, events, image_size=96, timing_image_size=48, precision="fp32")
    heads = {"a": build_head("rmac", levels=1), "b": build_head("rmac", levels=2)}
    out = T.time_per_image(ctx, FakeSet("toy", photos), heads, n_images=5, clock=clock)

    assert list(out) == ["a", "b"]
    assert out["a"].median_s == pytest.approx(0.3)  # median of 0.5, 0.1, 0.3, 0.2, 0.9
    assert out["b"].median_s == pytest.approx(3.0)  # median of 2, 1, 4, 3, 5
    assert out["a"].times_s == pytest.approx((0.5, 0.1, 0.3, 0.2, 0.9))
    assert (out["a"].n, out["a"].precision, out["a"].image_size) == (5, "fp32", 48)
    assert out["a"].device == device_name(torch.device("cpu"))

    # every image decoded once, all before the first clock reading
    decodes = [i for i, e in enumerate(events) if e[0] == "decode"]
    first_clock = next(i for i, e in enumerate(events) if e[0] == "clock")
    assert len(decodes) == 5 and max(decodes) < first_clock
    # warm-up: one untimed forward per distinct shape before timing starts, at the timing size
    warm = [e[1] for e in events[:first_clock] if e[0] == "forward"]
    assert sorted(warm) == [(36, 48), (48, 36)]
    # then for each head, per image: clock, one forward, clock (one image at a time)
    timed = [e[0] for e in events if e[0] in ("clock", "forward")][len(warm) :]
    per_head = ["clock", "forward", "clock"] * 5
    assert timed == per_head + ["forward", "forward"] + per_head  # head b's warm-up between


def test_time_per_image_uses_the_profile_precision(tmp_path, photos):
    ctx = _context(tmp_path, [], image_size=64, precision="bf16")
    out = T.time_per_image(
        ctx, FakeSet("toy", photos), {"a": build_head("rmac", levels=1)}, n_images=2
    )
    assert (out["a"].precision, out["a"].n, out["a"].image_size) == ("bf16", 2, 64)
    assert out["a"].median_s > 0 and len(out["a"].times_s) == 2


def test_paper_profile_extracts_in_fp32_and_describe_passes_it(tmp_path, monkeypatch):
    assert PAPER.precision == "fp32" and get_profile("smoke").precision == "auto"
    calls = []
    monkeypatch.setattr(P, "extract_dataset", lambda *a, **kw: calls.append(kw) or {})
    ctx = _context(tmp_path, [], precision="fp32")
    P.describe(ctx, FakeSet("toy", []), {})
    P.describe(ctx, FakeSet("toy", []), {}, precision="fp16")
    assert [c["precision"] for c in calls] == ["fp32", "fp16"]


def test_whitening_is_extracted_in_the_profile_precision_and_keyed_by_it(tmp_path, monkeypatch):
    calls = []

    def fake_accumulate(paths, backbone, heads, size, **kw):
        from regattn_lib.core.whitening import accumulate

        calls.append(kw["precision"])
        g = torch.Generator().manual_seed(len(calls))
        return {k: accumulate([torch.randn(20, 4, generator=g) for _ in paths]) for k in heads}, []

    # the whitening pass streams through whitening_stream.accumulate_images (issue 11, defect 2)
    monkeypatch.setattr(P, "accumulate_images", fake_accumulate)
    monkeypatch.setattr(P, "_whitening_paths", lambda ctx: [Path(f"w{i}.jpg") for i in range(3)])
    for precision in ("fp32", "bf16", "fp32"):
        ctx = _context(tmp_path, [], precision=precision)
        P.learn_whitenings(ctx, ["regional"], progress=False)
    # fp32 and bf16 get their own cache file; the second fp32 run loads the first one's
    assert calls == ["fp32", "bf16"]
    assert len(list((tmp_path / "data" / "cache" / "smoke" / "whitening").glob("*.pt"))) == 2


def test_ablation_time_column_is_the_median_with_a_note(tmp_path, monkeypatch):
    ctx = _context(tmp_path, [], precision="fp32")
    heads = {P.RMAC: build_head("rmac", levels=1), P.CONTEXT: build_head("rmac", levels=2)}
    monkeypatch.setattr(P, "ablation_heads", lambda ctx, w: heads)
    monkeypatch.setattr(P, "dataset", lambda ctx, name: FakeSet(name, []))

    def classic_maps(ctx, name, h):
        scores = {m: {"seeds": 1} for m in h}
        return (
            FakeSet(name, []),
            scores,
            {m: 50.0 for m in h},
            {m: np.array([40.0, 60.0]) for m in h},
        )

    monkeypatch.setattr(S, "_classic_maps", classic_maps)
    timing = {
        m: T.ImageTiming(t, "Some GPU", "fp32", 7, 1024, (t,) * 7)
        for m, t in ((P.RMAC, 0.1), (P.CONTEXT, 0.2))
    }
    monkeypatch.setattr(S, "time_per_image", lambda ctx, ds, h, n: timing)
    table = S.ablation(ctx, whitening=None, n_timing=7)
    assert isinstance(table, pd.DataFrame)
    assert table["time_s"].tolist() == [0.1, 0.2]
    note = table.attrs["notes"][0]
    assert "median" in note and "7 images" in note and "1024 px" in note
    assert "Some GPU" in note and "fp32" in note
    assert table.attrs["timing"][P.CONTEXT]["median_s"] == 0.2
