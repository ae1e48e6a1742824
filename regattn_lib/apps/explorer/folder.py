"""A folder of one's own photos as the explorer's database (no ground truth: every photo is a
query and search works; AP, labels and the fixes table need ground truth and stay empty)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from regattn_lib.apps.explorer.source import ExplorerSource
from regattn_lib.datasets.retrieval import RetrievalDataset
from regattn_lib.experiments import pipeline
from regattn_lib.extraction import methods
from regattn_lib.extraction.extract import Descriptors

#: The ablation's rows, as the folder is described by each (the ones whose weights exist).
FOLDER_METHODS = ("rmac", "regional", "context")


def folder_source(
    ctx: pipeline.Context,
    folder: str | os.PathLike,
    method_names: Sequence[str] = FOLDER_METHODS,
    progress: bool = True,
) -> ExplorerSource:
    """Index ``folder`` with each method of ``method_names`` (``apps.photos.index.index_folder``,
    cached and incremental; a method whose attention is missing is left out rather than shown
    twice as R-MAC) and return it as an explorer source: the photos are both the database and
    the queries, in the index's order."""
    from regattn_lib.apps.photos.index import index_folder
    from regattn_lib.apps.photos.model import load_photo_model

    folder = Path(folder).expanduser().resolve()
    heads, attentions, descriptors = {}, {}, {}
    paths: list[str] | None = None
    for name in method_names:
        model = load_photo_model(ctx.profile, name, str(ctx.device), ctx.data_root)
        if model.method != name:
            continue  # fell back to R-MAC: already a row, or it will be
        index = index_folder(folder, model=model, data_root=ctx.data_root, progress=progress)
        if paths is None:
            paths = list(index.paths)
        elif list(index.paths) != paths:  # a file changed between two methods' passes
            raise RuntimeError(f"{folder} changed while it was indexed; run again")
        label = methods.label(name)
        heads[label] = model.head
        attentions[label] = model.head.attention
        names = [Path(p).as_posix() for p in paths]
        descriptors[label] = Descriptors(index.vectors, index.vectors, names, names)
    if not paths:
        raise FileNotFoundError(f"no usable photos under {folder}")
    ds = RetrievalDataset(
        name=folder.name,
        root=folder,
        imlist=paths,
        qimlist=paths,
        gnd=[],
        kind="none",
        ext="",
        image_dir=folder,
        qbbxs=[None] * len(paths),
    )
    return ExplorerSource(ds, heads, attentions, descriptors, upright=True)
