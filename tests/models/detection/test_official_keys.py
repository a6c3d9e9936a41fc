"""Unit tests for vfm/models/detection/official_keys.py: the official layout, written out by hand, and round trips."""

from __future__ import annotations

import pytest
import torch

from vfm.errors import CheckpointError
from vfm.models.detection.deformable_detr import DeformableDETR
from vfm.models.detection.official_keys import convert_official_deformable_detr, convert_to_official_deformable_detr

NUM_ENCODER, NUM_DECODER, NUM_LEVELS = 1, 2, 4
VARIANTS = {"plain": {}, "refine": {"with_box_refine": True}, "two_stage": {"with_box_refine": True, "two_stage": True}}


def tiny_model(seed: int, **kwargs) -> DeformableDETR:
    torch.manual_seed(seed)
    return DeformableDETR({"name": "test_resnet", "out_indices": [2, 3, 4], "freeze_bn": True}, num_classes=3,
                          d_model=32, num_heads=4, num_encoder_layers=NUM_ENCODER, num_decoder_layers=NUM_DECODER,
                          dim_feedforward=64, num_queries=8, num_feature_levels=NUM_LEVELS, num_points=2, **kwargs)  # fmt: skip


def official_layout(backbone_keys: list[str], refine: bool, two_stage: bool) -> set[str]:
    """Key names of fundamentalvision/Deformable-DETR's DeformableDETR.state_dict(), from its module tree."""
    wb = ("weight", "bias")
    msda = [f"{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj") for p in wb]
    keys = {f"backbone.0.body.{k}" for k in backbone_keys} | {"transformer.level_embed"}
    keys |= {f"input_proj.{level}.{i}.{p}" for level in range(NUM_LEVELS) for i in (0, 1) for p in wb}
    for layer in range(NUM_ENCODER):
        keys |= {f"transformer.encoder.layers.{layer}.self_attn.{k}" for k in msda}
        keys |= {
            f"transformer.encoder.layers.{layer}.{m}.{p}" for m in ("norm1", "linear1", "linear2", "norm2") for p in wb
        }
    for layer in range(NUM_DECODER):
        prefix = f"transformer.decoder.layers.{layer}"
        keys |= {f"{prefix}.cross_attn.{k}" for k in msda}
        keys |= {
            f"{prefix}.self_attn.{k}" for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
        }
        keys |= {f"{prefix}.{m}.{p}" for m in ("norm1", "norm2", "norm3", "linear1", "linear2") for p in wb}
    num_pred = NUM_DECODER + 1 if two_stage else NUM_DECODER
    heads = {f"class_embed.{i}.{p}" for i in range(num_pred) for p in wb}
    boxes = {f"bbox_embed.{i}.layers.{j}.{p}" for i in range(num_pred) for j in range(3) for p in wb}
    keys |= heads | boxes
    if refine:  # the official decoder holds the model's box heads, so they are saved twice
        keys |= {f"transformer.decoder.{k}" for k in boxes}
    if two_stage:
        keys |= {f"transformer.decoder.{k}" for k in heads}
        keys |= {
            f"transformer.{m}.{p}" for m in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm") for p in wb
        }
    else:
        keys |= {"query_embed.weight", "transformer.reference_points.weight", "transformer.reference_points.bias"}
    return keys


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, :, 40:] = True
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)), masks


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_through_the_official_layout(variant):
    model = tiny_model(0, **VARIANTS[variant]).eval()
    official = convert_to_official_deformable_detr(model.state_dict())
    backbone_keys = list(model.backbone.body.state_dict())
    assert set(official) == official_layout(backbone_keys, refine="refine" in variant or "two" in variant,
                                            two_stage=variant == "two_stage")  # fmt: skip
    assert official["query_embed.weight" if variant != "two_stage" else "transformer.pos_trans.weight"].shape[-1] == 64
    assert official["class_embed.0.weight"].shape == (3, 32)
    assert official["backbone.0.body.layer1.0.conv1.weight"].shape == model.backbone.body.layer1[0].conv1.weight.shape

    other = tiny_model(1, **VARIANTS[variant]).eval()
    other.load_state_dict(convert_official_deformable_detr({"model": official}), strict=True)  # wrapped like the files
    images, masks = batch()
    with torch.no_grad():
        expected, got = model(images, masks), other(images, masks)
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_prefix_targets_the_objective_and_shared_heads_collapse():
    model = tiny_model(0)
    official = convert_to_official_deformable_detr(model.state_dict())
    assert torch.equal(official["class_embed.0.weight"], official["class_embed.1.weight"])  # one head, D entries
    converted = convert_official_deformable_detr(official, prefix="model.")
    assert set(converted) == {f"model.{k}" for k in model.state_dict()}
    assert convert_to_official_deformable_detr(converted, prefix="model.").keys() == official.keys()


def test_unknown_and_inconsistent_keys_are_reported():
    official = convert_to_official_deformable_detr(tiny_model(0).state_dict())
    with pytest.raises(CheckpointError, match=r"unknown keys backbone\.1\.x, transformer\.mystery\.weight"):
        convert_official_deformable_detr(
            {**official, "transformer.mystery.weight": torch.zeros(1), "backbone.1.x": torch.zeros(1)}
        )
    shared_but_different = {**official, "class_embed.1.bias": official["class_embed.1.bias"] + 1}
    with pytest.raises(CheckpointError, match=r"class_embed\.1\.bias differs from class_embed\.0\.bias"):
        convert_official_deformable_detr(shared_but_different)
    with pytest.raises(CheckpointError, match="no 'transformer.decoder.layers"):
        convert_official_deformable_detr({"backbone.0.body.conv1.weight": torch.zeros(1)})


def test_official_file_converts_for_load_from_with_coco_class_rows(tmp_path):
    """tools/convert_official_deformable_detr.py: an official-layout .pth with raw-id class rows becomes a
    safetensors file that loads strictly into the objective with the annotation file's contiguous classes."""
    import json

    from conftest import run_tool
    from vfm.engine.checkpoint import load_state_dict_file
    from vfm.registry import OBJECTIVES

    torch.manual_seed(0)
    official_model = DeformableDETR({"name": "test_resnet", "out_indices": [2, 3, 4], "freeze_bn": True}, num_classes=5,
                                    d_model=32, num_heads=4, num_encoder_layers=NUM_ENCODER,
                                    num_decoder_layers=NUM_DECODER, dim_feedforward=64, num_queries=8,
                                    num_feature_levels=NUM_LEVELS, num_points=2).eval()  # fmt: skip
    source, destination, ann = tmp_path / "official.pth", tmp_path / "vfm.safetensors", tmp_path / "ann.json"
    torch.save({"model": convert_to_official_deformable_detr(official_model.state_dict()), "epoch": 49}, source)
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 3}, {"id": 1}]}))
    result = run_tool("convert_official_deformable_detr", source, destination, "--ann-file", ann, check=True)
    assert "wrote" in result.stdout

    objective = OBJECTIVES.build({
        "type": "deformable_detr", "num_classes": 2, "backbone": {"name": "test_resnet", "freeze_bn": True},
        "d_model": 32, "num_heads": 4, "num_encoder_layers": NUM_ENCODER, "num_decoder_layers": NUM_DECODER,
        "dim_feedforward": 64, "num_queries": 8, "num_feature_levels": NUM_LEVELS, "num_points": 2}, "objective").eval()
    objective.load_state_dict(load_state_dict_file(destination), strict=True)
    images, masks = batch()
    with torch.no_grad():
        expected, got = official_model(images, masks), objective.model(images, masks)
    # contiguous label 0 = id 1, label 1 = id 3 (a 2-row GEMM may round differently from a 5-row one)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"][..., [1, 3]], rtol=1e-5, atol=1e-6)
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])

    broken = run_tool("convert_official_deformable_detr", tmp_path / "missing.pth", destination)
    assert broken.returncode == 2 and "missing.pth: checkpoint file not found" in broken.stderr
