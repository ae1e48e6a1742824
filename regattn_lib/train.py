"""Training of the regional attention network on ImageNet classification, the authors' way.

The CNN is frozen; R-MAC regions of each crop give raw max-pooled vectors x_i (no whitening, no
L2) and average-pooled vectors k_i; the attention turns [k_i ; g] into alpha_i and

    logits = fc( (1/R) * sum_i alpha_i * x_i ),    loss = cross-entropy.

Only the attention trains; the fc is frozen. Two routes give that fc:

(a) ``train_fc`` first: a new ``nn.Linear(C, n_classes)`` on the frozen backbone with alpha = 1
    (the same forward, stage ``'fc'``), then ``train_attention`` with that fc frozen. The authors'
    advice for a new dataset or a backbone without a classifier (the Caffe ResNet-101 file has
    none); training both at once is unstable.
(b) For a backbone with its own ImageNet fc1000 (``backbone.fc``) and the ImageNet classes in
    sorted WordNet-id order, ``train_attention`` uses that fc directly (the authors' setting).

Recipe (spec section 2, the defaults of :class:`TrainConfig`): SGD lr 1e-3, momentum 0.9, weight
decay 5e-5, no schedule; mini-batch 4 with gradients accumulated over 4 iterations (effective
16); one *iteration* is one mini-batch, as in the authors' loop; training images sampled
uniformly with replacement; shorter side resized to a random integer in [850, 859], random
800 x 800 crop, no flip; validation on a fixed random subset of 10,000 val images, shorter side
800, centre crop 800; validation and checkpoint every 1,600 iterations; up to 999,999 iterations;
R-MAC levels 5; attention hidden 64, tanh.

Named deviation: ``feature_cache_views > 0`` runs the backbone once per training image for that
many augmented views (and once per val image) and trains on the cached pooled features. The
authors draw a fresh augmentation at every iteration; the cache reuses a finite set of views,
which makes CPU training feasible but is not their recipe. Off by default.

Engineering: all sampling and augmentation randomness comes from one seeded ``torch.Generator``
whose state is checkpointed with the weights, the optimizer, the pending accumulated gradients
and the global RNGs, so ``resume=True`` continues a killed run exactly. Curves go to
``history.csv``; the final module with its configuration to ``attention.pt`` or ``fc.pt``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attention import ACTIVATIONS, RegionalAttention
from .descriptor import pool_regions
from .extract import resolve_device
from .images import load_rgb
from .io_utils import atomic_torch_save, atomic_write, atomic_write_text
from .regions import rmac_regions

STAGES = ("fc", "attention")
HISTORY_COLUMNS = ("step", "loss", "train_acc", "val_loss", "val_acc", "images_per_s")
LATEST = "latest.pt"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
ARTEFACTS = {"fc": "fc.pt", "attention": "attention.pt"}
IMAGENET_LAYOUT = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG"
# Configuration fields that may change between a run and its resumption: they change neither
# the sample stream nor the arithmetic of an update.
RESUMABLE_CHANGES = frozenset(
    {"iterations", "max_steps_this_run", "device", "num_workers", "progress", "val_batch_size"}
)
# Offsets that derive independent generators from the one seed.
_CACHE_SEED_OFFSET = 1
_VAL_SEED_OFFSET = 2


# ----------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """The training recipe; defaults are the authors' values (spec section 2).

    Parameters
    ----------
    stage:
        ``'attention'`` (default): train the attention, fc frozen. ``'fc'``: route (a)'s first
        step, train a new fc on the frozen backbone with alpha = 1. ``train_fc`` and
        ``train_attention`` set it themselves.
    lr:
        SGD learning rate (1e-3), constant: the authors use no schedule.
    momentum:
        SGD momentum (0.9).
    weight_decay:
        SGD weight decay (5e-5), on the trainable module only.
    batch_size:
        Images per iteration (4). Under DistributedDataParallel, per process.
    accumulation:
        Iterations whose gradients are summed before one optimizer step (4; effective batch 16).
        The loss is divided by it, so one step equals a step on ``batch_size * accumulation``
        samples. A trailing partial accumulation at ``iterations`` is not applied.
    iterations:
        Total iterations (mini-batches) of the run (999,999, the authors' loop bound).
    resize_min, resize_max:
        The shorter side is resized to a random integer in [resize_min, resize_max] (850, 859).
    crop:
        Side of the random square training crop (800).
    val_resize:
        Shorter side of validation images (800).
    val_crop:
        Side of the centre validation crop (800).
    val_images:
        Size of the fixed random validation subset (10,000); 0 disables validation.
    checkpoint_every:
        Validate and write a checkpoint every this many iterations (1,600).
    log_every:
        Append a row of training loss and accuracy to the history every this many iterations
        (100; not in the paper, whose loop printed at checkpoints only).
    levels:
        R-MAC levels L of the crops (5).
    hidden:
        Attention hidden size (64).
    activation:
        Attention's first non-linearity (``'tanh'``, the paper's formula).
    context:
        ``True`` (default): context-aware attention on [k_i ; g]; ``False``: k_i alone.
    seed:
        Seeds the sampler, the trainable module's initialisation, the feature cache's views
        (``seed + 1``) and the validation subset (``seed + 2``) (default 0).
    device:
        ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``, ``'cuda:1'`` ...
    amp:
        Run the frozen backbone under bf16 autocast on CUDA (``False``); pooling and the
        trainable part always run in fp32. Ignored on CPU.
    feature_cache_views:
        0 (default, the authors' recipe): the backbone runs on a fresh augmentation at every
        iteration. ``V > 0``: the backbone runs once per training image for V augmented views
        and once per val image, and training samples from these cached pooled features (x, k,
        g). A named deviation that makes CPU training feasible. Memory: ``V * N * R * C * 12``
        bytes for N images (R = 55 regions at L = 5), so meant for small subsets.
    feature_cache_dir:
        Folder where those cached features are stored (fp16) under a hash of everything they
        depend on, so the fc stage and both attention stages share one backbone pass
        (``None``: kept in memory only).
    val_batch_size:
        Images per backbone call for validation and for building the cache (16).
    num_workers:
        Threads decoding and resizing images; the next iteration's images load while the
        current one computes (4; 0 loads in the main thread).
    max_steps_this_run:
        Stop after this many iterations of the current call (``None``: run to ``iterations``);
        a checkpoint is written at the stop so that ``resume=True`` continues from it.
    progress:
        Show a tqdm bar with loss and throughput (``True``).
    plot:
        Write ``curves.png`` beside ``history.csv`` when a call ends (``True``).
    """

    stage: str = "attention"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-5
    batch_size: int = 4
    accumulation: int = 4
    iterations: int = 999_999
    resize_min: int = 850
    resize_max: int = 859
    crop: int = 800
    val_resize: int = 800
    val_crop: int = 800
    val_images: int = 10_000
    checkpoint_every: int = 1_600
    log_every: int = 100
    levels: int = 5
    hidden: int = 64
    activation: str = "tanh"
    context: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    feature_cache_views: int = 0
    feature_cache_dir: str | None = None
    val_batch_size: int = 16
    num_workers: int = 4
    max_steps_this_run: int | None = None
    progress: bool = True
    plot: bool = True

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first inconsistent field; return ``self``."""
        if self.stage not in STAGES:
            raise ValueError(f"TrainConfig.stage must be one of {STAGES}, got {self.stage!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TrainConfig.activation must be one of {ACTIVATIONS}")
        positive = ("batch_size", "accumulation", "checkpoint_every", "log_every", "levels",
                    "hidden", "crop", "val_crop", "val_batch_size")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "val_images", "feature_cache_views", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps_this_run is not None and self.max_steps_this_run < 0:
            raise ValueError("TrainConfig.max_steps_this_run must be >= 0 or None")
        if not self.crop <= self.resize_min <= self.resize_max:
            raise ValueError(
                "TrainConfig needs crop <= resize_min <= resize_max so that every resized image "
                f"holds the crop; got crop={self.crop}, resize=[{self.resize_min}, "
                f"{self.resize_max}]"
            )
        if self.val_crop > self.val_resize:
            raise ValueError(
                f"TrainConfig.val_crop ({self.val_crop}) exceeds val_resize ({self.val_resize})"
            )
        return self


# ----------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class SampleSpec:
    """One drawn training sample: the item's index and its augmentation.

    ``short`` is the target shorter side (0 for cached features); ``fy``, ``fx`` in [0, 1)
    place the crop (fractions of the free range), so the crop can be placed without knowing
    the image's size when the sample is drawn.
    """

    index: int
    short: int = 0
    fy: float = 0.0
    fx: float = 0.0


def draw_samples(
    generator: torch.Generator, n_items: int, count: int, short_range: tuple[int, int] | None
) -> list[SampleSpec]:
    """Draw ``count`` samples uniformly with replacement from ``n_items`` items.

    Parameters
    ----------
    generator:
        The sampler's generator; it is the only source of randomness, so its state fixes the
        stream. Each sample draws its index, then its shorter side, then its crop place, so the
        stream of samples does not depend on how they are grouped into batches.
    n_items:
        Number of items (images, or cached views).
    count:
        Samples to draw.
    short_range:
        Inclusive (min, max) of the random shorter side; ``None`` draws indices only (cache).
    """
    out = []
    for _ in range(count):
        index = int(torch.randint(n_items, (1,), generator=generator))
        if short_range is None:
            out.append(SampleSpec(index))
            continue
        short = int(torch.randint(short_range[0], short_range[1] + 1, (1,), generator=generator))
        fy, fx = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        out.append(SampleSpec(index, short, fy, fx))
    return out


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to ``short``; the longer side is truncated as in
    the authors' ``__resize`` (``int(short * long / short_side)``)."""
    if height <= width:
        return short, short * width // height
    return short * height // width, short


def crop_offsets(height: int, width: int, crop: int, fy: float, fx: float) -> tuple[int, int]:
    """(top, left) of a ``crop`` x ``crop`` window placed at fractions ``fy``, ``fx`` in [0, 1)
    of the free range: uniform over the valid offsets as torchvision's ``RandomCrop``."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit a {width}x{height} image")
    top = min(int(math.floor(fy * (height - crop + 1))), height - crop)
    left = min(int(math.floor(fx * (width - crop + 1))), width - crop)
    return top, left


def center_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of a centred ``crop`` window, rounded as torchvision's ``CenterCrop``."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} does not fit a {width}x{height} image")
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def resize_shorter(image: np.ndarray, short: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (3, H', W') with shorter side ``short`` (bilinear, no
    antialiasing, as the project's other resizes)."""
    h, w = image.shape[:2]
    nh, nw = resized_size(h, w, short)
    # load_rgb gives a read-only view of the PIL buffer: copy only when needed.
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    if (nh, nw) == (h, w):
        return t.contiguous()
    t = F.interpolate(t[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return t[0].round().clamp(0, 255).to(torch.uint8)


def train_crop(image: np.ndarray, spec: SampleSpec, crop: int) -> torch.Tensor:
    """The training augmentation: resize shorter side to ``spec.short``, crop ``crop`` x
    ``crop`` at ``spec``'s place; no flip. uint8 (H, W, 3) -> uint8 (3, crop, crop)."""
    t = resize_shorter(image, spec.short)
    top, left = crop_offsets(t.shape[1], t.shape[2], crop, spec.fy, spec.fx)
    return t[:, top : top + crop, left : left + crop].contiguous()


def val_crop(image: np.ndarray, short: int, crop: int) -> torch.Tensor:
    """The validation transform: shorter side ``short``, centre ``crop`` x ``crop``."""
    t = resize_shorter(image, short)
    top, left = center_offsets(t.shape[1], t.shape[2], crop)
    return t[:, top : top + crop, left : left + crop].contiguous()


def fixed_subset(n: int, k: int, seed: int) -> list[int]:
    """A fixed random subset of ``k`` of ``range(n)`` (all when ``k >= n``), sorted."""
    if k >= n:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:k].tolist())


def remap_labels(
    labels: Sequence[int], classes: Sequence[str], fc_classes: Sequence[str]
) -> list[int]:
    """Map labels indexing ``classes`` to indices into ``fc_classes`` (e.g. an ImageNet subset's
    labels to the 1000 outputs of an ImageNet fc, matched by WordNet id)."""
    where = {c: i for i, c in enumerate(fc_classes)}
    missing = [c for c in classes if c not in where]
    if missing:
        raise ValueError(f"classes not among the fc's classes: {missing[:5]}")
    return [where[classes[y]] for y in labels]


# ----------------------------------------------------------------------------- model
def head_logits(
    x: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    attention: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    fc: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """logits = fc( mean_i alpha_i * x_i ) on raw pooled vectors (spec section 1, item 6).

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
    if attention is None:
        v = x.mean(1)
    else:
        v = (attention(k, g)[..., None] * x).mean(1)
    return fc(v)


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
        self._regions: dict[tuple[int, int], np.ndarray] = {}

    def regions(self, height: int, width: int) -> np.ndarray:
        """R-MAC regions of a ``height`` x ``width`` crop (memoised: crops share one size)."""
        key = (height, width)
        if key not in self._regions:
            self._regions[key] = rmac_regions(height, width, self.levels)
        return self._regions[key]

    @torch.no_grad()
    def pooled(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (N, 3, S, S) -> fp32 (x (N, R, C), k (N, R, C), g (N, C)); no gradient."""
        device = next(self.backbone.parameters()).device
        use_amp = self.amp and device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext():
            feats = self.backbone.features(images.to(device))
        stride = getattr(self.backbone, "stride", 32)
        p = pool_regions(feats.float(), self.regions(images.shape[2], images.shape[3]), stride)
        return p.max_pooled, p.avg_pooled, p.global_avg

    def classify(self, x: torch.Tensor, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Pooled features -> logits (the trainable part)."""
        return head_logits(x, k, g, self.attention, self.fc)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 crops (N, 3, S, S) -> logits (N, classes)."""
        return self.classify(*self.pooled(images))


# ----------------------------------------------------------------------------- fc resolution
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


# ----------------------------------------------------------------------------- RNG / checkpoint
def rng_states(device: torch.device) -> dict[str, Any]:
    """Global RNG states (torch CPU, CUDA when used, numpy, python), loadable with
    ``torch.load(weights_only=True)`` (numpy's array travels as a tensor)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` saved."""
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's ``random`` (the trainable module's init uses torch's)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Fields that differ between a checkpoint's configuration and ``cfg`` and that a
    resumption may not change."""
    now = asdict(cfg)
    return [
        f"{k}: {saved.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]
    ]


def _module_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- history / plots
def history_frame(rows: Sequence[dict[str, float]]) -> pd.DataFrame:
    """History rows -> DataFrame with ``HISTORY_COLUMNS``."""
    return pd.DataFrame(list(rows), columns=list(HISTORY_COLUMNS))


def write_history(rows: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Rewrite the whole CSV atomically (a reader never sees a half-written file)."""
    return atomic_write_text(path, history_frame(rows).to_csv(index=False))


def plot_curves(csv_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Loss and accuracy curves of a ``history.csv`` against the iteration, as a PNG.

    Parameters
    ----------
    csv_path:
        A CSV written by training (columns ``HISTORY_COLUMNS``).
    out_png:
        Where the figure goes (written atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = pd.read_csv(csv_path)
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)  # Agg canvas without pyplot: no global state, no display needed
    ax_loss, ax_acc = fig.subplots(1, 2)
    val = df.dropna(subset=["val_loss"])
    ax_loss.plot(df["step"], df["loss"], label="train")
    ax_loss.plot(val["step"], val["val_loss"], "o-", label="val")
    ax_acc.plot(df["step"], df["train_acc"], label="train")
    ax_acc.plot(val["step"], val["val_acc"], "o-", label="val")
    for ax, name in ((ax_loss, "cross-entropy"), (ax_acc, "accuracy")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)

    def _save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    return atomic_write(out_png, _save)


# ----------------------------------------------------------------------------- data streams
class _Loader:
    """Runs image loading in a thread pool (decoding and resizing release the GIL), or inline."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _load_train(path: str | os.PathLike, spec: SampleSpec, crop: int) -> torch.Tensor:
    return train_crop(load_rgb(path), spec, crop)


def _load_val(path: str | os.PathLike, short: int, crop: int) -> torch.Tensor:
    return val_crop(load_rgb(path), short, crop)


@dataclass
class _Draw:
    specs: list[SampleSpec]
    payload: list[Future] | None
    sampler_state: torch.Tensor  # the sampler's state right after this draw


class _Stream:
    """Batches of samples, drawn one iteration ahead so the next images load meanwhile.

    The sampler's state is remembered right after each draw: a checkpoint after iteration t
    stores the state after t's draw, not after the prefetched draw of t + 1.
    """

    def __init__(
        self,
        sampler: torch.Generator,
        n_items: int,
        batch: int,
        rank: int,
        world: int,
        short_range: tuple[int, int] | None,
        load: Callable[[SampleSpec], Any] | None,
        loader: _Loader,
    ) -> None:
        self.sampler, self.n_items, self.batch = sampler, n_items, batch
        self.rank, self.world, self.short_range = rank, world, short_range
        self.load, self.loader = load, loader
        self._ahead: _Draw | None = None

    def _draw(self) -> _Draw:
        # Every process draws the whole global batch and takes its slice: the stream (and the
        # checkpointed state) is the same on all ranks, and sharding is by rank.
        specs = draw_samples(self.sampler, self.n_items, self.batch * self.world, self.short_range)
        specs = specs[self.rank * self.batch : (self.rank + 1) * self.batch]
        state = self.sampler.get_state()
        payload = None
        if self.load is not None:
            payload = [self.loader.submit(self.load, s) for s in specs]
        return _Draw(specs, payload, state)

    def next(self, prefetch: bool) -> _Draw:
        current = self._ahead if self._ahead is not None else self._draw()
        self._ahead = self._draw() if prefetch else None
        return current


@dataclass
class _Window:
    """Training statistics since the last history row."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0


@dataclass
class TrainResult:
    """What a training call returns.

    ``module`` is the trained ``RegionalAttention`` (stage attention) or ``nn.Linear`` (stage
    fc); ``model`` the whole ``AttentionClassifier``; ``history`` the curves; ``checkpoint``
    the ``latest.pt``; ``artefact`` the ``attention.pt`` / ``fc.pt`` (``None`` until the run
    finishes); ``steps`` the iterations done; ``finished`` whether ``steps == iterations``.
    """

    module: nn.Module
    model: AttentionClassifier
    history: pd.DataFrame
    checkpoint: Path
    artefact: Path | None
    steps: int
    finished: bool
    out_dir: Path = field(default_factory=Path)


# ----------------------------------------------------------------------------- the loop
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _stack_pooled(
    model: AttentionClassifier,
    futures: Sequence[Future],
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backbone on loaded crops in chunks of ``batch``; pooled features on the CPU."""
    parts = []
    for s in range(0, len(futures), batch):
        images = torch.stack([f.result() for f in futures[s : s + batch]])
        parts.append(tuple(t.cpu() for t in model.pooled(images)))
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _build_cache(
    model: AttentionClassifier,
    paths: Sequence[str | os.PathLike],
    cfg: TrainConfig,
    loader: _Loader,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled features of ``feature_cache_views`` views of every image, view-major: row
    ``v * N + i`` is view v of image i. Views come from their own generator (``seed + 1``)."""
    gen = torch.Generator().manual_seed(cfg.seed + _CACHE_SEED_OFFSET)
    n = len(paths)
    specs = []
    for _ in range(cfg.feature_cache_views):
        for i in range(n):
            s = draw_samples(gen, 1, 1, (cfg.resize_min, cfg.resize_max))[0]
            specs.append(replace(s, index=i))
    futures = [loader.submit(_load_train, paths[s.index], s, cfg.crop) for s in specs]
    return _stack_pooled(model, futures, cfg.val_batch_size)


def _features_key(model: AttentionClassifier, paths, val_paths, cfg: TrainConfig) -> str:
    """Hash of everything the cached training/validation features depend on."""
    parts = {
        "paths": [str(p) for p in paths], "val": [str(p) for p in val_paths],
        "views": cfg.feature_cache_views, "seed": cfg.seed, "resize": [cfg.resize_min, cfg.resize_max],
        "crop": cfg.crop, "val_resize": cfg.val_resize, "val_crop": cfg.val_crop, "levels": cfg.levels,
        "backbone": getattr(model.backbone, "name", None), "weights": getattr(model.backbone, "cache_id", getattr(model.backbone, "weights_id", None)),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _cached_features(
    model: AttentionClassifier,
    paths: Sequence[str | os.PathLike],
    val_paths: Sequence[str | os.PathLike],
    cfg: TrainConfig,
    loader: _Loader,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """Training views and validation features, from ``cfg.feature_cache_dir`` when present.

    The fc stage and both attention stages of one profile use the same images and views, so
    the backbone runs once for all three when they share a cache folder.
    """
    f = None
    if cfg.feature_cache_dir is not None:
        f = (
            Path(cfg.feature_cache_dir)
            / f"features-{_features_key(model, paths, val_paths, cfg)}.pt"
        )
        if f.is_file():
            d = torch.load(f, map_location="cpu", weights_only=True)
            train = tuple(t.float() for t in d["train"])
            return train, (tuple(t.float() for t in d["val"]) if d["val"] is not None else None)
    cache = _build_cache(model, paths, cfg, loader)
    futures = [loader.submit(_load_val, p, cfg.val_resize, cfg.val_crop) for p in val_paths]
    val_cache = _stack_pooled(model, futures, cfg.val_batch_size) if futures else None
    if f is not None and _dist()[0] == 0:
        half = {"train": [t.half() for t in cache],
                "val": None if val_cache is None else [t.half() for t in val_cache]}  # fmt: skip
        atomic_torch_save(f, half)
        # train on exactly what a later run will load, so a first run and a rerun agree
        cache = tuple(t.float() for t in half["train"])
        val_cache = None if half["val"] is None else tuple(t.float() for t in half["val"])
    return cache, val_cache


def _validate(
    model: AttentionClassifier,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    val_paths: Sequence[str | os.PathLike],
    val_labels: torch.Tensor,
    cfg: TrainConfig,
    loader: _Loader,
    rank: int,
    world: int,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation subset (sharded over ranks)."""
    device = next(model.fc.parameters()).device
    mine = list(range(rank, len(val_labels), world))
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    b = cfg.val_batch_size
    with torch.no_grad():
        for s in range(0, len(mine), b):
            idx = mine[s : s + b]
            if val is not None:
                x, k, g = (t[idx].to(device) for t in val)
            else:
                futures = [
                    loader.submit(_load_val, val_paths[i], cfg.val_resize, cfg.val_crop)
                    for i in idx
                ]
                x, k, g = model.pooled(torch.stack([f.result() for f in futures]))
            y = val_labels[idx].to(device)
            logits = model.classify(x, k, g)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum().double()
    count = torch.tensor(float(len(mine)), dtype=torch.float64, device=device)
    if world > 1:
        for t in (loss_sum, correct, count):
            torch.distributed.all_reduce(t)
    n = max(count.item(), 1.0)
    return loss_sum.item() / n, correct.item() / n


def _artefact_config(
    model: AttentionClassifier, cfg: TrainConfig, classes: Sequence[str] | None, steps: int
) -> dict[str, Any]:
    backbone = model.backbone
    out: dict[str, Any] = {
        "stage": cfg.stage,
        "backbone": getattr(backbone, "name", type(backbone).__name__),
        "levels": cfg.levels,
        "classes": None if classes is None else [str(c) for c in classes],
        "steps": steps,
        "train_config": asdict(cfg),
    }
    if cfg.stage == "attention":
        att = model.attention
        assert att is not None
        out.update(in_channels=att.in_channels, hidden=att.hidden, context=att.context,
                   activation=att.activation)  # fmt: skip
    else:
        out.update(in_features=model.fc.in_features, out_features=model.fc.out_features)
    return out


def train(
    paths: Sequence[str | os.PathLike],
    labels: Sequence[int],
    val_paths: Sequence[str | os.PathLike],
    val_labels: Sequence[int],
    backbone: nn.Module,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    fc: nn.Linear | str | os.PathLike | None = None,
    resume: bool = False,
    classes: Sequence[str] | None = None,
) -> TrainResult:
    """Train the stage named by ``cfg.stage``; ``train_fc`` / ``train_attention`` wrap this.

    Parameters
    ----------
    paths, labels:
        Training images and integer labels.
    val_paths, val_labels:
        Validation images and labels (may be empty: no validation).
    backbone:
        The frozen backbone; moved to ``cfg.device``.
    cfg:
        The recipe.
    out_dir:
        Receives ``latest.pt``, ``checkpoint_<step>.pt``, ``history.csv``, ``curves.png`` and
        the final ``attention.pt`` / ``fc.pt``.
    fc:
        Stage attention only: the frozen fc (module or ``fc.pt``); ``None`` takes
        ``backbone.fc`` (route (b)) and fails clearly when there is none.
    resume:
        Continue from ``out_dir/latest.pt`` (default ``False``; a fresh run refuses an
        ``out_dir`` that already holds one). A finished run returns at once.
    classes:
        Class names of the labels, stored in the artefact (default ``None``).
    """
    cfg.validate()
    if len(paths) != len(labels) or len(val_paths) != len(val_labels):
        raise ValueError("paths and labels (and val_paths and val_labels) differ in length")
    if not paths:
        raise ValueError("no training images")
    rank, world = _dist()
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    latest = out_dir / LATEST
    if latest.exists() and not resume:
        raise FileExistsError(
            f"{latest} exists: pass resume=True to continue that run, or use another out_dir"
        )
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    val_labels_t = torch.as_tensor(list(val_labels), dtype=torch.long)
    n_classes = len(classes) if classes is not None else int(labels_t.max()) + 1
    if int(labels_t.min()) < 0 or int(labels_t.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")

    # Seed before building the trainable module: its initialisation is part of the run.
    seed_everything(cfg.seed)
    channels = int(backbone.channels)
    if cfg.stage == "fc":
        head_fc = nn.Linear(channels, n_classes)
        attention = None
        trainable: nn.Module = head_fc
    else:
        head_fc = resolve_fc(backbone, fc, n_classes, classes)
        attention = RegionalAttention(channels, cfg.hidden, cfg.context, cfg.activation)
        trainable = attention
    model = AttentionClassifier(backbone, head_fc, attention, cfg.levels, cfg.amp).to(device)
    params = [p for p in trainable.parameters()]
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sampler = torch.Generator().manual_seed(cfg.seed)
    fc_digest = _module_digest(head_fc) if cfg.stage == "attention" else None
    step, rows, window = 0, [], _Window()
    if latest.exists():
        state = torch.load(latest, map_location="cpu", weights_only=True)
        diffs = config_differences(state["config"], cfg)
        if diffs:
            raise ValueError(f"cannot resume {latest} with a different recipe: {diffs}")
        if state.get("fc_digest") != fc_digest:
            raise ValueError(f"cannot resume {latest}: the frozen fc differs from the saved run's")
        trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        for p, grad in zip(params, state["grads"], strict=True):
            p.grad = None if grad is None else grad.to(device)
        set_rng_states(state["rng"])
        sampler.set_state(state["sampler"])
        step, rows, window = state["step"], list(state["history"]), _Window(**state["window"])

    csv_path, png_path = out_dir / HISTORY_CSV, out_dir / CURVES_PNG
    artefact_path = out_dir / ARTEFACTS[cfg.stage]

    def result() -> TrainResult:
        done = step >= cfg.iterations
        return TrainResult(
            module=trainable, model=model, history=history_frame(rows), checkpoint=latest,
            artefact=artefact_path if done and artefact_path.exists() else None, steps=step,
            finished=done, out_dir=out_dir,
        )  # fmt: skip

    if step >= cfg.iterations:
        return result()

    ddp = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(trainable, device_ids=ids)
    att_call = ddp if (ddp is not None and cfg.stage == "attention") else model.attention
    fc_call = ddp if (ddp is not None and cfg.stage == "fc") else model.fc

    loader = _Loader(cfg.num_workers)
    val_idx = fixed_subset(len(val_paths), cfg.val_images, cfg.seed + _VAL_SEED_OFFSET)
    val_paths_sub = [val_paths[i] for i in val_idx]
    val_labels_sub = val_labels_t[val_idx]
    cache = val_cache = None
    if cfg.feature_cache_views > 0:
        cache, val_cache = _cached_features(model, paths, val_paths_sub, cfg, loader)
        stream = _Stream(sampler, cache[0].shape[0], cfg.batch_size, rank, world, None, None,
                         loader)  # fmt: skip
        cache_labels = labels_t.repeat(cfg.feature_cache_views)
    else:
        short_range = (cfg.resize_min, cfg.resize_max)

        def load(s: SampleSpec) -> torch.Tensor:
            return _load_train(paths[s.index], s, cfg.crop)

        stream = _Stream(sampler, len(paths), cfg.batch_size, rank, world, short_range, load,
                         loader)  # fmt: skip

    end = cfg.iterations
    if cfg.max_steps_this_run is not None:
        end = min(end, step + cfg.max_steps_this_run)
    bar = tqdm(total=cfg.iterations, initial=step, disable=not cfg.progress or rank != 0,
               desc=f"train {cfg.stage}", unit="it")  # fmt: skip
    run_loss = torch.zeros((), dtype=torch.float64, device=device)
    run_correct = torch.zeros((), dtype=torch.float64, device=device)
    run_count, tick = 0, time.perf_counter()
    draw: _Draw | None = None

    def flush() -> None:
        # Fold device-side sums into the window (one host sync per row, not per iteration).
        nonlocal run_count, tick
        window.loss_sum += run_loss.item()
        window.correct += int(run_correct.item())
        window.count += run_count
        now = time.perf_counter()
        window.seconds += now - tick
        tick = now
        run_loss.zero_()
        run_correct.zero_()
        run_count = 0

    def save(sampler_state: torch.Tensor, numbered: bool) -> None:
        flush()
        if rank != 0:
            return
        state = {
            "trainable": trainable.state_dict(),
            "grads": [None if p.grad is None else p.grad.detach().cpu() for p in params],
            "optimizer": optimizer.state_dict(),
            "step": step,
            "rng": rng_states(device),
            "sampler": sampler_state,
            "history": rows,
            "window": asdict(window),
            "config": asdict(cfg),
            "fc_digest": fc_digest,
        }
        if numbered:
            atomic_torch_save(out_dir / f"checkpoint_{step:07d}.pt", state)
        atomic_torch_save(latest, state)

    try:
        while step < end:
            draw = stream.next(prefetch=step + 1 < end)
            if cache is not None:
                idx = torch.tensor([s.index for s in draw.specs])
                x, k, g = (t[idx].to(device) for t in cache)
                y = cache_labels[idx].to(device)
            else:
                assert draw.payload is not None
                x, k, g = model.pooled(torch.stack([f.result() for f in draw.payload]))
                y = labels_t[[s.index for s in draw.specs]].to(device)
            update = (step + 1) % cfg.accumulation == 0
            sync = ddp.no_sync() if (ddp is not None and not update) else nullcontext()
            with sync:
                logits = head_logits(x, k, g, att_call, fc_call)
                loss = F.cross_entropy(logits, y)
                (loss / cfg.accumulation).backward()
            if update:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            run_loss += loss.detach().double() * len(y)
            run_correct += (logits.detach().argmax(1) == y).sum().double()
            run_count += len(y)
            bar.update(1)

            at_checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.iterations
            if at_checkpoint or step % cfg.log_every == 0:
                flush()
                row = {
                    "step": step,
                    "loss": window.loss_sum / max(window.count, 1),
                    "train_acc": window.correct / max(window.count, 1),
                    "val_loss": float("nan"),
                    "val_acc": float("nan"),
                    "images_per_s": window.count * world / max(window.seconds, 1e-9),
                }
                window = _Window()
                if at_checkpoint and len(val_labels_sub):
                    row["val_loss"], row["val_acc"] = _validate(
                        model, val_cache, val_paths_sub, val_labels_sub, cfg, loader, rank, world
                    )
                    tick = time.perf_counter()  # validation time is not training throughput
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.1f}")
                if rank == 0:
                    write_history(rows, csv_path)
            if at_checkpoint:
                save(draw.sampler_state, numbered=True)
        if draw is not None and not (step % cfg.checkpoint_every == 0 or step == cfg.iterations):
            save(draw.sampler_state, numbered=False)  # stopped by max_steps_this_run
    finally:
        bar.close()
        loader.close()

    if rank == 0:
        write_history(rows, csv_path)
        if step >= cfg.iterations:
            artefact = {
                "state_dict": {k: v.detach().cpu() for k, v in trainable.state_dict().items()},
                "config": _artefact_config(model, cfg, classes, step),
            }
            atomic_torch_save(artefact_path, artefact)
        if cfg.plot and rows:
            plot_curves(csv_path, png_path)
    return result()


# ----------------------------------------------------------------------------- entry points
def train_fc(
    paths: Sequence[str | os.PathLike],
    labels: Sequence[int],
    val_paths: Sequence[str | os.PathLike],
    val_labels: Sequence[int],
    backbone: nn.Module,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    classes: Sequence[str] | None = None,
) -> TrainResult:
    """Route (a), first step: train a new fc on the frozen backbone with alpha = 1.

    Parameters as :func:`train`; ``cfg.stage`` is set to ``'fc'``. The fc ends up in
    ``out_dir/fc.pt`` (reload with :func:`load_trained_fc`) and in ``result.module``.
    """
    return train(paths, labels, val_paths, val_labels, backbone, replace(cfg, stage="fc"),
                 out_dir, fc=None, resume=resume, classes=classes)  # fmt: skip


def train_attention(
    paths: Sequence[str | os.PathLike],
    labels: Sequence[int],
    val_paths: Sequence[str | os.PathLike],
    val_labels: Sequence[int],
    backbone: nn.Module,
    fc: nn.Linear | str | os.PathLike | None,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    classes: Sequence[str] | None = None,
) -> TrainResult:
    """Train the attention with ``fc`` frozen (route (a) second step, or route (b)).

    Parameters as :func:`train`; ``fc=None`` uses the backbone's own ImageNet fc1000 and raises
    a clear error when it has none (the Caffe ResNet-101). The attention ends up in
    ``out_dir/attention.pt`` (reload with :func:`load_trained_attention`).
    """
    return train(paths, labels, val_paths, val_labels, backbone, replace(cfg, stage="attention"),
                 out_dir, fc=fc, resume=resume, classes=classes)  # fmt: skip


def imagenet_layout_message(root: str | os.PathLike, missing: str | os.PathLike) -> str:
    return (
        f"{missing} not found. train_from_folder expects an ImageFolder layout: "
        f"{IMAGENET_LAYOUT} (one folder per class, named by its WordNet id for ImageNet; "
        f"root = {root}). ImageNet (ILSVRC-2012) cannot be downloaded automatically: obtain it "
        "from https://image-net.org yourself and arrange val/ into class folders."
    )


def train_from_folder(
    root: str | os.PathLike,
    backbone: nn.Module,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    fc: nn.Linear | str | os.PathLike | None = None,
    fc_classes: Sequence[str] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``cfg.stage`` on ``<root>/train/<class>/*`` with ``<root>/val/<class>/*``.

    Parameters
    ----------
    root:
        Folder holding ``train/`` and ``val/`` (ImageNet: ``<wnid>`` sub-folders).
    backbone, cfg, out_dir, resume:
        As :func:`train`.
    fc:
        Stage attention: as :func:`train_attention` (default ``None``: the backbone's fc).
    fc_classes:
        The fc's class names in output order (default ``None``). Given, the labels are remapped
        to them by name: an ImageNet subset can then train under the fc1000 with the 1000 sorted
        WordNet ids.
    """
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(imagenet_layout_message(root, root / split))
    from .datasets.imagenet import list_image_folder  # lazy: the reader is optional here

    paths, labels, classes = list_image_folder(root / "train")
    val_paths, val_labels, val_classes = list_image_folder(root / "val")
    if val_classes != classes:
        where = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in val_classes if c not in where]
        if unknown:
            raise ValueError(f"{root / 'val'} has classes absent from train: {unknown[:5]}")
        val_labels = [where[val_classes[y]] for y in val_labels]
    if fc_classes is not None:
        labels = remap_labels(labels, classes, fc_classes)
        val_labels = remap_labels(val_labels, classes, fc_classes)
        classes = list(fc_classes)
    if cfg.stage == "fc":
        return train_fc(paths, labels, val_paths, val_labels, backbone, cfg, out_dir, resume,
                        classes)  # fmt: skip
    return train_attention(paths, labels, val_paths, val_labels, backbone, fc, cfg, out_dir,
                           resume, classes)  # fmt: skip


# ----------------------------------------------------------------------------- artefacts
def load_artefact(path: str | os.PathLike, stage: str) -> tuple[dict, dict[str, Any]]:
    """(state dict, config) of an ``attention.pt`` / ``fc.pt``, checking its stage."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trained {stage} file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj or "config" not in obj:
        raise ValueError(f"{path} is not a file written by regattn_lib.train")
    if obj["config"].get("stage") != stage:
        raise ValueError(f"{path} holds a trained {obj['config'].get('stage')!r}, not {stage!r}")
    return obj["state_dict"], obj["config"]


def load_trained_attention(path: str | os.PathLike) -> RegionalAttention:
    """Rebuild the ``RegionalAttention`` of an ``attention.pt`` (in eval mode).

    Its ``training_config`` attribute holds the stored configuration (backbone, levels,
    classes, ...).
    """
    state, cfg = load_artefact(path, "attention")
    module = RegionalAttention(cfg["in_channels"], cfg["hidden"], cfg["context"],
                               cfg["activation"])  # fmt: skip
    module.load_state_dict(state)
    module.training_config = cfg  # type: ignore[assignment]
    return module.eval()


def load_trained_fc(path: str | os.PathLike) -> nn.Linear:
    """Rebuild the ``nn.Linear`` of a ``fc.pt`` (in eval mode), ``training_config`` attached."""
    state, cfg = load_artefact(path, "fc")
    module = nn.Linear(cfg["in_features"], cfg["out_features"])
    module.load_state_dict(state)
    module.training_config = cfg  # type: ignore[assignment]
    return module.eval()


__all__ = [
    "AttentionClassifier",
    "SampleSpec",
    "TrainConfig",
    "TrainResult",
    "center_offsets",
    "crop_offsets",
    "draw_samples",
    "fixed_subset",
    "head_logits",
    "load_trained_attention",
    "load_trained_fc",
    "plot_curves",
    "remap_labels",
    "resize_shorter",
    "resized_size",
    "resolve_fc",
    "train",
    "train_attention",
    "train_crop",
    "train_fc",
    "train_from_folder",
    "val_crop",
]
