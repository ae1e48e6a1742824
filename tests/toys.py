"""Stand-ins the tests share: a tiny fixed backbone."""

from __future__ import annotations

import torch
from torch import nn


class ToyBackbone(nn.Module):
    """A 4-channel, stride-32 stand-in for a backbone: 32 x 32 average pooling of a fixed 1x1
    projection, then ReLU."""

    name = "toy"
    weights_id = "toy-1"
    stride = 32
    channels = 4

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 1)
        g = torch.Generator().manual_seed(0)
        nn.init.normal_(self.proj.weight, generator=g)
        nn.init.uniform_(self.proj.bias, 0.1, 0.5, generator=g)  # some channels always active

    def preprocess(self, images):
        return images.float() / 255

    def forward(self, x):
        return torch.relu(nn.functional.avg_pool2d(self.proj(x), 32, ceil_mode=True))

    def features(self, images):
        return self(self.preprocess(images))
