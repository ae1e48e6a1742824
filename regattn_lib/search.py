"""Exact cosine nearest-neighbour search, returning ranks in the field's layout."""

from __future__ import annotations

import numpy as np
import torch


def cosine_ranks(
    query_vecs: np.ndarray | torch.Tensor,
    db_vecs: np.ndarray | torch.Tensor,
    topk: int | None = None,
    chunk: int = 65536,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Rank the database for each query by decreasing dot product.

    Parameters
    ----------
    query_vecs, db_vecs:
        L2-normalised row vectors (Q, D) and (N, D).
    topk:
        Keep only the best ``topk`` per query (``None``: the full ranking, as ``compute_map``
        needs). With a large database a top-k keeps memory at O(Q * topk).
    chunk:
        Database rows scored per matrix product, so a 1M database never needs a (Q, N) float
        matrix per product beyond ``chunk`` columns.
    device:
        Where to compute (default: the queries' device).

    Returns ``ranks`` of shape (N or topk, Q): column q holds database indices, best first.
    Ties are broken by the lower index (stable).
    """
    q = torch.as_tensor(query_vecs)
    dev = torch.device(device) if device is not None else q.device
    q = q.to(dev, torch.float32)
    db = torch.as_tensor(db_vecs)
    n = db.shape[0]
    if topk is None:
        sims = torch.cat(
            [q @ db[s : s + chunk].to(dev, torch.float32).T for s in range(0, n, chunk)], dim=1
        )
        order = torch.argsort(sims, dim=1, descending=True, stable=True)
        return order.T.cpu().numpy()
    k = min(topk, n)
    best_s = torch.full((q.shape[0], 0), float("-inf"), device=dev)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=dev)
    for s in range(0, n, chunk):
        block = q @ db[s : s + chunk].to(dev, torch.float32).T
        idx = torch.arange(s, s + block.shape[1], device=dev).expand(q.shape[0], -1)
        cand_s = torch.cat([best_s, block], 1)
        cand_i = torch.cat([best_i, idx], 1)
        # Stable order by (-score, index): sort by index first, then stable by score.
        o = torch.argsort(cand_i, dim=1)
        cand_s, cand_i = cand_s.gather(1, o), cand_i.gather(1, o)
        o = torch.argsort(cand_s, dim=1, descending=True, stable=True)[:, :k]
        best_s, best_i = cand_s.gather(1, o), cand_i.gather(1, o)
    return best_i.T.cpu().numpy()
