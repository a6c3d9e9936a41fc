"""QLLaMA: a LLaMA-style causal LM from `transformers` with learnable queries and cross-attention to vision tokens.

InternVL's middleware between the vision tower and language (Chen et al. 2024): `num_queries` learnable query
embeddings are prepended to the text, and every `cross_attention_frequency`-th decoder layer (layers 0, k, 2k, ...)
lets the *query positions only* attend to the vision tokens, between its self-attention and its MLP. The decoder
itself (embeddings, layers, final norm, LM head) is an unchanged `transformers` causal LM, built from a config or
loaded from a local folder, so a stage-1 text tower's weights load into it key for key. Every size (queries,
vision width, frequency) comes from the constructor; none is fixed inside a layer, unlike the official code.

Each decoder layer is replaced by a `QueryDecoderLayer` that takes over its modules under the same names (so the
state-dict keys are the LM's own) and adds `cross_attn` in the cross-attention layers, where the official model
has it (`...layers.N.cross_attn.*`). Every layer is then one module whose `forward` does all of its work, which
FSDP shards and gathers as a unit. The layers are driven by `decode`, not the LM's `forward`, because the three
stage-2 tasks need their own full (B, 1, L, L) masks (`vfm.models.language.query_masks`). This works for
decoders whose layers have LLaMA's parts (`input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`) and a
rotary embedding on the model: LLaMA, Mistral, Qwen2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vfm.errors import ConfigError
from vfm.models.language.local_models import load_tokenizer, resolve_model_dir
from vfm.models.language.query_masks import additive, itg_mask, itm_mask, text_causal_mask
from vfm.models.language.text_tower import pool
from vfm.models.layers.rms_norm import RMSNorm

LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


class QueryCrossAttention(nn.Module):
    """Queries (B, Q, width) attend to vision tokens (B_v, T, vision_width); keys and values from RMS-normed tokens."""

    def __init__(self, width: int, num_heads: int, vision_width: int, eps: float = 1e-6) -> None:
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"qllama: hidden size {width} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.norm1 = RMSNorm(width, eps)  # on the queries
        self.norm2 = RMSNorm(vision_width, eps)  # on the vision tokens
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(vision_width, width, bias=False)
        self.v_proj = nn.Linear(vision_width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def forward(self, queries: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """The attention output (B, Q, width); B is a multiple of B_v (the vision batch is repeated to match)."""
        batch, length, width = queries.shape
        q = self.q_proj(self.norm1(queries)).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        vision = self.norm2(vision)
        k = self.k_proj(vision).view(vision.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(vision).view(vision.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)
        repeat = batch // vision.shape[0]
        if repeat > 1:  # the same images under several masks: project once, then repeat
            k, v = k.repeat(repeat, 1, 1, 1), v.repeat(repeat, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, width))


class QueryDecoderLayer(nn.Module):
    """One LLaMA decoder layer (its own modules, taken over) with the queries' cross-attention after self-attention."""

    def __init__(self, layer: nn.Module, cross_attn: QueryCrossAttention | None = None) -> None:
        super().__init__()
        for part in LAYER_PARTS:
            setattr(self, part, getattr(layer, part))
        self.cross_attn = cross_attn

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                vision: torch.Tensor | None, num_queries: int) -> torch.Tensor:
        """Self-attention under `mask`, then (queries only) cross-attention to `vision`, then the MLP."""
        attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden), attention_mask=mask,
                                     position_embeddings=(cos, sin))
        hidden = hidden + attended
        if self.cross_attn is not None and vision is not None and num_queries:
            queries = hidden[:, :num_queries]
            hidden = torch.cat([queries + self.cross_attn(queries, vision), hidden[:, num_queries:]], dim=1)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def _build_lm(path: str | None, config: dict | None, vocab_size: int) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if path is not None:
        folder = resolve_model_dir(path, "qllama.path")
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, attn_implementation="sdpa")
    config = dict(config)
    model_type = config.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ConfigError("qllama.config.model_type: expected a transformers causal LM type such as 'llama'")
    config.setdefault("vocab_size", vocab_size)
    try:
        lm_config = AutoConfig.for_model(model_type, **config)
        return AutoModelForCausalLM.from_config(lm_config, attn_implementation="sdpa")
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"qllama.config: transformers rejected model_type {model_type!r}: {error}") from error


class QLLaMA(nn.Module):
    """A causal LM with `num_queries` learnable queries that cross-attend to vision tokens every k-th layer.

    `num_queries: 0` builds the plain language model (InternVL's stage-1 text tower): the same keys, minus the
    query path, so stage-1 weights load into a stage-2 model unchanged.
    """

    def __init__(self, tokenizer: str | None = None, path: str | None = None, config: dict | None = None,
                 num_queries: int = 0, vision_width: int | None = None, cross_attention_frequency: int = 2,
                 max_length: int = 80, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if (path is None) == (config is None):
            raise ConfigError("qllama: give exactly one of 'path' (a local model folder) and 'config' (a transformers "
                              "config to build from scratch)")
        if num_queries < 0 or cross_attention_frequency < 1 or max_length < 2:
            raise ConfigError(f"qllama: num_queries {num_queries} (>= 0), cross_attention_frequency "
                              f"{cross_attention_frequency} (>= 1), max_length {max_length} (>= 2) out of range")
        self.tokenizer = load_tokenizer(tokenizer or path, "qllama.tokenizer" if tokenizer else "qllama.path")
        if self.tokenizer.pad_token is None:  # LLaMA tokenizers ship without one
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.llm = _build_lm(path, config, len(self.tokenizer))
        layers = self.layers
        missing = [part for part in LAYER_PARTS if not hasattr(layers[0], part)]
        if missing or not hasattr(self.llm.model, "rotary_emb"):
            raise ConfigError(f"qllama: {type(self.llm).__name__} is not a LLaMA-style decoder "
                              f"(its layers lack {missing or ['a rotary embedding']})")
        lm_config = self.llm.config
        self.width = int(lm_config.hidden_size)
        self.num_queries, self.frequency = num_queries, cross_attention_frequency
        self.max_length, self.gradient_checkpointing = max_length, gradient_checkpointing
        cross_layers: set[int] = set()
        if num_queries:
            if vision_width is None:
                raise ConfigError("qllama: num_queries > 0 needs vision_width (the vision tokens' width)")
            self.query_tokens = nn.Parameter(torch.empty(1, num_queries, self.width))
            nn.init.normal_(self.query_tokens, std=getattr(lm_config, "initializer_range", 0.02))
            cross_layers = {i for i in range(len(layers)) if i % cross_attention_frequency == 0}
        eps = float(getattr(lm_config, "rms_norm_eps", 1e-6))
        heads = int(lm_config.num_attention_heads)
        self.llm.model.layers = nn.ModuleList(
            QueryDecoderLayer(layer, QueryCrossAttention(self.width, heads, vision_width, eps) if i in cross_layers else None)
            for i, layer in enumerate(layers))
        self.cross_attention_layers = sorted(cross_layers)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers of the wrapped LM."""
        return self.llm.model.layers

    # --------------------------------------------------------------------------------- tokens
    def tokenize(self, texts: list[str], prompt: str = "", add_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), right-padded, cut at max_length; `add_eos` ends each text with the EOS token (for generation)."""
        texts = [prompt + t for t in texts] if prompt else list(texts)
        limit = self.max_length - 1 if add_eos else self.max_length
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        if add_eos:
            eos = self.tokenizer.eos_token_id
            if eos is None:
                raise ConfigError("qllama.tokenizer: has no EOS token, which caption generation needs")
            ids = torch.cat([ids, torch.full_like(ids[:, :1], self.tokenizer.pad_token_id)], dim=1)
            mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
            lengths = mask.sum(1)
            ids[torch.arange(len(ids)), lengths] = eos
            mask[torch.arange(len(ids)), lengths] = 1
        device = self.llm.lm_head.weight.device
        return ids.to(device), mask.to(device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, width)."""
        return self.llm.get_input_embeddings()(ids)

    # -------------------------------------------------------------------------------- decoder
    def decode(self, embeds: torch.Tensor, allowed: torch.Tensor, vision: torch.Tensor | None = None,
               num_queries: int = 0) -> torch.Tensor:
        """Final-norm hidden states (B, L, width) of `embeds` under the boolean mask `allowed` (B, L, L).

        The first `num_queries` positions cross-attend to `vision` (B_v, T, vision_width) in the cross-attention
        layers; B may be a multiple of B_v (the same images under several masks).
        """
        mask = additive(allowed, embeds.dtype)
        positions = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0)
        cos, sin = self.llm.model.rotary_emb(embeds, positions)
        hidden = embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, mask, cos, sin, vision, num_queries, use_reentrant=False)
            else:
                hidden = layer(hidden, mask, cos, sin, vision, num_queries)
        return self.llm.model.norm(hidden)

    def text_hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The language model alone on text (causal, padding ignored): hidden states (B, T, width)."""
        return self.decode(self.embed(ids), text_causal_mask(mask))

    def text_features(self, texts: list[str], prompt: str = "") -> torch.Tensor:
        """The hidden state of the last real token of prompt + text (InternVL's text embedding), (B, width)."""
        ids, mask = self.tokenize(texts, prompt)
        return pool(self.text_hidden(ids, mask), mask, "last")

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states, through the LM head."""
        return self.llm.get_output_embeddings()(hidden)

    def lm_loss(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of the text `ids` given hidden states aligned with them (B, T, width)."""
        logits = self.lm_logits(hidden[:, :-1]).float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def query_outputs(self, vision: torch.Tensor) -> torch.Tensor:
        """The queries alone over the image (no text): (B, num_queries, width)."""
        if not self.num_queries:
            raise ConfigError("qllama: this model has no queries (num_queries: 0, a stage-1 model)")
        queries = self.query_tokens.expand(vision.shape[0], -1, -1)
        empty = torch.zeros(vision.shape[0], 0, dtype=torch.long, device=vision.device)
        return self.decode(queries, itm_mask(self.num_queries, empty), vision, self.num_queries)

    @torch.no_grad()
    def generate(self, vision: torch.Tensor, max_new_tokens: int = 20) -> list[str]:
        """Greedy captions of the images behind `vision`, at most `max_new_tokens` tokens each, stopped at EOS.

        No key/value cache: each step re-runs the sequence (captions here are a few dozen tokens).
        """
        if max_new_tokens < 1:
            raise ConfigError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        batch, device = vision.shape[0], vision.device
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise ConfigError("qllama.tokenizer: has no BOS token to start a caption from")
        eos = self.tokenizer.eos_token_id
        ids = torch.full((batch, 1), bos, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        queries = self.query_tokens.expand(batch, -1, -1)
        for _ in range(max_new_tokens):
            embeds = torch.cat([queries, self.embed(ids)], dim=1)
            allowed = itg_mask(self.num_queries, torch.ones_like(ids))
            hidden = self.decode(embeds, allowed, vision, self.num_queries)
            token = self.lm_logits(hidden[:, -1]).argmax(-1)
            token = torch.where(done, torch.full_like(token, self.tokenizer.pad_token_id), token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            done |= token == eos
            if bool(done.all()):
                break
        return self.tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style layer groups: embeddings and queries first, layer i with its cross-attention, norm and head last."""
        return {"stem": r"^llm\.model\.embed_tokens|^query_tokens",
                "blocks": [(r"^llm\.model\.layers\.(\d+)", None), (r"^llm\.model\.norm|^llm\.lm_head", (99999,))]}

    def extra_repr(self) -> str:
        return f"num_queries={self.num_queries}, cross_attention_frequency={self.frequency}"

