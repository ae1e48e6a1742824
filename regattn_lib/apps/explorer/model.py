"""The query explorer's logic: selection, rankings, per-query APs, uploads and attention views.

``QueryExplorer`` browses an ``ExplorerSource`` (by default the cached descriptors of the
ablation rows, ``source.cached_source``). Rankings, per-query APs, thumbnails and attention
maps are computed once and kept in memory, so switching query or method only looks things up.
Every control of the view calls one plain method (``select_query``, ``select_method``,
``set_qe``, ``set_k``, ``set_protocol``, ``set_levels``, ``select_result``, ``upload``) that
returns ``state()``, what the view shows; tests drive them without a browser.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from regattn_lib.apps.explorer.imaging import (
    heat_overlay,
    level_regions,
    one_image_threads,
    read_upload,
    thumbnail,
)
from regattn_lib.apps.explorer.source import ExplorerSource, cached_source
from regattn_lib.core.evaluate import compute_map, per_query_table
from regattn_lib.core.qe import average_query_expansion
from regattn_lib.core.search import cosine_ranks
from regattn_lib.datasets.images import ImageError
from regattn_lib.experiments import pipeline
from regattn_lib.extraction.extract import extract_images

#: Largest k offered by the slider (the result grid keeps this many tiles ready).
K_MAX = 30


@dataclass
class _Upload:
    name: str
    path: Path
    size: tuple[int, int]
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (1, D)


@dataclass
class _State:
    query: int = 0
    method: str = pipeline.RMAC
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
        A test set of the profile (default: its first ablation set); ignored with ``source``.
    k:
        Results shown at first, default 8 (the slider goes to ``K_MAX``).
    thumb_px:
        Long side of the thumbnails (queries and database), precomputed once; default 112.
    view:
        A function that builds the widgets from the explorer (``view.ExplorerView``, what
        ``view.open_explorer`` passes), default ``None``: no widgets (tests, scripts).
    source:
        What to search, default ``None``: ``cached_source(ctx, dataset)``, the profile's
        cached ablation descriptors. The methods are its heads, in their order; the first
        is the baseline that gains are measured against.

    Raises ``MissingCacheError`` (naming the command to run) when the whitening or the
    descriptor cache is missing.
    """

    def __init__(
        self,
        ctx: pipeline.Context,
        dataset: str | None = None,
        k: int = 8,
        thumb_px: int = 112,
        view: Callable[[QueryExplorer], Any] | None = None,
        source: ExplorerSource | None = None,
    ) -> None:
        self.ctx = ctx
        self.source = source if source is not None else cached_source(ctx, dataset)
        self.ds = self.source.ds
        self.attentions = self.source.attentions
        self.heads = self.source.heads
        self.descriptors = self.source.descriptors
        self.methods = list(self.heads)
        self.protocols = list(self.ds.protocols)
        self.thumb_px = thumb_px
        self._ranks: dict[tuple[str, bool], np.ndarray] = {}
        self._aps: dict[tuple[str, bool, str], np.ndarray] = {}
        self._cache: dict[tuple, Any] = {}  # labels, query views, attention maps
        self._upload: _Upload | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="regattn-upload-")
        self._state = _State(
            method=self.proposed_method,
            k=max(1, min(k, K_MAX, self.ds.n_db)),
            protocol=self.protocols[0] if self.protocols else "classic",
            levels=ctx.profile.levels,
        )
        self.db_thumbs = [thumbnail(p, thumb_px) for p in self.ds.db_paths]
        self.query_thumbs = [
            thumbnail(p, thumb_px, b)
            for p, b in zip(self.ds.query_paths, self.ds.query_bbxs, strict=True)
        ]
        self.view = None if view is None else view(self)

    # -- cached computations -------------------------------------------------------------
    @property
    def qe_k(self) -> int:
        return self.ctx.profile.qe_k

    def ranking(self, method: str, qe: bool) -> np.ndarray:
        """Full ranking (database, queries) of ``method``, with average QE if ``qe``; memoised."""
        key = (method, bool(qe))
        if key not in self._ranks:
            self._ranks[key] = pipeline.rank(self.descriptors[method], self.qe_k if qe else 0)
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
        aps = {m: self.query_aps(m, qe, protocol) for m in self.methods}
        return per_query_table(self.ds.qimlist, aps, baseline=self.methods[0])

    @property
    def proposed_method(self) -> str:
        """The method shown first: the paper's most complete model (context awareness, trained
        the paper's way), else the last one there; metric-learned rows come after it."""
        paper = [m for m in self.methods if m in pipeline.PAPER_KINDS]
        return paper[-1] if paper else self.methods[-1]

    def fixes_and_breaks(self, method: str | None = None, n: int = 3) -> dict[str, list]:
        """Queries where ``method`` gains most / loses most AP against R-MAC (current settings)."""
        s = self._state
        method = method or (s.method if s.method != self.methods[0] else self.proposed_method)
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
                    [upload.path],
                    self.ctx.backbone,
                    {method: self.heads[method]},
                    self.ctx.profile.image_size,
                    device=self.ctx.device,
                    progress=False,
                )
            upload.vectors[method] = out[method][0][None].float()
        return upload.vectors[method]

    def _upload_ranking(self) -> np.ndarray:
        assert self._upload is not None
        s = self._state
        q = self._describe_upload(self._upload, s.method)
        d = self.descriptors[s.method]
        # images skipped at extraction (zero rows) are never shown nor used for QE, as pipeline.rank
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
                image, regions, alpha = pipeline.attention_for_image(
                    self.ctx, path, att, s.levels, bbx, upright=self.source.upright
                )
            grid = level_regions(image.shape[0], image.shape[1], s.levels)
            who = method or "R-MAC (no attention weights: every region weighs 1)"
            caption = (
                f"{title}: alpha of {who}, L={s.levels} ({len(regions)} regions, "
                f"alpha {alpha.min():.3g}..{alpha.max():.3g})"
            )
            if key[0] != "upload":
                caption += self._object_share(path, bbx, regions, alpha)
            self._cache[key] = (heat_overlay(image, regions, alpha, grid), caption)
        return self._cache[key]

    def _object_share(self, path: Any, bbx: Any, regions: np.ndarray, alpha: np.ndarray) -> str:
        """``; landmark share 0.41 (uniform 0.33)`` where the set keeps landmark masks (the
        synthetic ones), else nothing: how much of the weight falls on the object."""
        from regattn_lib.datasets.synthetic import load_landmark_mask
        from regattn_lib.experiments.object_attention import image_shares, prepare_mask

        try:
            mask = load_landmark_mask(self.ds.root, Path(path).stem)
        except (FileNotFoundError, AttributeError):
            return ""
        shares = image_shares(
            regions, {"a": alpha}, prepare_mask(mask, self.ctx.profile.image_size, bbx)
        )
        if shares is None:
            return "; no landmark in this image"
        return f"; landmark share {shares['a']:.2f} (uniform {shares['uniform']:.2f})"

    def query_image(self, size: int = 256) -> bytes:
        """The current query (full image with its box) or the uploaded image, as JPEG."""
        if self._upload is not None:
            return thumbnail(self._upload.path, size, square=False)
        q = self._state.query
        return self._memo(
            ("qimage", q, size),
            lambda: thumbnail(self.ds.query_paths[q], size, self.ds.query_bbxs[q], square=False),
        )

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
