"""Unit tests for vfm/models/detection/backbone.py: levels and masks, torchvision weights, frozen BN, frozen stem."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from vfm.errors import CheckpointError, ConfigError
from vfm.models.detection.backbone import DetectionBackbone, check_backbone_node, freeze_batch_norm


def test_levels_strides_channels_and_masks():
    backbone = DetectionBackbone("test_resnet", out_indices=[2, 3, 4])
    assert backbone.strides == [8, 16, 32]
    assert backbone.channels == [48, 192, 96]
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, 40:, :] = True  # image 1 is 40 rows high
    levels = backbone(torch.randn(2, 3, 64, 64), masks)
    assert [tuple(f.shape) for f, _ in levels] == [(2, 48, 8, 8), (2, 192, 4, 4), (2, 96, 2, 2)]
    assert [tuple(m.shape) for _, m in levels] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert levels[0][1][1, :, 0].tolist() == [False] * 5 + [True] * 3  # 40 / 8 = 5 valid rows
    assert not levels[0][1][0].any()


def test_torchvision_resnet_weights_load_and_freeze_exactly(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    for module in reference.modules():  # non-trivial statistics, so a wrong copy would show
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18_torchvision.pth"
    torch.save({"model": reference.state_dict()}, path)  # wrapped, as many checkpoints are
    backbone = DetectionBackbone("resnet18", out_indices=[2, 3, 4], pretrained_path=str(path), freeze_bn=True)
    assert not any(type(m) is nn.BatchNorm2d for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    extractor = create_feature_extractor(reference.eval(), {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = list(extractor(images).values())
        ours = [f for f, _ in backbone.train()(images, torch.zeros(1, 64, 64, dtype=torch.bool))]  # frozen in train too
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # like the paper: pretrained stem and layer1 are frozen, layer2-4 train
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    everything = DetectionBackbone("resnet18", pretrained_path=str(path), train_stem_and_layer1=True)
    assert all(p.requires_grad for p in everything.parameters())


def test_freeze_batch_norm_keeps_eval_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    nn.init.uniform_(model[1].weight)
    x = torch.randn(2, 3, 8, 8)
    expected = model.eval()(x)
    frozen = freeze_batch_norm(model)
    assert isinstance(frozen[1], FrozenBatchNorm2d)
    torch.testing.assert_close(frozen.train()(x), expected)


def test_from_scratch_trains_everything():
    backbone = DetectionBackbone("test_resnet", out_indices=[4])
    assert all(p.requires_grad for p in backbone.parameters())
    assert any(type(m) is nn.BatchNorm2d for m in backbone.modules())


def test_checkpoint_without_backbone_weights_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="no key of the file matches"):
        DetectionBackbone("test_resnet", pretrained_path=str(path))


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "resnet19"}, r"^objective.backbone.name: 'resnet19' is not a timm model \(did you mean"),
        (
            {"name": "test_resnet", "frozen_bn": True},
            r"^objective.backbone.frozen_bn: unknown backbone key \(did you mean 'freeze_bn'",
        ),
        (
            {"name": "test_resnet", "out_indices": [2, 9]},
            r"^objective.backbone: timm model 'test_resnet' rejected out_indices \[2, 9\]",
        ),
        (
            {"name": "test_resnet", "out_indices": []},
            r"^objective.backbone.out_indices: expected a non-empty list of ints",
        ),
        (
            {"name": "test_resnet", "pretrained_path": "/no/such.pth"},
            r"^objective.backbone.pretrained_path: weights file '/no/such.pth' not found",
        ),
        ({"name": "test_resnet", "freeze_bn": "yes"}, r"^objective.backbone.freeze_bn: expected bool"),
    ],
)
def test_bad_nodes_are_rejected(node, message):
    with pytest.raises(ConfigError, match=message):
        check_backbone_node(node, "objective.backbone")
