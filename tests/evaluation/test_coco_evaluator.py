"""Unit tests for vfm/evaluation/coco.py: COCO AP of hand-made predictions against known values."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from vfm.errors import ConfigError, DataError
from vfm.evaluation.coco import CocoEvaluator, format_coco_table
from vfm.registry import EVALUATORS

BACKENDS = ["pycocotools", "faster_coco_eval"]
KEYS = ["bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"]
# Ground truth: (image id, category id, [x, y, w, h]); areas are w*h, one object per COCO area range.
# Every width is a multiple of 40 so that a shift of 9/40 of it gives IoU (w - d) / (w + d) = 31/49 = 0.633.
OBJECTS = [
    (1, 5, [10, 10, 40, 40]),  # 1600: medium
    (1, 9, [60, 120, 40, 20]),  # 800: small
    (2, 5, [0, 0, 40, 30]),  # 1200: medium
    (3, 9, [20, 20, 120, 100]),  # 12000: large
]
SHIFTED_IOU = 31 / 49


def write_ground_truth(path: Path, objects=OBJECTS, image_ids=(1, 2, 3), category_ids=(9, 5)) -> Path:
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in image_ids]
    annotations = [
        {"id": n + 1, "image_id": image_id, "category_id": category, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        for n, (image_id, category, box) in enumerate(objects)
    ]
    categories = [{"id": c, "name": f"c{c}"} for c in category_ids]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def ann_file(tmp_path: Path) -> Path:
    return write_ground_truth(tmp_path / "gt.json")


def predictions(objects=OBJECTS, shift: float = 0.0, scores=None, image_ids=(1, 2, 3)) -> list[dict]:
    """One output dict per image: xyxy boxes moved right by `shift` of their width, labels from sorted ids [5, 9]."""
    outputs = []
    for image_id in image_ids:
        mine = [(n, category, box) for n, (i, category, box) in enumerate(objects) if i == image_id]
        boxes = [[x + shift * w, y, x + w + shift * w, y + h] for _, _, (x, y, w, h) in mine]
        outputs.append(
            {
                "image_id": torch.tensor(image_id),
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([1.0 - 0.1 * n if scores is None else scores[n] for n, _, _ in mine]),
                "labels": torch.tensor([[5, 9].index(category) for _, category, _ in mine], dtype=torch.int64),
            }
        )
    return outputs


def evaluate(ann_file: Path, outputs: list[dict], backend: str = "pycocotools", **kwargs) -> dict[str, float]:
    evaluator = CocoEvaluator(str(ann_file), backend=backend, **kwargs)
    evaluator.process({}, outputs)
    return evaluator.compute()


def fraction_of_recall_points(recalls: list[float]) -> float:
    """Interpolated AP when precision is 1 up to the last recall of `recalls` and 0 after (COCO's 101 points)."""
    points = np.linspace(0.0, 1.0, 101)
    return float((np.searchsorted(recalls, points, side="left") < len(recalls)).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions_score_one(ann_file, backend):
    metrics = evaluate(ann_file, predictions(), backend)
    assert list(metrics) == KEYS
    assert metrics == pytest.approx(dict.fromkeys(KEYS, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_at_iou_063_pass_three_of_ten_thresholds(ann_file, backend):
    metrics = evaluate(ann_file, predictions(shift=9 / 40), backend)
    # thresholds 0.50, 0.55, 0.60 <= 0.633 < 0.65 ... 0.95: three of ten matched, each with AP 1
    assert SHIFTED_IOU == pytest.approx(0.6327, abs=1e-4)
    assert metrics == pytest.approx(
        {"bbox_AP": 0.3, "bbox_AP50": 1.0, "bbox_AP75": 0.0, "bbox_APs": 0.3, "bbox_APm": 0.3, "bbox_APl": 0.3}
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_detection_lowers_recall(tmp_path, backend):
    # one category, four objects over two images; the detection of the last one is missing
    objects = [(1, 5, [0, 0, 40, 40]), (1, 5, [100, 100, 40, 40]), (2, 5, [50, 50, 40, 40]), (2, 5, [0, 100, 40, 40])]
    path = write_ground_truth(tmp_path / "gt.json", objects, image_ids=(1, 2), category_ids=(5, 9))
    outputs = predictions(objects, image_ids=(1, 2))
    for key in ("boxes", "scores", "labels"):
        outputs[1][key] = outputs[1][key][:1]
    metrics = evaluate(path, outputs, backend)
    expected = fraction_of_recall_points([0.25, 0.5, 0.75])  # precision 1 up to recall 3/4
    assert expected == pytest.approx(76 / 101)
    assert metrics["bbox_AP"] == pytest.approx(expected) and metrics["bbox_AP50"] == pytest.approx(expected)
    assert metrics["bbox_APm"] == pytest.approx(expected)  # 1600 px: all medium
    assert metrics["bbox_APs"] == -1.0 and metrics["bbox_APl"] == -1.0  # no objects there: COCO's -1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_confident_false_positive_costs_precision(tmp_path, backend):
    objects = [(1, 5, [0, 0, 40, 40]), (1, 5, [100, 100, 40, 40])]
    path = write_ground_truth(tmp_path / "gt.json", objects, image_ids=(1,), category_ids=(5,))
    output = predictions(objects, image_ids=(1,))[0]
    output["boxes"] = torch.cat([torch.tensor([[150.0, 0.0, 190.0, 40.0]]), output["boxes"]])
    output["scores"] = torch.tensor([0.9, 0.8, 0.7])
    output["labels"] = torch.tensor([0, 0, 0])
    # ranked: miss, hit, hit -> precision 1/2 at recall 1/2 and 2/3 at recall 1; interpolated 2/3 throughout
    assert evaluate(path, [output], backend)["bbox_AP"] == pytest.approx(2 / 3)


def test_labels_map_to_sorted_category_ids(ann_file):
    outputs = predictions()
    for output in outputs:
        output["labels"] = 1 - output["labels"]  # swap 5 <-> 9
    assert evaluate(ann_file, outputs)["bbox_AP"] == 0.0
    assert CocoEvaluator(str(ann_file)).category_ids == [5, 9]


def test_only_processed_images_count(ann_file):
    outputs = predictions(image_ids=(1,))
    assert evaluate(ann_file, outputs)["bbox_AP"] == pytest.approx(1.0)  # images 2 and 3 were not evaluated
    empty = {
        "image_id": 3,
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    metrics = evaluate(ann_file, [*outputs, empty])  # image 3 seen, its large object missed
    assert metrics["bbox_APl"] == 0.0 and metrics["bbox_APs"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions_give_zero_without_crashing(ann_file, backend):
    empty = [
        {
            "image_id": i,
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }
        for i in (1, 2, 3)
    ]
    assert evaluate(ann_file, empty, backend) == dict.fromkeys(KEYS, 0.0)
    assert CocoEvaluator(str(ann_file), backend=backend).compute() == dict.fromkeys(KEYS, 0.0)  # nothing processed


def test_max_detections_keeps_the_top_scored(tmp_path):
    objects = [(1, 5, [0, 0, 40, 40]), (1, 5, [100, 100, 40, 40])]
    path = write_ground_truth(tmp_path / "gt.json", objects, image_ids=(1,), category_ids=(5,))
    metrics = evaluate(path, predictions(objects, image_ids=(1,)), max_detections=1)
    assert metrics["bbox_AP"] == pytest.approx(fraction_of_recall_points([0.5]))  # recall stops at 1/2


def test_backends_agree_on_noisy_predictions(ann_file):
    generator = torch.Generator().manual_seed(0)
    outputs = []
    for output in predictions():
        count = len(output["boxes"])
        noise = torch.randn(count * 3, 4, generator=generator) * 6
        boxes = output["boxes"].repeat(3, 1) + noise
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        outputs.append(
            {
                "image_id": output["image_id"],
                "boxes": boxes,
                "scores": torch.rand(count * 3, generator=generator),
                "labels": torch.randint(0, 2, (count * 3,), generator=generator),
            }
        )
    results = [evaluate(ann_file, outputs, backend) for backend in BACKENDS]
    assert 0.05 < results[0]["bbox_AP"] < 0.95  # a case where the ranking matters
    assert results[0] == pytest.approx(results[1], abs=1e-9)


def test_image_id_from_the_batch_targets_and_bad_outputs(ann_file):
    outputs = predictions()
    batch = {"targets": [{"image_id": output.pop("image_id")} for output in outputs]}
    evaluator = EVALUATORS.build({"type": "coco_detection", "ann_file": str(ann_file)}, "eval.evaluators.0")
    evaluator.process(batch, outputs)
    assert evaluator.compute()["bbox_AP"] == pytest.approx(1.0)
    bad_label = predictions()
    bad_label[0]["labels"] = torch.tensor([0, 2])
    with pytest.raises(ConfigError, match=r"label 2 of image id 1 is outside \[0, 2\)"):
        evaluator.process({}, bad_label)
    unknown = predictions()
    unknown[0]["image_id"] = 42
    with pytest.raises(DataError, match=r"gt\.json: predictions for image id 42"):
        evaluator.process({}, unknown)
    with pytest.raises(
        Exception, match=r"eval\.evaluators\.0\.backend: expected one of 'pycocotools', 'faster_coco_eval'"
    ):
        EVALUATORS.build(
            {"type": "coco_detection", "ann_file": str(ann_file), "backend": "detectron"}, "eval.evaluators.0"
        )
    with pytest.raises(DataError, match=r"missing\.json: annotation file not found"):
        CocoEvaluator(str(ann_file.parent / "missing.json"))


def test_table_and_log(ann_file, caplog):
    with caplog.at_level(logging.INFO, logger="vfm.evaluation.coco"):
        metrics = evaluate(ann_file, predictions(shift=9 / 40))
    table = format_coco_table({**metrics, "bbox_APl": -1.0})
    assert table.splitlines() == [
        "    AP   AP50   AP75    APs    APm    APl",
        "  30.0  100.0    0.0   30.0   30.0      -",
    ]
    assert "COCO bbox AP on 3 images" in caplog.text and "100.0" in caplog.text


def test_gathers_over_ranks_and_broadcasts(ann_file, monkeypatch):
    """With a (faked) process group of two, rank 0 evaluates both ranks' images and every rank returns that."""
    import torch.distributed as dist

    other_rank = CocoEvaluator(str(ann_file))
    other_rank.process({}, predictions(image_ids=(2, 3), shift=9 / 40))
    broadcast: dict = {}

    def all_gather_object(gathered, mine):
        gathered[0], gathered[1] = mine, other_rank.detections

    def broadcast_object_list(box, src):
        if box[0] is None:
            box[0] = broadcast["value"]
        else:
            broadcast["value"] = box[0]

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast_object_list)
    evaluator = CocoEvaluator(str(ann_file))
    evaluator.process({}, predictions(image_ids=(1,)))  # rank 0: perfect on image 1
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    metrics = evaluator.compute()
    # image 1 perfect (a small and a medium object), images 2 and 3 at IoU 0.63 (a medium and a large one)
    assert metrics["bbox_APs"] == pytest.approx(1.0) and metrics["bbox_APl"] == pytest.approx(0.3)
    assert metrics["bbox_AP50"] == pytest.approx(1.0) and 0.3 < metrics["bbox_AP"] < 1.0
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert other_rank.compute() == metrics  # rank 1 does not evaluate; it receives rank 0's result
