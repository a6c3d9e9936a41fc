"""Unit tests for vfm/models/detection/criterion.py: loss values in closed form, normalisation, aux and encoder sets."""

from __future__ import annotations

import math

import pytest
import torch

from vfm.models.detection import criterion as criterion_module
from vfm.models.detection.criterion import SetCriterion, sigmoid_focal_loss
from vfm.models.detection.matcher import HungarianMatcher


def focal(num_classes: int = 2, **kwargs) -> SetCriterion:
    return SetCriterion(
        num_classes, HungarianMatcher(2.0, 5.0, 2.0, focal=True), focal=True, class_weight=2.0, **kwargs
    )


def test_focal_loss_closed_form_one_query():
    logits = torch.tensor([[[0.4, -1.2]]])  # 1 image, 1 query, 2 classes
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.tensor([0])}
    losses = focal()({"pred_logits": logits, "pred_boxes": boxes}, [target])
    p0, p1 = 1 / (1 + math.exp(-0.4)), 1 / (1 + math.exp(1.2))
    expected = 0.25 * (1 - p0) ** 2 * -math.log(p0) + 0.75 * p1**2 * -math.log(1 - p1)
    assert losses["loss_focal"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.2, rel=1e-5)  # |0.2 - 0.4| in h
    # boxes (0.4, 0.4, 0.6, 0.6) inside (0.4, 0.3, 0.6, 0.7): IoU = GIoU = 0.5
    assert losses["loss_giou"].item() == pytest.approx(0.5, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(2 * expected + 5 * 0.2 + 2 * 0.5, rel=1e-5)
    assert "cardinality_error" not in losses and "class_error" not in losses


def test_sigmoid_focal_loss_matches_its_definition_elementwise():
    logits, targets = torch.randn(3, 4), (torch.rand(3, 4) > 0.5).float()
    p = logits.sigmoid()
    expected = torch.where(targets > 0, 0.25 * (1 - p) ** 2 * -p.log(), 0.75 * p**2 * -(1 - p).log())
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)


def test_cross_entropy_variant_weights_no_object_by_eos_coef():
    # 2 queries over 2 classes + no-object; query 0 sits on the target box, so it is the match
    logits = torch.tensor([[[1.0, 0.5, -0.5], [0.2, 0.1, 0.3]]])
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    target = {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "labels": torch.tensor([1])}
    criterion = SetCriterion(
        2, HungarianMatcher(1.0, 5.0, 2.0, focal=False), focal=False, class_weight=1.0, eos_coef=0.1
    )
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, [target])
    log_p = logits[0].log_softmax(-1)
    expected = (-log_p[0, 1] * 1.0 - log_p[1, 2] * 0.1) / (1.0 + 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)


def test_aux_and_encoder_sets_are_weighted_and_summed():
    generator = torch.Generator().manual_seed(0)

    def prediction_set(num_classes: int = 3) -> dict[str, torch.Tensor]:
        boxes = torch.cat([torch.rand(2, 5, 2, generator=generator) * 0.5 + 0.25, torch.full((2, 5, 2), 0.2)], -1)
        return {"pred_logits": torch.randn(2, 5, num_classes, generator=generator), "pred_boxes": boxes}

    outputs = {**prediction_set(), "aux_outputs": [prediction_set(), prediction_set()], "enc_outputs": prediction_set()}
    targets = [
        {"boxes": torch.tensor([[0.4, 0.4, 0.2, 0.3]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[0.6, 0.5, 0.3, 0.2], [0.3, 0.3, 0.1, 0.1]]), "labels": torch.tensor([1, 0])},
    ]
    losses = focal(num_classes=3)(outputs, targets)
    suffixes = ["", "_0", "_1", "_enc"]
    assert set(losses) == {"loss"} | {f"loss_{n}{s}" for n in ("focal", "bbox", "giou") for s in suffixes}
    weighted = sum(
        2 * losses[f"loss_focal{s}"] + 5 * losses[f"loss_bbox{s}"] + 2 * losses[f"loss_giou{s}"] for s in suffixes
    )
    assert losses["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)
    # encoder proposals are class-agnostic: the same set scored against all-class-0 targets
    binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
    alone = focal(num_classes=3)(outputs["enc_outputs"], binary)
    assert losses["loss_focal_enc"].item() == pytest.approx(alone["loss_focal"].item(), rel=1e-6)


def test_num_boxes_is_the_mean_over_ranks_clamped(monkeypatch):
    logits = torch.tensor([[[0.4, -1.2]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.tensor([0])}
    one_rank = focal()({"pred_logits": logits, "pred_boxes": boxes}, [target])
    # another rank with 3 boxes: mean 2, so every normalised loss halves
    monkeypatch.setattr(criterion_module, "all_reduce_mean", lambda t: (t + 3) / 2)
    two_ranks = focal()({"pred_logits": logits, "pred_boxes": boxes}, [target])
    for name in ("loss_focal", "loss_bbox", "loss_giou"):
        assert two_ranks[name].item() == pytest.approx(one_rank[name].item() / 2, rel=1e-6)
    # a mean below one box (most ranks without targets) is clamped to 1
    monkeypatch.setattr(criterion_module, "all_reduce_mean", lambda t: t / 4)
    assert focal().num_boxes([target], torch.device("cpu")).item() == 1.0


def test_images_without_targets_train_only_the_background():
    logits = torch.randn(1, 4, 2, requires_grad=True)
    boxes = torch.full((1, 4, 4), 0.3, requires_grad=True)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = focal()({"pred_logits": logits, "pred_boxes": boxes}, [empty])
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    expected = sigmoid_focal_loss(logits, torch.zeros_like(logits)).sum()  # num_boxes clamped to 1
    assert losses["loss_focal"].item() == pytest.approx(expected.item(), rel=1e-6)
    losses["loss"].backward()
    assert logits.grad.abs().sum() > 0
