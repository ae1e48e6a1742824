"""Search a photo folder indexed by ``apps.photos.index.index_folder`` with a photo (or a box in it),
and the ``index`` / ``search`` commands of ``python -m regattn_lib``.

The query is described exactly as the folder's images (EXIF orientation, the profile's image
size, the same model); a box is the paper's query crop. The search is exact: cosine scores
in blocks (``search.cosine_ranks``), or FAISS's exact inner-product index for large folders
when FAISS is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from regattn_lib.apps.photos.index import FolderIndex, describe_images, index_folder
from regattn_lib.apps.photos.model import PHOTO_METHODS
from regattn_lib.core.search import cosine_ranks, faiss_available
from regattn_lib.datasets.images import ImageError, read_photo

#: Folders with at least this many images are searched with FAISS when it is installed.
FAISS_MIN_IMAGES = 50_000


class SearchHit(NamedTuple):
    """One result: ``rank`` (1 = best), ``path`` relative to the folder (POSIX), cosine
    ``score``."""

    rank: int
    path: str
    score: float


def query_vector(
    index: FolderIndex, query_path: str | os.PathLike, box: Sequence[float] | None = None
) -> torch.Tensor:
    """The descriptor (D,) of a query photo, or of ``box`` = (x1, y1, x2, y2) in it (original
    pixels, EXIF orientation applied), made as the folder's images were.

    Raises ``FileNotFoundError`` naming a missing query and ``ImageError`` naming an unusable
    one or a box outside it.
    """
    path = Path(query_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"query image not found: {path}")
    model = index.model
    photo = read_photo(path, model.profile.image_size, box=box)
    return describe_images(model, torch.from_numpy(photo.image).permute(2, 0, 1)[None])[0]


def search_folder(
    index: FolderIndex,
    query_path: str | os.PathLike,
    box: Sequence[float] | None = None,
    top: int = 10,
    backend: str = "auto",
) -> list[SearchHit]:
    """The ``top`` (default 10) images of ``index`` most similar to the query, best first.

    ``box``: (x1, y1, x2, y2) in the query's original pixels after EXIF orientation (default
    ``None``: the whole photo), cropped as the paper crops a query. A query that is also in
    the folder is searched like any other (it ranks first). ``backend``: ``"auto"`` (default:
    FAISS for folders of ``FAISS_MIN_IMAGES`` or more when installed, else torch), ``"torch"``
    or ``"faiss"``. Ties are ordered by path (torch backend).
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if not index.paths:
        raise ValueError(f"no usable images in {index.folder} ({len(index.skipped)} skipped)")
    q = query_vector(index, query_path, box)[None]
    if backend == "auto":
        big = len(index.paths) >= FAISS_MIN_IMAGES
        backend = "faiss" if big and faiss_available() else "torch"
    ranks = cosine_ranks(q, index.vectors, topk=top, backend=backend)[:, 0]
    scores = (index.vectors[torch.from_numpy(np.asarray(ranks))] @ q[0]).tolist()
    return [
        SearchHit(r + 1, index.paths[i], float(s))
        for r, (i, s) in enumerate(zip(ranks.tolist(), scores, strict=True))
    ]


# ----------------------------------------------------------------------------- command line
def format_hits(hits: Sequence[SearchHit]) -> str:
    """One line per hit: rank (3 wide), score (4 decimals), path; e.g. ``  1  0.9321  a.jpg``."""
    return "\n".join(f"{h.rank:3d}  {h.score:.4f}  {h.path}" for h in hits)


def hits_json(hits: Sequence[SearchHit]) -> str:
    """A JSON list of ``{"rank", "path", "score"}`` objects."""
    return json.dumps([{"rank": h.rank, "path": h.path, "score": h.score} for h in hits])


def _index(args: argparse.Namespace) -> FolderIndex:
    index = index_folder(
        args.folder,
        args.profile,
        args.method,
        args.device,
        progress=not args.quiet,
        data_root=args.data_root,
    )
    err = sys.stderr if args.command == "search" else sys.stdout
    print(f"model: {index.model.describe()}", file=err)
    for note in index.notes:
        print(f"note: {note}", file=err)
    return index


def _print_skipped(index: FolderIndex, file: object) -> None:
    if index.skipped:
        print(f"skipped {len(index.skipped)} files:", file=file)
        for path, reason in index.skipped:
            print(f"  {path}: {reason}", file=file)


def cmd_index(args: argparse.Namespace) -> int:
    """``index DIR``: index (or update) the folder and say what was used and skipped."""
    try:
        index = _index(args)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(index.summary())
    print(f"cache: {index.cache_dir}")
    _print_skipped(index, sys.stdout)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``search DIR QUERY``: index the folder if needed, then print the best matches."""
    try:
        index = _index(args)
        print(index.summary(), file=sys.stderr)
        if index.examined:  # skipped files are listed once, when they are first met
            _print_skipped(index, sys.stderr)
        hits = search_folder(index, args.query, box=args.box, top=args.top)
    except (FileNotFoundError, ImageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(hits_json(hits) if args.json else format_hits(hits))
    return 0


def add_photo_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``index`` and ``search`` to the ``python -m regattn_lib`` subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("folder", help="the photo folder (searched recursively)")
        p.add_argument("--profile", default="demo", help="demo (EfficientNet-Lite0) | paper")
        p.add_argument(
            "--method",
            default="context",
            choices=PHOTO_METHODS,
            help="descriptor (default context; R-MAC when its weights are absent)",
        )
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument("--data-root", default=None, help="cache location (default: data/)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    ix = sub.add_parser("index", help="index a folder of photos (incremental)")
    common(ix)
    ix.set_defaults(func=cmd_index)
    se = sub.add_parser("search", help="search a photo folder with a query photo")
    common(se)
    se.add_argument("query", help="the query photo")
    se.add_argument(
        "--box",
        nargs=4,
        type=float,
        default=None,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="search with this box of the query (original pixels)",
    )
    se.add_argument("--top", type=int, default=10, help="results to print (default 10)")
    se.add_argument("--json", action="store_true", help="print only a JSON list on stdout")
    se.set_defaults(func=cmd_search)
