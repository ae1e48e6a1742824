"""Interactive query explorer: which queries does attention fix or break, and where does it look?

``QueryExplorer`` works on the *cached* descriptors of the ablation rows (R-MAC + PCA,
+ regional attention, + context awareness) written by notebook 03; it never extracts a
database (a missing cache raises ``MissingCacheError`` naming the command that builds it).
Rankings, per-query APs, thumbnails and attention maps are computed once and kept in memory,
so switching query or method only looks things up.

The logic lives in plain methods (``select_query``, ``select_method``, ``set_qe``, ``set_k``,
``set_protocol``, ``set_levels``, ``select_result``, ``upload``, ``state``) that tests drive
without a browser; ``ExplorerView`` is a thin ipywidgets layer over them. ``screenshot``
opens notebook 07 in a real JupyterLab and headless Chromium (the browser test and
``python -m regattn_lib.explorer --screenshot PATH --profile demo``).
"""

from __future__ import annotations

import argparse
import html
import io
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from . import pipeline as P
from .evaluate import compute_map
from .extract import Descriptors, extract_dataset, extract_images
from .figures import LABEL_COLOURS, attention_heatmap
from .images import ImageError, truncated_images_allowed
from .paths import REPO_ROOT
from .qe import average_query_expansion
from .search import cosine_ranks
from .whitening import PCAWhitening

#: Border colour of results of an uploaded image (no ground truth to label them).
UNLABELLED_COLOUR = "#1f77b4"
#: Largest k offered by the slider (the result grid keeps this many tiles ready).
K_MAX = 30
#: Notebook of the explorer (the browser test and ``screenshot`` open a copy of it).
NOTEBOOK = REPO_ROOT / "notebooks" / "07_query_explorer.ipynb"


class MissingCacheError(FileNotFoundError):
    """A cached artefact the explorer reads is missing; the message names the command."""


def build_command(profile: str) -> str:
    """The command that writes the descriptor cache the explorer reads."""
    return f"./run_all.sh --profile {profile} --only 03"


def _missing_message(ctx: P.Context, what: str) -> str:
    p = ctx.profile.name
    return (
        f"{what}. The query explorer only reads cached descriptors, it never extracts a "
        f"database: run {build_command(p)} (notebook 03_ablations builds the R-MAC, regional "
        f"and context descriptors of {', '.join(ctx.profile.datasets)}; it needs notebooks 01 "
        f"and 02 first: ./run_all.sh --profile {p} runs the whole series)."
    )


# ----------------------------------------------------------------------------- cache readers
def cached_whitening(ctx: P.Context) -> PCAWhitening:
    """The profile's regional PCA-whitening, loaded from its cache and never learned here.

    ``learn_whitening(cached_only=True)`` owns the cache key and never extracts.
    """
    try:
        return P.learn_whitening(ctx, progress=False, cached_only=True)
    except FileNotFoundError:
        raise MissingCacheError(
            _missing_message(ctx, f"No cached whitening under {ctx.cache_dir / 'whitening'}")
        ) from None


def cached_descriptors(ctx: P.Context, ds: Any, heads: dict[str, Any]) -> dict[str, Descriptors]:
    """Descriptors of ``ds`` for ``heads`` from the cache of ``P.describe`` (same keys)."""
    try:
        return extract_dataset(
            ds, ctx.backbone, heads, ctx.profile.image_size, cache_dir=ctx.cache_dir,
            cached_only=True, device=ctx.device, batch_size=ctx.profile.batch_size,
        )  # fmt: skip
    except FileNotFoundError as e:
        reason = str(e)
        raise MissingCacheError(_missing_message(ctx, reason[:1].upper() + reason[1:])) from None


def build_cache(ctx: P.Context, dataset: str | None = None, progress: bool = False) -> None:
    """Build what the explorer reads where it is missing, with the pipeline (notebooks 01-03).

    Data, whitening, the attention weights (profiles that train them) and the descriptors
    of the ablation rows; whatever exists is loaded, not redone. For tests and fresh clones.
    """
    P.prepare_data(ctx, progress=progress)
    whitening = P.learn_whitening(ctx, progress=progress)
    if ctx.profile.train.source == "train":
        kinds = [k for k in P.ATTENTION_KINDS.values() if not P.attention_file(ctx, k).is_file()]
        if kinds:
            P.train_profile_attention(ctx, kinds=kinds)
    ds = P.dataset(ctx, dataset or ctx.profile.datasets[0])
    P.describe(ctx, ds, P.ablation_heads(ctx, whitening), progress=progress)


# ----------------------------------------------------------------------------- images
def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnail(
    path: str | os.PathLike, size: int, bbx: Sequence[float] | None = None, square: bool = True
) -> bytes:
    """JPEG bytes of an image shrunk to ``size`` px on its long side, its box drawn if given;
    ``square`` centres it on a ``size`` x ``size`` canvas so that grids of them line up."""
    with truncated_images_allowed(), Image.open(path) as im:  # a cut-off distractor still shows
        full = im.size
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
        small = im.convert("RGB")
    small.thumbnail((size, size))
    if bbx is not None:
        sx, sy = small.width / full[0], small.height / full[1]
        box = [bbx[0] * sx, bbx[1] * sy, bbx[2] * sx, bbx[3] * sy]
        ImageDraw.Draw(small).rectangle(box, outline="yellow", width=max(2, size // 80))
    if not square:
        return _jpeg(small)
    canvas = Image.new("RGB", (size, size), "#f0f0f0")
    canvas.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return _jpeg(canvas)


def level_regions(height: int, width: int, levels: int) -> np.ndarray:
    """The R-MAC regions of level ``levels`` alone (the finest grid of 1..L)."""
    from .regions import rmac_regions

    coarser = len(rmac_regions(height, width, levels - 1)) if levels > 1 else 0
    return rmac_regions(height, width, levels)[coarser:]


def heat_overlay(
    image: np.ndarray, regions: np.ndarray, alpha: np.ndarray, grid: np.ndarray
) -> bytes:
    """JPEG of ``image`` with the mean alpha per pixel as a jet heat map and ``grid`` drawn."""
    from matplotlib import colormaps

    heat = attention_heatmap(image.shape[0], image.shape[1], regions, alpha)
    lo, hi = float(heat.min()), float(heat.max())
    # Uniform weights (R-MAC) have no range: paint them mid-scale rather than divide by zero.
    norm = (heat - lo) / (hi - lo) if hi - lo > 1e-9 else np.full_like(heat, 0.5)
    colour = (colormaps["jet"](norm)[..., :3] * 255).astype(np.float32)
    blend = (0.55 * image.astype(np.float32) + 0.45 * colour).clip(0, 255).astype(np.uint8)
    out = Image.fromarray(blend)
    draw = ImageDraw.Draw(out)
    for x, y, w, h in np.asarray(grid):
        draw.rectangle([int(x), int(y), int(x + w - 1), int(y + h - 1)], outline="white")
    return _jpeg(out)


def read_upload(data: bytes, name: str) -> Image.Image:
    """The uploaded bytes as an RGB image; ``ImageError`` with a readable reason otherwise."""
    if not data:
        raise ImageError(f"{name!r} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(
            f"{name!r} is not an image that can be read ({type(e).__name__}); "
            "upload a JPEG, PNG or WebP photo"
        ) from None


@contextmanager
def one_image_threads(device: torch.device):
    """One CPU thread for the backbone on a single image, restored afterwards.

    One image gains little from intra-op threads, but on a busy CPU their synchronisation
    does not: on a loaded 2-core machine a 256 px EfficientNet-Lite0 forward took 3.5 s with
    2 threads and 0.06 s with 1, which decides whether a query switch feels instant.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- explorer
@dataclass
class _Upload:
    name: str
    path: Path
    size: tuple[int, int]
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (1, D)


@dataclass
class _State:
    query: int = 0
    method: str = P.RMAC
    qe: bool = False
    k: int = 8
    protocol: str = "classic"
    levels: int = 3
    result: int | None = None  # database index shown in the attention view
    message: str = ""
    error: bool = False


class QueryExplorer:
    """Browse the ranked lists of a dataset's queries for the ablation methods (cached only).

    Parameters
    ----------
    ctx:
        A ``pipeline.setup`` context (profile, data root, results, device).
    dataset:
        A test set of the profile (default: its first ablation set).
    k:
        Results shown at first (the slider goes to ``K_MAX``).
    thumb_px:
        Long side of the thumbnails (queries and database), precomputed once.
    widgets:
        Build the ipywidgets view (``False`` for tests and scripts).

    Raises ``MissingCacheError`` (naming the command to run) when the whitening or the
    descriptor cache is missing.
    """

    def __init__(
        self,
        ctx: P.Context,
        dataset: str | None = None,
        k: int = 8,
        thumb_px: int = 112,
        widgets: bool = True,
    ) -> None:
        self.ctx = ctx
        self.ds = P.dataset(ctx, dataset or ctx.profile.datasets[0])
        self.whitening = cached_whitening(ctx)
        self.attentions = P.available_attention(ctx)
        self.heads = P.ablation_heads(ctx, self.whitening, self.attentions)
        self.descriptors = cached_descriptors(ctx, self.ds, self.heads)
        self.methods = list(self.heads)
        self.protocols = list(self.ds.protocols)
        self.thumb_px = thumb_px
        self._ranks: dict[tuple[str, bool], np.ndarray] = {}
        self._aps: dict[tuple[str, bool, str], np.ndarray] = {}
        self._cache: dict[tuple, Any] = {}  # labels, query views, attention maps
        self._upload: _Upload | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="regattn-upload-")
        self._state = _State(
            method=self.methods[-1],  # the most complete model: what the paper proposes
            k=max(1, min(k, K_MAX, self.ds.n_db)),
            protocol=self.protocols[0] if self.protocols else "classic",
            levels=ctx.profile.levels,
        )
        self.db_thumbs = [thumbnail(p, thumb_px) for p in self.ds.db_paths]
        self.query_thumbs = [
            thumbnail(p, thumb_px, b)
            for p, b in zip(self.ds.query_paths, self.ds.query_bbxs, strict=True)
        ]
        self.view = ExplorerView(self) if widgets else None

    # -- cached computations -------------------------------------------------------------
    @property
    def qe_k(self) -> int:
        return self.ctx.profile.qe_k

    def ranking(self, method: str, qe: bool) -> np.ndarray:
        """Full ranking (database, queries) of ``method``, with average QE if ``qe``; memoised."""
        key = (method, bool(qe))
        if key not in self._ranks:
            self._ranks[key] = P.rank(self.descriptors[method], self.qe_k if qe else 0)
        return self._ranks[key]

    def _gnd(self, protocol: str) -> list[dict[str, list[int]]]:
        return self._memo(("gnd", protocol), lambda: self.ds.gnd_for(protocol))

    def query_aps(self, method: str, qe: bool, protocol: str) -> np.ndarray:
        """AP (%) of every query under ``protocol`` (NaN: no positives); memoised."""
        key = (method, bool(qe), protocol)
        if key not in self._aps:
            _, aps, _, _ = compute_map(self.ranking(method, qe), self._gnd(protocol))
            self._aps[key] = 100.0 * aps
        return self._aps[key]

    def query_table(self, protocol: str | None = None, qe: bool = False) -> pd.DataFrame:
        """Per-query AP (%) of every method and each attention method's gain over R-MAC."""
        protocol = protocol or self._state.protocol
        df = pd.DataFrame({"query": self.ds.qimlist})
        for m in self.methods:
            df[f"AP {m}"] = self.query_aps(m, qe, protocol)
        for m in self.methods[1:]:
            df[f"gain {m}"] = df[f"AP {m}"] - df[f"AP {self.methods[0]}"]
        return df

    def fixes_and_breaks(self, method: str | None = None, n: int = 3) -> dict[str, list]:
        """Queries where ``method`` gains most / loses most AP against R-MAC (current settings)."""
        s = self._state
        method = method or (s.method if s.method != self.methods[0] else self.methods[-1])
        if method == self.methods[0] or not self.protocols:
            return {"method": method, "fixes": [], "breaks": []}
        gain = self.query_aps(method, s.qe, s.protocol) - self.query_aps(
            self.methods[0], s.qe, s.protocol
        )
        order = [int(i) for i in np.argsort(-np.nan_to_num(gain, nan=0.0), kind="stable")]
        rows = [(i, self.ds.qimlist[i], float(gain[i])) for i in order if np.isfinite(gain[i])]
        return {
            "method": method,
            "fixes": [r for r in rows[:n] if r[2] > 0],
            "breaks": [r for r in rows[::-1][:n] if r[2] < 0],
        }

    # -- selection (what the widgets call) --------------------------------------------------
    def select_query(self, index: int) -> dict[str, Any]:
        """Show query ``index`` of the dataset (leaves an uploaded image)."""
        if not 0 <= index < self.ds.n_queries:
            raise IndexError(f"query {index} out of range 0..{self.ds.n_queries - 1}")
        self._upload = None
        self._state.query, self._state.result = int(index), None
        self._say("")
        return self.state()

    def select_method(self, method: str) -> dict[str, Any]:
        """Rank with ``method`` (one of ``self.methods``)."""
        if method not in self.methods:
            raise ValueError(f"unknown method {method!r}; available: {self.methods}")
        self._state.method = method
        return self.state()

    def set_qe(self, on: bool) -> dict[str, Any]:
        """Average query expansion with the profile's top-``qe_k`` on or off."""
        self._state.qe = bool(on)
        return self.state()

    def set_k(self, k: int) -> dict[str, Any]:
        """Show the top ``k`` results (1..K_MAX)."""
        self._state.k = max(1, min(int(k), K_MAX, self.ds.n_db))
        return self.state()

    def set_protocol(self, protocol: str) -> dict[str, Any]:
        """Label results and compute AP under ``protocol`` (one of ``self.protocols``)."""
        if protocol not in self.protocols:
            raise ValueError(f"protocol {protocol!r} not supported here: {self.protocols}")
        self._state.protocol = protocol
        return self.state()

    def set_levels(self, levels: int) -> dict[str, Any]:
        """R-MAC levels L of the attention view (regions of levels 1..L, grid of level L)."""
        self._state.levels = max(1, int(levels))
        return self.state()

    def select_result(self, rank: int | None) -> dict[str, Any]:
        """Show the attention of the result at 0-based ``rank`` (``None``: the query only)."""
        self._state.result = None if rank is None else int(self._topk()[int(rank)])
        return self.state()

    def upload(self, data: bytes, name: str = "upload") -> dict[str, Any]:
        """Search the cached database with an uploaded image (described with the method).

        Anything that is not a usable image leaves the current view and sets ``message``
        (with ``error``) instead of raising.
        """
        path = Path(self._tmp.name) / f"upload-{secrets.token_hex(4)}.png"
        try:
            image = read_upload(data, name)
            image.save(path)  # lossless: the descriptor sees the decoded pixels unchanged
            upload = _Upload(name, path, image.size)
            self._describe_upload(upload, self._state.method)
        except (ImageError, OSError, ValueError, RuntimeError) as e:
            # Errors name the temporary copy; the user knows the file by its own name.
            reason = str(e).replace(str(path), repr(name))
            self._say(f"Cannot search with {name!r}: {reason}", error=True)
            return self.state()
        self._upload, self._state.result = upload, None
        self._say(f"Searching with the uploaded image {name!r} ({image.width}x{image.height} px).")
        return self.state()

    def _say(self, message: str, error: bool = False) -> None:
        self._state.message, self._state.error = message, error

    # -- the current view -----------------------------------------------------------------
    def _describe_upload(self, upload: _Upload, method: str) -> torch.Tensor:
        """The upload's descriptor with ``method``: backbone + head on this one image."""
        if method not in upload.vectors:
            with one_image_threads(self.ctx.device):
                out = extract_images(
                    [upload.path], self.ctx.backbone, {method: self.heads[method]},
                    self.ctx.profile.image_size, device=self.ctx.device, progress=False,
                )  # fmt: skip
            upload.vectors[method] = out[method][0][None].float()
        return upload.vectors[method]

    def _upload_ranking(self) -> np.ndarray:
        assert self._upload is not None
        s = self._state
        q = self._describe_upload(self._upload, s.method)
        d = self.descriptors[s.method]
        # images skipped at extraction (zero rows) are never shown nor used for QE, as P.rank
        keep = np.setdiff1d(np.arange(d.db.shape[0]), d.skipped_indices)
        db = d.db[torch.from_numpy(keep)] if len(keep) < d.db.shape[0] else d.db
        if s.qe:
            q = average_query_expansion(q, db, k=self.qe_k)
        return keep[cosine_ranks(q, db, topk=K_MAX)[:, 0]]

    def _topk(self) -> np.ndarray:
        s = self._state
        if self._upload is not None:
            return self._upload_ranking()[: s.k]
        return self.ranking(s.method, s.qe)[: s.k, s.query]

    def _label(self, index: int) -> str:
        """positive / hard / junk / negative of a result under the current protocol."""
        if self._upload is not None or not self.protocols:
            return "unlabelled"
        s = self._state
        key = ("labels", s.protocol, s.query)
        if key not in self._cache:
            g = self._gnd(s.protocol)[s.query]
            hard = set(self.ds.gnd[s.query].get("hard", []))
            self._cache[key] = (set(g["ok"]), set(g["junk"]), hard)
        ok, junk, hard = self._cache[key]
        if index in ok:
            return "hard" if index in hard else "positive"
        return "junk" if index in junk else "negative"

    def state(self) -> dict[str, Any]:
        """What the view shows: query, settings, top-k indices/names/labels and the APs."""
        s = self._state
        top = [int(i) for i in self._topk()]
        names = [Path(self.ds.db_paths[i]).stem for i in top]
        upload = self._upload
        ap_by = {}
        if upload is None and self.protocols:
            ap_by = {m: float(self.query_aps(m, s.qe, s.protocol)[s.query]) for m in self.methods}
        return {
            "dataset": self.ds.name,
            "profile": self.ctx.profile.name,
            "query": None if upload else s.query,
            "query_name": upload.name if upload else self.ds.qimlist[s.query],
            "upload": upload.name if upload else None,
            "method": s.method,
            "qe": s.qe,
            "k": s.k,
            "protocol": s.protocol,
            "levels": s.levels,
            "topk": top,
            "names": names,
            "labels": [self._label(i) for i in top],
            "ap": ap_by.get(s.method),
            "ap_by_method": ap_by,
            "result": s.result,
            "message": s.message,
            "error": s.error,
        }

    # -- attention view ---------------------------------------------------------------------
    def attention_method(self) -> str | None:
        """The method whose alpha the attention view paints: the selected one if it has
        attention, else the most complete attention available (``None``: R-MAC only)."""
        if self.attentions.get(self._state.method) is not None:
            return self._state.method
        with_att = [m for m in self.methods if self.attentions.get(m) is not None]
        return with_att[-1] if with_att else None

    def attention_view(self, target: str = "query") -> tuple[bytes, str]:
        """(JPEG, caption) of the alpha heat map with the level-L grid, memoised.

        ``target``: ``"query"`` (the query as the descriptor sees it, cropped to its box, or
        the uploaded image) or ``"result"`` (the selected result; the top one by default).
        """
        s = self._state
        method = self.attention_method()
        if target == "query":
            if self._upload is not None:
                key: tuple = ("upload", str(self._upload.path))
                path, bbx, title = self._upload.path, None, f"uploaded {self._upload.name}"
            else:
                key = ("query", s.query)
                path, bbx = self.ds.query_paths[s.query], self.ds.query_bbxs[s.query]
                title = f"query {self.ds.qimlist[s.query]}"
        else:
            idx = s.result if s.result is not None else int(self._topk()[0])
            key, path, bbx = ("db", idx), self.ds.db_paths[idx], None
            title = f"result {self.ds.imlist[idx] if idx < len(self.ds.imlist) else idx}"
        key = (*key, method, s.levels)
        if key not in self._cache:
            att = None if method is None else self.attentions[method]
            with one_image_threads(self.ctx.device):
                image, regions, alpha = P.attention_for_image(self.ctx, path, att, s.levels, bbx)
            grid = level_regions(image.shape[0], image.shape[1], s.levels)
            who = method or "R-MAC (no attention weights: every region weighs 1)"
            caption = (
                f"{title}: alpha of {who}, L={s.levels} ({len(regions)} regions, "
                f"alpha {alpha.min():.3g}..{alpha.max():.3g})"
            )
            self._cache[key] = (heat_overlay(image, regions, alpha, grid), caption)
        return self._cache[key]

    def query_image(self, size: int = 256) -> bytes:
        """The current query (full image with its box) or the uploaded image, as JPEG."""
        if self._upload is not None:
            return thumbnail(self._upload.path, size, square=False)
        q = self._state.query
        return self._memo(("qimage", q, size), lambda: thumbnail(
            self.ds.query_paths[q], size, self.ds.query_bbxs[q], square=False
        ))  # fmt: skip

    def _memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        if self.view is None:
            return {"text/plain": repr(self)}
        return self.view.root._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return (
            f"QueryExplorer({self.ds.name}, profile={self.ctx.profile.name}, "
            f"methods={self.methods}, protocols={self.protocols})"
        )


def open_explorer(ctx: P.Context, dataset: str | None = None, **kwargs: Any) -> Any:
    """A ``QueryExplorer``, or an HTML widget with the message when its cache is missing."""
    import ipywidgets as W

    try:
        return QueryExplorer(ctx, dataset, **kwargs)
    except MissingCacheError as e:
        return W.HTML(
            f"<div style='color:#b00020'><b>Query explorer:</b> {html.escape(str(e))}</div>"
        )


# ----------------------------------------------------------------------------- widgets
def _guarded(view: ExplorerView, fn: Callable[..., Any]) -> Callable[..., None]:
    """Run a widget callback; any failure is shown in the error area, never as a traceback."""

    def run(*args: Any) -> None:
        if view.syncing:
            return
        try:
            fn(*args)
            view.refresh()
        except Exception as e:  # noqa: BLE001 - the widget must keep working and say why
            view.show_error(f"{type(e).__name__}: {e}")

    return run


class ExplorerView:
    """The ipywidgets layer: every control calls one ``QueryExplorer`` method, then refreshes."""

    def __init__(self, ex: QueryExplorer) -> None:
        import ipywidgets as W

        self.ex, self.syncing = ex, False
        s, ds = ex.state(), ex.ds
        px = ex.thumb_px
        header = W.HTML(
            f"<b>{html.escape(ds.name)}</b> ({ds.n_db} database images, {ds.n_queries} queries) "
            f"&middot; profile <b>{ex.ctx.profile.name}</b> &middot; backbone "
            f"{ex.ctx.profile.backbone} &middot; cached descriptors of {len(ex.methods)} methods"
            f"<br><small>result borders: {_legend_html()}</small>"
        )
        self.query = W.Dropdown(
            options=[(f"{i}: {n}", i) for i, n in enumerate(ds.qimlist)], value=0,
            description="query", layout=W.Layout(width="260px"),
        )  # fmt: skip
        wide = {"button_width": "auto"}  # method names are longer than the default buttons
        self.method = W.ToggleButtons(
            options=ex.methods, value=s["method"], description="method", style=wide
        )
        self.qe = W.Checkbox(value=False, description=f"average QE (top {ex.qe_k})", indent=False)
        self.k = W.IntSlider(value=s["k"], min=1, max=min(K_MAX, ds.n_db), description="k")
        self.protocol = W.ToggleButtons(
            options=ex.protocols or ["classic"], value=s["protocol"], description="protocol"
        )
        self.levels = W.IntSlider(value=s["levels"], min=1, max=7, description="grid L")
        # The heat maps run the backbone on two images per new query (memoised after);
        # turning them off keeps browsing a large profile instant on a CPU.
        self.show_attention = W.Checkbox(value=True, description="attention view", indent=False)
        self.file = W.FileUpload(accept="image/*", multiple=False, description="your image")
        self.back = W.Button(description="back to queries", icon="undo")
        self.message = W.HTML()
        self.ap = W.HTML()
        self.ap_table = W.HTML()
        self.fixes = W.HTML()
        self.query_img = W.Image(format="jpeg", layout=W.Layout(width="256px"))
        heat = {"width": "300px", "height": "300px", "object_fit": "contain"}  # tall crops fit
        self.heat_query = W.Image(format="jpeg", layout=W.Layout(**heat))
        self.heat_result = W.Image(format="jpeg", layout=W.Layout(**heat))
        self.heat_caption = W.HTML()
        self.strip = W.HBox(
            [self._query_tile(i, px) for i in range(ds.n_queries)],
            layout=W.Layout(overflow="auto", width="100%", flex_flow="row nowrap"),
        )
        self.tiles = [self._result_tile(r, px) for r in range(min(K_MAX, ds.n_db))]
        self.grid = W.HBox(
            [t["box"] for t in self.tiles],
            # flex-start: wrapped rows stay packed instead of stretching to the left column.
            layout=W.Layout(flex_flow="row wrap", width="100%", align_content="flex-start"),
        )
        for w, cls in ((self.query, "regattn-query"), (self.ap, "regattn-ap"),
                       (self.message, "regattn-message"), (self.grid, "regattn-results"),
                       (self.heat_caption, "regattn-heat-caption")):  # fmt: skip
            w.add_class(cls)
        self._wire()
        controls = W.VBox([
            W.HBox([self.query, self.qe, self.k]),
            self.method, self.protocol, self.strip,
            W.HBox([self.file, self.back, self.message]),
        ])  # fmt: skip
        left = W.VBox([self.query_img, self.ap, self.ap_table, self.fixes],
                      layout=W.Layout(width="300px", min_width="300px"))  # fmt: skip
        attention = W.VBox([
            W.HTML("<b>Attention</b>: region weights alpha painted back (mean over the regions "
                   "covering each pixel), the level-L R-MAC grid in white; click "
                   "<i>attention</i> under a result to see it on the right."),
            W.HBox([self.show_attention, self.levels]), self.heat_caption,
            W.HBox([self.heat_query, self.heat_result]),
        ])  # fmt: skip
        self.root = W.VBox([header, controls, W.HBox([left, self.grid]), attention])
        self.root.add_class("regattn-explorer")
        self.refresh()

    def _query_tile(self, i: int, px: int) -> Any:
        import ipywidgets as W

        img = W.Image(value=self.ex.query_thumbs[i], format="jpeg",
                      layout=W.Layout(width=f"{px}px", height="auto"))  # fmt: skip
        btn = W.Button(description=self.ex.ds.qimlist[i], tooltip="show this query",
                       layout=W.Layout(width=f"{px}px"))  # fmt: skip
        btn.on_click(_guarded(self, lambda _b, i=i: self.ex.select_query(i)))
        return W.VBox([img, btn], layout=W.Layout(min_width=f"{px + 4}px"))

    def _result_tile(self, rank: int, px: int) -> dict[str, Any]:
        import ipywidgets as W

        img = W.Image(format="jpeg", layout=W.Layout(width=f"{px}px", border="5px solid white"))
        label = W.HTML(layout=W.Layout(width=f"{px + 10}px"))
        btn = W.Button(description="attention", tooltip="show this result's attention",
                       layout=W.Layout(width=f"{px + 10}px"))  # fmt: skip
        btn.on_click(_guarded(self, lambda _b, r=rank: self.ex.select_result(r)))
        img.add_class("regattn-result")
        return {"box": W.VBox([img, label, btn]), "img": img, "label": label}

    def _wire(self) -> None:
        ex = self.ex

        def on(widget: Any, fn: Callable[[Any], Any]) -> None:
            widget.observe(_guarded(self, lambda c: fn(c["new"])), names="value")

        on(self.query, ex.select_query)
        on(self.method, ex.select_method)
        on(self.qe, ex.set_qe)
        on(self.k, ex.set_k)
        on(self.protocol, ex.set_protocol)
        on(self.levels, ex.set_levels)
        on(self.show_attention, lambda _v: None)
        on(self.file, self._on_upload)
        self.back.on_click(_guarded(self, lambda _b: ex.select_query(self.query.value)))

    def _on_upload(self, files: Sequence[dict[str, Any]]) -> None:
        if not files:
            return  # the reset below
        f = files[0]
        self.ex.upload(bytes(f["content"]), f.get("name", "upload"))
        self.syncing = True
        try:
            self.file.value = ()  # lets the same file be uploaded again
        finally:
            self.syncing = False

    def show_error(self, text: str) -> None:
        self.message.value = f"<span style='color:#b00020'>{html.escape(text)}</span>"

    def refresh(self) -> None:
        """Bring every widget in line with ``ex.state()``."""
        ex, s = self.ex, self.ex.state()
        self.syncing = True
        try:
            if s["query"] is not None:
                self.query.value = s["query"]
            self.method.value, self.qe.value, self.k.value = s["method"], s["qe"], s["k"]
            self.protocol.value, self.levels.value = s["protocol"], s["levels"]
        finally:
            self.syncing = False
        colour = "#b00020" if s["error"] else "#333"
        self.message.value = f"<span style='color:{colour}'>{html.escape(s['message'])}</span>"
        self.query_img.value = ex.query_image()
        self.ap.value = _ap_html(s)
        self.ap_table.value = _ap_table_html(s, ex.methods)
        self.fixes.value = _fixes_html(ex.fixes_and_breaks()) if s["upload"] is None else ""
        self._fill_results(s)
        self._fill_attention()

    def _fill_attention(self) -> None:
        # Last, so that the results are on screen before the backbone runs for the heat maps.
        if not self.show_attention.value:
            self.heat_query.value = self.heat_result.value = b""
            self.heat_caption.value = "attention view off"
            return
        self.heat_query.value, cap_q = self.ex.attention_view("query")
        self.heat_result.value, cap_r = self.ex.attention_view("result")
        self.heat_caption.value = f"{html.escape(cap_q)}<br>{html.escape(cap_r)}"

    def _fill_results(self, s: dict[str, Any]) -> None:
        for r, tile in enumerate(self.tiles):
            shown = r < len(s["topk"])
            tile["box"].layout.display = None if shown else "none"
            if not shown:
                tile["label"].value = ""  # hidden tiles must not keep stale names in the page
                continue
            idx, label = s["topk"][r], s["labels"][r]
            colour = LABEL_COLOURS.get(label, UNLABELLED_COLOUR)
            tile["img"].value = self.ex.db_thumbs[idx]
            tile["img"].layout.border = f"5px solid {colour}"
            tile["label"].value = (
                f"<span style='font-size:11px'>#{r + 1} <span class='regattn-name'>"
                f"{html.escape(s['names'][r])}</span><br>"
                f"<span style='color:{colour}'>{label}</span></span>"
            )


def _legend_html() -> str:
    names = {"positive": "positive", "hard": "hard positive", "junk": "junk",
             "negative": "negative", "unlabelled": "uploaded image (no labels)"}  # fmt: skip
    colours = {**LABEL_COLOURS, "unlabelled": UNLABELLED_COLOUR}
    return " ".join(
        f"<span style='border:3px solid {colours[k]};padding:0 3px'>{v}</span>"
        for k, v in names.items()
    )


def _fmt_ap(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.1f} %"


def _ap_html(s: dict[str, Any]) -> str:
    if s["upload"] is not None:
        return f"<b>{html.escape(s['upload'])}</b>: no ground truth, no AP"
    qe = " + QE" if s["qe"] else ""
    return (
        f"<b>AP ({s['protocol']})</b> of <b>{html.escape(s['query_name'])}</b> with "
        f"{html.escape(s['method'])}{qe}: <b>{_fmt_ap(s['ap'])}</b>"
    )


def _ap_table_html(s: dict[str, Any], methods: Sequence[str]) -> str:
    if not s["ap_by_method"]:
        return ""
    base = s["ap_by_method"][methods[0]]
    rows = []
    for m in methods:
        v = s["ap_by_method"][m]
        diff = "" if m == methods[0] or not math.isfinite(v) else f"{v - base:+.1f}"
        style = "font-weight:bold" if m == s["method"] else ""
        rows.append(
            f"<tr style='{style}'><td>{html.escape(m)}</td><td>{_fmt_ap(v)}</td><td>{diff}</td></tr>"
        )
    return (
        "<table class='regattn-ap-table'><tr><th>method</th><th>AP</th><th>vs R-MAC</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _fixes_html(fb: dict[str, list]) -> str:
    def items(rows: list) -> str:
        return ", ".join(f"{i}: {html.escape(n)} ({g:+.1f})" for i, n, g in rows) or "none"

    return (
        f"<small>{html.escape(fb['method'])} vs R-MAC<br>fixes most: {items(fb['fixes'])}"
        f"<br>breaks most: {items(fb['breaks'])}</small>"
    )


# ----------------------------------------------------------------------------- browser
CHROMIUM = Path(os.environ.get("REGATTN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parameterised_notebook(dest: Path, params: dict[str, Any]) -> Path:
    """A copy of notebook 07 with ``params`` injected after its parameters cell (papermill)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    # papermill's loader gives every cell its metadata.tags, which parameterize expects
    nb = load_notebook_node(str(NOTEBOOK))
    nb = parameterize_notebook(nb, params) if params else nb
    out = dest / NOTEBOOK.name
    nbformat.write(nb, out)
    return out


@contextmanager
def jupyter_lab(root: Path, log: Path, timeout: float = 60.0):
    """JupyterLab on 127.0.0.1 (random port and token) serving ``root``; yields its base URL
    and token. Its output goes to ``log``; it is stopped (with its kernels) on exit."""
    port, token = free_port(), secrets.token_hex(16)
    conf = root.parent / "jupyter-config"
    env = dict(os.environ, JUPYTER_TOKEN=token, JUPYTER_CONFIG_DIR=str(conf),
               JUPYTER_RUNTIME_DIR=str(conf / "runtime"), JUPYTER_DATA_DIR=str(conf / "data"),
               MPLBACKEND="Agg")  # fmt: skip
    cmd = [
        sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False", f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root
    _quiet_lab_settings(conf)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=root, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(proc, f"{base}/api/status?token={token}", timeout, log)
        yield base, token
    finally:
        _stop(proc)


def _quiet_lab_settings(conf: Path) -> None:
    """User settings of the throwaway config: no news or update toasts over the page."""
    d = conf / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    d.mkdir(parents=True, exist_ok=True)
    (d / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )


def _wait_for_server(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}; log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s; log: {log}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started and its kernels (its own process group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of that group is left (kernels)
    except ProcessLookupError:
        pass
    proc.wait(5)


def _result_names(page: Any) -> list[str]:
    return [
        t.strip() for t in page.locator(".regattn-results .regattn-name").all_inner_texts()
        if t.strip()
    ]  # fmt: skip


def _run_all_cells(page: Any) -> None:
    """JupyterLab's menu Run > Run All Cells."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _drive(page: Any, url: str, query: int, out: Path) -> dict[str, Any]:
    """Run notebook 07 at ``url``, switch query through the dropdown, screenshot the explorer."""
    page.goto(url)
    page.locator(".jp-Notebook").first.wait_for()
    # Run All before the kernel is connected can be lost: wait for the status bar's "Idle".
    page.locator(".jp-StatusBar-Widget").get_by_text("| Idle").first.wait_for()
    _run_all_cells(page)
    ap = page.locator(".regattn-ap").first
    ap.wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('.regattn-results .regattn-name').length > 0"
    )
    caption = page.locator(".regattn-heat-caption").first
    before = {"ap": ap.inner_text(), "names": _result_names(page), "caption": caption.inner_text()}
    page.locator(".regattn-query select").select_option(index=query)
    page.wait_for_function(
        "t => document.querySelector('.regattn-ap').innerText !== t", arg=before["ap"]
    )
    # The AP text is set before the result tiles: wait until the tiles changed too.
    page.wait_for_function(
        "n => [...document.querySelectorAll('.regattn-results .regattn-name')]"
        ".map(e => e.innerText.trim()).filter(Boolean).join('|') !== n",
        arg="|".join(before["names"]),
    )
    # The heat maps come last (the backbone runs for them): the screenshot waits for them.
    page.wait_for_function(
        "t => document.querySelector('.regattn-heat-caption').innerText !== t",
        arg=before["caption"],
    )
    after = {"ap": ap.inner_text(), "names": _result_names(page), "caption": caption.inner_text()}
    page.locator(".regattn-explorer").first.screenshot(path=str(out))
    return {"before": before, "after": after}


def screenshot(
    out: str | os.PathLike,
    profile: str = "smoke",
    dataset: str | None = None,
    query: int = 1,
    timeout: float = 120.0,
    workdir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Open notebook 07 in JupyterLab with headless Chromium, run all cells, switch to query
    ``query`` through the page's dropdown and save a screenshot of the explorer to ``out``.

    Returns what the page showed before and after the switch (``ap``: the AP line,
    ``names``: the result names). JupyterLab's output goes to a log in a temporary folder,
    removed on success and named in the error otherwise. Needs Debian's ``chromium``
    (scripts/install_browser.sh) and Playwright for Python (never ``playwright install``).
    """
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="regattn-browser-", dir=workdir))
    (work / "root").mkdir()
    params: dict[str, Any] = {"profile": profile} if profile != "smoke" else {}
    if dataset:
        params["dataset"] = dataset
    nb = _parameterised_notebook(work / "root", params)
    log = work / "jupyter.log"
    try:
        with jupyter_lab(work / "root", log) as (base, token), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1800})
                page.set_default_timeout(timeout * 1000)
                result = _drive(page, f"{base}/lab/tree/{nb.name}?token={token}", query, out)
            finally:
                browser.close()
    except Exception as e:
        raise RuntimeError(f"browser run failed: {e}\nJupyterLab log: {log}") from e
    shutil.rmtree(work, ignore_errors=True)
    return {**result, "screenshot": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m regattn_lib.explorer --screenshot PATH [--profile demo] [--dataset D]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshot", required=True, help="PNG to write")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--query", type=int, default=1, help="query switched to through the page")
    args = ap.parse_args(argv)
    res = screenshot(args.screenshot, args.profile, args.dataset, args.query)
    print(f"before: {res['before']['ap']}\nafter:  {res['after']['ap']}\nwrote {res['screenshot']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
