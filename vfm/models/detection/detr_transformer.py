"""DETR's dense transformer: post-norm encoder and decoder with the position embedding added to queries and keys."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class DetrEncoderLayer(nn.Module):
    """Self-attention over all pixels (keys and queries carry the position embedding), then a ReLU FFN."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor | None) -> Tensor:
        """src, pos (N, S, d); padding_mask (N, S) True on padding."""
        q = k = _with_pos(src, pos)
        attended = self.self_attn(q, k, src, key_padding_mask=padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        src = self.norm2(src + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src))))))
        return src


class DetrDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the memory (with its position embedding), then a ReLU FFN."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, memory_padding_mask: Tensor | None
    ) -> Tensor:
        """tgt, query_pos (N, Q, d); memory, memory_pos (N, S, d); memory_padding_mask (N, S)."""
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(
            _with_pos(tgt, query_pos),
            _with_pos(memory, memory_pos),
            memory,
            key_padding_mask=memory_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        tgt = self.norm3(tgt + self.dropout4(self.linear2(self.dropout3(F.relu(self.linear1(tgt))))))
        return tgt


class DetrTransformer(nn.Module):
    """Encoder over flattened pixels, decoder over learned queries (tgt starts at zero); returns every decoder layer."""

    def __init__(
        self,
        d_model: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        encoder_layer = DetrEncoderLayer(d_model, num_heads, dim_feedforward, dropout)
        decoder_layer = DetrDecoderLayer(d_model, num_heads, dim_feedforward, dropout)
        self.encoder_layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_encoder_layers))
        self.decoder_layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_decoder_layers))
        # Post-norm layers end on a LayerNorm already; this one normalises every layer's output for the shared heads.
        self.decoder_norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, padding_mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        """src, pos (N, d, H, W); padding_mask (N, H, W); query_pos (Q, d) -> decoder outputs (layers, N, Q, d)."""
        src = src.flatten(2).transpose(1, 2)  # (N, S, d)
        pos = pos.flatten(2).transpose(1, 2).to(src.dtype)
        padding_mask = padding_mask.flatten(1)
        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, pos, padding_mask)
        query_pos = query_pos[None].expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.decoder_layers:
            tgt = layer(tgt, query_pos, memory, pos, padding_mask)
            outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs)
