"""The strategy interface: how a model is wrapped, stepped, gathered and checkpointed across ranks.

A training step through a strategy reads (the Trainer owns autocast, loss scaling and scheduling):

    model, optimizer = strategy.wrap(model, build_optimizer)
    for i, micro_batch in enumerate(micro_batches):                    # grad_accum_steps of them
        with strategy.no_sync(model) if i < accum - 1 else nullcontext():
            strategy.backward(model(micro_batch)["loss"] / accum)
    grad_norm = strategy.clip_grad_norm(model, max_norm)              # None where the engine clips itself
    strategy.optimizer_step(optimizer)
    strategy.zero_grad(optimizer)

Every call is collective where the engine needs it to be: all ranks call it in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.dist.collectives import barrier, get_rank, get_world_size
from vfm.engine.checkpoint import SHARDED_META, atomic_torch_save, load_state_dict_file
from vfm.errors import CheckpointError, ConfigError

BuildOptimizer = Callable[[nn.Module], torch.optim.Optimizer]
META_FILE = SHARDED_META  # rank 0's client state plus which strategy and world size wrote the checkpoint
PRECISIONS = ("fp32", "bf16", "fp16")


class Strategy:
    """One process, no wrapping: the reference every distributed strategy must match numerically.

    Build strategies after the process group is initialised: rank and world size are read then.

    Args:
        precision: fp32, bf16 or fp16; strategies that own mixed precision (FSDP2, DeepSpeed) read it.
        grad_accum_steps: micro-batches per optimizer step (DeepSpeed needs it at initialise time).
        micro_batch_size: samples per rank per micro-batch (DeepSpeed's train_micro_batch_size_per_gpu).
        clip_grad_norm: max gradient norm, or None (DeepSpeed's gradient_clipping).
    """

    name = "single"
    # Whether a checkpoint written with one world size may be loaded with another.
    reshardable = True
    # Whether model and optimizer state live in shards per rank (the Trainer then writes checkpoint folders).
    sharded_state = False
    # Whether the engine scales fp16 losses itself (the Trainer then makes no GradScaler).
    scales_fp16_loss = False

    def __init__(self, precision: str = "fp32", grad_accum_steps: int = 1, micro_batch_size: int = 1,
                 clip_grad_norm: float | None = None) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"train.precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}")
        if grad_accum_steps < 1 or micro_batch_size < 1:
            raise ConfigError(f"{self.name} strategy: grad_accum_steps={grad_accum_steps} and "
                              f"micro_batch_size={micro_batch_size} must both be >= 1")
        self.precision = precision
        self.grad_accum_steps = grad_accum_steps
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = clip_grad_norm
        self.rank, self.world_size = get_rank(), get_world_size()
        self.is_main = self.rank == 0

    # ---------------------------------------------------------------------------------------- wrap
    def wrap(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap `model` for this engine and build its optimizer on the wrapped parameters."""
        return model, build_optimizer(model)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever `wrap` returned (for attribute access, EMA, export)."""
        return model

    # ---------------------------------------------------------------------------------------- step
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch loss (already divided by grad_accum_steps, and scaled for fp16)."""
        loss.backward()

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context for the non-final micro-batches of an accumulation: skip the gradient reduction."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor | None:
        """Clip gradients to `max_norm`; the total norm before clipping, equal on all ranks."""
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def last_grad_norm(self) -> float | None:
        """The gradient norm the engine computed in its own clipping, where `clip_grad_norm` returned None."""
        return None

    def scheduler_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The torch optimizer whose param groups an lr scheduler drives (an engine's wrapper may not be one)."""
        return optimizer

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
        """Apply the accumulated gradients (through the fp16 `scaler` when given)."""
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of the step just taken."""
        optimizer.zero_grad(set_to_none=True)

    # --------------------------------------------------------------------------------- state dicts
    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A snapshot (CPU copies) of the full, unsharded model state dict; collective, meaningful on rank 0."""
        return {key: value.detach().cpu().clone() for key, value in self.unwrap(model).state_dict().items()}

    def load_model_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a full state dict into the wrapped model; collective, only rank 0's values matter where
        the engine broadcasts (FSDP2, DeepSpeed ZeRO-3), every rank's otherwise."""
        self.unwrap(model).load_state_dict(state_dict)

    # --------------------------------------------------------------------------------- checkpoints
    def save(self, path_dir: str | Path, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> Path:
        """Write a resumable checkpoint directory in this engine's native format; collective.

        `state` is the caller's own picklable state (step, data position, scheduler, ...), written by rank 0
        after the engine's files, so a folder with the meta file is complete.
        """
        path_dir = Path(path_dir)
        self._save_engine_state(path_dir, model, optimizer)
        if self.is_main:
            self._write_meta(path_dir, state)
        barrier()
        return path_dir

    def load(self, path_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model and optimizer from `save`'s directory; returns the caller's `state`; collective."""
        path_dir = Path(path_dir)
        state = self._read_meta(path_dir)
        self._load_engine_state(path_dir, model, optimizer)
        return state

    def _save_engine_state(self, path_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write model and optimizer state (here: full state dicts from rank 0)."""
        model_sd = self.model_state_dict(model)
        optim_sd = optimizer.state_dict()
        if self.is_main:
            atomic_torch_save({"model": model_sd, "optimizer": optim_sd}, path_dir / "model_optimizer.pt")

    def _load_engine_state(self, path_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Read what `_save_engine_state` wrote."""
        saved = torch.load(path_dir / "model_optimizer.pt", map_location="cpu", weights_only=True)
        self.load_model_state_dict(model, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])

    # ----------------------------------------------------------------------------------- meta data
    def _write_meta(self, path_dir: Path, state: dict[str, Any]) -> None:
        meta = {"strategy": self.name, "world_size": self.world_size, "state": state}
        atomic_torch_save(meta, path_dir / META_FILE)

    def _read_meta(self, path_dir: Path) -> dict[str, Any]:
        """The caller's state, after checking the checkpoint was written by this strategy at a compatible world size."""
        meta_path = path_dir / META_FILE
        if not meta_path.is_file():
            raise CheckpointError(f"{path_dir}: not a strategy checkpoint directory ({META_FILE} missing)")
        meta = load_state_dict_file(meta_path)
        if meta["strategy"] != self.name:
            raise CheckpointError(f"{path_dir}: written by the {meta['strategy']!r} strategy, cannot resume with "
                                  f"{self.name!r}; load its weights with load_from instead")
        if meta["world_size"] != self.world_size and not self.reshardable:
            raise CheckpointError(self._reshard_message(path_dir, meta["world_size"]))
        return meta["state"]

    def _reshard_message(self, path_dir: Path, saved_world_size: int) -> str:
        return (f"{path_dir}: written with world size {saved_world_size}, this run has {self.world_size}; "
                f"the {self.name} strategy cannot reshard its checkpoints")
