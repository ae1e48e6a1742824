"""Regional attention with optional context (the paper's contribution).

alpha_i = softplus(W_c * tanh(W_r * z_i + b_r) + b_c), with z_i = k_i (regional attention) or
z_i = [k_i ; g] (context-aware attention), k_i the region's average-pooled vector and g the
global average pool. The layers are 1x1 ``Conv1d`` so that the authors' state dict loads as is.

The authors' released weights load through ``models.attention_weights``; here is what checks
a state dict of their layout (``attention_from_state_dict``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Shapes of the authors' released context-aware attention (ResNet-101, 2048 channels).
OFFICIAL_SHAPES = {
    "conv_att_1.weight": (64, 4096, 1),
    "conv_att_1.bias": (64,),
    "conv_att_2.weight": (1, 64, 1),
    "conv_att_2.bias": (1,),
}

ACTIVATIONS = ("tanh", "softplus")


def attention_scores(
    z: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    activation: str = "tanh",
) -> torch.Tensor:
    """Pure form of the attention network: (N, R, Z) -> alpha (N, R), alpha > 0 and unnormalised."""
    act = torch.tanh if activation == "tanh" else F.softplus
    hidden = act(F.linear(z, w1.reshape(w1.shape[0], -1), b1))
    return F.softplus(F.linear(hidden, w2.reshape(w2.shape[0], -1), b2)).squeeze(-1)


class RegionalAttention(nn.Module):
    """Regional attention network.

    Parameters
    ----------
    in_channels:
        Channels C of the backbone's feature map (2048 for ResNet-101, 1280 for Lite0).
    hidden:
        Hidden size (authors: 64).
    context:
        ``True``: context-aware attention, input [k_i ; g] of size 2C (authors' released
        model). ``False``: regional attention alone, input k_i.
    activation:
        First non-linearity. ``"tanh"`` (the paper's formula and the authors' test script,
        default) or ``"softplus"`` (the authors' training script).
    """

    def __init__(
        self, in_channels: int, hidden: int = 64, context: bool = True, activation: str = "tanh"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"RegionalAttention: activation must be one of {ACTIVATIONS}")
        self.in_channels = in_channels
        self.hidden = hidden
        self.context = context
        self.activation = activation
        z = 2 * in_channels if context else in_channels
        self.conv_att_1 = nn.Conv1d(z, hidden, 1)
        self.conv_att_2 = nn.Conv1d(hidden, 1, 1)

    def forward(
        self, regional_avg: torch.Tensor, global_avg: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, R, C) regional averages and (N, C) global average -> alpha (N, R)."""
        if regional_avg.dim() != 3 or regional_avg.shape[-1] != self.in_channels:
            raise ValueError(
                f"RegionalAttention expects regional_avg of shape (N, R, {self.in_channels}), "
                f"got {tuple(regional_avg.shape)}"
            )
        z = regional_avg
        if self.context:
            if global_avg is None:
                raise ValueError("context-aware attention needs global_avg of shape (N, C)")
            g = global_avg[:, None, :].expand(-1, regional_avg.shape[1], -1)
            z = torch.cat([regional_avg, g], dim=-1)
        p = self.conv_att_1
        q = self.conv_att_2
        return attention_scores(z, p.weight, p.bias, q.weight, q.bias, self.activation)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden={self.hidden}, "
            f"context={self.context}, activation={self.activation}"
        )


class AttentionFileError(ValueError):
    """An attention weights file that is corrupt or of the wrong shape."""


def attention_from_state_dict(
    state: dict, source: str = "state dict", context: bool = True, activation: str = "tanh"
) -> RegionalAttention:
    """Build a ``RegionalAttention`` from a state dict with the authors' keys, checking shapes.

    ``context=True`` reads the first layer's input as [regional ; global] (size 2C).
    """
    missing = [k for k in OFFICIAL_SHAPES if k not in state]
    if missing:
        raise AttentionFileError(f"{source}: missing keys {missing}; found {sorted(state)}")
    w1 = state["conv_att_1.weight"]
    hidden, z_dim = int(w1.shape[0]), int(w1.shape[1])
    expected = {
        "conv_att_1.weight": (hidden, z_dim, 1),
        "conv_att_1.bias": (hidden,),
        "conv_att_2.weight": (1, hidden, 1),
        "conv_att_2.bias": (1,),
    }
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise AttentionFileError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, expected {shape}"
            )
    if context and z_dim % 2:
        raise AttentionFileError(f"{source}: input size {z_dim} is not [regional ; global]")
    channels = z_dim // 2 if context else z_dim
    module = RegionalAttention(channels, hidden=hidden, context=context, activation=activation)
    module.load_state_dict({k: state[k] for k in OFFICIAL_SHAPES}, strict=True)
    return module.eval()
