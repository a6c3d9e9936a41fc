"""Mean-query attention pooling against a hand computation on 3 tokens."""

import math

import torch
from torch import nn

from vfm.models.layers.attention_pool import AttentionPool


def test_mean_query_pool_matches_a_hand_computation():
    torch.manual_seed(0)
    pool = AttentionPool(dim=2, num_heads=1, out_dim=2, query="mean")
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]])
    # Identity norms would hide the LayerNorms: keep their weights random, check the formula step by step.
    for norm in (pool.norm_q, pool.norm_k, pool.norm_v):
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)

    def layer_norm(x, norm):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    query = tokens[0].mean(0)  # (1 + 0 + 3) / 3, (0 + 2 + 1) / 3
    assert torch.allclose(query, torch.tensor([4 / 3, 1.0]))
    q = pool.q(layer_norm(query, pool.norm_q))
    k = pool.k(layer_norm(tokens[0], pool.norm_k))
    v = pool.v(layer_norm(tokens[0], pool.norm_v))
    weights = torch.softmax(k @ q / math.sqrt(2), dim=0)
    expected = pool.proj((weights[:, None] * v).sum(0))
    assert torch.allclose(pool(tokens)[0], expected, atol=1e-6)


def test_learned_query_is_a_parameter_the_output_depends_on():
    torch.manual_seed(0)
    assert AttentionPool(dim=4, num_heads=2, out_dim=3, query="mean").query is None
    pool = AttentionPool(dim=4, num_heads=2, out_dim=3, query="learned")
    tokens = torch.randn(2, 5, 4)
    before = pool(tokens)
    assert before.shape == (2, 3)
    with torch.no_grad():
        pool.query.add_(torch.randn_like(pool.query))  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(pool(tokens), before)
