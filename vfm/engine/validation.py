"""Check every node and setting of a run config before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vfm.data.loader import validate_sampler
from vfm.engine.strategies import strategy_caps, validate_strategy_options
from vfm.errors import ConfigError
from vfm.registry import (
    DATASETS,
    EVALUATORS,
    HOOKS,
    OBJECTIVES,
    OPTIMIZERS,
    SCHEDULERS,
    STRATEGIES,
    import_custom_modules,
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
    expect(cfg.data.batch_size >= 1, "data.batch_size", cfg.data.batch_size, ">= 1")
    expect(cfg.eval.mode in ("max", "min"), "eval.mode", cfg.eval.mode, "max or min")
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


def _validate_metric(cfg: DictConfig) -> None:
    metric = cfg.eval.metric
    if metric is None:
        return
    sets = eval_set_names(cfg)
    set_name = metric.split("/", 1)[0] if "/" in metric and metric.split("/", 1)[0] in cfg.eval.sets else DEFAULT_SET
    if set_name not in sets:
        named = ", ".join(f"{name}/<metric>" for name in cfg.eval.sets) or "no named sets"
        raise ConfigError(f"eval.metric: {metric!r} needs data.val and at least one eval.evaluators entry, or names a "
                          f"set of eval.sets as <set>/<metric> ({named})")


__all__ = ["DEFAULT_SET", "PRECISIONS", "eval_set_names", "expect", "resolve_strategy_name", "strategy_options",
           "validate_run_config"]
