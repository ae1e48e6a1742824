"""Exact top-k search throughput: 70 queries against N random unit vectors (default 1M x 2048).

Backends, each where available:

- ``torch-cpu-fp32``: ``search.cosine_ranks(..., topk=100)``, chunked, database in host RAM;
- ``torch-cuda-fp32`` / ``torch-cuda-fp16``: the same with the database resident on the GPU
  (fp16 through ``db_dtype=torch.float16``: half the memory);
- ``torch-cuda-fp32-host-db``: database in host RAM, chunks copied to the GPU per search;
- ``faiss-cpu`` / ``faiss-gpu``: FAISS ``IndexFlatIP`` (exact), when ``faiss`` imports.

Queries are noisy copies of 70 database vectors (cosine about 0.9 to their source, while
random pairs are about 0 +- 0.02), so each backend's top-1 must be its query's source: a
correctness check that costs nothing. FAISS and fp16 results are compared with the torch fp32
ranking (top-1 agreement, mean top-k overlap). Memory of the database: N x D x 4 bytes in
fp32 (1M x 2048: 8.2 GB), half that in fp16; FAISS keeps its own fp32 copy, so the torch
database is freed first and FAISS's is built from the same vectors regenerated chunk by chunk.

Run::

    .venv/bin/python benchmarks/search_1m.py                # 1M x 2048
    .venv/bin/python benchmarks/search_1m.py --n 200000     # smaller machines
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regattn_lib.core.search import cosine_ranks, faiss_available, faiss_ranks
from regattn_lib.experiments.bench_report import command_line, cpu_name, write_report

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also checked against ``gpu_session.sh`` by the tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database size (default 1M)")
    p.add_argument("--dim", type=int, default=2048, help="dimensions (default 2048)")
    p.add_argument("--queries", type=int, default=70, help="queries (default 70, as Oxford+Paris)")
    p.add_argument("--topk", type=int, default=100, help="results per query (default 100)")
    p.add_argument("--chunk", type=int, default=65536, help="cosine_ranks chunk (default 65536)")
    p.add_argument("--devices", default="auto", help="cpu, cuda or both: auto (default)")
    p.add_argument(
        "--faiss", choices=("auto", "off"), default="auto", help="auto: run FAISS if importable"
    )
    p.add_argument("--repeats", type=int, default=2, help="timed searches, best kept (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the vectors (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's). On a CPU shared with other jobs, 1 "
        "avoids OpenMP threads stalling at barriers while a sibling thread is descheduled",
    )
    p.add_argument("--out-dir", type=Path, default=REPO / "results" / "bench")
    p.add_argument("--name", help="output file stem (default search_<cpu|cuda>)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.devices == "auto":
        args.devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if "cuda" in args.devices and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device visible")
    args.name = args.name or ("search_cuda" if "cuda" in args.devices else "search_cpu")
    return args


# ----------------------------------------------------------------------------- data
def db_chunks(n: int, dim: int, seed: int, chunk: int = 65536) -> Iterator[torch.Tensor]:
    """The database's unit vectors, ``chunk`` rows at a time; chunk i depends only on
    (seed, i), so the same database can be regenerated without keeping it."""
    for i, s in enumerate(range(0, n, chunk)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        x = torch.randn(min(chunk, n - s), dim, generator=g)
        yield x / x.norm(dim=1, keepdim=True)


def make_db(n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) fp32 unit vectors, filled chunk by chunk (no second full-size buffer)."""
    db = torch.empty(n, dim)
    s = 0
    for x in db_chunks(n, dim, seed):
        db[s : s + len(x)] = x
        s += len(x)
    return db


def make_queries(db: torch.Tensor, n_queries: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(queries, their source rows): L2(db[i] + noise) with cosine about 0.9 to db[i]."""
    g = torch.Generator().manual_seed(seed + 1)
    src = torch.randperm(db.shape[0], generator=g)[:n_queries]
    noise = torch.randn(len(src), db.shape[1], generator=g)
    # A noise vector of norm ~0.48 is nearly orthogonal to db[i]: cos = 1/sqrt(1+0.23) ~ 0.9.
    q = db[src] + 0.48 * noise / noise.norm(dim=1, keepdim=True)
    return q / q.norm(dim=1, keepdim=True), src.numpy()


def memory(n: int, dim: int) -> dict[str, float]:
    """Database sizes: GB (1e9 bytes) and GiB, fp32 and fp16."""
    b = n * dim
    return {
        "fp32_gb": 4 * b / 1e9,
        "fp16_gb": 2 * b / 1e9,
        "fp32_gib": 4 * b / 2**30,
        "fp16_gib": 2 * b / 2**30,
    }


# ----------------------------------------------------------------------------- measuring
def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    """(ranks, fastest wall-clock seconds of ``repeats`` runs after one warm-up run)."""
    ranks = fn()  # warm-up: kernels, allocator, FAISS threads
    best = math.inf
    for _ in range(max(1, repeats)):
        _sync()
        t0 = time.perf_counter()
        ranks = fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return ranks, best


def agreement(ranks: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and mean top-k set overlap of (k, Q) rankings against ``ref``."""
    k = ref.shape[0]
    overlap = [len(set(ranks[:, q]) & set(ref[:, q])) / k for q in range(ref.shape[1])]
    return {
        "top1": float(np.mean(ranks[0] == ref[0])),
        "topk_overlap": float(np.mean(overlap)),
        "identical": bool(np.array_equal(ranks, ref)),
    }


def record(
    name: str, ranks: np.ndarray, seconds: float, src: np.ndarray, ref: np.ndarray | None, **kw
) -> dict[str, Any]:
    """One backend's row of the result."""
    row = {
        "backend": name,
        "seconds": seconds,
        "queries_per_s": ranks.shape[1] / seconds,
        "top1_is_source": float(np.mean(ranks[0] == src)),
        **kw,
    }
    if ref is not None:
        row["agreement_with_torch_cpu_fp32"] = agreement(ranks, ref)
    return row


def torch_rows(
    args: argparse.Namespace, db: torch.Tensor, q: torch.Tensor, src: np.ndarray
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """The torch backends; returns the rows and the CPU fp32 ranking (the reference)."""
    rows: list[dict[str, Any]] = []
    k, chunk, ref = args.topk, args.chunk, None
    if "cpu" in args.devices:
        ref, t = best_time(lambda: cosine_ranks(q, db, topk=k, chunk=chunk), args.repeats)
        rows.append(record("torch-cpu-fp32", ref, t, src, None, db_location="host"))
    if "cuda" in args.devices:
        qg = q.cuda()
        # Host database streamed to the GPU chunk by chunk (pinned for faster copies).
        pinned = db.pin_memory()
        r, t = best_time(lambda: cosine_ranks(qg, pinned, topk=k, chunk=chunk), args.repeats)
        rows.append(record("torch-cuda-fp32-host-db", r, t, src, ref, db_location="host"))
        del pinned
        for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            dbg = db.to("cuda", dtype)
            r, t = best_time(
                lambda d=dbg, dt=dtype: cosine_ranks(qg, d, topk=k, chunk=chunk, db_dtype=dt),
                args.repeats,
            )
            rows.append(record(f"torch-cuda-{label}", r, t, src, ref, db_location="gpu"))
            del dbg
            torch.cuda.empty_cache()
    return rows, ref


def faiss_rows(
    args: argparse.Namespace, q: torch.Tensor, src: np.ndarray, ref: np.ndarray | None
) -> list[dict[str, Any]]:
    """FAISS IndexFlatIP on the CPU and, with a GPU build, on GPU 0."""
    if args.faiss == "off" or not faiss_available():
        return []
    import faiss

    rows = []
    gpus = [False] + ([True] if "cuda" in args.devices and faiss_available(gpu=True) else [])
    for gpu in gpus:
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(args.dim)
        if gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        for x in db_chunks(args.n, args.dim, args.seed):
            index.add(x.numpy())
        build = time.perf_counter() - t0
        r, t = best_time(lambda i=index: faiss_ranks(q, i, topk=args.topk), args.repeats)
        name = "faiss-gpu" if gpu else "faiss-cpu"
        rows.append(
            record(name, r, t, src, ref, build_s=build, faiss_threads=faiss.omp_get_max_threads())
        )
        del index
        gc.collect()
    return rows


# ----------------------------------------------------------------------------- reporting
def markdown(r: Mapping[str, Any]) -> str:
    """A short human summary of the JSON result."""
    m = r["memory"]
    lines = [
        f"# Exact search: {r['queries']} queries x {r['n']:,} x {r['dim']} (top-{r['topk']})",
        "",
        f"- Command: `{r['command']}`",
        f"- CPU: {r['cpu']}; GPU: {r['gpu'] or 'none'}; torch {r['torch']}; FAISS "
        f"{r['faiss'] or 'not installed'}; {r['date']}",
        f"- Database memory: fp32 {m['fp32_gb']:.2f} GB ({m['fp32_gib']:.2f} GiB), fp16 "
        f"{m['fp16_gb']:.2f} GB; generated in {r['generate_s']:.1f} s",
        "",
        "| backend | database | queries/s | s per 70-query batch | top-1 = source | "
        "top-1 / top-k overlap vs torch CPU |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["results"]:
        ag = row.get("agreement_with_torch_cpu_fp32")
        ag_s = "reference" if ag is None else f"{ag['top1']:.3f} / {ag['topk_overlap']:.4f}"
        loc = row.get("db_location", "faiss index") + (
            f" (build {row['build_s']:.1f} s)" if "build_s" in row else ""
        )
        lines.append(
            f"| {row['backend']} | {loc} | {row['queries_per_s']:.1f} | {row['seconds']:.3f} | "
            f"{row['top1_is_source']:.3f} | {ag_s} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Generate the data, time every available backend, return the JSON-ready result."""
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    db = make_db(args.n, args.dim, args.seed)
    q, src = make_queries(db, args.queries, args.seed)
    generate_s = time.perf_counter() - t0
    rows, ref = torch_rows(args, db, q, src)
    del db  # FAISS builds its own copy from regenerated chunks: one full copy at a time
    gc.collect()
    rows += faiss_rows(args, q, src, ref)
    faiss_version = None
    if faiss_available():
        import faiss

        faiss_version = faiss.__version__
    return {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "topk": args.topk,
        "chunk": args.chunk,
        "memory": memory(args.n, args.dim),
        "generate_s": generate_s,
        "results": rows,
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name() if "cuda" in args.devices else None,
        "faiss": faiss_version,
        "torch": torch.__version__,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "command": command_line(__file__, argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write ``<out-dir>/<name>.json`` and ``.md``, return the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    result = run(args, argv)
    print(write_report(args.out_dir, args.name, result, markdown))
    return result


if __name__ == "__main__":
    main()
