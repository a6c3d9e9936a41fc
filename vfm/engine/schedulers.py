"""Learning-rate schedules per optimizer step: linear warmup, then cosine, step or constant."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from vfm.errors import ConfigError
from vfm.registry import SCHEDULERS

logger = logging.getLogger(__name__)


class WarmupSchedule:
    """lr factor at `step`: linear warmup from `warmup_start_factor` to 1, then `decay(step)`.

    A plain object (not a lambda), so LambdaLR's state dict saves and restores it.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_start_factor: float = 0.001) -> None:
        if warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps: got {warmup_steps}, expected >= 0")
        if warmup_steps > total_steps:  # short trial runs of a long recipe: warn, don't refuse
            logger.warning("scheduler.warmup_steps=%d exceeds the run's %d steps; warmup will not finish", warmup_steps, total_steps)
        self.total_steps, self.warmup_steps, self.warmup_start_factor = total_steps, warmup_steps, warmup_start_factor

    def decay(self, step: int) -> float:
        """Factor after warmup."""
        return 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        return self.decay(step)


class CosineSchedule(WarmupSchedule):
    """Half-cosine from 1 to `min_lr_ratio` between the end of warmup and `total_steps`."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_start_factor: float = 0.001, min_lr_ratio: float = 0.0) -> None:
        super().__init__(total_steps, warmup_steps, warmup_start_factor)
        self.min_lr_ratio = min_lr_ratio

    def decay(self, step: int) -> float:
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StepSchedule(WarmupSchedule):
    """Multiply by `gamma` at each of `milestones` (optimizer steps)."""

    def __init__(self, total_steps: int, milestones: list[int], gamma: float = 0.1, warmup_steps: int = 0, warmup_start_factor: float = 0.001) -> None:
        super().__init__(total_steps, warmup_steps, warmup_start_factor)
        self.milestones, self.gamma = sorted(milestones), gamma

    def decay(self, step: int) -> float:
        return self.gamma ** sum(step >= m for m in self.milestones)


def _check_warmup(kwargs: dict[str, Any], path: str) -> None:
    """Warmup and floor settings every schedule shares, checked before any work."""
    limits = {"warmup_steps": (lambda v: v >= 0, ">= 0"), "warmup_start_factor": (lambda v: 0 <= v <= 1, "a value in [0, 1]"),
              "min_lr_ratio": (lambda v: 0 <= v <= 1, "a value in [0, 1]"), "gamma": (lambda v: v > 0, "a positive factor")}
    for key, (ok, expected) in limits.items():
        value = kwargs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise ConfigError(f"{path}.{key}: got {value!r}, expected {expected}")


@SCHEDULERS.register("cosine", check=_check_warmup)
def cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, warmup_start_factor: float = 0.001, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup then cosine decay to `min_lr_ratio` x lr."""
    return LambdaLR(optimizer, CosineSchedule(total_steps, warmup_steps, warmup_start_factor, min_lr_ratio))


def _check_step(kwargs: dict[str, Any], path: str) -> None:
    _check_warmup(kwargs, path)
    if (kwargs.get("milestones") is None) == (kwargs.get("milestone_fractions") is None):
        raise ConfigError(f"{path}: set exactly one of milestones (steps) and milestone_fractions (of total_steps)")
    negative = [m for m in kwargs.get("milestones") or [] if isinstance(m, int) and m < 0]
    if negative:
        raise ConfigError(f"{path}.milestones: got {negative}, expected optimizer steps >= 0")
    bad = [f for f in kwargs.get("milestone_fractions") or [] if not 0.0 < f < 1.0]
    if bad:
        raise ConfigError(f"{path}.milestone_fractions: got {bad}, expected values in (0, 1)")


@SCHEDULERS.register("step", check=_check_step)
def step(optimizer: torch.optim.Optimizer, total_steps: int, milestones: list[int] | None = None, gamma: float = 0.1,
         warmup_steps: int = 0, warmup_start_factor: float = 0.001, milestone_fractions: list[float] | None = None) -> LambdaLR:
    """Linear warmup then step decay at `milestones` (optimizer steps) or `milestone_fractions` of total_steps.

    Fractions suit epoch-based runs whose step count depends on the dataset: Deformable DETR's drop at
    epoch 40 of 50 is `milestone_fractions: [0.8]`.
    """
    if milestone_fractions is not None:
        milestones = [round(f * total_steps) for f in milestone_fractions]
    return LambdaLR(optimizer, StepSchedule(total_steps, milestones, gamma, warmup_steps, warmup_start_factor))


@SCHEDULERS.register("constant", check=_check_warmup)
def constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, warmup_start_factor: float = 0.001) -> LambdaLR:
    """Linear warmup then a constant lr."""
    return LambdaLR(optimizer, WarmupSchedule(total_steps, warmup_steps, warmup_start_factor))
