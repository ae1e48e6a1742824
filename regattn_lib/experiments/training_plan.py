"""Training the profile's attention models: what to train, the plan said before it starts, and
the notebook step that runs it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from regattn_lib.experiments.pipeline import (
    NOT_TRAINED,
    PAPER_KINDS,
    Context,
    attention_file,
    load_attention,
    uses_released_weights,
)
from regattn_lib.runtime.atomic import atomic_write, atomic_write_json


def training_root(ctx: Context) -> Path:
    """The classification set the attention trains on (``$REGATTN_IMAGENET`` for ImageNet)."""
    from regattn_lib.datasets.imagenet import classification_root

    return classification_root(ctx.data_root, ctx.profile.train.train_set)


def kinds_to_train(ctx: Context) -> list[str]:
    """Attention kinds the profile trains: both, or only the regional one next to released
    context weights (``source='official'``)."""
    return [k for k in PAPER_KINDS.values() if not uses_released_weights(ctx, k)]


def can_train(ctx: Context) -> bool:
    """Whether the training set is in place (``<root>/train`` and ``<root>/val``); never for a
    profile without one (``train_set=None``, paper-quick)."""
    if ctx.profile.train.train_set is None:
        return False
    root = training_root(ctx)
    return (root / "train").is_dir() and (root / "val").is_dir()


@dataclass
class TrainingPlan:
    """What ``train_profile_attention`` will do, said before it starts.

    ``fc_iterations``: iterations of a new fc trained first (0: the backbone's own fc1000);
    ``iterations``: of each attention model; ``seconds_per_iteration``: the backbone forward of
    one mini-batch at the crop size, measured now on the device (validation excluded);
    ``deviations``: named departures from the authors' recipe.
    """

    kinds: list[str]
    fc_iterations: int
    iterations: int
    seconds_per_iteration: float | None
    deviations: list[str]
    seeds: tuple[int, ...] = (0,)

    @property
    def estimated_seconds(self) -> float | None:
        if self.seconds_per_iteration is None:
            return None
        n = self.fc_iterations + self.iterations * len(self.kinds) * len(self.seeds)
        return n * self.seconds_per_iteration

    def describe(self, device: torch.device) -> str:
        est = self.estimated_seconds
        time_s = (
            f"about {est / 3600:.1f} h"
            if est is not None and est >= 3600
            else f"about {est / 60:.1f} min"
            if est is not None
            else "time not estimated (cached features)"
        )
        fc = f"a new fc for {self.fc_iterations} iterations, then " if self.fc_iterations else ""
        return (
            f"[train] {fc}{' and '.join(self.kinds)} attention for {self.iterations} iterations "
            f"{'each' if len(self.seeds) == 1 else f'per seed ({len(self.seeds)} seeds)'}: "
            f"{time_s} on {device} (backbone forward measured per mini-batch); "
            "resumable: a rerun continues from the last checkpoint"
        )


@torch.no_grad()
def _seconds_per_iteration(ctx: Context, recipe: Any) -> float | None:
    if recipe.feature_cache_views:
        return None  # the backbone runs once per image up front, not per iteration
    bb = ctx.backbone
    x = torch.randint(0, 256, (recipe.batch_size, 3, recipe.crop, recipe.crop), dtype=torch.uint8)
    bb.features(x)  # warm-up
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    bb.features(x)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def training_plan(ctx: Context, kinds: Sequence[str] | None = None) -> TrainingPlan:
    """The profile's training: which models, the fc route, iterations and a time estimate.

    Route (b), the authors' setting: a backbone with its own ImageNet fc1000 (their Caffe file)
    trains the attention under it. Route (a): a backbone without one (cirtorch's Caffe file)
    first trains a new fc with alpha = 1, then the attention under it, the authors' advice for
    such a backbone; a named deviation in the tables. ``train.fc_iterations > 0`` forces (a).
    """
    t = ctx.profile.train
    kinds = kinds_to_train(ctx) if kinds is None else list(kinds)
    for k in kinds:
        if uses_released_weights(ctx, k):
            raise ValueError(
                f"profile {ctx.profile.name!r} uses the authors' released {k} weights; training a "
                f"{k} model here would replace them in the tables (set train.source='train')"
            )
    has_fc = getattr(ctx.backbone, "fc", None) is not None
    fc_iterations = t.fc_iterations or (0 if has_fc else t.recipe.iterations)
    deviations = []
    if fc_iterations and t.train_set == "imagenet":
        deviations.append(
            f"the backbone ({ctx.profile.backbone}) has no ImageNet classifier, so a fc was "
            f"trained here first ({fc_iterations} iterations, frozen backbone, alpha = 1) and "
            "the attention under it; the authors trained under their Caffe file's own fc1000"
        )
    if t.attention_lr is not None and t.attention_lr != t.recipe.lr:
        deviations.append(
            f"attention learning rate {t.attention_lr:g} (the authors': {t.recipe.lr:g}), chosen "
            "on the classification validation split (scripts/regularisation_study.py)"
        )
    if t.recipe.feature_cache_views:
        deviations.append(
            f"attention trained on cached backbone features of {t.recipe.feature_cache_views} "
            "augmented views per image (feature_cache_views), not a fresh crop per iteration"
        )
    return TrainingPlan(
        kinds,
        fc_iterations,
        t.recipe.iterations,
        _seconds_per_iteration(ctx, t.recipe),
        deviations,
        tuple(t.seeds),
    )


def notebook_training(ctx: Context, train: bool | None = None) -> dict[str, Any]:
    """Notebook 02's step: train what the profile trains, or say why nothing is trained.

    ``train``: ``None`` trains when the profile trains its own attention (offline profiles) or
    when its training set is present (the paper profile's regional model on ImageNet);
    ``False`` never trains; ``True`` trains and fails naming the missing set if it is absent.
    Returns the runs of ``train_profile_attention`` (empty when nothing was trained).
    """
    if ctx.profile.train.train_set is None:
        if train:
            raise ValueError(
                f"profile {ctx.profile.name!r} has no training set (train.train_set=None); "
                "./run_all.sh --profile paper trains the regional attention"
            )
        print(f"profile {ctx.profile.name!r} trains nothing: {NOT_TRAINED}")
        train = False
    if train is None:
        train = ctx.profile.train.source == "train" or can_train(ctx)
    runs = train_profile_attention(ctx) if train and kinds_to_train(ctx) else {}
    if not train and ctx.profile.train.train_set is not None:
        print(
            f"not training: no training set at {training_root(ctx)} (train/ and val/); the "
            "'+ regional attention' rows stay empty"
        )
    if ctx.profile.train.source == "official":
        print(
            "using the authors' released context-aware attention:", load_attention(ctx, "context")
        )
    return runs


def _plan_file(ctx: Context) -> Path:
    return ctx.dirs["models"] / "training_plan.json"


def training_notes(ctx: Context) -> list[str]:
    """The named deviations of the attention trained here, and how the metric-learned one was
    chosen (for the tables' notes)."""
    from regattn_lib.experiments.metric_plan import logged_notes

    f = _plan_file(ctx)
    plan = json.loads(f.read_text()).get("deviations", []) if f.is_file() else []
    return [f"trained here: {d}" for d in plan] + logged_notes(ctx)


def train_profile_attention(
    ctx: Context, kinds: Sequence[str] | None = None, plan: TrainingPlan | None = None
) -> dict[str, Any]:
    """Train the profile's attention models (fc first where needed), saved under models/.

    ``kinds`` default: :func:`kinds_to_train`. Prints the plan (with its time estimate) before
    starting. Every stage resumes from its last checkpoint, so an interrupted run loses at most
    ``checkpoint_every`` iterations.
    """
    from regattn_lib.training.routes import train_from_folder

    p, t = ctx.profile, ctx.profile.train
    plan = training_plan(ctx, kinds) if plan is None else plan
    print(plan.describe(ctx.device), flush=True)
    atomic_write_json(_plan_file(ctx), asdict(plan))
    bb = ctx.backbone
    base = replace(
        t.recipe,
        levels=p.levels,
        device=str(ctx.device),
        feature_cache_dir=str(ctx.cache_dir / "train_features"),
    )
    out: dict[str, Any] = {}
    fc = None
    if plan.fc_iterations > 0:
        cfg = replace(base, iterations=plan.fc_iterations, stage="fc")
        res = train_from_folder(
            ctx.data_root, bb, cfg, ctx.dirs["models"] / "train_fc", resume=True, name=t.train_set
        )
        fc = res.module
        out["fc"] = res
    for kind in plan.kinds:
        for seed in t.seeds:
            # every seed trains on the first seed's cached views and validation subset
            first = seed == t.seeds[0]
            cfg = replace(
                base,
                stage="attention",
                context=kind == "context",
                seed=seed,
                data_seed=None if first else t.seeds[0],
                lr=t.recipe.lr if t.attention_lr is None else t.attention_lr,
            )
            res = train_from_folder(
                ctx.data_root,
                bb,
                cfg,
                ctx.dirs["models"] / (f"train_{kind}" if first else f"train_{kind}_seed{seed}"),
                fc=fc,
                resume=True,
                name=t.train_set,
            )
            if res.artefact is None:
                raise RuntimeError(
                    f"training of the {kind} attention (seed {seed}) did not finish "
                    f"({res.steps} steps)"
                )
            src = res.artefact
            dest = attention_file(ctx, kind, seed)
            atomic_write(dest, lambda tmp, src=src: shutil.copyfile(src, tmp))
            out[kind if first else f"{kind} seed {seed}"] = res
    return out
