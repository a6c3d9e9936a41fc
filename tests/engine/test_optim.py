"""Unit tests for vfm/engine/optim.py: parameter groups (weight decay, lr multipliers, layer decay) and builders."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vfm.engine.optim import build_param_groups
from vfm.errors import ConfigError, RegistryError
from vfm.registry import OPTIMIZERS

VIT_DEPTH = 3


class Scaled(nn.Module):
    """A module that, like timm backbones, names parameters to keep out of weight decay."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.ones(3, 4))  # 2-d, but listed by no_weight_decay()
        self.proj = nn.Linear(4, 4)

    def no_weight_decay(self) -> set[str]:
        return {"table"}


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.inner = Scaled()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


class VitClassifier(nn.Module):
    """A tiny timm ViT under a `backbone.` prefix plus a head outside it, like an objective module."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            "vit_tiny_patch16_224", img_size=16, patch_size=8, depth=VIT_DEPTH, num_classes=0
        )
        self.head = nn.Linear(self.backbone.embed_dim, 3)


@pytest.fixture(scope="module")
def vit() -> VitClassifier:
    torch.manual_seed(0)
    return VitClassifier()


def by_name(groups: list[dict]) -> dict[str, dict]:
    """Map each parameter name to its group; fails when a name appears in two groups."""
    seen: dict[str, dict] = {}
    for group in groups:
        assert len(group["params"]) == len(group["param_names"])
        for name in group["param_names"]:
            assert name not in seen, f"{name} in two groups"
            seen[name] = group
    return seen


def test_no_weight_decay_for_1d_params_norms_biases_and_listed_names():
    model = TinyNet()
    groups = build_param_groups(model, lr=0.1, weight_decay=0.05)
    decay = {name: group["weight_decay"] for name, group in by_name(groups).items()}
    assert decay == {
        "stem.weight": 0.05,
        "stem.bias": 0.0,
        "bn.weight": 0.0,
        "bn.bias": 0.0,
        "inner.table": 0.0,  # no_weight_decay() of a submodule, with the submodule's prefix
        "inner.proj.weight": 0.05,
        "inner.proj.bias": 0.0,
        "norm.weight": 0.0,
        "norm.bias": 0.0,
        "head.weight": 0.05,
        "head.bias": 0.0,
    }
    assert {g["lr"] for g in groups} == {0.1}
    assert {g["lr_scale"] for g in groups} == {1.0}


def test_no_weight_decay_patterns():
    groups = build_param_groups(TinyNet(), lr=0.1, weight_decay=0.05, no_weight_decay=["head.*"])
    decay = {name: group["weight_decay"] for name, group in by_name(groups).items()}
    assert decay["head.weight"] == 0.0
    assert decay["stem.weight"] == 0.05


def test_timm_vit_no_weight_decay_names_under_backbone_prefix(vit):
    groups = by_name(build_param_groups(vit, lr=1.0, weight_decay=0.1))
    assert groups["backbone.pos_embed"]["weight_decay"] == 0.0
    assert groups["backbone.cls_token"]["weight_decay"] == 0.0
    assert groups["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.1
    assert groups["backbone.patch_embed.proj.weight"]["weight_decay"] == 0.1
    assert groups["backbone.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert groups["head.weight"]["weight_decay"] == 0.1


def test_every_trainable_param_once_and_frozen_params_excluded():
    model = TinyNet()
    model.stem.requires_grad_(False)
    groups = build_param_groups(model, lr=0.1, weight_decay=0.05, lr_mult={"head.*": 2.0})
    grouped = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    names = set(by_name(groups))
    assert "stem.weight" not in names and "stem.bias" not in names
    # parameters and names line up inside each group
    params = dict(model.named_parameters())
    for group in groups:
        for name, param in zip(group["param_names"], group["params"], strict=True):
            assert params[name] is param


def test_lr_mult_first_matching_pattern_wins(vit):
    groups = by_name(
        build_param_groups(vit, lr=0.5, weight_decay=0.0, lr_mult={"backbone.blocks.0.*": 0.1, "backbone.*": 0.2})
    )
    assert groups["backbone.blocks.0.mlp.fc1.weight"]["lr_scale"] == 0.1
    assert groups["backbone.blocks.0.mlp.fc1.weight"]["lr"] == pytest.approx(0.05)
    assert groups["backbone.blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.2
    assert groups["backbone.pos_embed"]["lr"] == pytest.approx(0.1)
    assert groups["head.weight"]["lr_scale"] == 1.0
    assert groups["head.weight"]["lr"] == 0.5


def test_null_lr_mult_removes_a_pattern(vit):
    # a variant config cancels a base pattern that names a layer it lacks, instead of tripping the unused check
    groups = by_name(build_param_groups(vit, lr=0.5, weight_decay=0.0, lr_mult={"encoder.*": None, "head.*": 0.1}))
    assert groups["head.weight"]["lr_scale"] == 0.1
    assert groups["backbone.pos_embed"]["lr_scale"] == 1.0


def test_unused_lr_mult_pattern_is_an_error(vit):
    # a pattern shadowed by an earlier one never wins, so it is reported as unused
    with pytest.raises(
        ConfigError, match=r"^optim.lr_mult: pattern\(s\) \['backbone.blocks.\*'\] match no trainable parameter$"
    ):
        build_param_groups(vit, lr=0.5, weight_decay=0.0, lr_mult={"backbone.*": 0.2, "backbone.blocks.*": 9.0})
    with pytest.raises(ConfigError, match=r"\['encoder.\*'\]"):
        build_param_groups(vit, lr=0.5, weight_decay=0.0, lr_mult={"encoder.*": 0.1})
    model = TinyNet()
    model.head.requires_grad_(False)
    with pytest.raises(ConfigError, match=r"\['head.\*'\]"):  # frozen parameters do not count
        build_param_groups(model, lr=0.5, weight_decay=0.0, lr_mult={"head.*": 0.1})


def test_layer_decay_scales_each_vit_block(vit):
    decay = 0.5
    groups = by_name(build_param_groups(vit, lr=2.0, weight_decay=0.05, layer_decay=decay))
    # timm's group_matcher: stem (patch_embed, cls_token, pos_embed) = 0, blocks.i = i + 1, and the
    # final norm joins the last block, so the top layer is VIT_DEPTH; the head outside the backbone is top.
    top = VIT_DEPTH
    expected = {
        "backbone.patch_embed.proj.weight": decay**top,
        "backbone.pos_embed": decay**top,
        "backbone.cls_token": decay**top,
        "backbone.norm.weight": 1.0,
        "head.weight": 1.0,
        "head.bias": 1.0,
    }
    for block in range(VIT_DEPTH):
        for suffix in ("attn.qkv.weight", "attn.qkv.bias", "norm1.weight", "mlp.fc2.weight"):
            expected[f"backbone.blocks.{block}.{suffix}"] = decay ** (top - (block + 1))
    for name, scale in expected.items():
        assert groups[name]["lr_scale"] == pytest.approx(scale), name
        assert groups[name]["lr"] == pytest.approx(2.0 * scale), name
    assert expected["backbone.blocks.0.attn.qkv.weight"] == 0.25  # the formula, spelled out once
    # weight decay is still decided per parameter within each layer
    assert groups["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert groups["backbone.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0
    assert len(by_name(build_param_groups(vit, 2.0, 0.05, layer_decay=decay))) == len(list(vit.parameters()))


def test_layer_decay_multiplies_lr_mult(vit):
    groups = by_name(build_param_groups(vit, lr=1.0, weight_decay=0.0, lr_mult={"backbone.*": 0.1}, layer_decay=0.5))
    assert groups["backbone.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.1 * 0.5 ** (VIT_DEPTH - 1))
    assert groups["head.weight"]["lr_scale"] == 1.0


def test_layer_decay_needs_a_group_matcher():
    with pytest.raises(
        ConfigError, match=r"optim.layer_decay: the model has no submodule with a timm-style group_matcher"
    ):
        build_param_groups(TinyNet(), lr=1.0, weight_decay=0.0, layer_decay=0.7)


def test_no_trainable_parameters_is_an_error():
    model = TinyNet().requires_grad_(False)
    with pytest.raises(ConfigError, match=r"no trainable parameters"):
        build_param_groups(model, lr=1.0, weight_decay=0.0)


# -------------------------------------------------------------------------------------- builders
def test_adamw_builder_through_registry(vit):
    optimizer = OPTIMIZERS.build(
        {
            "type": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.02,
            "betas": [0.8, 0.9],
            "eps": 1e-6,
            "lr_mult": {"head.*": 10},
        },
        "optim",
        model=vit,
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.8, 0.9)
        assert group["eps"] == 1e-6
        assert group["weight_decay"] in (0.0, 0.02)
    lrs = {name: group["lr"] for group in optimizer.param_groups for name in group["param_names"]}
    assert lrs["head.weight"] == pytest.approx(1e-2)
    assert lrs["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(1e-3)


def test_sgd_step_applies_weight_decay_per_group():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = OPTIMIZERS.build({"type": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.5}, "optim", model=model)
    assert isinstance(optimizer, torch.optim.SGD)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    optimizer.step()
    # SGD: p <- p - lr * (grad + wd * p); the bias has wd 0
    torch.testing.assert_close(model.weight.detach(), before["weight"] - 0.1 * (1.0 + 0.5 * before["weight"]))
    torch.testing.assert_close(model.bias.detach(), before["bias"] - 0.1)


def test_sgd_builder_options():
    optimizer = OPTIMIZERS.build(
        {"type": "sgd", "lr": 0.2, "momentum": 0.8, "nesterov": True}, "optim", model=nn.Linear(2, 2)
    )
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.8, True)


def test_optimizer_node_is_validated(vit):
    with pytest.raises(RegistryError, match=r"^optim: missing required argument 'lr' for optimizers type 'adamw'$"):
        OPTIMIZERS.build({"type": "adamw"}, "optim", model=vit)
    with pytest.raises(ConfigError, match=r"^optim.lr: expected float, got str 'high'$"):
        OPTIMIZERS.build({"type": "adamw", "lr": "high"}, "optim", model=vit)
    with pytest.raises(RegistryError, match=r"^optim.momentun: unknown argument .*did you mean 'momentum'"):
        OPTIMIZERS.build({"type": "sgd", "lr": 0.1, "momentun": 0.9}, "optim", model=vit)


def test_layer_decay_runs_over_each_group_matcher_separately():
    class TwoTowers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=4, num_classes=0)
            self.text = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=2, num_classes=0)
            self.head = nn.Linear(192, 2)

    groups = by_name(build_param_groups(TwoTowers(), lr=1.0, weight_decay=0.0, layer_decay=0.5))
    # each tower decays over its own depth: its last block at full lr, its stem decay ** depth
    assert groups["vision.blocks.3.mlp.fc1.weight"]["lr_scale"] == groups["text.blocks.1.mlp.fc1.weight"]["lr_scale"] == 1.0
    assert groups["vision.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5**4)
    assert groups["text.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.5**2)
    assert groups["head.weight"]["lr_scale"] == 1.0  # outside every matcher
