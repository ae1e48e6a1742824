"""PCA-whitening learned as the authors did: on raw regional max-pooled vectors.

No L2 before the PCA; the data are centred and projected onto the principal components
divided by the square root of their explained variance (scikit-learn's ``PCA(whiten=True)``,
variance with ``ddof=1``). Applied to a vector x as ``P (x - mu)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io_utils import atomic_torch_save


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
            return cls(d["mean"], d["projection"], d["eigenvalues"], dict(d.get("meta", {})))
        except Exception as e:
            raise ValueError(f"{path}: not a readable whitening file: {e}") from e


def learn_pca_whitening(
    vectors: torch.Tensor | np.ndarray,
    n_components: int | None = None,
    eps: float = 1e-12,
    meta: dict[str, Any] | None = None,
) -> PCAWhitening:
    """Learn PCA-whitening from row vectors (M, C).

    Parameters
    ----------
    vectors:
        Raw regional max-pooled vectors, one per row (no L2 normalisation: authors' setting).
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
    x = torch.as_tensor(vectors).detach().to("cpu", torch.float64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"learn_pca_whitening needs (M >= 2, C) vectors, got {tuple(x.shape)}")
    m, c = x.shape
    d = c if n_components is None else int(n_components)
    if not 1 <= d <= c:
        raise ValueError(f"n_components must be in 1..{c}, got {n_components}")
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (m - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    order = torch.argsort(eigvals, descending=True)[:d]
    eigvals = eigvals[order].clamp_min(eps)
    comps = eigvecs[:, order].T  # (D, C)
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * sign
    projection = comps / eigvals.sqrt()[:, None]
    info = {"n_vectors": m, "in_dim": c, "out_dim": d}
    info.update(meta or {})
    return PCAWhitening(mean.float(), projection.float(), eigvals.float(), info)
