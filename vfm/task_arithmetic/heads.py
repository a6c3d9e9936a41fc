"""Frozen classification heads: zero-shot from a text tower, or a linear probe fitted on pre-trained features.

A head is fixed before fine-tuning and never trained or edited: task vectors hold encoder weights only. A model
with an ``encode_text(list[str]) -> Tensor`` method gets a zero-shot head (CLIP's recipe: unit image features
against unit class embeddings, times a logit scale); any other model gets a multinomial logistic regression
fitted on its pre-trained features of the task's training images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfm.errors import ConfigError

DEFAULT_TEMPLATES = ("a photo of a {}.", "an image of the digit {}.", "a picture of {}.")


class FrozenHead(nn.Module):
    """logits = scale * normalize?(features) @ weight.T + bias; weight, bias and scale are buffers (never trained)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, normalize: bool = False,
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", (bias if bias is not None else torch.zeros(weight.shape[0])).detach().float().clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.normalize = normalize

    @property
    def num_classes(self) -> int:
        """Rows of the weight."""
        return self.weight.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.logit_scale * (features @ self.weight.T) + self.bias


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float = 1.0,
                     max_iter: int = 2000) -> FrozenHead:
    """Multinomial logistic regression (scikit-learn, L-BFGS, deterministic) on standardised features, with the
    standardisation folded into the head's weight and bias."""
    from sklearn.linear_model import LogisticRegression

    x = features.detach().double().cpu().numpy()
    y = labels.detach().cpu().numpy()
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        raise ConfigError(f"linear probe: the training labels hold {len(present)} class(es); a probe needs at least 2")
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=max_iter).fit((x - mean) / std, y)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    bias = torch.full((num_classes,), -1e4, dtype=torch.float64)  # classes absent from training are never predicted
    coef, intercept = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
    if len(present) == 2:  # scikit-learn stores one row for a binary problem: class 1 vs class 0
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    classes = torch.tensor(model.classes_)
    folded = coef / torch.from_numpy(std)
    weight[classes] = folded
    bias[classes] = intercept - folded @ torch.from_numpy(mean)
    return FrozenHead(weight, bias)


def zeroshot_head(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                  templates: Sequence[str] = DEFAULT_TEMPLATES, logit_scale: float = 100.0) -> FrozenHead:
    """CLIP's zero-shot head: unit class embeddings averaged over templates, unit image features, no bias."""
    from vfm.evaluation.zeroshot_head import zeroshot_classifier

    return FrozenHead(zeroshot_classifier(encode_text, list(classnames), list(templates)), None, normalize=True,
                      logit_scale=logit_scale)


@torch.no_grad()
def encode_all(encode: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict], image_key: str = "image",
               label_key: str = "label", device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) and labels (N,) of every batch."""
    features, labels = [], []
    for batch in batches:
        images = batch[image_key].to(device) if device is not None else batch[image_key]
        features.append(encode(images).float().cpu())
        labels.append(batch[label_key].cpu())
    return torch.cat(features), torch.cat(labels)


def build_head(encoder: nn.Module, kind: str, classnames: Sequence[str], batches: Callable[[], Iterable[dict]] | None,
               templates: Sequence[str] = DEFAULT_TEMPLATES, probe_c: float = 1.0, logit_scale: float | None = None) -> FrozenHead:
    """The task's head for `encoder` at its current (pre-trained) weights: `kind` auto, zeroshot or linear_probe."""
    has_text = callable(getattr(encoder, "encode_text", None))
    if kind == "auto":
        kind = "zeroshot" if has_text else "linear_probe"
    if kind == "zeroshot":
        if not has_text:
            raise ConfigError(f"head.kind: zeroshot needs a model with encode_text(list[str]); {type(encoder).__name__} "
                              "has none (use linear_probe)")
        scale = logit_scale if logit_scale is not None else _model_logit_scale(encoder)
        return zeroshot_head(encoder.encode_text, classnames, templates, scale)
    if kind != "linear_probe":
        raise ConfigError(f"head.kind: got {kind!r}, expected auto, zeroshot or linear_probe")
    if batches is None:
        raise ConfigError("head.kind: linear_probe needs the task's training images (objective.probe_data)")
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    features, labels = encode_all(encoder, batches(), device=device)
    encoder.train(was_training)
    return fit_linear_probe(features, labels, len(classnames), c=probe_c)


def _model_logit_scale(encoder: nn.Module) -> float:
    scale = getattr(encoder, "logit_scale", None)
    if isinstance(scale, torch.Tensor):  # CLIP stores log(scale)
        return float(scale.detach().exp())
    return 100.0 if scale is None else float(math.exp(scale))


__all__ = ["DEFAULT_TEMPLATES", "FrozenHead", "build_head", "encode_all", "fit_linear_probe", "zeroshot_head"]
