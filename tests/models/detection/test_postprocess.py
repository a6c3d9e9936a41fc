"""Unit tests for vfm/models/detection/postprocess.py."""

from __future__ import annotations

import torch

from vfm.models.detection.postprocess import postprocess_focal, postprocess_softmax


def test_focal_keeps_top_query_class_pairs_in_original_pixels():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 1, 0] = 3.0  # best: query 1, class 0
    logits[0, 1, 1] = 2.0  # second: the same query, class 1
    logits[0, 2, 1] = 1.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 0.2], [0.5, 0.5, 1.0, 1.0]]])
    (result,) = postprocess_focal(logits, boxes, torch.tensor([[200, 100]]), num_top=3)  # orig (h, w) = (200, 100)
    assert result["labels"].tolist() == [0, 1, 1]
    assert result["labels"].dtype == torch.int64
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    torch.testing.assert_close(result["boxes"][0], torch.tensor([0.0, 80.0, 50.0, 120.0]))
    torch.testing.assert_close(result["boxes"][2], torch.tensor([0.0, 0.0, 100.0, 200.0]))


def test_softmax_excludes_no_object_and_takes_the_best_real_class():
    logits = torch.tensor([[[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]]])  # query 0 is mostly no-object
    boxes = torch.full((1, 2, 4), 0.5)
    (result,) = postprocess_softmax(logits, boxes, torch.tensor([[10, 10]]), num_top=100)
    probabilities = logits.softmax(-1)[0]
    assert result["labels"].tolist() == [0, 1]
    torch.testing.assert_close(result["scores"], torch.stack([probabilities[1, 0], probabilities[0, 1]]))
    torch.testing.assert_close(result["boxes"][0], torch.tensor([2.5, 2.5, 7.5, 7.5]))
