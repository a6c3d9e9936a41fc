"""DeepSpeed ZeRO 1/2/3 behind the strategy interface (an optional dependency: `pip install 'vfm[deepspeed]'`).

The DeepSpeed config is generated from vfm's settings with concrete numbers (`"auto"` values are a
transformers feature, not DeepSpeed's) and then a raw `dist.deepspeed.config` dict is merged over it:

    train_batch_size                = micro_batch_size * grad_accum_steps * world_size
    train_micro_batch_size_per_gpu  = micro_batch_size
    gradient_accumulation_steps     = grad_accum_steps
    gradient_clipping               = clip_grad_norm (0 = off)
    bf16 / fp16                     = precision
    zero_optimization.stage         = zero_stage

Micro-batches: the caller runs `backward` once per micro-batch and `optimizer_step` once per
`grad_accum_steps` of them, as with the other strategies. DeepSpeed counts micro-steps itself, so
`backward` advances its counter (`engine.step()` off the boundary is only bookkeeping) and
`optimizer_step` is the boundary step. The loss is already divided by grad_accum_steps by the caller,
so DeepSpeed's own division is switched off (`scale_wrt_gas=False`). DeepSpeed clips and (fp16)
scales the loss inside its step: do not pass a GradScaler, and `clip_grad_norm` returns None.

Checkpoints are DeepSpeed's own (`save_checkpoint(dir, tag, ...)`): ZeRO partitions optimizer state
per rank, so a checkpoint resumes only at the world size that wrote it. To change world size,
convert it to a universal checkpoint (`python -m deepspeed.checkpoint.ds_to_universal --input_folder
DIR/vfm --output_folder DIR/vfm_universal`, then rename it to `vfm`) and set
`dist.deepspeed.config: {checkpoint: {load_universal: true}}`, or start from its weights (`zero_to_fp32.py`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.engine.strategies.base import BuildOptimizer, ShardedStrategy, StrategyCaps
from vfm.errors import CheckpointError, ConfigError, VfmError
from vfm.registry import STRATEGIES

TAG = "vfm"  # the checkpoint tag: one subdirectory per vfm checkpoint directory


def import_deepspeed() -> Any:
    """Import DeepSpeed, choosing its CPU accelerator on machines without CUDA."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as error:
        raise ConfigError(f"dist.strategy=deepspeed needs DeepSpeed, which is not installed ({error}); "
                          "install the extra: pip install 'vfm[deepspeed]'") from error
    return deepspeed


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged over `base`, recursing into dicts (a copy; neither input changes)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@STRATEGIES.register("deepspeed")
class DeepSpeedStrategy(ShardedStrategy):
    """DeepSpeed ZeRO over all ranks.

    Args:
        zero_stage: ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters.
        config: a raw DeepSpeed config dict merged over the generated one (for experts).
    """

    name = "deepspeed"
    scales_fp16_loss = True

    @classmethod
    def capabilities(cls, options: dict) -> StrategyCaps:
        # Gradients live in ZeRO's partitioned flat buffers: nothing outside its step may touch them.
        stage = options.get("zero_stage", 1)
        return StrategyCaps(ema=stage < 3, manual_gradients=False, gradient_rescaling=False)

    def __init__(self, *, zero_stage: int = 1, config: dict[str, Any] | None = None, **options) -> None:
        super().__init__(**options)
        if zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"dist.deepspeed.zero_stage: got {zero_stage!r}, expected 0, 1, 2 or 3")
        self.deepspeed = import_deepspeed()
        if config is not None and not isinstance(config, dict):  # an OmegaConf node from YAML
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(config, resolve=True)
        self.config = merge(self.generated_config(zero_stage), config or {})
        self.zero_stage = self.config["zero_optimization"]["stage"]
        expected = self.config["train_micro_batch_size_per_gpu"] * self.config["gradient_accumulation_steps"] * self.world_size
        if self.config["train_batch_size"] != expected:
            raise ConfigError(f"dist.deepspeed.config: train_batch_size={self.config['train_batch_size']} must equal "
                              f"micro batch x accumulation x world size = {expected}")
        # Only a universal checkpoint can be loaded at another world size.
        self.reshardable = bool(self.config.get("checkpoint", {}).get("load_universal", False))
        self.engine: Any = None

    def generated_config(self, zero_stage: int) -> dict[str, Any]:
        """The DeepSpeed config that vfm's settings imply, with concrete numbers."""
        return {
            "train_batch_size": self.micro_batch_size * self.grad_accum_steps * self.world_size,
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": self.grad_accum_steps,
            "gradient_clipping": float(self.max_grad_norm or 0.0),
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "zero_optimization": {"stage": zero_stage},
            # vfm passes a torch optimizer built by its registry: no fused DeepSpeed Adam to compile.
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,  # vfm logs metrics itself
        }

    # ---------------------------------------------------------------------------------------- wrap
    def wrap(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        optimizer = build_optimizer(model)
        if not torch.distributed.is_initialized():
            # DeepSpeed needs a process group even for one process (without one it tries MPI discovery), and it
            # reads LOCAL_RANK throughout the run; the caller's destroy_process_group ends the group with the run.
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
            os.environ.setdefault("LOCAL_RANK", "0")
        try:
            engine, ds_optimizer, _, _ = self.deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        except (AssertionError, ValueError, TypeError, KeyError) as error:  # DeepSpeed validates its config by assert
            raise ConfigError(f"dist.deepspeed.config: DeepSpeed refused the config: {type(error).__name__}: {error}") from error
        self.engine = engine
        return engine, ds_optimizer

    def unwrap(self, model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    # ---------------------------------------------------------------------------------------- step
    def backward(self, loss: torch.Tensor) -> None:
        engine = self._engine()
        engine.backward(loss, scale_wrt_gas=False)
        if not engine.is_gradient_accumulation_boundary():
            engine.step()  # off the boundary this only advances DeepSpeed's micro-step counter

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed decides from its micro-step counter

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor | None:
        """None: DeepSpeed clips inside `optimizer_step` to `gradient_clipping`; read `last_grad_norm` after it."""
        configured = self.config.get("gradient_clipping", 0.0)
        if float(max_norm) != float(configured):
            raise ConfigError(f"train.clip_grad_norm: {max_norm} but dist.deepspeed.config.gradient_clipping={configured}; "
                              "pass clip_grad_norm to the strategy so DeepSpeed clips")
        return None

    def last_grad_norm(self) -> float | None:
        """The global gradient norm DeepSpeed computed in the last optimizer step (None if unknown)."""
        norm = self._engine().get_global_grad_norm()
        return None if norm is None else float(norm)

    def scheduler_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """ZeRO's optimizer wraps the torch one and shares its param groups: schedulers drive the inner one."""
        return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer

    def optimizer_step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
        if scaler is not None:
            raise ConfigError("deepspeed: do not pass a GradScaler; DeepSpeed scales fp16 losses itself")
        engine = self._engine()
        if not engine.is_gradient_accumulation_boundary():
            raise VfmError(f"deepspeed: optimizer_step after {engine.micro_steps % engine.gradient_accumulation_steps() + 1} "
                               f"backward calls; expected grad_accum_steps={engine.gradient_accumulation_steps()}")
        engine.step()

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        pass  # engine.step() already cleared them

    # --------------------------------------------------------------------------------- state dicts
    def _parameters_gathered(self, model: nn.Module, modifier_rank: int | None) -> contextlib.AbstractContextManager:
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        return self.deepspeed.zero.GatheredParameters(list(self.unwrap(model).parameters()), modifier_rank=modifier_rank)

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full weights in the module's dtype (bf16 under bf16; the fp32 masters stay in the optimizer)."""
        with self._parameters_gathered(model, modifier_rank=None):
            return {key: value.detach().cpu().clone() for key, value in self.unwrap(model).state_dict().items()}

    def load_model_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        module = self.unwrap(model)
        with self._parameters_gathered(model, modifier_rank=0):
            if self.zero_stage < 3 or self.is_main:
                module.load_state_dict(state_dict)
        optimizer = getattr(self.engine, "optimizer", None)
        if optimizer is not None and hasattr(optimizer, "refresh_fp32_params"):
            optimizer.refresh_fp32_params()  # the optimizer's fp32 master copy follows the new weights

    # --------------------------------------------------------------------------------- checkpoints
    def _save_engine_state(self, path_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._engine().save_checkpoint(str(path_dir), tag=TAG, client_state={}, save_latest=False)

    def _load_engine_state(self, path_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        load_path, _ = self._engine().load_checkpoint(str(path_dir), tag=TAG)
        if load_path is None:
            raise CheckpointError(f"{path_dir}: DeepSpeed found no checkpoint with tag {TAG!r}")

    def _reshard_message(self, path_dir: Path, saved_world_size: int) -> str:
        return (f"{path_dir}: a DeepSpeed ZeRO checkpoint written with world size {saved_world_size} cannot resume "
                f"with world size {self.world_size} (optimizer state is partitioned per rank); convert it with "
                f"`python -m deepspeed.checkpoint.ds_to_universal --input_folder {path_dir / TAG} --output_folder "
                f"{path_dir}_universal/{TAG}`, copy {path_dir / 'strategy.pt'} beside it and set "
                "dist.deepspeed.config.checkpoint.load_universal=true, or start from its weights with load_from")

    def _engine(self) -> Any:
        if self.engine is None:
            raise VfmError("deepspeed: call wrap(model, build_optimizer) first")
        return self.engine
