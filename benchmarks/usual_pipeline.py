"""The usual pipeline: the paper's descriptor computed one image and one region at a time.

An independent, deliberately plain implementation written from the paper and the authors'
test script (``Test_OxfordParis.py``), sharing no descriptor code with ``regattn_lib``: the
R-MAC grid is the authors' loop transcribed, each region's cells are rounded as Caffe's RoI
pooling does, the attention is computed from the raw state-dict tensors, and whitening and
aggregation are written out. It is the one reference implementation of the project:

- the tests compare the library's batched path against it and pin its output on a fixed
  2048-channel feature map with the authors' weights (``tests/test_reference_descriptor.py``);
- ``benchmarks/extract_throughput.py`` times it as the baseline the engine is measured against.

Speed is not a goal here; being obviously right is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


# ----------------------------------------------------------------------------- regions
def authors_rmac_regions(height: int, width: int, levels: int) -> np.ndarray:
    """The R-MAC grid as the authors' (Tolias/Gordo) loop computes it: (R, 4) (x, y, w, h)."""
    ovr = 0.4
    steps = np.array([2, 3, 4, 5, 6, 7], dtype=np.float64)
    w = min(height, width)
    b = (max(height, width) - w) / (steps - 1)
    idx = np.argmin(np.abs(((w**2 - w * b) / w**2) - ovr)) + 1
    wd = idx if height < width else 0
    hd = idx if height > width else 0
    out = []
    for lev in range(1, levels + 1):
        wl = math.floor(2 * w / (lev + 1))
        wl2 = math.floor(wl / 2 - 1)
        bw = (width - wl) / (lev + wd - 1) if lev + wd - 1 > 0 else 0
        cen_w = [math.floor(wl2 + bw * i) - wl2 for i in range(lev + wd)]
        bh = (height - wl) / (lev + hd - 1) if lev + hd - 1 > 0 else 0
        cen_h = [math.floor(wl2 + bh * i) - wl2 for i in range(lev + hd)]
        for y in cen_h:
            for x in cen_w:
                if x + wl > width:
                    x -= x + wl - width
                if y + wl > height:
                    y -= y + wl - height
                out.append([x, y, wl, wl])
    return np.array(out, dtype=np.int64)


# ----------------------------------------------------------------------------- pooling
def roi_cell(v: float, limit: int) -> int:
    """A pixel coordinate / stride to its feature cell: rounded half away from zero (Caffe's
    RoI pooling), clipped to the map."""
    return min(max(int(math.floor(v + 0.5)), 0), limit - 1)


def pool_region_loop(
    fmap: torch.Tensor, regions: np.ndarray, stride: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop over regions of one feature map (C, h, w): (R, C) maxima x_i and (R, C) means k_i.

    A region (x, y, w, h) covers cells round(x / s) .. round((x + w - 1) / s), at least one.
    """
    _, fh, fw = fmap.shape
    maxs, avgs = [], []
    for x, y, w, h in np.asarray(regions).tolist():
        c0, r0 = roi_cell(x / stride, fw), roi_cell(y / stride, fh)
        c1 = max(roi_cell((x + w - 1) / stride, fw), c0)
        r1 = max(roi_cell((y + h - 1) / stride, fh), r0)
        cells = fmap[:, r0 : r1 + 1, c0 : c1 + 1]
        maxs.append(cells.amax(dim=(1, 2)))
        avgs.append(cells.mean(dim=(1, 2)))
    return torch.stack(maxs), torch.stack(avgs)


# ----------------------------------------------------------------------------- attention
def attention_alpha(
    k: torch.Tensor,
    g: torch.Tensor,
    state: Mapping[str, torch.Tensor],
    context: bool = True,
    activation: str = "tanh",
) -> torch.Tensor:
    """alpha_i = softplus(W_c act(W_r z_i + b_r) + b_c), z_i = [k_i ; g] (context) or k_i.

    ``k`` (R, C) regional averages and ``g`` (C,) the global average of one image; ``state``
    holds the authors' keys (``conv_att_1.weight`` (64, Z, 1) ...), used as plain matrices.
    """
    w1 = state["conv_att_1.weight"][:, :, 0].float()
    b1 = state["conv_att_1.bias"].float()
    w2 = state["conv_att_2.weight"][0, :, 0].float()
    b2 = state["conv_att_2.bias"][0].float()
    act = torch.tanh if activation == "tanh" else F.softplus
    # one row per region, as the authors' 1x1 Conv1d sees them
    z = torch.cat([k, g[None].expand(len(k), -1)], dim=1) if context else k
    return F.softplus(act(z @ w1.T + b1) @ w2 + b2)


# ----------------------------------------------------------------------------- aggregation
def whiten_and_aggregate(
    maxs: torch.Tensor,
    alpha: torch.Tensor | None,
    mean: torch.Tensor | None,
    projection: torch.Tensor | None,
) -> torch.Tensor:
    """L2( (1/R) sum_i alpha_i * L2( P (x_i - mu) ) ) for one image's (R, C) maxima."""
    x = maxs.float()
    if projection is not None:
        x = (x - mean.to(x.device)) @ projection.to(x.device).T
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    w = torch.ones(len(x), device=x.device) if alpha is None else alpha
    f = (w[:, None] * x).sum(0) / len(x)
    return f / f.norm().clamp_min(1e-8)


def describe_feature_map(
    fmap: torch.Tensor,
    regions: np.ndarray,
    attentions: Mapping[str, Mapping[str, Any] | None],
    mean: torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    stride: int = 32,
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    """One image's feature map (C, h, w) -> label -> (alpha (R,) or ``None``, descriptor (D,)).

    The regions are pooled once for all methods. ``attentions``: label -> ``None`` (R-MAC) or
    ``{"state": state dict, "context": bool, "activation": "tanh" | "softplus"}``.
    """
    fmap = fmap.float()
    maxs, avgs = pool_region_loop(fmap, regions, stride)
    g = fmap.mean(dim=(1, 2))
    out = {}
    for label, spec in attentions.items():
        alpha = None
        if spec is not None:
            context = spec.get("context", True)
            alpha = attention_alpha(avgs, g, spec["state"], context, spec.get("activation", "tanh"))
        out[label] = (alpha, whiten_and_aggregate(maxs, alpha, mean, projection))
    return out


def attention_spec(module: torch.nn.Module | None) -> dict[str, Any] | None:
    """A ``RegionalAttention`` as the plain description ``describe_feature_map`` takes."""
    if module is None:
        return None
    return {
        "state": {k: v.detach() for k, v in module.state_dict().items()},
        "context": bool(module.context),
        "activation": str(module.activation),
    }


# ----------------------------------------------------------------------------- images
def read_image(path: Path, longest: int | None, bbx: Sequence[float] | None) -> np.ndarray:
    """PIL decode, resize the longest side to ``longest``, crop a query to its box.

    The resize is bilinear without antialiasing, as the authors' ``cv2.resize`` (INTER_LINEAR);
    PIL's own bilinear antialiases when shrinking. The box is the authors' crop: a float32 box
    times S / max(H, W), ``np.round``, exclusive end.
    """
    with Image.open(path) as im:
        rgb = np.array(im.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = 1.0
    if longest is not None and max(h, w) != longest:
        s = longest / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False)
        rgb = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        scale = s
    if bbx is not None:
        x1, y1, x2, y2 = np.round(np.asarray(bbx, dtype=np.float32) * np.float32(scale))
        rh, rw = rgb.shape[:2]
        rgb = rgb[max(0, int(y1)) : min(rh, int(y2)), max(0, int(x1)) : min(rw, int(x2))]
    return np.ascontiguousarray(rgb)


@torch.no_grad()
def usual_descriptors(
    paths: Sequence[Path],
    bbxs: Sequence[Sequence[float]] | None,
    backbone: torch.nn.Module,
    attentions: Mapping[str, torch.nn.Module | None],
    whitening: Any,
    image_size: int | None,
    levels: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Every method's descriptors, one image at a time in fp32, from one backbone pass each.

    ``attentions``: label -> ``RegionalAttention`` or ``None`` (R-MAC); ``whitening``: an object
    with ``mean`` and ``projection`` (or ``None``).
    """
    specs = {label: attention_spec(att) for label, att in attentions.items()}
    mean = None if whitening is None else whitening.mean
    projection = None if whitening is None else whitening.projection
    out: dict[str, list[torch.Tensor]] = {k: [] for k in attentions}
    for i, path in enumerate(paths):
        img = read_image(path, image_size, None if bbxs is None else bbxs[i])
        x = torch.from_numpy(img).permute(2, 0, 1)[None].to(device)
        fmap = backbone(backbone.preprocess(x)).float()[0]
        regions = authors_rmac_regions(img.shape[0], img.shape[1], levels)
        described = describe_feature_map(fmap, regions, specs, mean, projection, backbone.stride)
        for label, (_, desc) in described.items():
            out[label].append(desc.cpu())
    return {k: torch.stack(v) for k, v in out.items()}
