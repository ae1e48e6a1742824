"""The query explorer's ipywidgets layer: every control calls one ``QueryExplorer`` method.

``open_explorer`` is what notebook 07 calls: the explorer with its view, or the message naming
the command that builds the missing cache. ``ipywidgets`` is imported where widgets are built.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

from regattn_lib.apps.explorer.model import K_MAX, QueryExplorer
from regattn_lib.apps.explorer.source import MissingCacheError
from regattn_lib.experiments import pipeline
from regattn_lib.experiments.figures import LABEL_COLOURS

#: Border colour of results of an uploaded image (no ground truth to label them).
UNLABELLED_COLOUR = "#1f77b4"


def open_explorer(
    ctx: pipeline.Context, dataset: str | None = None, folder: str | None = None, **kwargs: Any
) -> Any:
    """A ``QueryExplorer`` over the profile's ``dataset`` (its cached descriptors) or over a
    ``folder`` of one's own photos (indexed on the way, ``explorer.folder``), or an HTML
    widget with the message when a cache is missing."""
    import ipywidgets as W

    try:
        if folder is not None:
            from regattn_lib.apps.explorer.folder import folder_source

            kwargs["source"] = folder_source(ctx, folder)
        return QueryExplorer(ctx, dataset, view=ExplorerView, **kwargs)
    except MissingCacheError as e:
        return W.HTML(
            f"<div style='color:#b00020'><b>Query explorer:</b> {html.escape(str(e))}</div>"
        )


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
            options=[(f"{i}: {n}", i) for i, n in enumerate(ds.qimlist)],
            value=0,
            description="query",
            layout=W.Layout(width="260px"),
        )
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
        for w, cls in (
            (self.query, "regattn-query"),
            (self.ap, "regattn-ap"),
            (self.message, "regattn-message"),
            (self.grid, "regattn-results"),
            (self.heat_caption, "regattn-heat-caption"),
        ):
            w.add_class(cls)
        self._wire()
        controls = W.VBox(
            [
                W.HBox([self.query, self.qe, self.k]),
                self.method,
                self.protocol,
                self.strip,
                W.HBox([self.file, self.back, self.message]),
            ]
        )
        left = W.VBox(
            [self.query_img, self.ap, self.ap_table, self.fixes],
            layout=W.Layout(width="300px", min_width="300px"),
        )
        attention = W.VBox(
            [
                W.HTML(
                    "<b>Attention</b>: region weights alpha painted back (mean over the regions "
                    "covering each pixel), the level-L R-MAC grid in white; click "
                    "<i>attention</i> under a result to see it on the right."
                ),
                W.HBox([self.show_attention, self.levels]),
                self.heat_caption,
                W.HBox([self.heat_query, self.heat_result]),
            ]
        )
        self.root = W.VBox([header, controls, W.HBox([left, self.grid]), attention])
        self.root.add_class("regattn-explorer")
        self.refresh()

    def _query_tile(self, i: int, px: int) -> Any:
        import ipywidgets as W

        img = W.Image(
            value=self.ex.query_thumbs[i],
            format="jpeg",
            layout=W.Layout(width=f"{px}px", height="auto"),
        )
        btn = W.Button(
            description=self.ex.ds.qimlist[i],
            tooltip="show this query",
            layout=W.Layout(width=f"{px}px"),
        )
        btn.on_click(_guarded(self, lambda _b, i=i: self.ex.select_query(i)))
        return W.VBox([img, btn], layout=W.Layout(min_width=f"{px + 4}px"))

    def _result_tile(self, rank: int, px: int) -> dict[str, Any]:
        import ipywidgets as W

        img = W.Image(format="jpeg", layout=W.Layout(width=f"{px}px", border="5px solid white"))
        label = W.HTML(layout=W.Layout(width=f"{px + 10}px"))
        btn = W.Button(
            description="attention",
            tooltip="show this result's attention",
            layout=W.Layout(width=f"{px + 10}px"),
        )
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
    names = {
        "positive": "positive",
        "hard": "hard positive",
        "junk": "junk",
        "negative": "negative",
        "unlabelled": "uploaded image (no labels)",
    }
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
