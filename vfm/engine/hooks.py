"""Hook points of the training loop. A hook overrides the methods it needs; all default to nothing."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vfm.registry import HOOKS

if TYPE_CHECKING:
    from vfm.engine.trainer import Trainer

logger = logging.getLogger(__name__)


class Hook:
    """Base class: `before_train`, `before_step`, `after_step` (with the step's outputs), `after_train`."""

    def before_train(self, trainer: Trainer) -> None:
        """Called once the model, optimizer and data are built (and a checkpoint restored)."""

    def before_step(self, trainer: Trainer) -> None:
        """Called before each optimizer step's first micro-batch; `trainer.step` is the step about to run."""

    def after_step(self, trainer: Trainer, outputs: dict[str, Any]) -> None:
        """Called after each optimizer step; `outputs` holds the step's averaged losses and logs."""

    def after_train(self, trainer: Trainer) -> None:
        """Called when training ends normally."""


@HOOKS.register("freeze_parameters")
class FreezeParametersHook(Hook):
    """Freeze parameters whose names match `patterns` until step `until_step` (then unfreeze them).

    Freezing happens in `before_train`, before the optimizer sees gradients, so a frozen backbone
    keeps its weights bit-exact while the head warms up. Under DDP, set
    `dist.find_unused_parameters=true` (DDP expects a gradient for every parameter it wrapped).
    """

    def __init__(self, patterns: list[str], until_step: int | None = None) -> None:
        self.patterns, self.until_step = patterns, until_step
        self._frozen: list[Any] = []

    def before_train(self, trainer: Trainer) -> None:
        import fnmatch

        if self.until_step is not None and trainer.step >= self.until_step:
            return
        for name, param in trainer.objective.named_parameters():
            if param.requires_grad and any(fnmatch.fnmatch(name, p) for p in self.patterns):
                param.requires_grad_(False)
                self._frozen.append(param)
        logger.info("freeze_parameters: froze %d tensors matching %s", len(self._frozen), self.patterns)

    def before_step(self, trainer: Trainer) -> None:
        if self._frozen and self.until_step is not None and trainer.step >= self.until_step:
            for param in self._frozen:
                param.requires_grad_(True)
            logger.info("freeze_parameters: unfroze %d tensors at step %d", len(self._frozen), trainer.step)
            self._frozen = []
