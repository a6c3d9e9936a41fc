"""Contrastive image-text losses over features gathered from every rank: CLIP's InfoNCE and SigLIP's sigmoid loss.

Gathering (see `vfm.dist.all_gather` for the gradient convention): with `gather_with_grad` the gathered features
carry gradients back to the rank that computed them, so every rank's gradient is exact and DDP's average equals
the single-process gradient over the global batch. Without it, the other ranks' rows are constants and only the
full loss (`local_loss=False`) is exact, once scaled by the world size (open_clip leaves it world_size times too
small); a local loss without gradient through the gather would drop terms, so it is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vfm.dist import get_rank, get_world_size
from vfm.dist.collectives import all_gather
from vfm.errors import ConfigError


def check_gather_options(loss: str, local_loss: bool, gather_with_grad: bool) -> None:
    """Refuse the combinations whose gradients would be wrong (not merely scaled)."""
    if not gather_with_grad and (local_loss or loss == "sigmoid"):
        what = "objective.local_loss: true" if local_loss else "objective.loss: sigmoid (each rank scores its own images)"
        raise ConfigError(f"{what} needs objective.gather_with_grad: true: without gradients through the gather the "
                          "other ranks' terms of this rank's features are lost")


def gather_features(features: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, int]:
    """(every rank's rows in rank order, the offset of this rank's rows); this rank's rows keep their gradient."""
    if get_world_size() == 1:
        return features, 0
    sizes = all_gather(torch.tensor([features.shape[0]], device=features.device)).tolist()
    offset = sum(sizes[: get_rank()])
    if with_grad:
        return all_gather(features), offset
    gathered = all_gather(features.detach())
    return torch.cat([gathered[:offset], features, gathered[offset + features.shape[0]:]]), offset


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) are upcast for the softmax; float64 ones stay float64."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, label_smoothing: float = 0.0,
              local_loss: bool = False, gather_with_grad: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: mean of image->text and text->image cross-entropy.

    `image`, `text`: (n, d) normalised features of this rank (row i of each is a pair); `logit_scale`: the
    log-temperature parameter (logits are exp(logit_scale) * cosine).
    """
    check_gather_options("infonce", local_loss, gather_with_grad)
    all_image, offset = gather_features(image, gather_with_grad)
    all_text, _ = gather_features(text, gather_with_grad)

    def infonce(scale: torch.Tensor) -> torch.Tensor:
        if local_loss:
            logits_image, logits_text = scale.exp() * image @ all_text.T, scale.exp() * text @ all_image.T
            labels = torch.arange(image.shape[0], device=image.device) + offset
        else:
            logits_image = scale.exp() * all_image @ all_text.T
            logits_text = logits_image.T
            labels = torch.arange(all_image.shape[0], device=image.device)
        return (F.cross_entropy(_at_least_fp32(logits_image), labels, label_smoothing=label_smoothing)
                + F.cross_entropy(_at_least_fp32(logits_text), labels, label_smoothing=label_smoothing)) / 2

    loss = infonce(logit_scale)
    if not local_loss and not gather_with_grad and get_world_size() > 1:
        # Each rank's gradient reaches only its own rows: the feature gradient x world size makes DDP's average
        # the full gradient; the temperature's gradient is already whole on every rank and stays as it is.
        features_only = infonce(logit_scale.detach())
        loss = loss + (get_world_size() - 1) * (features_only - features_only.detach())
    return loss


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: -(1/n) sum_i sum_j log sigmoid(z_ij (t x_i . y_j + b)), this rank's images against all texts.

    z_ij = 1 for a matching pair, -1 otherwise; n is this rank's number of images, so the mean over ranks is the
    single-process loss over the global batch (the paper's normalisation by the mini-batch size).
    """
    all_text, offset = gather_features(text, with_grad=True)
    logits = _at_least_fp32(logit_scale.exp() * image @ all_text.T + logit_bias)
    signs = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]
