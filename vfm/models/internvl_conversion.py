"""Official InternVL-C/G checkpoints (OpenGVLab, HF `InternVLModel`, e.g. InternVL-14B-224px) in vfm's layout.

The official module tree (`internvl_g/.../internvl_stage2/modeling_internvl.py`) against ours (`InternVL` held
by the `internvl_stage2` objective as `model`):

| official | vfm (objective state dict) |
| --- | --- |
| `vision_model.*` | `model.visual.*` (`official_vision_key_map`) |
| `query_tokens` (1, Q, H) | `model.qllama.query_tokens` |
| `qllama.model.{embed_tokens,norm}.weight`, `qllama.lm_head.weight` | `model.qllama.llm.` + the same name |
| `qllama.model.layers.N.{self_attn,mlp,input_layernorm,post_attention_layernorm}.*` | `model.qllama.llm.model.layers.N.*` |
| `qllama.model.layers.N.cross_attn.{norm1,norm2,q_proj,k_proj,v_proj,o_proj}.weight` | `model.qllama.llm.model.layers.N.cross_attn.*` |
| `text_projection` (H, E), used as `x @ P` | `model.text_projection.weight` (E, H) = its transpose |
| `clip_projector{,2}.norm1_{q,k,v}.*` | `model.clip_projector{,2}.norm_{q,k,v}.*` |
| `clip_projector{,2}.cross_attn.{q,k,v}.weight`, `.cross_attn.{q,k,v}_bias` | `.{q,k,v}.weight`, `.{q,k,v}.bias` |
| `clip_projector{,2}.cross_attn.proj.*` | `model.clip_projector{,2}.proj.*` |
| `logit_scale` (0-d), `itm_head.*` | `model.logit_scale` (one element), `model.itm_head.*` |

The official rotary-embedding buffers (`...rotary_emb.inv_freq`) are recomputed here and dropped. Every other key
must map, and every key the official model has must be present: the first offender is named in a CheckpointError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vfm.errors import CheckpointError, ConfigError
from vfm.models.backbones.internvit import _OFFICIAL_BLOCK, _OFFICIAL_EMBEDDINGS, official_vision_key_map

PREFIX = "model."  # the objective holds the InternVL model as `model`
_DROPPED = re.compile(r"(^|\.)rotary_emb\.(inv_freq|cos_cached|sin_cached)$")
_LM_LAYER = re.compile(r"^qllama\.model\.layers\.(\d+)\.(.+)$")
_LM_LAYER_PARTS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
    "post_attention_layernorm.weight",
)
_CROSS_PARTS = ("norm1.weight", "norm2.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
_LM_TOP = {"qllama.model.embed_tokens.weight": "qllama.llm.model.embed_tokens.weight",
           "qllama.model.norm.weight": "qllama.llm.model.norm.weight",
           "qllama.lm_head.weight": "qllama.llm.lm_head.weight"}
_SINGLE = {"query_tokens": "qllama.query_tokens", "logit_scale": "logit_scale", "text_projection":
           "text_projection.weight", "itm_head.weight": "itm_head.weight", "itm_head.bias": "itm_head.bias"}
_POOL = {**{f"norm1_{x}.{p}": f"norm_{x}.{p}" for x in "qkv" for p in ("weight", "bias")},
         **{f"cross_attn.{x}.weight": f"{x}.weight" for x in "qkv"},
         **{f"cross_attn.{x}_bias": f"{x}.bias" for x in "qkv"},
         "cross_attn.proj.weight": "proj.weight", "cross_attn.proj.bias": "proj.bias"}
_TRANSPOSED = ("text_projection",)  # official (H, E) matrices applied as x @ P; ours are nn.Linear weights (E, H)


def official_internvl_key_map(key: str) -> str | None:
    """Our objective key (`model.*`) for an official InternVL key; None for a key the official model does not have."""
    if key.startswith("vision_model."):
        ours = official_vision_key_map(key.removeprefix("vision_model."))
        return None if ours is None else f"{PREFIX}visual.{ours}"
    if key in _SINGLE:
        return PREFIX + _SINGLE[key]
    if key in _LM_TOP:
        return PREFIX + _LM_TOP[key]
    for pool in ("clip_projector", "clip_projector2"):
        if key.startswith(pool + ".") and key.removeprefix(pool + ".") in _POOL:
            return f"{PREFIX}{pool}.{_POOL[key.removeprefix(pool + '.')]}"
    match = _LM_LAYER.match(key)
    if match:
        index, part = match.groups()
        if part in _LM_LAYER_PARTS:
            return f"{PREFIX}qllama.llm.model.layers.{index}.{part}"
        if part.startswith("cross_attn.") and part.removeprefix("cross_attn.") in _CROSS_PARTS:
            return f"{PREFIX}qllama.llm.model.layers.{index}.{part}"
    return None


def _inverse_key_map() -> dict[str, str]:
    """Our key pattern -> official key pattern, for the keys without a layer index."""
    ours = {PREFIX + v: k for k, v in {**_SINGLE, **_LM_TOP}.items()}
    ours |= {f"{PREFIX}visual.{v}": f"vision_model.{k}" for k, v in _OFFICIAL_EMBEDDINGS.items()}
    for pool in ("clip_projector", "clip_projector2"):
        ours |= {f"{PREFIX}{pool}.{v}": f"{pool}.{k}" for k, v in _POOL.items()}
    return ours


def vfm_to_official_key(key: str) -> str | None:
    """The official InternVL key for one of our objective keys (the inverse of `official_internvl_key_map`)."""
    fixed = _inverse_key_map()
    if key in fixed:
        return fixed[key]
    block = re.match(r"^model\.visual\.blocks\.(\d+)\.(.+)$", key)
    if block:
        official = {v: k for k, v in _OFFICIAL_BLOCK.items()}.get(block.group(2))
        return None if official is None else f"vision_model.encoder.layers.{block.group(1)}.{official}"
    layer = re.match(r"^model\.qllama\.llm\.model\.layers\.(\d+)\.(.+)$", key)
    if layer and layer.group(2) in _LM_LAYER_PARTS:
        return f"qllama.model.layers.{layer.group(1)}.{layer.group(2)}"
    if layer and layer.group(2).startswith("cross_attn.") and layer.group(2).removeprefix("cross_attn.") in _CROSS_PARTS:
        return f"qllama.model.layers.{layer.group(1)}.{layer.group(2)}"
    return None


def _expected_official_keys(keys: Sequence[str], config_json: Mapping[str, Any] | None) -> list[str]:
    """Every key the official model of this checkpoint has: layer counts from the config, else from the keys."""

    def indices(pattern: str) -> set[int]:
        return {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}

    vision_layers = indices(r"^vision_model\.encoder\.layers\.(\d+)\.")
    lm_layers = indices(r"^qllama\.model\.layers\.(\d+)\.")
    cross_layers = indices(r"^qllama\.model\.layers\.(\d+)\.cross_attn\.")
    if config_json is not None:
        vision_layers = set(range(int(config_json["vision_config"]["num_hidden_layers"])))
        lm_count = int(config_json["qllama_config"]["num_hidden_layers"])
        frequency = int(config_json.get("cross_attention_frequency", 2))
        lm_layers = set(range(lm_count))
        cross_layers = {i for i in lm_layers if i % frequency == 0}
    else:  # a whole layer missing from the middle still shows; a missing last layer needs the config
        vision_layers = set(range(max(vision_layers, default=-1) + 1))
        lm_layers = set(range(max(lm_layers, default=-1) + 1))
    expected = [*_SINGLE, *_LM_TOP, *(f"vision_model.{k}" for k in _OFFICIAL_EMBEDDINGS)]
    expected += [f"{pool}.{k}" for pool in ("clip_projector", "clip_projector2") for k in _POOL]
    # Block parts that exist whatever the options (qkv/proj biases and QK-norm weights depend on the vision config).
    optional = {"attn.qkv.bias", "attn.q_norm.weight", "attn.k_norm.weight"}
    if config_json is not None:
        vision = config_json["vision_config"]
        optional -= {"attn.qkv.bias"} if vision.get("qkv_bias", False) else set()
        optional -= {"attn.q_norm.weight", "attn.k_norm.weight"} if vision.get("qk_normalization", True) else set()
    expected += [f"vision_model.encoder.layers.{i}.{part}" for i in sorted(vision_layers)
                 for part in _OFFICIAL_BLOCK if part not in optional]
    expected += [f"qllama.model.layers.{i}.{part}" for i in sorted(lm_layers) for part in _LM_LAYER_PARTS]
    expected += [f"qllama.model.layers.{i}.cross_attn.{part}" for i in sorted(cross_layers) for part in _CROSS_PARTS]
    return expected


def convert_official_internvl(state_dict: Mapping[str, torch.Tensor],
                              config_json: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Official InternVL weights as an `internvl_stage2` objective state dict (`model.*` keys).

    `config_json` (the checkpoint's config.json) fixes the layer counts the keys are checked against; without
    it they are read from the keys. Raises CheckpointError naming the first unknown key, then the first missing one.
    """
    converted: dict[str, torch.Tensor] = {}
    for key in sorted(state_dict):
        if _DROPPED.search(key):
            continue
        ours = official_internvl_key_map(key)
        if ours is None:
            raise CheckpointError(f"official InternVL weights: unknown key {key!r} (no counterpart in vfm's InternVL)")
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"official InternVL weights: {key!r} is a {type(value).__name__}, not a tensor")
        if key in _TRANSPOSED:
            if value.ndim != 2:
                raise CheckpointError(f"official InternVL weights: {key!r} has shape {tuple(value.shape)}, expected a "
                                      "(text width, embed dim) matrix")
            value = value.t().contiguous()
        if key == "logit_scale":  # official 0-d, ours one element (FSDP2 cannot shard a 0-d parameter)
            value = value.reshape(1)
        converted[ours] = value
    missing = [k for k in _expected_official_keys(list(state_dict), config_json) if k not in state_dict]
    if missing:
        raise CheckpointError(f"official InternVL weights: missing key {missing[0]!r}"
                              + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    return converted


def convert_to_official_internvl(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse: an `internvl_stage2` objective state dict in the official key layout (for the official code)."""
    official = {}
    for key, value in state_dict.items():
        name = vfm_to_official_key(key)
        if name is None:
            raise CheckpointError(f"vfm InternVL weights: {key!r} has no official counterpart")
        official[name] = value.t().contiguous() if name in _TRANSPOSED else value.reshape(()) if name == "logit_scale" else value
    return official


# ------------------------------------------------------------------------------------------------- config
_VISION_FIELDS = {  # official InternVisionConfig field -> InternViT argument
    "patch_size": "patch_size", "hidden_size": "embed_dim",  # num_channels: the official patch conv takes 3
    "num_hidden_layers": "depth", "num_attention_heads": "num_heads", "intermediate_size": "mlp_dim",
    "qkv_bias": "qkv_bias", "qk_normalization": "qk_normalization", "layer_norm_eps": "norm_eps",
    "initializer_factor": "layerscale_init", "drop_path_rate": "drop_path_rate",
    "attention_dropout": "attn_drop_rate", "dropout": "proj_drop_rate", "initializer_range": "init_std",
}
_LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "max_position_embeddings", "rms_norm_eps", "hidden_act", "initializer_range", "bos_token_id",
                 "eos_token_id", "pad_token_id", "tie_word_embeddings")


def objective_config_from_official(config_json: Mapping[str, Any], tokenizer: str) -> dict[str, Any]:
    """An `internvl_stage2` objective node for the model an official InternVLConfig (config.json) describes.

    `tokenizer` is the tokenizer folder for `qllama.tokenizer` (an official HF folder ships its LLaMA tokenizer).
    """
    try:
        vision, llama = dict(config_json["vision_config"]), dict(config_json["qllama_config"])
    except (KeyError, TypeError) as error:
        raise ConfigError(f"config.json: not an InternVLConfig (no {error} section)") from error
    if vision.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"config.json: vision_config.hidden_act {vision['hidden_act']!r}; InternViT has GELU only")
    heads = llama.get("num_attention_heads")
    if llama.get("num_key_value_heads", heads) != heads:
        raise ConfigError(f"config.json: qllama_config.num_key_value_heads {llama['num_key_value_heads']} != "
                          f"{heads} heads; the official QLLaMA has no grouped key/value heads")
    vision_node: dict[str, Any] = {"type": "internvit", "variant": "internvit_6b"}
    # force_image_size: the official model resamples its position embedding at build time, so the saved one fits it.
    vision_node["img_size"] = int(config_json.get("force_image_size") or vision.get("image_size", 224))
    vision_node |= {ours: vision[theirs] for theirs, ours in _VISION_FIELDS.items() if theirs in vision}
    lm_config: dict[str, Any] = {"model_type": "llama", **{k: llama[k] for k in _LLAMA_FIELDS if k in llama}}
    lm_config["num_key_value_heads"] = heads  # the official attention has one key/value head per query head
    return {
        "type": "internvl_stage2",
        "embed_dim": int(config_json.get("clip_embed_dim", 768)),
        "pool_heads": int(config_json.get("attn_pool_num_heads", 16)),
        "prompt": "summarize:",
        "vision": vision_node,
        "qllama": {"tokenizer": str(tokenizer), "num_queries": int(config_json.get("num_query_token", 96)),
                   "cross_attention_frequency": int(config_json.get("cross_attention_frequency", 2)),
                   "config": lm_config},
    }


# -------------------------------------------------------------------------------------------------- files
def read_config_json(path: str | Path) -> dict[str, Any]:
    """A config.json as a dict, or a CheckpointError naming the file."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the model config ({type(error).__name__}: {error})") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def load_official_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder (model.safetensors, a sharded *.index.json, pytorch_model*.bin) or one file."""
    from vfm.weights import load_state_dict_file

    source = Path(source)
    if source.is_file():
        return load_state_dict_file(source)
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such checkpoint file or folder")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = source / index_name
        if index_path.is_file():
            weight_map = read_config_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path}: no weight_map")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(load_state_dict_file(source / shard))
            absent = [k for k in weight_map if k not in state]
            if absent:
                raise CheckpointError(f"{index_path}: {absent[0]!r} is listed in {weight_map[absent[0]]} but not there")
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (source / name).is_file():
            return load_state_dict_file(source / name)
    raise CheckpointError(f"{source}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                          "pytorch_model.bin.index.json")


def convert_main(argv: Sequence[str] | None = None) -> int:
    """tools/convert_internvl.py: SRC OUT.safetensors [--config-out YAML] [--tokenizer DIR] [--debug]."""
    import argparse
    import sys

    from omegaconf import OmegaConf

    from vfm.errors import VfmError
    from vfm.weights import atomic_write, save_safetensors

    parser = argparse.ArgumentParser(prog="convert_internvl.py", description="Convert an official InternVL-C/G checkpoint "
                                "(HF InternVLModel) into vfm's internvl_stage2 layout.")
    parser.add_argument("source", help="official HF folder (config.json + model.safetensors, sharded safetensors with "
                        "model.safetensors.index.json, or pytorch_model*.bin), or one weights file")
    parser.add_argument("destination", help="output .safetensors with the objective's keys (for load_from)")
    parser.add_argument("--config-out", help="write the matching `objective:` node as YAML (needs SRC/config.json)")
    parser.add_argument("--tokenizer", help="tokenizer folder for qllama.tokenizer (default: SRC, an HF folder)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args: argparse.Namespace = parser.parse_args(argv)
    try:
        source = Path(args.source)
        config_path = source / "config.json"
        config_json = read_config_json(config_path) if source.is_dir() and config_path.is_file() else None
        if args.config_out and config_json is None:
            raise CheckpointError(f"{config_path}: not found; --config-out needs the checkpoint's config.json")
        converted = convert_official_internvl(load_official_weights(source), config_json)
        save_safetensors(converted, args.destination)
        print(f"wrote {len(converted)} tensors to {args.destination}")
        if args.config_out:
            node = objective_config_from_official(config_json, args.tokenizer or str(source))
            text = OmegaConf.to_yaml(OmegaConf.create({"objective": node}))
            atomic_write(args.config_out, lambda file: file.write(text.encode("utf-8")))
            print(f"wrote the objective config to {args.config_out} (load_from: {args.destination})")
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2  # the CLIs' status for a VfmError (vfm.cli.EXIT_USAGE; models do not import the CLI layer)
    return 0
