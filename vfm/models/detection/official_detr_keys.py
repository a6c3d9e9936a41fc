"""Convert DETR checkpoints between the official layout (facebookresearch/detr) and ours.

Mapping (official -> ours):

| official | ours |
| --- | --- |
| `model` wrapper key of the checkpoint file | unwrapped |
| `backbone.0.body.*` (torchvision ResNet-50/101, FrozenBN; DC5 has the same keys) | `backbone.body.*` |
| `input_proj.*`, `query_embed.weight` | same |
| `transformer.encoder.layers.{i}.{self_attn,linear1,linear2,norm1,norm2}.*` | `transformer.encoder_layers.{i}.*` |
| `transformer.decoder.layers.{i}.multihead_attn.*` | `transformer.decoder_layers.{i}.cross_attn.*` |
| `transformer.decoder.layers.{i}.{self_attn,linear1,linear2,norm1,norm2,norm3}.*` | `transformer.decoder_layers.{i}.*` |
| `transformer.decoder.norm.*` | `transformer.decoder_norm.*` |
| `class_embed.*` (C + 1 rows, no-object last; COCO: 91 raw ids + 1) | `class_head.*` |
| `bbox_embed.layers.{j}.*` | `box_head.layers.{j}.*` |

Both sides use post-norm layers with the same norm order (norm1 after self-attention, norm2 after
cross-attention, norm3 after the FFN). A pre-norm checkpoint (`transformer.encoder.norm`) is refused as unknown.
DC5 checkpoints need `backbone.output_stride: 16` in the model (layer4 dilated instead of strided).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from vfm.errors import CheckpointError
from vfm.models.detection.conversion import Converted, RowRole, check_accounting, layer_indices, unwrap

_WB = ("weight", "bias")
_MHA = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
_ENCODER_PARTS = {f"self_attn.{k}" for k in _MHA} | {
    f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2") for p in _WB
}
_DECODER_PARTS = (
    {f"self_attn.{k}" for k in _MHA}
    | {f"multihead_attn.{k}" for k in _MHA}
    | {f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in _WB}
)
# Official -> ours for the keys outside the layers (exact names or prefixes ending in ".").
_FIXED = {
    "input_proj.weight": "input_proj.weight",
    "input_proj.bias": "input_proj.bias",
    "query_embed.weight": "query_embed.weight",
    "transformer.decoder.norm.weight": "transformer.decoder_norm.weight",
    "transformer.decoder.norm.bias": "transformer.decoder_norm.bias",
    "class_embed.weight": "class_head.weight",
    "class_embed.bias": "class_head.bias",
    **{f"bbox_embed.layers.{j}.{p}": f"box_head.layers.{j}.{p}" for j in range(3) for p in _WB},
}


def official_detr_keys(num_encoder_layers: int, num_decoder_layers: int) -> set[str]:
    """Every non-backbone key of the official DETR.state_dict() (post-norm, one input projection)."""
    keys = set(_FIXED)
    keys |= {f"transformer.encoder.layers.{i}.{k}" for i in range(num_encoder_layers) for k in _ENCODER_PARTS}
    keys |= {f"transformer.decoder.layers.{i}.{k}" for i in range(num_decoder_layers) for k in _DECODER_PARTS}
    return keys


def official_detr(state_dict: Mapping[str, Tensor], prefix: str = "") -> Converted:
    """Official-layout DETR state dict (or a checkpoint with a `model` key) -> ours, keys prefixed with `prefix`.

    Every key is used or reported; every key the layout implies (given its layer counts) must be there.
    """
    state_dict = unwrap(state_dict)
    keys = list(state_dict)
    num_encoder = len(layer_indices(keys, "transformer.encoder.layers"))
    num_decoder = len(layer_indices(keys, "transformer.decoder.layers"))
    if not num_decoder or "class_embed.weight" not in state_dict:
        raise CheckpointError(
            "official DETR checkpoint: no 'transformer.decoder.layers.*' or 'class_embed.weight' keys; not a DETR "
            "(Deformable DETR checkpoints go through tools/convert_official_deformable_detr.py)"
        )
    expected = official_detr_keys(num_encoder, num_decoder)
    result = Converted({}, {f"{prefix}class_head": RowRole.CATEGORIES_THEN_NO_OBJECT})
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone.0.body."):
            result.state_dict[f"{prefix}backbone.body.{key[len('backbone.0.body.') :]}"] = value
        elif key not in expected:
            unknown.append(key)
        elif key in _FIXED:
            result.state_dict[prefix + _FIXED[key]] = value
        elif key.startswith("transformer.encoder.layers."):
            result.state_dict[f"{prefix}transformer.encoder_layers.{key[len('transformer.encoder.layers.') :]}"] = value
        else:
            rest = key[len("transformer.decoder.layers.") :].replace(".multihead_attn.", ".cross_attn.")
            result.state_dict[f"{prefix}transformer.decoder_layers.{rest}"] = value
    check_accounting("official DETR checkpoint", unknown, expected - set(keys))
    return result


def convert_to_official_detr(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Our DETR state dict (keys under `prefix`) -> the official layout; the inverse of `official_detr`."""
    inverse = {ours: official for official, ours in _FIXED.items()}
    official: dict[str, Tensor] = {}
    unknown = []
    for full_key, value in state_dict.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        if key in inverse:
            official[inverse[key]] = value
        elif key.startswith("backbone.body."):
            official[f"backbone.0.body.{key[len('backbone.body.') :]}"] = value
        elif key.startswith("transformer.encoder_layers."):
            official[f"transformer.encoder.layers.{key[len('transformer.encoder_layers.') :]}"] = value
        elif key.startswith("transformer.decoder_layers."):
            rest = key[len("transformer.decoder_layers.") :].replace(".cross_attn.", ".multihead_attn.")
            official[f"transformer.decoder.layers.{rest}"] = value
        else:
            unknown.append(full_key)
    check_accounting("DETR state dict", unknown)
    return official


def convert_official_detr_checkpoint_file(source: str, destination: str, ann_file: str | None = None) -> Converted:
    """Official DETR checkpoint file -> safetensors for `load_from`/tools/eval.py; `ann_file` reduces class rows."""
    from vfm.models.detection.conversion import convert_checkpoint_file

    return convert_checkpoint_file(source, destination, official_detr, ann_file)
