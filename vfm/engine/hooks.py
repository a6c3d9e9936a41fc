"""Hook points of the training loop. A hook overrides the methods it needs; all default to nothing.

The order within one optimizer step (detectron2's, plus a gradient stage):

    configure(objective)          once, on the unwrapped objective, before the optimizer is built and the
                                  strategy wraps it (freezing, gradient masks)
    before_train(trainer)         once everything is built and a checkpoint restored
    before_step(trainer)          every step, before its first micro-batch
    after_backward(trainer)       after all micro-batches' backward and the cross-rank reduction, before unscale,
                                  clipping and the optimizer step: gradients are final here (DP noise, masks,
                                  monitors); under fp16 they are still multiplied by `trainer.grad_scale()`
    after_step(trainer, outputs)  after the step (and its evaluation, when one was due); `outputs` is empty for a
                                  skipped (non-finite) step
    after_train(trainer)          always, in `finally`: also after an error, a preemption or a dry run;
                                  `trainer.exit` says which ("completed", "preempted", "dry_run", "error")

A hook with state returns it from `state_dict()` (picklable, rank 0's is saved) and gets it back through
`load_state_dict(state)` on resume; a hook without state returns None.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import TYPE_CHECKING, Any

from torch import nn

from vfm.errors import ConfigError
from vfm.registry import HOOKS

if TYPE_CHECKING:
    from vfm.engine.trainer import Trainer

logger = logging.getLogger(__name__)


class Hook:
    """Base class of training hooks (see the module doc for when each method runs)."""

    def configure(self, objective: nn.Module) -> None:
        """Called on the unwrapped objective before the optimizer is built and the model wrapped."""

    def before_train(self, trainer: Trainer) -> None:
        """Called once the model, optimizer and data are built (and a checkpoint restored)."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each optimizer step's first micro-batch; `trainer.step` is the step about to run."""

    def after_backward(self, trainer: Trainer) -> None:
        """Called once the step's gradients are accumulated and reduced, before unscale, clipping and the step."""

    def after_step(self, trainer: Trainer, outputs: dict[str, Any]) -> None:
        """Called after each optimizer step; `outputs` holds the step's merged losses and logs ({} if skipped)."""

    def after_train(self, trainer: Trainer) -> None:
        """Called when training ends, however it ends (`trainer.exit`)."""

    def state_dict(self) -> Any:
        """State to keep in checkpoints (None: nothing)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what `state_dict` returned."""


@HOOKS.register("freeze_parameters")
class FreezeParametersHook(Hook):
    """Freeze parameters whose names match `patterns` (fnmatch), for good or until step `until_step`.

    Without `until_step` they are frozen before the optimizer is built and the model wrapped, so neither
    optimizer, clipping, EMA nor DDP sees them. With `until_step` they stay registered (the optimizer and DDP
    must know them for later) and are frozen from `before_train` to that step; under DDP set
    `dist.ddp.find_unused_parameters=true` meanwhile. A pattern that matches no parameter is a config error.
    """

    def __init__(self, patterns: list[str], until_step: int | None = None) -> None:
        self.patterns, self.until_step = patterns, until_step
        self._names: list[str] = []
        self._frozen: list[Any] = []

    def configure(self, objective: nn.Module) -> None:
        names = [name for name, _ in objective.named_parameters()]
        for pattern in self.patterns:
            if not any(fnmatch.fnmatch(name, pattern) for name in names):
                raise ConfigError(f"hooks: freeze_parameters pattern {pattern!r} matches no parameter of the objective"
                                  f" (e.g. {', '.join(names[:3])})")
        self._names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in self.patterns)]
        if self.until_step is None:
            for name, param in objective.named_parameters():
                if name in self._names:
                    param.requires_grad_(False)
            logger.info("freeze_parameters: froze %d tensors matching %s", len(self._names), self.patterns)

    def before_train(self, trainer: Trainer) -> None:
        if self.until_step is None or trainer.step >= self.until_step:
            return
        for name, param in trainer.objective.named_parameters():
            if param.requires_grad and name in self._names:
                param.requires_grad_(False)
                self._frozen.append(param)
        logger.info("freeze_parameters: froze %d tensors matching %s until step %d", len(self._frozen), self.patterns,
                    self.until_step)

    def before_step(self, trainer: Trainer) -> None:
        if self._frozen and self.until_step is not None and trainer.step >= self.until_step:
            for param in self._frozen:
                param.requires_grad_(True)
            logger.info("freeze_parameters: unfroze %d tensors at step %d", len(self._frozen), trainer.step)
            self._frozen = []
