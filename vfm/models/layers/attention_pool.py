"""Attention pooling: one query attends over a token sequence and gives a single vector (InternVL's projectors).

InternVL's `clip_projector` pools the vision tokens with a query that is the *mean of the tokens* (not a learned
vector); `clip_projector2` pools the QLLaMA query outputs the same way. Query, keys and values each get their
own LayerNorm; q/k/v projections carry separate biases; the output projection maps to the embedding width.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class AttentionPool(nn.Module):
    """(B, N, dim) tokens -> (B, out_dim): multi-head attention of one query over the tokens."""

    def __init__(self, dim: int, num_heads: int, out_dim: int, query: Literal["mean", "learned"] = "mean",
                 qkv_bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention pool: width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.query_type = num_heads, query
        self.norm_q, self.norm_k, self.norm_v = (nn.LayerNorm(dim, eps=eps) for _ in range(3))
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=qkv_bias) for _ in range(3))
        self.proj = nn.Linear(dim, out_dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim)) if query == "learned" else None
        if self.query is not None:
            nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled (B, out_dim)."""
        batch, length, dim = tokens.shape
        query = tokens.mean(1, keepdim=True) if self.query is None else self.query.expand(batch, -1, -1)
        heads = self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

        q = split(self.q(self.norm_q(query)))
        k = split(self.k(self.norm_k(tokens)))
        v = split(self.v(self.norm_v(tokens)))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, dim // heads)
        return self.proj(out.transpose(1, 2).reshape(batch, dim))
