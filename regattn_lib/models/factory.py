"""Building a backbone by name: the network of ``models.backbones`` with its weight file
loaded (``models.backbone_weights``, ``models.caffe_weights``), frozen, in eval mode."""

from __future__ import annotations

import os
from pathlib import Path

from regattn_lib.models.backbone_weights import (
    ensure_weights,
    load_strict,
    load_weights_file,
    weights_sha256,
)
from regattn_lib.models.backbones import (
    BACKBONES,
    Backbone,
    CaffeResNet101,
    EfficientNetLite0,
    TorchvisionResNet101,
    lite0_weights_path,
)
from regattn_lib.models.caffe_weights import load_caffe_resnet101
from regattn_lib.models.conventions import CAFFE_CONVENTIONS


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
