"""Unit tests for vfm/models/detection/detr.py and detr_transformer.py at tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch

from vfm.models.detection.criterion import SetCriterion
from vfm.models.detection.detr import DETR
from vfm.models.detection.detr_transformer import DetrTransformer
from vfm.models.detection.matcher import HungarianMatcher

NUM_CLASSES, NUM_QUERIES = 3, 10


def tiny_detr(focal: bool) -> DETR:
    torch.manual_seed(0)
    return DETR({"name": "test_resnet", "out_indices": [3]}, NUM_CLASSES, d_model=32, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, dim_feedforward=64, dropout=0.0, num_queries=NUM_QUERIES, focal=focal)  # fmt: skip


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, 32:, :] = True
    images = images.masked_fill(masks[:, None], 0.0)
    targets = [
        {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2]]), "labels": torch.tensor([1])},
    ]
    return images, masks, targets


@pytest.mark.parametrize("focal", [False, True])
def test_shapes_and_gradients(focal):
    model = tiny_detr(focal)
    images, masks, targets = padded_batch()
    outputs = model(images, masks)
    num_logits = NUM_CLASSES if focal else NUM_CLASSES + 1  # the softmax variant has a no-object logit
    assert outputs["pred_logits"].shape == (2, NUM_QUERIES, num_logits)
    assert outputs["pred_boxes"].shape == (2, NUM_QUERIES, 4)
    assert len(outputs["aux_outputs"]) == 1
    matcher = HungarianMatcher(2.0 if focal else 1.0, 5.0, 2.0, focal=focal)
    criterion = SetCriterion(NUM_CLASSES, matcher, focal, 2.0 if focal else 1.0)
    # timm's zero-initialised last BN of each residual block blocks that branch at init; one SGD step lifts it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion(outputs, targets)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    criterion(model(images, masks), targets)["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_focal_variant_starts_at_prior_probability():
    assert torch.allclose(tiny_detr(True).class_head.bias, torch.tensor(-math.log(99.0)))


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    transformer = DetrTransformer(32, 4, 2, 2, 64, 0.0).eval()
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[1, 2:, :] = True
    src, pos, queries = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4), torch.randn(5, 32)
    clean = transformer(src, mask, pos, queries)
    noisy = transformer(src + 30 * mask[:, None], mask, pos + 30 * mask[:, None], queries)
    assert clean.shape == (2, 2, 5, 32)
    torch.testing.assert_close(noisy, clean)
