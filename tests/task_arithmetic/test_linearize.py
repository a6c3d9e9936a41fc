"""The NTK linearisation: exact at theta0, exact everywhere for an affine model, JVP = finite difference, and a
linearisation point that training never moves."""

from __future__ import annotations

import copy

import torch
from ta_helpers import tiny_vit
from torch import nn

from vfm.task_arithmetic import LinearizedModel, jvp_call


def test_equals_the_model_at_theta0():
    model = tiny_vit(depth=2, num_classes=4)
    x = torch.randn(5, 1, 8, 8)
    linear = LinearizedModel(model)
    with torch.no_grad():
        torch.testing.assert_close(linear(x), model(x), rtol=1e-5, atol=1e-6)


def test_equals_an_affine_model_everywhere():
    # f(x; W, b) = W x + b is affine in (W, b): its Taylor expansion is exact at any theta.
    model = nn.Linear(6, 3)
    linear = LinearizedModel(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 3.0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(linear(x), model(x), rtol=1e-5, atol=1e-5)
    # ... while a model with a non-linearity is not.
    curved = nn.Sequential(nn.Linear(6, 3), nn.Tanh())
    linear_curved = LinearizedModel(curved)
    with torch.no_grad():
        curved[0].weight.add_(1.0)
    assert (linear_curved(x) - curved(x)).abs().max() > 1e-2


def test_jvp_agrees_with_a_float64_central_difference():
    model = tiny_vit(depth=1, num_classes=3).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    point = {k: v.detach().clone() for k, v in model.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in point.items()}
    output, derivative = jvp_call(model, point, tangents, (x,))
    eps = 1e-6

    def at(sign: float) -> torch.Tensor:
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in shifted.named_parameters():
                p.add_(sign * eps * tangents[name])
            return shifted(x)

    finite = (at(1.0) - at(-1.0)) / (2 * eps)
    torch.testing.assert_close(output, model(x))
    torch.testing.assert_close(derivative, finite, rtol=1e-6, atol=1e-7)


def test_the_linearization_point_does_not_move_during_training():
    model = tiny_vit(depth=1, num_classes=3)
    original = copy.deepcopy(model)
    linear = LinearizedModel(model, names=[n for n, _ in model.named_parameters() if ".attn." in n])
    theta0 = {k: v.clone() for k, v in linear.point.tensors().items()}
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if ".attn." in n], lr=1e-2)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(linear(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(theta0[k], v) for k, v in linear.point.tensors().items())
    moved = {n: p.detach() for n, p in model.named_parameters() if n in theta0}
    assert any(not torch.equal(moved[k], theta0[k]) for k in moved)  # training did change theta
    # Recomputed from an untouched copy of the original model: f(theta0) + J(theta0)(theta - theta0).
    tangents = {k: moved[k] - theta0[k] for k in theta0}
    output, derivative = jvp_call(original, dict(original.named_parameters()), tangents, (x,))
    with torch.no_grad():
        torch.testing.assert_close(linear(x), output + derivative, rtol=1e-5, atol=1e-6)
