"""The evaluations of task arithmetic: single-task accuracy, addition, negation, weight disentanglement, kernel gap.

An `Editor` evaluates edited encoders theta0 + sum_k c_k tau_k on the tasks' data, either as they are
(non-linear) or linearised around theta0. Linearised features are affine in the coefficients,
f(x; theta0) + sum_k c_k J tau_k, so f(x; theta0) and each J tau_k are computed once and every grid point after
that is free; a non-linear edit is a forward pass per coefficient vector.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.task_arithmetic.linearize import jvp_call
from vfm.task_arithmetic.task_vector import TaskVector


@dataclasses.dataclass
class TaskData:
    """A task's frozen head and its evaluation splits (each an iterable of {"image", "label"} batches)."""

    name: str
    head: nn.Module
    splits: dict[str, Iterable[dict[str, Any]]]

    @property
    def num_classes(self) -> int:
        """Classes of the head (a FrozenHead's, or the rows of any head's `weight`)."""
        classes = getattr(self.head, "num_classes", None)
        if classes is None:
            weight = getattr(self.head, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ConfigError(f"task {self.name!r}: its head has neither num_classes nor a weight matrix")
            classes = weight.shape[0]
        return int(classes)


def default_alphas(count: int = 21, low: float = 0.0, high: float = 1.0) -> list[float]:
    """The paper's grid: linspace(0, 1, 21)."""
    return [round(float(a), 10) for a in torch.linspace(low, high, count, dtype=torch.float64).tolist()]


class Editor:
    """Accuracy and predictions of theta0 + sum_k coefs[k] * vectors[k] on each task, non-linear or linearised."""

    def __init__(self, encoder: nn.Module, pretrained: Mapping[str, torch.Tensor], vectors: Sequence[TaskVector],
                 tasks: Mapping[str, TaskData], linearized: bool, max_batches: int | None = None,
                 image_key: str = "image", label_key: str = "label") -> None:
        self.encoder, self.vectors, self.tasks, self.linearized = encoder, list(vectors), dict(tasks), linearized
        self.pretrained = {k: v.detach().clone() for k, v in pretrained.items()}
        self.max_batches, self.image_key, self.label_key = max_batches, image_key, label_key
        self.device = next(encoder.parameters()).device
        for vector in self.vectors:
            vector.apply_to(self.pretrained, 0.0, strict_keys=False)  # keys and shapes fit: an error names them
        self._cache: dict[tuple, Any] = {}
        self.forward_passes = 0
        encoder.eval()

    # ---------------------------------------------------------------------------------- data
    def _batches(self, task: str, split: str) -> list[dict[str, Any]]:
        key = ("batches", task, split)
        if key not in self._cache:
            if task not in self.tasks:
                raise ConfigError(f"evaluation: unknown task {task!r}; have {', '.join(self.tasks)}")
            splits = self.tasks[task].splits
            if split not in splits:
                raise ConfigError(f"evaluation: task {task!r} has no {split!r} split (has {', '.join(splits)})")
            batches = splits[split]
            self._cache[key] = list(itertools.islice(batches, self.max_batches) if self.max_batches else batches)
        return self._cache[key]

    def labels(self, task: str, split: str) -> torch.Tensor:
        """Labels (N,) of the examples used."""
        return torch.cat([b[self.label_key] for b in self._batches(task, split)]).cpu()

    def num_examples(self, task: str, split: str) -> int:
        """Examples actually used (after `max_batches`)."""
        return int(self.labels(task, split).numel())

    # ---------------------------------------------------------------------------------- features
    def _load(self, coefs: Sequence[float]) -> None:
        state = dict(self.pretrained)
        for vector, coef in zip(self.vectors, coefs, strict=True):
            if coef != 0.0:
                state = vector.apply_to(state, coef, strict_keys=False)
        self.encoder.load_state_dict(state, strict=False)

    @torch.no_grad()
    def _nonlinear_features(self, task: str, split: str, coefs: Sequence[float]) -> torch.Tensor:
        self._load(coefs)
        self.forward_passes += 1
        return torch.cat([self.encoder(b[self.image_key].to(self.device)).float() for b in self._batches(task, split)])

    def _linear_parts(self, task: str, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x; theta0), J(theta0) tau_index) over the split, cached."""
        key = ("jvp", task, split, index)
        if key not in self._cache:
            self._load([0.0] * len(self.vectors))
            vector = self.vectors[index]
            tangents = {k: v.to(self.device) for k, v in vector.items()}
            point = {k: self.pretrained[k].to(self.device) for k in vector}
            outputs, derivatives = [], []
            with torch.no_grad():
                for batch in self._batches(task, split):
                    output, derivative = jvp_call(self.encoder, point, tangents, (batch[self.image_key].to(self.device),))
                    outputs.append(output.float())
                    derivatives.append(derivative.float())
            self.forward_passes += 1
            self._cache[key] = (torch.cat(outputs), torch.cat(derivatives))
        return self._cache[key]

    def features(self, task: str, split: str, coefs: Sequence[float]) -> torch.Tensor:
        """Encoder features (N, D) of the edited model on the split."""
        if len(coefs) != len(self.vectors):
            raise ConfigError(f"evaluation: {len(coefs)} coefficients for {len(self.vectors)} task vectors")
        if not self.linearized or not self.vectors:
            return self._nonlinear_features(task, split, coefs)
        base = self._linear_parts(task, split, 0)[0]
        total = base.clone()
        for index, coef in enumerate(coefs):
            if coef != 0.0:
                total += coef * self._linear_parts(task, split, index)[1]
        return total

    def predictions(self, task: str, split: str, coefs: Sequence[float]) -> torch.Tensor:
        """Predicted classes (N,) under the task's head, cached per coefficient vector."""
        key = ("pred", task, split, tuple(round(float(c), 12) for c in coefs))
        if key not in self._cache:
            with torch.no_grad():
                logits = self.tasks[task].head.to(self.device)(self.features(task, split, coefs))
            self._cache[key] = logits.argmax(dim=-1).cpu()
        return self._cache[key]

    def accuracy(self, task: str, split: str, coefs: Sequence[float]) -> float:
        """Accuracy of the edited model on the split."""
        return float((self.predictions(task, split, coefs) == self.labels(task, split)).float().mean())

    def index_of(self, task: str) -> int:
        """The index of the vector fine-tuned on `task`."""
        found = [i for i, v in enumerate(self.vectors) if v.task == task]
        if len(found) != 1:
            raise ConfigError(f"evaluation: {len(found)} task vectors record task {task!r}; expected exactly one "
                              f"(vectors' tasks: {[v.task for v in self.vectors]})")
        return found[0]

    def unit(self, index: int, alpha: float = 1.0) -> list[float]:
        """Coefficients alpha on vector `index`, zero elsewhere."""
        return [alpha if i == index else 0.0 for i in range(len(self.vectors))]


# -------------------------------------------------------------------------------------------- evaluations
def single_task(editor: Editor, splits: Sequence[str] = ("val", "test")) -> dict[str, dict[str, float]]:
    """Accuracy of each fine-tuned model theta0 + tau_t on its own task, and of theta0 (the pre-trained model)."""
    results = {}
    for index, vector in enumerate(editor.vectors):
        row = {split: editor.accuracy(vector.task, split, editor.unit(index)) for split in splits}
        row.update({f"pretrained_{split}": editor.accuracy(vector.task, split, editor.unit(index, 0.0)) for split in splits})
        results[vector.task] = row
    return results


def task_addition(editor: Editor, single: Mapping[str, Mapping[str, float]], alphas: Sequence[float] | None = None,
                  select_split: str = "val", report_split: str = "test") -> dict[str, Any]:
    """theta0 + alpha * sum_t tau_t with one shared alpha maximising mean normalised `select_split` accuracy; absolute
    and normalised accuracy (by the same mode's single-task accuracy) on `report_split`. Ties pick the smaller alpha."""
    alphas = list(alphas if alphas is not None else default_alphas())
    tasks = [v.task for v in editor.vectors]
    grid = []
    for alpha in alphas:
        coefs = [alpha] * len(tasks)
        accuracy = {t: editor.accuracy(t, select_split, coefs) for t in tasks}
        normalized = {t: accuracy[t] / max(single[t][select_split], 1e-12) for t in tasks}
        grid.append({"alpha": alpha, "absolute": _mean(accuracy.values()), "normalized": _mean(normalized.values()),
                     "per_task": accuracy})
    best = max(range(len(grid)), key=lambda i: (grid[i]["normalized"], -i))
    alpha = grid[best]["alpha"]
    coefs = [alpha] * len(tasks)
    test = {t: editor.accuracy(t, report_split, coefs) for t in tasks}
    normalized = {t: test[t] / max(single[t][report_split], 1e-12) for t in tasks}
    return {"alpha": alpha, "absolute": _mean(test.values()), "normalized": _mean(normalized.values()),
            "per_task": test, "per_task_normalized": normalized, "grid": grid, "select_split": select_split,
            "report_split": report_split}


def select_negation_alpha(alphas: Sequence[float], target: Sequence[float], control: Sequence[float],
                          pretrained_control: float, threshold: float) -> int:
    """The index of the alpha with the lowest target accuracy among those keeping control >= threshold *
    pretrained_control (ties: the smaller alpha); alpha 0 (the pre-trained model) always qualifies when it is on
    the grid. No qualifying alpha is a ConfigError."""
    allowed = [i for i in range(len(alphas)) if control[i] >= threshold * pretrained_control - 1e-12]
    if not allowed:
        raise ConfigError(f"negation: no alpha keeps the control accuracy >= {threshold} x {pretrained_control:.4f}; "
                          "put 0 on the alpha grid or lower the threshold")
    return min(allowed, key=lambda i: (target[i], alphas[i]))


def task_negation(editor: Editor, target: str, control: str, alphas: Sequence[float] | None = None,
                  threshold: float = 0.95, select_split: str = "val", report_split: str = "test") -> dict[str, Any]:
    """theta0 - alpha * tau_target: minimise target accuracy while control accuracy stays >= threshold x the
    pre-trained model's (chosen on `select_split`, reported on `report_split`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"negation: threshold {threshold}, expected a fraction in [0, 1]")
    alphas = list(alphas if alphas is not None else default_alphas())
    index = editor.index_of(target)
    zero = editor.unit(index, 0.0)
    pretrained_control = editor.accuracy(control, select_split, zero)
    targets = [editor.accuracy(target, select_split, editor.unit(index, -a)) for a in alphas]
    controls = [editor.accuracy(control, select_split, editor.unit(index, -a)) for a in alphas]
    chosen = select_negation_alpha(alphas, targets, controls, pretrained_control, threshold)
    alpha = alphas[chosen]
    coefs = editor.unit(index, -alpha)
    return {"target": target, "control": control, "alpha": alpha, "threshold": threshold,
            "target_accuracy": editor.accuracy(target, report_split, coefs),
            "control_accuracy": editor.accuracy(control, report_split, coefs),
            "pretrained_target_accuracy": editor.accuracy(target, report_split, zero),
            "pretrained_control_accuracy": editor.accuracy(control, report_split, zero),
            "grid": [{"alpha": a, "target": t, "control": c} for a, t, c in zip(alphas, targets, controls, strict=True)]}


def disentanglement(editor: Editor, first: str, second: str, alphas: Sequence[float], split: str = "test") -> dict[str, Any]:
    """Ortiz-Jimenez et al.'s weight-disentanglement error over the grid alphas x alphas:
    xi(a1, a2) = sum_t mean_{x in D_t} 1[pred_t(theta0 + a_t tau_t) != pred_t(theta0 + a1 tau1 + a2 tau2)],
    each mean over the examples of D_t actually used."""
    indices = [editor.index_of(first), editor.index_of(second)]
    tasks = [first, second]
    alphas = list(alphas)
    matrix = torch.zeros(len(alphas), len(alphas), dtype=torch.float64)
    for i, a1 in enumerate(alphas):
        for j, a2 in enumerate(alphas):
            both = [0.0] * len(editor.vectors)
            both[indices[0]], both[indices[1]] = a1, a2
            error = 0.0
            for slot, (task, alpha) in enumerate(zip(tasks, (a1, a2), strict=True)):
                alone = editor.unit(indices[slot], alpha)
                disagree = editor.predictions(task, split, alone) != editor.predictions(task, split, both)
                error += float(disagree.double().sum()) / disagree.numel()
            matrix[i, j] = error
    return {"tasks": tasks, "alphas": alphas, "matrix": matrix.tolist(), "split": split,
            "examples": {t: editor.num_examples(t, split) for t in tasks},
            "mean_error": float(matrix.mean()), "max_error": float(matrix.max())}


def kernel_gap(nonlinear: Editor, linearized: Editor, split: str = "test") -> dict[str, dict[str, float]]:
    """Per task: accuracy of theta0 + tau non-linearly and post-hoc linearised, their gap, and the non-linear
    advantage (gap / (1 - 1/C))."""
    if nonlinear.linearized or not linearized.linearized:
        raise ConfigError("kernel_gap: expected a non-linear editor and a linearised one, in that order")
    results = {}
    for index, vector in enumerate(nonlinear.vectors):
        task = vector.task
        acc_nonlinear = nonlinear.accuracy(task, split, nonlinear.unit(index))
        acc_linear = linearized.accuracy(task, split, linearized.unit(index))
        chance = 1.0 / nonlinear.tasks[task].num_classes
        results[task] = {"nonlinear": acc_nonlinear, "linearized": acc_linear, "gap": acc_nonlinear - acc_linear,
                         "nonlinear_advantage": (acc_nonlinear - acc_linear) / (1.0 - chance)}
    return results


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


__all__ = ["Editor", "TaskData", "default_alphas", "disentanglement", "kernel_gap", "select_negation_alpha",
           "single_task", "task_addition", "task_negation"]
