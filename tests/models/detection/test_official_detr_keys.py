"""Unit tests for vfm/models/detection/official_detr_keys.py: the facebookresearch/detr layout written out by hand."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from conversion_helpers import load_file, perturb, run, tiny_detr, tool_main

from vfm.errors import CheckpointError
from vfm.models.detection.conversion import RowRole, select_class_rows
from vfm.models.detection.official_detr_keys import convert_to_official_detr, official_detr


def official_layout(backbone_keys: list[str], num_encoder: int = 1, num_decoder: int = 2) -> set[str]:
    """Key names of facebookresearch/detr's DETR.state_dict() (models/detr.py, models/transformer.py)."""
    wb = ("weight", "bias")
    mha = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    keys = {f"backbone.0.body.{k}" for k in backbone_keys} | {
        "query_embed.weight",
        "input_proj.weight",
        "input_proj.bias",
    }
    keys |= {f"class_embed.{p}" for p in wb} | {f"bbox_embed.layers.{j}.{p}" for j in range(3) for p in wb}
    keys |= {f"transformer.decoder.norm.{p}" for p in wb}
    for i in range(num_encoder):
        keys |= {f"transformer.encoder.layers.{i}.self_attn.{k}" for k in mha}
        keys |= {
            f"transformer.encoder.layers.{i}.{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2") for p in wb
        }
    for i in range(num_decoder):
        layer = f"transformer.decoder.layers.{i}"
        keys |= {f"{layer}.{a}.{k}" for a in ("self_attn", "multihead_attn") for k in mha}
        keys |= {f"{layer}.{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in wb}
    return keys


def test_round_trip_through_the_official_layout():
    model = perturb(tiny_detr(5), seed=1)
    official = convert_to_official_detr(model.state_dict())
    assert set(official) == official_layout(list(model.backbone.body.state_dict()))
    assert official["class_embed.weight"].shape == (6, 32)  # 5 categories + no-object
    converted = official_detr({"model": official})
    assert converted.class_heads == {"class_head": RowRole.CATEGORIES_THEN_NO_OBJECT}
    other = tiny_detr(5, seed=2)
    other.load_state_dict(converted.state_dict, strict=True)
    expected, got = run(model), run(other)
    assert torch.equal(got["pred_logits"], expected["pred_logits"])
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_class_rows_keep_no_object_last():
    model = perturb(tiny_detr(5), seed=1)
    converted = official_detr(convert_to_official_detr(model.state_dict()), prefix="model.")
    reduced = tiny_detr(2, seed=2)
    weights = select_class_rows(converted, [1, 3])
    reduced.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()}, strict=True)
    expected, got = run(model), run(reduced)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"][..., [1, 3, 5]], rtol=0, atol=1e-5)
    assert torch.equal(got["pred_boxes"], expected["pred_boxes"])


def test_dc5_layout_is_the_same_and_dilates_the_last_stage():
    model = perturb(tiny_detr(5, output_stride=16), seed=1)
    official = convert_to_official_detr(model.state_dict())
    assert set(official) == official_layout(list(model.backbone.body.state_dict()))
    assert model.backbone.strides == [16]
    other = tiny_detr(5, seed=2, output_stride=16)
    other.load_state_dict(official_detr(official).state_dict, strict=True)
    assert torch.equal(run(other)["pred_boxes"], run(model)["pred_boxes"])


def test_missing_and_unknown_keys_are_one_line_errors():
    official = convert_to_official_detr(tiny_detr(5).state_dict())
    broken = {k: v for k, v in official.items() if k != "transformer.decoder.norm.weight"}
    broken["transformer.encoder.norm.weight"] = torch.ones(32)  # a pre-norm checkpoint
    with pytest.raises(CheckpointError) as error:
        official_detr(broken)
    assert str(error.value) == ("official DETR checkpoint: unknown keys transformer.encoder.norm.weight; "
                                "missing keys transformer.decoder.norm.weight")  # fmt: skip
    with pytest.raises(CheckpointError, match="not a DETR"):
        official_detr({"backbone.0.body.conv1.weight": torch.zeros(1)})


def test_official_file_with_args_through_the_tool(tmp_path, capsys):
    model = perturb(tiny_detr(5), seed=1)
    path, out, ann = tmp_path / "detr.pth", tmp_path / "detr.safetensors", tmp_path / "ann.json"
    # The official files carry their argparse.Namespace beside the weights.
    torch.save({"model": convert_to_official_detr(model.state_dict()), "args": argparse.Namespace(lr=1e-4)}, path)
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 3}, {"id": 1}]}))
    main = tool_main("convert_official_detr")
    assert main([str(path), str(out), "--ann-file", str(ann)]) == 0
    assert "class_head (categories_then_no_object)" in capsys.readouterr().out
    weights = load_file(out)
    assert torch.equal(weights["model.class_head.bias"], model.class_head.bias[[1, 3, 5]])

    torch.save({"model": {**convert_to_official_detr(model.state_dict()), "extra.weight": torch.zeros(1)}}, path)
    assert main([str(path), str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: official DETR checkpoint: unknown keys extra.weight"
