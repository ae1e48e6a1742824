"""Metric learning of the regional attention (the paper's future work, beyond the paper): the
building blocks as pure functions, in the style of cirtorch's ``layers/functional.py``.

Backbone and whitening stay frozen; only the attention learns, from a retrieval loss on tuples
(query, positive, N hard negatives) as cirtorch trains (Radenovic et al.,
github.com/filipradenovic/cnnimageretrieval-pytorch):

- ``contrastive_loss``: cirtorch's ``functional.contrastive_loss`` on rows instead of columns;
- ``mine_hard_negatives``: the negative selection of cirtorch's
  ``TuplesDataset.create_epoch_tuples``;
- ``cache_regions`` / ``describe_cached``: the descriptor that is trained, made of the library's
  own ``attention_weights``, ``whiten_regions`` and ``weighted_l2_mean`` (what
  ``extraction.heads.RegionalHead`` extracts with), so the trained descriptor is the extracted one. The
  whitened, normalised regions are frozen: they are computed once, and an epoch costs only the
  attention;
- ``init_alpha_one``: an attention that gives alpha = 1 exactly (R-MAC) to start from, so model
  selection on validation can only keep R-MAC or better.

The trainer that chains them is ``metric_train.train_metric_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import attention_weights, weighted_l2_mean, whiten_regions
from regattn_lib.core.whitening import PCAWhitening

#: cirtorch's default contrastive margin (``ContrastiveLoss(margin=0.7)``).
CONTRASTIVE_MARGIN = 0.7
#: cirtorch's default number of hard negatives per tuple (``TuplesDataset(nnum=5)``).
NEGATIVES = 5
#: Labels of a tuple's images, cirtorch's convention.
QUERY, POSITIVE, NEGATIVE = -1, 1, 0


# --------------------------------------------------------------------------------- loss
def tuple_labels(n_tuples: int, nnum: int = NEGATIVES) -> torch.Tensor:
    """cirtorch's labels of ``n_tuples`` tuples laid out as (q, p, n_1..n_nnum) one after the
    other: -1 query, 1 positive, 0 negative."""
    one = [QUERY, POSITIVE] + [NEGATIVE] * nnum
    return torch.tensor(one * n_tuples, dtype=torch.float32)


def contrastive_loss(
    descriptors: torch.Tensor,
    labels: torch.Tensor,
    margin: float = CONTRASTIVE_MARGIN,
    eps: float = 1e-6,
) -> torch.Tensor:
    """cirtorch's contrastive loss (``cirtorch/layers/functional.py``, ``contrastive_loss``).

    Parameters
    ----------
    descriptors:
        (n_tuples * S, D) L2-normalised rows, tuples one after the other, each laid out as
        (query, positive, n_1, ..., n_N) with S = N + 2. (cirtorch stores the same as columns,
        (D, n_tuples * S).)
    labels:
        (n_tuples * S,): -1 for each tuple's query, 1 for its positive, 0 for its negatives
        (``tuple_labels``).
    margin:
        Default cirtorch's 0.7.
    eps:
        Added to each difference before the norm, as cirtorch does: d = ||q - x + eps||, which
        keeps the square root differentiable at d = 0.

    Returns the sum over every (query, other) pair of 1/2 d^2 for a positive and
    1/2 max(0, margin - d)^2 for a negative: a scalar, summed, not averaged (cirtorch).
    """
    labels = torch.as_tensor(labels, device=descriptors.device).float().reshape(-1)
    if descriptors.dim() != 2 or descriptors.shape[0] != labels.numel():
        raise ValueError(
            f"contrastive_loss: {tuple(descriptors.shape)} descriptors for {labels.numel()} labels"
        )
    n_tuples = int((labels == QUERY).sum())
    if n_tuples == 0 or labels.numel() % n_tuples:
        raise ValueError("contrastive_loss: labels must hold equal tuples, each with one query -1")
    size = labels.numel() // n_tuples
    if size < 2 or not bool((labels[::size] == QUERY).all()):
        raise ValueError(f"contrastive_loss: every tuple of {size} must start with its query")
    x = descriptors.reshape(n_tuples, size, -1)
    lbl = labels.reshape(n_tuples, size)[:, 1:]
    d = (x[:, :1] - x[:, 1:] + eps).pow(2).sum(-1).sqrt()
    y = 0.5 * lbl * d.pow(2) + 0.5 * (1 - lbl) * (margin - d).clamp_min(0).pow(2)
    return y.sum()


class ContrastiveLoss(nn.Module):
    """Module form of ``contrastive_loss`` (cirtorch's ``layers/loss.py``)."""

    def __init__(self, margin: float = CONTRASTIVE_MARGIN, eps: float = 1e-6) -> None:
        super().__init__()
        self.margin = margin
        self.eps = eps

    def forward(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(descriptors, labels, self.margin, self.eps)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


# ------------------------------------------------------------------------------- mining
def mine_hard_negatives(
    query_vecs: torch.Tensor,
    pool_vecs: torch.Tensor,
    pool_clusters: Sequence[int] | np.ndarray | torch.Tensor,
    query_clusters: Sequence[int] | np.ndarray | torch.Tensor,
    nnum: int = NEGATIVES,
) -> np.ndarray:
    """The ``nnum`` hardest negatives of each query, as cirtorch's ``create_epoch_tuples``.

    The pool is scanned in order of decreasing similarity (dot product; ties by pool position);
    an image is taken unless its cluster is the query's (possibly a positive) or already taken
    for this query (at most one per cluster, so the negatives are not all one landmark).
    cirtorch scans the whole sorted pool until it has ``nnum``; so does this.

    Parameters
    ----------
    query_vecs, pool_vecs:
        (Q, D) and (P, D) L2-normalised descriptors.
    pool_clusters, query_clusters:
        (P,) and (Q,) cluster (landmark, 3D model) ids.
    nnum:
        Negatives per query (cirtorch: 5).

    Returns an int64 array (Q, nnum) of positions into the pool, hardest first. Raises
    ``ValueError`` when the pool has fewer than ``nnum`` clusters besides a query's.
    """
    q = torch.as_tensor(query_vecs).float()
    p = torch.as_tensor(pool_vecs).float().to(q.device)
    pc = np.asarray(torch.as_tensor(pool_clusters).cpu()).reshape(-1)
    qc = np.asarray(torch.as_tensor(query_clusters).cpu()).reshape(-1)
    if p.shape[0] != pc.size or q.shape[0] != qc.size:
        raise ValueError("mine_hard_negatives: one cluster id per query and per pool image")
    out = np.empty((q.shape[0], nnum), dtype=np.int64)
    if nnum == 0 or q.shape[0] == 0:
        return out
    order = torch.argsort(q @ p.T, dim=1, descending=True, stable=True).cpu().numpy()
    for i in range(q.shape[0]):
        taken = {qc[i]}
        found = 0
        for r in order[i]:
            c = pc[r]
            if c in taken:
                continue
            out[i, found] = r
            taken.add(c)
            found += 1
            if found == nnum:
                break
        if found < nnum:
            raise ValueError(
                f"mine_hard_negatives: query {i} (cluster {qc[i]}) finds only {found} other "
                f"clusters in a pool of {p.shape[0]} images, {nnum} needed"
            )
    return out


# -------------------------------------------------------------------- the descriptor trained
@dataclass
class CachedGroup:
    """Images with the same number of regions R, stacked: ``index`` (n,) their positions in the
    cache, ``xhat`` (n, R, D) whitened and normalised max-pooled regions (frozen), ``k``
    (n, R, C) average-pooled regions, ``g`` (n, C) global average pools."""

    index: torch.Tensor
    xhat: torch.Tensor
    k: torch.Tensor
    g: torch.Tensor


@dataclass
class RegionCache:
    """The frozen part of the descriptor of N images: what an epoch does not recompute.

    ``groups`` stack images of equal region count (one group per R-MAC grid, as extraction
    batches images of one size); ``where`` (N, 2) gives each image's (group, row).
    """

    groups: list[CachedGroup]
    where: torch.Tensor

    def __len__(self) -> int:
        return int(self.where.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor size D."""
        return int(self.groups[0].xhat.shape[-1])

    def regions(self, i: int) -> int:
        """Region count of image ``i``."""
        return int(self.groups[int(self.where[i, 0])].xhat.shape[1])


def _rows(t: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(t.unbind(0)) if isinstance(t, torch.Tensor) else list(t)


def cache_regions(
    x: torch.Tensor | Sequence[torch.Tensor],
    k: torch.Tensor | Sequence[torch.Tensor],
    g: torch.Tensor | Sequence[torch.Tensor],
    whitening: PCAWhitening | None,
) -> RegionCache:
    """Whiten and normalise the regions of N images once (``descriptor.whiten_regions``).

    Parameters
    ----------
    x, k:
        Per image, the raw max-pooled (R_i, C) and average-pooled (R_i, C) regional vectors
        (a list, or one (N, R, C) tensor), as ``descriptor.pool_regions`` gives them at the
        extraction's image size and levels.
    g:
        Per image, the global average pool (C,) (a list, or an (N, C) tensor).
    whitening:
        The frozen PCA-whitening (``None``: L2 only, as the head without whitening).
    """
    xs, ks, gs = _rows(x), _rows(k), _rows(g)
    if not (len(xs) == len(ks) == len(gs)) or not xs:
        raise ValueError(f"cache_regions: {len(xs)} x, {len(ks)} k and {len(gs)} g per image")
    by_r: dict[int, list[int]] = {}
    for i, (xi, ki) in enumerate(zip(xs, ks, strict=True)):
        if xi.dim() != 2 or xi.shape != ki.shape:
            raise ValueError(f"cache_regions: image {i}: x {tuple(xi.shape)}, k {tuple(ki.shape)}")
        by_r.setdefault(int(xi.shape[0]), []).append(i)
    where = torch.empty(len(xs), 2, dtype=torch.long)
    groups = []
    with torch.no_grad():
        for gi, members in enumerate(by_r.values()):
            idx = torch.tensor(members, dtype=torch.long)
            xhat = whiten_regions(torch.stack([xs[i] for i in members]).float(), whitening)
            kk = torch.stack([ks[i] for i in members]).float()
            gg = torch.stack([gs[i].reshape(-1) for i in members]).float()
            groups.append(CachedGroup(idx, xhat.contiguous(), kk, gg))
            where[idx, 0] = gi
            where[idx, 1] = torch.arange(len(members))
    return RegionCache(groups, where)


def _per_group(cache: RegionCache, indices: torch.Tensor):
    """(group, positions in ``indices``, rows in the group) for each group ``indices`` touch."""
    gid, row = cache.where[indices, 0], cache.where[indices, 1]
    for gi in torch.unique(gid).tolist():
        sel = (gid == gi).nonzero().squeeze(1)
        yield cache.groups[gi], sel, row[sel]


def _as_indices(cache: RegionCache, indices: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if indices is None:
        return torch.arange(len(cache))
    return torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)


def describe_cached(
    cache: RegionCache,
    attention: nn.Module | None,
    indices: Sequence[int] | torch.Tensor | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Descriptors (n, D) of the cached images ``indices`` (default all, in order):
    ``weighted_l2_mean(xhat, attention_weights(attention, k, g))``, the head's computation.

    Gradients flow to the attention's parameters unless under ``torch.no_grad``. ``chunk``
    bounds the images gathered at once (a 20,000-image pool at 70 x 2048 would otherwise copy
    11 GB).
    """
    idx = _as_indices(cache, indices)
    parts, order = [], []
    for s in range(0, max(len(idx), 1), chunk):
        for grp, sel, rows in _per_group(cache, idx[s : s + chunk]):
            alpha = attention_weights(attention, grp.k[rows], grp.g[rows])
            parts.append(weighted_l2_mean(grp.xhat[rows], alpha))
            order.append(sel + s)
    if not parts:
        return torch.empty(0, cache.dim)
    out = torch.cat(parts)
    return out[torch.argsort(torch.cat(order))]


@torch.no_grad()
def cached_alpha(
    cache: RegionCache,
    attention: nn.Module | None,
    indices: Sequence[int] | torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """alpha (R_i,) of each cached image ``indices`` (default all); all 1 for ``None``."""
    idx = _as_indices(cache, indices)
    out: list[torch.Tensor | None] = [None] * len(idx)
    for grp, sel, rows in _per_group(cache, idx):
        alpha = attention_weights(attention, grp.k[rows], grp.g[rows])
        if alpha is None:
            alpha = torch.ones(len(rows), grp.xhat.shape[1])
        for j, a in zip(sel.tolist(), alpha.cpu(), strict=True):
            out[j] = a
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------- alpha = 1
def softplus_preimage_of_one(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value b in ``dtype`` with ``F.softplus(b) == 1`` exactly: log(e - 1), moved by
    single steps of the dtype's spacing until softplus rounds to 1."""
    b = torch.tensor(math.log(math.expm1(1.0)), dtype=dtype)
    one = torch.ones((), dtype=dtype)
    for _ in range(256):
        v = F.softplus(b)
        if v == one:
            return b
        b = torch.nextafter(b, b - 1 if v > one else b + 1)
    raise RuntimeError(f"no {dtype} value has softplus exactly 1")


@torch.no_grad()
def init_alpha_one(attention: RegionalAttention) -> RegionalAttention:
    """Set ``attention`` (in place) so that alpha = 1 exactly for every region of every image:
    training starts from R-MAC, and selection on validation can only keep R-MAC or better.

    alpha = softplus(W2 act(W1 z + b1) + b2) (``attention.attention_scores``). W1 = 0 makes the
    hidden layer independent of z, and b2 = ``softplus_preimage_of_one`` gives alpha = 1:

    - tanh (default): b1 = 0, so the hidden layer is exactly 0 and W2 keeps its random
      initialisation; the gradient reaching W1 (through W2) then differs between regions from
      the first step;
    - softplus: the hidden layer is softplus(b1) > 0, so W2 = 0 is needed for an exact 1; W1
      receives gradient from the second step on.
    """
    p, q = attention.conv_att_1, attention.conv_att_2
    p.weight.zero_()
    if attention.activation == "tanh":
        p.bias.zero_()
    else:
        q.weight.zero_()
    q.bias.fill_(softplus_preimage_of_one(q.bias.dtype).item())
    return attention
