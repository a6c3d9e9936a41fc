"""FSDP2: `fully_shard` per block then the root, a mixed-precision policy, checkpoints through DCP.

Parameters live as DTensors sharded over ranks (dim 0). Checkpoints are written by
`torch.distributed.checkpoint` with sharded model and optimizer state, which reshards on load: a
checkpoint from one world size resumes on another.

On gloo the gradient reduction is forced to SUM with a separate division (`set_force_sum_reduction_for_comms`)
rather than trusting ReduceOp.AVG (PyTorch #162338: gloo AVG summed instead of averaging); the parity
test against one process checks the result either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from vfm.engine.objective import inference_methods
from vfm.engine.strategies.base import BuildOptimizer, ShardedStrategy, StrategyCaps
from vfm.errors import ConfigError
from vfm.registry import STRATEGIES

# Attribute names under which models keep their repeated blocks (ViT `blocks`, timm `stages`, LLM `layers`).
BLOCK_CONTAINERS = ("blocks", "layers", "stages")


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The units to shard one by one: children of every `blocks`/`layers`/`stages` container, else the
    top-level children that hold parameters."""
    blocks: list[nn.Module] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in BLOCK_CONTAINERS and isinstance(module, (nn.ModuleList, nn.Sequential)):
            if not any(module is not b and _is_inside(module, b) for b in blocks):
                blocks.extend(child for child in module.children() if any(True for _ in child.parameters()))
    if blocks:
        return blocks
    return [child for child in model.children() if any(True for _ in child.parameters())]


def _is_inside(module: nn.Module, container: nn.Module) -> bool:
    return any(module is m for m in container.modules())


@STRATEGIES.register("fsdp")
class FSDPStrategy(ShardedStrategy):
    """FSDP2 over all ranks of the default process group.

    Args:
        reshard_after_forward: free gathered parameters after forward (ZeRO-3 like); False keeps them
            until backward (ZeRO-2 like, more memory, less communication).
    """

    name = "fsdp"
    reshardable = True

    @classmethod
    def capabilities(cls, options: dict) -> StrategyCaps:
        # EMA of sharded weights would need sharded shadow weights; fp16 needs a sharded grad scaler.
        return StrategyCaps(precisions=("fp32", "bf16"), ema=False, manual_gradients=False)

    def __init__(self, *, reshard_after_forward: bool = True, force_sum_reduction: bool | None = None, **options) -> None:
        super().__init__(**options)
        if not dist.is_initialized():
            raise ConfigError("dist.strategy=fsdp: no process group is initialised; launch with torchrun or srun "
                              "(or use dist.strategy=single)")
        self.reshard_after_forward = reshard_after_forward
        self.force_sum_reduction = dist.get_backend() == "gloo" if force_sum_reduction is None else force_sum_reduction

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """Compute in the configured precision; reduce gradients in fp32 (gloo and accuracy both prefer it)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)

    def wrap(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        policy = self.mixed_precision_policy()
        for block in find_blocks(model):
            fully_shard(block, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        fully_shard(model, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        if self.force_sum_reduction:
            for module in model.modules():
                if isinstance(module, FSDPModule):
                    module.set_force_sum_reduction_for_comms(True)
        # Methods other than forward that run the model (the objective's `inference_methods`: predict,
        # encode_image, ...) need the same parameter all-gather hooks as forward.
        for method in inference_methods(model):
            register_fsdp_forward_method(model, method)
        # The optimizer must see the sharded DTensor parameters, so it is built only now.
        return model, build_optimizer(model)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return _gradient_sync_off(model)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        # clip_grad_norm_ reduces the DTensor gradient norms across ranks; the result is a replicated DTensor.
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # full_tensor() per entry: get_model_state_dict(full_state_dict=True) aborted at exit in some runs.
        full = {}
        for key, value in model.state_dict().items():
            if isinstance(value, DTensor):
                value = value.full_tensor()
            full[key] = value.detach().cpu().clone()  # one rank's full_tensor() may be the live shard itself
        return full

    def load_model_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """Every rank passes the same full state dict; each keeps its own shard (no communication)."""
        current = model.state_dict()
        sharded = {}
        for key, value in state_dict.items():
            target = current.get(key)
            if isinstance(target, DTensor):
                value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh,
                                          target.placements, src_data_rank=None)
            sharded[key] = value
        model.load_state_dict(sharded, strict=True)

    def _save_engine_state(self, path_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path_dir))

    def _load_engine_state(self, path_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        loaded = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(loaded, checkpoint_id=str(path_dir))  # reads this rank's shards, resharding if needed
        set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])


@contextlib.contextmanager
def _gradient_sync_off(model: nn.Module) -> Iterator[None]:
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in modules:
            module.set_requires_gradient_sync(True, recurse=False)
