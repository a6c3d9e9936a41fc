"""Tests for vfm/objectives/detection.py: config validation, the batch/prediction contract, and overfitting."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from vfm.errors import ConfigError
from vfm.models.detection.box_ops import box_cxcywh_to_xyxy, box_iou
from vfm.registry import OBJECTIVES

TINY = {
    "type": "deformable_detr",
    "backbone": {"name": "test_resnet", "out_indices": [2, 3, 4], "freeze_bn": False},
    "num_classes": 3,
    "d_model": 64,
    "num_heads": 4,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "dim_feedforward": 128,
    "dropout": 0.0,
    "num_queries": 30,
    "num_feature_levels": 3,
    "num_points": 4,
}
DETR_TINY = {  # the dense-attention control: same sizes, focal loss, one stride-16 level
    **{k: v for k, v in TINY.items() if k not in ("num_feature_levels", "num_points")},
    "type": "detr",
    "backbone": {"name": "test_resnet", "out_indices": [3]},
    "loss": "focal",
}
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # class = colour


def rectangles_batch(num_images: int = 4, canvas: int = 64, seed: int = 0) -> dict:
    """Coloured rectangles on noise; odd images are 48×48 padded to the canvas, with orig_size twice their size."""
    generator = torch.Generator().manual_seed(seed)
    images = -0.5 + 0.1 * torch.randn(num_images, 3, canvas, canvas, generator=generator)
    masks = torch.zeros(num_images, canvas, canvas, dtype=torch.bool)
    targets = []
    for i in range(num_images):
        size = canvas if i % 2 == 0 else 48
        masks[i, size:, :] = True
        masks[i, :, size:] = True
        boxes, labels = [], []
        for j in range(1 + i % 3):
            w, h = torch.randint(10, 24, (2,), generator=generator).tolist()
            x0 = int(torch.randint(0, size - w, (1,), generator=generator))
            y0 = int(torch.randint(0, size - h, (1,), generator=generator))
            label = (i + j) % 3
            images[i, :, y0 : y0 + h, x0 : x0 + w] = COLOURS[label][:, None, None]
            boxes.append([(x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size])
            labels.append(label)
        targets.append({
            "boxes": torch.tensor(boxes),
            "labels": torch.tensor(labels),
            "image_id": torch.tensor(100 + i),
            "orig_size": torch.tensor([2 * size, 2 * size]),
            "size": torch.tensor([size, size]),
        })  # fmt: skip
    images = images.masked_fill(masks[:, None], 0.0)
    return {"images": images, "masks": masks, "targets": targets}


def test_both_objectives_are_registered():
    assert {"deformable_detr", "detr"} <= set(OBJECTIVES.list())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"two_stage": True}, r"^objective.two_stage: true needs with_box_refine: true"),
        ({"d_model": 48, "num_heads": 4}, r"^objective.d_model: 48 is not divisible by 32 GroupNorm groups"),
        ({"num_heads": 5}, r"^objective.num_heads: d_model 64 is not divisible by num_heads 5"),
        ({"num_feature_levels": 2}, r"^objective.num_feature_levels: 2 is fewer than the 3 backbone out_indices"),
        ({"backbone": {"name": "test_resnet", "pretrained": "x.pth"}}, r"^objective.backbone.pretrained: unknown backbone key \(did you mean 'pretrained_path'"),
        ({"msda_impl": "triton"}, r"^objective.msda_impl: expected one of 'reference', 'cpu', 'cuda' or null"),
        ({"num_querys": 10}, r"num_querys: unknown argument 'num_querys'.*did you mean 'num_queries'"),
    ],
)  # fmt: skip
def test_bad_deformable_configs_fail_validation(change, message):
    with pytest.raises(ConfigError, match=message):
        OBJECTIVES.validate({**TINY, **change}, "objective")


def test_bad_detr_configs_fail_validation():
    with pytest.raises(ConfigError, match=r"^objective.backbone.out_indices: DETR uses one feature level"):
        OBJECTIVES.validate({**DETR_TINY, "backbone": {"name": "test_resnet", "out_indices": [2, 3, 4]}}, "objective")
    with pytest.raises(ConfigError, match=r"^objective.loss: expected one of 'ce', 'focal'"):
        OBJECTIVES.validate({**DETR_TINY, "loss": "softmax"}, "objective")
    OBJECTIVES.validate(DETR_TINY, "objective")


@pytest.mark.parametrize(
    ("node", "class_key"),
    [
        (TINY, "loss_focal"),
        ({**TINY, "with_box_refine": True, "two_stage": True}, "loss_focal"),
        (DETR_TINY, "loss_focal"),
        ({**DETR_TINY, "loss": "ce"}, "loss_ce"),
    ],
)
def test_forward_and_predict_follow_the_contract(node, class_key, caplog):
    torch.manual_seed(0)
    objective = OBJECTIVES.build(node, "objective")
    batch = rectangles_batch(num_images=2)
    with caplog.at_level(logging.INFO, logger="vfm.train"):
        losses = objective(batch)
        objective(batch)
    # The log says once what 'loss' sums, since only the final layer's terms are logged beside it.
    described = [r.getMessage() for r in caplog.records if "the logged 'loss' sums" in r.getMessage()]
    assert len(described) == 1 and "5 x loss_bbox, 2 x loss_giou over" in described[0]
    assert ("two-stage proposals" in described[0]) == bool(node.get("two_stage"))
    expected = {"loss", class_key, "loss_bbox", "loss_giou"}
    if node.get("two_stage"):
        expected |= {f"{class_key}_enc", "loss_bbox_enc", "loss_giou_enc"}
    assert set(losses) == expected  # aux-layer losses count in "loss" but are not logged
    assert losses["loss"].requires_grad and losses["loss"].ndim == 0
    assert not any(v.requires_grad for k, v in losses.items() if k != "loss")

    objective.eval()
    with torch.no_grad():
        predictions = objective.predict(batch)
        outputs = objective.model(batch["images"], batch["masks"])
    assert [p["image_id"] for p in predictions] == [100, 101]
    assert all(type(p["image_id"]) is int for p in predictions)
    k = 30 if class_key == "loss_ce" else 90  # softmax: one per query; focal: top-100 of 30 × 3 pairs
    for prediction in predictions:
        assert prediction["boxes"].shape == (k, 4) and prediction["scores"].shape == (k,)
        assert prediction["labels"].dtype == torch.int64 and prediction["labels"].max() < 3
        assert (prediction["scores"][:-1] >= prediction["scores"][1:]).all()
    # the best detection of image 1 is its query's box scaled by the original size (96 × 96), as xyxy
    scores = (
        outputs["pred_logits"][1].sigmoid() if class_key != "loss_ce" else outputs["pred_logits"][1].softmax(-1)[:, :-1]
    )
    best_query = int(scores.max(-1).values.argmax())
    expected_box = box_cxcywh_to_xyxy(outputs["pred_boxes"][1, best_query]) * 96
    torch.testing.assert_close(predictions[1]["boxes"][0], expected_box)


def test_tiny_deformable_detr_overfits_rectangles():
    """Loss falls >= 20× in 150 steps, and every target is then found by `predict` (IoU > 0.8, right class, score > 0.5).

    Measured on 2 CPU cores, seeds 0-3: 60-76× lower, every target's IoU >= 0.95, no extra confident box, 5-8 s.
    """
    torch.manual_seed(0)
    objective = OBJECTIVES.build(TINY, "objective")
    batch = rectangles_batch()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3, weight_decay=1e-4)
    start = time.perf_counter()
    losses = []
    for _ in range(150):
        loss = objective(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 0.1)
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    first, last = losses[0], sum(losses[-10:]) / 10
    assert last * 20 <= first, f"loss {first:.3f} -> {last:.3f} in {elapsed:.0f} s"

    objective.eval()
    with torch.no_grad():
        predictions = objective.predict(batch)
    for target, prediction in zip(batch["targets"], predictions, strict=True):
        confident = prediction["scores"] > 0.5
        boxes, labels = prediction["boxes"][confident], prediction["labels"][confident]
        truth = box_cxcywh_to_xyxy(target["boxes"]) * target["orig_size"].flip(0).repeat(2)
        iou = box_iou(truth, boxes)[0]  # (targets, confident detections)
        for t in range(len(truth)):
            hits = (iou[t] > 0.8) & (labels == target["labels"][t])
            assert hits.any(), f"image {target['image_id']}: target {t} not found; IoUs {iou[t].tolist()}"
        assert len(boxes) == len(truth), f"{len(boxes)} confident detections for {len(truth)} targets"
