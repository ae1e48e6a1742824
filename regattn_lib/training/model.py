"""The classifier the attention trains in: frozen backbone -> R-MAC regions -> attention ->
mean -> frozen fc, and the choice of that fc (route (a): trained here; route (b): the backbone's).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import RegionalFeatures, describe, describe_pooled
from regattn_lib.training.checkpoint import load_trained_fc


def head_logits(
    x: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    attention: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    fc: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """logits = fc( mean_i alpha_i * x_i ) on raw pooled vectors (spec section 1, item 6): the
    descriptor's own path (``descriptor.describe_pooled``), its raw weighted mean under the fc.

    Parameters
    ----------
    x, k:
        Regional max- and average-pooled vectors (N, R, C).
    g:
        Global average pool (N, C).
    attention:
        Maps (k, g) to alpha (N, R); ``None`` means alpha = 1 (route (a)'s fc stage).
    fc:
        The classifier, C -> classes.
    """
    return fc(describe_pooled(RegionalFeatures(x, k, g), attention).weighted_mean)


class AttentionClassifier(nn.Module):
    """Frozen backbone -> R-MAC regions of the crop -> (attention) -> mean -> fc.

    Parameters
    ----------
    backbone:
        A frozen backbone (``preprocess``, ``features``, ``channels``, stride-32 map after ReLU).
    fc:
        ``nn.Linear(C, classes)``.
    attention:
        A ``RegionalAttention``; ``None`` gives alpha = 1 (default).
    levels:
        R-MAC levels of the crop (default 5).
    amp:
        Run the backbone under bf16 autocast on CUDA (default ``False``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        fc: nn.Linear,
        attention: RegionalAttention | None = None,
        levels: int = 5,
        amp: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = fc
        self.attention = attention
        self.levels = levels
        self.amp = amp

    @torch.no_grad()
    def pooled(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, S, S) -> fp32 (x (N, R, C), k (N, R, C), g (N, C)); no gradient."""
        device = next(self.backbone.parameters()).device
        use_amp = self.amp and device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext():
            feats = self.backbone.features(images.to(device))
        # the descriptor's own regions and pooling: training sees what extraction sees
        stride = getattr(self.backbone, "stride", 32)
        ((_, out),) = describe(feats.float(), images, levels=self.levels, stride=stride)
        p = out.features
        return p.max_pooled, p.avg_pooled, p.global_avg

    def classify(self, x: torch.Tensor, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Pooled features -> logits (the trainable part)."""
        return head_logits(x, k, g, self.attention, self.fc)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 crops (N, 3, S, S) -> logits (N, classes)."""
        return self.classify(*self.pooled(images))


def no_fc_message(backbone_name: str) -> str:
    return (
        f"backbone {backbone_name!r} has no ImageNet fc and no fc was given: the Caffe "
        "ResNet-101 has no fc: train one first with stage='fc' (train_fc, route (a)) and pass "
        "it (or its fc.pt) as fc, or load the authors' weights with load_official_attention"
    )


def resolve_fc(
    backbone: nn.Module,
    fc: nn.Linear | str | os.PathLike | None,
    n_classes: int,
    classes: Sequence[str] | None = None,
) -> nn.Linear:
    """The frozen fc for the attention stage, as a private copy.

    Parameters
    ----------
    backbone:
        Its ``fc`` (an ImageNet fc1000) is used when ``fc`` is ``None`` (route (b)).
    fc:
        An ``nn.Linear``, a path to a ``fc.pt`` from ``train_fc``, or ``None``.
    n_classes:
        Labels must lie in ``range(n_classes)``; the fc needs at least as many outputs.
    classes:
        Class names of the labels (default ``None``); when given, their number must equal the
        fc's outputs (ImageNet: the 1000 sorted WordNet ids).
    """
    name = getattr(backbone, "name", type(backbone).__name__)
    if isinstance(fc, (str, os.PathLike)):
        fc = load_trained_fc(fc)
    if fc is None:
        fc = getattr(backbone, "fc", None)
        if fc is None:
            raise ValueError(no_fc_message(name))
    channels = getattr(backbone, "channels", fc.in_features)
    if fc.in_features != channels:
        raise ValueError(f"fc takes {fc.in_features} inputs, backbone {name!r} gives {channels}")
    if fc.out_features < n_classes or (classes is not None and len(classes) != fc.out_features):
        got = len(classes) if classes is not None else n_classes
        raise ValueError(
            f"fc has {fc.out_features} outputs but the labels have {got} classes; an ImageNet "
            "fc1000 needs the 1000 ImageNet classes in sorted WordNet-id order (remap a subset "
            "with fc_classes=...), else train a fc first with stage='fc'"
        )
    fc = copy.deepcopy(fc).float()
    for p in fc.parameters():
        p.requires_grad_(False)
    return fc.eval()
