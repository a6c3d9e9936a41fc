"""InternVL's progressive alignment (Chen et al. 2024): stage 1 contrastive, stage 2 generative (ITC + ITM + ITG).

The official stage-1 and stage-2 training code was never released; this follows the released stage-2 model code
(`modeling_internvl.py`) and the paper. Choices neither fixes are config defaults, marked "[default]" below.

- `internvl_stage1`: InfoNCE between the C-path image embedding (mean-query attention pooling of InternViT
  tokens) and the LM's last-token embedding of `"summarize:" + caption`, with the gather of `clip`; both towers
  trainable, or either frozen. `lm_weight` [default 0, the paper's value] adds a next-token loss on the captions
  through the LM head, for a language model trained from scratch (the paper starts from a pre-trained LLaMA,
  whose LM head stage 2's generation loss relies on).
- `internvl_stage2`: InternViT and the LM frozen (`freeze: [vision, text]`); the queries, cross-attention,
  `clip_projector2`, `itm_head` and the temperature train. One pass over 3B sequences `[queries ; text]`, each
  third under its own mask (`vfm.models.language.query_masks`): ITM on (image, caption) pairs, the first
  B - B//2 with an in-batch negative caption; ITC between the pooled query outputs and the text embedding; ITG,
  next-token prediction of the caption through the LM head. L = w_itc L_itc + w_itm L_itm + w_itg L_itg
  (weights 1 : 1 : 1, the official sum). The official retrieval fine-tuning trains every tower (`freeze: []`) on
  ITC + ITM only (`loss_weights: {itg: 0}`), its ITC adding the C-path feature's InfoNCE (`backbone_itc: true`).
"""

from __future__ import annotations

import inspect
import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vfm.errors import ConfigError
from vfm.models.internvl import InternVL
from vfm.models.language.qllama import QLLaMA
from vfm.models.language.query_masks import itc_mask, itg_mask, itm_mask
from vfm.models.language.text_tower import pool
from vfm.objectives.contrastive_losses import check_gather_options, clip_loss
from vfm.registry import BACKBONES, OBJECTIVES, close_matches

TOWERS = ("vision", "text")
# Model parameters per tower (prefixes inside `InternVL`); everything else is the query path.
TOWER_PREFIXES = {"vision": ("visual.", "clip_projector."), "text": ("qllama.llm.", "text_projection.")}
LOSSES = ("itc", "itm", "itg")


def _check_common(kwargs: dict[str, Any], path: str) -> None:
    unknown = [t for t in kwargs.get("freeze") or () if t not in TOWERS]
    if unknown:
        raise ConfigError(f"{path}.freeze: unknown tower {unknown[0]!r}, expected a list of {', '.join(TOWERS)}")
    if not 0.0 <= (kwargs.get("label_smoothing") or 0.0) < 1.0:
        raise ConfigError(f"{path}.label_smoothing: got {kwargs['label_smoothing']}, expected a value in [0, 1)")
    qllama = kwargs.get("qllama")
    if not isinstance(qllama, dict):
        raise ConfigError(f"{path}.qllama: expected a mapping with the language model (config or path) and its tokenizer")
    accepted = [p for p in inspect.signature(QLLaMA).parameters if p != "vision_width"]
    unknown = [k for k in qllama if k not in accepted]
    if unknown:
        raise ConfigError(f"{path}.qllama.{unknown[0]}: unknown key{close_matches(unknown[0], accepted)}; "
                          f"accepted: {', '.join(accepted)}")
    if (qllama.get("path") is None) == (qllama.get("config") is None):
        raise ConfigError(f"{path}.qllama: give exactly one of 'path' (a local model folder) and 'config' (a "
                          "transformers config to build from scratch)")
    check_gather_options("infonce", kwargs.get("local_loss", False), kwargs.get("gather_with_grad", True))


def _check_stage1(kwargs: dict[str, Any], path: str) -> None:
    _check_common(kwargs, path)
    if (kwargs.get("qllama") or {}).get("num_queries"):
        raise ConfigError(f"{path}.qllama.num_queries: stage 1 trains no queries; set it to 0 (stage 2 adds them)")
    if len(set(kwargs.get("freeze") or ())) == 2:
        raise ConfigError(f"{path}.freeze: both towers frozen leaves only the projections to train")
    if (kwargs.get("lm_weight") or 0.0) < 0:
        raise ConfigError(f"{path}.lm_weight: got {kwargs['lm_weight']}, expected >= 0")


def _check_stage2(kwargs: dict[str, Any], path: str) -> None:
    _check_common(kwargs, path)
    if not (kwargs.get("qllama") or {}).get("num_queries"):
        raise ConfigError(f"{path}.qllama.num_queries: stage 2 needs learnable queries (e.g. 96, or 8 for tiny models)")
    weights = kwargs.get("loss_weights") or {}
    unknown = [k for k in weights if k not in LOSSES]
    if unknown:
        raise ConfigError(f"{path}.loss_weights.{unknown[0]}: unknown loss, expected some of {', '.join(LOSSES)}")
    effective = {name: weights.get(name, 1.0) for name in LOSSES}  # an unnamed loss keeps weight 1
    if any(v < 0 for v in effective.values()) or not any(v > 0 for v in effective.values()):
        raise ConfigError(f"{path}.loss_weights: got {dict(weights)}, expected weights >= 0, at least one positive")


class _InternVLObjective(nn.Module):
    """Shared: the model, tower freezing, frozen-key filtering, the temperature clamp and the inference methods."""

    inference_methods = ("predict", "encode_image", "encode_image_c", "encode_image_g", "encode_image_q",
                         "encode_text", "generate")

    def __init__(self, vision: dict, qllama: dict, embed_dim: int, pool_heads: int, prompt: str,
                 init_temperature: float, freeze: list[str], label_smoothing: float, local_loss: bool,
                 gather_with_grad: bool, max_logit_scale: float, image_key: str, text_key: str) -> None:
        super().__init__()
        self.model = InternVL(vision, qllama, embed_dim, pool_heads, prompt, init_temperature)
        self.freeze = tuple(dict.fromkeys(freeze))
        self.label_smoothing, self.local_loss, self.gather_with_grad = label_smoothing, local_loss, gather_with_grad
        self.max_logit_scale = max_logit_scale
        self.image_key, self.text_key = image_key, text_key
        for name, param in self.model.named_parameters():
            if self._tower_of(name) in self.freeze:
                param.requires_grad_(False)

    @staticmethod
    def _tower_of(name: str) -> str | None:
        if ".cross_attn." in name:  # inside the LM's layers, but the query path's
            return None
        for tower, prefixes in TOWER_PREFIXES.items():
            if name.startswith(prefixes):
                return tower
        return None

    # ---------------------------------------------------------------------- the optional protocol
    def trainable_parameters(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def frozen_state_keys(self) -> list[str]:
        """Frozen towers: rebuilt by construction (the seed, then `load_from`), fingerprinted at resume."""
        return [k for k in self.state_dict() if self._tower_of(k.removeprefix("model.")) in self.freeze]

    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        with torch.no_grad():  # CLIP's clamp: the inverse temperature stays at most 100
            self.model.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    def _vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        # A frozen vision tower needs no activations kept for a backward pass.
        with torch.set_grad_enabled(torch.is_grad_enabled() and "vision" not in self.freeze):
            return self.model.vision_tokens(images)

    def _itc(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return clip_loss(image, text, self.model.logit_scale, self.label_smoothing, self.local_loss,
                         self.gather_with_grad)

    # --------------------------------------------------------------------------------- inference
    def encode_image_c(self, images: torch.Tensor) -> torch.Tensor:
        """C-path image embeddings (unit norm)."""
        return self.model.encode_image_c(images)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings (unit norm), the same for both paths."""
        return self.model.encode_text(list(texts))

    def generate(self, images: torch.Tensor, max_new_tokens: int = 20) -> list[str]:
        """Greedy captions (stage-2 models)."""
        if not self.model.has_queries:
            raise ConfigError("generate: a stage-1 model has no queries to caption with; train stage 2")
        return self.model.generate(images, max_new_tokens)

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Unit-norm image features of the default path, and text features when the batch has captions."""
        out = {"image_features": self.encode_image(batch[self.image_key])}
        if self.text_key in batch:
            out["text_features"] = self.encode_text(list(batch[self.text_key]))
        return out


@OBJECTIVES.register("internvl_stage1", check=_check_stage1)
class InternVLStage1(_InternVLObjective):
    """batch = {"image", "text"}: InfoNCE between C-path image and LM text embeddings (+ an optional LM loss)."""

    def __init__(self, vision: Annotated[dict, BACKBONES], qllama: dict, embed_dim: int = 768, pool_heads: int = 16,
                 prompt: str = "summarize:", init_temperature: float = 0.07, freeze: list[str] = (),
                 label_smoothing: float = 0.0, local_loss: bool = False, gather_with_grad: bool = True,
                 lm_weight: float = 0.0, max_logit_scale: float = 100.0, image_key: str = "image",
                 text_key: str = "text") -> None:
        super().__init__(vision, qllama, embed_dim, pool_heads, prompt, init_temperature, list(freeze), label_smoothing,
                         local_loss, gather_with_grad, max_logit_scale, image_key, text_key)
        self.lm_weight = lm_weight
        if lm_weight == 0 or "text" in self.freeze:
            # An LM head nothing reads gets no gradient (and would stall DDP); unless tied to the embeddings.
            head = self.model.qllama.llm.get_output_embeddings().weight
            if head is not self.model.qllama.llm.get_input_embeddings().weight:
                head.requires_grad_(False)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        texts = list(batch[self.text_key])
        image = F.normalize(self.model.clip_projector(self._vision_tokens(batch[self.image_key])), dim=-1)
        text = self.model.encode_text(texts)
        itc = self._itc(image, text)
        logs = {"loss_itc": itc.detach(), "logit_scale": self.model.logit_scale.detach().exp().squeeze()}
        loss = itc
        if self.lm_weight > 0:
            qllama = self.model.qllama
            ids, mask = qllama.tokenize(texts, add_eos=True)
            lm = qllama.lm_loss(qllama.text_hidden(ids, mask), ids, mask)
            loss = loss + self.lm_weight * lm
            logs["loss_lm"] = lm.detach()
        return {"loss": loss, **logs}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The C path (the only one at stage 1)."""
        return self.model.encode_image_c(images)

    def encode_image_g(self, images: torch.Tensor) -> torch.Tensor:
        """Not available at stage 1."""
        raise ConfigError("encode_image_g: a stage-1 model has no query path; use encode_image_c")

    encode_image_q = encode_image_g


def pick_negatives(texts: list[str], count: int, similarity: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """For rows 0..count-1, the index of another caption of the batch whose text differs from the row's own.

    Uniform over the candidates, or in proportion to softmax(similarity[i]) when `similarity` (B, B) is given
    (BLIP-2's hard negatives). A row with no caption different from its own gets -1 (no negative exists).
    """
    batch = len(texts)
    text_id = {text: i for i, text in enumerate(dict.fromkeys(texts))}  # equal captions share an id
    ids = torch.tensor([text_id[text] for text in texts])
    same = ids[:, None] == ids[None, :]
    weights = torch.ones(batch, batch) if similarity is None else similarity.detach().float().cpu().softmax(dim=1)
    weights = weights.masked_fill(same, 0.0)[:count]  # the diagonal is always "same"
    picks = torch.full((count,), -1, dtype=torch.long)
    valid = weights.sum(1) > 0
    if valid.any():
        picks[valid] = torch.multinomial(weights[valid], 1, generator=generator).squeeze(1)
    return picks


@OBJECTIVES.register("internvl_stage2", check=_check_stage2)
class InternVLStage2(_InternVLObjective):
    """batch = {"image", "text"}: ITC + ITM + ITG through the QLLaMA queries, the towers frozen by default."""

    def __init__(self, vision: Annotated[dict, BACKBONES], qllama: dict, embed_dim: int = 768, pool_heads: int = 16,
                 prompt: str = "summarize:", init_temperature: float = 0.07, freeze: list[str] = TOWERS,
                 loss_weights: dict[str, float] | None = None, itm_negatives: Literal["random", "hard"] = "random",
                 label_smoothing: float = 0.0, local_loss: bool = False, gather_with_grad: bool = True,
                 max_logit_scale: float = 100.0, eval_path: Literal["g", "q", "c"] = "g", backbone_itc: bool = False,
                 image_key: str = "image", text_key: str = "text") -> None:
        super().__init__(vision, qllama, embed_dim, pool_heads, prompt, init_temperature, list(freeze), label_smoothing,
                         local_loss, gather_with_grad, max_logit_scale, image_key, text_key)
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in LOSSES}
        self.itm_negatives, self.eval_path, self.backbone_itc = itm_negatives, eval_path, backbone_itc

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model, qllama = self.model, self.model.qllama
        texts = list(batch[self.text_key])
        batch_size, num_queries = len(texts), qllama.num_queries
        tokens = self._vision_tokens(batch[self.image_key])

        # ITM pairs: the first B - B//2 rows get another caption of the batch (never their own text), the rest theirs.
        num_negative = batch_size - batch_size // 2
        similarity = None
        if self.itm_negatives == "hard":
            with torch.no_grad():
                similarity = model.encode_image_q(None, tokens=tokens) @ model.encode_text(texts).T
        negatives = pick_negatives(texts, num_negative, similarity)
        itm_texts = [texts[j] if j >= 0 else texts[i] for i, j in enumerate(negatives.tolist())] + texts[num_negative:]
        itm_labels = torch.cat([torch.where(negatives >= 0, 0, -100), torch.ones(batch_size // 2, dtype=torch.long)])
        itm_labels = itm_labels.to(tokens.device)

        # One pass over [queries ; text] for the three tasks, each third under its own mask.
        parts = [qllama.tokenize(itm_texts), qllama.tokenize(texts, model.prompt), qllama.tokenize(texts, add_eos=True)]
        length = max(ids.shape[1] for ids, _ in parts)
        pad = qllama.tokenizer.pad_token_id
        ids = torch.cat([F.pad(i, (0, length - i.shape[1]), value=pad) for i, _ in parts])
        masks = [F.pad(m, (0, length - m.shape[1])) for _, m in parts]
        allowed = torch.cat([itm_mask(num_queries, masks[0]), itc_mask(num_queries, masks[1]),
                             itg_mask(num_queries, masks[2])])
        embeds = torch.cat([qllama.query_tokens.expand(3 * batch_size, -1, -1), qllama.embed(ids)], dim=1)
        hidden = qllama.decode(embeds, allowed, tokens, num_queries)
        query_out, text_out = hidden[:, :num_queries], hidden[:, num_queries:]
        q_itm, q_itc, _ = query_out.chunk(3)
        _, t_itc, t_itg = text_out.chunk(3)
        ids_itg = ids.chunk(3)[2]

        # ITM: two-way classification of the mean over queries of the head's logits.
        itm_logits = model.itm_head(q_itm).mean(dim=1)
        itm = F.cross_entropy(itm_logits.float(), itm_labels, ignore_index=-100)
        # ITC: pooled query outputs against the text's last-token embedding (the text path of stage 1).
        image = F.normalize(model.clip_projector2(q_itc), dim=-1)
        text = F.normalize(model.text_projection(pool(t_itc, masks[1], "last")), dim=-1)
        itc = self._itc(image, text)
        backbone = F.normalize(model.clip_projector(tokens), dim=-1)  # the C-path feature
        if self.backbone_itc:  # the official retrieval fine-tuning also aligns the C-path feature with the text
            itc = itc + self._itc(backbone, text)
        # ITG: next-token prediction of the caption (and its EOS) from the queries and the caption's prefix.
        itg = qllama.lm_loss(t_itg, ids_itg, masks[2])

        w = self.loss_weights
        loss = w["itc"] * itc + w["itm"] * itm + w["itg"] * itg
        with torch.no_grad():
            predicted = itm_logits.argmax(-1)
            logs = {"loss_itc": itc.detach(), "loss_itm": itm.detach(), "loss_itg": itg.detach(),
                    "itm_accuracy": (predicted == itm_labels)[itm_labels >= 0].float().mean(),
                    "vision_sim": F.cosine_similarity(backbone.detach(), image.detach()).mean(),
                    "logit_scale": model.logit_scale.detach().exp().squeeze()}
        return {"loss": loss, **logs}

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The path `eval_path` names: g (InternVL-G, default), q (queries alone) or c."""
        return {"g": self.encode_image_g, "q": self.encode_image_q, "c": self.encode_image_c}[self.eval_path](images)

    def encode_image_g(self, images: torch.Tensor) -> torch.Tensor:
        """G-path image embeddings: the normalised sum of the C and query features (official InternVL-G)."""
        return self.model.encode_image_g(images)

    def encode_image_q(self, images: torch.Tensor) -> torch.Tensor:
        """Query-path image embeddings alone (unit norm)."""
        return self.model.encode_image_q(images)
