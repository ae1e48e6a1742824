"""Descriptor extraction throughput: the authors' style of test script against our engine.

On the same images and the same backbone, attention and whitening, in one run:

(a) baseline: the usual pipeline (``benchmarks/usual_pipeline.py``, the project's one
    reference implementation, also used by the tests), written independently of the engine
    from the authors' test script: PIL decode and resize per image, batch 1, fp32, a Python
    loop over the R-MAC regions doing max and average pooling region by region, the attention
    from the raw weights on each image's region set, whitening and aggregation written out;
(b) engine: ``regattn_lib.extraction.extract.extract_images`` with its defaults (size-bucketed batches,
    DataLoader workers, fp16 autocast + channels_last on CUDA, fp32 on the CPU).

Both produce the three descriptors of the paper's ablation (R-MAC + PCA, + regional attention,
+ context awareness) from one backbone pass per image. Reported: images/s of each and their
ratio (all methods together, and per method alone), the largest cosine distance between the
two pipelines' descriptors, their mAP on the dataset's queries against its database and the
difference, the engine's batched seconds per image per method (a throughput figure; the
paper's time column, one image at a time, is ``timing.time_per_image``), optionally ``torch.compile`` of the backbone (warm-up reported
separately), and on CUDA the share of time the GPU is busy (torch.profiler kernel time over
the profiled window). Writes ``results/bench/<name>.json`` and ``.md``.

Run (CPU, the defaults are small)::

    .venv/bin/python benchmarks/extract_throughput.py --device cpu

On a GPU (defaults: caffe-resnet101, 1024 px, synthetic-demo: 4:3, 3:4 and 1:1 images)::

    .venv/bin/python benchmarks/extract_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.evaluate import evaluate
from regattn_lib.core.search import cosine_ranks
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.datasets.images import prepare_image
from regattn_lib.datasets.retrieval import RetrievalDataset, load_retrieval_dataset
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments.bench_report import command_line, device_name, shown_path, write_report
from regattn_lib.extraction import methods
from regattn_lib.extraction.extract import extract_images
from regattn_lib.extraction.heads import RegionalHead
from regattn_lib.extraction.image_stream import target_size
from regattn_lib.models.attention_weights import OFFICIAL_RELPATH, load_official_attention
from regattn_lib.models.backbone_weights import default_weights_path
from regattn_lib.models.batchnorm_calibration import calibrate_batchnorm
from regattn_lib.models.factory import build_backbone
from regattn_lib.runtime.environment import resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling usual_pipeline.py
from usual_pipeline import usual_descriptors  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: The ablation's methods: row label -> attention kind (None: R-MAC).
METHODS: dict[str, str | None] = {P.RMAC: None, P.REGIONAL: "regional", P.CONTEXT: "context"}
#: Defaults per device: the CPU ones finish in about a minute on 2 cores; the CUDA ones are
#: the paper's setting (ResNet-101 at 1024 px) on the synthetic set's varied aspect ratios.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {
        "backbone": "efficientnet-lite0",
        "image_size": 256,
        "n_images": 32,
        "dataset": "synthetic-smoke",
        "profile": "smoke",
    },
    "cuda": {
        "backbone": "caffe-resnet101",
        "image_size": 1024,
        "n_images": 256,
        "dataset": "synthetic-demo",
        "profile": "paper",
    },
}

Descs = dict[str, torch.Tensor]
#: A pipeline: (paths, query boxes or None) -> method label -> (N, D) descriptors.
Runner = Callable[[Sequence[Path], Sequence[Sequence[float]] | None], Descs]


# ----------------------------------------------------------------------------- options
def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also checked against ``gpu_session.sh`` by the tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--backbone", help="cpu: efficientnet-lite0, cuda: caffe-resnet101")
    p.add_argument(
        "--weights",
        choices=("auto", "pretrained", "random"),
        default="auto",
        help="auto (default): pretrained when the weights are on disk, else random (speed only)",
    )
    p.add_argument(
        "--weights-note",
        default=None,
        metavar="TEXT",
        help="what the weights file on disk really is, shown beside the weights in the report "
        "(e.g. the rehearsal's random stand-in: its precision numbers are a proxy)",
    )
    p.add_argument("--image-size", type=int, help="longest side, px (cpu 256, cuda 1024)")
    p.add_argument("--n-images", type=int, help="timed database images (cpu 32, cuda 256)")
    p.add_argument(
        "--dataset", help="test set under <data>/test/ (cpu synthetic-smoke, cuda synthetic-demo)"
    )
    p.add_argument("--profile", help="attention models / whitening source (cpu smoke, cuda paper)")
    p.add_argument("--levels", type=int, help="R-MAC levels L (default: the profile's)")
    p.add_argument("--batch-size", type=int, default=16, help="engine batch (default 16)")
    p.add_argument(
        "--precision", default="auto", help="engine precision: auto | fp32 | fp16 | bf16"
    )
    p.add_argument(
        "--whitening",
        choices=("auto", "learn", "random"),
        default="auto",
        help="learn: the profile's PCA-whitening (pipeline.learn_whitening, cached); random: a "
        "random orthogonal CxC matrix; auto (default): learn for an offline profile's own "
        "pretrained backbone, else random",
    )
    p.add_argument(
        "--attention",
        choices=("auto", "random"),
        default="auto",
        help="auto (default): results/<profile>/models/attention_*.pt (or the authors' file) "
        "when it fits the backbone, else a random initialisation; random: always random",
    )
    p.add_argument("--repeats", type=int, default=2, help="timed passes, best kept (default 2)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(backbone)")
    p.add_argument(
        "--sweep-batch-sizes",
        default="",
        help="comma-separated engine batch sizes to time as well (all methods), e.g. 1,4,16",
    )
    p.add_argument(
        "--map",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="extract the whole dataset with both pipelines for the mAP (default on)",
    )
    p.add_argument("--seed", type=int, default=0, help="random attention/whitening seed")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's). On a CPU shared with other jobs, 1 "
        "avoids OpenMP threads stalling at barriers while a sibling thread is descheduled",
    )
    p.add_argument("--data-root", default=None, help="data root (default $REGATTN_DATA or data/)")
    p.add_argument("--results-root", default=None, help="where results/<profile>/ lives")
    p.add_argument("--out-dir", type=Path, default=REPO / "results" / "bench")
    p.add_argument("--name", help="output file stem (default extract_<cpu|cuda>)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``None`` defaults are filled per device from ``DEFAULTS``."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or f"extract_{args.device}"
    return args


# ----------------------------------------------------------------------------- models
def load_backbone(name: str, weights: str, data_root: Path, device: torch.device):
    """(backbone on ``device``, 'pretrained' | 'random'); ``auto`` never downloads."""
    if weights == "auto":
        offline = name == "efficientnet-lite0" or default_weights_path(name, data_root).is_file()
        weights = "pretrained" if offline else "random"
    bb = build_backbone(name, pretrained=weights == "pretrained", data_root=data_root)
    return bb.to(device), weights


def calibration_batch(paths: Sequence[Path], image_size: int | None) -> torch.Tensor:
    """The images prepared as for extraction, cropped to their common size: uint8 (B, 3, H, W)."""
    images = [prepare_image(p, image_size) for p in paths]
    h, w = min(im.shape[0] for im in images), min(im.shape[1] for im in images)
    return torch.stack([torch.from_numpy(im[:h, :w]).permute(2, 0, 1) for im in images])


def random_whitening(channels: int, seed: int) -> PCAWhitening:
    """A random orthogonal C x C projection, mean 0: a rotation, so the same ranking as no
    whitening, at the cost of a learned full-dimensional one."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))
    return PCAWhitening(
        torch.zeros(channels), q.float(), torch.ones(channels), {"kind": "random-orthogonal"}
    )


def choose_whitening(args, ctx: P.Context, backbone, weights: str) -> tuple[PCAWhitening, str]:
    """(whitening, how it was made) following ``--whitening``."""
    mode = args.whitening
    if mode == "auto":
        # ctx.profile carries the --backbone override; the profile's whitening set and cache
        # belong to its own backbone.
        own = backbone.name == P.get_profile(args.profile).backbone and weights == "pretrained"
        mode = "learn" if own and not ctx.profile.download else "random"
    if mode == "random":
        return random_whitening(backbone.channels, args.seed), "random orthogonal (seeded)"
    w = P.learn_whitening(ctx, "regional", progress=False)
    return (
        w,
        f"learned: {ctx.profile.whitening_set}, {w.meta.get('n_vectors')} vectors, {w.out_dim}-d",
    )


def _fits(module: RegionalAttention, backbone) -> bool:
    """Trained for this backbone: same channels and, when recorded, the same backbone name."""
    trained_on = (getattr(module, "training_config", None) or {}).get("backbone", backbone.name)
    return module.in_channels == backbone.channels and trained_on == backbone.name


def choose_attention(
    kind: str, args, ctx: P.Context, backbone, device: torch.device
) -> tuple[RegionalAttention, str]:
    """(attention of ``kind``, its source): a trained file that fits the backbone, else the
    authors' context-aware weights when present and 2048-d, else a seeded random init."""
    if args.attention == "auto":
        from regattn_lib.training.checkpoint import load_trained_attention

        f = P.attention_file(ctx, kind)
        if f.is_file():
            m = load_trained_attention(f)
            if _fits(m, backbone):
                return m.to(device).eval(), shown_path(f)
        official = ctx.data_root / OFFICIAL_RELPATH
        if kind == "context" and backbone.channels == 2048 and official.is_file():
            return load_official_attention(official).to(device).eval(), shown_path(official)
    torch.manual_seed(args.seed + (kind == "context"))
    m = RegionalAttention(backbone.channels, context=kind == "context")
    return m.to(device).eval(), f"random init (seed {args.seed + (kind == 'context')})"


# ----------------------------------------------------------------------------- (a) baseline
# The usual pipeline (one image and one region at a time, fp32) is the project's one reference
# implementation: benchmarks/usual_pipeline.py, also used by the tests.


# ----------------------------------------------------------------------------- (b) engine
def engine_extract(
    paths: Sequence[Path],
    bbxs: Sequence[Sequence[float]] | None,
    backbone,
    heads: Mapping[str, RegionalHead],
    image_size: int | None,
    device: torch.device,
    batch_size: int,
    precision: str,
) -> Descs:
    """The engine (b): ``extract_images`` with its defaults (workers, bucketing, fp16 on CUDA)."""
    out = extract_images(
        paths,
        backbone,
        heads,
        image_size,
        bbxs,
        device=device,
        batch_size=batch_size,
        precision=precision,
        progress=False,
    )
    return {k: torch.stack(v).float() for k, v in out.items()}


# ----------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(
    fns: Mapping[str, Callable[[], Any]], device: torch.device, repeats: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """(last result, fastest wall-clock seconds) of each function over ``repeats`` rounds.

    The functions take turns within each round, so a load change on a shared machine hits
    them alike; the GPU is synchronised around each run.
    """
    results: dict[str, Any] = {}
    best = dict.fromkeys(fns, math.inf)
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            results[name] = fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return results, best


def one_per_size(paths: Sequence[Path], image_size: int | None) -> list[Path]:
    """One image of each resized size: warming them up builds every kernel the run needs."""
    seen: dict[tuple[int, int], Path] = {}
    for p in paths:
        seen.setdefault(target_size(p, image_size, None), p)
    return list(seen.values())


def merged_length(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping [start, end) intervals."""
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def gpu_busy_share(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Share of the profiled window during which GPU work (kernels, copies) runs; ``None``
    off CUDA. The profiler's CPU overhead makes this a slight underestimate."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _sync(device)
    events = [e for e in prof.events() if e.time_range.end > e.time_range.start]
    gpu = [
        (e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA
    ]
    if not gpu:
        return None
    window = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    return merged_length(gpu) / window


def max_cosine_distance(a: Descs, b: Descs) -> dict[str, float]:
    """Per method, max over images of 1 - cos(a_i, b_i).

    Normalised here rather than trusting unit norms: an attention whose weights underflow
    (alpha ~ 1e-15) gives descriptors below ``l2_normalize``'s 1e-8 floor, far from unit.
    """
    return {k: float((1 - F.cosine_similarity(a[k], b[k], dim=1, eps=1e-30)).max()) for k in a}


def map_scores(db: torch.Tensor, q: torch.Tensor, ds: RetrievalDataset) -> dict[str, float]:
    """mAP (%) per protocol of queries ``q`` against database ``db``."""
    r = evaluate(cosine_ranks(q, db), ds.gnd, query_names=ds.qimlist)
    return {p: float(v["map"]) for p, v in r["protocols"].items()}


# ----------------------------------------------------------------------------- the run
@dataclass
class Setup:
    """Everything both pipelines share."""

    args: argparse.Namespace
    device: torch.device
    ctx: P.Context
    ds: RetrievalDataset
    backbone: Any
    weights: str
    whitening: PCAWhitening
    whitening_source: str
    attentions: dict[str, RegionalAttention | None]
    attention_sources: dict[str, str]
    levels: int

    def heads(self, labels: Sequence[str] | None = None) -> dict[str, RegionalHead]:
        labels = list(self.attentions) if labels is None else labels
        return {
            k: methods.build_head(
                methods.method_of(self.attentions[k]),
                name=k,
                levels=self.levels,
                attention=self.attentions[k],
                whitening=self.whitening,
            )
            for k in labels
        }

    def baseline(self, labels: Sequence[str] | None = None, backbone=None) -> Runner:
        att = {k: self.attentions[k] for k in (labels or self.attentions)}
        bb = self.backbone if backbone is None else backbone
        a = self.args
        return lambda paths, bbxs: usual_descriptors(
            paths, bbxs, bb, att, self.whitening, a.image_size, self.levels, self.device
        )

    def engine(self, labels: Sequence[str] | None = None, backbone=None) -> Runner:
        heads, bb, a = (
            self.heads(labels),
            self.backbone if backbone is None else backbone,
            self.args,
        )
        return lambda paths, bbxs: engine_extract(
            paths, bbxs, bb, heads, a.image_size, self.device, a.batch_size, a.precision
        )


def load_dataset(name: str, data_root: Path) -> RetrievalDataset:
    """A test set; a missing synthetic one (``synthetic-<preset>``) is generated first (offline,
    deterministic: e.g. synthetic-demo on a fresh GPU machine)."""
    from regattn_lib.datasets.synthetic import SYNTHETIC_PRESETS, generate_synthetic

    preset = name.removeprefix("synthetic-")
    if name.startswith("synthetic-") and preset in SYNTHETIC_PRESETS:
        # no-op when already there; all cores but one (the output does not depend on it)
        workers = min(8, max(2, (os.cpu_count() or 1) - 1))
        generate_synthetic(preset, data_root, progress=False, workers=workers)
    return load_retrieval_dataset(name, data_root)


def make_setup(args: argparse.Namespace) -> Setup:
    """Resolve the device, profile, dataset, backbone, whitening and attention."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    results = None if args.results_root is None else Path(args.results_root) / args.profile
    ctx = P.setup(
        args.profile,
        data_root=args.data_root,
        results=results,
        device=args.device,
        backbone=args.backbone,
        image_size=args.image_size,
        levels=args.levels,
        batch_size=args.batch_size,
    )
    ds = load_dataset(args.dataset, ctx.data_root)
    backbone, weights = load_backbone(args.backbone, args.weights, ctx.data_root, device)
    if weights == "random":
        # Default BatchNorm statistics make a random ResNet-101's activations overflow fp16;
        # calibrated on 8 benchmark images they keep a trained network's scale.
        calibrate_batchnorm(backbone, calibration_batch(ds.db_paths[:8], args.image_size))
    ctx = ctx.with_backbone(backbone)  # reuse this instance
    whitening, w_source = choose_whitening(args, ctx, backbone, weights)
    # Resident on the device for both pipelines: a per-image host-to-GPU copy of a 2048 x 2048
    # projection would slow the batch-1 baseline for a reason that has nothing to do with it.
    whitening = PCAWhitening(
        whitening.mean.to(device),
        whitening.projection.to(device),
        whitening.eigenvalues,
        whitening.meta,
    )
    attentions: dict[str, RegionalAttention | None] = {}
    sources: dict[str, str] = {}
    for label, kind in METHODS.items():
        if kind is None:
            attentions[label], sources[label] = None, "none (R-MAC)"
        else:
            attentions[label], sources[label] = choose_attention(kind, args, ctx, backbone, device)
    return Setup(
        args,
        device,
        ctx,
        ds,
        backbone,
        weights,
        whitening,
        w_source,
        attentions,
        sources,
        ctx.profile.levels,
    )


def measure_joint(s: Setup, paths: list[Path]) -> dict[str, Any]:
    """All three methods from one backbone pass per image, baseline vs engine."""
    base_fn, eng_fn = s.baseline(), s.engine()
    # Warm-up, untimed: the engine over every image builds each batch shape's kernels, the
    # baseline needs one image per size (its batches are single images).
    base_fn(one_per_size(paths, s.args.image_size), None)
    eng_fn(paths, None)
    fns = {"baseline": partial(base_fn, paths, None), "engine": partial(eng_fn, paths, None)}
    out, t = best_times(fns, s.device, s.args.repeats)
    return {
        "baseline_images_per_s": len(paths) / t["baseline"],
        "engine_images_per_s": len(paths) / t["engine"],
        "speedup": t["baseline"] / t["engine"],
        "max_cosine_distance": max_cosine_distance(out["baseline"], out["engine"]),
    }


def measure_per_method(s: Setup, paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Each method alone, baseline vs engine.

    The engine's seconds per image is its batched throughput with one head (``extract_images``
    on the first database images, the profile's image size and batch size, decoding included),
    best of the repeats; the paper's time column (one image at a time, decoding excluded,
    median) is ``timing.time_per_image``.
    """
    out = {}
    for label in s.attentions:
        m: dict[str, Any] = {"attention": s.attention_sources[label]}
        base_fn, eng_fn = s.baseline([label]), s.engine([label])
        # No warm-up needed: the joint run already built every kernel these shapes use.
        fns = {"baseline": partial(base_fn, paths, None), "engine": partial(eng_fn, paths, None)}
        _, t = best_times(fns, s.device, s.args.repeats)
        for name in fns:
            m[f"{name}_images_per_s"] = len(paths) / t[name]
        m["speedup"] = m["engine_images_per_s"] / m["baseline_images_per_s"]
        m["time_per_image_s"] = t["engine"] / len(paths)
        out[label] = m
    return out


def measure_batch_sweep(s: Setup, paths: list[Path], sizes: Sequence[int]) -> dict[int, float]:
    """Engine images/s (all methods) at each batch size; sizes take turns within a round."""
    a = s.args
    fns = {
        bs: partial(
            engine_extract,
            paths,
            None,
            s.backbone,
            s.heads(),
            a.image_size,
            s.device,
            bs,
            a.precision,
        )
        for bs in sizes
    }
    for fn in fns.values():
        fn()  # warm-up: each batch size has its own batch shapes
    _, t = best_times(fns, s.device, a.repeats)
    return {bs: len(paths) / t[bs] for bs in sizes}


def measure_compile(s: Setup, paths: list[Path], eager_images_per_s: float) -> dict[str, Any]:
    """``torch.compile`` of the backbone under the engine: first pass (compiles every batch
    shape) and steady passes, timed separately."""
    compiled = torch.compile(s.backbone)
    fns = {"compiled": lambda: s.engine(backbone=compiled)(paths, None)}
    _, first = best_times(fns, s.device, 1)
    _, t = best_times(fns, s.device, s.args.repeats)
    return {
        "warmup_s": first["compiled"],
        "engine_images_per_s": len(paths) / t["compiled"],
        "speedup_vs_eager_engine": len(paths) / t["compiled"] / eager_images_per_s,
    }


def measure_accuracy(s: Setup) -> dict[str, Any]:
    """Both pipelines on the whole dataset (db + cropped queries): distances and mAP."""
    ds, out = s.ds, {}
    for name, run in (("baseline", s.baseline()), ("engine", s.engine())):
        out[name] = (run(ds.db_paths, None), run(ds.query_paths, ds.query_bbxs))
    (bdb, bq), (edb, eq) = out["baseline"], out["engine"]
    dist_db, dist_q = max_cosine_distance(bdb, edb), max_cosine_distance(bq, eq)
    res = {}
    for k in s.attentions:
        mb, me = map_scores(bdb[k], bq[k], ds), map_scores(edb[k], eq[k], ds)
        res[k] = {
            "max_cosine_distance": max(dist_db[k], dist_q[k]),
            "map_baseline": mb,
            "map_engine": me,
            "map_delta": {p: me[p] - mb[p] for p in mb},
        }
    return res


def _largest(values: Sequence[float]) -> float:
    """The value of largest magnitude, sign kept (0.0 for none)."""
    return max(values, key=abs, default=0.0)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Measure everything and return the JSON-ready result.

    Counts the engine's fp16 overflow fallbacks (each one recomputes a batch in fp32, so any
    at all make the engine's timing pessimistic); other warnings are passed on.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _measure(args, argv)
    overflow = [w for w in caught if "fp16 features overflowed" in str(w.message)]
    for w in caught:
        if w not in overflow:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    result["fp16_overflow_batches"] = len(overflow)
    return result


def _measure(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    phases: dict[str, float] = {}

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        phases[name] = time.perf_counter() - t0
        return out

    s = phase("setup", lambda: make_setup(args))
    n = min(args.n_images, s.ds.n_db)
    paths = list(s.ds.db_paths)[:n]
    joint = phase("joint", lambda: measure_joint(s, paths))
    per_method = phase("per_method", lambda: measure_per_method(s, paths))
    for k, d in joint["max_cosine_distance"].items():
        per_method[k]["max_cosine_distance_timed"] = d
    comp = None
    if args.compile:
        comp = phase("compile", lambda: measure_compile(s, paths, joint["engine_images_per_s"]))
    sweep = None
    if args.sweep_batch_sizes:
        sizes = [int(x) for x in args.sweep_batch_sizes.split(",")]
        sweep = phase("batch_sweep", lambda: measure_batch_sweep(s, paths, sizes))
    busy = None
    if s.device.type == "cuda":
        busy = phase(
            "gpu_busy",
            lambda: {
                "baseline": gpu_busy_share(lambda: s.baseline()(paths, None), s.device),
                "engine": gpu_busy_share(lambda: s.engine()(paths, None), s.device),
            },
        )
    acc = phase("map", lambda: measure_accuracy(s)) if args.map else {}
    for k, a in acc.items():
        per_method[k].update(a)
    max_dist = max(
        [*joint["max_cosine_distance"].values()] + [a["max_cosine_distance"] for a in acc.values()]
    )
    return {
        "device": device_name(s.device),
        "device_kind": s.device.type,
        "backbone": args.backbone,
        "backbone_weights": s.weights + (f": {s.args.weights_note}" if s.args.weights_note else ""),
        "dataset": s.ds.name,
        "profile": args.profile,
        "image_size": args.image_size,
        "levels": s.levels,
        "n_images": n,
        "n_images_map": s.ds.n_db + s.ds.n_queries if args.map else 0,
        "batch_size": args.batch_size,
        "engine_precision": args.precision,
        "engine_autocast": resolve_precision(args.precision, s.device),
        "repeats": args.repeats,
        "whitening": s.whitening_source,
        "whitening_dims": s.whitening.out_dim,
        "methods": list(s.attentions),
        "baseline_images_per_s": joint["baseline_images_per_s"],
        "engine_images_per_s": joint["engine_images_per_s"],
        "speedup": joint["speedup"],
        "max_cosine_distance": max_dist,
        "map_delta": _largest([d for a in acc.values() for d in a["map_delta"].values()])
        if acc
        else None,
        "per_method": per_method,
        "time_per_image_s": {k: v["time_per_image_s"] for k, v in per_method.items()},
        "gpu_busy_share": busy,
        "phase_s": phases,
        "compile": comp,
        "engine_images_per_s_by_batch_size": sweep,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # Other processes on the machine skew CPU timings; the ratio is measured alternately.
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "command": command_line(__file__, argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ----------------------------------------------------------------------------- reporting
def markdown(r: Mapping[str, Any]) -> str:
    """A short human summary of the JSON result."""
    lines = [
        f"# Extraction throughput: {r['device_kind'].upper()}",
        "",
        f"- Command: `{r['command']}`",
        f"- Device: {r['device']}; torch {r['torch']}; {r['date']}; 1-min load average "
        f"{r['load_average_1m']['start']:.1f} at start, {r['load_average_1m']['end']:.1f} at end",
        f"- Backbone: {r['backbone']} ({r['backbone_weights']} weights); {r['image_size']} px, "
        f"L = {r['levels']}; {r['n_images']} timed images of {r['dataset']} (best of "
        f"{r['repeats']}, alternating); engine batch {r['batch_size']}, backbone in {r['engine_autocast']}",
        f"- Whitening: {r['whitening']}",
        "",
        f"**All three methods, one backbone pass per image**: baseline "
        f"{r['baseline_images_per_s']:.2f} img/s, engine {r['engine_images_per_s']:.2f} img/s, "
        f"speedup **{r['speedup']:.2f}x**. Largest cosine distance between the pipelines' "
        f"descriptors: {r['max_cosine_distance']:.2e}; largest mAP difference (engine - "
        f"baseline, any method/protocol): "
        + ("n/a" if r["map_delta"] is None else f"{r['map_delta']:+.3f} points"),
        "",
        "| method | attention | baseline img/s | engine img/s | speedup | engine s/img "
        "(time column) | max cos dist | mAP base -> engine (medium or classic) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, m in r["per_method"].items():
        maps = "n/a"
        if "map_engine" in m:
            p = "medium" if "medium" in m["map_engine"] else next(iter(m["map_engine"]))
            maps = f"{m['map_baseline'][p]:.2f} -> {m['map_engine'][p]:.2f} ({p})"
        dist = m.get("max_cosine_distance", m["max_cosine_distance_timed"])
        lines.append(
            f"| {k} | {m['attention']} | {m['baseline_images_per_s']:.2f} | "
            f"{m['engine_images_per_s']:.2f} | {m['speedup']:.2f}x | "
            f"{m['time_per_image_s'] * 1000:.1f} ms | {dist:.1e} | {maps} |"
        )
    busy = r["gpu_busy_share"]
    lines += [
        "",
        "GPU busy share: "
        + (
            "n/a (CPU run)"
            if busy is None
            else ", ".join(f"{k} {v:.0%}" if v is not None else f"{k} n/a" for k, v in busy.items())
        ),
    ]
    if r.get("fp16_overflow_batches"):
        lines.append(
            f"fp16 overflow: {r['fp16_overflow_batches']} engine batches were redone in fp32, "
            "so the engine's rate is pessimistic"
        )
    if r.get("engine_images_per_s_by_batch_size"):
        lines.append(
            "Engine img/s by batch size (all methods): "
            + ", ".join(f"{k}: {v:.2f}" for k, v in r["engine_images_per_s_by_batch_size"].items())
        )
    if r["compile"]:
        c = r["compile"]
        lines.append(
            f"torch.compile: warm-up pass {c['warmup_s']:.1f} s, then "
            f"{c['engine_images_per_s']:.2f} img/s ({c['speedup_vs_eager_engine']:.2f}x eager)"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``<out-dir>/<name>.json`` and ``.md``, return the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    result = run(args, argv)
    print(write_report(args.out_dir, args.name, result, markdown))
    return result


if __name__ == "__main__":
    main()
