"""Convert mmdetection 3.x DETR and Deformable DETR checkpoints to our layout (and back, for tests and export).

Read from mmdetection's model code (`detectors/{detr,deformable_detr}.py`, `layers/transformer/{detr,
deformable_detr}_layers.py`, `dense_heads/{detr,deformable_detr}_head.py`, `necks/channel_mapper.py`) and mmcv's
`MultiheadAttention` (wraps `nn.MultiheadAttention` as `attn`) and `FFN` (`layers.0.0` = first Linear, `layers.1` =
second). mmengine files wrap the weights in `state_dict`, beside `meta` (whose `cfg` text, when present, says
whether refinement was on).

| mmdetection | ours |
| --- | --- |
| `backbone.*` (mmdet ResNet, BatchNorm with `num_batches_tracked`) | `backbone.body.*` (`num_batches_tracked` dropped; build with `freeze_bn: true`) |
| `neck.convs.{l}.conv.weight`, `neck.convs.{l}.gn.*` (ChannelMapper, GN: the conv has no bias) | `input_proj.{l}.0.weight` (bias filled with 0), `input_proj.{l}.1.*` |
| `neck.extra_convs.{e}.*` (3x3 stride 2 on C5, then on the previous extra level) | `input_proj.{levels + e}.*` |
| `level_embed`, `query_embedding.weight`, `reference_points_fc.*` | `transformer.level_embed`, `query_embed.weight`, `transformer.reference_points.*` |
| `memory_trans_fc`, `memory_trans_norm`, `pos_trans_fc`, `pos_trans_norm` (two-stage) | `transformer.proposal_proj`, `proposal_norm`, `proposal_pos_proj`, `proposal_pos_norm` |
| `encoder.layers.{i}.self_attn.*`, `.ffn.layers.0.0`, `.ffn.layers.1`, `.norms.0`, `.norms.1` | `transformer.encoder.layers.{i}.self_attn.*`, `linear1`, `linear2`, `norm1`, `norm2` |
| `decoder.layers.{i}.self_attn.attn.*`, `.cross_attn.*`, `.ffn.*` | `transformer.decoder.layers.{i}.self_attn.*`, `cross_attn.*`, `linear1`/`linear2` |
| `decoder.layers.{i}.norms.{0,1,2}` (after self-attn, cross-attn, FFN) | `norm2`, `norm1`, `norm3` (our names follow the official order) |
| `bbox_head.cls_branches.{i}`, `bbox_head.reg_branches.{i}.{0,2,4}` | `class_heads.{i}`, `box_heads.{i}.layers.{0,1,2}` (one shared pair without refinement) |
| `bbox_head.{cls,reg}_branches.{D}` (two-stage) | `encoder_class_head`, `encoder_box_head` |

DETR (`DETRHead`): `neck.convs.0.conv.*` -> `input_proj.*`; encoder/decoder layers as above with
`self_attn.attn`/`cross_attn.attn` and `norms.{0,1,2}` -> `norm1`/`norm2`/`norm3`; `decoder.post_norm` ->
`transformer.decoder_norm`; `bbox_head.fc_cls` (C + 1 rows, no-object last) -> `class_head`;
`bbox_head.reg_ffn.layers.0.0`, `reg_ffn.layers.1`, `fc_reg` -> `box_head.layers.{0,1,2}`.

mmdetection's labels are already contiguous in sorted category-id order (80 rows for COCO), so no row
reduction is needed for COCO; `--ann-file` still reduces rows for a head trained on more categories.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from vfm.errors import CheckpointError
from vfm.models.detection.conversion import (
    Converted,
    RowRole,
    check_accounting,
    equal_copies,
    layer_indices,
)

_WB = ("weight", "bias")
_MSDA = [f"{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj") for p in _WB]
_MHA = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
_FFN = {"ffn.layers.0.0": "linear1", "ffn.layers.1": "linear2"}
_DEFORMABLE_DECODER_NORMS = {"norms.0": "norm2", "norms.1": "norm1", "norms.2": "norm3"}
_DETR_DECODER_NORMS = {"norms.0": "norm1", "norms.1": "norm2", "norms.2": "norm3"}
_ENCODER_NORMS = {"norms.0": "norm1", "norms.1": "norm2"}
_DEFORMABLE_FIXED = {
    "level_embed": "transformer.level_embed",
    "query_embedding.weight": "query_embed.weight",
    **{f"reference_points_fc.{p}": f"transformer.reference_points.{p}" for p in _WB},
    **{
        f"{ours_mm}.{p}": f"transformer.{ours}.{p}"
        for ours_mm, ours in [
            ("memory_trans_fc", "proposal_proj"),
            ("memory_trans_norm", "proposal_norm"),
            ("pos_trans_fc", "proposal_pos_proj"),
            ("pos_trans_norm", "proposal_pos_norm"),
        ]
        for p in _WB
    },
}
_DETR_FIXED = {
    "query_embedding.weight": "query_embed.weight",
    **{f"neck.convs.0.conv.{p}": f"input_proj.{p}" for p in _WB},
    **{f"decoder.post_norm.{p}": f"transformer.decoder_norm.{p}" for p in _WB},
    **{f"bbox_head.fc_cls.{p}": f"class_head.{p}" for p in _WB},
    **{f"bbox_head.reg_ffn.layers.0.0.{p}": f"box_head.layers.0.{p}" for p in _WB},
    **{f"bbox_head.reg_ffn.layers.1.{p}": f"box_head.layers.1.{p}" for p in _WB},
    **{f"bbox_head.fc_reg.{p}": f"box_head.layers.2.{p}" for p in _WB},
}
_REG_LAYERS = {"0": "0", "2": "1", "4": "2"}  # nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)


def _layer_key_map(layer: str, ours: str, attention: dict[str, str], norms: dict[str, str]) -> dict[str, str]:
    """mmdet keys of one transformer layer -> ours; `attention` maps mmdet attention prefixes to ours."""
    mapping = {}
    for theirs, mine in attention.items():
        names = _MSDA if theirs.endswith("self_attn") or theirs.endswith("cross_attn") else _MHA
        mapping |= {f"{layer}.{theirs}.{k}": f"{ours}.{mine}.{k}" for k in names}
    for theirs, mine in {**_FFN, **norms}.items():
        mapping |= {f"{layer}.{theirs}.{p}": f"{ours}.{mine}.{p}" for p in _WB}
    return mapping


def _deformable_layers(num_encoder: int, num_decoder: int) -> dict[str, str]:
    mapping = {}
    for i in range(num_encoder):
        mapping |= _layer_key_map(f"encoder.layers.{i}", f"transformer.encoder.layers.{i}",
                                  {"self_attn": "self_attn"}, _ENCODER_NORMS)  # fmt: skip
    for i in range(num_decoder):
        mapping |= _layer_key_map(f"decoder.layers.{i}", f"transformer.decoder.layers.{i}",
                                  {"self_attn.attn": "self_attn", "cross_attn": "cross_attn"},
                                  _DEFORMABLE_DECODER_NORMS)  # fmt: skip
    return mapping


def _detr_layers(num_encoder: int, num_decoder: int) -> dict[str, str]:
    mapping = {}
    for i in range(num_encoder):
        mapping |= _layer_key_map(f"encoder.layers.{i}", f"transformer.encoder_layers.{i}",
                                  {"self_attn.attn": "self_attn"}, _ENCODER_NORMS)  # fmt: skip
    for i in range(num_decoder):
        mapping |= _layer_key_map(f"decoder.layers.{i}", f"transformer.decoder_layers.{i}",
                                  {"self_attn.attn": "self_attn", "cross_attn.attn": "cross_attn"},
                                  _DETR_DECODER_NORMS)  # fmt: skip
    return mapping


def _split_file(state_dict: Mapping[str, object]) -> tuple[Mapping[str, Tensor], str]:
    """(weights, config text) of an mmengine checkpoint, a bare state dict, or a `model`-wrapped one."""
    meta = state_dict.get("meta")
    cfg = meta.get("cfg", "") if isinstance(meta, Mapping) else ""
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict.get(wrapper), Mapping):
            return state_dict[wrapper], cfg if isinstance(cfg, str) else ""  # type: ignore[return-value]
    return state_dict, ""  # type: ignore[return-value]


def _backbone(key: str, value: Tensor, prefix: str, result: Converted) -> bool:
    """Map an mmdet ResNet key; BatchNorm's `num_batches_tracked` counters are dropped (FrozenBN has none)."""
    if not key.startswith("backbone."):
        return False
    if not key.endswith(".num_batches_tracked"):
        result.state_dict[f"{prefix}backbone.body.{key[len('backbone.') :]}"] = value
    return True


def _is_deformable(keys: list[str]) -> bool:
    return any(k.startswith("bbox_head.cls_branches.") for k in keys)


def _heads_shared(weights: Mapping[str, Tensor], num_heads: int) -> bool:
    """True when every class/box branch equals branch 0 (mmdet saves one shared module once per decoder layer)."""
    for key, value in weights.items():
        if match := re.match(r"^bbox_head\.(cls_branches|reg_branches)\.(\d+)\.(.+)$", key):
            first = weights.get(f"bbox_head.{match.group(1)}.0.{match.group(3)}")
            if first is None or not torch.equal(value, first):
                return False
    return num_heads > 0


def _collect(
    weights: Mapping[str, Tensor], mapping: dict[str, str], allowed: set[str], prefix: str, result: Converted
) -> list[str]:
    """Apply `mapping` to every allowed key (copies of one shared module must agree); return the unknown keys."""
    unknown, copies = [], {}
    for key, value in weights.items():
        if _backbone(key, value, prefix, result):
            continue
        if key not in allowed:
            unknown.append(key)
            continue
        copies.setdefault(prefix + mapping[key], []).append(key)
    for ours, sources in copies.items():
        result.state_dict[ours] = equal_copies(weights, sources, "mmdetection checkpoint")
    return unknown


def mmdet_deformable_detr(state_dict: Mapping[str, object], prefix: str = "") -> Converted:
    """mmdetection 3.x Deformable DETR checkpoint (or bare state dict) -> ours, with each classifier's role.

    Refinement: the config text in `meta.cfg` says so, or the branches differ (shared ones are saved as equal
    copies). Every key is used, dropped (`num_batches_tracked`, verified copies) or reported; every key the
    layout implies must be there.
    """
    weights, cfg = _split_file(state_dict)
    keys = list(weights)
    if not _is_deformable(keys):
        raise CheckpointError(
            "mmdetection checkpoint: no 'bbox_head.cls_branches.*' keys; not a Deformable DETR "
            "(DETR has 'bbox_head.fc_cls')"
        )
    num_encoder, num_decoder = len(layer_indices(keys, "encoder.layers")), len(layer_indices(keys, "decoder.layers"))
    num_heads = len(layer_indices(keys, "bbox_head.cls_branches"))
    two_stage = "memory_trans_fc.weight" in weights
    if num_heads != num_decoder + two_stage:
        raise CheckpointError(
            f"mmdetection checkpoint: {num_heads} class branches for {num_decoder} decoder layers "
            f"(expected {num_decoder + two_stage}{' with two-stage' if two_stage else ''})"
        )
    refine = bool(re.search(r"with_box_refine\s*=\s*True", cfg)) or not _heads_shared(weights, num_heads)
    if two_stage and not refine:
        raise CheckpointError(
            "mmdetection checkpoint: two-stage without box refinement is not supported (ours needs both)"
        )

    result = Converted({})
    mapping = _DEFORMABLE_FIXED | _deformable_layers(num_encoder, num_decoder)
    queries = _TWO_STAGE_KEYS if two_stage else {"query_embedding.weight", *(f"reference_points_fc.{p}" for p in _WB)}
    required = {"level_embed", *queries, *_deformable_layers(num_encoder, num_decoder)}
    allowed = set(required)
    num_backbone_levels = len(layer_indices(keys, "neck.convs"))
    num_levels = num_backbone_levels + len(layer_indices(keys, "neck.extra_convs"))
    filled = 0
    for level in range(num_levels):
        extra = level - num_backbone_levels
        neck = f"neck.convs.{level}" if extra < 0 else f"neck.extra_convs.{extra}"
        ours = f"input_proj.{level}"
        mapping |= {f"{neck}.conv.{p}": f"{ours}.0.{p}" for p in _WB} | {f"{neck}.gn.{p}": f"{ours}.1.{p}" for p in _WB}
        required |= {f"{neck}.conv.weight", f"{neck}.gn.weight", f"{neck}.gn.bias"}
        allowed |= {f"{neck}.conv.weight", f"{neck}.conv.bias", f"{neck}.gn.weight", f"{neck}.gn.bias"}
        conv = weights.get(f"{neck}.conv.weight")
        if f"{neck}.conv.bias" not in weights and conv is not None:
            # ConvModule has no bias before a norm layer; a zero bias computes the same function.
            result.state_dict[f"{prefix}{ours}.0.bias"] = conv.new_zeros(conv.shape[0])
            filled += 1
    for index in range(num_heads):
        encoder_head = two_stage and index == num_decoder
        if encoder_head:
            cls, reg = "encoder_class_head", "encoder_box_head"
        else:
            cls, reg = f"class_heads.{index if refine else 0}", f"box_heads.{index if refine else 0}"
        mapping |= {f"bbox_head.cls_branches.{index}.{p}": f"{cls}.{p}" for p in _WB}
        mapping |= {
            f"bbox_head.reg_branches.{index}.{j}.{p}": f"{reg}.layers.{ours_j}.{p}"
            for j, ours_j in _REG_LAYERS.items()
            for p in _WB
        }
        result.class_heads[prefix + cls] = RowRole.OBJECTNESS if encoder_head else RowRole.CATEGORIES
    heads = {k for k in mapping if k.startswith("bbox_head.")}
    required |= heads
    allowed |= heads
    unknown = _collect(weights, mapping, allowed, prefix, result)
    check_accounting("mmdetection Deformable DETR checkpoint", unknown, required - set(keys))
    if filled:
        result.notes.append(f"{filled} input projection biases set to 0 (mmdetection's conv before GN has none)")
    result.notes.append(f"with_box_refine={refine}, two_stage={two_stage}: build the vfm model with the same flags")
    return result


def mmdet_detr(state_dict: Mapping[str, object], prefix: str = "") -> Converted:
    """mmdetection 3.x DETR checkpoint (or bare state dict) -> ours; the class head keeps its no-object row last."""
    weights, _ = _split_file(state_dict)
    keys = list(weights)
    if "bbox_head.fc_cls.weight" not in weights:
        raise CheckpointError(
            "mmdetection checkpoint: no 'bbox_head.fc_cls.weight'; not a DETR (Deformable DETR has 'cls_branches')"
        )
    layers = _detr_layers(len(layer_indices(keys, "encoder.layers")), len(layer_indices(keys, "decoder.layers")))
    mapping = _DETR_FIXED | layers
    result = Converted({}, {f"{prefix}class_head": RowRole.CATEGORIES_THEN_NO_OBJECT})
    unknown = _collect(weights, mapping, set(mapping), prefix, result)
    check_accounting("mmdetection DETR checkpoint", unknown, set(mapping) - set(keys))
    return result


def mmdet_detection(state_dict: Mapping[str, object], prefix: str = "") -> Converted:
    """An mmdetection 3.x DETR or Deformable DETR checkpoint -> ours (told apart by their class heads)."""
    weights, _ = _split_file(state_dict)
    if _is_deformable(list(weights)):
        return mmdet_deformable_detr(state_dict, prefix)
    return mmdet_detr(state_dict, prefix)


def convert_to_mmdet(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Our DETR or Deformable DETR state dict (keys under `prefix`) -> the mmdetection 3.x layout.

    Shared heads are written once per decoder layer and BatchNorm counters added, as mmdetection saves them;
    input projections before GroupNorm must have zero biases (mmdetection's have none).
    """
    ours = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    deformable = any(k.startswith("class_heads.") for k in ours)
    out: dict[str, Tensor] = {}
    for key, value in ours.items():
        if key.startswith("backbone.body."):
            out[f"backbone.{key[len('backbone.body.') :]}"] = value
            if key.endswith(".running_mean"):
                out[f"backbone.{key[len('backbone.body.') : -len('running_mean')]}num_batches_tracked"] = torch.tensor(
                    0
                )
    keys = list(ours)
    if deformable:
        num_decoder = len(layer_indices(keys, "transformer.decoder.layers"))
        refine = len(layer_indices(keys, "class_heads")) > 1 or num_decoder == 1 and "encoder_class_head.weight" in ours
        mapping = _DEFORMABLE_FIXED | _deformable_layers(
            len(layer_indices(keys, "transformer.encoder.layers")), num_decoder
        )
        levels = layer_indices(keys, "input_proj")
        backbone_levels = [lv for lv in levels if ours[f"input_proj.{lv}.0.weight"].shape[-1] == 1]
        for level in levels:
            extra = level - len(backbone_levels)
            neck = f"neck.convs.{level}" if extra < 0 else f"neck.extra_convs.{extra}"
            bias = ours[f"input_proj.{level}.0.bias"]
            if bool(bias.any()):
                raise CheckpointError(
                    f"{prefix}input_proj.{level}.0.bias is not zero; mmdetection's conv before GN has no bias"
                )
            out[f"{neck}.conv.weight"] = ours[f"input_proj.{level}.0.weight"]
            out |= {f"{neck}.gn.{p}": ours[f"input_proj.{level}.1.{p}"] for p in _WB}
        heads = range(num_decoder)
        for index in heads:
            source = index if refine else 0
            out |= {f"bbox_head.cls_branches.{index}.{p}": ours[f"class_heads.{source}.{p}"] for p in _WB}
            out |= {
                f"bbox_head.reg_branches.{index}.{j}.{p}": ours[f"box_heads.{source}.layers.{k}.{p}"]
                for j, k in _REG_LAYERS.items()
                for p in _WB
            }
        if "encoder_class_head.weight" in ours:
            out |= {f"bbox_head.cls_branches.{num_decoder}.{p}": ours[f"encoder_class_head.{p}"] for p in _WB}
            out |= {
                f"bbox_head.reg_branches.{num_decoder}.{j}.{p}": ours[f"encoder_box_head.layers.{k}.{p}"]
                for j, k in _REG_LAYERS.items()
                for p in _WB
            }
    else:
        mapping = _DETR_FIXED | _detr_layers(
            len(layer_indices(keys, "transformer.encoder_layers")),
            len(layer_indices(keys, "transformer.decoder_layers")),
        )
    inverse = {mine: theirs for theirs, mine in mapping.items()}
    handled = (
        "backbone.body.",
        "input_proj.",
        "class_heads.",
        "box_heads.",
        "encoder_class_head.",
        "encoder_box_head.",
    )
    unknown = []
    for key, value in ours.items():
        if key in inverse:
            out[inverse[key]] = value
        elif not (deformable and key.startswith(handled)) and not key.startswith("backbone.body."):
            unknown.append(prefix + key)
    check_accounting("DETR state dict", unknown)
    return out


_TWO_STAGE_KEYS = {
    f"{m}.{p}" for m in ("memory_trans_fc", "memory_trans_norm", "pos_trans_fc", "pos_trans_norm") for p in _WB
}
