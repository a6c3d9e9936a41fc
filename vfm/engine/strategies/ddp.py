"""DistributedDataParallel: a full replica per rank, gradients all-reduced (averaged) in backward."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vfm.engine.strategies.base import BuildOptimizer, Strategy
from vfm.errors import ConfigError
from vfm.registry import STRATEGIES


@STRATEGIES.register("ddp")
class DDPStrategy(Strategy):
    """DDP over the default process group; checkpoints are plain state dicts written by rank 0.

    Every rank holds the whole model and optimizer, so a checkpoint resumes at any world size.

    Args:
        find_unused_parameters: DDP's option, for models whose forward skips parameters.
        static_graph: DDP's option, for a graph that is the same every iteration.
    """

    name = "ddp"

    def __init__(self, *, find_unused_parameters: bool = False, static_graph: bool = False, **options) -> None:
        super().__init__(**options)
        if self.world_size == 1 and not torch.distributed.is_initialized():
            raise ConfigError("dist.strategy=ddp: no process group is initialised; launch with torchrun or srun "
                              "(or use dist.strategy=single)")
        self.find_unused_parameters = find_unused_parameters
        self.static_graph = static_graph

    def wrap(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        device = next(model.parameters()).device
        ddp = DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
            static_graph=self.static_graph,
        )
        return ddp, build_optimizer(ddp)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
