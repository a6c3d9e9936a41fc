"""Contrastive image-text pre-training: CLIP (symmetric InfoNCE) and SigLIP (sigmoid loss), on `TwoTower`.

Towers are trainable or frozen per config (`freeze: [text]` trains the image tower against a locked pretrained
text tower); a frozen tower loaded from a file is left out of step checkpoints and rebuilt from that file.
`accum_freq: K` splits each batch into K chunks and keeps the whole batch as negatives, as open_clip's
`accum_freq`: features of every chunk are computed without gradients, then each chunk is recomputed with
gradients against the cached others and backpropagated; the temperature (and bias) enter the gradient once,
not K times.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal

import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.models.clip import TwoTower
from vfm.objectives.contrastive_losses import check_gather_options, clip_loss, siglip_loss
from vfm.registry import BACKBONES, OBJECTIVES, TEXT_TOWERS
from vfm.requirements import Requirements

TOWERS = ("vision", "text")


def _check(kwargs: dict[str, Any], path: str, default_loss: str = "infonce") -> None:
    unknown = [t for t in kwargs.get("freeze") or () if t not in TOWERS]
    if unknown:
        raise ConfigError(f"{path}.freeze: unknown tower {unknown[0]!r}, expected a list of {', '.join(TOWERS)}")
    if len(set(kwargs.get("freeze") or ())) == 2:
        raise ConfigError(f"{path}.freeze: both towers frozen leaves only the projections and the temperature to train")
    if (kwargs.get("accum_freq") or 1) < 1:
        raise ConfigError(f"{path}.accum_freq: got {kwargs['accum_freq']}, expected >= 1")
    if not 0.0 <= (kwargs.get("label_smoothing") or 0.0) < 1.0:
        raise ConfigError(f"{path}.label_smoothing: got {kwargs['label_smoothing']}, expected a value in [0, 1)")
    loss = kwargs.get("loss") or default_loss
    check_gather_options(loss, kwargs.get("local_loss", False), kwargs.get("gather_with_grad", True))


class Contrastive(nn.Module):
    """batch = {"image": (N, 3, H, W), "text": list of N captions}; row i of each is a pair."""

    inference_methods = ("predict", "encode_image", "encode_text")
    default_loss = "infonce"

    def __init__(self, vision: Annotated[dict, BACKBONES], text: Annotated[dict, TEXT_TOWERS], embed_dim: int = 512,
                 loss: Literal["infonce", "sigmoid"] | None = None, freeze: list[str] = (), label_smoothing: float = 0.0,
                 local_loss: bool = False, gather_with_grad: bool = True, accum_freq: int = 1,
                 init_temperature: float | None = None, init_bias: float | None = None, max_logit_scale: float = 100.0,
                 image_key: str = "image", text_key: str = "text") -> None:
        super().__init__()
        loss = loss or self.default_loss
        sigmoid = loss == "sigmoid"
        # SigLIP's initialisation (t' = log 10, b = -10); CLIP's temperature 0.07 and no bias.
        init_temperature = init_temperature if init_temperature is not None else (0.1 if sigmoid else 0.07)
        init_bias = init_bias if init_bias is not None else (-10.0 if sigmoid else None)
        self.model = TwoTower(vision, text, embed_dim, init_temperature, init_bias if sigmoid else None)
        self.loss_type, self.freeze = loss, tuple(freeze)
        self.label_smoothing, self.local_loss, self.gather_with_grad = label_smoothing, local_loss, gather_with_grad
        self.accum_freq, self.max_logit_scale = accum_freq, max_logit_scale
        self.image_key, self.text_key = image_key, text_key
        self.sources = {"vision": vision.get("pretrained"), "text": text.get("path")}
        for tower in self.freeze:
            self._tower(tower).requires_grad_(False)

    def _tower(self, name: str) -> nn.Module:
        return self.model.visual if name == "vision" else self.model.text

    # ---------------------------------------------------------------------- the optional protocol
    def requirements(self) -> Requirements:
        # Cached-feature accumulation fills the gradients itself, from one batch split into accum_freq chunks.
        return Requirements(owns_backward=self.accum_freq > 1, grad_accum=self.accum_freq == 1,
                            precisions=("fp32", "bf16") if self.accum_freq > 1 else None)

    def trainable_parameters(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def frozen_state_keys(self) -> list[str]:
        """Frozen towers loaded from a file: rebuilt from it, so step checkpoints need not copy them."""
        prefix = {"vision": "model.visual.", "text": "model.text."}
        keep = [prefix[t] for t in self.freeze if self.sources[t]]
        return [k for k in self.state_dict() if k.startswith(tuple(keep))] if keep else []

    def on_optimizer_step(self, step: int, max_steps: int) -> None:
        # CLIP clamps the inverse temperature at 100 so the logits cannot blow up.
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, math.log(self.max_logit_scale))

    # ------------------------------------------------------------------------------------ the loss
    def _loss(self, image: torch.Tensor, text: torch.Tensor, detach_scalars: bool = False) -> torch.Tensor:
        scale, bias = self.model.logit_scale, self.model.logit_bias
        if detach_scalars:
            scale, bias = scale.detach(), (bias.detach() if bias is not None else None)
        if self.loss_type == "sigmoid":
            return siglip_loss(image, text, scale, bias)
        return clip_loss(image, text, scale, self.label_smoothing, self.local_loss, self.gather_with_grad)

    def _logs(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        logs = {"loss": loss, "logit_scale": self.model.logit_scale.detach().exp().squeeze()}
        if self.model.logit_bias is not None:
            logs["logit_bias"] = self.model.logit_bias.detach().squeeze()
        return logs

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = self.model.encode_image(batch[self.image_key])
        text = self.model.encode_text(list(batch[self.text_key]))
        return self._logs(self._loss(image, text))

    def forward_backward(self, batch: dict[str, Any], loss_scale: float) -> dict[str, torch.Tensor]:
        """Cached-feature accumulation over `accum_freq` chunks of the batch; gradients of the whole-batch loss."""
        images, texts = batch[self.image_key], list(batch[self.text_key])
        chunks = [(images[i:j], texts[i:j]) for i, j in _bounds(len(texts), self.accum_freq)]
        with torch.no_grad():
            cached = [(self.model.encode_image(im), self.model.encode_text(tx)) for im, tx in chunks]
        loss = None
        for k, (im, tx) in enumerate(chunks):
            image_k, text_k = self.model.encode_image(im), self.model.encode_text(tx)
            image = torch.cat([c[0] for c in cached[:k]] + [image_k] + [c[0] for c in cached[k + 1:]])
            text = torch.cat([c[1] for c in cached[:k]] + [text_k] + [c[1] for c in cached[k + 1:]])
            # The temperature and bias take their gradient from the first chunk only: they enter each chunk's
            # loss whole, so K backward passes would count their gradient K times.
            chunk_loss = self._loss(image, text, detach_scalars=k > 0)
            (chunk_loss * loss_scale).backward()
            loss = chunk_loss.detach() if loss is None else loss
        return self._logs(loss)

    # --------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Unit-norm image features, and text features when the batch has captions."""
        out = {"image_features": self.model.encode_image(batch[self.image_key])}
        if self.text_key in batch:
            out["text_features"] = self.model.encode_text(list(batch[self.text_key]))
        return out

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (N, embed_dim)."""
        return self.model.encode_image(images)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings (N, embed_dim)."""
        return self.model.encode_text(list(texts))


def _bounds(n: int, parts: int) -> list[tuple[int, int]]:
    if n < parts:
        raise ConfigError(f"objective.accum_freq: {parts} chunks of a batch of {n}; set data.batch_size >= accum_freq")
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@OBJECTIVES.register("clip", check=_check)
class Clip(Contrastive):
    """CLIP: symmetric InfoNCE with a learnable temperature (clamped at 1/100)."""


@OBJECTIVES.register("siglip", check=functools.partial(_check, default_loss="sigmoid"))
class Siglip(Contrastive):
    """SigLIP: the sigmoid loss with a learnable temperature and bias (t' = log 10, b = -10 at start)."""

    default_loss = "sigmoid"
