"""Unit tests for vfm/data/coco.py: COCO-format loading, validation, targets and batching."""

from __future__ import annotations

import copy
import json
import logging
import re
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from vfm.data.coco import CocoDetection, collate_detection
from vfm.data.loader import build_loader
from vfm.errors import ConfigError, DataError
from vfm.registry import DATASETS

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
# Non-contiguous category ids, listed out of order: labels follow the sorted ids 3, 7, 12.
CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 12, "name": "twelve"}]
IMAGES = [  # listed out of id order on purpose: the dataset orders by id
    {"id": 20, "file_name": "b.png", "width": 50, "height": 60},
    {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
    {"id": 30, "file_name": "c.png", "width": 20, "height": 20},  # no annotations
]
ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 3, 20, 12], "area": 200.0, "iscrowd": 0},
    {"id": 2, "image_id": 10, "category_id": 12, "bbox": [0, 0, 40, 30], "area": 1000.0, "iscrowd": 1},
    {"id": 3, "image_id": 20, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 900.0, "iscrowd": 0},
    {"id": 4, "image_id": 20, "category_id": 12, "bbox": [25.5, 0, 25, 10], "area": 250.0, "iscrowd": 0},  # 0.5 px over
]
COLOURS = {"a.png": (255, 0, 128), "b.png": (0, 255, 0), "c.png": (10, 20, 30)}


def write_dataset(root: Path, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES) -> Path:
    """A tiny COCO set under root: images/*.png and ann.json; returns the annotation path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image in IMAGES:
        Image.new("RGB", (image["width"], image["height"]), COLOURS[image["file_name"]]).save(
            root / "images" / image["file_name"]
        )
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_dataset(tmp_path)
    return tmp_path


def dataset(root: Path, **kwargs) -> CocoDetection:
    return CocoDetection(str(root), "ann.json", "images", **kwargs)


def test_labels_follow_sorted_category_ids(root):
    data = dataset(root)
    assert data.category_ids == [3, 7, 12] and data.num_classes == 3
    assert len(data) == 3 and [image["id"] for image in data.images] == [10, 20, 30]
    assert data[0]["target"]["labels"].tolist() == [1]  # category 7; the crowd box (12) is dropped
    assert data[1]["target"]["labels"].tolist() == [0, 2]  # categories 3 and 12


def test_item_holds_normalised_image_and_cxcywh_target(root):
    item = dataset(root)[1]  # image 20: 50 wide, 60 high
    image, target = item["image"], item["target"]
    assert image.shape == (3, 60, 50) and image.dtype == torch.float32
    expected = (torch.tensor([0.0, 1.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(image[:, 30, 25], expected)
    # [10, 20, 30, 40] xywh -> centre (25, 40), size (30, 40); [25.5, 0, 25, 10] is clipped to x2 = 50
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[25 / 50, 40 / 60, 30 / 50, 40 / 60], [37.75 / 50, 5 / 60, 24.5 / 50, 10 / 60]])
    )
    assert target["image_id"].dtype == torch.int64 and target["image_id"].item() == 20
    assert target["orig_size"].tolist() == [60, 50] and target["size"].tolist() == [60, 50]
    assert target["area"].tolist() == [900.0, 250.0] and target["iscrowd"].tolist() == [0, 0]
    empty = dataset(root)[2]["target"]  # an image without annotations is kept, with empty fields
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64


def test_crowd_boxes_only_when_asked(root):
    target = dataset(root, include_crowd=True)[0]["target"]
    assert target["labels"].tolist() == [1, 2] and target["iscrowd"].tolist() == [0, 1]
    torch.testing.assert_close(target["boxes"][1], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_transforms_change_size_but_keep_orig_size(root):
    data = dataset(root, transforms=[{"type": "resize", "size": 15}, {"type": "to_tensor"}, {"type": "normalize"}])
    item = data[0]  # 40x30 -> 20x15
    assert item["image"].shape == (3, 15, 20)
    assert item["target"]["size"].tolist() == [15, 20] and item["target"]["orig_size"].tolist() == [30, 40]
    torch.testing.assert_close(item["target"]["boxes"], torch.tensor([[14 / 40, 9 / 30, 20 / 40, 12 / 30]]))
    assert item["target"]["area"].tolist() == [50.0]
    with pytest.raises(ConfigError, match="last transform must be 'normalize'"):
        dataset(root, transforms=[{"type": "to_tensor"}])


def test_max_samples_keeps_the_first_images_by_id(root):
    data = dataset(root, max_samples=2)
    assert [image["id"] for image in data.images] == [10, 20]
    with pytest.raises(ConfigError, match="max_samples"):
        dataset(root, max_samples=0)


def test_collate_pads_bottom_right_and_masks_the_padding(root):
    data = dataset(root)
    samples = [data[0], data[1]]  # (3, 30, 40) and (3, 60, 50)
    batch = data.collate_fn(samples)
    assert batch.keys() == {"images", "masks", "targets"}
    assert batch["images"].shape == (2, 3, 60, 50) and batch["masks"].shape == (2, 60, 50)
    assert batch["masks"].dtype == torch.bool
    assert torch.equal(batch["images"][0, :, :30, :40], samples[0]["image"])
    assert batch["images"][0, :, 30:].abs().sum() == 0 and batch["images"][0, :, :, 40:].abs().sum() == 0
    assert not batch["masks"][0, :30, :40].any() and batch["masks"][0, 30:].all() and batch["masks"][0, :, 40:].all()
    assert batch["masks"][0].sum() == 60 * 50 - 30 * 40
    assert not batch["masks"][1].any()
    assert batch["targets"][1] is samples[1]["target"]
    padded = collate_detection(samples, size_divisibility=16)
    assert padded["images"].shape == (2, 3, 64, 64) and padded["masks"][1].sum() == 64 * 64 - 60 * 50


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["annotations"][2].update(bbox=[10, 20, -3, 40]),
            r"annotation id 3 of image id 20: bbox \[10, 20, -3, 40\] has non-positive",
        ),
        (
            lambda d: d["annotations"][2].update(bbox=[10, 20, 30, 0]),
            r"annotation id 3 of image id 20: bbox .* non-positive width or height",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[30, 3, 20, 12]),
            r"annotation id 1 of image id 10: bbox \[30, 3, 20, 12\] lies outside the 40x30 image",
        ),
        (
            lambda d: d["annotations"][0].update(bbox=[-2, 3, 20, 12]),
            r"annotation id 1 of image id 10: bbox .* lies outside",
        ),
        (
            lambda d: d["annotations"][3].update(category_id=99),
            r"annotation id 4 of image id 20: unknown category id 99",
        ),
        (lambda d: d["annotations"][3].update(image_id=77), r"annotation id 4 of image id 77: unknown image id 77"),
        (lambda d: d["annotations"][1].pop("bbox"), r"annotations id 2 is missing key 'bbox'"),
        (lambda d: d.pop("categories"), r"missing key 'categories'"),
        (
            lambda d: d["images"][0].update(width="50"),
            r"image id 20: expected an integer id and positive integer width",
        ),
    ],
)
def test_bad_annotations_name_file_and_ids(tmp_path, change, expected):
    data = copy.deepcopy({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES})
    change(data)
    write_dataset(tmp_path, data["images"], data["annotations"], data.get("categories", []))
    if "categories" not in data:
        raw = json.loads((tmp_path / "ann.json").read_text())
        del raw["categories"]
        (tmp_path / "ann.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "ann.json")) + ": " + expected):
        dataset(tmp_path)


def test_malformed_json_and_missing_file(tmp_path):
    (tmp_path / "ann.json").write_text('{"images": [')
    with pytest.raises(DataError, match=r"ann\.json: not valid JSON"):
        dataset(tmp_path)
    with pytest.raises(DataError, match=r"nope\.json: annotation file not found"):
        CocoDetection(str(tmp_path), "nope.json", "images")


def test_missing_image_file_names_path_and_id(root):
    (root / "images" / "b.png").unlink()
    with pytest.raises(DataError, match=r"images/b\.png: image file of image id 20 not found"):
        dataset(root)


def test_image_of_another_size_than_the_file_says(root):
    Image.new("RGB", (41, 30)).save(root / "images" / "a.png")
    with pytest.raises(DataError, match=r"a\.png: image id 10 is 41x30, the annotation file .*ann\.json says 40x30"):
        dataset(root)[0]


def test_skip_invalid_drops_whole_images_with_one_counted_warning(tmp_path, caplog):
    annotations = copy.deepcopy(ANNOTATIONS)
    annotations[3]["bbox"] = [45, 0, 25, 10]  # image 20: far outside
    annotations[0]["category_id"] = 5  # image 10: unknown category
    write_dataset(tmp_path, IMAGES, annotations)
    with caplog.at_level(logging.WARNING, logger="vfm.data.coco"):
        data = dataset(tmp_path, skip_invalid=True)
    assert [image["id"] for image in data.images] == [30] and data.num_skipped == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 images (2 with invalid annotations, 0 with missing files)" in warnings[0].getMessage()

    caplog.clear()
    write_dataset(tmp_path)
    (tmp_path / "images" / "a.png").unlink()
    with caplog.at_level(logging.WARNING, logger="vfm.data.coco"):
        data = dataset(tmp_path, skip_invalid=True)
    assert [image["id"] for image in data.images] == [20, 30]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0].count(
        "1 with missing files"
    ) == 1


def test_registry_and_loader_batch_through_seeded_dataset(root):
    node = {
        "type": "coco_detection",
        "root": str(root),
        "ann_file": str(root / "ann.json"),
        "img_folder": "images",
        "transforms": [
            {"type": "random_horizontal_flip"},
            {"type": "random_resize", "sizes": [10, 20, 30]},
            {"type": "to_tensor"},
            {"type": "normalize"},
        ],
        "size_divisibility": 4,
    }
    assert isinstance(DATASETS.build(node, "data.train"), CocoDetection)  # an absolute ann_file works too
    data_cfg = types.SimpleNamespace(batch_size=2, val_batch_size=3, num_workers=0, pin_memory=False)

    def batches(seed: int) -> list[dict]:
        return list(build_loader(node, "data.train", data_cfg, seed=seed, train=True))

    first, again = batches(0), batches(0)
    assert len(first) == 1  # 3 images, batch 2, drop_last
    batch = first[0]
    assert batch["images"].shape[0] == 2 and batch["images"].shape[2] % 4 == 0 and batch["images"].shape[3] % 4 == 0
    for i, target in enumerate(batch["targets"]):
        height, width = target["size"].tolist()
        assert (
            not batch["masks"][i, :height, :width].any()
            and batch["masks"][i].sum() == batch["masks"][i].numel() - height * width
        )
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    # augmentation is a function of (seed, epoch, index): the same seed gives the same batch
    assert torch.equal(batch["images"], again[0]["images"])
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(batch["targets"], again[0]["targets"], strict=True))
    others = [batches(seed)[0]["images"] for seed in (1, 2, 3)]
    assert any(image.shape != batch["images"].shape or not torch.equal(image, batch["images"]) for image in others)
    evaluation = next(iter(build_loader(node, "data.val", data_cfg, seed=0, train=False)))
    assert [t["image_id"].item() for t in evaluation["targets"]] == [10, 20, 30]
    with pytest.raises(Exception, match=r"data\.train\.transforms\.0\.type: unknown detection_transforms type"):
        DATASETS.build({**node, "transforms": [{"type": "flip"}]}, "data.train")


def test_loader_error_names_the_node_then_the_file(tmp_path):
    from omegaconf import OmegaConf

    from vfm.data.loader import build_loader

    node = {"type": "coco_detection", "root": str(tmp_path), "ann_file": "annotations/train.json", "img_folder": "train"}
    data_cfg = OmegaConf.create({"batch_size": 2, "val_batch_size": None, "num_workers": 0, "pin_memory": False})
    with pytest.raises(DataError, match=rf"^data\.train: {tmp_path}/annotations/train\.json: annotation file not found$"):
        build_loader(node, "data.train", data_cfg, seed=0, train=True)
