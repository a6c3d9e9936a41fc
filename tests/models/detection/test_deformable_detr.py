"""Unit tests for vfm/models/detection/deformable_detr.py and deformable_transformer.py at tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch

from vfm.models.detection.criterion import SetCriterion
from vfm.models.detection.deformable_detr import DeformableDETR
from vfm.models.detection.deformable_transformer import DeformableTransformer, encoder_reference_points
from vfm.models.detection.matcher import HungarianMatcher
from vfm.ops import MultiScaleDeformableAttention

NUM_CLASSES, NUM_QUERIES, D_MODEL = 3, 12, 32
MULTI = {"name": "test_resnet", "out_indices": [2, 3, 4]}
VARIANTS = {
    "single_scale": {"backbone": {"name": "test_resnet", "out_indices": [4]}, "num_feature_levels": 1},
    "multi_scale": {"backbone": MULTI, "num_feature_levels": 4},  # one extra stride-2 level
    "refine": {"backbone": MULTI, "num_feature_levels": 3, "with_box_refine": True},
    "two_stage": {"backbone": MULTI, "num_feature_levels": 3, "with_box_refine": True, "two_stage": True},
}


def tiny_model(seed: int = 0, **kwargs) -> DeformableDETR:
    torch.manual_seed(seed)
    defaults = {"backbone": MULTI, "num_classes": NUM_CLASSES, "d_model": D_MODEL, "num_heads": 4,
                "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 64, "dropout": 0.0,
                "num_queries": NUM_QUERIES, "num_feature_levels": 3, "num_points": 2}  # fmt: skip
    return DeformableDETR(**{**defaults, **kwargs})


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two images: 64×64, and 40×56 padded to 64×64 (bottom/right)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, 40:, :] = True
    masks[1, :, 56:] = True
    images = images.masked_fill(masks[:, None], 0.0)
    targets = [
        {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2]]), "labels": torch.tensor([1])},
    ]
    return images, masks, targets


def criterion() -> SetCriterion:
    return SetCriterion(NUM_CLASSES, HungarianMatcher(2.0, 5.0, 2.0, focal=True), focal=True, class_weight=2.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes(variant):
    model = tiny_model(**VARIANTS[variant])
    images, masks, _ = padded_batch()
    outputs = model(images, masks)
    assert outputs["pred_logits"].shape == (2, NUM_QUERIES, NUM_CLASSES)
    assert outputs["pred_boxes"].shape == (2, NUM_QUERIES, 4)
    assert ((outputs["pred_boxes"] > 0) & (outputs["pred_boxes"] < 1)).all()
    assert len(outputs["aux_outputs"]) == 1
    assert outputs["aux_outputs"][0]["pred_boxes"].shape == (2, NUM_QUERIES, 4)
    if variant == "two_stage":
        tokens = 8 * 8 + 4 * 4 + 2 * 2  # one proposal per encoder token
        assert outputs["enc_outputs"]["pred_logits"].shape == (2, tokens, NUM_CLASSES)
        assert outputs["enc_outputs"]["pred_boxes"].shape == (2, tokens, 4)
    else:
        assert "enc_outputs" not in outputs


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_every_trainable_parameter(variant):
    model = tiny_model(**VARIANTS[variant])
    images, masks, targets = padded_batch()
    # At initialisation some gradients are exactly zero by design: the zero last box layer blocks the earlier
    # box layers, zero offset/attention-weight projections block the query (hence level_embed), and timm's
    # zero-initialised last BN of each residual block blocks that branch. One SGD step lifts all of these.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion()(model(images, masks), targets)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    criterion()(model(images, masks), targets)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_refinement_passes_no_gradient_through_the_reference_chain():
    model = tiny_model(with_box_refine=True, aux_loss=False)
    images, masks, targets = padded_batch()
    criterion()(model(images, masks), targets)["loss"].backward()
    # Layer 0's heads only produce the (detached) reference of layer 1, so the final loss never reaches them.
    assert all(p.grad is None or not p.grad.any() for p in model.box_heads[0].parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.class_heads[0].parameters())
    assert all(p.grad.any() for p in model.box_heads[1].layers[-1].parameters())  # earlier layers sit behind zeros
    # ...while layer 0 itself still trains through the hidden state it passes on.
    assert model.transformer.decoder.layers[0].linear1.weight.grad.any()


def test_initialisation_follows_the_paper():
    model = tiny_model()
    bias = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(model.class_heads[0].bias, torch.full((NUM_CLASSES,), bias))
    last = model.box_heads[0].layers[-1]
    assert not last.weight.any() and last.bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    for module in model.modules():  # the transformer's Xavier pass must not overwrite the ring init
        if isinstance(module, MultiScaleDeformableAttention):
            assert not module.sampling_offsets.weight.any() and not module.attention_weights.weight.any()
            ring = module.sampling_offsets.bias.view(module.num_heads, -1, 2)
            assert ring.abs().amax(-1)[:, 0].tolist() == [1.0] * module.num_heads  # first point one pixel out
    # so the first boxes sit on the references, w = h = σ(−2)
    images, masks, _ = padded_batch()
    model.eval()
    boxes = model(images, masks)["pred_boxes"]
    reference = model.transformer.reference_points(model.query_embed.weight[:, :D_MODEL]).sigmoid()
    torch.testing.assert_close(boxes[0, :, :2], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(boxes[..., 2:], torch.full_like(boxes[..., 2:], 1 / (1 + math.e**2)))
    two_stage = tiny_model(with_box_refine=True, two_stage=True)
    assert not two_stage.box_heads[0].layers[-1].bias.any() and not two_stage.encoder_box_head.layers[-1].bias.any()


def test_transformer_owns_no_heads():
    model = tiny_model(with_box_refine=True, two_stage=True)
    transformer_params = {id(p) for p in model.transformer.parameters()}
    for heads in (model.class_heads, model.box_heads, model.encoder_class_head, model.encoder_box_head):
        assert not transformer_params & {id(p) for p in heads.parameters()}
    assert not any("embed" in k for k in model.transformer.state_dict() if k != "level_embed")


@pytest.mark.parametrize("two_stage", [False, True])
def test_values_in_padding_do_not_change_the_result(two_stage):
    torch.manual_seed(0)
    transformer = DeformableTransformer(32, 4, 2, 2, 64, 0.0, num_feature_levels=2, num_points=2,
                                        two_stage=two_stage, num_queries=6).eval()  # fmt: skip
    heads = (torch.nn.Linear(32, 3), torch.nn.Linear(32, 4)) if two_stage else None
    box_heads = torch.nn.ModuleList(torch.nn.Linear(32, 4) for _ in range(2)) if two_stage else None
    masks = [torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(2, 4, 4, dtype=torch.bool)]
    masks[0][1, 6:, :] = masks[0][1, :, 5:] = True
    masks[1][1, 3:, :] = masks[1][1, :, 3:] = True
    srcs = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    pos = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    query_embed = None if two_stage else torch.randn(6, 64)
    clean = transformer([s.masked_fill(m[:, None], 0) for s, m in zip(srcs, masks, strict=True)], masks, pos,
                        query_embed, box_heads, heads)  # fmt: skip
    noisy = transformer([s.masked_fill(m[:, None], 0) + 50 * m[:, None] for s, m in zip(srcs, masks, strict=True)],
                        masks, pos, query_embed, box_heads, heads)  # fmt: skip
    torch.testing.assert_close(noisy.decoder.hidden, clean.decoder.hidden)


def test_encoder_reference_points_are_valid_cell_centres():
    valid_ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.75], [0.5, 0.5]]])  # (N, L, (w, h))
    points = encoder_reference_points([(4, 4), (2, 2)], valid_ratios)
    assert points.shape == (2, 20, 2, 2)
    torch.testing.assert_close(points[0, 0, 0], torch.tensor([0.125, 0.125]))
    # image 1, level 0 is 2 valid columns and 3 valid rows of 4: the first cell centre is at (0.5/2, 0.5/3) of the
    # valid region, i.e. (0.5/4, 0.5/4) of the padded map on level 0
    torch.testing.assert_close(points[1, 0, 0], torch.tensor([0.125, 0.125]))
    torch.testing.assert_close(points[1, 0, 1], torch.tensor([0.125, 0.5 / 3 * 0.5]))
