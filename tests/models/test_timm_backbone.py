"""Unit tests for vfm/models/backbones/timm_backbone.py: building, validation, local pretrained weights."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from vfm.engine.checkpoint import save_safetensors
from vfm.errors import CheckpointError, ConfigError
from vfm.registry import BACKBONES

VIT = {"type": "timm", "name": "vit_tiny_patch16_224", "patch_size": 8, "depth": 2, "num_classes": 0}


def test_builds_timm_model_with_in_chans_and_num_classes():
    torch.manual_seed(0)
    model = BACKBONES.build({"type": "timm", "name": "resnet18", "in_chans": 1, "num_classes": 7}, "backbone")
    assert isinstance(model, timm.models.ResNet)
    assert model.conv1.weight.shape[1] == 1
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    # the timm surface the rest of vfm relies on
    assert model.forward_features(torch.randn(2, 1, 16, 16)).shape == (2, 512, 1, 1)
    assert callable(model.group_matcher)


def test_vit_exposes_timm_surface():
    model = BACKBONES.build({**VIT, "img_size": 16}, "backbone")
    x = torch.randn(2, 3, 16, 16)
    assert model.forward_features(x).shape == (2, 1 + 4, 192)  # cls token + 2x2 patches
    assert model(x).shape == (2, 192)  # num_classes=0: pooled features
    assert len(model.forward_intermediates(x, intermediates_only=True)) == 2
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()


def test_unknown_timm_name_suggests_close_matches():
    with pytest.raises(ConfigError) as info:
        BACKBONES.validate({"type": "timm", "name": "resnet19"}, "objective.backbone")
    assert str(info.value).startswith("objective.backbone.name: 'resnet19' is not a timm model (did you mean ")
    assert "'resnet18'" in str(info.value)


def test_bad_kwargs_are_rejected_before_building(monkeypatch):
    calls = []
    builder = BACKBONES.get("timm")
    monkeypatch.setitem(BACKBONES._builders, "timm", lambda **kwargs: calls.append(kwargs) or builder(**kwargs))
    with pytest.raises(
        ConfigError, match=r"^objective.backbone: timm model 'resnet18' rejected its arguments: .*not_an_arg"
    ):
        BACKBONES.build({"type": "timm", "name": "resnet18", "not_an_arg": 3}, "objective.backbone")
    with pytest.raises(ConfigError, match=r"^objective.backbone.name: 'no_such_net' is not a timm model"):
        BACKBONES.build({"type": "timm", "name": "no_such_net"}, "objective.backbone")
    with pytest.raises(ConfigError, match=r"^objective.backbone.pretrained: weights file '.*missing\.pth' not found"):
        BACKBONES.build(
            {"type": "timm", "name": "resnet18", "pretrained": "/nonexistent/missing.pth"}, "objective.backbone"
        )
    assert calls == []  # no failing node reached the builder
    BACKBONES.build({"type": "timm", "name": "resnet18", "num_classes": 0}, "objective.backbone")
    assert calls == [{"name": "resnet18", "num_classes": 0}]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_local_file_loads_through_timm_filter_and_resizes_pos_embed(tmp_path, suffix):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=0)  # 4x4 patches
    path = tmp_path / f"source{suffix}"
    if suffix == ".safetensors":
        save_safetensors(source.state_dict(), path)
    else:
        torch.save({"model": source.state_dict()}, path)  # wrapped, as training scripts often save

    torch.manual_seed(1)  # different initial weights, so equality below means "loaded"
    model = BACKBONES.build({**VIT, "img_size": 16, "pretrained": str(path)}, "backbone")  # 2x2 patches
    for name in (
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.fc2.bias",
        "patch_embed.proj.weight",
        "cls_token",
        "norm.weight",
    ):
        assert torch.equal(model.state_dict()[name], source.state_dict()[name]), name
    assert model.pos_embed.shape == (1, 1 + 4, 192)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])  # the cls position is kept as is


def test_pretrained_head_of_another_size_is_skipped(tmp_path):
    source = timm.create_model("resnet18", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "r.pth")
    model = BACKBONES.build(
        {"type": "timm", "name": "resnet18", "num_classes": 3, "pretrained": str(tmp_path / "r.pth")}, "b"
    )
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (3, 512)


def test_pretrained_file_that_does_not_fit_is_an_error(tmp_path):
    torch.save({"something.else": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"foreign\.pth: no key of the file matches the model ResNet"):
        BACKBONES.build({"type": "timm", "name": "resnet18", "pretrained": str(tmp_path / "foreign.pth")}, "b")
