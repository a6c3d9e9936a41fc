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
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.dist.collectives import barrier, get_rank, get_world_size
from vfm.engine.checkpoint import SHARDED_META, CheckpointManager, atomic_torch_save, load_state_dict_file
from vfm.errors import CheckpointError, ConfigError
from vfm.weights import FORMAT

BuildOptimizer = Callable[[nn.Module], torch.optim.Optimizer]
META_FILE = SHARDED_META  # rank 0's client state plus which strategy and world size wrote the checkpoint
PRECISIONS = ("fp32", "bf16", "fp16")
COMMON_OPTIONS = ("precision", "grad_accum_steps", "micro_batch_size", "clip_grad_norm")  # from data/train, not dist.<name>


@dataclasses.dataclass(frozen=True)
class StrategyCaps:
    """What a strategy supports, known before it is built (the run config is checked against it)."""

    precisions: tuple[str, ...] = PRECISIONS
    """train.precision values."""
    ema: bool = True
    """Whether the Trainer may keep an EMA copy of the (unsharded) weights."""
    manual_gradients: bool = True
    """Whether gradients an objective fills itself (forward_backward) can be reduced across ranks."""
    gradient_rescaling: bool = True
    """Whether accumulated gradients can be multiplied by a factor before the step ((sum, count) losses)."""


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

    @classmethod
    def capabilities(cls, options: dict[str, Any]) -> StrategyCaps:
        """What this strategy supports with `options` (its `dist.<name>` section)."""
        return StrategyCaps()

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

    def scale_gradients(self, model: nn.Module, factor: float) -> None:
        """Multiply every accumulated (already reduced) gradient by `factor`."""
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def reduce_manual_gradients(self, model: nn.Module) -> None:
        """Average across ranks gradients that were filled outside autograd through the wrapper (no-op in one process)."""
        if self.world_size == 1:
            return
        for param in model.parameters():
            if param.grad is not None:
                # SUM then divide: gloo's AVG has summed instead of averaging (PyTorch #162338).
                torch.distributed.all_reduce(param.grad)
                param.grad.div_(self.world_size)

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
    def save_checkpoint(self, checkpoints: CheckpointManager, step: int, state: dict[str, Any], model: nn.Module,
                        optimizer: torch.optim.Optimizer, exclude_keys: tuple[str, ...] = ()) -> Path | None:
        """Write the step checkpoint: `state` (the Trainer's named parts) plus model and optimizer; collective.

        Returns the path on rank 0. `exclude_keys` (an objective's frozen state) are left out of the weights.
        """
        weights = self.model_state_dict(model)
        for key in exclude_keys:
            weights.pop(key, None)
        full = {**state, "model": weights, "optimizer": optimizer.state_dict()}
        path = checkpoints.save(full, step) if self.is_main else None
        barrier()
        return path

    def load_checkpoint(self, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                        exclude_keys: tuple[str, ...] = ()) -> None:
        """Restore model and optimizer from a loaded checkpoint (`load_checkpoint`'s dict); collective."""
        if state.get("sharded_dir"):
            self.load(Path(state["sharded_dir"]), model, optimizer)  # refuses another strategy's folder
            return
        weights = dict(state["model"])
        if exclude_keys:  # rebuilt from their source at construction; the caller checks their fingerprint
            live = self.unwrap(model).state_dict()
            weights.update({key: live[key] for key in exclude_keys if key not in weights})
        self.load_model_state_dict(model, weights)
        optimizer.load_state_dict(state["optimizer"])

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


class ShardedStrategy(Strategy):
    """A strategy whose model and optimizer state live in shards per rank: checkpoints are folders it writes."""

    sharded_state = True

    def save_checkpoint(self, checkpoints: CheckpointManager, step: int, state: dict[str, Any], model: nn.Module,
                        optimizer: torch.optim.Optimizer, exclude_keys: tuple[str, ...] = ()) -> Path | None:
        """Every rank writes its shards into a temp folder; rank 0 renames it whole once all are done."""
        tmp = checkpoints.dir / f".step_{step:08d}.tmp"
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        barrier()
        self.save(tmp, {"format": FORMAT, **state}, model, optimizer)
        path = checkpoints.commit_folder(tmp, step) if self.is_main else None
        barrier()
        return path

    def load_checkpoint(self, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                        exclude_keys: tuple[str, ...] = ()) -> None:
        if not state.get("sharded_dir"):
            raise CheckpointError(f"resume: a {state.get('strategy', 'single')} checkpoint cannot resume under "
                                  f"dist.strategy={self.name}; start from its weights with load_from")
        self.load(Path(state["sharded_dir"]), model, optimizer)  # checks strategy and world size
