"""The whitening pass: descriptor heads streamed into covariance accumulators, resumably."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from regattn_lib.core.whitening import CovarianceAccumulator
from regattn_lib.extraction.heads import Head
from regattn_lib.extraction.image_stream import SkippedImage, group_ranges, iter_images
from regattn_lib.runtime.shards import ShardStore

#: The name of the pass's one shard: its statistics so far.
STATISTICS = "statistics"


def accumulate_images(
    paths: Sequence[str | os.PathLike],
    backbone: nn.Module,
    heads: Mapping[str, Head],
    image_size: int | None = 1024,
    *,
    group_size: int = 1000,
    checkpoint: ShardStore | None = None,
    checkpoint_s: float = 300.0,
    min_original_side: int | None = None,
    block_rows: int = 4096,
    **kwargs: Any,
) -> tuple[dict[str, CovarianceAccumulator], list[SkippedImage]]:
    """Stream every head's outputs, as rows (-1, C), into one fp64 accumulator per head.

    The whitening pass: no vector is kept beyond the accumulators' buffers, so memory does not
    grow with the number of images. Bad images are skipped (``iter_images(on_bad="skip")``)
    and returned with the reason, as are those below ``min_original_side`` (default ``None``).

    Resumable: images go in consecutive groups of ``group_size`` (default 1000); after each
    group the accumulators merge their buffered rows, and when ``checkpoint_s`` seconds (default
    300; 0: after every group) have passed since the last save, the state is written atomically
    to the ``checkpoint`` store's one shard (one C x C fp64 matrix per head, 32 MB at C = 2048). A rerun with the
    same ``paths`` and ``group_size`` continues after the last saved group, and gives exactly
    the result of an uninterrupted pass (the same blocks merged in the same order). The caller
    clears the store once it has used the result. ``kwargs`` go to ``iter_images``
    (device, batch_size, num_workers, precision, progress).
    """
    ranges = group_ranges(len(paths), group_size)
    state = None
    if checkpoint is not None and checkpoint.has(STATISTICS):
        state = checkpoint.load(STATISTICS)
        if (
            state.get("n_paths"),
            state.get("group_size"),
            sorted(state.get("accumulators", {})),
        ) != (len(paths), group_size, sorted(heads)):
            where = checkpoint.path(STATISTICS)
            warnings.warn(f"{where}: made for another pass; starting over", stacklevel=2)
            state = None
    if state is None:
        accs = {name: CovarianceAccumulator(block_rows) for name in heads}
        skipped: list[SkippedImage] = []
        done = 0
    else:
        accs = {
            n: CovarianceAccumulator.from_state_dict(a) for n, a in state["accumulators"].items()
        }
        skipped = [SkippedImage.from_dict(d) for d in state["skipped"]]
        done = int(state["done_groups"])

    def save(n_done: int) -> None:
        checkpoint.save(
            STATISTICS,
            {
                "n_paths": len(paths),
                "group_size": group_size,
                "done_groups": n_done,
                "accumulators": {n: a.state_dict() for n, a in accs.items()},
                "skipped": [s.to_dict() for s in skipped],
            },
        )

    todo = ranges[done:]
    group_of = {}
    for g, (s, e) in enumerate(todo):
        group_of.update(dict.fromkeys(range(s, e), g))
    left = [e - s for s, e in todo]
    last_save = time.monotonic()
    stream = iter_images(
        paths,
        backbone,
        heads,
        image_size,
        groups=[range(s, e) for s, e in todo],
        on_bad="skip",
        min_original_side=min_original_side,
        part="whitening",
        **kwargs,
    )
    for item in stream:
        if item.skipped is not None:
            skipped.append(item.skipped)
        else:
            for name, out in item.outputs.items():
                accs[name].update(out.reshape(-1, out.shape[-1]))
        g = group_of[item.index]
        left[g] -= 1
        if left[g] == 0:
            for a in accs.values():
                a.flush()  # fixed merge points: a resumed pass merges the same blocks
            if checkpoint is not None and time.monotonic() - last_save >= checkpoint_s:
                save(done + g + 1)
                last_save = time.monotonic()
    skipped.sort(key=lambda s: s.index)
    return accs, skipped
