"""Helpers for the checkpoint-converter tests: tiny models with perturbed weights, fixed inputs, tools in-process."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from torch import nn

from vfm.models.detection.deformable_detr import DeformableDETR
from vfm.models.detection.detr import DETR

REPO = Path(__file__).resolve().parents[3]
BACKBONE = {"name": "test_resnet", "out_indices": [2, 3, 4], "freeze_bn": True}


def perturb(model: nn.Module, seed: int, keep: str | None = None) -> nn.Module:
    """Add noise to every parameter (not matching `keep`) so that copies of one init differ and zeros are not zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if keep is None or not re.search(keep, name):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def tiny_deformable(num_classes: int, seed: int = 0, **kwargs) -> DeformableDETR:
    torch.manual_seed(seed)
    return DeformableDETR(BACKBONE, num_classes=num_classes, d_model=32, num_heads=4, num_encoder_layers=1,
                          num_decoder_layers=2, dim_feedforward=64, num_queries=8, num_feature_levels=4, num_points=2,
                          **kwargs).eval()  # fmt: skip


def tiny_detr(num_classes: int, seed: int = 0, **backbone) -> DETR:
    torch.manual_seed(seed)
    return DETR({**BACKBONE, "out_indices": [4], **backbone}, num_classes=num_classes, d_model=32, num_heads=4,
                num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64, num_queries=8).eval()  # fmt: skip


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64x64 images, the second padded on the right (fixed values)."""
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, :, 40:] = True
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)), masks


def run(model: nn.Module) -> dict:
    images, masks = batch()
    with torch.no_grad():
        return model(images, masks)


def tool_main(name: str):
    """The `main` of tools/<name>.py, imported in-process (no interpreter start-up per call)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def load_file(path: Path) -> dict[str, torch.Tensor]:
    """A converted safetensors file (wherever the weight-file helpers live in this tree)."""
    try:
        from vfm.weights import load_state_dict_file
    except ImportError:
        from vfm.engine.checkpoint import load_state_dict_file
    return load_state_dict_file(path)
