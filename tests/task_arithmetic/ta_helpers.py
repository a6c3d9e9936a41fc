"""Tiny ViTs and configs for the task-arithmetic tests (8 px digits, 4 tokens, width 32, one block)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
import yaml

from vfm.weights import save_safetensors

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
TINY_BACKBONE = {"type": "timm", "name": "vit_tiny_patch16_224", "img_size": 8, "patch_size": 4, "in_chans": 1,
                 "embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_vit(depth: int = 1, width: int = 32, num_classes: int = 0, seed: int = 0) -> torch.nn.Module:
    """A timm ViT on 8x8 one-channel images."""
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=8, patch_size=4, in_chans=1,
                             embed_dim=width, depth=depth, num_heads=2, num_classes=num_classes)


@pytest.fixture
def pretrained_file(tmp_path: Path) -> Path:
    """A 'pre-trained' tiny ViT as the classification objective exports it (backbone.* keys, a 10-class head)."""
    model = tiny_vit(num_classes=10)
    return save_safetensors({f"backbone.{k}": v for k, v in model.state_dict().items()}, tmp_path / "pre.safetensors")


@pytest.fixture
def finetune_config(tmp_path: Path, pretrained_file: Path) -> Path:
    """configs/task_arithmetic/finetune_digits.yaml with the tiny backbone, few steps, in tmp_path."""
    config = {
        "_base_": str(REPO / "configs" / "task_arithmetic" / "finetune_digits.yaml"),
        "objective": {"pretrained": str(pretrained_file), "backbone": TINY_BACKBONE},
        "data": {"batch_size": 32},
        "train": {"max_steps": 2, "log_interval": 1},
        "scheduler": {"warmup_steps": 0},
        "checkpoint": {"interval": 1, "export_safetensors": True},
        "work_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
