"""Global pooling baselines of the state-of-the-art table: MAC, SPoC, CroW and CAM.

Each is a pure function from a feature map (N, C, h, w) to raw (un-normalised, un-whitened)
global vectors (N, C); ``descriptor.l2_normalize`` and an optional whitening follow in the
extraction heads. R-MAC and the paper's method live in ``descriptor``.
"""

from __future__ import annotations

import torch

from regattn_lib.core.pooling import global_avg_pool, global_max_pool


def mac(feats: torch.Tensor) -> torch.Tensor:
    """MAC (Tolias et al. 2016): global max pooling."""
    return global_max_pool(feats)


def spoc(feats: torch.Tensor) -> torch.Tensor:
    """SPoC (Babenko & Lempitsky 2015) without the centre prior: global sum (mean) pooling."""
    return global_avg_pool(feats)


def crow(feats: torch.Tensor, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """CroW (Kalantidis et al. 2016): cross-dimensional weighted sum pooling.

    Spatial weights S = (S' / ||S'||_a)^(1/b) with S' the channel sum at each location
    (paper: a = b = 2); channel weights log(sum_k Q_k / (eps + Q_c)) with Q_c the share of
    non-zero locations of channel c.
    """
    x = feats.float()
    n, c = x.shape[:2]
    s = x.sum(1)  # (N, h, w)
    norm = s.flatten(1).norm(p=a, dim=1).clamp_min(eps)[:, None, None]
    spatial = (s / norm) ** (1.0 / b)
    pooled = (x * spatial[:, None]).sum((2, 3))
    q = (x > 0).float().flatten(2).mean(2)  # (N, C)
    channel = torch.log(q.sum(1, keepdim=True) / (eps + q))
    return pooled * channel


def cam(feats: torch.Tensor, fc_weight: torch.Tensor, top_classes: int = 32) -> torch.Tensor:
    """Class-weighted pooling (Jimenez et al. 2017, "CAM" in the paper's table).

    For each of the ``top_classes`` most probable ImageNet classes of the image, the class
    activation map relu(sum_c W[j, c] F_c), scaled to [0, 1], weights a sum pooling of the
    features; the per-class vectors are L2-normalised and summed. Needs the backbone's fc.
    """
    x = feats.float()
    w = fc_weight.to(x.device, torch.float32)  # (K, C)
    logits = global_avg_pool(x) @ w.T  # bias does not change the order
    top = logits.topk(min(top_classes, w.shape[0]), dim=1).indices  # (N, T)
    maps = torch.relu(torch.einsum("ntc,nchw->nthw", w[top], x))
    maps = maps / maps.flatten(2).amax(2).clamp_min(1e-6)[..., None, None]
    per_class = torch.einsum("nthw,nchw->ntc", maps, x)
    per_class = per_class / per_class.norm(dim=2, keepdim=True).clamp_min(1e-8)
    return per_class.sum(1)
