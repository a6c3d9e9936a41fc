"""Distributed strategies behind one interface, chosen by name: single | ddp | fsdp | deepspeed."""

from __future__ import annotations

from typing import Any

from vfm.engine.strategies.base import Strategy
from vfm.errors import ConfigError

STRATEGY_NAMES = ("single", "ddp", "fsdp", "deepspeed")


def build_strategy(name: str, **options: Any) -> Strategy:
    """The strategy called `name`, built with its options (precision, grad_accum_steps, ...).

    Modules are imported on demand so that DeepSpeed stays optional.
    """
    if name == "single":
        from vfm.engine.strategies.single import SingleStrategy as cls
    elif name == "ddp":
        from vfm.engine.strategies.ddp import DDPStrategy as cls
    elif name == "fsdp":
        from vfm.engine.strategies.fsdp import FSDPStrategy as cls
    elif name == "deepspeed":
        from vfm.engine.strategies.deepspeed import DeepSpeedStrategy as cls
    else:
        raise ConfigError(f"dist.strategy: got {name!r}, expected one of {', '.join(STRATEGY_NAMES)}")
    return cls(**options)


__all__ = ["STRATEGY_NAMES", "Strategy", "build_strategy"]
