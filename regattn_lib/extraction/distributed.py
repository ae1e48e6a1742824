"""Multi-process descriptor extraction with PyTorch's own distributed stack (``torchrun``).

Every process runs the same script: it builds the backbone and heads, takes its shard of the
images, runs ``extract.extract_images`` on it and the per-image outputs are gathered back to
dataset order on every process. Launch, e.g. on 4 GPUs::

    torchrun --standalone --nproc_per_node=4 -m regattn_lib.extraction.distributed \\
        --dataset synthetic-demo --image-size 1024 --out results/bench/rmac-demo.pt

Shards are made of whole single-process batches (``image_stream.size_batches``), so each process
forms exactly the batches a single process would have formed for those images: with
deterministic kernels the gathered descriptors equal the single-process ones bit for bit.
Outside ``torchrun`` (no ``RANK``/``WORLD_SIZE`` in the environment) everything falls back to
one process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from regattn_lib.extraction import methods
from regattn_lib.extraction.extract import extract_images
from regattn_lib.extraction.heads import Head
from regattn_lib.extraction.image_stream import size_batches, target_size
from regattn_lib.runtime.environment import PRECISIONS, resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node, the
    ``device`` it computes on and the process-group ``backend`` (``None``: single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment carries torchrun's ``RANK`` and ``WORLD_SIZE``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join torchrun's process group (once) and pick this process's device.

    Parameters
    ----------
    device:
        ``"auto"`` (default: CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``. On CUDA each
        process takes GPU ``LOCAL_RANK`` and the NCCL backend; on the CPU, gloo.
    timeout_s:
        Collective timeout (default 30 min: a rank may wait for a slower shard that long).

    Without torchrun's environment, returns a single-process ``DistInfo`` and joins nothing.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        return DistInfo(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        # device_id binds NCCL's communicator to this process's GPU at init (no guessing later).
        dist.init_process_group(
            backend,
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank, world, local_rank, dev, backend)


@contextmanager
def torchrun_session(device: str | torch.device = "auto") -> Iterator[DistInfo]:
    """``init_distributed`` for a command's body; on leaving it, a barrier when the body ended
    normally (no rank leaves before rank 0 has written its files), then the group destroyed
    whatever happened. On an error, no barrier: torchrun ends the other ranks when this one
    exits non-zero. Without torchrun, a single-process ``DistInfo`` and nothing else."""
    info = init_distributed(device)
    try:
        yield info
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def rank0_value(info: DistInfo | None, value: Any) -> Any:
    """Rank 0's ``value`` on every process of the group (``info``; ``None`` or one process:
    ``value`` itself), so that all processes take the same branch before a collective."""
    if info is None or info.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_batches(
    sizes: Sequence[tuple[int, int]], batch_size: int, world_size: int
) -> list[list[int]]:
    """Split images into ``world_size`` shards made of whole single-process batches.

    Parameters
    ----------
    sizes:
        (H, W) of each image after resizing/cropping (``image_stream.target_size``).
    batch_size:
        The batch size ``extract_images`` will use on each shard.
    world_size:
        Number of shards.

    The batches are ``size_batches(sizes, batch_size)``. They are dealt largest first (cost =
    images x pixels) to the least loaded shard, ties to the lower rank, so the split is
    deterministic and balanced. Each shard lists its image indices in increasing order; since
    only the last batch of a size can be partial and it holds that size's last images,
    ``size_batches`` on a shard rebuilds exactly the global batches it was given.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    batches = size_batches(sizes, batch_size)
    cost = [len(b) * sizes[b[0]][0] * sizes[b[0]][1] for b in batches]
    loads = [0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(batches)), key=lambda i: (-cost[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        shards[r].extend(batches[i])
        loads[r] += cost[i]
    return [sorted(s) for s in shards]


def _gather_in_order(
    local: Mapping[str, list[torch.Tensor]], shard: list[int], n: int, names: Sequence[str]
) -> dict[str, list[torch.Tensor]]:
    """All-gather every rank's (indices, outputs) and put the outputs back in dataset order."""
    # clone(): an output may be a view of its batch's tensor, and pickling a view would send
    # the whole batch's storage.
    payload = (shard, {k: [t.clone() for t in local[k]] for k in names})
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, payload)
    out: dict[str, list[torch.Tensor | None]] = {k: [None] * n for k in names}
    for idx, outputs in parts:
        for k in names:
            for j, i in enumerate(idx):
                out[k][i] = outputs[k][j]
    missing = [i for i, t in enumerate(out[names[0]]) if t is None] if names else []
    if missing:
        raise RuntimeError(f"images {missing[:10]} were extracted by no rank")
    return out  # type: ignore[return-value]


def extract_distributed(
    paths: Sequence[str | os.PathLike],
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    bbxs: Sequence[Sequence[float]] | None = None,
    batch_size: int = 16,
    info: DistInfo | None = None,
    progress: bool | str = True,
    **kwargs: Any,
) -> dict[str, list[torch.Tensor]]:
    """``extract_images`` split over torchrun's processes; same outputs, in dataset order.

    Parameters
    ----------
    paths, heads, image_size, bbxs, batch_size:
        As for ``extract.extract_images`` (image_size default 1024 px, batch_size 16).
    backbone:
        This process's backbone, already on ``info.device``.
    info:
        From ``init_distributed``; ``None`` calls it (joins the group under torchrun).
    progress:
        Progress bar, shown by rank 0 only.
    kwargs:
        Passed to ``extract_images`` (``num_workers``, ``precision``); ``device`` is
        ``info.device``.

    Returns name -> list of per-image CPU tensors, in ``paths`` order, on every rank (gathered
    with ``all_gather_object``: fine for thousands of descriptors; for millions, write each
    shard to a file instead).
    """
    info = info if info is not None else init_distributed()
    common = dict(device=info.device, batch_size=batch_size, **kwargs)
    if info.world_size == 1:
        return extract_images(paths, backbone, heads, image_size, bbxs, progress=progress, **common)
    sizes = [
        target_size(p, image_size, None if bbxs is None else bbxs[i]) for i, p in enumerate(paths)
    ]
    shard = shard_batches(sizes, batch_size, info.world_size)[info.rank]
    local: Mapping[str, list[torch.Tensor]] = {k: [] for k in heads}
    if shard:
        local = extract_images(
            [paths[i] for i in shard],
            backbone,
            heads,
            image_size,
            None if bbxs is None else [bbxs[i] for i in shard],
            progress=progress if info.is_main else False,
            **common,
        )
    return _gather_in_order(local, shard, len(paths), list(heads))


# ----------------------------------------------------------------------------- CLI
def _parse_size(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """CLI options (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m regattn_lib.extraction.distributed",
        description="R-MAC descriptors of a dataset or an image folder, extracted by all "
        "torchrun processes and written to one .pt file by rank 0.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="test set under <data>/test/ (db + cropped queries)")
    src.add_argument("--image-dir", type=Path, help="every .jpg/.jpeg/.png in a folder, sorted")
    p.add_argument("--data-root", default=None, help="data root (default $REGATTN_DATA or data/)")
    p.add_argument("--backbone", default="efficientnet-lite0", help="default efficientnet-lite0")
    p.add_argument(
        "--random-weights", action="store_true", help="random backbone (speed tests only)"
    )
    p.add_argument("--image-size", type=_parse_size, default=1024, help="longest side or 'none'")
    p.add_argument("--levels", type=int, default=5, help="R-MAC levels L (default 5)")
    p.add_argument("--whitening", type=Path, default=None, help="PCAWhitening .pt (default none)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="backbone precision")
    p.add_argument("--num-workers", type=int, default=None, help="decode workers per process")
    p.add_argument("--no-crop-queries", action="store_true", help="do not crop queries to boxes")
    p.add_argument("--out", type=Path, required=True, help="output .pt file")
    return p.parse_args(argv)


def _image_lists(args: argparse.Namespace) -> tuple[list[Path], list[Path], list | None, str]:
    """(db paths, query paths, query boxes or None, source name) for the CLI's source."""
    if args.image_dir is not None:
        exts = {".jpg", ".jpeg", ".png"}
        files = sorted(p for p in args.image_dir.iterdir() if p.suffix.lower() in exts)
        return files, [], None, str(args.image_dir)
    from regattn_lib.datasets.retrieval import load_retrieval_dataset

    ds = load_retrieval_dataset(args.dataset, args.data_root)
    bbxs = None if args.no_crop_queries else list(ds.query_bbxs)
    return list(ds.db_paths), list(ds.query_paths), bbxs, ds.name


def main(argv: Sequence[str] | None = None) -> int:
    """Extract R-MAC descriptors (db, then queries) with every process; rank 0 saves them."""
    from regattn_lib.core.whitening import PCAWhitening
    from regattn_lib.models.factory import build_backbone
    from regattn_lib.runtime.atomic import atomic_torch_save

    args = parse_args(argv)
    with torchrun_session(args.device) as info:
        backbone = build_backbone(
            args.backbone, pretrained=not args.random_weights, data_root=args.data_root
        ).to(info.device)
        white = None if args.whitening is None else PCAWhitening.load(args.whitening)
        heads = {
            "rmac": methods.build_head("rmac", levels=args.levels, whitening=white, name="rmac")
        }
        db_paths, q_paths, bbxs, source = _image_lists(args)
        opts = dict(
            image_size=args.image_size,
            batch_size=args.batch_size,
            info=info,
            precision=args.precision,
            num_workers=args.num_workers,
        )
        db = extract_distributed(db_paths, backbone, heads, progress="db", **opts)["rmac"]
        qs = extract_distributed(q_paths, backbone, heads, bbxs=bbxs, progress="queries", **opts)
        if info.is_main:
            dim = db[0].shape[-1] if db else 0
            atomic_torch_save(
                args.out,
                {
                    "db": torch.stack(db) if db else torch.empty(0, dim),
                    "queries": torch.stack(qs["rmac"]) if q_paths else torch.empty(0, dim),
                    "db_names": [p.stem for p in db_paths],
                    "query_names": [p.stem for p in q_paths],
                    "config": {
                        "source": source,
                        "backbone": args.backbone,
                        "random_weights": args.random_weights,
                        "image_size": args.image_size,
                        "levels": args.levels,
                        "batch_size": args.batch_size,
                        "whitening": None if args.whitening is None else str(args.whitening),
                        "world_size": info.world_size,
                        "backend": info.backend,
                    },
                },
            )
            print(
                f"wrote {args.out}: {len(db_paths)} db + {len(q_paths)} queries, "
                f"{info.world_size} process(es)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
