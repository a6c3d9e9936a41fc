"""InternVL (Chen et al. 2024): InternViT + QLLaMA with the C path (contrastive) and the G path (query features).

- C path (stage 1): image = mean-query attention pooling of the vision tokens (`clip_projector`); text = the
  language model's hidden state at the last token of `prompt + caption`, projected (`text_projection`).
- G path (stage 2): the QLLaMA queries cross-attend to the vision tokens; their outputs are attention-pooled
  (`clip_projector2`) into the same space. `encode_image_g` is the official InternVL-G feature, the normalised sum
  of the C and query features; `encode_image_q` is the query feature alone. Text is the same in both paths.
- `generate` captions images through the queries and the LM head (greedy).

`qllama.num_queries: 0` (stage 1) leaves the query path out; a stage-2 model has the same keys plus
`qllama.query_tokens`, `qllama.llm.model.layers.N.cross_attn.*`, `clip_projector2.*` and `itm_head.*`.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from vfm.errors import ConfigError
from vfm.models.language.qllama import QLLaMA
from vfm.models.layers.attention_pool import AttentionPool
from vfm.registry import BACKBONES


class InternVL(nn.Module):
    """The two InternVL towers and their heads; `vision` is any registered backbone with `forward_features` tokens."""

    def __init__(self, vision: Annotated[dict, BACKBONES], qllama: dict, embed_dim: int = 768, pool_heads: int = 16,
                 prompt: str = "summarize:", init_temperature: float = 0.07) -> None:
        super().__init__()
        self.visual = BACKBONES.build({**vision, "num_classes": 0}, "objective.vision")
        vision_width = int(self.visual.num_features)
        self.qllama = QLLaMA(**{"vision_width": vision_width, **qllama})
        width = self.qllama.width
        for name, dim in (("vision", vision_width), ("qllama", width)):
            if dim % pool_heads:
                raise ConfigError(f"objective.pool_heads: {pool_heads} heads do not divide the {name} width {dim}")
        self.prompt = prompt
        self.clip_projector = AttentionPool(vision_width, pool_heads, embed_dim, query="mean")
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.text_projection.weight, std=width**-0.5)
        # A one-element vector, not a 0-d scalar: FSDP2 cannot shard a 0-d parameter (the official one is 0-d).
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / init_temperature)))
        if self.qllama.num_queries:
            self.clip_projector2 = AttentionPool(width, pool_heads, embed_dim, query="mean")
            self.itm_head = nn.Linear(width, 2)

    @property
    def has_queries(self) -> bool:
        """Whether the query path (stage 2) exists."""
        return self.qllama.num_queries > 0

    def vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The vision tower's output tokens (B, T, vision_width)."""
        return self.visual.forward_features(images)

    def encode_image_c(self, images: torch.Tensor, normalize: bool = True,
                       tokens: torch.Tensor | None = None) -> torch.Tensor:
        """C-path image embeddings (B, embed_dim): mean-query attention pooling of the vision tokens."""
        features = self.clip_projector(self.vision_tokens(images) if tokens is None else tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_q(self, images: torch.Tensor, normalize: bool = True,
                       tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Query-path image embeddings (B, embed_dim): attention pooling of the query outputs."""
        tokens = self.vision_tokens(images) if tokens is None else tokens
        features = self.clip_projector2(self.qllama.query_outputs(tokens))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_g(self, images: torch.Tensor) -> torch.Tensor:
        """G-path (InternVL-G) image embeddings: normalise(normalised C feature + normalised query feature)."""
        tokens = self.vision_tokens(images)
        both = self.encode_image_c(images, tokens=tokens) + self.encode_image_q(images, tokens=tokens)
        return F.normalize(both, dim=-1)

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings (N, embed_dim): the LM's last-token state of prompt + text, projected."""
        features = self.text_projection(self.qllama.text_features(list(texts), self.prompt))
        return F.normalize(features, dim=-1) if normalize else features

    def generate(self, images: torch.Tensor, max_new_tokens: int = 20) -> list[str]:
        """Greedy captions of `images` through the queries and the LM head."""
        return self.qllama.generate(self.vision_tokens(images), max_new_tokens)
