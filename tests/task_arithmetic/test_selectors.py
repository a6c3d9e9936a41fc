"""Parameter selection per rule and family: counts, the paper's ViT-B/32 number, errors naming rule and family."""

from __future__ import annotations

import pytest
import timm
import torch
from ta_helpers import tiny_vit
from torch import nn

from vfm.errors import ConfigError
from vfm.task_arithmetic import count_parameters, detect_family, select_names, select_parameters


class OpenClipBlock(nn.Module):
    """open_clip's ResidualAttentionBlock layout: ln_1, attn (nn.MultiheadAttention), ln_2, mlp.c_fc / c_proj."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))


class OpenClipVisual(nn.Module):
    def __init__(self, width: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 4, 4, bias=False)
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(OpenClipBlock(width) for _ in range(layers))
        self.proj = nn.Parameter(torch.randn(width, 8))


def test_timm_vit_attn_linear_is_4_layers_width_squared():
    model = tiny_vit(depth=2, width=32, num_classes=5)
    names = select_parameters(model, "attn_linear")
    assert names == [f"blocks.{i}.attn.{p}.weight" for i in range(2) for p in ("qkv", "proj")]
    assert count_parameters(model, names) == 4 * 2 * 32**2
    assert count_parameters(model, select_parameters(model, "attn_linear+bias")) == 4 * 2 * 32**2 + 4 * 2 * 32
    assert select_parameters(model, "head") == ["head.weight", "head.bias"]
    assert count_parameters(model, select_parameters(model, "mlp")) == 2 * (32 * 128 + 128 + 128 * 32 + 32)
    assert set(select_parameters(model, "norm")) == {"blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.norm2.weight",
                                                     "blocks.0.norm2.bias", "blocks.1.norm1.weight", "blocks.1.norm1.bias",
                                                     "blocks.1.norm2.weight", "blocks.1.norm2.bias", "norm.weight", "norm.bias"}
    assert select_parameters(model, "all") == [n for n, _ in model.named_parameters()]


def test_vit_b32_attn_linear_count_on_the_meta_device():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=0)
    assert next(model.parameters()).is_meta
    assert count_parameters(model, select_parameters(model, "attn_linear")) == 28_311_552


def test_open_clip_multihead_attention_layout():
    model = OpenClipVisual(width=16, layers=3)
    assert detect_family(n for n, _ in model.named_parameters()) == "open_clip"
    names = select_parameters(model, "attn_linear")
    assert names == [f"transformer.resblocks.{i}.attn.{p}" for i in range(3) for p in ("in_proj_weight", "out_proj.weight")]
    assert count_parameters(model, names) == 4 * 3 * 16**2  # packed W_q, W_k, W_v (3d x d) and W_o
    biases = set(select_parameters(model, "attn_linear+bias")) - set(names)
    assert biases == {f"transformer.resblocks.{i}.attn.{p}" for i in range(3) for p in ("in_proj_bias", "out_proj.bias")}
    assert select_parameters(model, "head") == ["proj"]
    assert len(select_parameters(model, "norm")) == 2 * (2 * 3 + 2)


def test_hugging_face_vit_and_clip_vision_layouts():
    from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

    small = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
             "image_size": 8, "patch_size": 4, "num_channels": 1}
    vit = ViTModel(ViTConfig(**small))
    names = select_parameters(vit, "attn_linear")
    assert len(names) == 2 * 4 and all(n.endswith(".weight") for n in names)
    mlp = select_parameters(vit, "mlp")
    assert not set(names) & set(mlp) and len(mlp) == 2 * 4  # W_o is attention, the MLP's two linears are not
    assert detect_family(n for n, _ in vit.named_parameters()) == "hf_vit"
    assert count_parameters(vit, names) == 4 * 2 * 16**2
    clip = CLIPVisionModel(CLIPVisionConfig(**small))
    names = select_parameters(clip, "attn_linear")
    assert {n.rsplit(".", 2)[-2] for n in names} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert count_parameters(clip, names) == 4 * 2 * 16**2
    assert detect_family(n for n, _ in clip.named_parameters()) == "hf_clip"


def test_a_rule_that_selects_nothing_names_rule_and_family():
    model = tiny_vit(num_classes=0)  # no head
    with pytest.raises(ConfigError, match=r"'head' selects nothing .*family timm_vit"):
        select_parameters(model, "head")
    with pytest.raises(ConfigError, match=r"rule 'attn' is unknown; expected one of all, attn_linear"):
        select_parameters(model, "attn")
    with pytest.raises(ConfigError, match=r"'attn_linear'.*match no known family"):
        select_parameters(nn.Sequential(nn.Linear(2, 2)), "attn_linear")


def test_transformers_4_vit_names_select_the_same_tensors():
    names = ["encoder.layer.0.attention.attention.query.weight", "encoder.layer.0.attention.attention.query.bias",
             "encoder.layer.0.attention.attention.key.weight", "encoder.layer.0.attention.attention.value.weight",
             "encoder.layer.0.attention.output.dense.weight", "encoder.layer.0.intermediate.dense.weight",
             "encoder.layer.0.output.dense.weight", "encoder.layer.0.layernorm_before.weight"]
    assert select_names(names, "attn_linear") == [names[0], names[2], names[3], names[4]]
    assert select_names(names, "mlp") == [names[5], names[6]]
    assert select_names(names, "norm") == [names[7]]
