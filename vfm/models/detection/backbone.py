"""A timm CNN as a multi-level detection backbone: features at chosen strides plus downsampled padding masks."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from vfm.errors import CheckpointError, ConfigError
from vfm.models.backbones.timm_backbone import load_timm_weights
from vfm.registry import close_matches

logger = logging.getLogger(__name__)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` by a FrozenBatchNorm2d with the same statistics and affine parameters.

    Detection batches are 2 images per GPU, too few for batch statistics; pretrained ones are kept fixed.
    BatchNorm subclasses that fuse an activation (timm's BatchNormAct2d) go through timm's own freezer.
    """
    if type(module) is nn.BatchNorm2d:
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    if isinstance(module, nn.BatchNorm2d):
        return timm.layers.freeze_batch_norm_2d(module)
    for name, child in module.named_children():
        replaced = freeze_batch_norm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


class DetectionBackbone(nn.Module):
    """timm `features_only` model returning [(features (N, C_l, H_l, W_l), mask (N, H_l, W_l)), ...] per level.

    Args:
        name: timm model name (weights never come from a hub).
        out_indices: timm feature indices; for ResNets 2, 3, 4 are C3–C5 at strides 8, 16, 32.
        pretrained_path: local timm or torchvision checkpoint (.pth/.safetensors), loaded weights-only.
        freeze_bn: replace BatchNorm2d by FrozenBatchNorm2d (after loading the weights).
        train_stem_and_layer1: with pretrained weights the stem and first stage are frozen, as in the paper,
            unless this is True; without pretrained weights everything trains.
        output_stride: timm's dilation option; 16 dilates the last stage instead of striding it (DETR-DC5).
    """

    def __init__(
        self,
        name: str,
        out_indices: list[int] | tuple[int, ...] = (2, 3, 4),
        pretrained_path: str | None = None,
        freeze_bn: bool = False,
        train_stem_and_layer1: bool = False,
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        dilation = {} if output_stride is None else {"output_stride": output_stride}
        self.body = timm.create_model(
            name, features_only=True, out_indices=tuple(out_indices), pretrained=False, **dilation
        )
        if pretrained_path:
            self._load(name, pretrained_path)
        if freeze_bn:
            freeze_batch_norm(self.body)
        if pretrained_path and not train_stem_and_layer1:
            self._freeze_stem_and_first_stage()
        self.strides: list[int] = list(self.body.feature_info.reduction())
        self.channels: list[int] = list(self.body.feature_info.channels())

    def _load(self, name: str, path: str) -> None:
        # Load through the full classifier model so timm's family filter (if any) remaps foreign layouts;
        # torchvision ResNets already share timm's key names. Then copy into the features-only trunk.
        full = timm.create_model(name, pretrained=False)
        missing, _ = load_timm_weights(full, path)
        own = self.body.state_dict()
        missing_here = [k for k in missing if k in own]
        if missing_here:
            raise CheckpointError(
                f"{path}: {len(missing_here)} backbone weights missing from the file, e.g. {', '.join(missing_here[:5])}"
            )
        source = full.state_dict()
        absent = [k for k in own if k not in source]
        if absent:
            raise CheckpointError(f"{path}: cannot map {len(absent)} keys of the features-only {name}: {absent[:5]}")
        self.body.load_state_dict({k: source[k] for k in own})

    def _freeze_stem_and_first_stage(self) -> None:
        # Every module up to and including the stride-4 stage ("layer1" for ResNets) stops training.
        info = self.body.feature_info.info
        first_stage = next((i["module"] for i in info if i["reduction"] >= 4), "")
        first_stage = first_stage.replace(".", "_")  # features-only wrappers flatten "stages.0" to "stages_0"
        for module_name, child in self.body.named_children():
            child.requires_grad_(False)
            if module_name == first_stage:
                break

    def forward(self, images: Tensor, masks: Tensor) -> list[tuple[Tensor, Tensor]]:
        """images (N, 3, H, W), masks (N, H, W) True on padding -> per level (features, mask at that level)."""
        features = self.body(images)
        return [(f, downsample_mask(masks, f.shape[-2:])) for f in features]


def downsample_mask(mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Nearest-neighbour resize of a (N, H, W) bool padding mask."""
    return F.interpolate(mask[None].float(), size=tuple(size), mode="nearest")[0].to(torch.bool)


def check_backbone_node(node: Any, path: str = "backbone") -> None:
    """Raise ConfigError unless `node` is a mapping of DetectionBackbone arguments naming a timm model and local weights."""
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: expected a mapping like {{name: resnet50, out_indices: [2, 3, 4]}}, got {node!r}")
    accepted = [p for p in inspect.signature(DetectionBackbone.__init__).parameters if p != "self"]
    for key in node:
        if key not in accepted:
            raise ConfigError(
                f"{path}.{key}: unknown backbone key{close_matches(key, accepted)}; accepted: {', '.join(accepted)}"
            )
    name = node.get("name")
    if not isinstance(name, str) or not timm.is_model(name):
        raise ConfigError(f"{path}.name: {name!r} is not a timm model{close_matches(str(name), timm.list_models())}")
    indices = node.get("out_indices", [2, 3, 4])
    if not isinstance(indices, (list, tuple)) or not indices or not all(isinstance(i, int) for i in indices):
        raise ConfigError(f"{path}.out_indices: expected a non-empty list of ints, got {indices!r}")
    for key in ("freeze_bn", "train_stem_and_layer1"):
        if key in node and not isinstance(node[key], bool):
            raise ConfigError(f"{path}.{key}: expected bool, got {node[key]!r}")
    output_stride = node.get("output_stride")
    if output_stride is not None and output_stride not in (8, 16, 32):
        raise ConfigError(f"{path}.output_stride: expected 8, 16 or 32 (or null), got {output_stride!r}")
    dilation = {} if output_stride is None else {"output_stride": output_stride}
    try:  # on the meta device: checks the indices without memory or weights
        with torch.device("meta"):
            timm.create_model(name, features_only=True, out_indices=tuple(indices), pretrained=False, **dilation)
    except (IndexError, AssertionError, TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{path}: timm model {name!r} rejected out_indices {indices!r}: {error}") from error
    pretrained = node.get("pretrained_path")
    if pretrained is not None and (not isinstance(pretrained, str) or not Path(pretrained).is_file()):
        raise ConfigError(
            f"{path}.pretrained_path: weights file {pretrained!r} not found (weights load from local files only)"
        )
