"""Training of the regional attention network on ImageNet classification, the authors' way.

The CNN is frozen; R-MAC regions of each crop give raw max-pooled vectors x_i (no whitening, no
L2) and average-pooled vectors k_i; the attention turns [k_i ; g] into alpha_i and

    logits = fc( (1/R) * sum_i alpha_i * x_i ),    loss = cross-entropy.

Only the attention trains; the fc is frozen. Two routes give that fc (``routes``):

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
and the global RNGs (``checkpoint``), so ``resume=True`` continues a killed run exactly. Curves
go to ``history.csv``; the final module with its configuration to ``attention.pt`` or ``fc.pt``.
This module holds the loop; the run's mutable state is one ``checkpoint.TrainState``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.runtime.environment import resolve_device
from regattn_lib.runtime.identity import module_digest
from regattn_lib.training.augment import fixed_subset
from regattn_lib.training.checkpoint import (
    ARTEFACTS,
    CURVES_PNG,
    HISTORY_CSV,
    LATEST,
    TrainState,
    Window,
    history_frame,
    resume_checkpoint,
    save_artefact,
    save_checkpoint,
    seed_everything,
    write_history,
)
from regattn_lib.training.config import VAL_SEED_OFFSET, TrainConfig
from regattn_lib.training.data import (
    Draw,
    Loader,
    dist_rank_world,
    load_val_crop,
    rank_shard,
    train_batches,
)
from regattn_lib.training.model import AttentionClassifier, head_logits, resolve_fc


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


@dataclass
class _Meter:
    """Loss and accuracy sums since the last history row, kept on the device so that the host
    syncs once per row, not once per iteration; ``tick`` starts the throughput clock."""

    loss: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    tick: float = field(default_factory=time.perf_counter)

    @classmethod
    def on(cls, device: torch.device) -> _Meter:
        zeros = [torch.zeros((), dtype=torch.float64, device=device) for _ in range(2)]
        return cls(*zeros)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach().double() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum().double()
        self.count += len(y)

    def flush(self, window: Window) -> None:
        """Fold the sums and the time since the last flush into ``window``; restart."""
        window.loss_sum += self.loss.item()
        window.correct += int(self.correct.item())
        window.count += self.count
        now = time.perf_counter()
        window.seconds += now - self.tick
        self.tick = now
        self.loss.zero_()
        self.correct.zero_()
        self.count = 0


def history_row(window: Window, step: int, world: int) -> dict[str, float]:
    """The history row of a window of iterations ending at ``step`` (validation left NaN)."""
    return {
        "step": step,
        "loss": window.loss_sum / max(window.count, 1),
        "train_acc": window.correct / max(window.count, 1),
        "val_loss": float("nan"),
        "val_acc": float("nan"),
        "images_per_s": window.count * world / max(window.seconds, 1e-9),
    }


def at_checkpoint(step: int, cfg: TrainConfig) -> bool:
    """Whether iteration ``step`` ends with validation and a numbered checkpoint."""
    return step % cfg.checkpoint_every == 0 or step == cfg.iterations


def _build(
    backbone: nn.Module,
    fc: nn.Linear | str | os.PathLike | None,
    cfg: TrainConfig,
    n_classes: int,
    classes: Sequence[str] | None,
    device: torch.device,
) -> tuple[AttentionClassifier, TrainState]:
    """The classifier and a fresh state of ``cfg.stage``'s trainable module."""
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
    optimizer = torch.optim.SGD(
        list(trainable.parameters()),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    sampler = torch.Generator().manual_seed(cfg.seed)
    fc_digest = module_digest(head_fc) if cfg.stage == "attention" else None
    return model, TrainState(trainable, optimizer, sampler, fc_digest)


def _validate(
    model: AttentionClassifier,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    val_paths: Sequence[str | os.PathLike],
    val_labels: torch.Tensor,
    cfg: TrainConfig,
    loader: Loader,
    rank: int,
    world: int,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation subset (sharded over ranks)."""
    device = next(model.fc.parameters()).device
    mine = rank_shard(len(val_labels), rank, world)
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
                    loader.submit(load_val_crop, val_paths[i], cfg.val_resize, cfg.val_crop)
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


def _save(
    state: TrainState,
    meter: _Meter,
    cfg: TrainConfig,
    draw: Draw,
    device: torch.device,
    out_dir: Path,
    rank: int,
    numbered: bool,
) -> None:
    """Checkpoint after the iteration of ``draw`` (rank 0 writes; every rank flushes)."""
    meter.flush(state.window)
    if rank == 0:
        save_checkpoint(state, cfg, draw.sampler_state, device, out_dir, numbered)


def _iterate(
    state: TrainState,
    model: AttentionClassifier,
    paths: Sequence[str | os.PathLike],
    labels: torch.Tensor,
    val_paths: Sequence[str | os.PathLike],
    val_labels: torch.Tensor,
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
) -> None:
    """Train ``state`` from its step to ``cfg.iterations`` (or ``max_steps_this_run`` more),
    writing history rows and checkpoints on the way."""
    rank, world = dist_rank_world()
    ddp = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(state.trainable, device_ids=ids)
    att_call = ddp if (ddp is not None and cfg.stage == "attention") else model.attention
    fc_call = ddp if (ddp is not None and cfg.stage == "fc") else model.fc

    loader = Loader(cfg.num_workers)
    val_idx = fixed_subset(len(val_paths), cfg.val_images, cfg.views_seed + VAL_SEED_OFFSET)
    val_paths = [val_paths[i] for i in val_idx]
    val_labels = val_labels[val_idx]
    batches, val_cache = train_batches(
        model, state.sampler, paths, labels, val_paths, cfg, loader, rank, world
    )
    end = cfg.iterations
    if cfg.max_steps_this_run is not None:
        end = min(end, state.step + cfg.max_steps_this_run)
    bar = tqdm(
        total=cfg.iterations,
        initial=state.step,
        disable=not cfg.progress or rank != 0,
        desc=f"train {cfg.stage}",
        unit="it",
    )
    meter = _Meter.on(device)
    draw: Draw | None = None

    try:
        while state.step < end and not state.stopped:
            draw = batches.stream.next(prefetch=state.step + 1 < end)
            x, k, g, y = batches.get(draw, model, device)
            if cfg.input_dropout and cfg.stage == "attention":
                k = F.dropout(k, cfg.input_dropout)
                g = F.dropout(g, cfg.input_dropout)
            update = (state.step + 1) % cfg.accumulation == 0
            sync = ddp.no_sync() if (ddp is not None and not update) else nullcontext()
            with sync:
                logits = head_logits(x, k, g, att_call, fc_call)
                loss = F.cross_entropy(logits, y)
                (loss / cfg.accumulation).backward()
            if update:
                state.optimizer.step()
                state.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            meter.add(loss, logits, y)
            bar.update(1)

            checkpoint_now = at_checkpoint(state.step, cfg)
            if checkpoint_now or state.step % cfg.log_every == 0:
                meter.flush(state.window)
                row = history_row(state.window, state.step, world)
                state.window = Window()
                if checkpoint_now and len(val_labels):
                    row["val_loss"], row["val_acc"] = _validate(
                        model, val_cache, val_paths, val_labels, cfg, loader, rank, world
                    )
                    meter.tick = time.perf_counter()  # validation time is not throughput
                    state.record_validation(row["val_loss"])
                    state.stopped = 0 < cfg.patience <= state.stale
                state.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.1f}")
                if rank == 0:
                    write_history(state.history, out_dir / HISTORY_CSV)
            if checkpoint_now:
                _save(state, meter, cfg, draw, device, out_dir, rank, numbered=True)
        if draw is not None and not at_checkpoint(state.step, cfg):
            # stopped by max_steps_this_run (an early stop happens at a checkpoint)
            _save(state, meter, cfg, draw, device, out_dir, rank, numbered=False)
    finally:
        bar.close()
        loader.close()


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
    """Train the stage named by ``cfg.stage``; ``routes.train_fc`` / ``routes.train_attention`` wrap this.

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

    model, state = _build(backbone, fc, cfg, n_classes, classes, device)
    if latest.exists():
        resume_checkpoint(latest, state, cfg, device)
    artefact = out_dir / ARTEFACTS[cfg.stage]
    if state.step < cfg.iterations and not state.stopped:
        _iterate(state, model, paths, labels_t, val_paths, val_labels_t, cfg, out_dir, device)
        if dist_rank_world()[0] == 0:
            write_history(state.history, out_dir / HISTORY_CSV)
            if state.step >= cfg.iterations or state.stopped:
                save_artefact(state, model, cfg, classes, artefact)
            if cfg.plot and state.history:
                from regattn_lib.training.curves import plot_curves

                plot_curves(out_dir / HISTORY_CSV, out_dir / CURVES_PNG)
    done = state.step >= cfg.iterations or state.stopped
    if done and cfg.selection == "best_val_loss" and state.best_state is not None:
        state.trainable.load_state_dict(state.best_state)  # the returned module is the kept one
    return TrainResult(
        module=state.trainable,
        model=model,
        history=history_frame(state.history),
        checkpoint=latest,
        artefact=artefact if done and artefact.exists() else None,
        steps=state.step,
        finished=done,
        out_dir=out_dir,
    )
