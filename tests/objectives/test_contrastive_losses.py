"""CLIP's InfoNCE and SigLIP's sigmoid loss against direct computations on small logits (one process)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vfm.errors import ConfigError
from vfm.objectives.contrastive_losses import check_gather_options, clip_loss, siglip_loss


def features(n=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1),
            F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1))


def direct_infonce(image, text, scale, smoothing):
    """Loops over rows: -(1-e) log p_ii - e/n sum_j log p_ij, both directions, averaged."""
    n = image.shape[0]
    logits = scale * image @ text.T
    total = 0.0
    for direction in (logits, logits.T):
        for i in range(n):
            log_p = direction[i] - torch.logsumexp(direction[i], 0)
            total += -(1 - smoothing) * log_p[i] - smoothing / n * log_p.sum()
    return total / (2 * n)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("local", [False, True])
def test_infonce_matches_the_direct_sum(smoothing, local):
    image, text = features()
    log_scale = torch.tensor(math.log(7.0), dtype=torch.float64)
    got = clip_loss(image, text, log_scale, label_smoothing=smoothing, local_loss=local)
    assert got.item() == pytest.approx(direct_infonce(image, text, 7.0, smoothing).item(), rel=1e-12)


def test_siglip_matches_the_direct_sum():
    image, text = features(n=4)
    t, b = 3.0, -2.0
    expected = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            expected -= math.log(1 / (1 + math.exp(-z * (t * (image[i] @ text[j]).item() + b))))
    got = siglip_loss(image, text, torch.tensor(math.log(t), dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert got.item() == pytest.approx(expected / 4, rel=1e-10)


def test_perfectly_aligned_pairs_give_a_small_loss_and_shuffled_ones_a_large_one():
    image, _ = features(n=6)
    log_scale = torch.tensor(math.log(50.0), dtype=torch.float64)
    aligned, shuffled = clip_loss(image, image, log_scale), clip_loss(image, image.roll(1, 0), log_scale)
    assert aligned.item() < 0.5 < shuffled.item()


def test_gradients_of_the_temperature_and_features_flow():
    image, text = features()
    image.requires_grad_(True)
    log_scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    clip_loss(image, text, log_scale).backward()
    assert image.grad.abs().sum() > 0 and log_scale.grad.abs() > 0


def test_combinations_with_wrong_gradients_are_refused():
    with pytest.raises(ConfigError, match="objective.local_loss: true needs objective.gather_with_grad: true"):
        check_gather_options("infonce", local_loss=True, gather_with_grad=False)
    with pytest.raises(ConfigError, match="objective.loss: sigmoid .* needs objective.gather_with_grad: true"):
        check_gather_options("sigmoid", local_loss=False, gather_with_grad=False)
    check_gather_options("infonce", local_loss=False, gather_with_grad=False)  # exact once scaled: allowed
