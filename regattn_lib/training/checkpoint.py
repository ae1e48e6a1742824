"""What a training run writes and reads back: checkpoints (exact resume), the history CSV and
the final ``attention.pt`` / ``fc.pt``.

A checkpoint holds the trainable weights, the optimizer, the pending accumulated gradients, the
sampler's state, the global RNGs, the history and the configuration, so ``resume=True``
continues a killed run exactly.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.runtime.atomic import atomic_torch_save, atomic_write_text
from regattn_lib.training.config import TrainConfig

HISTORY_COLUMNS = ("step", "loss", "train_acc", "val_loss", "val_acc", "images_per_s")
LATEST = "latest.pt"
HISTORY_CSV = "history.csv"
CURVES_PNG = "curves.png"
ARTEFACTS = {"fc": "fc.pt", "attention": "attention.pt"}
# Configuration fields that may change between a run and its resumption: they change neither
# the sample stream nor the arithmetic of an update.
RESUMABLE_CHANGES = frozenset(
    {"iterations", "max_steps_this_run", "device", "num_workers", "progress", "val_batch_size"}
)


# ----------------------------------------------------------------------------- RNG
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
    default = asdict(TrainConfig())
    # a field newer than the checkpoint was, in effect, at its default there
    return [
        f"{k}: {saved.get(k, default[k])!r} -> {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k, default[k]) != now[k]
    ]


# ----------------------------------------------------------------------------- run state
@dataclass
class Window:
    """Training statistics since the last history row."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    """The mutable state of a run: everything its checkpoint stores besides the configuration.

    ``trainable`` is the module being trained (attention or fc), ``optimizer`` its SGD,
    ``sampler`` the generator of the sample stream, ``fc_digest`` identifies the frozen fc of
    the attention stage (``None`` for the fc stage), ``step`` the iterations done, ``history``
    the rows of ``history.csv`` and ``window`` the statistics since the last row.
    ``best_val_loss``, ``best_step`` and ``best_state`` (weights on the CPU) track the best
    validated checkpoint, ``stale`` the validations since it, ``stopped`` an early stop.
    """

    trainable: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: torch.Generator
    fc_digest: str | None = None
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    window: Window = field(default_factory=Window)
    best_val_loss: float = float("inf")
    best_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    stopped: bool = False

    def record_validation(self, val_loss: float) -> None:
        """Keep the weights when ``val_loss`` is the lowest so far; count stale validations."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step, self.stale = val_loss, self.step, 0
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.trainable.state_dict().items()
            }
        else:
            self.stale += 1

    @property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters, in the order their gradients are checkpointed."""
        return list(self.trainable.parameters())


def checkpoint_dict(
    state: TrainState, cfg: TrainConfig, sampler_state: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """The checkpoint of ``state``; ``sampler_state`` is the sampler's state right after the
    last trained iteration's draw (not after a prefetched one)."""
    return {
        "trainable": state.trainable.state_dict(),
        "grads": [None if p.grad is None else p.grad.detach().cpu() for p in state.params],
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "rng": rng_states(device),
        "sampler": sampler_state,
        "history": state.history,
        "window": asdict(state.window),
        "config": asdict(cfg),
        "fc_digest": state.fc_digest,
        "best": {
            "val_loss": state.best_val_loss,
            "step": state.best_step,
            "state": state.best_state,
            "stale": state.stale,
            "stopped": state.stopped,
        },
    }


def save_checkpoint(
    state: TrainState,
    cfg: TrainConfig,
    sampler_state: torch.Tensor,
    device: torch.device,
    out_dir: Path,
    numbered: bool,
) -> None:
    """Write ``out_dir/latest.pt`` (and ``checkpoint_<step>.pt`` when ``numbered``)."""
    saved = checkpoint_dict(state, cfg, sampler_state, device)
    if numbered:
        atomic_torch_save(out_dir / f"checkpoint_{state.step:07d}.pt", saved)
    atomic_torch_save(out_dir / LATEST, saved)


def resume_checkpoint(
    path: Path, state: TrainState, cfg: TrainConfig, device: torch.device
) -> None:
    """Restore ``state`` and the global RNGs from the checkpoint at ``path``.

    Raises ``ValueError`` when ``cfg`` differs from the saved recipe outside
    ``RESUMABLE_CHANGES`` or the frozen fc differs from the saved run's.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    diffs = config_differences(saved["config"], cfg)
    if diffs:
        raise ValueError(f"cannot resume {path} with a different recipe: {diffs}")
    if saved.get("fc_digest") != state.fc_digest:
        raise ValueError(f"cannot resume {path}: the frozen fc differs from the saved run's")
    state.trainable.load_state_dict(saved["trainable"])
    state.optimizer.load_state_dict(saved["optimizer"])
    for p, grad in zip(state.params, saved["grads"], strict=True):
        p.grad = None if grad is None else grad.to(device)
    set_rng_states(saved["rng"])
    state.sampler.set_state(saved["sampler"])
    state.step = saved["step"]
    state.history = list(saved["history"])
    state.window = Window(**saved["window"])
    best = saved.get("best")  # absent from checkpoints written before model selection
    if best is not None:
        state.best_val_loss, state.best_step = best["val_loss"], best["step"]
        state.best_state, state.stale, state.stopped = best["state"], best["stale"], best["stopped"]


# ----------------------------------------------------------------------------- history
def history_frame(rows: Sequence[dict[str, float]]) -> pd.DataFrame:
    """History rows -> DataFrame with ``HISTORY_COLUMNS``."""
    return pd.DataFrame(list(rows), columns=list(HISTORY_COLUMNS))


def write_history(rows: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Rewrite the whole CSV atomically (a reader never sees a half-written file)."""
    return atomic_write_text(path, history_frame(rows).to_csv(index=False))


# ----------------------------------------------------------------------------- artefacts
def artefact_config(
    model: nn.Module, cfg: TrainConfig, classes: Sequence[str] | None, steps: int
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
        out.update(
            in_channels=att.in_channels,
            hidden=att.hidden,
            context=att.context,
            activation=att.activation,
        )
    else:
        out.update(in_features=model.fc.in_features, out_features=model.fc.out_features)
    return out


def save_artefact(
    state: TrainState,
    model: nn.Module,
    cfg: TrainConfig,
    classes: Sequence[str] | None,
    path: Path,
) -> None:
    """The trained module's weights (on the CPU) with :func:`artefact_config`: the last
    iteration's, or the best validated ones under ``selection='best_val_loss'``."""
    weights = {k: v.detach().cpu() for k, v in state.trainable.state_dict().items()}
    config = artefact_config(model, cfg, classes, state.step)
    config.update(selection=cfg.selection, selected_step=state.step, stopped_early=state.stopped)
    if cfg.selection == "best_val_loss" and state.best_state is not None:
        weights = state.best_state
        config.update(selected_step=state.best_step, best_val_loss=state.best_val_loss)
    artefact = {"state_dict": weights, "config": config}
    atomic_torch_save(path, artefact)


def load_artefact(path: str | os.PathLike, stage: str) -> tuple[dict, dict[str, Any]]:
    """(state dict, config) of an ``attention.pt`` / ``fc.pt``, checking its stage."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trained {stage} file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj or "config" not in obj:
        raise ValueError(f"{path} is not a file written by regattn_lib.training")
    if obj["config"].get("stage") != stage:
        raise ValueError(f"{path} holds a trained {obj['config'].get('stage')!r}, not {stage!r}")
    return obj["state_dict"], obj["config"]


def load_trained_attention(path: str | os.PathLike) -> RegionalAttention:
    """Rebuild the ``RegionalAttention`` of an ``attention.pt`` (in eval mode).

    Its ``training_config`` attribute holds the stored configuration (backbone, levels,
    classes, ...).
    """
    state, cfg = load_artefact(path, "attention")
    module = RegionalAttention(cfg["in_channels"], cfg["hidden"], cfg["context"], cfg["activation"])
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


def save_metric_attention(
    path: str | os.PathLike, attention: RegionalAttention, config: dict[str, Any]
) -> None:
    """Write an attention learned by metric learning as an ``attention.pt`` that
    ``load_trained_attention`` reads: its weights (on the CPU) and ``config`` (the route's
    settings and validation numbers) with the module's shape and ``route='metric'``."""
    weights = {k: v.detach().cpu() for k, v in attention.state_dict().items()}
    cfg = {
        **config,
        "stage": "attention",
        "route": "metric",
        "in_channels": attention.in_channels,
        "hidden": attention.hidden,
        "context": attention.context,
        "activation": attention.activation,
    }
    atomic_torch_save(path, {"state_dict": weights, "config": cfg})
