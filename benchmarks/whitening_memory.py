"""Peak memory of the whitening pass (``pipeline.learn_whitenings``) on N generated vectors.

The paper profile learns its PCA-whitening on SfM-120k at L = 3: about 2.4M regional vectors of
2048 dimensions. Stacked, 1M such vectors are 8.2 GB in fp32; the old pass kept the per-image
list, its concatenation and two fp64 copies (about 24 bytes per number, ~49 GB at 1M, ~118 GB
at 2.4M). The pass now streams every image's vectors into fp64 mean/covariance accumulators.

What runs is the real pipeline step, end to end: ``pipeline.learn_whitenings`` on a Context
whose whitening set is a folder of JPEG files and whose backbone generates its feature maps.
The folder holds one JPEG of ``--image-size`` px (4:3) hard-linked N / R times (R = regions per
image at ``--levels``, 20 at L = 3), so N vectors cost no disk and are never materialised:
each image is decoded, resized, "run through the backbone" (a seeded random ReLU feature map of
``--dim`` channels at stride 32), region-pooled, and its R vectors go to the accumulator, as
with real data. The result is checked (N vectors counted, finite eigenvalues).

Memory is the resident-set high-water mark (``VmHWM``, the same as ``getrusage``'s
``ru_maxrss``) of a fresh child process per run: it counts everything the step touches, torch's
CPU allocator, LAPACK's ``eigh`` workspace, PIL buffers and the interpreter, which
``tracemalloc`` would miss (it sees only allocations made through Python's allocator, not
torch's), and a fresh process keeps one run's peak from hiding behind an earlier one's. The
child also reports its RSS after imports and set-up, so the step's own increase is visible.
``--stacked-n`` additionally runs the old stacked code (``extract_images`` + ``torch.cat`` +
``learn_pca_whitening`` on the array) at a small N, for comparison.

Run::

    .venv/bin/python benchmarks/whitening_memory.py                      # N = 1M, 2048-d
    .venv/bin/python benchmarks/whitening_memory.py --n 100000 300000    # two smaller N

On a shared 2-core machine pass ``--threads 1``: with 2 threads every small per-image tensor
operation stalled at OpenMP barriers (6 ms each), 6x slower overall; the fp64 block products
lose less than that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_GB = 1.5


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[1_000_000],
        help="numbers of vectors, one child process each (default 1000000)",
    )
    p.add_argument("--dim", type=int, default=2048, help="vector dimensions (default 2048)")
    p.add_argument(
        "--image-size",
        type=int,
        default=800,
        help="whitening images' longest side (default 800, the paper's)",
    )
    p.add_argument("--levels", type=int, default=3, help="R-MAC levels (default 3, the paper's)")
    p.add_argument(
        "--stacked-n",
        type=int,
        default=0,
        help="also run the old stacked code at this N (default 0: not run)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--out-dir", type=Path, default=REPO / "results" / "bench")
    p.add_argument("--name", default="whitening_memory_cpu", help="output file stem")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON settings of one measured run
    return p


# ----------------------------------------------------------------------------- the child
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(settings: Mapping[str, Any]) -> dict[str, Any]:
    """One measured run in this (fresh) process; returns its numbers."""
    import resource

    import numpy as np
    import torch
    from PIL import Image

    from regattn_lib.core.regions import rmac_regions
    from regattn_lib.experiments import pipeline as P
    from regattn_lib.experiments.profiles import get_profile

    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    n, dim, size, levels = (settings[k] for k in ("n", "dim", "image_size", "levels"))
    h, w = round(size * 3 / 4), size
    per_image = len(rmac_regions(h, w, levels))
    n_images = math.ceil(n / per_image)

    class GeneratedBackbone(torch.nn.Module):
        """Seeded random ReLU feature maps (dim channels, stride 32): generated vectors."""

        name, weights_id, stride, channels = "generated", f"generated-{dim}", 32, dim

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def preprocess(self, images: torch.Tensor) -> torch.Tensor:
            return images.float()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = torch.Generator().manual_seed(self.calls)
            self.calls += 1
            fh, fw = math.ceil(x.shape[2] / 32), math.ceil(x.shape[3] / 32)
            return torch.randn(x.shape[0], dim, fh, fw, generator=g).relu_()

    with tempfile.TemporaryDirectory(prefix="whitening-memory-") as tmp:
        root = Path(tmp)
        jpg = root / "train" / "bench-whiten" / "jpg"
        jpg.mkdir(parents=True)
        src = root / "source.jpg"
        pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src, quality=90)
        for i in range(n_images):
            os.link(src, jpg / f"{i:07d}.jpg")
        prof = get_profile(
            "smoke",
            whitening_set="bench-whiten",
            whitening_image_size=size,
            whitening_levels=levels,
            whitening_max_images=None,
            backbone="generated",
        )
        ctx = P.Context(prof, root, root / "results", torch.device("cpu"))
        bb = GeneratedBackbone()
        ctx = ctx.with_backbone(bb)  # no weights to load
        rss_before_kb = _status_kb("VmRSS")
        t0 = time.perf_counter()
        if settings["mode"] == "streamed":
            w_ = P.learn_whitenings(ctx, ["regional"], progress=False)["regional"]
        else:  # the code before streaming, verbatim in substance
            from regattn_lib.core.whitening import learn_pca_whitening
            from regattn_lib.extraction.extract import extract_images
            from regattn_lib.extraction.methods import whitening_head

            head = {"r": whitening_head("regional", levels=levels)}
            out = extract_images(
                sorted(jpg.iterdir()), bb, head, size, device="cpu", progress=False
            )
            vectors = torch.cat([v.reshape(-1, v.shape[-1]) for v in out["r"]])
            w_ = learn_pca_whitening(vectors)
        seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    ev = w_.eigenvalues
    return {
        "mode": settings["mode"],
        "n_vectors": int(w_.meta["n_vectors"]),
        "n_images": n_images,
        "vectors_per_image": per_image,
        "image_hw": [h, w],
        "dim": dim,
        "backbone_calls": bb.calls,
        "seconds": seconds,
        "rss_before_gb": rss_before_kb * 1024 / 1e9,
        "peak_rss_gb": peak_kb * 1024 / 1e9,
        "ru_maxrss_gb": maxrss_kb * 1024 / 1e9,
        "step_increase_gb": (peak_kb - rss_before_kb) * 1024 / 1e9,
        "stacked_fp32_gb": w_.meta["n_vectors"] * dim * 4 / 1e9,
        "eigenvalues_finite": bool(torch.isfinite(ev).all()),
        "eigenvalue_max": float(ev[0]),
        "eigenvalue_min": float(ev[-1]),
    }


def measure(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``_child`` in a fresh interpreter and return its result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(dict(settings))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measured run {settings} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- reporting
def markdown(r: Mapping[str, Any]) -> str:
    """A short human summary of the JSON result."""
    lines = [
        f"# Whitening pass memory: {r['dim']}-d regional vectors, L = {r['levels']}, "
        f"{r['image_size']} px",
        "",
        f"- Command: `{r['command']}`",
        f"- CPU: {r['cpu']}; torch {r['torch']}; {r['date']}",
        "- Peak = resident-set high-water mark (VmHWM) of a fresh child process running the step "
        "(imports and set-up included); 'step' = peak minus the RSS just before the step.",
        f"- Target: peak under {r['target_gb']} GB. Met by every streamed run: "
        f"{'yes' if r['target_met'] else 'NO'}.",
        "",
        "| code | vectors | images | stacked fp32 would be | peak RSS | step | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["runs"]:
        lines.append(
            f"| {row['mode']} | {row['n_vectors']:,} | {row['n_images']:,} | "
            f"{row['stacked_fp32_gb']:.2f} GB | {row['peak_rss_gb']:.3f} GB | "
            f"{row['step_increase_gb']:.3f} GB | {row['seconds']:.0f} s |"
        )
    return "\n".join(lines + ["", r["conclusion"]]) + "\n"


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    import torch

    from regattn_lib.experiments.bench_report import command_line, cpu_name

    if args.threads:
        torch.set_num_threads(args.threads)  # as in the children, so the report names it
    base = {
        "dim": args.dim,
        "image_size": args.image_size,
        "levels": args.levels,
        "threads": args.threads,
    }
    load_before = os.getloadavg()[0]
    runs = [measure({**base, "n": n, "mode": "streamed"}) for n in args.n]
    if args.stacked_n:
        runs.append(measure({**base, "n": args.stacked_n, "mode": "stacked"}))
    streamed = [r for r in runs if r["mode"] == "streamed"]
    ok = all(r["peak_rss_gb"] < TARGET_GB and r["eigenvalues_finite"] for r in streamed)
    peaks = [r["peak_rss_gb"] for r in streamed]
    conclusion = (
        f"Streamed: peak {min(peaks):.3f}-{max(peaks):.3f} GB for "
        f"{min(r['n_vectors'] for r in streamed):,}-{max(r['n_vectors'] for r in streamed):,} "
        "vectors: the vectors never accumulate (one C x C fp64 scatter matrix and a block of at "
        "most 4096 rows per kind)."
    )
    if len(streamed) > 1:
        lo, hi = (
            min(streamed, key=lambda r: r["n_images"]),
            max(streamed, key=lambda r: r["n_images"]),
        )
        grow = hi["peak_rss_gb"] - lo["peak_rss_gb"]
        per_image = grow * 1e6 / max(1, hi["n_images"] - lo["n_images"])
        conclusion += (
            f" From {lo['n_images']:,} to {hi['n_images']:,} images the peak moved by "
            f"{1000 * grow:+.0f} MB ({per_image:.2f} KB per image: the pass's per-image lists of "
            f"paths, sizes and batches), not with the vectors ({4 * args.dim / 1000:.1f} KB each in "
            "fp32)."
        )
    return {
        "dim": args.dim,
        "image_size": args.image_size,
        "levels": args.levels,
        "threads": torch.get_num_threads(),
        "runs": runs,
        "target_gb": TARGET_GB,
        "target_met": ok,
        "conclusion": conclusion,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "command": command_line(__file__, argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``<out-dir>/<name>.json`` and ``.md``, return the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return {}
    from regattn_lib.experiments.bench_report import write_report

    result = run(args, argv)
    print(write_report(args.out_dir, args.name, result, markdown))
    return result


if __name__ == "__main__":
    main()
