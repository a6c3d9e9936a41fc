"""Check every node and setting of a run config before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vfm.data.loader import validate_sampler
from vfm.engine.checkpoint import CheckpointManager
from vfm.engine.strategies import strategy_caps, validate_strategy_options
from vfm.errors import ConfigError
from vfm.paths import check_output_folder
from vfm.registry import (
    DATASETS,
    EVALUATORS,
    HOOKS,
    OBJECTIVES,
    OPTIMIZERS,
    SCHEDULERS,
    STRATEGIES,
    import_custom_modules,
    to_container,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_SET = ""  # the evaluation set made of data.val and eval.evaluators (metrics without a set prefix)


def expect(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise a ConfigError `key: got value, expected ...` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {expected}")


def resolve_strategy_name(cfg: DictConfig, world_size: int) -> str:
    """dist.strategy with `auto` resolved: ddp under a launcher with several processes, else single."""
    if cfg.dist.strategy == "auto":
        return "ddp" if world_size > 1 else "single"
    return cfg.dist.strategy


def strategy_options(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The `dist.<name>` section of the strategy in use, validated against its schema."""
    return validate_strategy_options(name, cfg.dist.get(name) or {}, f"dist.{name}")


def eval_set_names(cfg: DictConfig) -> list[str]:
    """The evaluation sets a run has: the default one (data.val + eval.evaluators) and the named ones."""
    names = [DEFAULT_SET] if cfg.data.val is not None and cfg.eval.evaluators else []
    return names + list(cfg.eval.sets)


def validate_run_config(cfg: DictConfig) -> None:
    """Check every node and setting of a run config before any work starts."""
    import_custom_modules(cfg.custom_imports)
    OBJECTIVES.validate(cfg.objective, "objective")
    DATASETS.validate(cfg.data.train, "data.train")
    if cfg.data.val is not None:
        DATASETS.validate(cfg.data.val, "data.val")
    validate_sampler(cfg.data.sampler)
    OPTIMIZERS.validate(cfg.optim, "optim", provided={"model"})
    if cfg.scheduler is not None:
        SCHEDULERS.validate(cfg.scheduler, "scheduler", provided={"optimizer", "total_steps"})
    for i, node in enumerate(cfg.hooks):
        HOOKS.validate(node, f"hooks.{i}")
    for i, node in enumerate(cfg.eval.evaluators):
        EVALUATORS.validate(node, f"eval.evaluators.{i}")
    for name, eval_set in cfg.eval.sets.items():
        expect("/" not in name and name != "", f"eval.sets.{name}", name, "a set name without '/'")
        DATASETS.validate(eval_set.dataset, f"eval.sets.{name}.dataset")
        expect(len(eval_set.evaluators) > 0, f"eval.sets.{name}.evaluators", list(eval_set.evaluators), "at least one evaluator")
        for i, node in enumerate(eval_set.evaluators):
            EVALUATORS.validate(node, f"eval.sets.{name}.evaluators.{i}")
        expect(eval_set.interval is None or eval_set.interval >= 0, f"eval.sets.{name}.interval", eval_set.interval, ">= 0")
        expect(eval_set.batch_size is None or eval_set.batch_size >= 1, f"eval.sets.{name}.batch_size", eval_set.batch_size, ">= 1")
    train = cfg.train
    expect(train.precision in PRECISIONS, "train.precision", train.precision, f"one of {', '.join(PRECISIONS)}")
    expect(train.nonfinite in ("stop", "skip"), "train.nonfinite", train.nonfinite, "stop or skip")
    expect(train.progress_bar in ("auto", "always", "never"), "train.progress_bar", train.progress_bar, "auto, always or never")
    expect((train.max_steps is None) != (train.max_epochs is None), "train.max_steps/max_epochs",
           (train.max_steps, train.max_epochs), "exactly one of them set")
    for key in ("max_steps", "max_epochs"):
        expect(train[key] is None or train[key] > 0, f"train.{key}", train[key], "a positive integer")
    expect(train.grad_accum_steps >= 1, "train.grad_accum_steps", train.grad_accum_steps, ">= 1")
    expect(train.log_interval >= 1, "train.log_interval", train.log_interval, ">= 1")
    expect(train.max_skipped_steps >= 1, "train.max_skipped_steps", train.max_skipped_steps, ">= 1")
    # A negative norm flips the gradient (training goes uphill); zero zeroes it: neither means anything.
    expect(train.clip_grad_norm is None or train.clip_grad_norm > 0, "train.clip_grad_norm", train.clip_grad_norm,
           "a positive number, or null for no clipping")
    check_device(train.device, "train.device")
    data = cfg.data
    expect(data.batch_size >= 1, "data.batch_size", data.batch_size, ">= 1")
    expect(data.val_batch_size is None or data.val_batch_size >= 1, "data.val_batch_size", data.val_batch_size,
           ">= 1, or null for data.batch_size")
    expect(data.num_workers >= 0, "data.num_workers", data.num_workers, ">= 0 (0 loads in the main process)")
    expect(cfg.eval.interval >= 0, "eval.interval", cfg.eval.interval, ">= 0 (0 evaluates only at the end)")
    expect(cfg.eval.mode in ("max", "min"), "eval.mode", cfg.eval.mode, "max or min")
    expect(cfg.checkpoint.interval >= 0, "checkpoint.interval", cfg.checkpoint.interval, ">= 0 (0 writes one only at the end)")
    expect(0.0 < cfg.ema.decay < 1.0, "ema.decay", cfg.ema.decay, "a value in (0, 1), e.g. 0.9998")
    expect(cfg.dist.timeout_s > 0, "dist.timeout_s", cfg.dist.timeout_s, "a positive number of seconds")
    strategies = ["auto", *STRATEGIES.list()]
    expect(cfg.dist.strategy in strategies, "dist.strategy", cfg.dist.strategy, f"one of {', '.join(strategies)}")
    for name in STRATEGIES.list():  # every section, so a typo in an unused one is caught too
        if cfg.dist.get(name):
            validate_strategy_options(name, cfg.dist[name], f"dist.{name}")
    if cfg.dist.strategy != "auto":
        name = cfg.dist.strategy
        caps = strategy_caps(name, strategy_options(cfg, name))
        expect(train.precision in caps.precisions, "train.precision", train.precision,
               f"{' or '.join(caps.precisions)} with dist.strategy={name}")
        expect(caps.ema or not cfg.ema.enabled, "ema.enabled", cfg.ema.enabled,
               f"false with dist.strategy={name} and these dist.{name} options (EMA of sharded weights is not supported)")
    expect(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", cfg.checkpoint.keep_last, ">= 1")
    _validate_metric(cfg)
    if cfg.resume not in (None, "auto") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume: checkpoint {cfg.resume!r} not found (use resume=auto to pick the newest in work_dir)")
    if cfg.load_from is not None and not Path(cfg.load_from).is_file():
        raise ConfigError(f"load_from: weights file {cfg.load_from!r} not found")


def check_device(value: str, key: str) -> None:
    """`value` is auto or a torch device string this machine has (cuda needs a visible GPU)."""
    if value == "auto":
        return
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{key}: got {value!r}, expected auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        expect(count > 0, key, value, "auto or cpu: no CUDA GPU is visible on this machine")
        expect(device.index is None or device.index < count, key, value, f"a GPU index below {count} (GPUs visible here)")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", lambda: False)
        expect(bool(available()), key, value, f"auto, cpu or cuda: {device.type} is not available on this machine")


def validate_work_dir(cfg: DictConfig, work_dir: str | Path) -> None:
    """The work dir is writable and holds no other run's checkpoints, unless this run continues or overwrites them."""
    check_output_folder(work_dir, "work_dir")
    if cfg.checkpoint.overwrite:
        expect(cfg.resume is None, "checkpoint.overwrite", True, f"false when resuming (resume={cfg.resume})")
        return
    manager = CheckpointManager(work_dir)
    if cfg.resume is None:
        found = manager.existing_checkpoints()
        if found:
            shown = ", ".join(str(p.relative_to(work_dir)) for p in found[:2]) + (f" and {len(found) - 2} more" if len(found) > 2 else "")
            raise ConfigError(f"work_dir: {str(work_dir)!r} holds another run's checkpoints ({shown}); expected "
                              "resume=auto to continue it, a new work_dir, or checkpoint.overwrite=true to delete them")
    elif cfg.resume != "auto" and Path(cfg.resume).is_file():
        # Continuing a run from elsewhere: its step files would overwrite a different run's files of the same names.
        readable, run_id = manager.run_id_of(Path(cfg.resume))
        foreign = manager.foreign_checkpoints(run_id) if readable else []
        if foreign:
            raise ConfigError(f"work_dir: {str(work_dir)!r} holds checkpoints of another run than resume={cfg.resume} "
                              f"({foreign[0].name}); expected a new work_dir for the resumed run, or its own work dir")


def metric_set_name(cfg: DictConfig) -> str:
    """The evaluation set eval.metric belongs to: `<set>` of `<set>/<metric>` when that set exists, else data.val's."""
    prefix = cfg.eval.metric.split("/", 1)[0] if "/" in cfg.eval.metric else DEFAULT_SET
    return prefix if prefix in cfg.eval.sets else DEFAULT_SET


def _validate_metric(cfg: DictConfig) -> None:
    metric = cfg.eval.metric
    if metric is None:
        return
    sets = eval_set_names(cfg)
    set_name = metric_set_name(cfg)
    if set_name not in sets:
        named = ", ".join(f"{name}/<metric>" for name in cfg.eval.sets) or "no named sets"
        raise ConfigError(f"eval.metric: {metric!r} needs data.val and at least one eval.evaluators entry, or names a "
                          f"set of eval.sets as <set>/<metric> ({named})")
    nodes = cfg.eval.evaluators if set_name == DEFAULT_SET else cfg.eval.sets[set_name].evaluators
    produced = _declared_metric_names(nodes)
    if produced is None:  # an evaluator that does not declare its names: checked at the first evaluation
        return
    full = [name if set_name == DEFAULT_SET else f"{set_name}/{name}" for name in produced]
    where = "eval.evaluators" if set_name == DEFAULT_SET else f"eval.sets.{set_name}.evaluators"
    expect(metric in full, "eval.metric", metric, f"a metric that {where} produce: {', '.join(full)}")


def _declared_metric_names(nodes: Any) -> list[str] | None:
    """The metrics a list of evaluator nodes produce (each class's `metric_names(**node)`), None if one is silent."""
    names: list[str] = []
    for node in nodes:
        declare = getattr(EVALUATORS.get(node["type"]), "metric_names", None)
        kwargs = {k: v for k, v in to_container(node).items() if k != "type"}
        found = declare(**kwargs) if callable(declare) else None
        if found is None:
            return None
        names += found
    return names


__all__ = ["DEFAULT_SET", "PRECISIONS", "check_device", "eval_set_names", "expect", "metric_set_name", "resolve_strategy_name",
           "strategy_options", "validate_run_config", "validate_work_dir"]
