"""What an objective supports (`requirements()` of the Objective protocol), below the engine so objectives can
declare it without importing the engine."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What an objective supports; `None` means anything."""

    strategies: tuple[str, ...] | None = None
    """dist.strategy values it runs under (e.g. ("single", "ddp") for a torch.func.jvp objective)."""
    precisions: tuple[str, ...] | None = None
    """train.precision values it runs under."""
    grad_accum: bool = True
    """Whether train.grad_accum_steps > 1 is allowed."""
    clip_grad_norm: bool = True
    """Whether global clipping (train.clip_grad_norm) is allowed (DP-SGD clips per sample instead)."""
    owns_backward: bool = False
    """The objective defines `forward_backward` and fills gradients itself."""
    global_loss_normalisation: bool = False
    """Its `loss` is a (sum, count) pair: the strategy must support rescaling accumulated gradients."""
