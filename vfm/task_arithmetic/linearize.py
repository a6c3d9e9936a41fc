"""NTK linearisation: f_lin(x; theta) = f(x; theta0) + J_theta f(x; theta0) (theta - theta0), through torch.func.jvp.

theta0 is a set of frozen buffers taken once, when the linearisation is built; nothing moves it afterwards (the
official attention-only code re-copied it after every forward, which is not NTK fine-tuning at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from vfm.errors import ConfigError

_SEPARATOR = "__"  # buffer names cannot hold dots: blocks.0.attn.qkv.weight -> blocks__0__attn__qkv__weight


def _add(primal: Any, tangent: Any) -> Any:
    if isinstance(primal, torch.Tensor):
        return primal + tangent
    if isinstance(primal, dict):
        return {k: _add(primal[k], tangent[k]) for k in primal}
    if isinstance(primal, (tuple, list)):
        return type(primal)(_add(p, t) for p, t in zip(primal, tangent, strict=True))
    return primal


class LinearizationPoint(nn.Module):
    """Frozen copies theta0 of some parameters of a model, as buffers (so they travel with `.to()` and state dicts)."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        super().__init__()
        params = dict(model.named_parameters())
        self.names = list(names)
        unknown = [n for n in self.names if n not in params]
        if unknown:
            raise ConfigError(f"linearization: {len(unknown)} names are not parameters of the model (e.g. {unknown[0]!r})")
        if not self.names:
            raise ConfigError("linearization: no parameter to linearise over")
        clashing = [n for n in self.names if _SEPARATOR in n]
        if clashing:
            raise ConfigError(f"linearization: parameter name {clashing[0]!r} contains {_SEPARATOR!r}")
        for name in self.names:
            self.register_buffer(self.buffer_name(name), params[name].detach().clone())

    @staticmethod
    def buffer_name(name: str) -> str:
        """The buffer that holds parameter `name`'s theta0."""
        return name.replace(".", _SEPARATOR)

    def tensors(self) -> dict[str, torch.Tensor]:
        """theta0 by parameter name."""
        return {name: getattr(self, self.buffer_name(name)) for name in self.names}


def jvp_call(model: nn.Module, point: Mapping[str, torch.Tensor], tangents: Mapping[str, torch.Tensor], args: tuple,
             kwargs: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(f(x; theta0), J(theta0) t): the model's output at `point` and its derivative along `tangents` (same keys).

    Parameters not in `tangents` keep their current values. Attention runs on the math kernel: the fused CPU and
    flash kernels have no forward-mode rule.
    """
    kwargs = dict(kwargs or {})
    primals = {name: point[name] for name in tangents}

    def function(parameters: dict[str, torch.Tensor]) -> Any:
        return functional_call(model, parameters, args, kwargs, strict=False)

    with sdpa_kernel([SDPBackend.MATH]):
        return jvp(function, (primals,), (dict(tangents),))


def linearized_call(model: nn.Module, point: Mapping[str, torch.Tensor], args: tuple,
                    kwargs: Mapping[str, Any] | None = None) -> Any:
    """f(x; theta0) + J(theta0)(theta - theta0), theta the model's current parameters named in `point`.

    Gradients reach those parameters through the tangent theta - theta0; theta0 itself never moves.
    """
    params = dict(model.named_parameters())
    tangents = {name: params[name] - theta0 for name, theta0 in point.items()}
    output, tangent_output = jvp_call(model, point, tangents, args, kwargs)
    return _add(output, tangent_output)


class LinearizedModel(nn.Module):
    """The first-order Taylor expansion of `model` around its current parameters `names` (default: those that
    require grad); `forward` is f(x; theta0) + J(theta0)(theta - theta0) and trains `model`'s own parameters."""

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        super().__init__()
        self.model = model
        if names is None:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.point = LinearizationPoint(model, names)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return linearized_call(self.model, self.point.tensors(), args, kwargs)

    def point_state_keys(self, prefix: str = "") -> list[str]:
        """State-dict keys of theta0 (what a checkpoint filter leaves out of step checkpoints)."""
        return [f"{prefix}point.{LinearizationPoint.buffer_name(n)}" for n in self.point.names]


__all__ = ["LinearizationPoint", "LinearizedModel", "jvp_call", "linearized_call"]
