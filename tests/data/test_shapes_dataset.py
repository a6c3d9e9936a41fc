"""Unit tests for vfm/data/shapes.py and tools/make_shapes_dataset.py: a deterministic, exactly-boxed synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_tool
from vfm.data.coco import CocoDetection
from vfm.data.shapes import make_shapes_dataset
from vfm.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shapes")
    return root, make_shapes_dataset(root, num_train=24, num_val=6, seed=3)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_gives_byte_identical_files(shapes, tmp_path):
    root, stats = shapes
    assert make_shapes_dataset(tmp_path / "again", 24, 6, seed=3) == stats
    again = files_of(tmp_path / "again")
    assert again == files_of(root)
    assert len(again) == 24 + 6 + 2
    # an image depends on (seed, split, index) only, not on how many images are made
    make_shapes_dataset(tmp_path / "fewer", 5, 1, seed=3)
    assert files_of(tmp_path / "fewer")["train/000004.png"] == again["train/000004.png"]
    make_shapes_dataset(tmp_path / "other", 24, 6, seed=4)
    assert files_of(tmp_path / "other")["train/000000.png"] != again["train/000000.png"]


def test_layout_categories_and_statistics(shapes):
    root, stats = shapes
    for split, count in (("train", 24), ("val", 6)):
        data = json.loads((root / "annotations" / f"{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == [1, 2, 3]
        assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle"]
        assert [image["id"] for image in data["images"]] == list(range(1, count + 1))
        assert len(list((root / split).glob("*.png"))) == count
        per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=count + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 5
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        assert all(a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3) for a in data["annotations"])
        areas = np.array([a["area"] for a in data["annotations"]])
        assert stats[split]["objects"] == len(areas) == sum(stats[split]["per_category"].values())
        assert stats[split]["area_buckets"] == {
            "small": int((areas < 1024).sum()),
            "medium": int(((areas >= 1024) & (areas < 9216)).sum()),
            "large": 0,
        }
        sides = [max(a["bbox"][2:]) for a in data["annotations"]]
        assert stats[split]["box_side_range"] == [min(sides), max(sides)] and 4 <= min(sides) and max(sides) <= 40


def test_boxes_are_tight_on_the_drawn_pixels(shapes):
    root, _ = shapes
    data = json.loads((root / "annotations" / "train.json").read_text())
    for image in data["images"]:
        pixels = np.asarray(Image.open(root / "train" / image["file_name"])).astype(int)
        assert pixels.shape == (64, 64, 3)
        boxes = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        in_boxes = np.zeros((64, 64), dtype=bool)
        for a in boxes:
            x, y, w, h = a["bbox"]
            in_boxes[y : y + h, x : x + w] = True
        background = np.median(pixels[~in_boxes], axis=0)
        # shapes differ from the background by >= 96 per channel, the noise has std 8
        foreground = np.abs(pixels - background).max(axis=-1) > 48
        assert not (foreground & ~in_boxes).any(), f"image {image['id']}: object pixels outside every box"
        assert foreground.sum() == sum(a["area"] for a in boxes)  # objects are disjoint; area = pixel count
        for a in boxes:
            x, y, w, h = a["bbox"]
            inside = foreground[y : y + h, x : x + w]
            # tight: the first and last row and column of the box all hold object pixels
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert inside.sum() >= a["area"] and a["area"] <= w * h


def test_loads_as_a_coco_detection_dataset(shapes):
    root, stats = shapes
    data = CocoDetection(str(root), "annotations/val.json", "val")
    assert len(data) == 6 and data.num_classes == 3 and data.category_ids == [1, 2, 3]
    assert sum(len(data[i]["target"]["labels"]) for i in range(len(data))) == stats["val"]["objects"]


def test_bad_arguments(tmp_path, shapes):
    with pytest.raises(ConfigError, match="image_size must be at least 16 pixels, got 8"):
        make_shapes_dataset(tmp_path / "a", 2, 1, image_size=8)
    with pytest.raises(ConfigError, match="num_train, num_val >= 0"):
        make_shapes_dataset(tmp_path / "b", -1, 1)
    with pytest.raises(DataError, match="already holds a dataset"):
        make_shapes_dataset(shapes[0], 2, 1)


def test_cli_writes_the_set_and_reports_errors_on_one_line(tmp_path):
    result = run_tool(
        "make_shapes_dataset", tmp_path / "set", "--train", "3", "--val", "2", "--image-size", "32", "--seed", "1"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["val"]["images"] == 2
    assert Image.open(tmp_path / "set" / "train" / "000002.png").size == (32, 32)
    result = run_tool("make_shapes_dataset", tmp_path / "set", "--train", "3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "already holds a dataset" in result.stderr
    result = run_tool("make_shapes_dataset", tmp_path / "small", "--image-size", "8")
    assert (
        result.returncode == 2
        and result.stderr == "error: shapes dataset: image_size must be at least 16 pixels, got 8\n"
    )
