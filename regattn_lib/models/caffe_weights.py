"""Caffe ResNet-101 weight files: their key layouts, classifier and input convention.

Two files hold the paper's network: cirtorch's conversion (``nn.Sequential`` keys ``0.weight``,
``4.0.conv1...``, no classifier) and the authors' ``resnet101_caffeProto.pth`` (named keys, with
the ImageNet ``fc``). ``load_caffe_resnet101`` reads either into a ``backbones.CaffeResNet101``
and reads the input convention off the file; ``random_caffe_state_dict`` makes a stand-in file
for tests and rehearsals.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torchvision

from regattn_lib.models.backbone_weights import WeightsError, load_strict
from regattn_lib.models.backbones import CaffeResNet101
from regattn_lib.models.batchnorm_calibration import calibrate_batchnorm
from regattn_lib.models.conventions import (
    CAFFE_CONVENTIONS,
    MATCH_THRESHOLD,
    choose_convention,
    convention_scores,
    fold_caffe_to_rgb,
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
    from regattn_lib.models.conventions import natural_images

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
