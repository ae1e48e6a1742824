"""How much room a synthetic benchmark leaves the attention, and how much of it each learned
attention takes (offline profiles; beyond the paper).

Every row is computed from one cache of the test images' pooled regions (the extraction head's
own path, ``training.metric_data.pooled_regions``, queries cropped to their boxes), whitened
with the profile's whitening:

- **R-MAC** (alpha = 1): the baseline;
- **ceiling** (not a method: it reads the test images' own masks): alpha_i = o_i + 0.01, o_i
  the share of region i's pixels on the landmark (``object_attention.region_overlaps``);
- **diagnostic** (not the paper's method): an attention supervised by the landmark masks of
  the metric-learning split's training images, regressed onto o_i + 0.01, the epoch kept on the
  validation landmarks' masks. It asks whether the frozen features can find the landmark at all
  when told where it is;
- the **learned** attentions, first seed: the paper's recipe (classification) and metric
  learning.

Each row's gain over R-MAC has its 95% paired-bootstrap interval over queries, and its share of
the room: the gain over the ceiling's gain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import attention_weights, weighted_l2_mean, whiten_regions
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.experiments import pipeline
from regattn_lib.experiments.object_attention import prepare_mask, region_overlaps
from regattn_lib.experiments.tables import gain_intervals
from regattn_lib.extraction.extract import Descriptors
from regattn_lib.extraction.heads import split_region_pools
from regattn_lib.runtime.identity import list_digest
from regattn_lib.training.metric import RegionCache, describe_cached
from regattn_lib.training.metric_data import region_cache

#: Added to every region's landmark share in the ceiling and the diagnostic's targets, so that
#: an image without a visible landmark still has a descriptor.
CEILING_EPS = 0.01
CEILING = "ceiling: alpha from the test masks (not a method)"
DIAGNOSTIC = "diagnostic: attention supervised by training masks"


def region_shares(
    mask_root: Any,
    names: Sequence[str],
    image_size: int,
    levels: int,
    bbxs: Sequence[Sequence[float] | None] | None = None,
) -> list[np.ndarray]:
    """Per image, o_i for each R-MAC region at ``levels`` of the prepared image (resized to
    ``image_size``, a query cropped to its box): the share of the region's pixels on the
    landmark, in the order the regional head pools them."""
    from regattn_lib.datasets.synthetic import load_landmark_mask

    out = []
    for i, name in enumerate(names):
        bbx = None if bbxs is None else bbxs[i]
        m = prepare_mask(load_landmark_mask(mask_root, name), image_size, bbx)
        out.append(region_overlaps(rmac_regions(m.shape[0], m.shape[1], levels), m))
    return out


@torch.no_grad()
def oracle_descriptors(
    pools: Sequence[torch.Tensor], shares: Sequence[np.ndarray], whitening: PCAWhitening | None
) -> torch.Tensor:
    """(N, D) descriptors with alpha_i = o_i + ``CEILING_EPS`` (the regional head's
    aggregation, alpha given instead of computed)."""
    out = []
    for rows, o in zip(pools, shares, strict=True):
        x, _, _ = split_region_pools(rows)
        if len(o) != x.shape[0]:
            raise ValueError(f"{len(o)} region shares for {x.shape[0]} pooled regions")
        alpha = torch.as_tensor(np.asarray(o) + CEILING_EPS, dtype=torch.float32)[None]
        out.append(weighted_l2_mean(whiten_regions(x[None].float(), whitening), alpha)[0])
    return torch.stack(out)


def _targets(cache: RegionCache, shares: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Per group of the cache, the (n, R) targets o_i + eps of its images."""
    return [
        torch.as_tensor(
            np.stack([shares[int(i)] for i in g.index]) + CEILING_EPS, dtype=torch.float32
        )
        for g in cache.groups
    ]


def _mask_loss(attention: torch.nn.Module, cache: RegionCache, targets: list[torch.Tensor]):
    total, count = 0.0, 0
    for g, t in zip(cache.groups, targets, strict=True):
        alpha = attention_weights(attention, g.k, g.g)
        total = total + ((alpha - t) ** 2).sum()
        count += t.numel()
    return total / count


def train_mask_attention(
    train: RegionCache,
    train_shares: Sequence[np.ndarray],
    val: RegionCache,
    val_shares: Sequence[np.ndarray],
    context: bool,
    hidden: int = 64,
    activation: str = "tanh",
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[RegionalAttention, dict[str, float]]:
    """An attention regressed onto the landmark shares o_i + eps of ``train`` (full-batch Adam,
    mean squared error); the step with the lowest validation error on ``val`` is kept. Returns
    the attention (eval mode) and ``{'step', 'train_mse', 'val_mse'}`` of the kept step."""
    torch.manual_seed(seed)
    channels = int(train.groups[0].k.shape[-1])
    att = RegionalAttention(channels, hidden, context, activation)
    tt, vt = _targets(train, train_shares), _targets(val, val_shares)
    opt = torch.optim.Adam(att.parameters(), lr=lr)
    best = {"step": 0, "train_mse": float("nan"), "val_mse": float("inf")}
    state = copy.deepcopy(att.state_dict())
    for step in range(1, steps + 1):
        att.train()
        opt.zero_grad()
        loss = _mask_loss(att, train, tt)
        loss.backward()
        opt.step()
        att.eval()
        with torch.no_grad():
            v = float(_mask_loss(att, val, vt))
        if v < best["val_mse"]:
            best = {"step": step, "train_mse": float(loss.detach()), "val_mse": v}
            state = copy.deepcopy(att.state_dict())
    att.load_state_dict(state)
    return att.eval(), best


def _test_pools(ctx: pipeline.Context, ds: Any, progress: bool) -> list[torch.Tensor]:
    """Pooled regions of the database then the queries (cropped), cached."""
    from regattn_lib.experiments.metric_plan import profile_pools

    out = []
    for part, paths, bbxs, names in (
        ("db", ds.db_paths, None, ds.imlist),
        ("queries", ds.query_paths, ds.query_bbxs, ds.qimlist),
    ):
        ident = {"set": ds.name, "part": part, "boxes": list_digest(bbxs or [])}
        label = f"{ds.name}-{part}"
        out += profile_pools(ctx, paths, names, ds.root, "room", label, ident, bbxs, progress)
    return out


def attention_room(
    ctx: pipeline.Context, whitening: PCAWhitening | None, progress: bool = True
) -> pd.DataFrame:
    """The table of the module docstring on the profile's first test set; needs notebook 02's
    attention models (the rows of those missing are left out) and the synthetic masks."""
    from regattn_lib.datasets.synthetic import SYNTHETIC_PRESETS, synthetic_paths
    from regattn_lib.experiments.metric_plan import metric_pools, metric_split

    p = ctx.profile
    if p.synthetic is None:
        raise ValueError(f"profile {p.name!r}: the room study needs a synthetic benchmark's masks")
    ds = pipeline.dataset(ctx, p.datasets[0])
    pools = _test_pools(ctx, ds, progress)
    n_db = len(ds.imlist)
    shares = region_shares(ds.root, ds.imlist, p.image_size, p.levels) + region_shares(
        ds.root, ds.qimlist, p.image_size, p.levels, ds.query_bbxs
    )
    cache = region_cache(pools, whitening)
    rows: dict[str, tuple[str, str, torch.Tensor]] = {}
    with torch.no_grad():
        rows[pipeline.RMAC] = ("baseline", "none (no attention)", describe_cached(cache, None))
    rows[CEILING] = ("ceiling", "test masks", oracle_descriptors(pools, shares, whitening))
    # the diagnostic: trained on the metric split's training masks, kept on its validation masks
    sp = synthetic_paths(SYNTHETIC_PRESETS[p.synthetic].name, ctx.data_root)
    mp = metric_pools(ctx, progress)
    splits, mshares = {}, {}
    for split in ("train", "val"):
        tuples = mp[split][0]
        splits[split] = metric_split(*mp[split], whitening).cache
        mshares[split] = region_shares(sp.metric_dir, list(tuples.cids), p.image_size, p.levels)
    recipe = p.train.recipe
    for label, context in ((f"{DIAGNOSTIC}, regional", False), (f"{DIAGNOSTIC}, context", True)):
        att, info = train_mask_attention(
            splits["train"],
            mshares["train"],
            splits["val"],
            mshares["val"],
            context,
            recipe.hidden,
            recipe.activation,
        )
        weights = (
            f"training masks of the metric split (step {info['step']}, validation MSE "
            f"{info['val_mse']:.4f})"
        )
        with torch.no_grad():
            rows[label] = ("diagnostic", weights, describe_cached(cache, att))
    for label, att in pipeline.available_attention(ctx).items():
        if att is not None:
            with torch.no_grad():
                d = describe_cached(cache, att.cpu())
            rows[f"{label}, seed {p.train.seeds[0]}"] = ("learned", pipeline.provenance(att), d)
    descs = {
        label: Descriptors(d[:n_db], d[n_db:], list(ds.imlist), list(ds.qimlist))
        for label, (_, _, d) in rows.items()
    }
    protocols = ["classic"] + [x for x in ("hard",) if x in ds.protocols]
    scores = pipeline.score(descs, ds, protocols=protocols)
    table = pd.DataFrame(
        {
            "method": list(rows),
            "row": [r[0] for r in rows.values()],
            "weights": [r[1] for r in rows.values()],
        }
    )
    for proto in protocols:
        col = ds.name if proto == "classic" else f"{ds.name} {proto}"
        table[col] = [scores[m]["protocols"][proto]["map"] for m in rows]
        aps = {m: np.asarray(scores[m]["protocols"][proto]["aps"]) for m in rows}
        for c, values in gain_intervals(aps, pipeline.RMAC, col).items():
            table[c] = values
        ceiling_gain = float(table.loc[table["method"] == CEILING, f"{col} gain"].iloc[0])
        table[f"{col} share of the room"] = table[f"{col} gain"] / ceiling_gain
    return table
