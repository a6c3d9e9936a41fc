"""Unit tests for vfm/models/detection/conversion.py: class rows reduced by what each head is (two-stage bug)."""

from __future__ import annotations

import json

import pytest
import torch
from conversion_helpers import load_file, perturb, run, tiny_deformable, tool_main

from vfm.errors import CheckpointError
from vfm.models.detection.conversion import Converted, RowRole, class_rows, read_category_ids, select_class_rows
from vfm.models.detection.official_keys import convert_to_official_deformable_detr, official_deformable_detr

TWO_STAGE = {"with_box_refine": True, "two_stage": True}
CATEGORY_IDS = [1, 3]  # raw ids of a 2-category annotation file; labels 0, 1


def test_rows_by_role():
    assert class_rows(RowRole.CATEGORIES, 91, [1, 3, 90], "h") == [1, 3, 90]
    assert class_rows(RowRole.CATEGORIES_THEN_NO_OBJECT, 92, [1, 3, 90], "h") == [1, 3, 90, 91]
    assert class_rows(RowRole.OBJECTNESS, 91, [1, 3, 90], "h") == [0, 1, 2]
    with pytest.raises(CheckpointError, match="h: 91 category rows .* cannot select category id 91"):
        class_rows(RowRole.CATEGORIES_THEN_NO_OBJECT, 92, [91], "h")


def test_two_stage_reduction_keeps_the_proposal_objectness_row():
    """Official-layout two-stage model, converted with and without an annotation file, against the unreduced one."""
    source = perturb(tiny_deformable(5, **TWO_STAGE), seed=1)
    converted = official_deformable_detr(convert_to_official_deformable_detr(source.state_dict()))
    assert converted.class_heads == {"class_heads.0": RowRole.CATEGORIES, "class_heads.1": RowRole.CATEGORIES,
                                     "encoder_class_head": RowRole.OBJECTNESS}  # fmt: skip
    unreduced = tiny_deformable(5, seed=2, **TWO_STAGE)
    unreduced.load_state_dict(converted.state_dict, strict=True)
    reduced = tiny_deformable(2, seed=2, **TWO_STAGE)
    reduced.load_state_dict(select_class_rows(converted, CATEGORY_IDS), strict=True)
    expected, got_unreduced, got_reduced = run(source), run(unreduced), run(reduced)

    for got in (got_unreduced, got_reduced):  # proposals: the objectness scores of every token and their boxes
        torch.testing.assert_close(got["enc_outputs"]["pred_logits"][..., 0], expected["enc_outputs"]["pred_logits"][..., 0],
                                   rtol=0, atol=1e-5)  # fmt: skip
        assert torch.equal(got["enc_outputs"]["pred_boxes"], expected["enc_outputs"]["pred_boxes"])
    assert torch.equal(got_unreduced["pred_logits"], expected["pred_logits"])
    assert torch.equal(got_unreduced["pred_boxes"], expected["pred_boxes"])
    torch.testing.assert_close(got_reduced["pred_boxes"], expected["pred_boxes"], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        got_reduced["pred_logits"], expected["pred_logits"][..., CATEGORY_IDS], rtol=0, atol=1e-5
    )

    # Reducing the proposal head as if its rows were categories (the old name-pattern rule) ranks other proposals.
    naive = Converted(converted.state_dict, dict.fromkeys(converted.class_heads, RowRole.CATEGORIES))
    wrong = tiny_deformable(2, seed=2, **TWO_STAGE)
    wrong.load_state_dict(select_class_rows(naive, CATEGORY_IDS), strict=True)
    assert (run(wrong)["pred_boxes"] - expected["pred_boxes"]).abs().max() > 1e-2


def test_two_stage_file_with_ann_file_through_the_tool(tmp_path, capsys):
    source = perturb(tiny_deformable(5, **TWO_STAGE), seed=1)
    path, out, ann = tmp_path / "official.pth", tmp_path / "dd.safetensors", tmp_path / "ann.json"
    torch.save({"model": convert_to_official_deformable_detr(source.state_dict()), "epoch": 49}, path)
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 3}, {"id": 1}]}))
    assert tool_main("convert_official_deformable_detr")([str(path), str(out), "--ann-file", str(ann)]) == 0
    assert "encoder_class_head (objectness)" in capsys.readouterr().out
    weights = load_file(out)
    reduced = tiny_deformable(2, seed=2, **TWO_STAGE)
    reduced.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()}, strict=True)
    torch.testing.assert_close(run(reduced)["pred_boxes"], run(source)["pred_boxes"], rtol=0, atol=1e-5)
    official = source.state_dict()
    assert torch.equal(weights["model.encoder_class_head.weight"], official["encoder_class_head.weight"][:2])


def test_annotation_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(CheckpointError, match=r"bad\.json: cannot read the category ids \(KeyError"):
        read_category_ids(bad)
    converted = Converted({"h.weight": torch.zeros(3, 2), "h.bias": torch.zeros(3)}, {"h": RowRole.CATEGORIES})
    with pytest.raises(CheckpointError, match="h: 3 category rows .* cannot select category id 5"):
        select_class_rows(converted, [1, 5])
