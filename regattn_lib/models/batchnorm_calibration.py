"""BatchNorm statistics calibrated on sample images, for randomly initialised backbones."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def calibrate_batchnorm(
    backbone: nn.Module, images: torch.Tensor, min_var_ratio: float = 1e-2
) -> nn.Module:
    """Set each BatchNorm's running mean and variance to those of its input on ``images``.

    For randomly initialised backbones that only time things: with the default running
    statistics (0 and 1) the activations of a random ResNet-101 grow to about 1e7 and overflow
    fp16, so every batch would be redone in fp32. Calibrated in one pass (a pre-hook sets a
    layer's statistics just before it runs, so later layers see calibrated inputs), the
    activations keep the scale of a trained network.

    Args:
        images: uint8 (B, 3, H, W), as for ``backbone.features``; several images, so that a
            channel nearly constant on one image does not get a near-zero variance.
        min_var_ratio: each channel's variance is at least this fraction of the layer's mean
            variance (default 0.01): a near-dead channel would otherwise be scaled up by
            ``1/sqrt(eps)`` and blow up on other images.

    A random network stays far more sensitive to rounding than a trained one, so it checks
    speed, not precision. Changes the
    backbone in place and returns it.
    """

    def set_stats(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].float()
        dims = [0, *range(2, x.dim())]
        var = x.var(dims, unbiased=False)
        module.running_mean.copy_(x.mean(dims))
        module.running_var.copy_(var.clamp_min(min_var_ratio * float(var.mean())))

    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{getattr(backbone, 'name', type(backbone).__name__)} has no BatchNorm")
    handles = [m.register_forward_pre_hook(set_stats) for m in norms]
    try:
        backbone.features(images)
    finally:
        for h in handles:
            h.remove()
    return backbone
