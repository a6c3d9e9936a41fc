"""Official InternVL checkpoints -> vfm: a random official-layout model, written as HF folders, through the CLI.

The official layout below is written from the official module definitions (`modeling_internvl.py`,
`modeling_qllama.py`, `modeling_intern_vit.py` of OpenGVLab/InternVL `internvl_g/`), not imported from them. One
liberty: the official `LlamaCrossAttention` hard-codes a 3200-wide vision input; here it is the tiny vision width.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from conftest import run_tool
from vfm.models.internvl_conversion import (
    convert_main,
    convert_official_internvl,
    convert_to_official_internvl,
    official_internvl_key_map,
)
from vfm.registry import OBJECTIVES

VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
          "patch_size": 4, "image_size": 16, "qkv_bias": False, "qk_normalization": True, "layer_norm_eps": 1e-6,
          "initializer_factor": 0.1, "hidden_act": "gelu", "use_flash_attn": True, "dropout": 0.0,
          "drop_path_rate": 0.0, "attention_dropout": 0.0, "initializer_range": 0.02}
LLAMA = {"hidden_size": 24, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 48,
         "rms_norm_eps": 1e-6, "max_position_embeddings": 128, "hidden_act": "silu", "tie_word_embeddings": False,
         "architectures": ["LlamaForCausalLM"], "num_query_token": 4, "cross_attention_frequency": 2}
EMBED, POOL_HEADS, QUERIES, FREQUENCY = 16, 4, 4, 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    from vfm.data.shapes_captions import grammar_texts
    from vfm.data.word_tokenizer import train_word_tokenizer

    return str(train_word_tokenizer(grammar_texts(), tmp_path_factory.mktemp("tokenizer")))


def official_config(vocab_size: int) -> dict:
    """config.json of a tiny InternVLModel (configuration_internvl.InternVLConfig.to_dict's fields)."""
    return {"architectures": ["InternVLModel"], "model_type": "internvl", "vision_config": dict(VISION),
            "qllama_config": {**LLAMA, "vocab_size": vocab_size}, "clip_embed_dim": EMBED,
            "attn_pool_num_heads": POOL_HEADS, "num_query_token": QUERIES, "cross_attention_frequency": FREQUENCY,
            "label_smoothing": 0.0, "use_backbone_lora": 0, "use_qllama_lora": 0, "force_image_size": None,
            "initializer_range": 0.02, "torch_dtype": "float32"}


def official_shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of InternVLModel's state dict, read off its modules' constructors."""
    d, mlp, grid = VISION["hidden_size"], VISION["intermediate_size"], VISION["image_size"] // VISION["patch_size"]
    h, inter = LLAMA["hidden_size"], LLAMA["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, d),
        "vision_model.embeddings.patch_embedding.weight": (d, 3, VISION["patch_size"], VISION["patch_size"]),
        "vision_model.embeddings.patch_embedding.bias": (d,),
        "vision_model.embeddings.position_embedding": (1, grid * grid + 1, d),
    }
    for i in range(VISION["num_hidden_layers"]):  # InternVisionEncoderLayer
        p = f"vision_model.encoder.layers.{i}."
        shapes |= {p + "attn.qkv.weight": (3 * d, d), p + "attn.q_norm.weight": (d,), p + "attn.k_norm.weight": (d,),
                   p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,), p + "mlp.fc1.weight": (mlp, d),
                   p + "mlp.fc1.bias": (mlp,), p + "mlp.fc2.weight": (d, mlp), p + "mlp.fc2.bias": (d,),
                   p + "norm1.weight": (d,), p + "norm2.weight": (d,), p + "ls1": (d,), p + "ls2": (d,)}
    shapes["qllama.model.embed_tokens.weight"] = (vocab_size, h)
    for i in range(LLAMA["num_hidden_layers"]):  # LlamaDecoderLayer, cross_attn when i % frequency == 0
        p = f"qllama.model.layers.{i}."
        shapes |= {p + f"self_attn.{n}_proj.weight": (h, h) for n in "qkvo"}
        shapes |= {p + "self_attn.rotary_emb.inv_freq": (h // LLAMA["num_attention_heads"] // 2,),  # a buffer
                   p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                   p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)}
        if i % FREQUENCY == 0:
            shapes |= {p + "cross_attn.q_proj.weight": (h, h), p + "cross_attn.o_proj.weight": (h, h),
                       p + "cross_attn.k_proj.weight": (h, d), p + "cross_attn.v_proj.weight": (h, d),
                       p + "cross_attn.norm1.weight": (h,), p + "cross_attn.norm2.weight": (d,)}
    shapes |= {"qllama.model.norm.weight": (h,), "qllama.lm_head.weight": (vocab_size, h),
               "query_tokens": (1, QUERIES, h), "text_projection": (h, EMBED), "logit_scale": (),
               "itm_head.weight": (2, h), "itm_head.bias": (2,)}
    for name, width in (("clip_projector", d), ("clip_projector2", h)):  # AttentionPoolingBlock, qkv_bias=True
        shapes |= {f"{name}.norm1_{x}.{p}": (width,) for x in "qkv" for p in ("weight", "bias")}
        shapes |= {f"{name}.cross_attn.{x}.weight": (width, width) for x in "qkv"}
        shapes |= {f"{name}.cross_attn.{x}_bias": (width,) for x in "qkv"}
        shapes |= {f"{name}.cross_attn.proj.weight": (EMBED, width), f"{name}.cross_attn.proj.bias": (EMBED,)}
    return shapes


def official_state_dict(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) * 0.2 for k, shape in official_shapes(vocab_size).items()}


def write_folder(folder, state_dict: dict, config: dict, shards: int = 1) -> None:
    """An HF checkpoint folder: config.json plus model.safetensors, or `shards` files with their index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(state_dict, str(folder / "model.safetensors"))
        return
    keys = sorted(state_dict)
    weight_map = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[index::shards]
        save_file({k: state_dict[k] for k in part}, str(folder / name))
        weight_map |= dict.fromkeys(part, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def build_from_yaml(path) -> torch.nn.Module:
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)["objective"]
    return OBJECTIVES.build(node, "objective")


def official_attention_pool(tokens: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    """AttentionPoolingBlock.forward from the official tensors: mean query, LayerNorms, biased q/k/v, softmax."""
    batch, length, width = tokens.shape
    heads = POOL_HEADS

    def norm(x, which):
        return F.layer_norm(x, (width,), sd[f"{name}.norm1_{which}.weight"], sd[f"{name}.norm1_{which}.bias"], 1e-5)

    def project(x, which):
        out = F.linear(x, sd[f"{name}.cross_attn.{which}.weight"], sd[f"{name}.cross_attn.{which}_bias"])
        return out.reshape(batch, x.shape[1], heads, -1).permute(0, 2, 1, 3)

    q = project(norm(tokens.mean(1, keepdim=True), "q"), "q") * (width // heads) ** -0.5
    k, v = project(norm(tokens, "k"), "k"), project(norm(tokens, "v"), "v")
    out = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(batch, 1, width)
    return F.linear(out, sd[f"{name}.cross_attn.proj.weight"], sd[f"{name}.cross_attn.proj.bias"]).squeeze(1)


def official_cross_attention(queries: torch.Tensor, vision: torch.Tensor, sd: dict, layer: int) -> torch.Tensor:
    """LlamaCrossAttention.forward (no mask, no cache) from the official tensors."""
    p = f"qllama.model.layers.{layer}.cross_attn."
    heads, eps = LLAMA["num_attention_heads"], LLAMA["rms_norm_eps"]

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    q = split(F.linear(rms(queries, sd[p + "norm1.weight"]), sd[p + "q_proj.weight"]))
    vision = rms(vision, sd[p + "norm2.weight"])
    k, v = split(F.linear(vision, sd[p + "k_proj.weight"])), split(F.linear(vision, sd[p + "v_proj.weight"]))
    attn = (q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(queries.shape)
    return F.linear(out, sd[p + "o_proj.weight"])


@pytest.mark.parametrize("shards", [1, 3])
def test_cli_converts_an_hf_folder_that_loads_key_for_key(tmp_path, tokenizer, capsys, shards):
    from vfm.models.language.local_models import load_tokenizer

    vocab = len(load_tokenizer(tokenizer, "tokenizer"))
    official = official_state_dict(vocab)
    write_folder(tmp_path / "hf", official, official_config(vocab), shards)
    out, yaml_out = tmp_path / "internvl.safetensors", tmp_path / "objective.yaml"
    code = convert_main([str(tmp_path / "hf"), str(out), "--config-out", str(yaml_out), "--tokenizer", tokenizer])
    assert code == 0, capsys.readouterr().err

    objective = build_from_yaml(yaml_out)
    converted = load_file(str(out))
    result = objective.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(converted) == set(objective.state_dict())
    dropped = [k for k in official if k.endswith("rotary_emb.inv_freq")]
    assert len(dropped) == LLAMA["num_hidden_layers"] and len(converted) == len(official) - len(dropped)

    model = objective.eval().model
    torch.manual_seed(0)
    images = torch.randn(2, 3, VISION["image_size"], VISION["image_size"])
    with torch.no_grad():
        # C path: text_projection is the official matrix transposed; clip_projector with the official q/k/v biases.
        hidden = model.qllama.text_features(["a red circle", "two blue squares"], model.prompt)
        torch.testing.assert_close(model.encode_text(["a red circle", "two blue squares"], normalize=False),
                                   hidden @ official["text_projection"], rtol=1e-5, atol=1e-6)
        tokens = model.vision_tokens(images)
        image_c = official_attention_pool(tokens, official, "clip_projector")
        torch.testing.assert_close(model.encode_image_c(images, normalize=False), image_c, rtol=1e-5, atol=1e-6)
        # G path: clip_projector2 on the query outputs, the normalised sum of the two features.
        image_q = official_attention_pool(model.qllama.query_outputs(tokens), official, "clip_projector2")
        torch.testing.assert_close(model.encode_image_q(images, normalize=False), image_q, rtol=1e-5, atol=1e-6)
        g = F.normalize(F.normalize(image_c, dim=-1) + F.normalize(image_q, dim=-1), dim=-1)
        torch.testing.assert_close(model.encode_image_g(images), g, rtol=1e-5, atol=1e-6)
        # The query cross-attention of layer 2 and the ITM head, from the official tensors.
        queries = torch.randn(2, QUERIES, LLAMA["hidden_size"])
        torch.testing.assert_close(model.qllama.layers[2].cross_attn(queries, tokens),
                                   official_cross_attention(queries, tokens, official, 2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.itm_head(queries), queries @ official["itm_head.weight"].T
                                   + official["itm_head.bias"])
    assert float(model.logit_scale.detach()) == float(official["logit_scale"])


def test_round_trip_is_bit_identical(tmp_path, tokenizer):
    vocab = 50
    official = official_state_dict(vocab, seed=1)
    official = {k: v.to(torch.bfloat16) if "mlp" in k else v for k, v in official.items()}  # dtypes pass through
    write_folder(tmp_path / "hf", official, official_config(vocab))
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "out.safetensors")]) == 0
    back = convert_to_official_internvl(load_file(str(tmp_path / "out.safetensors")))
    kept = {k: v for k, v in official.items() if not k.endswith("rotary_emb.inv_freq")}
    assert set(back) == set(kept)
    for key, value in kept.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_key_map_names():
    assert official_internvl_key_map("text_projection") == "model.text_projection.weight"
    assert official_internvl_key_map("clip_projector2.cross_attn.k_bias") == "model.clip_projector2.k.bias"
    assert official_internvl_key_map("clip_projector.norm1_v.bias") == "model.clip_projector.norm_v.bias"
    assert official_internvl_key_map("qllama.model.layers.6.cross_attn.norm2.weight") == \
        "model.qllama.llm.model.layers.6.cross_attn.norm2.weight"
    assert official_internvl_key_map("qllama.model.layers.3.mlp.up_proj.weight") == \
        "model.qllama.llm.model.layers.3.mlp.up_proj.weight"
    assert official_internvl_key_map("vision_model.encoder.layers.1.ls2") == "model.visual.blocks.1.ls2.gamma"
    assert official_internvl_key_map("qllama.model.layers.0.cross_attn.extra.weight") is None


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("change, expected", [
    (lambda sd: sd.update({"clip_projector.cross_attn.q_scale": torch.ones(1)}), "clip_projector.cross_attn.q_scale"),
    (lambda sd: sd.pop("qllama.model.layers.2.cross_attn.k_proj.weight"), "qllama.model.layers.2.cross_attn.k_proj"),
    (lambda sd: sd.pop("clip_projector2.cross_attn.v_bias"), "clip_projector2.cross_attn.v_bias"),
    # The config says 4 layers: a whole missing last layer is named too.
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("qllama.model.layers.3.")], "qllama.model.layers.3."),
])
def test_bad_keys_exit_2_naming_the_key(tmp_path, capsys, change, expected):
    official = official_state_dict(50)
    change(official)
    write_folder(tmp_path / "hf", official, official_config(50))
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "out.safetensors")]) == 2
    assert expected in _one_error_line(capsys)
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_inputs_exit_2_naming_the_file(tmp_path, capsys):
    assert convert_main([str(tmp_path / "nowhere"), str(tmp_path / "out.safetensors")]) == 2
    assert "nowhere" in _one_error_line(capsys)
    official = official_state_dict(50)
    write_folder(tmp_path / "hf", official, official_config(50), shards=2)
    (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "out.safetensors")]) == 2
    assert "model-00002-of-00002.safetensors" in _one_error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert convert_main([str(tmp_path / "empty"), str(tmp_path / "out.safetensors"), "--config-out", "x.yaml"]) == 2
    assert "config.json" in _one_error_line(capsys)


def test_tool_script_reports_one_line(tmp_path):
    result = run_tool("convert_internvl", tmp_path / "missing.safetensors", tmp_path / "out.safetensors")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing.safetensors" in result.stderr


def test_converter_without_config_reads_the_layer_counts_from_the_keys():
    official = official_state_dict(50)
    del official["vision_model.encoder.layers.0.mlp.fc2.bias"]
    with pytest.raises(Exception, match="vision_model.encoder.layers.0.mlp.fc2.bias"):
        convert_official_internvl(official)
