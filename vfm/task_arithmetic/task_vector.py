"""Task vectors: tau = theta_finetuned - theta_pretrained over floating-point state entries, with their algebra.

Integer buffers (step counters, index tables) are never part of a vector and `apply_to` leaves them as they are.
Heads are never part either: `from_state_dicts` drops the names the `head` rule selects on both sides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from vfm.errors import CheckpointError, ConfigError
from vfm.task_arithmetic.selectors import detect_family, select_names

FORMAT = "vfm-task-vector-v1"


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def head_names(names: Iterable[str]) -> set[str]:
    """The names the `head` rule selects (empty when the family has no head among them or is unknown)."""
    names = list(names)
    family = detect_family(names)
    if family is None:
        return set()
    try:
        return set(select_names(names, "head", family))
    except ConfigError:
        return set()


def _floating(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


class TaskVector(Mapping[str, torch.Tensor]):
    """A mapping name -> delta tensor, with `rule` (the parameter selection) and `mode` (how it was fine-tuned)."""

    def __init__(self, deltas: Mapping[str, torch.Tensor], rule: str | None = None, mode: str | None = None,
                 task: str | None = None) -> None:
        bad = [k for k, v in deltas.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())]
        if bad:
            raise ConfigError(f"task vector: entries must be floating-point tensors, not {_first(bad)}")
        self.deltas: dict[str, torch.Tensor] = dict(deltas)
        self.rule, self.mode, self.task = rule, mode, task

    # ------------------------------------------------------------------------------------ building
    @classmethod
    def from_state_dicts(cls, pretrained: Mapping[str, Any], finetuned: Mapping[str, Any], rule: str | None = None,
                         mode: str | None = None, task: str | None = None) -> TaskVector:
        """finetuned - pretrained over their floating entries (heads left out), restricted to `rule` when given."""
        pre, fine = _floating(pretrained), _floating(finetuned)
        heads = head_names(pre) | head_names(fine)
        pre = {k: v for k, v in pre.items() if k not in heads}
        fine = {k: v for k, v in fine.items() if k not in heads}
        missing, extra = [k for k in pre if k not in fine], [k for k in fine if k not in pre]
        if missing or extra:
            parts = ([f"missing in the fine-tuned weights: {_first(missing)}"] if missing else []) + (
                [f"not in the pretrained weights: {_first(extra)}"] if extra else [])
            raise CheckpointError(f"task vector: the state dicts have different keys ({'; '.join(parts)})")
        shapes = [k for k in pre if pre[k].shape != fine[k].shape]
        if shapes:
            key = shapes[0]
            raise CheckpointError(f"task vector: shape of {key}: {tuple(pre[key].shape)} pretrained, "
                                  f"{tuple(fine[key].shape)} fine-tuned (+{len(shapes) - 1} more)")
        keys = list(pre) if rule is None else select_names(list(pre), rule, what="state dict")
        deltas = {k: fine[k].detach().float().cpu() - pre[k].detach().float().cpu() for k in keys}
        return cls(deltas, rule, mode, task)

    # ------------------------------------------------------------------------------------ mapping
    def __getitem__(self, key: str) -> torch.Tensor:
        return self.deltas[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.deltas)

    def __len__(self) -> int:
        return len(self.deltas)

    def __repr__(self) -> str:
        return (f"TaskVector({len(self)} tensors, {self.numel():,} elements, rule={self.rule}, mode={self.mode}, "
                f"task={self.task}, norm={self.norm():.4g})")

    def numel(self) -> int:
        """Elements over all tensors."""
        return sum(v.numel() for v in self.deltas.values())

    def nbytes(self) -> int:
        """Bytes over all tensors."""
        return sum(v.numel() * v.element_size() for v in self.deltas.values())

    # ------------------------------------------------------------------------------------ algebra
    def _check_compatible(self, other: TaskVector, op: str) -> None:
        if not isinstance(other, TaskVector):
            raise TypeError(f"task vector {op}: expected a TaskVector, got {type(other).__name__}")
        missing, extra = [k for k in self if k not in other], [k for k in other if k not in self]
        if missing or extra:
            raise ConfigError(f"task vector {op}: different keys (only left: {_first(missing) or 'none'}; "
                              f"only right: {_first(extra) or 'none'})")
        shapes = [k for k in self if self[k].shape != other[k].shape]
        if shapes:
            raise ConfigError(f"task vector {op}: shape of {shapes[0]}: {tuple(self[shapes[0]].shape)} vs "
                              f"{tuple(other[shapes[0]].shape)}")
        if self.mode is not None and other.mode is not None and self.mode != other.mode:
            raise ConfigError(f"task vector {op}: modes differ ({self.mode} vs {other.mode}); vectors of different "
                              "fine-tuning modes live in different function spaces")

    def _combine(self, other: TaskVector, sign: float, op: str) -> TaskVector:
        self._check_compatible(other, op)
        deltas = {k: self[k] + sign * other[k] for k in self}
        return TaskVector(deltas, self.rule if self.rule == other.rule else None, self.mode or other.mode,
                          self.task if self.task == other.task else None)

    def __add__(self, other: TaskVector) -> TaskVector:
        return self._combine(other, 1.0, "+")

    def __radd__(self, other: Any) -> TaskVector:
        if isinstance(other, (int, float)) and other == 0:  # builtin sum() starts from 0
            return self
        return self._combine(other, 1.0, "+")

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self._combine(other, -1.0, "-")

    def __neg__(self) -> TaskVector:
        return TaskVector({k: -v for k, v in self.deltas.items()}, self.rule, self.mode, self.task)

    def __mul__(self, scalar: float) -> TaskVector:
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            raise TypeError(f"task vector *: expected a number, got {type(scalar).__name__}")
        return TaskVector({k: v * float(scalar) for k, v in self.deltas.items()}, self.rule, self.mode, self.task)

    __rmul__ = __mul__

    @staticmethod
    def sum(vectors: Iterable[TaskVector]) -> TaskVector:
        """The left fold of `+` over `vectors` (at least one)."""
        vectors = list(vectors)
        if not vectors:
            raise ConfigError("task vector sum: no vectors given")
        total = vectors[0]
        for vector in vectors[1:]:
            total = total + vector
        return total

    def dot(self, other: TaskVector) -> float:
        """Inner product over all entries (float64)."""
        self._check_compatible(other, "dot")
        return float(sum((self[k].double() * other[k].double()).sum() for k in self))

    def norm(self) -> float:
        """Euclidean norm over all entries (float64)."""
        return math.sqrt(float(sum(v.double().pow(2).sum() for v in self.deltas.values())))

    def cosine(self, other: TaskVector) -> float:
        """Cosine similarity with `other` (0 when either is zero)."""
        denominator = self.norm() * other.norm()
        return self.dot(other) / denominator if denominator > 0 else 0.0

    # ------------------------------------------------------------------------------------ applying
    def apply_to(self, state_dict: Mapping[str, Any], alpha: float = 1.0, strict_keys: bool = True) -> dict[str, Any]:
        """A new state dict: `state_dict` + alpha * tau on this vector's keys, every other entry as it was."""
        missing = [k for k in self if k not in state_dict]
        if missing:
            raise CheckpointError(f"task vector apply_to: {len(missing)} keys are not in the state dict: {_first(missing)}")
        shapes = [k for k in self if state_dict[k].shape != self[k].shape]
        if shapes:
            key = shapes[0]
            raise CheckpointError(f"task vector apply_to: shape of {key}: {tuple(self[key].shape)} in the vector, "
                                  f"{tuple(state_dict[key].shape)} in the state dict")
        if strict_keys:
            # A floating entry the vector does not cover is fine only when the rule left it out on purpose.
            heads = head_names(state_dict)
            uncovered = [k for k in _floating(state_dict) if k not in self and k not in heads]
            if uncovered and self.rule is None:
                raise CheckpointError(f"task vector apply_to: the vector (rule None: every entry) lacks "
                                      f"{len(uncovered)} floating entries of the state dict: {_first(uncovered)} "
                                      "(pass strict_keys=False to leave them unchanged)")
        out = dict(state_dict)
        for key, delta in self.deltas.items():
            base = state_dict[key]
            out[key] = (base.detach().float() + alpha * delta.to(base.device)).to(base.dtype)
        return out

    # ------------------------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write as safetensors with the rule, mode and task in the metadata (atomically)."""
        from safetensors.torch import save

        from vfm.weights import atomic_write

        metadata = {"format": FORMAT, "rule": json.dumps(self.rule), "mode": json.dumps(self.mode),
                    "task": json.dumps(self.task)}
        data = save({k: v.detach().cpu().contiguous() for k, v in self.deltas.items()}, metadata=metadata)
        return atomic_write(path, lambda file: file.write(data))

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        """Read a vector `save` wrote; any other file is a CheckpointError naming it."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: task vector file not found")
        try:
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise CheckpointError(f"{path}: not a task vector (metadata format {metadata.get('format')!r}, "
                                          f"expected {FORMAT!r}; build one with tools/task_arithmetic.py build)")
                deltas = {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118 - safe_open has no iterator
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from error
        try:
            rule, mode, task = (json.loads(metadata[k]) for k in ("rule", "mode", "task"))
        except (KeyError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: task vector metadata is incomplete or malformed ({error})") from error
        return cls(deltas, rule, mode, task)


__all__ = ["FORMAT", "TaskVector", "head_names"]
