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


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of `ResumableSampler` keys; `set_epoch(epoch, batches_done)` resumes mid-epoch (the default sampler)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 train: bool = True) -> None:
        self.samples = ResumableSampler(size, shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
        self.batch_size, self.drop_last = batch_size, train

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        """Select the order of `epoch` and skip the batches of it already consumed."""
        self.samples.set_epoch(epoch, start=batches_done * self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[tuple[int, int]] = []
        for key in self.samples:
            batch.append(key)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        remaining = len(self.samples)
        return remaining // self.batch_size if self.drop_last else -(-remaining // self.batch_size)


class PoissonBatchSampler(Sampler[list[tuple[int, int]]]):
    """Poisson subsampling (DP-SGD): every sample joins each batch independently with probability `sample_rate`.

    Batch `b` of epoch `e` is drawn from a generator seeded by (seed, e, b) alone, so a resumed run draws the
    same batches; an epoch is round(1 / sample_rate) batches (one pass in expectation). Under several ranks
    each takes every world_size-th drawn index. A draw can be empty: the batch is then `[]` (the loader
    yields an empty dict) and an objective that owns its backward adds only its noise.
    """

    def __init__(self, size: int, sample_rate: float, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate: got {sample_rate!r}, expected a probability in (0, 1]")
        self.size, self.sample_rate, self.seed = size, sample_rate, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = max(1, round(1.0 / sample_rate))
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, batches_done: int = 0) -> None:
        """Select `epoch` and skip its first `batches_done` draws."""
        self.epoch, self.start = epoch, batches_done

    def draw(self, epoch: int, batch: int) -> list[int]:
        """The indices (all ranks) of batch `batch` of `epoch`."""
        generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 10_000_019 + batch) % 2**63)
        return torch.nonzero(torch.rand(self.size, generator=generator) < self.sample_rate).flatten().tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in range(self.start, self.batches_per_epoch):
            yield [(self.epoch, i) for i in self.draw(self.epoch, batch)[self.rank :: self.world_size]]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start
