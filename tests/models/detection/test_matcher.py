"""Unit tests for vfm/models/detection/matcher.py: optimality by brute force, invariances, cost formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vfm.models.detection.matcher import HungarianMatcher, focal_class_cost


def random_outputs(num_queries: int, num_classes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    boxes = torch.cat([torch.rand(1, num_queries, 2, generator=generator) * 0.6 + 0.2,
                       torch.rand(1, num_queries, 2, generator=generator) * 0.3 + 0.05], -1)  # fmt: skip
    return {"pred_logits": torch.randn(1, num_queries, num_classes, generator=generator), "pred_boxes": boxes}


def random_target(num_targets: int, num_classes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    boxes = torch.cat([torch.rand(num_targets, 2, generator=generator) * 0.6 + 0.2,
                       torch.rand(num_targets, 2, generator=generator) * 0.3 + 0.05], -1)  # fmt: skip
    return {"boxes": boxes, "labels": torch.randint(num_classes, (num_targets,), generator=generator)}


@pytest.mark.parametrize("focal", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_assignment_is_the_brute_force_optimum(focal, seed):
    generator = torch.Generator().manual_seed(seed)
    num_queries, num_targets, num_classes = 5, 3, 4
    outputs = random_outputs(num_queries, num_classes + (0 if focal else 1), generator)
    target = random_target(num_targets, num_classes, generator)
    matcher = HungarianMatcher(2.0 if focal else 1.0, 5.0, 2.0, focal=focal)
    ((queries, targets),) = matcher(outputs, [target])
    assert queries.dtype == targets.dtype == torch.int64
    assert sorted(targets.tolist()) == list(range(num_targets))
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_boxes"][0], target["labels"], target["boxes"])
    found = cost[queries, targets].sum().item()
    best = min(
        sum(cost[q, t].item() for t, q in enumerate(perm))
        for perm in itertools.permutations(range(num_queries), num_targets)
    )
    assert found == pytest.approx(best, abs=1e-5)


def test_permuting_queries_permutes_the_assignment():
    generator = torch.Generator().manual_seed(7)
    outputs = random_outputs(6, 3, generator)
    target = random_target(4, 3, generator)
    matcher = HungarianMatcher(2.0, 5.0, 2.0, focal=True)
    ((queries, targets),) = matcher(outputs, [target])
    perm = torch.randperm(6, generator=generator)
    permuted = {k: v[:, perm] for k, v in outputs.items()}
    ((queries_p, targets_p),) = matcher(permuted, [target])
    original = dict(zip(targets.tolist(), queries.tolist(), strict=True))
    moved = dict(zip(targets_p.tolist(), perm[queries_p].tolist(), strict=True))
    assert moved == original


def test_identity_assignment_when_predictions_equal_targets():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.3, 0.1, 0.3]])
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, [0, 1, 2], [1, 0, 1]] = 5.0
    target = {"boxes": boxes[[2, 0, 1]], "labels": torch.tensor([1, 1, 0])}
    ((queries, targets),) = HungarianMatcher(2.0, 5.0, 2.0, focal=True)(
        {"pred_logits": logits, "pred_boxes": boxes[None]}, [target]
    )
    assert dict(zip(targets.tolist(), queries.tolist(), strict=True)) == {0: 2, 1: 0, 2: 1}


def test_images_without_targets_get_empty_indices():
    generator = torch.Generator().manual_seed(0)
    outputs = {k: torch.cat([v, v]) for k, v in random_outputs(4, 3, generator).items()}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    indices = HungarianMatcher(focal=True)(outputs, [empty, random_target(2, 3, generator)])
    assert [len(q) for q, _ in indices] == [0, 2]
    assert indices[0][0].dtype == torch.int64


def test_focal_cost_closed_form():
    logit = 0.3
    p = 1 / (1 + math.exp(-logit))
    expected = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8) - 0.75 * p**2 * -math.log(1 - p + 1e-8)
    cost = focal_class_cost(torch.tensor([[logit, -1.0]]), torch.tensor([0]))
    assert cost.item() == pytest.approx(expected, rel=1e-5)


def test_softmax_cost_is_minus_the_probability():
    logits = torch.tensor([[[1.0, 2.0, 0.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
    matcher = HungarianMatcher(1.0, 0.0, 0.0, focal=False)
    cost = matcher.cost_matrix(logits[0], boxes[0], torch.tensor([1]), boxes[0])
    assert cost.item() == pytest.approx(-logits.softmax(-1)[0, 0, 1].item())


def test_non_finite_predictions_raise():
    outputs = {"pred_logits": torch.tensor([[[float("nan")]]]), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match="non-finite matching cost for image 0"):
        HungarianMatcher(focal=True)(outputs, [target])
