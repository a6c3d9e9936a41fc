"""InternViT, the vision tower of InternVL 1.0 (Chen et al., CVPR 2024), with timm's backbone surface.

Architecture as in the official `modeling_intern_vit.py` (OpenGVLab/InternVL, `internvl_g/`): conv patch
embedding, class token, learned absolute position embedding, pre-norm blocks with RMSNorm, attention
with a bias-free qkv projection and QK-norm (RMSNorm over the full q and k vectors of all heads, before
they are split into heads), layer scale (init 0.1), GELU MLP and stochastic depth. The official encoder
has **no final norm**: `InternVisionModel` returns the last block's tokens as `last_hidden_state` and
their class token as `pooler_output`. Here `forward_features` returns those tokens and
`forward_head(..., pre_logits=True)` with `global_pool="token"` returns `pooler_output`; `final_norm=True`
adds an RMSNorm for other uses. The official `hidden_states[-k]` (k <= depth) is
`forward_intermediates(x, indices=[-k], output_fmt="NLC")` plus its prefix token.

Official HF weights load through `official_vision_key_map` (see `load_internvit_weights`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from vfm.errors import CheckpointError, ConfigError
from vfm.models.layers.rms_norm import RMSNorm
from vfm.registry import BACKBONES, _check_value, close_matches
from vfm.weights import describe_mismatch, load_state_dict_file

logger = logging.getLogger(__name__)

AttnImpl = Literal["sdpa", "math", "flash"]
GlobalPool = Literal["token", "avg", ""]

# Shapes of the named variants; any field can be overridden in the config node.
VARIANTS: dict[str, dict[str, Any]] = {
    "internvit_6b": dict(img_size=224, patch_size=14, embed_dim=3200, depth=48, num_heads=25, mlp_ratio=4.0),
    "internvit_base": dict(img_size=224, patch_size=14, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "internvit_small": dict(img_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "internvit_tiny": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0),
}


def _flash_attn_func() -> Callable[..., torch.Tensor]:
    """flash_attn's `flash_attn_func`, or a ConfigError saying the package is missing."""
    try:
        return importlib.import_module("flash_attn").flash_attn_func
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            "attn_impl: 'flash' needs the flash_attn package, which is not installed; use 'sdpa' or 'math'"
        ) from error


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (the official `ls1`/`ls2` parameters, here `.gamma`)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchEmbed(nn.Module):
    """Non-overlapping conv patches, flattened to tokens (B, N, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm over the whole q/k vectors (all heads at once)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        qk_normalization: bool = True,
        norm_eps: float = 1e-6,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        if attn_impl == "flash":
            _flash_attn_func()  # fail at construction, not at the first step
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        # Official q_norm/k_norm normalise the concatenated heads (size dim), not each head.
        self.q_norm = RMSNorm(dim, norm_eps) if qk_normalization else nn.Identity()
        self.k_norm = RMSNorm(dim, norm_eps) if qk_normalization else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, N, D), laid out (heads, head_dim) as official
        q, k = self.q_norm(q), self.k_norm(k)
        shape = (batch, tokens, self.num_heads, self.head_dim)
        q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)  # (B, N, H, Dh)
        dropout = self.attn_drop if self.training else 0.0
        if self.attn_impl == "flash":
            if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
                raise ConfigError(f"attn_impl: 'flash' runs on CUDA in float16/bfloat16 only, got {q.device.type} "
                                  f"{str(q.dtype).removeprefix('torch.')} (use 'sdpa' or autocast)")
            out = _flash_attn_func()(q, k, v, dropout_p=dropout, softmax_scale=self.scale, causal=False)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, Dh)
            if self.attn_impl == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            else:
                attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
                out = F.dropout(attn, dropout) @ v
            out = out.transpose(1, 2)
        return self.proj_drop(self.proj(out.reshape(batch, tokens, dim)))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # no dropout here, as official


class Block(nn.Module):
    """Pre-norm block: x + dp(ls1(attn(norm1(x)))), then x + dp(ls2(mlp(norm2(x))))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool, qk_normalization: bool,
                 norm_eps: float, layerscale_init: float, drop_path: float, attn_drop: float, proj_drop: float,
                 attn_impl: AttnImpl) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_normalization, norm_eps, attn_drop, proj_drop, attn_impl)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = RMSNorm(dim, norm_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.ls2 = LayerScale(dim, layerscale_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, 1 + g*g, D) position embedding to `grid` (class slot kept), bicubic in float32 as official."""
    patches = pos_embed.shape[1] - 1
    old = math.isqrt(patches)
    if old * old != patches:
        raise CheckpointError(f"pos_embed: {patches} patch positions do not form a square grid")
    if (old, old) == tuple(grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.flatten(2).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def _take_indices(depth: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Absolute block indices: None -> all, n -> the last n, a list -> those (negative from the end)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices: last-n {indices} is out of range 1..{depth}")
        return list(range(depth - indices, depth))
    taken = []
    for index in indices:
        if not -depth <= index < depth:
            raise ValueError(f"indices: block {index} is out of range for depth {depth}")
        taken.append(index % depth)
    return taken


class InternViT(nn.Module):
    """InternViT with timm's VisionTransformer surface (forward_features, forward_intermediates, group_matcher, ...)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 3200,
        depth: int = 48,
        num_heads: int = 25,
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        qkv_bias: bool = False,
        qk_normalization: bool = True,
        layerscale_init: float = 0.1,
        drop_path_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        norm_eps: float = 1e-6,
        num_classes: int = 0,
        global_pool: GlobalPool = "token",
        final_norm: bool = False,
        dynamic_img_size: bool = False,
        attn_impl: AttnImpl = "sdpa",
        grad_checkpointing: bool = False,
        init_std: float = 0.02,
    ) -> None:
        """Args:
        img_size: square input size the position embedding is laid out for.
        mlp_dim: MLP hidden size; when None, int(embed_dim * mlp_ratio).
        qk_normalization: RMSNorm on q and k (over all heads together), as official.
        layerscale_init: initial value of the layer-scale gammas (the official `initializer_factor`).
        drop_path_rate: stochastic depth of the last block; linear from 0 over the blocks, as official.
        norm_eps: epsilon of every RMSNorm (the official `layer_norm_eps`).
        global_pool: "token" (the official pooler_output), "avg" over patch tokens, or "" (all tokens).
        final_norm: add an RMSNorm after the last block (the official encoder has none).
        dynamic_img_size: resample the position embedding to each input's grid instead of requiring img_size.
        attn_impl: "sdpa" (torch), "math" (explicit softmax), or "flash" (flash_attn package, CUDA fp16/bf16).
        grad_checkpointing: recompute each block in backward to save activation memory.
        proj_drop_rate: dropout after the attention output projection (the official `dropout`; the MLP has none).
        init_std: std of the truncated-normal init (the official model leaves its init to the unreleased stage 1).
        """
        super().__init__()
        for key, value in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                           ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            if value < 1:
                raise ConfigError(f"{key}: got {value}, expected an integer >= 1")
        if embed_dim % num_heads:
            raise ConfigError(f"num_heads: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if img_size % patch_size:
            raise ConfigError(f"img_size: {img_size} is not a multiple of patch_size {patch_size}")
        mlp_hidden = int(embed_dim * mlp_ratio) if mlp_dim is None else mlp_dim
        if mlp_hidden < 1:
            raise ConfigError(f"{'mlp_ratio' if mlp_dim is None else 'mlp_dim'}: MLP hidden size {mlp_hidden} < 1")
        for key, rate in (("drop_path_rate", drop_path_rate), ("attn_drop_rate", attn_drop_rate),
                          ("proj_drop_rate", proj_drop_rate)):
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"{key}: got {rate}, expected a value in [0, 1)")
        if num_classes < 0:
            raise ConfigError(f"num_classes: got {num_classes}, expected an integer >= 0")
        if global_pool not in typing.get_args(GlobalPool):
            raise ConfigError(f"global_pool: got {global_pool!r}, expected one of 'token', 'avg', ''")
        if attn_impl not in typing.get_args(AttnImpl):
            raise ConfigError(f"attn_impl: got {attn_impl!r}, expected one of 'sdpa', 'math', 'flash'")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.num_prefix_tokens = 1
        self.has_class_token = True
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = grad_checkpointing
        self.attn_impl = attn_impl

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden, qkv_bias, qk_normalization, norm_eps, layerscale_init, rate,
                  attn_drop_rate, proj_drop_rate, attn_impl)
            for rate in rates
        )
        self.norm = RMSNorm(embed_dim, norm_eps) if final_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=std)
        nn.init.trunc_normal_(self.cls_token, std=std)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # --- embeddings ---
    def resize_pos_embed(self, img_size: int) -> None:
        """Resample the position embedding (in place) for square inputs of `img_size`."""
        if img_size % self.patch_size:
            raise ConfigError(f"img_size: {img_size} is not a multiple of patch_size {self.patch_size}")
        grid = (img_size // self.patch_size, img_size // self.patch_size)
        with torch.no_grad():
            self.pos_embed = nn.Parameter(resample_pos_embed(self.pos_embed.data, grid))
        self.img_size, self.grid_size = img_size, grid

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        grid = (height // self.patch_size, width // self.patch_size)
        misfit = height % self.patch_size or width % self.patch_size
        if misfit or (grid != self.grid_size and not self.dynamic_img_size):
            raise ConfigError(f"InternViT: input {height}x{width} does not fit img_size {self.img_size} with patch "
                              f"{self.patch_size} (set dynamic_img_size=True for other multiples of the patch)")
        pos_embed = self.pos_embed if grid == self.grid_size else resample_pos_embed(self.pos_embed, grid)
        x = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x + pos_embed.to(x.dtype)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    # --- timm surface ---
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block (and `norm`, identity unless final_norm): (B, 1 + N, D)."""
        x = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens (B, 1 + N, D) by `global_pool`, then apply the classifier unless `pre_logits`."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (num_classes=0) or logits."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """Block outputs as timm's VisionTransformer returns them (prefix token split off; NCHW or NLC).

        `norm` applies `self.norm`, which is the identity unless final_norm=True (official: no final norm).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt: got {output_fmt!r}, expected 'NCHW' or 'NLC'")
        take = _take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x = self._embed(x)
        blocks = self.blocks[: max(take) + 1] if stop_early and take else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, : self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":
            grid = (height // self.patch_size, width // self.patch_size)
            intermediates = [y.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix, strict=True))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last wanted intermediate (and optionally norm and head); returns the indices."""
        take = _take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max(take) + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def no_weight_decay(self) -> set[str]:
        """Position embedding, class token, layer-scale gammas and norm weights."""
        names = {"pos_embed", "cls_token"}
        names |= {n for n, p in self.named_parameters() if re.search(r"(^|\.)(ls\d\.gamma|(\w*norm\d?)\.weight)$", n)}
        return names

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's ViT grouping: embeddings first, then one group per block, then the final norm."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in backward (saves activations, costs one more forward)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        """The classifier head (identity when num_classes=0)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for `num_classes` (0: none); optionally change `global_pool`."""
        if global_pool is not None:
            if global_pool not in typing.get_args(GlobalPool):
                raise ConfigError(f"global_pool: got {global_pool!r}, expected one of 'token', 'avg', ''")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.cls_token.device
        self.head = nn.Linear(self.embed_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()


# --- official weights ---
_OFFICIAL_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OFFICIAL_EMBEDDINGS = {
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
}
_OFFICIAL_BLOCK = {
    "ls1": "ls1.gamma",
    "ls2": "ls2.gamma",
    **{name: name for name in (
        "norm1.weight", "norm2.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.q_norm.weight", "attn.k_norm.weight",
        "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")},
}


def official_vision_key_map(key: str) -> str | None:
    """Our name for an official InternVisionModel key (without "vision_model."); None for keys we do not keep.

    Shapes are the same on both sides (ls1/ls2 are bare (D,) parameters there, `.gamma` (D,) here).
    """
    if key in _OFFICIAL_EMBEDDINGS:
        return _OFFICIAL_EMBEDDINGS[key]
    match = _OFFICIAL_LAYER.match(key)
    if match and match.group(2) in _OFFICIAL_BLOCK:
        return f"blocks.{match.group(1)}.{_OFFICIAL_BLOCK[match.group(2)]}"
    return None


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official InternVisionModel (or whole InternVL, "vision_model." keys) weights in our names."""
    if any(k.startswith("vision_model.") for k in state_dict):
        prefix = "vision_model."
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    converted = {}
    for key, value in state_dict.items():
        ours = official_vision_key_map(key)
        if ours is None:
            logger.info("official InternViT weights: dropping %s", key)
        else:
            converted[ours] = value
    return converted


def load_internvit_weights(model: InternViT, path: str | Path) -> None:
    """Load a local vfm or official-layout checkpoint; resamples pos_embed to the model's grid, drops a misfit head."""
    state_dict = load_state_dict_file(path)
    for key in ("model", "state_dict", "module"):  # common wrappers around the weights
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    if any(k.endswith("embeddings.patch_embedding.weight") for k in state_dict):
        state_dict = convert_official_state_dict(state_dict)
    own = model.state_dict()
    pos_embed = state_dict.get("pos_embed")
    if isinstance(pos_embed, torch.Tensor) and pos_embed.shape != own["pos_embed"].shape and pos_embed.ndim == 3:
        state_dict["pos_embed"] = resample_pos_embed(pos_embed, model.grid_size)
    head_keys = [k for k in own if k.startswith("head.")]
    for key in [k for k in state_dict if k.startswith("head.")]:
        if key not in own or own[key].shape != state_dict[key].shape:
            logger.warning("%s: skipping %s (the head does not fit this model)", path, key)
            del state_dict[key]
    problem = describe_mismatch(own, state_dict, ignore=head_keys)
    if problem:
        raise CheckpointError(f"{path}: weights do not fit InternViT: {problem}")
    missing = model.load_state_dict(state_dict, strict=False).missing_keys
    if missing:
        logger.warning("%s: no weights for %s (left at init)", path, ", ".join(missing))


# --- registry ---
def _internvit_kwargs(variant: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = {**VARIANTS[variant], **overrides}
    if "mlp_dim" in overrides:
        kwargs.pop("mlp_ratio", None)
    return kwargs


def _check_internvit_node(kwargs: dict[str, Any], path: str) -> None:
    """Check the variant and overrides by type, then by building the model on the meta device."""
    variant = kwargs.get("variant", "internvit_6b")
    if variant not in VARIANTS:
        raise ConfigError(f"{path}.variant: {variant!r} is not an InternViT variant"
                          f"{close_matches(str(variant), VARIANTS)}; known: {', '.join(VARIANTS)}")
    params = inspect.signature(InternViT).parameters
    hints = typing.get_type_hints(InternViT.__init__)
    overrides = {k: v for k, v in kwargs.items() if k not in ("variant", "pretrained")}
    for key, value in overrides.items():
        if key not in params:
            raise ConfigError(f"{path}.{key}: unknown InternViT argument{close_matches(key, params)};"
                              f" accepted: variant, pretrained, {', '.join(params)}")
        _check_value(value, hints[key], f"{path}.{key}")
    try:
        with torch.device("meta"):
            InternViT(**_internvit_kwargs(variant, overrides))
    except ConfigError as error:
        raise ConfigError(f"{path}.{error}") from error
    pretrained = kwargs.get("pretrained")
    if pretrained is not None and not Path(pretrained).is_file():
        raise ConfigError(f"{path}.pretrained: weights file {pretrained!r} not found"
                          " (weights load from local files only)")


@BACKBONES.register("internvit", check=_check_internvit_node)
def internvit_backbone(variant: str = "internvit_6b", pretrained: str | None = None, **overrides: Any) -> InternViT:
    """InternViT of a named `variant` (see VARIANTS) with any constructor field overridden.

    `pretrained` is a local .safetensors/.pth file in vfm's or the official HF layout.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant: {variant!r} is not an InternViT variant{close_matches(variant, VARIANTS)}")
    model = InternViT(**_internvit_kwargs(variant, overrides))
    if pretrained:
        load_internvit_weights(model, pretrained)
    return model
