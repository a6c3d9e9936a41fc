"""MultiScaleDeformableAttention: initialisation, layouts, padding mask, reference-point kinds, backends."""

import math

import pytest
import torch

import vfm.ops.ms_deform_attn as msda
from vfm.ops import MultiScaleDeformableAttention
from vfm.ops.ms_deform_attn_testing import level_start_index_of

SHAPES = torch.tensor([[6, 5], [3, 3], [1, 1]])
S = 40


def _module(**kwargs):
    torch.manual_seed(0)
    kwargs = {"embed_dims": 16, "num_heads": 4, "num_levels": 3, "num_points": 2, "impl": "reference", **kwargs}
    return MultiScaleDeformableAttention(**kwargs).double()


def _data(batch=2, queries=7, dims=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, queries, dims, generator=generator, dtype=torch.float64)
    value = torch.randn(batch, S, dims, generator=generator, dtype=torch.float64)
    reference = torch.rand(batch, queries, 3, 2, generator=generator, dtype=torch.float64)
    return query, value, reference


def test_offset_bias_is_the_paper_ring_and_attention_is_uniform():
    module = _module(num_heads=8, num_levels=2, num_points=3)
    bias = module.sampling_offsets.bias.view(8, 2, 3, 2)
    assert torch.all(module.sampling_offsets.weight == 0)
    # head 0 points right, head 2 down, head 1 diagonally with max(|x|, |y|) = 1; point k is k + 1 pixels out
    torch.testing.assert_close(
        bias[0, 1, :, :], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(bias[2, 0, 1], torch.tensor([0.0, 2.0], dtype=torch.float64), atol=1e-7, rtol=0)
    angles = torch.atan2(bias[:, 0, 0, 1], bias[:, 0, 0, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles, torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8, atol=1e-6, rtol=0)
    assert torch.all(module.attention_weights.weight == 0) and torch.all(module.attention_weights.bias == 0)
    assert torch.all(module.value_proj.bias == 0) and torch.all(module.output_proj.bias == 0)


def test_parameter_names_match_official_checkpoints():
    names = set(_module().state_dict())
    for prefix in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
        assert {f"{prefix}.weight", f"{prefix}.bias"} <= names


def test_batch_first_and_sequence_first_agree():
    query, value, reference = _data()
    first = _module(batch_first=True)(query, reference, value, SHAPES)
    second = _module(batch_first=False)(query.transpose(0, 1), reference, value.transpose(0, 1), SHAPES)
    assert first.shape == (2, 7, 16) and second.shape == (7, 2, 16)
    torch.testing.assert_close(first, second.transpose(0, 1), rtol=0, atol=1e-12)


def test_level_start_index_defaults_from_shapes_and_value_defaults_to_query():
    module = _module(batch_first=True)
    query, _, reference = _data(queries=S)
    explicit = module(query, reference, query, SHAPES, level_start_index_of(SHAPES))
    torch.testing.assert_close(module(query, reference, None, SHAPES), explicit, rtol=0, atol=0)


def test_key_padding_mask_hides_padded_values():
    module = _module(batch_first=True)
    query, value, reference = _data()
    mask = torch.zeros(2, S, dtype=torch.bool)
    mask[:, 20:30] = True
    changed = value.clone()
    changed[:, 20:30] += 100.0
    masked = module(query, reference, value, SHAPES, key_padding_mask=mask)
    torch.testing.assert_close(module(query, reference, changed, SHAPES, key_padding_mask=mask), masked, rtol=0, atol=0)
    assert not torch.allclose(module(query, reference, changed, SHAPES), module(query, reference, value, SHAPES))


def test_box_reference_points_scale_offsets_by_box_size():
    module = _module(batch_first=True)
    query, value, centers = _data()
    # a box with w = h = 0 collapses every sampling point onto its centre: output equals that of 2-d references
    # with all offsets zeroed
    boxes = torch.cat([centers, torch.zeros_like(centers)], dim=-1)
    out_boxes = module(query, boxes, value, SHAPES)
    with torch.no_grad():
        module.sampling_offsets.bias.zero_()
    torch.testing.assert_close(out_boxes, module(query, centers, value, SHAPES), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"reference_points must have shape \(N, Lq, L, 2\) or \(N, Lq, L, 4\)"):
        module(query, centers[..., :1], value, SHAPES)


def test_query_pos_is_added_to_query():
    module = _module(batch_first=True)
    query, value, reference = _data()
    position = torch.randn_like(query)
    torch.testing.assert_close(
        module(query, reference, value, SHAPES, query_pos=position), module(query + position, reference, value, SHAPES)
    )


@pytest.mark.skipif(not msda.native_available("cpu"), reason="CPU extension unavailable")
def test_native_and_reference_backends_agree_with_gradients():
    query, value, reference = _data()
    outputs, grads = [], []
    for impl in ("reference", "cpu"):
        module = _module(batch_first=True, impl=impl)
        out = module(query, reference, value, SHAPES)
        out.square().sum().backward()
        outputs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-9)
    assert grads[0].abs().sum() > 0


def test_embed_dims_must_divide_heads():
    with pytest.raises(ValueError, match="embed_dims \\(10\\) must be divisible by num_heads \\(4\\)"):
        MultiScaleDeformableAttention(embed_dims=10, num_heads=4)
