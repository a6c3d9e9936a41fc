"""Unit tests for vfm/models/backbones/internvit.py: shapes, attention paths, timm surface, registry, weights."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from timm.optim._param_groups import param_groups_layer_decay

from vfm.engine.optim import build_param_groups
from vfm.errors import CheckpointError, ConfigError
from vfm.models.backbones.internvit import (
    VARIANTS,
    InternViT,
    official_vision_key_map,
    resample_pos_embed,
)
from vfm.registry import BACKBONES
from vfm.weights import save_safetensors

TINY = VARIANTS["internvit_tiny"]  # patch 4, 32 px (8x8 grid), d 64, 4 blocks, 4 heads, MLP 256


def tiny(seed: int = 0, **overrides) -> InternViT:
    torch.manual_seed(seed)
    return InternViT(**{**TINY, **overrides})


def images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_6b_shape_on_meta_has_5_9b_parameters():
    with torch.device("meta"):
        model = InternViT(**VARIANTS["internvit_6b"])
    count = sum(p.numel() for p in model.parameters())
    d, mlp, depth, patch, tokens = 3200, 12800, 48, 14, 16 * 16 + 1
    per_block = 3 * d * d + (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 6 * d  # qkv, proj, fc1, fc2, 4 norms + 2 ls
    assert count == depth * per_block + (3 * patch * patch * d + d) + tokens * d + d == 5_902_793_600
    assert abs(count - 5.9e9) / 5.9e9 < 0.01
    block = model.blocks[0]
    assert len(model.blocks) == 48 and block.attn.num_heads == 25 and block.attn.head_dim == 128
    assert block.attn.qkv.bias is None and block.mlp.fc1.out_features == 12800
    assert model.pos_embed.shape == (1, 257, 3200) and model.pos_embed.is_meta


def test_sdpa_matches_math_forward_and_gradients():
    outputs, grads = [], []
    for impl in ("sdpa", "math"):
        model = tiny(attn_impl=impl).double()
        x = images().double()
        out = model.forward_features(x)
        out.pow(2).sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-5), name
    # float32 too, the precision training uses on CPU
    a, b = tiny(attn_impl="sdpa"), tiny(attn_impl="math")
    assert (a(images()) - b(images())).abs().max() < 1e-5


def test_qk_norm_makes_attention_invariant_to_the_scale_of_q_and_k():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 64)
    for qk_normalization in (True, False):
        model = tiny(qk_normalization=qk_normalization)
        attn = model.blocks[0].attn.eval()
        before = attn(x)
        with torch.no_grad():
            attn.qkv.weight[:128] *= 10  # the q and k rows; v untouched
        after = attn(x)
        if qk_normalization:
            assert torch.allclose(before, after, atol=1e-5)
        else:  # the control: without QK-norm the same change sharpens the softmax
            assert (before - after).abs().max() > 1e-2
    # what remains is the learned RMSNorm weight: doubling it changes the logits (and so the output)
    attn = tiny().blocks[0].attn.eval()
    before = attn(x)
    with torch.no_grad():
        attn.q_norm.weight.mul_(2)
    assert (attn(x) - before).abs().max() > 1e-3


def test_qk_norm_is_over_all_heads_together():
    """Official q_norm/k_norm take the (B, N, heads * head_dim) vector, not each head separately."""
    attn = tiny().blocks[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (64,)
    torch.manual_seed(0)
    x = torch.randn(1, 5, 64)
    q = attn.qkv(x)[..., :64]
    q_all = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(attn.q_norm(q), q_all, atol=1e-6)
    q_heads = q.view(1, 5, 4, 16)
    q_per_head = (q_heads * torch.rsqrt(q_heads.pow(2).mean(-1, keepdim=True) + 1e-6)).flatten(-2)
    assert not torch.allclose(attn.q_norm(q), q_per_head, atol=1e-3)


def test_layer_scale_starts_at_0_1_and_qkv_has_no_bias_by_default():
    model = tiny()
    gammas = [p for n, p in model.named_parameters() if n.endswith(("ls1.gamma", "ls2.gamma"))]
    assert len(gammas) == 2 * 4 and all(torch.equal(g, torch.full((64,), 0.1)) for g in gammas)
    assert all(block.attn.qkv.bias is None and block.attn.proj.bias is not None for block in model.blocks)
    assert tiny(qkv_bias=True).blocks[0].attn.qkv.bias.shape == (192,)
    assert torch.equal(tiny(layerscale_init=1e-5).blocks[3].ls2.gamma, torch.full((64,), 1e-5))


def test_drop_path_is_linear_over_depth_and_active_in_train_mode_only():
    model = tiny(drop_path_rate=0.3)
    assert [round(float(getattr(b.drop_path1, "drop_prob", 0.0)), 6) for b in model.blocks] == [0.0, 0.1, 0.2, 0.3]
    reference = tiny()  # same seed: same weights, no drop path
    x = images(batch=8)
    model.eval()
    assert torch.equal(model(x), reference.eval()(x))
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    second = model(x)
    assert (first - second).abs().max() > 1e-3
    assert (first - reference(x)).abs().max() > 1e-3


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for enable in (False, True):
        model = tiny(drop_path_rate=0.2).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(3)  # same drop-path draws: checkpoint replays the RNG state in recomputation
        model(images()).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name
    assert tiny(grad_checkpointing=True).grad_checkpointing


def test_forward_intermediates_shapes_and_indices():
    model = tiny().eval()
    x = images()
    final, intermediates = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x))
    assert [t.shape for t in intermediates] == [(2, 64, 8, 8)] * 4
    last_patch_tokens = final[:, 1:].transpose(1, 2).reshape(2, 64, 8, 8)
    assert torch.allclose(intermediates[-1], last_patch_tokens)
    # negative indices count from the end, like the official hidden_states[-k]; last-n as an int
    nlc = model.forward_intermediates(x, indices=[-4, 1], output_fmt="NLC", intermediates_only=True)
    assert [t.shape for t in nlc] == [(2, 64, 64)] * 2
    assert torch.allclose(nlc[0], intermediates[0].flatten(2).transpose(1, 2))
    assert torch.allclose(nlc[1], intermediates[1].flatten(2).transpose(1, 2))
    assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    with_prefix = model.forward_intermediates(x, indices=[3], return_prefix_tokens=True, intermediates_only=True)
    assert torch.allclose(with_prefix[0][1], final[:, :1])
    early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    assert torch.allclose(early[0], intermediates[0])
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[4])
    assert model.prune_intermediate_layers([1]) == [1] and len(model.blocks) == 2


def test_forward_head_pools_and_classifies():
    model = tiny(num_classes=5).eval()
    x = images()
    tokens = model.forward_features(x)
    assert torch.equal(model.forward_head(tokens, pre_logits=True), tokens[:, 0])  # official pooler_output
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0, "avg")
    assert torch.allclose(model(x), tokens[:, 1:].mean(1))
    model.reset_classifier(3, "")
    assert model(x).shape == (2, 65, 3)
    assert tiny().num_features == 64 and tiny()(x).shape == (2, 64)
    normed = tiny(final_norm=True).forward_features(x)[:, 1:]  # the class token is small: eps shows
    assert torch.allclose(normed.pow(2).mean(-1), torch.ones(2, 64), atol=1e-3)


def test_group_matcher_gives_per_depth_lr_scales_in_timm_and_vfm():
    model = tiny(num_classes=5)
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=0.5)
    assert sorted({g["lr_scale"] for g in groups}) == [0.5**k for k in range(5, -1, -1)]  # stem, 4 blocks, head
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["pos_embed"])] == scale_of[id(named["patch_embed.proj.weight"])] == 0.5**5
    assert [scale_of[id(named[f"blocks.{i}.attn.qkv.weight"])] for i in range(4)] == [0.5**4, 0.5**3, 0.5**2, 0.5]
    assert scale_of[id(named["head.weight"])] == 1.0
    ours = build_param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in ours for n in g["param_names"]}
    assert lr_of["blocks.0.mlp.fc1.weight"] == 0.5**3 * lr_of["blocks.3.mlp.fc1.weight"]


def test_no_weight_decay_names_exist():
    model = tiny(final_norm=True)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert {"pos_embed", "cls_token", "blocks.0.ls1.gamma", "blocks.3.attn.k_norm.weight", "norm.weight"} <= names
    assert not any(n.endswith(("qkv.weight", "fc1.weight", "proj.weight")) for n in names)
    groups = build_param_groups(model, lr=1.0, weight_decay=0.05)
    decay = {n for g in groups if g["weight_decay"] for n in g["param_names"]}
    assert decay and not decay & names


def test_registry_builds_variants_with_overrides():
    model = BACKBONES.build({"type": "internvit", "variant": "internvit_tiny", "depth": 2, "mlp_dim": 96}, "backbone")
    assert isinstance(model, InternViT) and len(model.blocks) == 2 and model.blocks[0].mlp.fc1.out_features == 96
    assert model(images()).shape == (2, 64)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"variant": "internvit_6c"}, r"^backbone\.variant: 'internvit_6c' is not an InternViT variant \(did you mean"),
        ({"embed_dims": 32}, r"^backbone\.embed_dims: unknown InternViT argument \(did you mean 'embed_dim'"),
        ({"depth": "four"}, r"^backbone\.depth: expected int, got str"),
        ({"attn_impl": "xformers"}, r"^backbone\.attn_impl: expected one of 'sdpa', 'math', 'flash'"),
        ({"num_heads": 3}, r"^backbone\.num_heads: embed_dim 64 is not divisible by num_heads 3"),
        ({"img_size": 30}, r"^backbone\.img_size: 30 is not a multiple of patch_size 4"),
        ({"drop_path_rate": 1.5}, r"^backbone\.drop_path_rate: got 1.5, expected a value in \[0, 1\)"),
        ({"pretrained": "/nonexistent/w.safetensors"}, r"^backbone\.pretrained: weights file .* not found"),
    ],
)
def test_registry_rejects_bad_nodes_in_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        BACKBONES.validate({"type": "internvit", "variant": "internvit_tiny", **override}, "backbone")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_round_trip(tmp_path, suffix):
    source = tiny(seed=0, num_classes=3).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_safetensors(source.state_dict(), path)
    else:
        torch.save({"model": source.state_dict()}, path)
    node = {"type": "internvit", "variant": "internvit_tiny", "num_classes": 3, "pretrained": str(path)}
    torch.manual_seed(1)  # other initial weights, so equality means "loaded"
    model = BACKBONES.build(node, "backbone").eval()
    assert torch.equal(model(images()), source(images()))
    # a backbone without head loads the same file (the head is dropped)
    torch.manual_seed(1)
    headless = BACKBONES.build({**node, "num_classes": 0}, "backbone").eval()
    assert torch.equal(headless(images()), source.forward_head(source.forward_features(images()), pre_logits=True))
    mismatch = r"do not fit InternViT: shape of cls_token: \(1, 1, 64\) in file, \(1, 1, 32\) in model"
    with pytest.raises(CheckpointError, match=mismatch):
        BACKBONES.build({**node, "embed_dim": 32}, "backbone")


def test_pos_embed_is_interpolated_to_another_img_size(tmp_path):
    source = tiny().eval()
    path = tmp_path / "w.safetensors"
    save_safetensors(source.state_dict(), path)
    model = BACKBONES.build({"type": "internvit", "variant": "internvit_tiny", "img_size": 48, "pretrained": str(path)})
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 64)
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])
    grid = source.pos_embed[:, 1:].reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(model.pos_embed[:, 1:], expected, atol=1e-6)
    assert model(images(size=48)).shape == (2, 64)
    # resizing in place, and resampling on the fly (dynamic_img_size), give the same model at 48 px
    dynamic = tiny(dynamic_img_size=True).eval()
    x = images(size=48)
    assert torch.allclose(dynamic(x), model.eval()(x), atol=1e-5)
    resized = tiny().eval()
    resized.resize_pos_embed(48)
    assert torch.allclose(resized(x), model(x), atol=1e-5) and resized.grid_size == (12, 12)
    assert torch.equal(resample_pos_embed(source.pos_embed, (8, 8)), source.pos_embed)
    with pytest.raises(ConfigError, match="input 48x48 does not fit img_size 32"):
        tiny()(x)


def test_flash_without_flash_attn_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails, whether or not it is installed
    with pytest.raises(ConfigError, match=r"^attn_impl: 'flash' needs the flash_attn package, which is not installed"):
        tiny(attn_impl="flash")
    with pytest.raises(ConfigError, match=r"^backbone\.attn_impl: 'flash' needs the flash_attn package"):
        BACKBONES.validate({"type": "internvit", "variant": "internvit_tiny", "attn_impl": "flash"}, "backbone")


def test_flash_on_cpu_float32_is_refused_not_silently_replaced(monkeypatch):
    calls = []
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_func = lambda *args, **kwargs: calls.append(args)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    model = tiny(attn_impl="flash")
    with pytest.raises(ConfigError, match=r"'flash' runs on CUDA in float16/bfloat16 only, got cpu float32"):
        model(images())
    assert calls == []


# --- official layout -------------------------------------------------------------------------------------------
def official_state_dict(depth: int = 4, dim: int = 64, mlp: int = 256, patch: int = 4, tokens: int = 65,
                        qkv_bias: bool = False) -> dict[str, torch.Tensor]:
    """Random weights with the names and shapes of the official InternVisionModel's parameters."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    state = {
        "embeddings.class_embedding": rand(1, 1, dim),
        "embeddings.patch_embedding.weight": rand(dim, 3, patch, patch),
        "embeddings.patch_embedding.bias": rand(dim),
        "embeddings.position_embedding": rand(1, tokens, dim),
    }
    for i in range(depth):
        layer = f"encoder.layers.{i}."
        state |= {
            layer + "attn.qkv.weight": rand(3 * dim, dim, scale=0.3),
            layer + "attn.q_norm.weight": 1 + rand(dim),
            layer + "attn.k_norm.weight": 1 + rand(dim),
            layer + "attn.proj.weight": rand(dim, dim),
            layer + "attn.proj.bias": rand(dim),
            layer + "mlp.fc1.weight": rand(mlp, dim),
            layer + "mlp.fc1.bias": rand(mlp),
            layer + "mlp.fc2.weight": rand(dim, mlp),
            layer + "mlp.fc2.bias": rand(dim),
            layer + "norm1.weight": 1 + rand(dim),
            layer + "norm2.weight": 1 + rand(dim),
            layer + "ls1": 0.1 + rand(dim),
            layer + "ls2": 0.1 + rand(dim),
        }
        if qkv_bias:
            state[layer + "attn.qkv.bias"] = rand(3 * dim)
    return state


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """The official naive-attention forward, written out from modeling_intern_vit.py's operations."""

    def rms(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))

    h = F.conv2d(x, state["embeddings.patch_embedding.weight"], state["embeddings.patch_embedding.bias"], stride=4)
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([state["embeddings.class_embedding"].expand(x.shape[0], 1, -1), h], dim=1)
    h = h + state["embeddings.position_embedding"]
    for i in range(depth):
        prefix = f"encoder.layers.{i}."
        p = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        y = rms(h, p["norm1.weight"])
        B, N, C = y.shape
        qkv = F.linear(y, p["attn.qkv.weight"], p.get("attn.qkv.bias")).reshape(B, N, 3, heads, C // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, Dh)
        q = rms(q.transpose(1, 2).flatten(-2, -1), p["attn.q_norm.weight"]).view(B, N, heads, -1).transpose(1, 2)
        k = rms(k.transpose(1, 2).flatten(-2, -1), p["attn.k_norm.weight"]).view(B, N, heads, -1).transpose(1, 2)
        attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), p["attn.proj.weight"], p["attn.proj.bias"])
        h = h + y * p["ls1"]
        y = F.linear(F.gelu(F.linear(rms(h, p["norm2.weight"]), p["mlp.fc1.weight"], p["mlp.fc1.bias"])),
                     p["mlp.fc2.weight"], p["mlp.fc2.bias"])
        h = h + y * p["ls2"]
    return h  # last_hidden_state; no final norm


def test_official_key_map_covers_every_parameter_with_equal_shapes():
    for qkv_bias in (False, True):
        official = official_state_dict(qkv_bias=qkv_bias)
        mapped = {official_vision_key_map(k): v for k, v in official.items()}
        own = tiny(qkv_bias=qkv_bias).state_dict()
        assert None not in mapped and set(mapped) == set(own)
        assert all(mapped[k].shape == own[k].shape for k in own)
    assert official_vision_key_map("encoder.layers.7.ls1") == "blocks.7.ls1.gamma"
    assert official_vision_key_map("embeddings.class_embedding") == "cls_token"
    assert official_vision_key_map("encoder.layers.0.attn.inner_attn.scale") is None
    assert official_vision_key_map("qllama.model.embed_tokens.weight") is None


def test_official_weights_load_and_match_the_official_forward(tmp_path):
    official = official_state_dict()
    whole_internvl = {f"vision_model.{k}": v for k, v in official.items()}
    whole_internvl["qllama.lm_head.weight"] = torch.zeros(3, 3)  # other towers' keys are left out
    path = tmp_path / "internvl.safetensors"
    save_safetensors(whole_internvl, path)
    for impl in ("sdpa", "math"):
        model = BACKBONES.build({"type": "internvit", "variant": "internvit_tiny", "attn_impl": impl,
                                 "pretrained": str(path)}).eval()
        x = images()
        expected = official_forward(official, x, heads=4, depth=4)
        assert torch.allclose(model.forward_features(x), expected, atol=1e-5)
        assert torch.allclose(model(x), expected[:, 0], atol=1e-5)  # pooler_output
