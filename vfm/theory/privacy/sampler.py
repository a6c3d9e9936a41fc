"""`cyclic`: a fixed partition of the training set into batches, visited in the same order every epoch (NoisyCGD).

The partition is one permutation drawn from `seed` (never from the epoch); the n mod b records left over are
never used, so they spend no privacy. `batch_size` is per rank, as for every sampler: a global batch of
b = batch_size x world_size records is split evenly over ranks, without padding (a record counted twice would
double its sensitivity).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from vfm.errors import ConfigError
from vfm.registry import SAMPLERS


class CyclicBatchSampler(Sampler[list[tuple[int, int]]]):
    """Global batches `order[k b : (k + 1) b]`, k = 0..l-1, of one seeded permutation, every epoch; resumable."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or batch_size * world_size > size:
            raise ConfigError(f"data.batch_size: got {batch_size} per rank x {world_size} ranks, expected a global "
                              f"batch of 1..{size} (the training set size) for the cyclic sampler")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.batch_size = batch_size * world_size  # global
        self.batches_per_epoch = size // self.batch_size
        self.dropped = size - self.batches_per_epoch * self.batch_size
        self.order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
        self.epoch, self.start = 0, 0

    def batch(self, k: int) -> list[int]:
        """The indices (all ranks) of batch k of every epoch."""
        return self.order[k * self.batch_size : (k + 1) * self.batch_size]

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        """Select `epoch` (the batches do not depend on it) and skip its first `batches_done` batches."""
        self.epoch, self.start = epoch, batches_done

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k in range(self.start, self.batches_per_epoch):
            yield [(self.epoch, i) for i in self.batch(k)[self.rank :: self.world_size]]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


@SAMPLERS.register("cyclic")
def cyclic(size: int, batch_size: int, seed: int, rank: int, world_size: int) -> CyclicBatchSampler:
    """One fixed seeded partition into size // batch_size batches, in the same order every epoch (NoisyCGD)."""
    return CyclicBatchSampler(size, batch_size, seed, rank, world_size)
