"""The reproduction's batched MLP: closed-form NTK Gram and hand-written SGD step against torch.func/autograd."""

from __future__ import annotations

import torch

from vfm.theory.stability.digits_mlp import MLPStack, digits_regression, mlp_ntk_gram
from vfm.theory.stability.ntk import jacobian, ntk_gram
from vfm.theory.stability.problems import SquareLossProblem


def test_closed_form_gram_equals_the_jacobian_gram():
    inputs, targets = digits_regression(6)
    stack = MLPStack.init(2, 64, 5, 10, seed=0, scale=2.0)
    problem = SquareLossProblem(stack.module(1), inputs, targets)
    assert torch.allclose(mlp_ntk_gram(stack, 1, inputs), ntk_gram(jacobian(problem.outputs, problem.theta())), atol=1e-12)


def test_batched_sgd_step_equals_autograd_sgd_on_each_run():
    inputs, targets = digits_regression(20)
    stack = MLPStack.init(2, 64, 7, 10, seed=1)
    batch = torch.stack([inputs[:4], inputs[4:8]]), torch.stack([targets[:4], targets[4:8]])
    expected = []
    for run, eta in enumerate((0.1, 0.3)):
        model = stack.module(run)
        loss = 0.5 * (model(batch[0][run]) - batch[1][run]).pow(2).sum(dim=1).mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        expected.append([p.detach() - eta * g for p, g in zip(model.parameters(), grads, strict=True)])
    stack.sgd_step(*batch, torch.tensor([[0.1 / 4] * 4, [0.3 / 4] * 4], dtype=torch.float64))
    for run in range(2):
        got = [stack.w1[run], stack.b1[run], stack.w2[run], stack.b2[run]]
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, expected[run], strict=True))
