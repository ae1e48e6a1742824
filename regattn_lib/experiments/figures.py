"""Figures of the notebooks, as pyplot-free matplotlib ``Figure`` objects (headless-safe)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from regattn_lib.datasets.images import crop_box, load_rgb
from regattn_lib.experiments import pipeline
from regattn_lib.training.curves import plot_curves

#: Border colours of ranked results by label.
LABEL_COLOURS = {"positive": "#2ca02c", "hard": "#ff7f0e", "junk": "#7f7f7f", "negative": "#d62728"}


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def plot_queries(paths: Sequence, bbxs: Sequence, names: Sequence[str], n: int = 6) -> Figure:
    """The first ``n`` query images with their boxes."""
    n = min(n, len(paths))
    fig = _figure(3 * n, 3.2)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, p, b, name in zip(axes, paths[:n], bbxs[:n], names[:n], strict=True):
        ax.imshow(load_rgb(p, allow_truncated=True))
        if b is not None:
            ax.add_patch(
                Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec="yellow", lw=2)
            )
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_scale_study(df: pd.DataFrame, metric: str = "mAP", dataset: str | None = None) -> Figure:
    """mAP against the number of R-MAC levels L, one line per method."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    for method, g in df.groupby("method", sort=False):
        ax.plot(g["levels"], g[metric], "o-", label=method)
    ax.set_xlabel("R-MAC levels L (finer grid to the right)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"Scale study{'' if dataset is None else ' - ' + dataset}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_ap_scatter(
    ap_base: np.ndarray, ap_ours: np.ndarray, base: str = "R-MAC", ours: str = "ours"
) -> Figure:
    """Per-query AP of ours against the baseline; points above the diagonal are wins."""
    fig = _figure(4.8, 4.8)
    ax = fig.subplots()
    wins = int(np.sum(ap_ours > ap_base))
    ax.scatter(ap_base, ap_ours, s=18, alpha=0.8)
    ax.plot([0, 100], [0, 100], "k--", lw=1)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"AP {base} (%)")
    ax.set_ylabel(f"AP {ours} (%)")
    ax.set_title(f"{ours} better on {wins} of {len(ap_base)} queries")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def result_label(index: int, gnd: Mapping) -> str:
    """positive / hard / junk / negative for database image ``index`` of one query's gnd."""
    if index in set(gnd.get("junk", [])):
        return "junk"
    if "easy" in gnd and index in set(gnd.get("hard", [])):
        return "hard"
    if index in set(gnd.get("ok", [])) or index in set(gnd.get("easy", [])):
        return "positive"
    return "negative"


def plot_ranked_list(
    query_path,
    bbx,
    db_paths: Sequence,
    ranking: Sequence[int],
    gnd: Mapping,
    k: int = 8,
    title: str = "",
) -> Figure:
    """The query (cropped to its box) and its top-``k`` results, borders coloured by label."""
    fig = _figure(2.2 * (k + 1), 2.6)
    axes = fig.subplots(1, k + 1)
    q = load_rgb(query_path, allow_truncated=True)
    axes[0].imshow(crop_box(q, bbx) if bbx is not None else q)
    axes[0].set_title("query", fontsize=9)
    for ax, idx in zip(axes[1:], ranking[:k], strict=False):
        ax.imshow(load_rgb(db_paths[idx], allow_truncated=True))
        label = result_label(int(idx), gnd)
        for s in ax.spines.values():
            s.set_edgecolor(LABEL_COLOURS[label])
            s.set_linewidth(5)
        ax.set_title(label, fontsize=9, color=LABEL_COLOURS[label])
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def attention_heatmap(
    height: int, width: int, regions: np.ndarray, alpha: np.ndarray
) -> np.ndarray:
    """Mean alpha of the regions covering each pixel (H, W); 0 where no region lies."""
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for (x, y, w, h), a in zip(np.asarray(regions), np.asarray(alpha), strict=True):
        total[y : y + h, x : x + w] += a
        count[y : y + h, x : x + w] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def plot_attention(
    image: np.ndarray,
    regions: np.ndarray,
    alpha: np.ndarray,
    title: str = "",
    ax=None,
    log2_range: float | None = None,
) -> Figure:
    """Region weights alpha painted back onto the image as a heat map: the map's own range, or
    with ``log2_range`` = r, log2 of the per-pixel mean alpha on a fixed diverging scale from
    -r to r (pass alpha relative to its mean, ``relative_alpha``: 0 is R-MAC's weight, so
    several maps share one scale whatever their peaks)."""
    fig = None
    if ax is None:
        fig = _figure(5, 4)
        ax = fig.subplots()
    heat = attention_heatmap(image.shape[0], image.shape[1], regions, alpha)
    ax.imshow(image)
    if log2_range is None:
        im = ax.imshow(heat, cmap="jet", alpha=0.45)
    else:
        r = float(log2_range)
        logged = np.log2(np.clip(heat, 2.0**-r, 2.0**r))
        im = ax.imshow(logged, cmap="coolwarm", alpha=0.55, vmin=-r, vmax=r)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    if fig is not None:
        fig.colorbar(im, ax=ax, fraction=0.046, label="mean alpha")
        fig.tight_layout()
    return fig if fig is not None else ax.figure


def show_png(path):
    """An IPython image of a PNG written by the library (for notebooks)."""
    from IPython.display import Image

    return Image(filename=str(path))


def plot_object_attention(table: pd.DataFrame) -> Figure:
    """The attention's share of the landmark against R-MAC's uniform share, per method and image
    set, with the 95% interval of the difference (``studies.object_attention``)."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    labels = [f"{r['method']}\n({r['images']})" for _, r in table.iterrows()]
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["uniform share"], 0.4, label="uniform weights (R-MAC)", color="#bbbbbb")
    err = np.vstack(
        [
            table["difference"] - table["difference low"],
            table["difference high"] - table["difference"],
        ]
    )
    ax.bar(x + 0.2, table["attention share"], 0.4, label="attention", color="#1f77b4")
    ax.errorbar(
        x + 0.2,
        table["uniform share"] + table["difference"],
        yerr=err,
        fmt="none",
        ecolor="black",
        capsize=4,
        label="95% interval of the difference",
    )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("share of region weight on the landmark")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_classification_room(table: pd.DataFrame) -> Figure:
    """Validation accuracy of each row of ``proxy.classification_room`` (fc alone, the mask
    oracle, each learned attention), with the 95% interval of its gain over the fc alone; the
    fc alone's accuracy is the dashed line. The oracle is hatched: a bound, not a method."""
    fig = _figure(7.5, 0.45 * len(table) + 2.0)
    ax = fig.subplots()
    base = float(table["val_acc"].iloc[0])
    y = np.arange(len(table))[::-1]
    oracle = table["row"].str.startswith("oracle")
    colours = ["#bbbbbb"] + ["#1f77b4"] * (len(table) - 1)
    bars = ax.barh(y, table["val_acc"], color=colours, height=0.6)
    for bar, is_oracle in zip(bars, oracle, strict=True):
        if is_oracle:
            bar.set_facecolor("#ff7f0e")
            bar.set_edgecolor("#7f3f00")
            bar.set_hatch("//")
    err = np.vstack(
        [table["acc gain"] - table["acc gain low"], table["acc gain high"] - table["acc gain"]]
    )
    ax.errorbar(
        base + table["acc gain"],
        y,
        xerr=err,
        fmt="none",
        ecolor="black",
        capsize=3,
        label="95% interval of the gain over the fc alone",
    )
    ax.axvline(base, ls="--", color="#555555", lw=1, label=str(table["row"].iloc[0]))
    ax.set_yticks(y, table["row"], fontsize=8)
    ax.set_xlabel("classification validation accuracy")
    ax.set_title("Does the proxy's task need attention? (validation split)", fontsize=10)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 1.2 / fig.get_figheight() / 4),
        ncol=2,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def save_training_curves(run, figures_dir, stage: str) -> object:
    """Plot a training run's curves (its history CSV) to ``<figures_dir>/training_<stage>.png``
    (spaces in the stage name become underscores: ``training_regional_seed_1.png``)."""
    png = Path(figures_dir) / f"training_{stage.replace(' ', '_')}.png"
    return plot_curves(run.out_dir / "history.csv", png)


#: The rows of the attention-map figure, when their weights exist: R-MAC (alpha = 1), the
#: paper's recipe and metric learning (context-aware, else regional).
MAP_ROWS = (
    (pipeline.RMAC,),
    (pipeline.CONTEXT, pipeline.REGIONAL),
    (pipeline.METRIC_CONTEXT, pipeline.METRIC_REGIONAL),
)


def attention_rows(
    atts: Mapping[str, object | None],
) -> dict[str, object | None]:
    """Label -> attention of the figure's rows (``MAP_ROWS``): per row the first label present
    in ``atts``; rows with none are left out."""
    out = {}
    for options in MAP_ROWS:
        label = next((o for o in options if o in atts), None)
        if label is not None:
            out[label] = atts[label]
    return out


#: The attention-map figure's colour scale: log2 of alpha over its mean, from -3 to +3 (an
#: eighth of R-MAC's weight to eight times it; beyond is clipped).
MAP_LOG2_RANGE = 3.0


def relative_alpha(alpha: np.ndarray) -> np.ndarray:
    """alpha over its mean over the image's regions: the descriptor is invariant to alpha's
    scale (it is L2-normalised), so 1 is R-MAC's weight and maps of models compare."""
    alpha = np.asarray(alpha, dtype=float)
    mean = alpha.mean()
    return alpha / mean if mean > 0 else np.ones_like(alpha)


def attention_figure(ctx: pipeline.Context, ds, queries: Sequence[int], n_db: int = 2):
    """Attention maps on the same images, one row per model (``attention_rows``: R-MAC, the
    paper's recipe, metric learning; the first seed), one column per image (the ``queries``,
    cropped to their boxes, and ``n_db`` positives of each). alpha is shown relative to its
    mean over the image (``relative_alpha``) on one log2 colour scale for the whole figure
    (``MAP_LOG2_RANGE``), so R-MAC's row is neutral and a model's favoured regions are red."""
    rows = attention_rows(pipeline.available_attention(ctx))
    items = [(ds.query_paths[q], ds.query_bbxs[q], f"query {ds.qimlist[q]}") for q in queries]
    for q in queries:
        pos = ds.gnd[q].get("ok") or ds.gnd[q].get("easy") or []
        items += [
            (ds.db_paths[i], None, f"db {ds.imlist[i]} (positive of {ds.qimlist[q]})")
            for i in pos[:n_db]
        ]
    maps = []
    for path, bbx, _ in items:
        image, regions, alphas = pipeline.attentions_for_image(ctx, path, rows, bbx=bbx)
        maps.append((image, regions, {k: relative_alpha(a) for k, a in alphas.items()}))
    fig = _figure(3.2 * len(items), 3.0 * len(rows) + 0.4)
    axes = np.array(fig.subplots(len(rows), len(items), squeeze=False))
    for c, ((image, regions, alphas), (_, _, title)) in enumerate(zip(maps, items, strict=True)):
        for r, label in enumerate(rows):
            plot_attention(image, regions, alphas[label], ax=axes[r, c], log2_range=MAP_LOG2_RANGE)
            axes[r, c].set_title(title if r == 0 else "", fontsize=8)
    for r, label in enumerate(rows):
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    im = axes[0, 0].images[-1]
    bar = fig.colorbar(im, ax=list(axes.ravel()), fraction=0.02)
    bar.set_label("log2(alpha / its mean): 0 is R-MAC's weight, +1 twice it")
    return fig


#: Per-query figure file tag of each ranked-list row (``ranked_<best|worst>_<tag>``).
RANKED_TAGS = {"R-MAC": "r-mac", "Ours": "ours", "Ours (metric learning)": "ours-metric"}


def ranked_lists(ds, descriptors: Mapping[str, np.ndarray], picks, k: int = 8) -> dict:
    """``ranked_<pick>_<method tag>`` -> figure: the ranked list of each picked query (``picks``:
    (tag, description, query index)) for each of R-MAC, ours and ours by metric learning that
    ``descriptors`` holds, so that the methods are seen on the same query."""
    out = {}
    for tag, what, qi in picks:
        for method, mtag in RANKED_TAGS.items():
            if method not in descriptors:
                continue
            ranking = pipeline.rank(descriptors[method])[:, qi]
            title = f"{method} - query {ds.qimlist[qi]} ({what})"
            fig = plot_ranked_list(
                ds.query_paths[qi], ds.query_bbxs[qi], ds.db_paths, ranking, ds.gnd[qi], k, title
            )
            out[f"ranked_{tag}_{mtag}"] = fig
    return out
