"""Registered batch samplers for map-style training data (`data.sampler: {type: ...}`).

A sampler builder receives the dataset size, batch size, seed, rank and world size from the loader; its
result yields lists of `(epoch, index)` keys and resumes with `set_epoch(epoch, batches_done)`.
"""

from __future__ import annotations

from vfm.data.sampler import PoissonBatchSampler, ResumableBatchSampler
from vfm.errors import ConfigError
from vfm.registry import SAMPLERS

PROVIDED = ("size", "batch_size", "seed", "rank", "world_size")  # arguments the loader passes


@SAMPLERS.register("resumable")
def resumable(size: int, batch_size: int, seed: int, rank: int, world_size: int) -> ResumableBatchSampler:
    """Shuffled by (seed, epoch), sharded over ranks, fixed-size batches (the last partial one dropped)."""
    return ResumableBatchSampler(size, batch_size, seed, rank, world_size, train=True)


def _check_poisson(kwargs: dict, path: str) -> None:
    rate = kwargs.get("sample_rate")
    if isinstance(rate, (int, float)) and not 0.0 < rate <= 1.0:
        raise ConfigError(f"{path}.sample_rate: got {rate!r}, expected a probability in (0, 1]")


@SAMPLERS.register("poisson", check=_check_poisson)
def poisson(size: int, batch_size: int, seed: int, rank: int, world_size: int, sample_rate: float) -> PoissonBatchSampler:
    """Poisson subsampling with inclusion probability `sample_rate` (batch_size is unused: batches vary in size)."""
    return PoissonBatchSampler(size, sample_rate, seed, rank, world_size)
