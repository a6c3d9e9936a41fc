"""The contract between the Trainer and whatever it optimises, documented in one place.

An objective is an `nn.Module` built from the `objective` config node. Only `forward` is required; the
Trainer calls every other method when it is defined, generically (it never asks which objective it runs):

============================  ===================================================================================
``forward(batch)``            a dict with ``loss``: a scalar tensor (averaged over micro-batches and ranks, as
                              before) or a ``(sum, count)`` pair for globally normalised losses (the Trainer divides
                              by the count summed over micro-batches and ranks, as torchtitan does with tokens);
                              every other entry is a scalar to log, merged across micro-batches and ranks by name
``trainable_parameters()``    names of the parameters to train; the rest are frozen *before* the strategy wraps
                              the model, so optimizer, clipping and EMA see only these (empty or unknown: an error)
``requirements()``            a `Requirements`: the strategies, precisions, accumulation and clipping supported;
                              an unsupported run is a one-line config error naming both keys, before training
``on_optimizer_step(step,     after every real optimizer step (never after a skipped one): EMA teachers with a
max_steps)``                  momentum schedule, temperature clamps
``extra_state()`` /           state saved in every checkpoint beside the weights (an accountant, a queue, a
``load_extra_state(state)``   teacher); called on every rank (it may gather), saved from rank 0
``frozen_state_keys()``       model state-dict keys that step checkpoints leave out (frozen towers, a fixed
                              linearization point): the objective rebuilds them from their source at construction;
                              a resume checks their fingerprint
``forward_backward(batch,     the objective owns its backward for a micro-batch (per-sample gradients with
loss_scale)``                 torch.func): it fills ``.grad`` of its trainable parameters with
                              ``loss_scale * d loss / d theta`` itself and returns the logs; declare it with
                              ``Requirements(owns_backward=True)``
``predict(batch)``, ...       inference methods evaluators use; ``inference_methods`` (class attribute, default
                              ``("predict",)``) lists those a sharding strategy must expose like ``forward``
``check_dataset(dataset,      refuse data the objective cannot use (e.g. more classes than its head), before training
path)``
``keep_frozen_train_mode``    class attribute; by default submodules with no trainable parameter stay in eval mode
                              during training (dropout off, batch-norm statistics fixed)
============================  ===================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from vfm.errors import ConfigError, VfmError
from vfm.requirements import Requirements

__all__ = ["Objective", "Requirements", "check_requirements", "requirements_of"]


@runtime_checkable
class Objective(Protocol):
    """An `nn.Module` whose `forward(batch)` returns a dict with `loss` and scalars to log (see the module doc)."""

    def __call__(self, batch: Any) -> dict[str, Any]: ...


def requirements_of(objective: nn.Module) -> Requirements:
    """The objective's `requirements()`, or the permissive default."""
    method = getattr(objective, "requirements", None)
    if method is None:
        return Requirements()
    found = method()
    if not isinstance(found, Requirements):
        raise ConfigError(f"objective: requirements() returned {type(found).__name__}, expected vfm.engine.objective.Requirements")
    return found


def check_requirements(requirements: Requirements, objective_type: str, strategy: str, precision: str,
                       grad_accum_steps: int, clip_grad_norm: float | None, strategy_caps: Any) -> None:
    """Raise a one-line ConfigError naming both keys when the run asks for what the objective does not support."""
    who = f"objective.type={objective_type}"
    if requirements.strategies is not None and strategy not in requirements.strategies:
        raise ConfigError(f"dist.strategy: {strategy!r} is not supported by {who} (supports {', '.join(requirements.strategies)})")
    if requirements.precisions is not None and precision not in requirements.precisions:
        raise ConfigError(f"train.precision: {precision!r} is not supported by {who} (supports {', '.join(requirements.precisions)})")
    if not requirements.grad_accum and grad_accum_steps > 1:
        raise ConfigError(f"train.grad_accum_steps: {grad_accum_steps} is not supported by {who} (needs 1)")
    if not requirements.clip_grad_norm and clip_grad_norm is not None:
        raise ConfigError(f"train.clip_grad_norm: {clip_grad_norm} is not supported by {who} (set it to null)")
    if requirements.owns_backward and not strategy_caps.manual_gradients:
        raise ConfigError(f"dist.strategy: {strategy!r} cannot reduce gradients that {who} computes itself (forward_backward)")
    if requirements.global_loss_normalisation and not strategy_caps.gradient_rescaling:
        raise ConfigError(f"dist.strategy: {strategy!r} cannot renormalise the (sum, count) losses of {who}")


def select_trainable(objective: nn.Module, names: Iterable[str], source: str) -> list[str]:
    """Freeze every parameter not in `names`; returns the trainable names. Unknown or no names: a ConfigError."""
    names = list(names)
    own = dict(objective.named_parameters())
    unknown = [n for n in names if n not in own]
    if unknown:
        raise ConfigError(f"{source}: {len(unknown)} names are not parameters of the objective (e.g. {unknown[0]!r})")
    if not names:
        raise ConfigError(f"{source}: selects no parameter; at least one must be trainable")
    keep = set(names)
    for name, param in own.items():
        if name not in keep:
            param.requires_grad_(False)
    return [n for n in own if n in keep]


def frozen_to_eval(module: nn.Module) -> None:
    """Put every maximal submodule without a trainable parameter (but with parameters) in eval mode."""
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        else:
            frozen_to_eval(child)


def inference_methods(objective: nn.Module) -> tuple[str, ...]:
    """The objective's inference methods that exist (for strategies that must expose them like forward)."""
    names = getattr(objective, "inference_methods", ("predict",))
    return tuple(n for n in names if callable(getattr(objective, n, None)))


def split_loss(outputs: Any, objective_type: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(loss, None)` for a plain loss, `(sum, count)` for a globally normalised one; anything else: a VfmError."""
    if not isinstance(outputs, dict) or "loss" not in outputs:
        keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise VfmError(f"objective.type={objective_type}: forward(batch) must return a dict with a 'loss' entry, got {keys}")
    loss = outputs["loss"]
    if isinstance(loss, (tuple, list)):
        if len(loss) != 2:
            raise VfmError(f"objective.type={objective_type}: 'loss' must be a scalar or a (sum, count) pair, got {len(loss)} items")
        total, count = loss
        return total, torch.as_tensor(count, dtype=torch.float64)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise VfmError(f"objective.type={objective_type}: 'loss' must be a scalar tensor, got {type(loss).__name__}"
                       f"{'' if not isinstance(loss, torch.Tensor) else f' of shape {tuple(loss.shape)}'}")
    return loss, None


__all__ = ["Objective", "Requirements", "check_requirements", "frozen_to_eval", "inference_methods",
           "requirements_of", "select_trainable", "split_loss"]
