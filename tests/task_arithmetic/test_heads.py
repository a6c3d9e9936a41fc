"""Frozen heads: a linear probe fitted on features (binary and multi-class), a zero-shot head from a text tower."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vfm.errors import ConfigError
from vfm.task_arithmetic import build_head, fit_linear_probe


def _blobs(num_classes: int, per_class: int = 30, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(num_classes, dim, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator) + 10.0, labels


@pytest.mark.parametrize("num_classes", [2, 4])
def test_linear_probe_matches_scikit_learn(num_classes):
    from sklearn.linear_model import LogisticRegression

    features, labels = _blobs(num_classes)
    head = fit_linear_probe(features, labels, num_classes)
    predicted = head(features).argmax(-1)
    assert (predicted == labels).float().mean() == 1.0
    mean, std = features.double().mean(0), features.double().std(0, unbiased=False) + 1e-6
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(((features.double() - mean) / std).numpy(), labels.numpy())
    probes = features + torch.randn_like(features)
    expected = reference.predict(((probes.double() - mean) / std).numpy())
    assert predicted.dtype == torch.long and (head(probes).argmax(-1).numpy() == expected).all()


class StandInClip(nn.Module):
    """An image tower (a linear map) with a text tower that embeds a class name by a fixed table."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.visual = nn.Linear(4, 3, bias=False)
        self.table = table
        self.logit_scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)  # log(scale), as CLIP stores it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.table[p.split()[-1].strip(".")] for p in prompts])


def test_a_model_with_a_text_tower_gets_a_zero_shot_head():
    table = {"cat": torch.tensor([1.0, 0.0, 0.0]), "dog": torch.tensor([0.0, 2.0, 0.0])}
    model = StandInClip(table)
    head = build_head(model, "auto", ["cat", "dog"], batches=None, templates=["a photo of a {}."])
    torch.testing.assert_close(head.weight, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))  # unit rows
    assert head.logit_scale.item() == pytest.approx(torch.tensor(2.0).exp().item())
    features = torch.tensor([[3.0, 0.1, 5.0], [0.1, 0.2, -4.0]])
    torch.testing.assert_close(head(features), head.logit_scale * F.normalize(features, dim=-1) @ head.weight.T)
    assert head(features).argmax(-1).tolist() == [0, 1]
    with pytest.raises(ConfigError, match="zeroshot needs a model with encode_text"):
        build_head(nn.Linear(4, 3), "zeroshot", ["cat", "dog"], batches=None)


def test_a_model_without_one_gets_a_linear_probe_on_its_features():
    features, labels = _blobs(3, dim=4)
    encoder = nn.Linear(4, 4)
    head = build_head(encoder, "auto", ["a", "b", "c"], batches=lambda: [{"image": features, "label": labels}])
    with torch.no_grad():
        assert (head(encoder(features)).argmax(-1) == labels).all()
    assert head.bias.abs().sum() > 0 and not list(head.parameters())
