"""The training recipe (:class:`TrainConfig`), importable without the trainer.

Profiles hold a ``TrainConfig``; importing this module must stay cheap and must not import the
training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from regattn_lib.core.attention import ACTIVATIONS

STAGES = ("fc", "attention")
#: Which weights a run keeps: the last iteration's (the authors') or the best on validation.
SELECTIONS = ("last", "best_val_loss")
# Offsets that derive independent generators from the one seed.
CACHE_SEED_OFFSET = 1
VAL_SEED_OFFSET = 2


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
    data_seed:
        Seeds the cached views and the validation subset instead of ``seed`` (default
        ``None``: ``seed``). Models trained with several seeds for one study share it, so they
        differ only in initialisation and sampling, and one feature cache serves them all.
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
        Images per backbone call for validation and for building the cache (16); on the CPU
        the cache takes one at a time, faster there (``data.CPU_CACHE_BATCH``).
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
    selection:
        Which weights the artefact keeps: ``'last'`` (default, the authors': the weights of the
        last iteration) or ``'best_val_loss'`` (model selection: the validated checkpoint with
        the lowest validation loss; needs ``val_images > 0``). Never the retrieval queries.
    patience:
        Early stopping: end the run after this many validations in a row without a lower
        validation loss (0, default: never; the authors ran a fixed loop).
    input_dropout:
        Dropout probability on the attention's inputs (k_i and g) during training only
        (0.0, default: none, as the authors). A regulariser against overfitting a small
        training set; alpha at test time is unchanged.
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
    selection: str = "last"
    patience: int = 0
    input_dropout: float = 0.0
    data_seed: int | None = None

    @property
    def views_seed(self) -> int:
        """The seed the cached views and the validation subset derive from."""
        return self.seed if self.data_seed is None else self.data_seed

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the first inconsistent field; return ``self``."""
        if self.stage not in STAGES:
            raise ValueError(f"TrainConfig.stage must be one of {STAGES}, got {self.stage!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TrainConfig.activation must be one of {ACTIVATIONS}")
        positive = ("batch_size", "accumulation", "checkpoint_every", "log_every", "levels")
        positive += ("hidden", "crop", "val_crop", "val_batch_size")
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
        if self.selection not in SELECTIONS:
            raise ValueError(f"TrainConfig.selection must be one of {SELECTIONS}")
        if self.selection != "last" and self.val_images == 0:
            raise ValueError("TrainConfig.selection='best_val_loss' needs val_images > 0")
        if self.patience < 0:
            raise ValueError(f"TrainConfig.patience must be >= 0, got {self.patience}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(
                f"TrainConfig.input_dropout must be in [0, 1), got {self.input_dropout}"
            )
        if self.val_crop > self.val_resize:
            raise ValueError(
                f"TrainConfig.val_crop ({self.val_crop}) exceeds val_resize ({self.val_resize})"
            )
        return self
