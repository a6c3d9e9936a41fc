"""The three stage-2 masks against hand-built matrices (2 queries, 3 text slots, the second row padded)."""

import torch

from vfm.models.language.query_masks import additive, itc_mask, itg_mask, itm_mask, text_causal_mask

TEXT = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1: two real tokens, one pad
Q = 2


def rows(*lines: str) -> torch.Tensor:
    """'1' allowed, '.' blocked; one string per query/text row."""
    return torch.tensor([[c == "1" for c in line] for line in lines])


def test_itm_is_fully_open_but_for_padding():
    full = rows(*["11111"] * 5)
    padded = rows(*["1111."] * 5)
    assert torch.equal(itm_mask(Q, TEXT), torch.stack([full, padded]))


def test_itc_blocks_queries_and_text_from_each_other_and_text_is_causal():
    expected0 = rows("11...",
                     "11...",
                     "..1..",
                     "..11.",
                     "..111")
    expected1 = rows("11...",
                     "11...",
                     "..1..",
                     "..11.",
                     "..11.")  # the pad key is never attended
    assert torch.equal(itc_mask(Q, TEXT), torch.stack([expected0, expected1]))


def test_itg_queries_bidirectional_and_blind_text_causal_over_queries():
    expected0 = rows("11...",
                     "11...",
                     "111..",
                     "1111.",
                     "11111")
    expected1 = rows("11...",
                     "11...",
                     "111..",
                     "1111.",
                     "1111.")
    assert torch.equal(itg_mask(Q, TEXT), torch.stack([expected0, expected1]))


def test_text_alone_is_causal_and_additive_has_no_nan():
    assert torch.equal(text_causal_mask(TEXT[:1])[0], rows("1..", "11.", "111"))
    mask = additive(itc_mask(Q, TEXT), torch.float32)
    assert mask.shape == (2, 1, 5, 5)
    assert (mask[0, 0, 0, :2] == 0).all() and (mask[0, 0, 0, 2:] == torch.finfo(torch.float32).min).all()
    assert torch.softmax(mask, dim=-1).isfinite().all()
