"""InternVL stage 1 and stage 2: negatives, what trains, what stays frozen, the paths, config errors."""

import pytest
import torch
import torch.nn.functional as F

from vfm.errors import ConfigError
from vfm.objectives.internvl import pick_negatives
from vfm.registry import OBJECTIVES

VISION = {"type": "internvit", "variant": "internvit_tiny", "img_size": 16, "patch_size": 4, "embed_dim": 32,
          "depth": 2, "num_heads": 2}
LLAMA = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 64}
TEXTS = ["a red circle on the left", "two blue boxes", "a red circle on the left", "three wedges at the top",
         "a big disc", "one small block"]


def node(kind: str, tokenizer: str, **kwargs) -> dict:
    queries = {"num_queries": 4, "cross_attention_frequency": 2} if kind == "internvl_stage2" else {}
    return {"type": kind, "vision": VISION, "qllama": {"tokenizer": tokenizer, "config": LLAMA, **queries},
            "embed_dim": 16, "pool_heads": 4, **kwargs}


def build(kind: str, tokenizer: str, **kwargs):
    torch.manual_seed(0)
    return OBJECTIVES.build(node(kind, tokenizer, **kwargs), "objective")


def batch(n: int = 6) -> dict:
    return {"image": torch.randn(n, 3, 16, 16), "text": TEXTS[:n]}


def test_negatives_are_never_the_own_caption_nor_an_identical_text():
    texts = ["a", "b", "a", "c", "a", "b"]
    for seed in range(50):
        picks = pick_negatives(texts, 4, generator=torch.Generator().manual_seed(seed))
        for i, j in enumerate(picks.tolist()):
            assert j != i and texts[j] != texts[i]
    assert pick_negatives(["same"] * 4, 2).tolist() == [-1, -1]  # no other caption exists
    similarity = torch.zeros(4, 4)
    similarity[0, 3] = similarity[1, 2] = 50.0  # hard negatives follow the similarity
    assert pick_negatives(["w", "x", "y", "z"], 2, similarity).tolist() == [3, 2]


def test_stage2_trains_only_the_query_path_and_frozen_tensors_stay_bit_identical(word_tokenizer):
    objective = build("internvl_stage2", word_tokenizer)
    trainable = objective.trainable_parameters()
    assert trainable and all(n.startswith(("model.qllama.query_tokens", "model.clip_projector2.", "model.itm_head.",
                                           "model.logit_scale")) or ".cross_attn." in n for n in trainable)
    assert any(".cross_attn." in n for n in trainable)
    frozen = {k: v.clone() for k, v in objective.state_dict().items() if k in set(objective.frozen_state_keys())}
    assert frozen and all(k.startswith(("model.visual.", "model.clip_projector.", "model.qllama.llm.",
                                        "model.text_projection.")) and ".cross_attn." not in k for k in frozen)
    params = [p for p in objective.parameters() if p.requires_grad]
    query_before = objective.model.qllama.query_tokens.detach().clone()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        out = objective(batch())
        optimizer.zero_grad()
        out["loss"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)  # every trainable tensor learns
        assert all(p.grad is None for p in objective.parameters() if not p.requires_grad)
        optimizer.step()
    state = objective.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not torch.equal(objective.model.qllama.query_tokens, query_before)
    assert {"loss_itc", "loss_itm", "loss_itg", "itm_accuracy", "vision_sim"} <= set(out)


def test_stage1_weights_load_into_stage2_with_only_the_query_path_missing(word_tokenizer):
    stage1 = build("internvl_stage1", word_tokenizer, lm_weight=1.0)
    out = stage1(batch())
    out["loss"].backward()
    assert out["loss"] > out["loss_itc"] > 0 and out["loss_lm"] > 0
    stage2 = build("internvl_stage2", word_tokenizer)
    result = stage2.load_state_dict(stage1.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith(("model.qllama.query_tokens", "model.clip_projector2.",
                                                     "model.itm_head.")) or ".cross_attn." in k
                                       for k in result.missing_keys)
    images = batch()["image"]
    with torch.no_grad():
        assert torch.allclose(stage2.encode_image_c(images), stage1.encode_image(images), atol=1e-6)
        assert torch.allclose(stage2.encode_text(TEXTS), stage1.encode_text(TEXTS), atol=1e-6)


def test_g_path_is_the_normalised_sum_of_c_and_query_features(word_tokenizer):
    objective = build("internvl_stage2", word_tokenizer).eval()
    images = batch()["image"]
    with torch.no_grad():
        c, q, g = objective.encode_image_c(images), objective.encode_image_q(images), objective.encode_image_g(images)
        assert torch.allclose(g, F.normalize(c + q, dim=-1), atol=1e-6)
        assert torch.allclose(objective.predict({"image": images, "text": TEXTS})["image_features"], g, atol=1e-6)
        captions = objective.generate(images[:2], max_new_tokens=3)
    assert len(captions) == 2 and all(len(c.split()) <= 3 for c in captions)
    stage1 = build("internvl_stage1", word_tokenizer)
    with pytest.raises(ConfigError, match="no queries"):
        stage1.generate(images)


def test_loss_weights_and_frozen_keys(word_tokenizer):
    objective = build("internvl_stage2", word_tokenizer, loss_weights={"itg": 0.0})
    out = objective(batch())
    assert torch.allclose(out["loss"], out["loss_itc"] + out["loss_itm"])
    assert build("internvl_stage1", word_tokenizer).frozen_state_keys() == []
    text_frozen = build("internvl_stage1", word_tokenizer, freeze=["text"])
    assert text_frozen.frozen_state_keys() and all(
        k.startswith(("model.qllama.llm.", "model.text_projection.")) for k in text_frozen.frozen_state_keys())


@pytest.mark.parametrize("kind, extra, message", [
    ("internvl_stage1", {"qllama_queries": 4}, "stage 1 trains no queries"),
    ("internvl_stage2", {"qllama_queries": 0}, "stage 2 needs learnable queries"),
    ("internvl_stage2", {"loss_weights": {"itx": 1.0}}, "loss_weights.itx: unknown loss"),
    ("internvl_stage2", {"loss_weights": {"itc": 0, "itm": 0, "itg": 0}}, "at least one positive"),
    ("internvl_stage1", {"freeze": ["vision", "text"]}, "both towers frozen"),
    ("internvl_stage2", {"freeze": ["llm"]}, "unknown tower 'llm'"),
])
def test_config_errors_are_one_line(word_tokenizer, kind, extra, message):
    config = node(kind, word_tokenizer)
    if "qllama_queries" in extra:
        config["qllama"]["num_queries"] = extra.pop("qllama_queries")
    config.update(extra)
    with pytest.raises(ConfigError, match=message) as error:
        OBJECTIVES.validate(config, "objective")
    assert "\n" not in str(error.value)
