"""The evaluations on models whose answers are known: disjoint task supports (xi = 0), shared ones (xi > 0),
an affine encoder (linearised = non-linear), and the negation threshold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.task_arithmetic import (
    Editor,
    FrozenHead,
    TaskData,
    TaskVector,
    default_alphas,
    disentanglement,
    kernel_gap,
    select_negation_alpha,
    single_task,
    task_addition,
    task_negation,
)


def _data(coords: list[int], seed: int, n: int = 48) -> list[dict]:
    """Inputs supported on `coords` of R^4 (exact zeros elsewhere), in two batches."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 4)
    images[:, coords] = torch.randn(n, len(coords), generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return [{"image": images[:24], "label": labels[:24]}, {"image": images[24:], "label": labels[24:]}]


def _problem(shared: bool, affine: bool = False) -> tuple[nn.Module, dict, list[TaskVector], dict[str, TaskData]]:
    torch.manual_seed(0)
    encoder = nn.Linear(4, 6) if affine else nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    prefix = "" if affine else "0."
    theta0 = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    deltas = []
    for columns in ([0, 1], [2, 3]):
        delta = torch.zeros(6, 4)
        delta[:, columns] = 2.0 * torch.randn(6, len(columns))
        if shared:
            delta[:, 0] += 2.0 * torch.randn(6)  # both tasks move the weights that read coordinate 0
        deltas.append(delta)
    vectors = [TaskVector({f"{prefix}weight": d}, mode="standard", task=t) for d, t in zip(deltas, ("a", "b"), strict=True)]
    tasks = {name: TaskData(name, FrozenHead(torch.randn(3, 6), torch.randn(3)),
                            {"val": _data(coords, seed), "test": _data(coords, seed + 10)})
             for name, coords, seed in (("a", [0, 1], 1), ("b", [2, 3], 2), ("control", [0, 1, 2, 3], 3))}
    return encoder, theta0, vectors, tasks


@pytest.mark.parametrize("linearized", [False, True])
def test_disentanglement_error_is_zero_for_disjoint_task_supports(linearized):
    editor = Editor(*_problem(shared=False), linearized=linearized)
    result = disentanglement(editor, "a", "b", default_alphas(7, -2, 2))
    assert result["max_error"] == 0.0 and result["examples"] == {"a": 48, "b": 48}


def test_disentanglement_error_is_positive_for_an_entangled_pair_and_grows_with_alpha():
    editor = Editor(*_problem(shared=True), linearized=False, max_batches=1)
    alphas = default_alphas(7, -3, 3)
    result = disentanglement(editor, "a", "b", alphas)
    matrix = torch.tensor(result["matrix"], dtype=torch.float64)
    assert result["examples"] == {"a": 24, "b": 24}  # normalised by the examples used: 1 batch of 24 each
    assert matrix[3, 3] == 0.0 and result["max_error"] > 0.2  # alpha (0, 0) is the pre-trained model on both
    # Each rate is (disagreements) / 24, not / 48 (the loader's full length): xi * 24 is a whole number.
    assert result["max_error"] <= 2.0 and all(abs(24 * x - round(24 * x)) < 1e-9 for x in matrix.flatten().tolist())
    rows, columns = torch.meshgrid(torch.arange(7) - 3, torch.arange(7) - 3, indexing="ij")
    ring = torch.maximum(rows.abs(), columns.abs())
    assert matrix[ring == 3].mean() > matrix[ring <= 1].mean() > 0  # the error grows with max(|alpha1|, |alpha2|)


def test_an_affine_encoder_linearises_exactly():
    problem = _problem(shared=True, affine=True)
    nonlinear, linear = Editor(*problem, linearized=False), Editor(*problem, linearized=True)
    for coefs in ([1.0, 0.0], [0.5, -1.5], [2.0, 2.0]):
        torch.testing.assert_close(linear.features("a", "test", coefs), nonlinear.features("a", "test", coefs))
    gap = kernel_gap(nonlinear, linear)
    assert all(row["gap"] == 0.0 for row in gap.values())
    curved = _problem(shared=True)
    assert linear.forward_passes <= 3 * 2  # f(theta0) and J tau once per (task, split, vector), whatever the grid
    difference = Editor(*curved, linearized=True).features("a", "test", [2.0, 0.0]) - Editor(
        *curved, linearized=False).features("a", "test", [2.0, 0.0])
    assert difference.abs().max() > 1e-2  # tanh: the expansion is only first-order


def test_negation_alpha_honours_the_control_threshold():
    alphas, target, control = [0.0, 0.5, 1.0], [0.9, 0.5, 0.1], [0.80, 0.78, 0.50]
    assert select_negation_alpha(alphas, target, control, 0.80, 0.95) == 1  # 1.0 would drop control below 0.76
    assert select_negation_alpha(alphas, target, control, 0.80, 0.0) == 2
    assert select_negation_alpha(alphas, target, control, 0.80, 0.99) == 0
    assert select_negation_alpha(alphas, [0.5, 0.5, 0.5], control, 0.80, 0.0) == 0  # ties: the smaller alpha
    with pytest.raises(ConfigError, match="no alpha keeps the control accuracy"):
        select_negation_alpha([0.5, 1.0], target[1:], control[1:], 0.80, 0.99)
    editor = Editor(*_problem(shared=True), linearized=False)
    for threshold in (0.0, 0.9, 1.0):
        result = task_negation(editor, "a", "control", default_alphas(11), threshold)
        row = next(r for r in result["grid"] if r["alpha"] == result["alpha"])
        assert row["control"] >= threshold * result["grid"][0]["control"] - 1e-12
        allowed = [r["target"] for r in result["grid"] if r["control"] >= threshold * result["grid"][0]["control"] - 1e-12]
        assert row["target"] == min(allowed)


def test_addition_chooses_alpha_on_validation_and_reports_test():
    editor = Editor(*_problem(shared=False), linearized=False)
    single = single_task(editor)
    result = task_addition(editor, single, default_alphas(11))
    best = max(result["grid"], key=lambda r: r["normalized"])
    assert result["alpha"] == best["alpha"]
    assert result["per_task"]["a"] == editor.accuracy("a", "test", [result["alpha"]] * 2)
    assert result["normalized"] == pytest.approx(sum(result["per_task"][t] / single[t]["test"] for t in "ab") / 2)
    # Disjoint supports: adding both vectors at alpha 1 is each fine-tuned model on its own task.
    assert editor.accuracy("a", "test", [1.0, 1.0]) == single["a"]["test"]
