"""Notebook 08's pieces: the ranked photos as a table and a grid, the attention of a query and
of a result, and a small ipywidgets panel to pick a query (from the folder or an upload) and an
optional box."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from regattn_lib.apps.photos.index import FolderIndex
from regattn_lib.apps.photos.model import PhotoModel
from regattn_lib.apps.photos.search import SearchHit, search_folder
from regattn_lib.datasets.images import read_photo
from regattn_lib.experiments.figures import _figure, plot_attention


def hits_table(hits: Sequence[SearchHit]) -> pd.DataFrame:
    """``rank``, ``path`` (relative to the folder) and ``score`` (cosine) of each hit."""
    return pd.DataFrame([h._asdict() for h in hits], columns=["rank", "path", "score"])


@torch.no_grad()
def photo_attention(
    model: PhotoModel, path: str | os.PathLike, box: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, regions, alpha) of a photo as its descriptor sees it: upright, resized,
    cropped to ``box``, through the descriptor's own regions and attention (alpha = 1 for
    R-MAC)."""
    from regattn_lib.extraction.image_stream import backbone_features

    photo = read_photo(path, model.profile.image_size, box=box)
    batch = torch.from_numpy(photo.image).permute(2, 0, 1)[None].to(model.device)
    feats = backbone_features(model.backbone, model.backbone.preprocess(batch), model.precision)
    ((_, out),) = model.head.describe(feats, batch)
    return photo.image, out.features.regions, out.weights()[0].numpy()


def results_grid(
    index: FolderIndex,
    query: str | os.PathLike,
    hits: Sequence[SearchHit],
    box: Sequence[float] | None = None,
    columns: int = 5,
) -> Figure:
    """The query (its box in yellow) then the ranked photos with rank, score and path."""
    n = len(hits) + 1
    rows = -(-n // columns)
    fig = _figure(3 * columns, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    full = read_photo(query, None)
    axes[0].imshow(full.image)
    if box is not None:
        x1, y1, x2, y2 = box
        axes[0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="yellow", lw=2))
    axes[0].set_title(f"query: {Path(query).name}", fontsize=9)
    for ax, h in zip(axes[1:], hits, strict=False):
        ax.imshow(read_photo(Path(index.folder) / h.path, 384).image)
        ax.set_title(f"{h.rank}. {h.score:.3f}\n{h.path}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def attention_pair(
    model: PhotoModel,
    query: str | os.PathLike,
    result: str | os.PathLike,
    box: Sequence[float] | None = None,
) -> Figure:
    """Where the attention looks in the query (cropped to ``box``) and in one result."""
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, path, b, title in ((axes[0], query, box, "query"), (axes[1], result, None, "result")):
        image, regions, alpha = photo_attention(model, path, b)
        plot_attention(image, regions, alpha, title=f"{title}: {Path(path).name}", ax=ax)
    fig.tight_layout()
    return fig


class PhotoSearchPanel:
    """Pick a query (a photo of the folder, or an upload), optionally a box by sliders, and
    see the ranked photos and the attention of the query and of the top result.

    ``index``: the folder's ``FolderIndex``; ``top``: results shown (default 8); ``upload_dir``:
    where uploaded queries are written (default ``<folder cache>/uploads``).
    """

    def __init__(self, index: FolderIndex, top: int = 8, upload_dir: Path | None = None) -> None:
        import ipywidgets as w

        self.index = index
        self.upload_dir = Path(upload_dir or Path(index.cache_dir) / "uploads")
        self.query = w.Dropdown(options=list(index.paths), description="query")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="or upload")
        self.use_box = w.Checkbox(value=False, description="search a box")
        self.box = [
            w.FloatSlider(value=v, min=0, max=1, step=0.01, description=d)
            for d, v in zip(("x1", "y1", "x2", "y2"), (0.2, 0.2, 0.8, 0.8), strict=True)
        ]
        self.top = w.IntSlider(value=top, min=1, max=max(1, len(index.paths)), description="top")
        self.button = w.Button(description="search", button_style="primary")
        self.out = w.Output()
        self.button.on_click(lambda _: self.refresh())
        self.upload.observe(lambda _: self._take_upload(), names="value")
        self.widget = w.VBox(
            [
                w.HBox([self.query, self.upload]),
                w.HBox([self.use_box, *self.box]),
                w.HBox([self.top, self.button]),
                self.out,
            ]
        )

    def _take_upload(self) -> None:
        files = list(self.upload.value)
        if not files:
            return
        item = files[0]
        dest = self.upload_dir / Path(item["name"]).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(bytes(item["content"]))
        self.refresh(dest)

    def query_path(self) -> Path:
        """The query chosen in the dropdown, as a path."""
        return Path(self.index.folder) / self.query.value

    def box_pixels(self, path: Path) -> list[float] | None:
        """The slider box in the query's original (upright) pixels, or ``None``."""
        if not self.use_box.value:
            return None
        h, w = read_photo(path, None).original
        x1, y1, x2, y2 = (s.value for s in self.box)
        return [x1 * w, y1 * h, x2 * w, y2 * h]

    def refresh(self, path: Path | None = None) -> list[SearchHit]:
        """Search and redraw; returns the hits."""
        from IPython.display import display

        path = path or self.query_path()
        box = self.box_pixels(path)
        hits = search_folder(self.index, path, box=box, top=self.top.value)
        self.out.clear_output(wait=True)
        with self.out:
            display(results_grid(self.index, path, hits, box))
            if hits:
                top = Path(self.index.folder) / hits[0].path
                display(attention_pair(self.index.model, path, top, box))
        return hits

    def _ipython_display_(self) -> Any:
        from IPython.display import display

        display(self.widget)
