"""Unit tests for vfm/models/detection/mmdet_keys.py: mmdetection 3.x layouts written out by hand from its modules."""

from __future__ import annotations

import pytest
import torch
from conversion_helpers import load_file, perturb, run, tiny_deformable, tiny_detr, tool_main

from vfm.errors import CheckpointError
from vfm.models.detection.conversion import RowRole
from vfm.models.detection.mmdet_keys import convert_to_mmdet, mmdet_detection

VARIANTS = {"plain": {}, "refine": {"with_box_refine": True}, "two_stage": {"with_box_refine": True, "two_stage": True}}
WB = ("weight", "bias")
MSDA = [f"{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj") for p in WB]
MHA = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
FFN = [f"ffn.layers.{i}.{p}" for i in ("0.0", "1") for p in WB]
ZERO_BIAS = r"^input_proj\.\d+\.0\.bias$"  # mmdetection's ChannelMapper conv before GN has no bias


def mmdet_backbone(backbone_keys: list[str]) -> set[str]:
    """mmdet ResNet keys: torchvision names under `backbone.`, BatchNorm with its counter."""
    keys = {f"backbone.{k}" for k in backbone_keys}
    return keys | {
        f"backbone.{k.removesuffix('running_mean')}num_batches_tracked"
        for k in backbone_keys
        if k.endswith("running_mean")
    }


def mmdet_deformable_layout(backbone_keys: list[str], two_stage: bool, num_encoder=1, num_decoder=2) -> set[str]:
    """DeformableDETR.state_dict() of mmdetection 3.x: ChannelMapper neck, encoder/decoder layers, bbox_head branches."""
    keys = mmdet_backbone(backbone_keys) | {"level_embed"}
    for neck in ("neck.convs.0", "neck.convs.1", "neck.convs.2", "neck.extra_convs.0"):
        keys |= {f"{neck}.conv.weight", f"{neck}.gn.weight", f"{neck}.gn.bias"}
    for i in range(num_encoder):
        layer = f"encoder.layers.{i}"
        keys |= {f"{layer}.self_attn.{k}" for k in MSDA} | {f"{layer}.{k}" for k in FFN}
        keys |= {f"{layer}.norms.{n}.{p}" for n in range(2) for p in WB}
    for i in range(num_decoder):
        layer = f"decoder.layers.{i}"
        keys |= {f"{layer}.self_attn.attn.{k}" for k in MHA} | {f"{layer}.cross_attn.{k}" for k in MSDA}
        keys |= {f"{layer}.{k}" for k in FFN} | {f"{layer}.norms.{n}.{p}" for n in range(3) for p in WB}
    for i in range(num_decoder + two_stage):
        keys |= {f"bbox_head.cls_branches.{i}.{p}" for p in WB}
        keys |= {f"bbox_head.reg_branches.{i}.{j}.{p}" for j in (0, 2, 4) for p in WB}
    if two_stage:
        keys |= {
            f"{m}.{p}" for m in ("memory_trans_fc", "memory_trans_norm", "pos_trans_fc", "pos_trans_norm") for p in WB
        }
    else:
        keys |= {"query_embedding.weight", "reference_points_fc.weight", "reference_points_fc.bias"}
    return keys


def mmdet_detr_layout(backbone_keys: list[str], num_encoder=1, num_decoder=2) -> set[str]:
    """DETR.state_dict() of mmdetection 3.x with DETRHead."""
    keys = mmdet_backbone(backbone_keys) | {
        "query_embedding.weight",
        "neck.convs.0.conv.weight",
        "neck.convs.0.conv.bias",
    }
    keys |= {f"decoder.post_norm.{p}" for p in WB} | {f"bbox_head.{m}.{p}" for m in ("fc_cls", "fc_reg") for p in WB}
    keys |= {f"bbox_head.reg_ffn.layers.{i}.{p}" for i in ("0.0", "1") for p in WB}
    for i in range(num_encoder):
        keys |= {f"encoder.layers.{i}.self_attn.attn.{k}" for k in MHA} | {f"encoder.layers.{i}.{k}" for k in FFN}
        keys |= {f"encoder.layers.{i}.norms.{n}.{p}" for n in range(2) for p in WB}
    for i in range(num_decoder):
        layer = f"decoder.layers.{i}"
        keys |= {f"{layer}.{a}.attn.{k}" for a in ("self_attn", "cross_attn") for k in MHA}
        keys |= {f"{layer}.{k}" for k in FFN} | {f"{layer}.norms.{n}.{p}" for n in range(3) for p in WB}
    return keys


@pytest.mark.parametrize("variant", VARIANTS)
def test_deformable_detr_round_trip(variant):
    model = perturb(tiny_deformable(5, **VARIANTS[variant]), seed=1, keep=ZERO_BIAS)
    mmdet = convert_to_mmdet(model.state_dict())
    assert set(mmdet) == mmdet_deformable_layout(list(model.backbone.body.state_dict()), variant == "two_stage")
    if variant == "plain":  # one shared pair of heads, saved once per decoder layer
        assert torch.equal(mmdet["bbox_head.cls_branches.0.weight"], mmdet["bbox_head.cls_branches.1.weight"])
    file = {"meta": {"cfg": "model = dict(type='DeformableDETR', ...)"}, "state_dict": mmdet}
    converted = mmdet_detection(file)
    heads = {"class_heads.0": RowRole.CATEGORIES}
    if variant != "plain":
        heads["class_heads.1"] = RowRole.CATEGORIES
    if variant == "two_stage":
        heads["encoder_class_head"] = RowRole.OBJECTNESS
    assert converted.class_heads == heads
    assert converted.notes[0] == "4 input projection biases set to 0 (mmdetection's conv before GN has none)"
    other = tiny_deformable(5, seed=2, **VARIANTS[variant])
    other.load_state_dict(converted.state_dict, strict=True)
    expected, got = run(model), run(other)
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_untrained_refinement_is_read_from_the_config_text():
    model = tiny_deformable(5, with_box_refine=True)
    model.box_heads[1].load_state_dict(model.box_heads[0].state_dict())  # equal heads: the keys alone cannot tell
    mmdet = convert_to_mmdet(model.state_dict())
    assert mmdet_detection({"state_dict": mmdet}).class_heads.keys() == {"class_heads.0"}
    converted = mmdet_detection({"meta": {"cfg": "model = dict(\n    with_box_refine=True,\n)"}, "state_dict": mmdet})
    other = tiny_deformable(5, seed=2, with_box_refine=True)
    other.load_state_dict(converted.state_dict, strict=True)
    assert torch.equal(run(other)["pred_boxes"], run(model)["pred_boxes"])


def test_detr_round_trip_and_rows():
    model = perturb(tiny_detr(5), seed=1)
    mmdet = convert_to_mmdet(model.state_dict())
    assert set(mmdet) == mmdet_detr_layout(list(model.backbone.body.state_dict()))
    converted = mmdet_detection({"state_dict": mmdet})
    assert converted.class_heads == {"class_head": RowRole.CATEGORIES_THEN_NO_OBJECT}
    other = tiny_detr(5, seed=2)
    other.load_state_dict(converted.state_dict, strict=True)
    expected, got = run(model), run(other)
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_missing_unknown_and_inconsistent_keys():
    mmdet = convert_to_mmdet(perturb(tiny_deformable(5), seed=1, keep=ZERO_BIAS).state_dict())
    broken = {k: v for k, v in mmdet.items() if k != "decoder.layers.1.norms.2.bias"} | {
        "neck.fpn.weight": torch.zeros(1)
    }
    with pytest.raises(CheckpointError) as error:
        mmdet_detection(broken)
    assert str(error.value) == ("mmdetection Deformable DETR checkpoint: unknown keys neck.fpn.weight; "
                                "missing keys decoder.layers.1.norms.2.bias")  # fmt: skip
    detr = convert_to_mmdet(tiny_detr(5).state_dict())
    with pytest.raises(CheckpointError, match="mmdetection DETR checkpoint: missing keys decoder.post_norm.weight$"):
        mmdet_detection({k: v for k, v in detr.items() if k != "decoder.post_norm.weight"})
    two_stage = convert_to_mmdet(tiny_deformable(5, with_box_refine=True, two_stage=True).state_dict())
    with pytest.raises(CheckpointError, match="3 class branches for 2 decoder layers"):
        mmdet_detection({k: v for k, v in two_stage.items() if not k.startswith("memory_trans")})


def test_tool_converts_an_mmengine_file(tmp_path, capsys):
    model = perturb(tiny_deformable(5, with_box_refine=True, two_stage=True), seed=1, keep=ZERO_BIAS)
    path, out = tmp_path / "mmdet.pth", tmp_path / "dd.safetensors"
    meta = {"cfg": "as_two_stage=True", "dataset_meta": {"classes": ("a", "b")}, "epoch": 50}
    torch.save({"meta": meta, "state_dict": convert_to_mmdet(model.state_dict())}, path)
    main = tool_main("convert_mmdet_detr")
    assert main([str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "with_box_refine=True, two_stage=True" in printed and "encoder_class_head (objectness)" in printed
    weights = load_file(out)
    assert set(weights) == {f"model.{k}" for k in model.state_dict()}
    assert main([str(tmp_path / "none.pth"), str(out)]) == 2
    assert "none.pth: checkpoint file not found" in capsys.readouterr().err
