"""The typed schema of a training run's config; each field is documented where it is declared."""

from __future__ import annotations

from dataclasses import dataclass, field

# OmegaConf reads these dataclasses, so they use typing's Optional/List/Dict spellings it understands.
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class DataConfig:
    """Datasets and loaders."""

    root: Optional[str] = None
    """Dataset root folder; dataset nodes refer to it as ${data.root} (e.g. data.root=/data/coco)."""
    train: Dict[str, Any] = MISSING
    """Training dataset node (`type` from the datasets registry)."""
    val: Optional[Dict[str, Any]] = None
    """Held-out dataset node for evaluation; null disables evaluation."""
    batch_size: int = 32
    """Samples per process per micro-batch."""
    val_batch_size: Optional[int] = None
    """Evaluation batch size (default: batch_size)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    pin_memory: bool = False
    """Pin host memory (useful on GPUs)."""
    sampler: Optional[Dict[str, Any]] = None
    """Batch sampler node for map-style training data (`type` from the samplers registry: resumable, poisson);
    null is `resumable`. Streams (IterableDatasets) order themselves."""


@dataclass
class TrainConfig:
    """The training loop."""

    max_steps: Optional[int] = None
    """Optimizer steps to run; exactly one of max_steps and max_epochs is set."""
    max_epochs: Optional[int] = None
    """Epochs to run (converted to steps: epochs x steps per epoch)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    clip_grad_norm: Optional[float] = None
    """Clip the global gradient norm to this value; null disables clipping."""
    precision: str = "fp32"
    """fp32, bf16 (autocast) or fp16 (autocast with a gradient scaler)."""
    device: str = "auto"
    """cuda when available else cpu, or an explicit torch device string."""
    nonfinite: str = "stop"
    """On a NaN/inf loss: stop (error naming the step) or skip (drop the step, keep going)."""
    max_skipped_steps: int = 10
    """With nonfinite=skip: stop after this many consecutive skipped steps."""
    log_interval: int = 10
    """Steps between console/metrics.jsonl/TensorBoard lines."""
    progress_bar: str = "auto"
    """auto (when stdout is a terminal), always or never."""
    tensorboard: bool = True
    """Write TensorBoard scalars to work_dir/tensorboard."""


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (timm's ModelEmaV3)."""

    enabled: bool = False
    """Keep an EMA copy of the weights."""
    decay: float = 0.9998
    """EMA decay per optimizer step."""
    warmup: bool = False
    """Ramp the decay up during early steps (timm's warmup)."""
    eval_with_ema: bool = True
    """Evaluate and export the EMA weights instead of the raw ones."""


@dataclass
class EvalSetConfig:
    """One named evaluation set."""

    dataset: Dict[str, Any] = MISSING
    """Dataset node (`type` from the datasets registry)."""
    evaluators: List[Dict[str, Any]] = MISSING
    """Evaluator nodes (`type` from the evaluators registry)."""
    interval: Optional[int] = None
    """Steps between evaluations of this set (null: eval.interval; 0: only at the end)."""
    batch_size: Optional[int] = None
    """Batch size (null: data.val_batch_size, else data.batch_size)."""


@dataclass
class EvalConfig:
    """Periodic evaluation and best-checkpoint selection."""

    interval: int = 0
    """Steps between evaluations; 0 evaluates only at the end."""
    metric: Optional[str] = None
    """Metric that selects best.pt: a metric of data.val's evaluators (e.g. accuracy) or `<set>/<metric>` of a
    named set (e.g. retrieval/recall@1); null disables best.pt."""
    mode: str = "max"
    """max or min: which direction of `metric` is better."""
    evaluators: List[Dict[str, Any]] = field(default_factory=list)
    """Evaluator nodes (`type` from the evaluators registry) run on data.val (logged as val/<metric>)."""
    sets: Dict[str, EvalSetConfig] = field(default_factory=dict)
    """More named evaluation sets, each with its dataset, evaluators and interval (logged as val/<set>/<metric>)."""


@dataclass
class CheckpointConfig:
    """Checkpoint writing."""

    interval: int = 0
    """Steps between checkpoints; 0 writes one only at the end."""
    keep_last: int = 3
    """Step checkpoints kept on disk (best.pt is kept apart)."""
    export_safetensors: bool = True
    """Export final weights as work_dir/model.safetensors."""
    overwrite: bool = False
    """A fresh run (no resume) in a work dir that holds another run's checkpoints: false refuses to start; true
    deletes those checkpoints (and the old metrics.jsonl) and starts afresh."""


def _strategy_defaults(name: str) -> Dict[str, Any]:
    # Filled from the strategy class's keyword-only arguments, its schema, so overrides such as
    # dist.deepspeed.zero_stage=2 need no `+` and a typo gets a did-you-mean.
    from vfm.engine.strategies import strategy_option_defaults

    return strategy_option_defaults(name)


@dataclass
class DistConfig:
    """How the processes of a launch (torchrun, srun) train together."""

    strategy: str = "auto"
    """auto (ddp when launched with several processes, else single), single, ddp, fsdp (FSDP2, sharded
    checkpoint folders) or deepspeed (ZeRO, DeepSpeed's checkpoint folders; the `deepspeed` extra)."""
    timeout_s: float = 1800.0
    """Rendezvous and collective timeout: a missing rank fails the run instead of hanging it."""
    ddp: Dict[str, Any] = field(default_factory=lambda: _strategy_defaults("ddp"))
    """Options of the ddp strategy: find_unused_parameters, static_graph (DDP's own options)."""
    fsdp: Dict[str, Any] = field(default_factory=lambda: _strategy_defaults("fsdp"))
    """Options of the fsdp strategy: reshard_after_forward (true: ZeRO-3 like; false: keep gathered parameters
    until backward), force_sum_reduction (null: on with gloo)."""
    deepspeed: Dict[str, Any] = field(default_factory=lambda: _strategy_defaults("deepspeed"))
    """Options of the deepspeed strategy: zero_stage (0-3, default 1), config (a raw DeepSpeed config merged over
    the generated one; batch sizes, clipping and precision come from data/train)."""


@dataclass
class RunConfig:
    """A whole training run."""

    objective: Dict[str, Any] = MISSING
    """Objective node (`type` from the objectives registry); it builds its backbone and heads."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: Dict[str, Any] = MISSING
    """Optimizer node (`type` from the optimizers registry) with parameter-group settings."""
    scheduler: Optional[Dict[str, Any]] = None
    """Scheduler node (`type` from the schedulers registry); null keeps the lr constant."""
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    hooks: List[Dict[str, Any]] = field(default_factory=list)
    """Hook nodes (`type` from the hooks registry)."""
    work_dir: Optional[str] = None
    """Output folder; default work_dirs/<config file name>."""
    seed: int = 0
    """Seed for every RNG (per-rank offsets are added by the distributed launcher)."""
    deterministic: bool = False
    """Use deterministic algorithms only (slower; errors on ops without one)."""
    resume: Optional[str] = None
    """auto (newest valid checkpoint in work_dir, if any), a checkpoint path, or null."""
    load_from: Optional[str] = None
    """Weights-only initialisation from a .pt or .safetensors file (missing/unexpected keys reported)."""
    custom_imports: List[str] = field(default_factory=list)
    """Modules imported before building, so third-party code can register components."""
