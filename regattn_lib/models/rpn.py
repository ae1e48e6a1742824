"""Region proposals from the RPN of torchvision's Faster R-CNN, as an alternative region source.

The paper's RPN ablation replaces the R-MAC grid by the top-N proposals of a region proposal
network. ``weights="coco"`` loads torchvision's COCO Faster R-CNN (manifest entry
``rpn_fasterrcnn_coco``, downloaded into ``<data>/weights/``); ``weights="random"`` builds it randomly initialised so that the code path
runs offline. Tables made with random weights must say so (``RPNRegions.label``).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

#: Manifest key of torchvision's COCO Faster R-CNN weights (URL, destination, hash prefix).
COCO_KEY = "rpn_fasterrcnn_coco"
RPN_WEIGHTS = ("coco", "random")


def boxes_to_regions(boxes: np.ndarray, height: int, width: int, min_side: int = 1) -> np.ndarray:
    """[x1, y1, x2, y2] float boxes -> int (x, y, w, h) regions inside the image.

    Corners are clipped to the image, rounded outward, and each side is at least ``min_side``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(np.floor(b[:, 0]), 0, width - 1)
    y1 = np.clip(np.floor(b[:, 1]), 0, height - 1)
    x2 = np.clip(np.ceil(b[:, 2]), 0, width)
    y2 = np.clip(np.ceil(b[:, 3]), 0, height)
    w = np.maximum(x2 - x1, min_side)
    h = np.maximum(y2 - y1, min_side)
    x1 = np.minimum(x1, width - w)
    y1 = np.minimum(y1, height - h)
    return np.stack([x1, y1, w, h], axis=1).astype(np.int64)


class RPNRegions:
    """Callable region source: uint8 images (N, 3, H, W) -> list of (R_i, 4) regions.

    Parameters
    ----------
    weights:
        ``"coco"`` (torchvision's Faster R-CNN R50-FPN trained on COCO, the paper profile) or
        ``"random"`` (random initialisation: exercises the code offline, numbers meaningless).
    top_n:
        Proposals kept per image after NMS, best first.
    min_side:
        Smallest region side in pixels, so every region covers at least one feature cell.
    data_root, download:
        Where the COCO weights live and whether to fetch them.
    max_side:
        Run the RPN on a copy resized so its longest side is at most this (boxes are scaled
        back); ``None`` (paper profile) uses the image as is. Offline profiles use it to keep a
        randomly initialised ResNet-50-FPN affordable on a CPU.
    """

    def __init__(
        self,
        weights: str = "coco",
        top_n: int = 100,
        min_side: int = 32,
        data_root: str | os.PathLike | None = None,
        download: bool = True,
        device: str | torch.device = "cpu",
        max_side: int | None = None,
    ) -> None:
        if weights not in RPN_WEIGHTS:
            raise ValueError(f"RPN weights must be one of {RPN_WEIGHTS}, got {weights!r}")
        with torch.random.fork_rng():  # a reproducible random RPN, global RNG untouched
            torch.manual_seed(0)
            model = fasterrcnn_resnet50_fpn(
                weights=None, weights_backbone=None, rpn_post_nms_top_n_test=top_n
            )
        if weights == "coco":
            model.load_state_dict(self._coco_state(data_root, download))
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.weights = weights
        self.top_n = top_n
        self.min_side = min_side
        self.max_side = max_side
        self._last: tuple | None = None

    @property
    def label(self) -> str:
        return (
            "RPN (COCO Faster R-CNN)"
            if self.weights == "coco"
            else "RPN (random init, code path only)"
        )

    @staticmethod
    def _coco_state(data_root: str | os.PathLike | None, download: bool) -> dict:
        """The COCO weights from ``<data_root>/<dest>``, downloaded (and recorded in that data
        root's lock file) when absent and ``download`` is true."""
        from regattn_lib.datasets import downloads as dl
        from regattn_lib.datasets.manifest import manifest_entry
        from regattn_lib.runtime.paths import data_root as resolve_root

        root = resolve_root(data_root)
        entry = manifest_entry(COCO_KEY)
        dest = root / entry["dest"]
        if not dest.is_file():
            if not download:
                raise FileNotFoundError(
                    f"RPN weights missing: put {entry['url']} at {dest} (or use weights='random')"
                )
            dl.download_entry(COCO_KEY, root)
        return torch.load(dest, map_location="cpu", weights_only=True)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[np.ndarray]:
        # The three ablation heads share one batch: propose once per batch, not once per head.
        key = (images.data_ptr(), tuple(images.shape), int(images[..., ::7, ::7].sum()))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        regions = self._propose(images)
        self._last = (key, regions)
        return regions

    def _propose(self, images: torch.Tensor) -> list[np.ndarray]:
        dev = next(self.model.parameters()).device
        x = images.to(dev).float() / 255.0
        mean = torch.tensor(self.model.transform.image_mean, device=dev)[:, None, None]
        std = torch.tensor(self.model.transform.image_std, device=dev)[:, None, None]
        x = (x - mean) / std
        h, w = x.shape[2], x.shape[3]
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            x = torch.nn.functional.interpolate(
                x, scale_factor=scale, mode="bilinear", align_corners=False
            )
        feats = self.model.backbone(x)
        boxes, _ = self.model.rpn(ImageList(x, [tuple(x.shape[2:])] * x.shape[0]), feats)
        out = []
        for b in boxes:
            b = b[: self.top_n].cpu().numpy() / scale
            if len(b) == 0:  # never an empty region set: fall back to the whole image
                b = np.array([[0, 0, w, h]], dtype=np.float64)
            out.append(boxes_to_regions(b, h, w, self.min_side))
        return out
