"""A sampler whose order depends only on (seed, epoch) and that can start mid-epoch, for exact resume."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields `(epoch, index)` keys; `set_epoch(epoch, start)` skips samples already consumed.

    With `world_size > 1` each rank takes every world_size-th index of the shared permutation, padded
    by wrapping around (like DistributedSampler without drop_last) unless `pad=False`.
    """

    def __init__(
        self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        if size <= 0:
            raise ValueError(f"ResumableSampler: dataset is empty (size={size})")
        self.size, self.shuffle, self.seed, self.pad = size, shuffle, seed, pad
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the permutation of `epoch` and skip its first `start` samples of this rank."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad:  # equal shares for training; evaluation (pad=False) sees every sample exactly once
            per_rank = -(-self.size // self.world_size)
            order += order[: per_rank * self.world_size - self.size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._indices()[self.start :]:
            yield self.epoch, index

    def __len__(self) -> int:
        share = -(-self.size // self.world_size) if self.pad else len(range(self.rank, self.size, self.world_size))
        return share - self.start


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so random transforms of sample (epoch, index) draw from a seed of their own.

    That makes augmentation independent of worker count and process history: a resumed run, or a
    run with another `num_workers`, sees exactly the same augmented samples.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int):  # noqa: ANN204 - whatever the dataset returns
        epoch, index = key if isinstance(key, tuple) else (0, key)
        # Seed only the CPU generator: torch.manual_seed would also queue a reseed of every CUDA
        # generator (costly per sample, and not undone by fork_rng(devices=[])).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63)
            return self.dataset[index]
