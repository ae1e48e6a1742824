"""The experiments behind each table of the paper, as functions returning DataFrames of our
numbers (``tables`` lays them beside the paper's, ``figures`` draws them).

Each function runs the backbone once per dataset for all the methods it compares (the
extraction engine evaluates many heads on one feature map) and reuses the descriptor cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from regattn_lib.core.evaluate import per_query_table
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.whitening import CrosswiseWhitening, PCAWhitening
from regattn_lib.experiments import pipeline
from regattn_lib.experiments.tables import (
    SEEDS,
    VS_RECIPE,
    WEIGHTS,
    gain_intervals,
    paired_intervals,
)
from regattn_lib.experiments.timing import time_per_image
from regattn_lib.extraction import methods
from regattn_lib.extraction.heads import Head
from regattn_lib.runtime.identity import fc_weight


def dataset_statistics(ctx: pipeline.Context) -> pd.DataFrame:
    """Database size, queries and positives per query for each test set of the profile."""
    rows = []
    for name in dict.fromkeys(ctx.profile.datasets + ctx.profile.revisited):
        ds = pipeline.dataset(ctx, name)
        row = {"dataset": name, "database": ds.n_db, "queries": ds.n_queries}
        for proto in ("easy", "hard", "junk", "ok"):
            if ds.gnd and proto in ds.gnd[0]:
                row[f"{proto} per query"] = float(np.mean([len(g[proto]) for g in ds.gnd]))
        rows.append(row)
    return pd.DataFrame(rows)


def head_weights(head: Head) -> str:
    """Provenance label of a head's attention (``pipeline.provenance``)."""
    return pipeline.provenance(getattr(head, "attention", None))


SEED_SEP = "|seed"


def expand_seeds(
    ctx: pipeline.Context, heads: dict[str, Head]
) -> tuple[dict[str, Head], dict[str, list[str]]]:
    """Each head whose attention was trained here, once per seed of the profile (the same head
    with that seed's weights, key ``<key>|seed<i>``); other heads once. Returns the heads and,
    per original key, the keys of its seeds."""
    out: dict[str, Head] = {}
    groups: dict[str, list[str]] = {}
    others: dict[str, list[Any]] | None = None
    for key, head in heads.items():
        out[key], groups[key] = head, [key]
        att = getattr(head, "attention", None)
        if att is None or getattr(att, "provenance", None) not in (
            pipeline.TRAINED,
            pipeline.TRAINED_METRIC,
        ):
            continue
        if others is None:  # loaded once, only when a trained head is there
            others = {
                kind: [m for m in pipeline.attention_seeds(ctx).get(label, [])[1:] if m is not None]
                for label, kind in pipeline.ATTENTION_KINDS.items()
            }
        kind = getattr(att, "kind", "context" if att.context else "regional")
        for i, other in enumerate(others[kind], start=1):
            out[f"{key}{SEED_SEP}{i}"] = methods.with_attention(head, other)
            groups[key].append(f"{key}{SEED_SEP}{i}")
    return out, groups


def seeded_score(
    ctx: pipeline.Context,
    ds: Any,
    heads: dict[str, Head],
    qe_k: int = 0,
    protocols: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``pipeline.score`` of ``heads`` where every trained attention counts once per seed.

    A head with several seeds gets, per protocol, the mean mAP and mP@k over seeds, the
    per-query APs of every seed as an (S, Q) array (``aps``, for ``gain_intervals``) and each
    seed's mAP (``map_seeds``); ``seeds`` says how many."""
    expanded, groups = expand_seeds(ctx, heads)
    scores = pipeline.score(
        pipeline.describe(ctx, ds, expanded), ds, qe_k=qe_k, protocols=protocols
    )
    out: dict[str, dict[str, Any]] = {}
    for key, keys in groups.items():
        runs = [scores[k] for k in keys]
        merged = {**runs[0], "seeds": len(runs), "protocols": {}}
        for proto, first in runs[0]["protocols"].items():
            per = [r["protocols"][proto] for r in runs]
            merged["protocols"][proto] = {
                **first,
                "map": float(np.mean([p["map"] for p in per])),
                "map_seeds": [p["map"] for p in per],
                "mp": {k: float(np.mean([p["mp"][k] for p in per])) for k in first["mp"]},
                "aps": np.stack([np.asarray(p["aps"]) for p in per]),
            }
        out[key] = merged
    return out


def series_heads(ctx: pipeline.Context, whitening: PCAWhitening) -> dict[str, Head]:
    """Every R-MAC-grid head the series' tables use on the test sets, each trained attention
    once per seed: the ablation rows (which are also the SOTA and revisited tables' R-MAC and
    ours) and the scale study's rows at every L."""
    heads: dict[str, Head] = dict(pipeline.ablation_heads(ctx, whitening))
    for lv in ctx.profile.scale_levels:
        for label, att in pipeline.available_attention(ctx).items():
            heads[f"{label}|L={lv}"] = methods.build_head(
                label, levels=lv, attention=att, whitening=whitening
            )
    return expand_seeds(ctx, heads)[0]


def describe_series(ctx: pipeline.Context, whitening: PCAWhitening, progress: bool = True) -> None:
    """One backbone pass per test set for all of ``series_heads``, and on the profile's
    ``datasets`` also for the RPN ablation's heads (``rpn_heads``) and the SOTA table's
    (``sota_heads``: its global baselines' whitenings come from notebook 01's pass,
    ``learn_series_whitenings``) and the whitening table's (``whitening_study_heads``), so that
    the ablation, the RPN ablation, the whitening table, the scale study, the SOTA and revisited
    tables and the per-query study read their descriptors from the cache
    instead of running the backbone over the same images again. Descriptors do not depend on
    which other heads share a pass (each head reads the same feature map)."""
    heads = series_heads(ctx, whitening)
    # the RPN heads carry the ablation's labels: keys of their own, or they would replace them
    more = {
        **{f"rpn|{k}": h for k, h in rpn_heads(ctx, whitening)[0].items()},
        **{f"sota|{k}": h for k, h in sota_heads(ctx, whitening).items()},
    }
    more = {
        **expand_seeds(ctx, more)[0],
        **{f"whitening|{k}": h for k, h in whitening_study_heads(ctx)[0].items()},
    }
    for name in dict.fromkeys(ctx.profile.datasets + ctx.profile.revisited):
        extra = more if name in ctx.profile.datasets else {}
        pipeline.describe(ctx, pipeline.dataset(ctx, name), {**heads, **extra}, progress=progress)


def _classic_maps(
    ctx: pipeline.Context,
    ds_name: str,
    heads: dict[str, Head],
    qe_k: int = 0,
    distractors: bool = False,
):
    """(dataset, scores, method -> classic mAP, method -> per-query classic APs); methods with
    several seeds: the mean mAP and the (S, Q) APs (``seeded_score``)."""
    ds = pipeline.dataset(ctx, ds_name, distractors=distractors)
    scores = seeded_score(ctx, ds, heads, qe_k=qe_k, protocols=["classic"])
    maps = {k: v["protocols"]["classic"]["map"] for k, v in scores.items()}
    aps = {k: v["protocols"]["classic"]["aps"] for k, v in scores.items()}
    return ds, scores, maps, aps


#: Each metric-learned row -> the paper's recipe row of the same kind (its paired comparison).
RECIPE_OF = {
    pipeline.METRIC_REGIONAL: pipeline.REGIONAL,
    pipeline.METRIC_CONTEXT: pipeline.CONTEXT,
}


def ablation(
    ctx: pipeline.Context, whitening: PCAWhitening, timing: bool = True, n_timing: int = 20
) -> pd.DataFrame:
    """R-MAC + PCA, + regional attention, + context awareness on each test set, with s/image.

    Columns: one classic mAP per test set (the mean over the profile's seeds for a trained
    attention; ``seeds`` says how many), ``<set> medium`` / ``<set> hard`` where the set has
    revisited labels, each with the gain over R-MAC + PCA and its 95% paired-bootstrap
    interval over queries (``gain_intervals``), and ``time_s``: the median seconds per image of
    each method over ``n_timing`` database images of the first test set
    (:func:`timing.time_per_image`: warm
    model, one image at a time, decoding excluded). ``table.attrs["notes"]`` says how, on which
    device and in which precision; ``table.attrs["timing"]`` holds the measurements.
    """
    heads = pipeline.ablation_heads(ctx, whitening)
    base = next(iter(heads))  # R-MAC + PCA: every gain and its interval is against it
    table = pd.DataFrame(
        {"method": list(heads), WEIGHTS: [head_weights(h) for h in heads.values()]}
    )
    for name in ctx.profile.datasets:
        ds, scores, maps, aps = _classic_maps(ctx, name, heads)
        table[name] = [maps[m] for m in heads]
        table[SEEDS] = [scores[m]["seeds"] for m in heads]
        intervals = gain_intervals(aps, base, name)
        # Sets that also carry the revisited labels (the synthetic ones) get Medium and Hard too.
        extra = [p for p in ("medium", "hard") if p in ds.protocols]
        if extra:
            scores = seeded_score(ctx, ds, heads, protocols=extra)
            for proto in extra:
                col = f"{name} {proto}"
                table[col] = [scores[m]["protocols"][proto]["map"] for m in heads]
                proto_aps = {m: scores[m]["protocols"][proto]["aps"] for m in heads}
                intervals.update(gain_intervals(proto_aps, base, col))
        # beyond the paper: each metric-learned row against the paper's recipe of its kind
        pairs = {m: r for m, r in RECIPE_OF.items() if m in heads and r in heads}
        if pairs:
            intervals.update(paired_intervals(aps, pairs, f"{name} {VS_RECIPE}"))
        for col, values in intervals.items():
            table[col] = values
    if timing:
        ds = pipeline.dataset(ctx, ctx.profile.datasets[0])
        t = time_per_image(ctx, ds, pipeline.heads_for_dataset(heads, ds.name), n_timing)
        table["time_s"] = [t[m].median_s for m in heads]
        first = next(iter(t.values()))
        table.attrs["notes"] = [
            f"time_s: median seconds per image over {first.n} images of {ds.name}, one at a time "
            f"at {first.image_size or 'original'} px, warm model, decoding excluded; "
            f"{first.device}, {first.precision}"
        ]
        table.attrs["timing"] = {m: asdict(v) for m, v in t.items()}
    return pipeline.untrained_rows(ctx, table)


def rpn_heads(ctx: pipeline.Context, whitening: PCAWhitening) -> tuple[dict[str, Head], str]:
    """The ablation's heads with the profile's RPN proposals instead of the grid, and the RPN's
    label."""
    from regattn_lib.models.rpn import RPNRegions

    rpn = RPNRegions(
        ctx.profile.rpn,
        top_n=ctx.profile.rpn_proposals,
        data_root=ctx.data_root,
        download=ctx.profile.download,
        device=ctx.device,
        max_side=ctx.profile.rpn_max_side,
    )
    heads = pipeline.ablation_heads(
        ctx, whitening, region_fn=rpn, region_source=f"rpn-{rpn.weights}-{rpn.top_n}"
    )
    return heads, rpn.label


def rpn_ablation(ctx: pipeline.Context, whitening: PCAWhitening) -> tuple[pd.DataFrame, str]:
    """The ablation with RPN proposals instead of the grid. Returns the table and the RPN label."""
    heads, label = rpn_heads(ctx, whitening)
    table = pd.DataFrame(
        {"method": list(heads), WEIGHTS: [head_weights(h) for h in heads.values()]}
    )
    for name in ctx.profile.datasets:
        _, _, maps, aps = _classic_maps(ctx, name, heads)
        table[name] = [maps[m] for m in heads]
        for col, values in gain_intervals(aps, next(iter(heads)), name).items():
            table[col] = values
    return pipeline.untrained_rows(ctx, table), label


def scale_study(
    ctx: pipeline.Context, whitening: PCAWhitening, levels: Sequence[int] | None = None
) -> pd.DataFrame:
    """mAP against the number of levels L for R-MAC and the attention variants (long format),
    with each method's gain over R-MAC at the same L and its 95% paired-bootstrap interval."""
    levels = list(ctx.profile.scale_levels if levels is None else levels)
    atts = pipeline.available_attention(ctx)
    heads: dict[str, Head] = {}
    for lv in levels:
        for label, att in atts.items():
            heads[f"{label}|L={lv}"] = methods.build_head(
                label, levels=lv, attention=att, whitening=whitening
            )
    rows = []
    for name in ctx.profile.datasets:
        ds = pipeline.dataset(ctx, name)
        scores = seeded_score(ctx, ds, heads, protocols=["classic"])
        for lv in levels:
            keys = [f"{label}|L={lv}" for label in atts]
            aps = {k: scores[k]["protocols"]["classic"]["aps"] for k in keys}
            gains = gain_intervals(aps, keys[0], "mAP")  # against R-MAC at the same L
            for i, (label, key) in enumerate(zip(atts, keys, strict=True)):
                row = {
                    "dataset": name,
                    "method": label,
                    WEIGHTS: head_weights(heads[key]),
                    "levels": lv,
                    "regions_4x3": len(rmac_regions(768, 1024, lv)),
                    "mAP": scores[key]["protocols"]["classic"]["map"],
                    SEEDS: scores[key]["seeds"],
                }
                row.update({col: values[i] for col, values in gains.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def _sota_methods(ctx: pipeline.Context, atts: dict) -> dict[str, methods.Method]:
    """Row -> method of the state-of-the-art table given the attention kinds at hand."""
    fc = fc_weight(ctx.backbone)
    rows: dict[str, methods.Method] = {}
    for row, names in methods.SOTA_ROWS.items():
        candidates = [methods.METHODS[n] for n in ((names,) if isinstance(names, str) else names)]
        usable = [m for m in candidates if m.attention_kind is None or m.attention_kind in atts]
        if usable and not (usable[0].pooling == "cam" and fc is None):
            rows[row] = usable[0]
    return rows


def global_poolings(ctx: pipeline.Context) -> list[str]:
    """The global poolings of the SOTA table's baselines (MAC, SPoC, CroW, CAM where the
    backbone has an ImageNet classifier): each needs its own whitening."""
    return [m.pooling for m in _sota_methods(ctx, {}).values() if m.family == "global"]


def learn_series_whitenings(ctx: pipeline.Context, progress: bool = True) -> PCAWhitening:
    """Notebook 01's whitening pass: the regional whitening (the authors' setting,
    ``pipeline.learn_whitening``) and the SOTA baselines' global ones in one pass over the
    whitening set, each cached on its own (learning several in one pass gives each the same
    statistics as learning it alone). Returns the regional one, as ``learn_whitening``."""
    pipeline.learn_whitenings(ctx, ["regional", *global_poolings(ctx)], progress=progress)
    return pipeline.learn_whitening(ctx, progress=progress)


def sota_heads(ctx: pipeline.Context, whitening: PCAWhitening) -> dict[str, Head]:
    """The state-of-the-art rows (``methods.SOTA_ROWS``): MAC, SPoC, CroW, CAM, each whitened on
    the whitening set with its own whitening, R-MAC, and ours (the context-aware attention, else
    the regional one). CAM needs the backbone's ImageNet classifier and is left out without
    one; ours is left out without any attention model."""
    fc = fc_weight(ctx.backbone)
    atts = {
        methods.method(lbl).attention_kind: a
        for lbl, a in pipeline.available_attention(ctx).items()
        if a is not None
    }
    rows = _sota_methods(ctx, atts)
    full = pipeline.learn_whitenings(ctx, global_poolings(ctx))  # cached by notebook 01's pass
    dims = ctx.profile.global_whitening_dims
    heads: dict[str, Head] = {}
    for row, m in rows.items():
        if m.family == "global":
            w = full[m.pooling] if dims is None else full[m.pooling].truncate(dims)
        else:
            w = whitening
        head = m.build(
            levels=ctx.profile.levels,
            whitening=w,
            attention=atts.get(m.attention_kind),
            fc_weight=fc,
        )
        head.name = row  # the paper's row label
        heads[row] = head
    return heads


def sota(ctx: pipeline.Context, whitening: PCAWhitening) -> tuple[pd.DataFrame, list[str]]:
    """The state-of-the-art table: every method without and with average QE (top-k), each with
    its gain over R-MAC (without QE) and the gain's 95% paired-bootstrap interval."""
    heads = sota_heads(ctx, whitening)
    notes: list[str] = []
    columns: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, list[float]]] = {}
    sets = [(n, False) for n in ctx.profile.datasets]
    if ctx.profile.distractors is not None:
        sets += [(n, True) for n in ctx.profile.datasets]
    for name, distract in sets:
        ds = pipeline.dataset(ctx, name, distractors=distract)
        col = (
            {"oxford5k": "oxford105k", "paris6k": "paris106k"}.get(name, name + "+distractors")
            if distract
            else name
        )
        plain = seeded_score(ctx, ds, heads, protocols=["classic"])
        qe = seeded_score(ctx, ds, heads, qe_k=ctx.profile.qe_k, protocols=["classic"])
        columns[col] = {m: plain[m]["protocols"]["classic"]["map"] for m in heads}
        columns[col].update({f"{m}+QE": qe[m]["protocols"]["classic"]["map"] for m in heads})
        aps = {m: plain[m]["protocols"]["classic"]["aps"] for m in heads}
        aps.update({f"{m}+QE": qe[m]["protocols"]["classic"]["aps"] for m in heads})
        intervals[col] = gain_intervals(
            aps, "R-MAC" if "R-MAC" in heads else next(iter(heads)), col
        )
        notes += [n for n in ds.notes if n not in notes]
    methods = list(heads) + [f"{m}+QE" for m in heads]
    labels = [head_weights(h) for h in heads.values()]
    table = pd.DataFrame({"method": methods, WEIGHTS: labels + labels})
    for col, vals in columns.items():
        table[col] = [vals[m] for m in methods]
    for cols in intervals.values():
        for col, values in cols.items():
            table[col] = values
    if "CAM" not in heads:
        notes.append(
            "CAM is left out: the backbone has no ImageNet classifier (fc) to weight with."
        )
    return table, notes


#: The SOTA rows the revisited and per-query tables compare: R-MAC, ours (the paper's recipe)
#: and ours learned by metric learning (beyond the paper), where present.
OURS_ROWS = ("R-MAC", "Ours", "Ours (metric learning)")


def revisited(ctx: pipeline.Context, whitening: PCAWhitening) -> pd.DataFrame:
    """Revisited protocol: mAP and mP@10 under Easy / Medium / Hard, R-MAC and ours, +- QE;
    ours' gain over R-MAC (with the same QE) and its 95% paired-bootstrap interval."""
    heads = {k: v for k, v in sota_heads(ctx, whitening).items() if k in OURS_ROWS}
    rows = []
    for name in ctx.profile.revisited:
        ds = pipeline.dataset(ctx, name)
        for qe_k in (0, ctx.profile.qe_k):
            scores = seeded_score(ctx, ds, heads, qe_k=qe_k, protocols=["easy", "medium", "hard"])
            gains: dict[str, list[float]] = {}
            for proto in ("easy", "medium", "hard"):
                aps = {m: r["protocols"][proto]["aps"] for m, r in scores.items()}
                gains.update(gain_intervals(aps, "R-MAC", f"{proto} mAP"))
            for i, (method, r) in enumerate(scores.items()):
                row = {
                    "dataset": name,
                    "method": method + ("+QE" if qe_k else ""),
                    WEIGHTS: head_weights(heads[method]),
                }
                for proto, v in r["protocols"].items():
                    row[f"{proto} mAP"] = v["map"]
                    row[f"{proto} mP@10"] = v["mp"][10]
                row.update({col: values[i] for col, values in gains.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def whitening_study_heads(
    ctx: pipeline.Context, dims: Sequence[int | None] | None = None
) -> tuple[dict[str, Head], dict[str, int | None]]:
    """The whitening table's heads (R-MAC without whitening, and with whitening kept to each of
    ``dims``, default the profile's ``whitening_study_dims``; None = all) and the number of
    vectors each whitening was learned on. Every dimension comes from the one whitening pass
    (``pipeline.learn_whitening``)."""
    dims = ctx.profile.whitening_study_dims if dims is None else dims
    heads: dict[str, Head] = {
        methods.label("rmac-nowhiten"): methods.build_head(
            "rmac-nowhiten", levels=ctx.profile.levels
        )
    }
    info = {}
    for d in dims:
        w = pipeline.learn_whitening(ctx, n_components=d)
        label = f"R-MAC + PCA-whitening {w.out_dim}-d"
        heads[label] = methods.build_head("rmac", levels=ctx.profile.levels, whitening=w)
        info[label] = w.meta.get("n_vectors")  # a crosswise whitening: per dataset, below
    return heads, info


def whitening_study(
    ctx: pipeline.Context, dims: Sequence[int | None] | None = None
) -> pd.DataFrame:
    """R-MAC without whitening and with whitening of several dimensions (``dims``, default the
    profile's ``whitening_study_dims``; None = all). Notebook 03 runs it after
    ``describe_series``, whose pass holds these heads: the table then costs no backbone pass."""
    heads, info = whitening_study_heads(ctx, dims)
    rows = []
    for name in ctx.profile.datasets:
        ds = pipeline.dataset(ctx, name)
        scores = pipeline.score(pipeline.describe(ctx, ds, heads), ds)
        for m, s in scores.items():
            w = getattr(heads[m], "whitening", None)
            n_vectors = info.get(m, 0)
            if isinstance(w, CrosswiseWhitening):
                n_vectors = w.for_dataset(name).meta["n_vectors"]
            row = {"dataset": name, "method": m, "whitening vectors": n_vectors}
            row.update({f"{p} mAP": v["map"] for p, v in s["protocols"].items()})
            rows.append(row)
    return pd.DataFrame(rows)


def per_query(
    ctx: pipeline.Context, whitening: PCAWhitening, name: str | None = None
) -> tuple[pd.DataFrame, dict]:
    """Per-query AP of R-MAC and ours (classic protocol); also returns the descriptors."""
    name = name or ctx.profile.datasets[0]
    heads = {k: v for k, v in sota_heads(ctx, whitening).items() if k in OURS_ROWS}
    ds = pipeline.dataset(ctx, name)
    descs = pipeline.describe(ctx, ds, heads)
    scores = pipeline.score(descs, ds, protocols=["classic"])
    aps = {m: s["protocols"]["classic"]["aps"] for m, s in scores.items()}
    df = per_query_table(ds.qimlist, aps, baseline="R-MAC")
    # One comparison here: its column is plainly "gain" (extreme_queries, notebook 06).
    df = df.rename(columns={"gain Ours": "gain"})
    return df, {"dataset": ds, "descriptors": descs}


def extreme_queries(perq: pd.DataFrame) -> tuple[int, int]:
    """Indices of the query where ours gains most over R-MAC and where R-MAC wins most."""
    gain = perq["gain"].fillna(0).to_numpy()
    return int(np.argmax(gain)), int(np.argmin(gain))


def object_attention(
    ctx: pipeline.Context, name: str | None = None, n_db: int = 300
) -> pd.DataFrame:
    """Does the attention weight the landmark above the clutter? Per method (first seed) and
    image set (the queries, cropped to their boxes, and the first ``n_db`` database images that
    show a landmark), the mean share of the attention mass on the landmark
    (``object_attention``), the uniform share R-MAC gives, and the mean per-image difference
    with its 95% bootstrap interval over images, and the spread of alpha within an image
    (``alpha cv``: the mean over images of std / mean; a constant alpha is not attention).
    Needs the landmark masks of a synthetic set.
    """
    from regattn_lib.datasets.synthetic import load_landmark_mask
    from regattn_lib.experiments.object_attention import (
        image_shares,
        prepare_mask,
        summarize_shares,
    )

    name = name or ctx.profile.datasets[0]
    ds = pipeline.dataset(ctx, name)
    atts = {k: v for k, v in pipeline.available_attention(ctx).items() if v is not None}
    sets = {
        "queries": [
            (p, b, n) for p, b, n in zip(ds.query_paths, ds.query_bbxs, ds.qimlist, strict=True)
        ],
        "database": [(p, None, n) for p, n in zip(ds.db_paths, ds.imlist, strict=True)],
    }
    rows = []
    for part, items in sets.items():
        shares: list[dict[str, float]] = []
        for path, bbx, image_name in items:
            if part == "database" and len(shares) >= n_db:
                break
            mask = load_landmark_mask(ds.root, image_name)
            if not mask.any():
                continue
            image, regions, alphas = pipeline.attentions_for_image(ctx, path, atts, bbx=bbx)
            found = image_shares(regions, alphas, prepare_mask(mask, ctx.profile.image_size, bbx))
            if found is not None:
                # the spread of alpha within the image: a constant alpha is not attention
                found.update({f"{k} cv": float(a.std() / a.mean()) for k, a in alphas.items()})
                shares.append(found)
        for label in atts:
            s = summarize_shares([x[label] for x in shares], [x["uniform"] for x in shares])
            rows.append(
                {
                    "dataset": name,
                    "images": part,
                    "method": label,
                    "n": s.n,
                    "attention share": s.attention,
                    "uniform share": s.uniform,
                    "difference": s.difference,
                    "difference low": s.low,
                    "difference high": s.high,
                    # mean over images of std(alpha) / mean(alpha): 0 would be R-MAC
                    "alpha cv": float(np.mean([x[f"{label} cv"] for x in shares]))
                    if shares
                    else float("nan"),
                }
            )
    return pd.DataFrame(rows)
