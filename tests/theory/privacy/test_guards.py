"""Assumption guards: contraction factor, logistic constants, convex heads, samplers that match the accounting."""

from __future__ import annotations

import math

import pytest
from torch import nn

from vfm.data.sampler import PoissonBatchSampler, ResumableBatchSampler
from vfm.errors import ConfigError
from vfm.theory.privacy.guards import (
    NonConvexModelError,
    SamplerMismatchError,
    check_convex_head,
    check_sampler,
    contraction_factor,
    logistic_constants,
)
from vfm.theory.privacy.sampler import CyclicBatchSampler


def test_contraction_factor_and_its_refusals():
    assert contraction_factor(0.1, 2.0, 0.5) == pytest.approx(0.95)
    assert contraction_factor(1.0, 3.0, 0.6) == pytest.approx(0.8)  # |1 - eta M| dominates
    with pytest.raises(ConfigError, match=r"eta: got 1.1 > 2/M = 1"):
        contraction_factor(0.1, 2.0, 1.1)
    with pytest.raises(NonConvexModelError, match="not convex"):
        contraction_factor(-0.1, 2.0, 0.1)


def test_logistic_constants():
    binary = logistic_constants(2.0, 0.01, multiclass=False)
    assert (binary.lipschitz, binary.smoothness, binary.strong_convexity) == pytest.approx((2.0, 1.01, 0.01))
    softmax = logistic_constants(1.0, 0.0, multiclass=True)
    assert softmax.lipschitz == pytest.approx(math.sqrt(2)) and softmax.smoothness == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="feature_norm"):
        logistic_constants(0.0, 0.01, multiclass=True)


def test_only_a_single_linear_layer_counts_as_convex():
    head = nn.Linear(4, 3)
    assert check_convex_head(nn.Sequential(head)) is head
    with pytest.raises(NonConvexModelError, match="0 \\(Linear\\), 2 \\(Linear\\)"):
        check_convex_head(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)))
    frozen = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    frozen[0].requires_grad_(False)
    assert check_convex_head(frozen) is frozen[2]  # a frozen feature extractor is fine


def test_samplers_must_match_the_schedule():
    with pytest.raises(SamplerMismatchError, match="fixed-size batches but the accounting assumes Poisson"):
        check_sampler(ResumableBatchSampler(100, 10), "poisson")
    with pytest.raises(SamplerMismatchError, match="sample_rate"):
        check_sampler(PoissonBatchSampler(100, 0.1), "poisson", sample_rate=0.2)
    check_sampler(PoissonBatchSampler(100, 0.1), "poisson", sample_rate=0.1)
    with pytest.raises(SamplerMismatchError, match="fixed partition"):
        check_sampler(ResumableBatchSampler(100, 10), "cyclic")
    check_sampler(CyclicBatchSampler(100, 10), "cyclic")
    check_sampler(ResumableBatchSampler(100, 100), "full")
    with pytest.raises(SamplerMismatchError, match="every record in every batch"):
        check_sampler(ResumableBatchSampler(100, 50), "full")


def test_cyclic_sampler_repeats_one_partition_and_shards_without_padding():
    sampler = CyclicBatchSampler(103, 10, seed=3)
    first = [sorted(i for _, i in batch) for batch in sampler]
    sampler.set_epoch(5)
    again = [sorted(i for _, i in batch) for batch in sampler]
    assert first == again and len(first) == 10 and sampler.dropped == 3
    assert len({i for batch in first for i in batch}) == 100
    ranks = [CyclicBatchSampler(103, 5, seed=3, rank=r, world_size=2) for r in (0, 1)]  # 5 per rank, 10 in all
    shards = [list(s)[4] for s in ranks]
    assert sorted(i for shard in shards for _, i in shard) == first[4] and all(len(s) == 5 for s in shards)
    sampler.set_epoch(1, 7)
    assert len(list(sampler)) == 3
    with pytest.raises(ConfigError, match="global batch of 1..100"):
        CyclicBatchSampler(100, 60, world_size=2)
