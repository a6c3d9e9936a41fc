"""Unit tests for vfm/evaluation/accuracy.py: top-k accuracy on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from vfm.evaluation.accuracy import AccuracyEvaluator
from vfm.registry import EVALUATORS

# Five samples, four classes; the rank of the true label in each row is noted.
LOGITS = torch.tensor(
    [
        [0.9, 0.1, 0.0, 0.0],  # label 0: rank 1
        [0.1, 0.2, 0.7, 0.0],  # label 1: rank 2
        [0.5, 0.3, 0.15, 0.1],  # label 2: rank 3
        [0.0, 0.0, 0.2, 0.8],  # label 3: rank 1
        [0.4, 0.3, 0.2, 0.1],  # label 3: rank 4
    ]
)
LABELS = torch.tensor([0, 1, 2, 3, 3])


def test_top1_and_top2_and_top3():
    evaluator = AccuracyEvaluator(topk=[1, 2, 3])
    evaluator.process({"label": LABELS}, {"logits": LOGITS})
    metrics = evaluator.compute()
    assert metrics.keys() == {"accuracy", "top2_accuracy", "top3_accuracy"}
    assert metrics["accuracy"] == pytest.approx(2 / 5)
    assert metrics["top2_accuracy"] == pytest.approx(3 / 5)
    assert metrics["top3_accuracy"] == pytest.approx(4 / 5)


def test_top5_with_fewer_classes_counts_everything():
    evaluator = AccuracyEvaluator(topk=[1, 5])
    evaluator.process({"label": LABELS}, LOGITS)  # bare logits work too
    assert evaluator.compute() == pytest.approx({"accuracy": 0.4, "top5_accuracy": 1.0})


def test_accumulates_over_batches_and_resets():
    evaluator = EVALUATORS.build({"type": "accuracy", "topk": [1, 2], "label_key": "target"}, "eval.evaluators.0")
    evaluator.process({"target": LABELS[:2]}, {"logits": LOGITS[:2]})  # 1/2 top-1, 2/2 top-2
    evaluator.process({"target": LABELS[2:]}, {"logits": LOGITS[2:]})  # 1/3 top-1, 1/3 top-2
    assert evaluator.compute() == pytest.approx({"accuracy": 2 / 5, "top2_accuracy": 3 / 5})
    evaluator.reset()
    evaluator.process({"target": torch.tensor([2])}, {"logits": torch.tensor([[0.0, 1.0, 2.0]])})
    assert evaluator.compute() == {"accuracy": 1.0, "top2_accuracy": 1.0}


def test_top5_on_many_classes():
    logits = torch.arange(10.0).repeat(3, 1)  # class 9 is top-1, classes 5..9 are the top-5
    labels = torch.tensor([9, 5, 4])
    evaluator = AccuracyEvaluator(topk=[1, 5])
    evaluator.process({"label": labels}, {"logits": logits})
    assert evaluator.compute() == pytest.approx({"accuracy": 1 / 3, "top5_accuracy": 2 / 3})


def test_no_samples_gives_zero_not_a_division_error():
    assert AccuracyEvaluator().compute() == {"accuracy": 0.0}
