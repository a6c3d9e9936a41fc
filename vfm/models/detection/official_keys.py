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

Deformable attention parameters (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`) and
`nn.MultiheadAttention` parameters have the same names on both sides. Official backbones use FrozenBN, so
their files load strictly into models built with `freeze_bn: true` (no `num_batches_tracked` buffers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from vfm.errors import CheckpointError

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


def _unknown(keys: list[str], where: str) -> CheckpointError:
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
    return CheckpointError(f"{where}: unknown keys {shown}")


def convert_official_deformable_detr(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Official-layout state dict (or a checkpoint with a `model` key) -> ours, keys prefixed with `prefix`.

    Refinement is recognised by the official decoder's copies of the box heads, two-stage by `enc_output`.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    keys = list(state_dict)
    num_layers = _num_decoder_layers(keys, "")
    refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in keys)
    two_stage = "transformer.enc_output.weight" in state_dict
    if two_stage and not refine:
        raise CheckpointError(
            "official checkpoint: two-stage without box refinement is not supported (ours needs both)"
        )
    converted: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if (renamed := _rename(key, _PREFIXES)) is not None:
            converted[prefix + renamed] = value
        elif match := _OFFICIAL_HEAD.match(key):
            kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
            if two_stage and index == num_layers:
                converted[f"{prefix}{_ENCODER_HEAD_NAMES[kind]}.{rest}"] = value
            elif index >= num_layers:
                unknown.append(key)
            elif refine:
                converted[f"{prefix}{_HEAD_NAMES[kind]}.{index}.{rest}"] = value
            elif not torch.equal(value, state_dict[f"{kind}.0.{rest}"]):
                raise CheckpointError(f"official checkpoint: {key} differs from {kind}.0.{rest}, yet heads are shared")
            else:
                converted[f"{prefix}{_HEAD_NAMES[kind]}.0.{rest}"] = value
        elif match := _OFFICIAL_DECODER_HEAD.match(key):
            original = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
            if original not in state_dict or not torch.equal(value, state_dict[original]):
                raise CheckpointError(f"official checkpoint: {key} is not a copy of {original}")
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(unknown, "official Deformable DETR checkpoint")
    return converted


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
    if unknown:
        raise _unknown(unknown, "Deformable DETR state dict")
    return official


def _decoder_holds(kind: str, refine: bool, two_stage: bool) -> bool:
    """Whether the official decoder keeps a reference to this head list (box heads for refinement, all for two-stage)."""
    return two_stage or (refine and kind == "bbox_embed")


_CLASS_ROWS = re.compile(r"(^|\.)(class_heads\.\d+|encoder_class_head)\.(weight|bias)$")


def select_class_rows(state_dict: Mapping[str, Tensor], rows: list[int]) -> dict[str, Tensor]:
    """Keep classifier rows `rows` (in that order): official COCO heads have one row per raw category id (91),
    ours one per contiguous label, i.e. `rows` = the annotation file's sorted category ids."""
    selected = dict(state_dict)
    for key, value in state_dict.items():
        if _CLASS_ROWS.search(key):
            if max(rows) >= value.shape[0]:
                raise CheckpointError(f"{key}: {value.shape[0]} class rows, cannot select row {max(rows)}")
            selected[key] = value[rows].clone()
    return selected


def convert_official_checkpoint_file(source: str | Path, destination: str | Path,
                                     ann_file: str | Path | None = None) -> dict[str, Tensor]:
    """Official Deformable DETR checkpoint file -> a safetensors file that `load_from` and tools/eval.py accept.

    Keys get the objective's `model.` prefix; with `ann_file` (COCO-format) the class rows are reduced to that
    file's categories in our contiguous order.
    """
    from vfm.engine.checkpoint import load_state_dict_file, save_safetensors

    converted = convert_official_deformable_detr(load_state_dict_file(source), prefix="model.")
    if ann_file is not None:
        try:
            category_ids = sorted(int(c["id"]) for c in json.loads(Path(ann_file).read_text())["categories"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{ann_file}: cannot read the category ids ({type(error).__name__}: {error})") from error
        converted = select_class_rows(converted, category_ids)
    save_safetensors(converted, Path(destination))
    return converted
