"""The attention masks of InternVL's stage 2: one sequence `[queries ; text]`, three ways of letting it attend.

Every function returns a boolean tensor (B, L, L), L = num_queries + T, where `allowed[b, i, j]` says whether
position i may attend to position j; `text_mask` (B, T) marks real text tokens (1) and padding (0). Padded text
keys are never attended. `additive` turns a boolean mask into the float mask attention layers add to their logits.

- ITM, image-text matching: fully bidirectional (queries see text, text sees queries), so the query outputs
  judge the pair.
- ITC, image-text contrastive: queries and text blocked from each other (each side is encoded alone, as the
  contrastive loss needs), queries bidirectional among themselves, text causal (the text path is the language
  model's own, read at its last token).
- ITG, image-grounded generation: queries bidirectional among themselves and blind to the text; text causal over
  all the queries and the text before it, so each token is predicted from the image and its prefix.
"""

from __future__ import annotations

import torch


def _blocks(num_queries: int, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(is_query (L,), causal (L, L) over the text part, key_ok (B, 1, L)) for a sequence [queries ; text]."""
    batch, length = text_mask.shape[0], num_queries + text_mask.shape[1]
    device = text_mask.device
    is_query = torch.arange(length, device=device) < num_queries
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    keys = torch.cat([torch.ones(batch, num_queries, dtype=torch.bool, device=device), text_mask.bool()], dim=1)
    return is_query, causal, keys.unsqueeze(1)


def itm_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Image-text matching: every position attends to every real position."""
    _, _, key_ok = _blocks(num_queries, text_mask)
    length = key_ok.shape[-1]
    return key_ok.expand(-1, length, -1).clone()


def itc_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Image-text contrastive: queries <-> queries open, queries and text blocked from each other, text causal."""
    is_query, causal, key_ok = _blocks(num_queries, text_mask)
    query_block = is_query[:, None] & is_query[None, :]
    text_causal = ~is_query[:, None] & ~is_query[None, :] & causal
    return (query_block | text_causal).unsqueeze(0) & key_ok


def itg_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Image-grounded generation: queries open among themselves and blind to text; text causal over queries + text."""
    is_query, causal, key_ok = _blocks(num_queries, text_mask)
    query_block = is_query[:, None] & is_query[None, :]
    text_rows = ~is_query[:, None] & causal  # a text token sees every query (they come first) and earlier text
    return (query_block | text_rows).unsqueeze(0) & key_ok


def text_causal_mask(text_mask: torch.Tensor) -> torch.Tensor:
    """The language model alone: causal over real tokens (no queries)."""
    return itc_mask(0, text_mask)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, L) boolean -> (B, 1, L, L) float: 0 where allowed, the dtype's lowest value where not.

    A row with nothing allowed (a padded query of an empty text never occurs, but a padded text row does) then
    attends uniformly instead of producing NaN, and its output is never read.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)
