"""A small trainer of the regional attention by metric learning (beyond the paper), cirtorch's
epoch on the frozen, cached regions of ``metric``.

Each epoch, as cirtorch's ``train.py`` with ``TuplesDataset``: draw ``query_size`` (query,
positive) pairs of the training split, draw a pool of ``pool_size`` training images, re-mine
``nnum`` hard negatives per query with the current attention (``mine_hard_negatives``), then
one Adam step per batch of ``batch_size`` tuples on the summed contrastive loss, and decay the
learning rate by ``lr_decay``. After every epoch (and before the first: epoch 0, the starting
attention, alpha = 1 after ``init_alpha_one``) the mAP on a validation split of other
landmarks is measured; the weights of the best epoch are kept (ties keep the earlier epoch).
All randomness comes from one ``torch.Generator`` seeded with ``seed``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from regattn_lib.core.evaluate import compute_map
from regattn_lib.core.search import cosine_ranks
from regattn_lib.training.metric import (
    CONTRASTIVE_MARGIN,
    NEGATIVES,
    RegionCache,
    cached_alpha,
    contrastive_loss,
    describe_cached,
    mine_hard_negatives,
    tuple_labels,
)

#: cirtorch's per-epoch learning-rate decay (``ExponentialLR(gamma=exp(-0.01))``).
LR_DECAY = math.exp(-0.01)


@dataclass
class MetricSplit:
    """One split of landmark images: the cached regions of its N images, each image's cluster
    (landmark, 3D model) id, and the (query, positive) pairs ``qidxs``/``pidxs`` (indices into
    the N images), as in cirtorch's ``retrieval-SfM-120k.pkl``."""

    cache: RegionCache
    cluster: np.ndarray
    qidxs: np.ndarray
    pidxs: np.ndarray

    def __post_init__(self) -> None:
        self.cluster = np.asarray(self.cluster).reshape(-1)
        self.qidxs = np.asarray(self.qidxs, dtype=np.int64).reshape(-1)
        self.pidxs = np.asarray(self.pidxs, dtype=np.int64).reshape(-1)
        n = len(self.cache)
        if self.cluster.size != n:
            raise ValueError(f"MetricSplit: {self.cluster.size} cluster ids for {n} images")
        if self.qidxs.size != self.pidxs.size:
            raise ValueError(f"MetricSplit: {self.qidxs.size} queries, {self.pidxs.size} positives")
        for name, v in (("qidxs", self.qidxs), ("pidxs", self.pidxs)):
            if v.size and (v.min() < 0 or v.max() >= n):
                raise ValueError(f"MetricSplit: {name} outside the {n} images")


def cluster_gnd(cluster: Sequence[int] | np.ndarray, qidxs: Sequence[int]) -> list[dict]:
    """Ground truth of a split used as its own database: for each query, positives ``ok`` =
    the other images of its cluster; the query itself is ``junk`` (never its own positive)."""
    cluster = np.asarray(cluster).reshape(-1)
    out = []
    for q in np.asarray(qidxs, dtype=np.int64).reshape(-1).tolist():
        same = np.flatnonzero(cluster == cluster[q])
        out.append({"ok": same[same != q].tolist(), "junk": [q]})
    return out


def retrieval_map(
    query_vecs: torch.Tensor, db_vecs: torch.Tensor, gnd: Sequence[Mapping[str, Any]]
) -> float:
    """mAP in % of ranking ``db_vecs`` for ``query_vecs`` (``search.cosine_ranks``, then
    ``evaluate.compute_map``: the test sets' conventions)."""
    ranks = cosine_ranks(query_vecs.detach().float(), db_vecs.detach().float())
    return 100.0 * compute_map(ranks, gnd)[0]


@torch.no_grad()
def split_map(split: MetricSplit, attention: nn.Module | None) -> float:
    """mAP in % on ``split``: its queries ``qidxs`` against all its images (``cluster_gnd``)."""
    vecs = describe_cached(split.cache, attention)
    return retrieval_map(
        vecs[torch.as_tensor(split.qidxs)], vecs, cluster_gnd(split.cluster, split.qidxs)
    )


def alpha_stats(split: MetricSplit, attention: nn.Module | None) -> dict[str, float]:
    """Mean alpha and its mean coefficient of variation within an image (how peaky it is)."""
    alphas = cached_alpha(split.cache, attention)
    means = torch.stack([a.mean() for a in alphas])
    cv = torch.stack([a.std(unbiased=False) / a.mean().clamp_min(1e-12) for a in alphas])
    return {"alpha_mean": float(means.mean()), "alpha_cv": float(cv.mean())}


@torch.no_grad()
def epoch_tuples(
    split: MetricSplit,
    attention: nn.Module | None,
    query_size: int,
    pool_size: int,
    nnum: int,
    generator: torch.Generator,
) -> tuple[np.ndarray, float]:
    """cirtorch's ``create_epoch_tuples``: (T, 2 + nnum) image indices (query, positive,
    negatives) of ``min(query_size, pairs)`` random pairs with hard negatives re-mined in a
    random pool of ``min(pool_size, N)`` images, and the mean query-negative distance."""
    nq = min(query_size, split.qidxs.size)
    pick = torch.randperm(split.qidxs.size, generator=generator)[:nq].numpy()
    q, p = split.qidxs[pick], split.pidxs[pick]
    pool = torch.randperm(len(split.cache), generator=generator)[: min(pool_size, len(split.cache))]
    pool = pool.numpy()
    qv = describe_cached(split.cache, attention, q)
    pv = describe_cached(split.cache, attention, pool)
    neg = mine_hard_negatives(qv, pv, split.cluster[pool], split.cluster[q], nnum)
    dist = (qv[:, None] - pv[torch.as_tensor(neg)] + 1e-6).norm(dim=-1).mean() if nnum else 0.0
    return np.concatenate([q[:, None], p[:, None], pool[neg]], axis=1), float(dist)


@dataclass
class MetricTrainResult:
    """``attention``: the best-validation module (eval mode); ``history``: one dict per epoch
    (epoch 0 = the starting attention); ``best_epoch`` and its ``best_val_map`` (%)."""

    attention: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_map: float = math.nan


def train_metric_attention(
    attention: nn.Module,
    train: MetricSplit,
    val: MetricSplit,
    epochs: int,
    lr: float,
    nnum: int = NEGATIVES,
    margin: float = CONTRASTIVE_MARGIN,
    query_size: int = 2000,
    pool_size: int = 20000,
    batch_size: int = 5,
    weight_decay: float = 0.0,
    lr_decay: float = LR_DECAY,
    seed: int = 0,
    progress: bool = True,
) -> MetricTrainResult:
    """Train ``attention`` (in place) with cirtorch's contrastive tuples; keep the best epoch.

    Parameters
    ----------
    attention:
        A ``RegionalAttention`` (start from ``init_alpha_one`` so epoch 0 is R-MAC).
    train, val:
        Splits of disjoint landmarks; ``val``'s mAP selects the epoch.
    epochs, lr:
        Epochs after epoch 0, and Adam's learning rate (cirtorch's 1e-6 is for a whole network;
        choose this one on validation).
    nnum, margin, query_size, pool_size, batch_size:
        cirtorch's defaults 5, 0.7, 2000, 20000, 5 (capped to the split's size).
    weight_decay:
        Adam's weight decay (default 0; cirtorch's 1e-4 is for the whole network).
    lr_decay:
        Learning rate factor per epoch (cirtorch: exp(-0.01)).
    seed:
        Seeds the query, pool and batch draws.
    progress:
        A tqdm bar over the epochs.

    Returns a ``MetricTrainResult``; ``attention`` itself ends with the best weights loaded.
    """
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in attention.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay)
    labels = tuple_labels(1, nnum)

    def measure(epoch: int, loss: float, neg_dist: float, lr_used: float) -> dict[str, float]:
        attention.eval()
        row = {"epoch": epoch, "lr": lr_used, "loss": loss, "neg_dist": neg_dist}
        row["val_map"] = split_map(val, attention)
        return {**row, **alpha_stats(val, attention)}

    history = [measure(0, math.nan, math.nan, 0.0)]
    best = (history[0]["val_map"], 0, copy.deepcopy(attention.state_dict()))
    bar = tqdm(range(1, epochs + 1), desc="metric attention", disable=not progress)
    for epoch in bar:
        attention.eval()
        tuples, neg_dist = epoch_tuples(train, attention, query_size, pool_size, nnum, gen)
        order = torch.randperm(len(tuples), generator=gen).numpy()
        attention.train()
        total, lr_used = 0.0, opt.param_groups[0]["lr"]
        for s in range(0, len(order), batch_size):
            batch = tuples[order[s : s + batch_size]]
            opt.zero_grad(set_to_none=True)
            vecs = describe_cached(train.cache, attention, batch.reshape(-1))
            loss = contrastive_loss(vecs, labels.repeat(len(batch)), margin)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        row = measure(epoch, total / max(len(tuples), 1), neg_dist, lr_used)
        history.append(row)
        if row["val_map"] > best[0]:
            best = (row["val_map"], epoch, copy.deepcopy(attention.state_dict()))
        bar.set_postfix(loss=f"{row['loss']:.4f}", val_map=f"{row['val_map']:.2f}")
    attention.load_state_dict(best[2])
    attention.eval()
    return MetricTrainResult(attention, history, best_epoch=best[1], best_val_map=best[0])
