"""A module's trainable parameters as one flat vector, and calls of the module at any such vector."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call


class FlatParameters:
    """The named trainable parameters of `module`, concatenated; `call(theta, *args)` runs the module at theta."""

    def __init__(self, module: nn.Module, names: list[str] | None = None) -> None:
        named = dict(module.named_parameters())
        self.names = names if names is not None else [n for n, p in named.items() if p.requires_grad]
        if not self.names:
            raise ValueError(f"{type(module).__name__}: no trainable parameters to flatten")
        self.module = module
        self.shapes = [named[n].shape for n in self.names]
        self.numels = [named[n].numel() for n in self.names]

    @property
    def dim(self) -> int:
        """Number of scalars P."""
        return sum(self.numels)

    def vector(self) -> torch.Tensor:
        """The current parameters, detached, as a (P,) tensor."""
        named = dict(self.module.named_parameters())
        return torch.cat([named[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a (P,) vector into the module's named shapes (views, so gradients flow back to theta)."""
        pieces = torch.split(theta, self.numels)
        return {n: piece.view(shape) for n, piece, shape in zip(self.names, pieces, self.shapes, strict=True)}

    def call(self, theta: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """`module(*args, **kwargs)` with its parameters replaced by theta (buffers stay the module's)."""
        return functional_call(self.module, self.unflatten(theta), args, kwargs)

    def assign(self, theta: torch.Tensor) -> None:
        """Copy theta into the module's parameters in place."""
        named = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, value in self.unflatten(theta).items():
                named[n].copy_(value)
