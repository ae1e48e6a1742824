"""Exact cosine nearest-neighbour search, returning ranks in the field's layout.

Two backends: ``"torch"`` (default; chunked matrix products, stable tie-break by index) and
``"faiss"`` (``IndexFlatIP``, exact inner product; GPU FAISS where installed). The optional
``db_dtype`` scores in a reduced precision (fp16 on a GPU halves the database's memory).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BACKENDS = ("torch", "faiss")


def cosine_ranks(
    query_vecs: np.ndarray | torch.Tensor,
    db_vecs: np.ndarray | torch.Tensor,
    topk: int | None = None,
    chunk: int = 65536,
    device: str | torch.device | None = None,
    backend: str = "torch",
    db_dtype: torch.dtype | None = None,
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
        Where to compute (default: the queries' device). With ``backend="faiss"`` a CUDA
        device selects GPU FAISS (raises if this FAISS build has no GPU support).
    backend:
        ``"torch"`` (default) or ``"faiss"`` (``faiss_ranks``; ties in arbitrary order).
    db_dtype:
        ``None`` (default): scores in fp32, database chunks converted to fp32 on ``device``.
        ``torch.float16``/``torch.bfloat16``: queries and chunks are multiplied in that dtype
        (meant for a GPU, where a resident fp16 database takes half the memory: 1M x 2048 is
        4 GB instead of 8); scores are then accurate to about 1e-3, so near-ties may swap.
        Torch backend only.

    Returns ``ranks`` of shape (N or topk, Q): column q holds database indices, best first.
    Ties are broken by the lower index (stable) with the torch backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "faiss":
        if db_dtype is not None:
            raise ValueError("db_dtype is a torch-backend option; FAISS IndexFlatIP is fp32")
        use_gpu = device is not None and torch.device(device).type == "cuda"
        return faiss_ranks(query_vecs, db_vecs, topk, use_gpu=use_gpu)
    q = torch.as_tensor(query_vecs)
    dev = torch.device(device) if device is not None else q.device
    dtype = torch.float32 if db_dtype is None else db_dtype
    q = q.to(dev, dtype)
    db = torch.as_tensor(db_vecs)
    n = db.shape[0]

    def scores(s: int) -> torch.Tensor:
        # Sorting always runs on fp32 scores, whatever precision the product used.
        return (q @ db[s : s + chunk].to(dev, dtype).T).float()

    if topk is None:
        sims = torch.cat([scores(s) for s in range(0, n, chunk)], dim=1)
        order = torch.argsort(sims, dim=1, descending=True, stable=True)
        return order.T.cpu().numpy()
    k = min(topk, n)
    best_s = torch.full((q.shape[0], 0), float("-inf"), device=dev)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=dev)
    for s in range(0, n, chunk):
        block_s, block_i = _block_topk(scores(s), k)
        # Chunks come in index order and the best so far precede the block, so a stable sort
        # by score alone keeps ties in index order: the order is by (-score, index).
        cand_s = torch.cat([best_s, block_s], 1)
        cand_i = torch.cat([best_i, block_i + s], 1)
        o = torch.argsort(cand_s, dim=1, descending=True, stable=True)[:, :k]
        best_s, best_i = cand_s.gather(1, o), cand_i.gather(1, o)
    return best_i.T.cpu().numpy()


def _block_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best columns of each row by (-score, column), as (scores, columns), both in
    column order.

    ``torch.topk`` finds the k-th score; among columns tied with it, the lowest-numbered are
    kept, so the result is exactly what a stable sort would give, without sorting the block.
    """
    k = min(k, block.shape[1])
    kth = block.topk(k, dim=1).values[:, -1:]
    above, tied = block > kth, block == kth
    room = k - above.sum(1, keepdim=True)
    keep = above | (tied & (tied.cumsum(1) <= room))
    cols = keep.nonzero()[:, 1].reshape(block.shape[0], k)  # row-major: columns ascending
    return block.gather(1, cols), cols


def faiss_available(gpu: bool = False) -> bool:
    """Whether ``faiss`` imports (and, with ``gpu=True``, has GPU support and a GPU)."""
    try:
        import faiss
    except ImportError:
        return False
    if not gpu:
        return True
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _float32_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def faiss_index(
    db_vecs: np.ndarray | torch.Tensor, use_gpu: bool = False, chunk: int = 65536
) -> Any:
    """An exact inner-product FAISS index (``IndexFlatIP``) holding ``db_vecs`` (N, D).

    Parameters: ``use_gpu`` (default ``False``) moves the index to GPU 0 (needs a GPU build of
    FAISS, e.g. the ``faiss-gpu`` packages); ``chunk`` rows are converted and added at a time,
    so a fp16 or torch database needs no full fp32 copy besides the index's own.
    """
    import faiss

    index = faiss.IndexFlatIP(int(db_vecs.shape[1]))
    if use_gpu:
        if not faiss_available(gpu=True):
            raise RuntimeError("this FAISS build has no GPU support (install faiss-gpu)")
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    for s in range(0, int(db_vecs.shape[0]), chunk):
        index.add(_float32_rows(db_vecs[s : s + chunk]))
    return index


def faiss_ranks(
    query_vecs: np.ndarray | torch.Tensor,
    db_or_index: np.ndarray | torch.Tensor | Any,
    topk: int | None = None,
    use_gpu: bool = False,
) -> np.ndarray:
    """``cosine_ranks`` with FAISS: exact inner-product search, same (topk or N, Q) layout.

    ``db_or_index`` is the database (N, D), indexed on the fly, or an index from
    ``faiss_index`` (reuse it across calls: adding 1M vectors costs seconds). ``topk=None``
    returns the full ranking. Unlike the torch backend, FAISS does not order ties by index.
    GPU FAISS limits ``topk`` to 2048.
    """
    index = db_or_index
    if isinstance(db_or_index, (np.ndarray, torch.Tensor)):
        index = faiss_index(db_or_index, use_gpu=use_gpu)
    n = int(index.ntotal)
    k = n if topk is None else min(int(topk), n)
    _, ids = index.search(_float32_rows(query_vecs), k)
    return ids.T.astype(np.int64)
