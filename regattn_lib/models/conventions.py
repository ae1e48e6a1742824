"""Input conventions of the backbones: how uint8 RGB pixels become the network's input.

A weights file fixes the convention its first convolution expects, and feeding it the wrong
one silently degrades every descriptor. The Caffe ResNet-101 exists in two conventions:

``caffe-bgr``
    BGR, 0-255, minus :data:`CAFFE_MEAN_BGR`, no std scaling: the original Caffe (MSRA) model
    and the authors' ``resnet101_caffeProto.pth``.
``rgb-imagenet``
    RGB / 255 minus :data:`IMAGENET_MEAN` over :data:`IMAGENET_STD`: torchvision's convention,
    which cirtorch feeds every network. A Caffe model converted for it has the channel reversal
    and the ``255 * std`` scaling folded into ``conv1`` (:func:`fold_caffe_to_rgb`).

``rgb-lite`` (``(x - 127) / 128``) is EfficientNet-Lite's.

Which one a Caffe file expects is read off the file (:func:`convention_scores`): ``conv1`` has
no bias and is followed by ``bn1``, whose running mean and variance are the statistics of
``conv1``'s output on ImageNet under the right convention. On a few natural photos (bundled
with scikit-image) the right convention gives per-channel statistics close to ``bn1``'s; the
two conventions differ by a factor of about 58 in input scale (``255 * std``), i.e. about 8 in
log-variance, so the wrong one is far off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn

#: Caffe (MSRA) ResNet mean, in BGR order, 0-255 scale; the Caffe models use no std scaling.
CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
#: torchvision's ImageNet normalisation, RGB order, 0-1 scale.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: EfficientNet-Lite normalisation (TF reference: MEAN_RGB = 127, STDDEV_RGB = 128).
LITE_MEAN: float = 127.0
LITE_STD: float = 128.0

#: The conventions a Caffe ResNet-101 file may expect, in the order they are tried.
CAFFE_CONVENTIONS: tuple[str, ...] = ("caffe-bgr", "rgb-imagenet")

#: A convention matches a file when its score (:func:`statistics_score`) is below this.
#: Measured (``tests/test_backbones.py``): the right convention scores 0.8 on EfficientNet-Lite0's
#: real weights and 0.2-0.3 on random ResNets calibrated on other images or sizes; the wrong
#: one of a Caffe file scores above 8 (a 58-fold input scale is 8.1 in log-variance alone), and
#: bn1 variances scaled by 100 score 5.0 at best. The threshold cannot separate conventions
#: that differ by a small factor (Lite0 under ``rgb-imagenet``, a 2.2-fold scale, scores 1.5).
MATCH_THRESHOLD: float = 3.0

#: scikit-image photos the statistics are measured on (bundled with the package, no download).
NATURAL_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket")


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
    """RGB uint8 -> BGR float 0-255 minus :data:`CAFFE_MEAN_BGR`, no std (``caffe-bgr``)."""
    x = _as_float_batch(images).flip(1)  # RGB -> BGR
    return x - _per_channel(CAFFE_MEAN_BGR, x)


def preprocess_imagenet(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> RGB ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` (``rgb-imagenet``)."""
    x = _as_float_batch(images) / 255.0
    return (x - _per_channel(IMAGENET_MEAN, x)) / _per_channel(IMAGENET_STD, x)


def preprocess_lite(images: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> RGB ``(x - 127) / 128`` (``rgb-lite``, EfficientNet-Lite)."""
    return (_as_float_batch(images) - LITE_MEAN) / LITE_STD


#: convention name -> preprocessing function.
PREPROCESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "caffe-bgr": preprocess_caffe,
    "rgb-imagenet": preprocess_imagenet,
    "rgb-lite": preprocess_lite,
}


# --------------------------------------------------------------------------------------------
# Reading the convention off a file
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def natural_images(short_side: int = 224) -> tuple[torch.Tensor, ...]:
    """The :data:`NATURAL_PHOTOS` as uint8 RGB (1, 3, H, W), shorter side ``short_side``.

    Default 224 px, the scale of ImageNet training crops that ``bn1``'s statistics come from.
    PIL's bilinear resize (antialiased when shrinking); deterministic.
    """
    from PIL import Image
    from skimage import data

    out = []
    for name in NATURAL_PHOTOS:
        im = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
        s = short_side / min(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
        out.append(torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)[None])
    return tuple(out)


@torch.no_grad()
def conv_output_statistics(
    conv: nn.Module,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    images: tuple[torch.Tensor, ...] | list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance (float64) of ``conv(preprocess(image))`` over all pixels
    of all ``images`` (uint8 (1, 3, H, W) each, any sizes), on the CPU in fp32."""
    dev = next(conv.parameters()).device
    ys = [conv(preprocess(im.to(dev)).float()).double().cpu() for im in images]
    y = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in ys], dim=1)
    return y.mean(1), y.var(1, unbiased=False)


def statistics_score(
    mean: torch.Tensor, var: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm
) -> float:
    """How far ``conv1``'s output statistics are from ``bn``'s running statistics.

    ``mean_c |log((var_c + eps) / (running_var_c + eps))|`` (scale mismatch) plus
    ``mean_c |mean_c - running_mean_c| / sqrt(running_var_c + eps)`` (offset in units of the
    expected spread); ``eps`` is the BatchNorm's, so a dead channel (variance 0 on both sides)
    counts 0. 0 is a perfect match; 1 is about a factor e in variance.
    """
    rv = bn.running_var.detach().double().cpu()
    rm = bn.running_mean.detach().double().cpu()
    eps = float(bn.eps)
    log_ratio = torch.log((var + eps) / (rv + eps)).abs().mean()
    offset = ((mean - rm).abs() / torch.sqrt(rv + eps)).mean()
    return float(log_ratio + offset)


def convention_scores(
    conv1: nn.Module,
    bn1: nn.modules.batchnorm._BatchNorm,
    conventions: tuple[str, ...] = CAFFE_CONVENTIONS,
    images: tuple[torch.Tensor, ...] | None = None,
) -> dict[str, float]:
    """Convention name -> :func:`statistics_score` of ``conv1`` under it (lower is better).

    ``images``: uint8 (1, 3, H, W) photos; default :func:`natural_images`.
    """
    images = natural_images() if images is None else images
    out = {}
    for name in conventions:
        mean, var = conv_output_statistics(conv1, PREPROCESS[name], images)
        out[name] = statistics_score(mean, var, bn1)
    return out


def choose_convention(
    scores: Mapping[str, float], threshold: float = MATCH_THRESHOLD
) -> str | None:
    """The one convention whose score is below ``threshold``; ``None`` if none or several do
    (never guessed: a file that matches no convention, or more than one, is not used)."""
    ok = [name for name, s in scores.items() if math.isfinite(s) and s < threshold]
    return ok[0] if len(ok) == 1 else None


# --------------------------------------------------------------------------------------------
# Converting a caffe-bgr file to rgb-imagenet
# --------------------------------------------------------------------------------------------


def _stem_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """(conv1 prefix, bn1 prefix) of a Caffe ResNet state dict in either key layout."""
    if "conv1.weight" in state_dict:
        return "conv1.", "bn1."  # named layout (the authors' file, torchvision)
    if "0.weight" in state_dict:
        return "0.", "1."  # cirtorch: nn.Sequential(*children[:-2])
    raise KeyError("neither 'conv1.weight' nor '0.weight' in the state dict: not a ResNet")


def fold_caffe_to_rgb(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``caffe-bgr`` ResNet state dict turned into an ``rgb-imagenet`` one.

    With ``P`` the 0-255 pixel, the Caffe input of BGR channel ``j`` (RGB channel ``i = 2 - j``)
    is ``P_i - Mc_j = 255 * S_i * x_i + (255 * M_i - Mc_j)`` where ``x_i = (P_i / 255 - M_i) / S_i``
    is the ImageNet-normalised input. So ``conv1``'s input channels are reversed and multiplied
    by ``255 * S``, and the constant term ``b_o = sum_j (255 * M_i - Mc_j) * sum_kl W_ojkl``
    (conv1 has no bias) is folded into ``bn1``'s running mean (``m - b``). Exact except on the
    border, where zero padding stands for the Caffe mean on one side and the ImageNet mean on the
    other (they differ by less than 0.5 of 255). Works on both key layouts (cirtorch's and the
    named one); other tensors are shared, not copied. Pure: the input is not modified.
    """
    conv, bn = _stem_keys(state_dict)
    w = state_dict[conv + "weight"]
    if w.dim() != 4 or w.shape[1] != 3:
        raise ValueError(f"{conv}weight has shape {tuple(w.shape)}, expected (out, 3, k, k)")
    w64 = w.double()
    std_rgb = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean_rgb = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    caffe_bgr = torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float64)
    folded = w64.flip(1) * (255.0 * std_rgb).view(1, 3, 1, 1)  # BGR -> RGB, then 255 * std
    offset_bgr = 255.0 * mean_rgb.flip(0) - caffe_bgr  # per Caffe (BGR) input channel
    bias = (w64.sum(dim=(2, 3)) * offset_bgr.view(1, 3)).sum(1)
    out = dict(state_dict)
    out[conv + "weight"] = folded.to(w.dtype)
    rm = state_dict[bn + "running_mean"]
    out[bn + "running_mean"] = (rm.double() - bias).to(rm.dtype)
    return out
