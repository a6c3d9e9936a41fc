"""Convert Deformable DETR checkpoints between the official layout (fundamentalvision/Deformable-DETR) and ours.

Mapping (official -> ours; `D` = decoder layers):

| official | ours |
| --- | --- |
| `model` wrapper key of the checkpoint file | unwrapped |
| `backbone.0.body.*` (torchvision ResNet, FrozenBN) | `backbone.body.*` (timm ResNet, same names) |
| `input_proj.{l}.{0,1}.*`, `query_embed.weight` | same |
| `transformer.level_embed`, `transformer.reference_points.*` | same |
| `transformer.encoder.layers.{i}.{self_attn,norm1,linear1,linear2,norm2}.*` | same |
| `transformer.decoder.layers.{i}.{cross_attn,norm1,self_attn,norm2,linear1,linear2,norm3}.*` | same |
| `transformer.enc_output`, `enc_output_norm`, `pos_trans`, `pos_trans_norm` (two-stage) | `transformer.proposal_proj`, `proposal_norm`, `proposal_pos_proj`, `proposal_pos_norm` |
| `class_embed.{i}.*`, `bbox_embed.{i}.layers.{j}.*`, i < D, with refinement | `class_heads.{i}.*`, `box_heads.{i}.layers.{j}.*` |
| the same without refinement: D copies of one shared head | `class_heads.0.*`, `box_heads.0.*` |
| `class_embed.{D}`, `bbox_embed.{D}` (two-stage proposal heads) | `encoder_class_head`, `encoder_box_head` |
| `transformer.decoder.{bbox,class}_embed.*` (the official decoder's references to the model heads) | dropped |

Class rows (`--ann-file`): the decoder heads' rows are raw COCO ids (91) and are reduced to the annotation file's
categories; the two-stage proposal head (`class_embed.{D}`) is trained with every label 0, its row 0 ranks the
proposals and stays row 0 (`RowRole.OBJECTNESS` in `conversion.py`).

Deformable attention parameters (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`) and
`nn.MultiheadAttention` parameters have the same names on both sides. Official backbones use FrozenBN, so
their files load strictly into models built with `freeze_bn: true` (no `num_batches_tracked` buffers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from vfm.errors import CheckpointError
from vfm.models.detection.conversion import (
    Converted,
    RowRole,
    check_accounting,
    convert_checkpoint_file,
    layer_indices,
    unwrap,
)

# Renames that keep the rest of the key: (official prefix, our prefix).
_PREFIXES = [
    ("backbone.0.body.", "backbone.body."),
    ("input_proj.", "input_proj."),
    ("query_embed.", "query_embed."),
    ("transformer.level_embed", "transformer.level_embed"),
    ("transformer.reference_points.", "transformer.reference_points."),
    ("transformer.encoder.layers.", "transformer.encoder.layers."),
    ("transformer.decoder.layers.", "transformer.decoder.layers."),
    ("transformer.enc_output_norm.", "transformer.proposal_norm."),
    ("transformer.enc_output.", "transformer.proposal_proj."),
    ("transformer.pos_trans_norm.", "transformer.proposal_pos_norm."),
    ("transformer.pos_trans.", "transformer.proposal_pos_proj."),
]
_OFFICIAL_HEAD = re.compile(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_OUR_HEAD = re.compile(r"^(class_heads|box_heads)\.(\d+)\.(.+)$")
_OUR_ENCODER_HEAD = re.compile(r"^(encoder_class_head|encoder_box_head)\.(.+)$")
_OFFICIAL_DECODER_HEAD = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_HEAD_NAMES = {"class_embed": "class_heads", "bbox_embed": "box_heads"}
_ENCODER_HEAD_NAMES = {"class_embed": "encoder_class_head", "bbox_embed": "encoder_box_head"}


def _num_decoder_layers(keys: list[str], prefix: str) -> int:
    layers = {
        int(m.group(1))
        for k in keys
        if (m := re.match(re.escape(prefix) + r"transformer\.decoder\.layers\.(\d+)\.", k))
    }
    if not layers:
        raise CheckpointError(
            "Deformable DETR state dict: no 'transformer.decoder.layers.*' keys; not a Deformable DETR"
        )
    return max(layers) + 1


def _rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def official_deformable_detr(state_dict: Mapping[str, Tensor], prefix: str = "") -> Converted:
    """Official-layout state dict (or a checkpoint with a `model` key) -> ours with the role of each classifier.

    Refinement is recognised by the official decoder's copies of the box heads, two-stage by `enc_output`.
    Every key is used, dropped as a verified copy, or reported; every key the layout implies must be there.
    """
    state_dict = unwrap(state_dict)
    keys = list(state_dict)
    num_layers = _num_decoder_layers(keys, "")
    refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in keys)
    two_stage = "transformer.enc_output.weight" in state_dict
    if two_stage and not refine:
        raise CheckpointError(
            "official checkpoint: two-stage without box refinement is not supported (ours needs both)"
        )
    result = Converted({})
    converted = result.state_dict
    unknown = []
    for key, value in state_dict.items():
        if (renamed := _rename(key, _PREFIXES)) is not None:
            converted[prefix + renamed] = value
        elif match := _OFFICIAL_HEAD.match(key):
            kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
            if two_stage and index == num_layers:
                module = f"{prefix}{_ENCODER_HEAD_NAMES[kind]}"
                role = RowRole.OBJECTNESS  # trained with every label 0: row 0 ranks the proposals
            elif index >= num_layers:
                unknown.append(key)
                continue
            elif refine:
                module, role = f"{prefix}{_HEAD_NAMES[kind]}.{index}", RowRole.CATEGORIES
            elif not torch.equal(value, state_dict[f"{kind}.0.{rest}"]):
                raise CheckpointError(f"official checkpoint: {key} differs from {kind}.0.{rest}, yet heads are shared")
            else:
                module, role = f"{prefix}{_HEAD_NAMES[kind]}.0", RowRole.CATEGORIES
            converted[f"{module}.{rest}"] = value
            if kind == "class_embed":
                result.class_heads[module] = role
        elif match := _OFFICIAL_DECODER_HEAD.match(key):
            original = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
            if original not in state_dict or not torch.equal(value, state_dict[original]):
                raise CheckpointError(f"official checkpoint: {key} is not a copy of {original}")
        else:
            unknown.append(key)
    num_levels = len(layer_indices(keys, "input_proj"))
    num_encoder_layers = len(layer_indices(keys, "transformer.encoder.layers"))
    expected = official_deformable_detr_keys(num_encoder_layers, num_layers, num_levels, refine, two_stage)
    missing = expected - {k for k in keys if not k.startswith("backbone.")}
    check_accounting("official Deformable DETR checkpoint", unknown, missing)
    return result


def convert_official_deformable_detr(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Official-layout state dict (or a checkpoint with a `model` key) -> ours, keys prefixed with `prefix`."""
    return official_deformable_detr(state_dict, prefix).state_dict


def official_deformable_detr_keys(
    num_encoder_layers: int, num_decoder_layers: int, num_levels: int, refine: bool, two_stage: bool
) -> set[str]:
    """Every non-backbone key of the official DeformableDETR.state_dict() for these settings."""
    wb = ("weight", "bias")
    msda = [f"{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj") for p in wb]
    mha = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    keys = {"transformer.level_embed"} | {
        f"input_proj.{lv}.{i}.{p}" for lv in range(num_levels) for i in (0, 1) for p in wb
    }
    for i in range(num_encoder_layers):
        layer = f"transformer.encoder.layers.{i}"
        keys |= {f"{layer}.self_attn.{k}" for k in msda}
        keys |= {f"{layer}.{m}.{p}" for m in ("norm1", "linear1", "linear2", "norm2") for p in wb}
    for i in range(num_decoder_layers):
        layer = f"transformer.decoder.layers.{i}"
        keys |= {f"{layer}.cross_attn.{k}" for k in msda} | {f"{layer}.self_attn.{k}" for k in mha}
        keys |= {f"{layer}.{m}.{p}" for m in ("norm1", "norm2", "norm3", "linear1", "linear2") for p in wb}
    num_heads = num_decoder_layers + 1 if two_stage else num_decoder_layers
    classes = {f"class_embed.{i}.{p}" for i in range(num_heads) for p in wb}
    boxes = {f"bbox_embed.{i}.layers.{j}.{p}" for i in range(num_heads) for j in range(3) for p in wb}
    keys |= classes | boxes
    if refine:
        keys |= {f"transformer.decoder.{k}" for k in boxes}
    if two_stage:
        keys |= {f"transformer.decoder.{k}" for k in classes}
        keys |= {
            f"transformer.{m}.{p}" for m in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm") for p in wb
        }
    else:
        keys |= {"query_embed.weight", "transformer.reference_points.weight", "transformer.reference_points.bias"}
    return keys


def convert_to_official_deformable_detr(
    state_dict: Mapping[str, Tensor], prefix: str = "", with_box_refine: bool | None = None
) -> dict[str, Tensor]:
    """Our state dict (keys under `prefix`) -> the official layout, including its duplicated head entries.

    Refinement is inferred from the number of heads unless `with_box_refine` is given (needed for one decoder layer).
    """
    keys = [k for k in state_dict if k.startswith(prefix)]
    num_layers = _num_decoder_layers(keys, prefix)
    heads = {int(m.group(2)) for k in keys if (m := _OUR_HEAD.match(k[len(prefix) :]))}
    refine = len(heads) == num_layers and num_layers > 1 if with_box_refine is None else with_box_refine
    two_stage = any(_OUR_ENCODER_HEAD.match(k[len(prefix) :]) for k in keys)
    inverse = [(new, old) for old, new in _PREFIXES]
    official: dict[str, Tensor] = {}
    unknown = []
    for full_key in keys:
        key, value = full_key[len(prefix) :], state_dict[full_key]
        if (renamed := _rename(key, inverse)) is not None:
            official[renamed] = value
        elif match := _OUR_HEAD.match(key):
            kind = "class_embed" if match.group(1) == "class_heads" else "bbox_embed"
            index, rest = int(match.group(2)), match.group(3)
            for target in [index] if refine else range(num_layers):  # a shared head appears once per layer
                official[f"{kind}.{target}.{rest}"] = value
                if _decoder_holds(kind, refine, two_stage):
                    official[f"transformer.decoder.{kind}.{target}.{rest}"] = value
        elif match := _OUR_ENCODER_HEAD.match(key):
            kind = "class_embed" if match.group(1) == "encoder_class_head" else "bbox_embed"
            official[f"{kind}.{num_layers}.{match.group(2)}"] = value
            if _decoder_holds(kind, refine, two_stage):
                official[f"transformer.decoder.{kind}.{num_layers}.{match.group(2)}"] = value
        else:
            unknown.append(full_key)
    check_accounting("Deformable DETR state dict", unknown)
    return official


def _decoder_holds(kind: str, refine: bool, two_stage: bool) -> bool:
    """Whether the official decoder keeps a reference to this head list (box heads for refinement, all for two-stage)."""
    return two_stage or (refine and kind == "bbox_embed")


def convert_official_checkpoint_file(
    source: str | Path, destination: str | Path, ann_file: str | Path | None = None
) -> Converted:
    """Official Deformable DETR checkpoint file -> a safetensors file that `load_from` and tools/eval.py accept.

    With `ann_file` (COCO-format) the category rows are reduced to that file's categories in our contiguous
    order; the two-stage proposal head keeps its objectness row 0 in place.
    """
    return convert_checkpoint_file(source, destination, official_deformable_detr, ann_file)
