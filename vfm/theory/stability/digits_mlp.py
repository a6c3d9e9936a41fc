"""Many two-layer tanh MLPs f(x) = W2 tanh(W1 x + b1) + b2 trained side by side with SGD on a square loss.

The reproduction trains a grid of (learning rate, batch size) runs on scikit-learn digits; batching R runs into
one set of (R, ...) tensors with hand-written gradients makes a step cost about as much as one small matmul,
and the closed-form NTK Gram makes the exact Gauss-Newton quantities cheap enough to track along training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def digits_regression(count: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` digits (64 pixel features in [0, 1], centred) and one-hot targets (count, 10), float64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(seed))[:count]
    inputs = torch.tensor(digits.data, dtype=torch.float64)[order] / 16.0
    inputs = inputs - inputs.mean(dim=0)  # the mean pixel is one shared direction that would dominate lambda_max
    targets = nn.functional.one_hot(torch.tensor(digits.target)[order], 10).double()
    return inputs, targets


@dataclass
class MLPStack:
    """Parameters of R independent MLPs: w1 (R, W, D), b1 (R, W), w2 (R, K, W), b2 (R, K)."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    @classmethod
    def init(cls, runs: int, in_dim: int, width: int, out_dim: int, seed: int, scale: float = 1.0) -> MLPStack:
        """PyTorch's default nn.Linear init (uniform, bound 1/sqrt(fan_in)) times `scale`, the same for every run."""
        generator = torch.Generator().manual_seed(seed)

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            one = (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale / math.sqrt(fan_in)
            return one.expand(runs, *shape).clone()

        return cls(uniform(width, in_dim, fan_in=in_dim), uniform(width, fan_in=in_dim),
                   uniform(out_dim, width, fan_in=width), uniform(out_dim, fan_in=width))

    def select(self, index: list[int]) -> MLPStack:
        """The runs in `index`, copied."""
        return MLPStack(*(t[index].clone() for t in (self.w1, self.b1, self.w2, self.b2)))

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """tanh(W1 x + b1): inputs (R, N, D) or (N, D) -> (R, N, W)."""
        if inputs.ndim == 2:
            inputs = inputs.expand(self.w1.shape[0], *inputs.shape)
        return torch.tanh(torch.baddbmm(self.b1[:, None, :], inputs, self.w1.transpose(1, 2)))

    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """f(x): (R, N, K)."""
        return torch.baddbmm(self.b2[:, None, :], self.hidden(inputs), self.w2.transpose(1, 2))

    def losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(1/2N) sum_i ||f(x_i) - y_i||^2 per run: (R,)."""
        return 0.5 * (self.outputs(inputs) - targets).pow(2).sum(dim=2).mean(dim=1)

    def sgd_step(self, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> None:
        """theta -= grad of sum_b weights[r, b] (1/2) ||f - y||^2 per run: inputs (R, B, D), weights (R, B).

        weights = eta / B_r on a run's first B_r rows and 0 on padding let runs of different batch sizes (and
        full-batch GD) share one step.
        """
        hidden = self.hidden(inputs)
        delta = (torch.baddbmm(self.b2[:, None, :], hidden, self.w2.transpose(1, 2)) - targets) * weights[:, :, None]
        back = torch.bmm(delta, self.w2) * (1 - hidden**2)  # (R, B, W)
        self.w2 -= torch.bmm(delta.transpose(1, 2), hidden)
        self.b2 -= delta.sum(dim=1)
        self.w1 -= torch.bmm(back.transpose(1, 2), inputs)
        self.b1 -= back.sum(dim=1)

    def module(self, run: int) -> nn.Module:
        """Run `run` as an nn.Sequential (for the generic estimators)."""
        width, in_dim = self.w1.shape[1:]
        model = nn.Sequential(nn.Linear(in_dim, width), nn.Tanh(), nn.Linear(width, self.w2.shape[1])).double()
        with torch.no_grad():
            for layer, weight, bias in ((model[0], self.w1, self.b1), (model[2], self.w2, self.b2)):
                layer.weight.copy_(weight[run])
                layer.bias.copy_(bias[run])
        return model


def mlp_ntk_gram(stack: MLPStack, run: int, inputs: torch.Tensor) -> torch.Tensor:
    """K = J J^T (N K, N K), sample-major, of run `run` in closed form (no Jacobian is formed).

    K[(i,c), (j,d)] = [c = d] (h_i . h_j + 1) + sum_u W2[c,u] W2[d,u] a_iu a_ju (x_i . x_j + 1), a = 1 - h^2.
    """
    hidden = stack.hidden(inputs)[run]  # (N, W)
    count, outputs = inputs.shape[0], stack.w2.shape[1]
    slope = 1 - hidden**2
    weighted = stack.w2[run][None, :, :] * slope[:, None, :]  # (N, K, W)
    first = torch.einsum("icu,jdu->icjd", weighted, weighted) * (inputs @ inputs.T + 1)[:, None, :, None]
    second = torch.kron(hidden @ hidden.T + 1, torch.eye(outputs, dtype=hidden.dtype)).reshape(count, outputs, count, outputs)
    return (first + second).reshape(count * outputs, count * outputs)
