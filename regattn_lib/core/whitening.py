"""PCA-whitening learned as the authors did: on raw regional max-pooled vectors.

No L2 before the PCA; the data are centred and projected onto the principal components
divided by the square root of their explained variance (scikit-learn's ``PCA(whiten=True)``,
variance with ``ddof=1``). Applied to a vector x as ``P (x - mu)``.

The statistics stream: ``CovarianceAccumulator`` keeps the count, mean and scatter matrix in
fp64 and merges batches with Chan et al.'s pairwise update, so learning from 2.4M x 2048
regional vectors (SfM-120k at L = 3, 20 GB in fp64 if stacked) needs two C x C fp64 matrices
and one block of rows, whatever the number of vectors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regattn_lib.runtime.atomic import atomic_torch_save


@dataclass
class PCAWhitening:
    """A learned whitening: ``apply(x) = (x - mean) @ projection.T``.

    Attributes: ``mean`` (C,), ``projection`` (D, C) with D <= C, ``eigenvalues`` (D,) in
    decreasing order, and ``meta`` (backbone, levels, image size, number of vectors...).
    """

    mean: torch.Tensor
    projection: torch.Tensor
    eigenvalues: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten row vectors (..., C) -> (..., D), in fp32 on ``x``'s device."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"whitening expects {self.in_dim}-d vectors, got {x.shape[-1]} "
                f"(learned with {self.meta.get('backbone', 'another backbone')})"
            )
        mean = self.mean.to(x.device, torch.float32)
        proj = self.projection.to(x.device, torch.float32)
        return (x.float() - mean) @ proj.T

    def truncate(self, n_components: int) -> PCAWhitening:
        """The leading ``n_components`` (capped by the data's rank, M - 1): the same whitening
        that ``learn_pca_whitening(..., n_components)`` would learn from the same vectors."""
        rank = int(self.meta.get("n_vectors", self.out_dim + 1)) - 1
        d = max(1, min(int(n_components), self.out_dim, rank))
        meta = {**self.meta, "out_dim": d}
        return PCAWhitening(self.mean, self.projection[:d], self.eigenvalues[:d], meta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.cpu(),
            "projection": self.projection.cpu(),
            "eigenvalues": self.eigenvalues.cpu(),
            "meta": dict(self.meta),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (torch file, readable with ``weights_only=True``)."""
        return atomic_torch_save(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAWhitening:
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            # fp32 in memory whatever the file stores (the shipped demo whitening is fp16)
            tensors = (d["mean"].float(), d["projection"].float(), d["eigenvalues"].float())
            return cls(*tensors, dict(d.get("meta", {})))
        except Exception as e:
            raise ValueError(f"{path}: not a readable whitening file: {e}") from e


class CovarianceAccumulator:
    """Count, mean and scatter matrix of row vectors, in fp64, fed batch by batch.

    ``update(batch)`` takes (B, C) tensors or arrays of any float dtype. Rows are buffered
    until ``block_rows`` are waiting, then merged as one block (one C x C matrix product per
    block instead of one per small batch): with block mean m_b, scatter S_b = (X_b - m_b)^T
    (X_b - m_b) and delta = m_b - m, the totals become n + n_b, m + delta * n_b / (n + n_b)
    and S + S_b + delta delta^T * n n_b / (n + n_b) (Chan, Golub and LeVeque 1979). Centring
    each block first keeps the fp64 sums free of the cancellation that raw sums of outer
    products suffer when the mean is large against the spread.

    ``flush()`` merges the waiting rows (reading ``mean``, ``scatter`` or the state flushes);
    the pipeline flushes after each group of images, so that a resumed pass merges exactly the
    same blocks as an uninterrupted one. Memory: the C x C scatter (32 MB for C = 2048) plus
    at most ``block_rows`` buffered rows in fp64 (64 MB at the default 4096 x 2048).
    """

    def __init__(self, block_rows: int = 4096) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.block_rows = int(block_rows)
        self._n = 0  # rows merged into _mean and _scatter
        self._mean: torch.Tensor | None = None  # (C,) fp64
        self._scatter: torch.Tensor | None = None  # (C, C) fp64, sum of centred outer products
        self._dim: int | None = None
        self._buf: torch.Tensor | None = None  # (block_rows, C) fp64, filled then merged
        self._fill = 0

    @property
    def n(self) -> int:
        """Rows added so far (merged and buffered)."""
        return self._n + self._fill

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def mean(self) -> torch.Tensor | None:
        """(C,) fp64 mean of every row added (``None`` before the first)."""
        self.flush()
        return self._mean

    @property
    def scatter(self) -> torch.Tensor | None:
        """(C, C) fp64 sum of (x - mean)(x - mean)^T over every row added."""
        self.flush()
        return self._scatter

    def update(self, batch: torch.Tensor | np.ndarray) -> None:
        """Add the rows of a (B, C) batch (B may be 0)."""
        x = torch.as_tensor(batch).detach()
        if x.dim() != 2:
            raise ValueError(f"expected a (B, C) batch of row vectors, got shape {tuple(x.shape)}")
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"batch has {x.shape[1]}-d rows, earlier batches {self._dim}-d")
        if x.shape[0] == 0:
            return
        self._dim = int(x.shape[1])
        if self._buf is None:
            # one preallocated block: no list of pieces, no concatenation, centred in place
            self._buf = torch.empty(self.block_rows, self._dim, dtype=torch.float64)
        s = 0
        while s < x.shape[0]:
            take = min(self.block_rows - self._fill, x.shape[0] - s)
            self._buf[self._fill : self._fill + take] = x[s : s + take]  # converts to fp64
            self._fill += take
            s += take
            if self._fill == self.block_rows:
                self.flush()

    def flush(self) -> None:
        """Merge the buffered rows into the totals."""
        if not self._fill:
            return
        block = self._buf[: self._fill]
        self._fill = 0
        mean_b = block.mean(0)
        block.sub_(mean_b)  # the buffer is ours: centre in place
        self._merge(block.shape[0], mean_b, block.T @ block)

    def _merge(self, n_b: int, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        if self._n == 0:
            self._n, self._mean, self._scatter = n_b, mean_b.clone(), scatter_b.clone()
            return
        n_a, n = self._n, self._n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._scatter.add_(scatter_b)  # in place: no third C x C matrix
        self._scatter.addr_(delta, delta, alpha=n_a * n_b / n)
        self._n = n

    def merge(self, other: CovarianceAccumulator) -> None:
        """Add another accumulator's vectors (both are flushed first)."""
        self.flush()
        other.flush()
        if other.n == 0:
            return
        if self._dim is not None and other.dim != self._dim:
            raise ValueError(f"cannot merge {other.dim}-d statistics into {self._dim}-d ones")
        self._dim = other.dim
        self._merge(other.n, other.mean, other.scatter)

    def covariance(self) -> torch.Tensor:
        """Sample covariance (ddof = 1), (C, C) fp64."""
        self.flush()
        if self._n < 2:
            raise ValueError(f"a covariance needs at least 2 vectors, got {self._n}")
        return self._scatter / (self._n - 1)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (pending rows flushed first); ``torch.save``-able."""
        self.flush()
        return {
            "n": self._n,
            "mean": self._mean,
            "scatter": self._scatter,
            "block_rows": self.block_rows,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CovarianceAccumulator:
        acc = cls(int(state.get("block_rows", 4096)))
        acc._n, acc._mean, acc._scatter = int(state["n"]), state["mean"], state["scatter"]
        acc._dim = None if acc._mean is None else int(acc._mean.shape[0])
        return acc


def accumulate(
    batches: Iterable[torch.Tensor | np.ndarray], block_rows: int = 4096
) -> CovarianceAccumulator:
    """A ``CovarianceAccumulator`` fed every (B, C) batch of ``batches``."""
    acc = CovarianceAccumulator(block_rows)
    for b in batches:
        acc.update(b)
    acc.flush()
    return acc


def learn_pca_whitening(
    vectors: torch.Tensor
    | np.ndarray
    | CovarianceAccumulator
    | Iterable[torch.Tensor | np.ndarray],
    n_components: int | None = None,
    eps: float = 1e-12,
    meta: dict[str, Any] | None = None,
) -> PCAWhitening:
    """Learn PCA-whitening from row vectors.

    Parameters
    ----------
    vectors:
        Raw regional max-pooled vectors (no L2 normalisation: authors' setting): one (M, C)
        tensor or array; or an iterable of (B, C) batches (tensors or arrays, any sizes),
        streamed through a ``CovarianceAccumulator`` so that only C x C statistics are held;
        or such an accumulator, already fed. All give the same whitening up to fp64 rounding.
    n_components:
        Dimensions kept, ``None`` keeps all C (authors: 2048 of 2048). Fewer dimensions drop
        the smallest-variance directions, which are noise when M is not much larger than C.
    eps:
        Floor on the eigenvalues before dividing by their square root.
    meta:
        Stored with the result (what produced it).

    Deterministic: fp64 eigendecomposition on the CPU, each component's sign fixed so that its
    largest-magnitude entry is positive.
    """
    if isinstance(vectors, torch.Tensor | np.ndarray):
        x = torch.as_tensor(vectors).detach().to("cpu", torch.float64)
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"learn_pca_whitening needs (M >= 2, C) vectors, got {tuple(x.shape)}")
        # One block: the same arithmetic as before streaming existed, hence the same results.
        acc = CovarianceAccumulator(block_rows=max(1, x.shape[0]))
        acc.update(x)
        del x
        acc.flush()
        acc._buf = None  # the stacked copy is no longer needed
    elif isinstance(vectors, CovarianceAccumulator):
        acc = vectors
    else:
        acc = accumulate(vectors)
    acc.flush()
    if acc.n < 2:
        raise ValueError(f"learn_pca_whitening needs at least 2 vectors, got {acc.n}")
    m, c = acc.n, int(acc.dim)
    d = c if n_components is None else int(n_components)
    if not 1 <= d <= c:
        raise ValueError(f"n_components must be in 1..{c}, got {n_components}")
    mean = acc.mean
    eigvals, eigvecs = torch.linalg.eigh(acc.covariance())
    order = torch.argsort(eigvals, descending=True)[:d]
    eigvals = eigvals[order].clamp_min(eps)
    comps = eigvecs[:, order].T  # (D, C), a copy
    del eigvecs
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    # in place: at C = 2048 every extra copy is 32 MB
    projection = comps.mul_(sign).div_(eigvals.sqrt()[:, None])
    info = {"n_vectors": m, "in_dim": c, "out_dim": d}
    info.update(meta or {})
    return PCAWhitening(mean.float(), projection.float(), eigvals.float(), info)


@dataclass
class CrosswiseWhitening:
    """One ``PCAWhitening`` per evaluated dataset, each learned on another set's images
    (``whitening_set="crosswise"``: Oxford5k whitened on Paris6k and the reverse, the R-MAC
    paper's convention). ``by_dataset``: evaluated set -> its whitening; ``partners``:
    evaluated set -> the set it was learned on.

    It is never applied as such: ``pipeline.describe`` (and ``pipeline.heads_for_dataset``)
    replace it in each head by the evaluated set's whitening, so no test set is ever whitened
    with statistics of its own images.
    """

    by_dataset: dict[str, PCAWhitening]
    partners: dict[str, str]

    def for_dataset(self, name: str) -> PCAWhitening:
        try:
            return self.by_dataset[name]
        except KeyError:
            raise KeyError(
                f"crosswise whitening: no whitening for dataset {name!r} (whitening_partners "
                f"cover {sorted(self.by_dataset)})"
            ) from None

    @property
    def in_dim(self) -> int:
        return next(iter(self.by_dataset.values())).in_dim

    @property
    def out_dim(self) -> int:
        return min(w.out_dim for w in self.by_dataset.values())

    @property
    def meta(self) -> dict[str, Any]:
        """Per evaluated set: the set the whitening was learned on and its meta."""
        return {
            "set": "crosswise",
            "partners": dict(self.partners),
            "by_dataset": {k: dict(w.meta) for k, w in self.by_dataset.items()},
        }

    def truncate(self, n_components: int) -> CrosswiseWhitening:
        return CrosswiseWhitening(
            {k: w.truncate(n_components) for k, w in self.by_dataset.items()}, dict(self.partners)
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            "a crosswise whitening depends on the evaluated dataset: resolve it first with "
            "for_dataset(name) (pipeline.heads_for_dataset does so for heads)"
        )
