"""Unit tests for vfm/data/sampler.py: order from (seed, epoch) only, mid-epoch start, ranks, seeded augmentation."""

from __future__ import annotations

import pytest
import torch

from vfm.data.sampler import ResumableSampler, SeededDataset


def indices(sampler: ResumableSampler) -> list[int]:
    keys = list(sampler)
    assert len(keys) == len(sampler)
    assert all(epoch == sampler.epoch for epoch, _ in keys)
    return [index for _, index in keys]


def test_order_depends_only_on_seed_and_epoch():
    sampler = ResumableSampler(50, seed=3)
    sampler.set_epoch(2)
    torch.manual_seed(0)
    first = indices(sampler)
    torch.manual_seed(12345)  # the global RNG plays no part
    torch.rand(10)
    assert indices(sampler) == first
    assert indices(ResumableSampler(50, seed=3)) != first  # epoch 0
    again = ResumableSampler(50, seed=3)
    again.set_epoch(2)
    assert indices(again) == first
    other_seed = ResumableSampler(50, seed=4)
    other_seed.set_epoch(2)
    assert indices(other_seed) != first
    assert sorted(first) == list(range(50))  # a permutation


def test_no_shuffle_is_in_order():
    sampler = ResumableSampler(7, shuffle=False)
    sampler.set_epoch(5)
    assert indices(sampler) == list(range(7))


def test_epochs_are_different_permutations():
    sampler = ResumableSampler(30, seed=0)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(indices(sampler))
    assert len({tuple(o) for o in orders}) == 3


@pytest.mark.parametrize("start", [0, 1, 17, 39, 40])
def test_set_epoch_start_yields_the_suffix(start):
    sampler = ResumableSampler(40, seed=1)
    sampler.set_epoch(4)
    full = indices(sampler)
    sampler.set_epoch(4, start=start)
    assert indices(sampler) == full[start:]
    assert len(sampler) == 40 - start


def test_two_ranks_partition_the_epoch_with_padding():
    size, world = 11, 2
    ranks = [ResumableSampler(size, seed=2, rank=r, world_size=world) for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(1)
    parts = [indices(s) for s in ranks]
    assert [len(p) for p in parts] == [6, 6]
    single = ResumableSampler(size, seed=2)
    single.set_epoch(1)
    order = indices(single)
    # interleaved, the ranks read the shared permutation, padded by wrapping to its start
    interleaved = [i for pair in zip(*parts, strict=True) for i in pair]
    assert interleaved == order + order[:1]
    assert set(parts[0]) | set(parts[1]) == set(range(size))
    assert len(set(parts[0]) & set(parts[1])) == 1  # only the padding sample repeats


def test_rank_start_skips_that_ranks_own_samples():
    sampler = ResumableSampler(20, seed=0, rank=1, world_size=2)
    sampler.set_epoch(3)
    full = indices(sampler)
    sampler.set_epoch(3, start=4)
    assert indices(sampler) == full[4:]


def test_empty_dataset_is_rejected():
    with pytest.raises(ValueError, match="dataset is empty"):
        ResumableSampler(0)


class NoisyDataset(torch.utils.data.Dataset):
    """Each item is a random 'augmentation' drawn from the global torch RNG."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(4) + index


def test_seeded_dataset_same_augmentation_for_same_epoch_and_index():
    dataset = SeededDataset(NoisyDataset(), seed=0)
    torch.manual_seed(1)
    first = dataset[(2, 5)]
    torch.manual_seed(999)
    torch.rand(100)
    assert torch.equal(dataset[(2, 5)], first)
    assert torch.equal(SeededDataset(NoisyDataset(), seed=0)[(2, 5)], first)
    assert not torch.equal(dataset[(3, 5)], first)  # another epoch, another augmentation
    assert not torch.equal(dataset[(2, 6)] - 1, first)  # another index
    assert not torch.equal(SeededDataset(NoisyDataset(), seed=1)[(2, 5)], first)  # another seed
    assert torch.equal(dataset[5], dataset[(0, 5)])  # a bare index means epoch 0
    assert len(dataset) == 10


def test_seeded_dataset_leaves_the_global_rng_alone():
    dataset = SeededDataset(NoisyDataset(), seed=0)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    dataset[(0, 1)]
    dataset[(1, 2)]
    assert torch.equal(torch.rand(3), expected)


def test_seeded_dataset_accepts_large_seeds():
    """Seeds of any size work (the per-sample seed is reduced modulo 2**63)."""
    dataset = SeededDataset(NoisyDataset(), seed=20250101)
    assert torch.equal(dataset[(3, 7)], dataset[(3, 7)])
    assert not torch.equal(dataset[(3, 7)], dataset[(4, 7)])


def test_unpadded_shards_cover_every_sample_once():
    """pad=False (evaluation): 3 ranks over 10 samples get 4, 3, 3 distinct samples, 10 in all."""
    shards = [[i for _, i in ResumableSampler(10, shuffle=False, rank=r, world_size=3, pad=False)] for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(ResumableSampler(10, rank=r, world_size=3, pad=False)) for r in range(3)] == [4, 3, 3]
    assert [len(ResumableSampler(10, rank=r, world_size=3)) for r in range(3)] == [4, 4, 4]
