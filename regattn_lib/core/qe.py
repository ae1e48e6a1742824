"""Query expansion: average QE (the authors' setting, top-5) and alpha-QE."""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).float() if isinstance(x, np.ndarray) else x.float()


def average_query_expansion(
    query_vecs: np.ndarray | torch.Tensor,
    db_vecs: np.ndarray | torch.Tensor,
    k: int = 5,
    alpha: float | None = None,
) -> np.ndarray | torch.Tensor:
    """Expand queries with their top-``k`` database neighbours (cosine similarity).

    ``alpha=None``: average QE, q' = L2(q + sum of the top-k database vectors) (authors'
    setting, k = 5). ``alpha`` > 0: alpha-QE, q' = L2(q + sum_j s_j^alpha x_j) with s_j the
    (clamped non-negative) similarity of the j-th neighbour. Row vectors (Q, D) and (N, D),
    L2-normalised; returns (Q, D) of the same type as ``query_vecs``.
    """
    q = _as_tensor(query_vecs)
    db = _as_tensor(db_vecs).to(q.device)
    if q.dim() != 2 or db.dim() != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(
            f"query (Q, D) and db (N, D) expected, got {tuple(q.shape)}, {tuple(db.shape)}"
        )
    k = min(k, db.shape[0])
    sims = q @ db.T
    top_s, top_i = sims.topk(k, dim=1)
    neigh = db[top_i]  # (Q, k, D)
    if alpha is None:
        weights = torch.ones_like(top_s)
    else:
        weights = top_s.clamp_min(0) ** alpha
    expanded = q + (weights[..., None] * neigh).sum(1)
    expanded = expanded / expanded.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return expanded.cpu().numpy() if isinstance(query_vecs, np.ndarray) else expanded
