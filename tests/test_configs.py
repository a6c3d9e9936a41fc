"""Every shipped config loads and validates; the COCO detection configs build the paper's model sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from vfm.config import load_config
from vfm.engine.optim import build_param_groups
from vfm.engine.run_config import RunConfig
from vfm.engine.trainer import validate_run_config
from vfm.registry import OBJECTIVES

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "_base_" not in p.parts)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_config_loads_and_validates(path: Path):
    cfg = load_config(path, [], RunConfig)
    validate_run_config(cfg)  # raises on any bad registry node, type or setting, before any data is read
    assert cfg.objective.type in OBJECTIVES
    # Every interpolation (${data.root}, ...) resolves: no literal "${" is left in the resolved config.
    assert "${" not in OmegaConf.to_yaml(cfg, resolve=True)


# Parameter counts from the README of fundamentalvision/Deformable-DETR (DETR: its table's 41M). Ours have
# 80 contiguous classes instead of 91 raw COCO ids, a few thousand parameters fewer.
PAPER_PARAMS_M = {
    "deformable_detr/deformable_detr_r50_coco.yaml": 40,
    "deformable_detr/deformable_detr_single_scale_r50_coco.yaml": 34,
    "deformable_detr/deformable_detr_refine_r50_coco.yaml": 41,
    "deformable_detr/deformable_detr_two_stage_r50_coco.yaml": 41,
    "detr/detr_r50_coco.yaml": 41,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_coco_config_builds_the_paper_model(name: str):
    cfg = load_config(REPO / "configs" / name, [], RunConfig)
    model = OBJECTIVES.build(cfg.objective, "objective")
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert params_m == pytest.approx(PAPER_PARAMS_M[name], abs=1.0)
    # The lr multipliers name real parameters (an unused pattern is an error) and give the paper's groups.
    groups = build_param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.lr_mult)
    scale_of = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    assert scale_of["model.backbone.body.layer4.0.conv1.weight"] == pytest.approx(0.1)
    offsets = [n for n in scale_of if "sampling_offsets" in n]
    assert all(scale_of[n] == pytest.approx(0.1) for n in offsets)
    assert bool(offsets) == name.startswith("deformable_detr/")


def test_internvl_paper_config_builds_the_14b_model_on_the_meta_device(word_tokenizer):
    # InternVL-14B: InternViT-6B (~5.9B) + QLLaMA (LLaMA-7B + 96 queries + cross-attention every 2nd layer);
    # stage 2 trains the query path, about 1B parameters [paper, from memory]. Vocabulary of the official tokenizer.
    overrides = [f"objective.qllama.tokenizer={word_tokenizer}", "+objective.qllama.config.vocab_size=49954",
                 "objective.freeze=[vision,text]", "objective.vision.img_size=224"]
    cfg = load_config(REPO / "configs" / "internvl" / "internvl_g_flickr30k_finetune_paper.yaml", overrides, RunConfig)
    with torch.device("meta"):
        model = OBJECTIVES.build(OmegaConf.to_container(cfg.objective), "objective")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in model.model.visual.parameters()) == 5_902_793_600
    assert total == pytest.approx(13.8e9, rel=0.02)
    assert trainable == pytest.approx(1.0e9, rel=0.05)
    assert model.model.qllama.cross_attention_layers == list(range(0, 32, 2))
