"""The one-process strategy: no wrapping, no collectives (the base class's behaviour)."""

from __future__ import annotations

from vfm.engine.strategies.base import Strategy
from vfm.registry import STRATEGIES


@STRATEGIES.register("single")
class SingleStrategy(Strategy):
    """Train in one process; the reference the distributed strategies are tested against."""

    name = "single"
