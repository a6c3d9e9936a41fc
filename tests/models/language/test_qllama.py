"""QLLaMA: the wrapped transformers LM is driven faithfully, cross-attention sits where the config says."""

import pytest
import torch

from vfm.errors import ConfigError
from vfm.models.language.qllama import QLLaMA
from vfm.models.language.query_masks import itc_mask, itg_mask

LLAMA = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 5, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 128}


def build(tokenizer, **kwargs) -> QLLaMA:
    torch.manual_seed(0)
    return QLLaMA(tokenizer=tokenizer, config=LLAMA, **kwargs).eval()


def test_text_path_equals_the_transformers_model(word_tokenizer):
    from transformers import AutoModelForCausalLM

    model = build(word_tokenizer)
    reference = AutoModelForCausalLM.from_config(model.llm.config)  # the untouched transformers model, same weights
    reference.load_state_dict(model.llm.state_dict())
    ids, mask = model.tokenize(["a red circle on the left", "two boxes"])
    ours = model.text_hidden(ids, mask)
    theirs = reference.model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)


def test_cross_attention_every_kth_layer_with_sizes_from_config(word_tokenizer):
    model = build(word_tokenizer, num_queries=3, vision_width=24, cross_attention_frequency=2)
    assert model.cross_attention_layers == [0, 2, 4]
    assert [layer.cross_attn is not None for layer in model.layers] == [True, False, True, False, True]
    assert model.query_tokens.shape == (1, 3, 32)
    assert model.layers[0].cross_attn.k_proj.weight.shape == (32, 24)
    assert build(word_tokenizer, num_queries=1, vision_width=8, cross_attention_frequency=3).cross_attention_layers == [0, 3]
    stage1 = build(word_tokenizer)  # no query path at all, and the LM's own keys
    assert not any("cross_attn" in k or "query" in k for k in stage1.state_dict())
    assert set(stage1.llm.state_dict()) == set(type(stage1.llm)(stage1.llm.config).state_dict())


def test_only_queries_see_the_image_and_text_ignores_queries_under_itc(word_tokenizer):
    model = build(word_tokenizer, num_queries=2, vision_width=16)
    ids, mask = model.tokenize(["a red circle", "three wedges at the top"])
    embeds = torch.cat([model.query_tokens.expand(2, -1, -1), model.embed(ids)], dim=1)
    vision_a, vision_b = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    itc_a = model.decode(embeds, itc_mask(2, mask), vision_a, 2)
    itc_b = model.decode(embeds, itc_mask(2, mask), vision_b, 2)
    assert not torch.allclose(itc_a[:, :2], itc_b[:, :2])  # queries read the image
    assert torch.allclose(itc_a[:, 2:], itc_b[:, 2:], atol=1e-6)  # text under ITC sees neither queries nor image
    assert torch.allclose(itc_a[:, 2:][mask.bool()], model.text_hidden(ids, mask)[mask.bool()], atol=1e-5)
    itg_a = model.decode(embeds, itg_mask(2, mask), vision_a, 2)
    itg_b = model.decode(embeds, itg_mask(2, mask), vision_b, 2)
    assert not torch.allclose(itg_a[:, 2:], itg_b[:, 2:])  # under ITG text reads the image through the queries


def test_generate_is_bounded_and_stops_at_eos(word_tokenizer):
    model = build(word_tokenizer, num_queries=2, vision_width=16)
    captions = model.generate(torch.randn(3, 4, 16), max_new_tokens=4)
    assert len(captions) == 3 and all(len(c.split()) <= 4 for c in captions)
    eos = model.tokenizer.eos_token_id
    # An LM head that answers EOS for the second image only: its caption ends, the other runs to the bound.
    calls = []

    def logits(hidden):
        out = torch.zeros(hidden.shape[0], len(model.tokenizer))
        out[:, model.tokenizer.convert_tokens_to_ids("red")] = 1.0
        out[1, eos] = 2.0
        calls.append(1)
        return out

    model.lm_logits = logits
    assert model.generate(torch.randn(2, 4, 16), max_new_tokens=5) == ["red red red red red", ""]
    assert len(calls) == 5
    with pytest.raises(ConfigError, match="max_new_tokens"):
        model.generate(torch.randn(1, 4, 16), max_new_tokens=0)


def test_tokenize_appends_eos_within_max_length(word_tokenizer):
    model = build(word_tokenizer, max_length=4)
    ids, mask = model.tokenize(["a red circle on the left", "two"], add_eos=True)
    eos = model.tokenizer.eos_token_id
    assert ids.shape[1] == 4 and ids[0, -1] == eos and mask[0].sum() == 4
    assert ids[1, mask[1].sum() - 1] == eos and ids[1, 0] == model.tokenizer.bos_token_id


def test_group_matcher_orders_layers_and_config_errors(word_tokenizer):
    from timm.models import group_parameters

    model = build(word_tokenizer, num_queries=2, vision_width=8)
    groups = group_parameters(model, model.group_matcher())
    layer_of = {n: layer for layer, names in groups.items() for n in names}
    assert layer_of["query_tokens"] == layer_of["llm.model.embed_tokens.weight"] == 0
    assert layer_of["llm.model.layers.2.cross_attn.q_proj.weight"] == layer_of["llm.model.layers.2.mlp.up_proj.weight"]
    # the final norm and the head join the last layer (timm's MATCH_PREV_GROUP), above every earlier layer
    assert layer_of["llm.model.layers.3.mlp.up_proj.weight"] < layer_of["llm.lm_head.weight"] == layer_of["llm.model.layers.4.mlp.up_proj.weight"]
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        QLLaMA(tokenizer=word_tokenizer)
    with pytest.raises(ConfigError, match="needs vision_width"):
        QLLaMA(tokenizer=word_tokenizer, config=LLAMA, num_queries=2)
    with pytest.raises(ConfigError, match="model_type"):
        QLLaMA(tokenizer=word_tokenizer, config={"hidden_size": 8})
