"""Unit tests for vfm/data/detection_transforms.py: boxes follow the pixels through every transform."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from vfm.data.detection_transforms import (
    Normalize,
    RandomSizeCrop,
    Resize,
    ToTensor,
    build_detection_transforms,
    crop,
    hflip,
)
from vfm.errors import ConfigError, RegistryError
from vfm.registry import DETECTION_TRANSFORMS

# DETR's training augmentation, scaled down from 800-px images to 80-px ones.
DETR_STYLE = [
    {"type": "random_horizontal_flip"},
    {
        "type": "random_select",
        "transforms1": [{"type": "random_resize", "sizes": [40, 48, 56, 64], "max_size": 100}],
        "transforms2": [
            {"type": "random_resize", "sizes": [50, 60, 70]},
            {"type": "random_size_crop", "min_size": 24, "max_size": 60},
            {"type": "random_resize", "sizes": [40, 48, 56, 64], "max_size": 100},
        ],
    },
    {"type": "to_tensor"},
]


def make_target(boxes: list[list[float]], labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    boxes_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    count = len(boxes_tensor)
    return {
        "boxes": boxes_tensor,
        "labels": torch.tensor(labels if labels is not None else list(range(count)), dtype=torch.int64),
        "area": (boxes_tensor[:, 2] - boxes_tensor[:, 0]) * (boxes_tensor[:, 3] - boxes_tensor[:, 1]),
        "iscrowd": torch.zeros(count, dtype=torch.int64),
    }


def rectangles_image(width: int, height: int, rectangles: list[list[int]]) -> Image.Image:
    """Black image with white filled rectangles given as [x1, y1, x2, y2) pixel edges."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in rectangles:
        pixels[y1:y2, x1:x2] = 255
    return Image.fromarray(pixels)


def test_resize_scales_boxes_and_areas_exactly():
    image = Image.new("RGB", (100, 50))
    target = make_target([[10, 5, 30, 25], [0, 0, 100, 50]])
    out_image, out = Resize(25)(image, target)  # shorter side 50 -> 25: factor 0.5 both ways
    assert out_image.size == (50, 25)
    assert out["boxes"].tolist() == [[5, 2.5, 15, 12.5], [0, 0, 50, 25]]
    assert out["area"].tolist() == [100.0, 1250.0]
    assert out["size"].tolist() == [25, 50]
    # longer side capped: 40 would make it 80 > 60, so the shorter side becomes round(60 * 50 / 100) = 30
    out_image, out = Resize(40, max_size=60)(image, target)
    assert out_image.size == (60, 30)
    assert out["boxes"][0].tolist() == pytest.approx([6, 3, 18, 15])
    # an explicit [height, width] stretches each axis by its own factor
    out_image, out = Resize([20, 40])(image, target)
    assert out_image.size == (40, 20)
    assert out["boxes"][0].tolist() == pytest.approx([4, 2, 12, 10])
    assert out["area"][0].item() == pytest.approx(400 * 0.4 * 0.4)


def test_flip_mirrors_boxes_and_twice_is_identity():
    image = rectangles_image(100, 50, [[10, 5, 30, 25]])
    target = make_target([[10, 5, 30, 25], [60, 0, 100, 50]])
    flipped_image, flipped = hflip(image, target)
    assert flipped["boxes"].tolist() == [[70, 5, 90, 25], [0, 0, 40, 50]]
    white = np.argwhere(np.asarray(flipped_image)[..., 0] == 255)
    assert (white[:, 1].min(), white[:, 1].max() + 1) == (70, 90)  # pixels moved with the box
    back_image, back = hflip(flipped_image, flipped)
    assert torch.equal(back["boxes"], target["boxes"]) and torch.equal(back["labels"], target["labels"])
    assert np.array_equal(np.asarray(back_image), np.asarray(image))


def test_crop_shifts_clips_and_drops_emptied_boxes_with_their_fields():
    image = Image.new("RGB", (100, 50))
    target = make_target([[0, 0, 10, 10], [50, 20, 70, 40], [90, 40, 100, 50], [40, 10, 60, 30]], labels=[3, 4, 5, 6])
    target["iscrowd"] = torch.tensor([0, 1, 0, 0])
    out_image, out = crop(image, target, top=15, left=45, height=30, width=40)
    assert out_image.size == (40, 30)
    # box 0 lies left of the region and box 2 right of it: dropped; box 3 loses its left quarter
    assert out["boxes"].tolist() == [[5, 5, 25, 25], [0, 0, 15, 15]]
    assert out["labels"].tolist() == [4, 6]
    assert out["iscrowd"].tolist() == [1, 0]
    assert out["area"].tolist() == pytest.approx([400, 400 * (15 * 15) / (20 * 20)])
    assert out["size"].tolist() == [30, 40]
    # a region without any box leaves consistent empty fields
    _, empty = crop(image, target, top=0, left=20, height=5, width=5)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["area"].shape == (0,)


def test_random_size_crop_respects_its_bounds_and_draws_from_torch():
    image = Image.new("RGB", (80, 50))
    transform = RandomSizeCrop(20, 60)
    sizes = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out_image, _ = transform(image, make_target([[0, 0, 80, 50]]))
        width, height = out_image.size
        assert 20 <= width <= 60 and 20 <= height <= 50
        sizes.add((width, height))
    assert len(sizes) > 20
    # an image smaller than min_size on one side keeps that side whole
    out_image, _ = RandomSizeCrop(30, 40)(Image.new("RGB", (100, 12)), make_target([]))
    assert out_image.size[1] == 12


def test_to_tensor_and_normalize_give_standardised_pixels_and_normalised_cxcywh():
    image = Image.new("RGB", (100, 50), (255, 0, 128))
    tensor, target = ToTensor()(image, make_target([[10, 5, 30, 25]]))
    assert tensor.shape == (3, 50, 100) and tensor.dtype == torch.float32
    tensor, target = Normalize()(tensor, target)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert tensor[:, 7, 7].tolist() == pytest.approx(expected, abs=1e-6)
    # centre (20, 15), size (20, 20), over (100, 50)
    assert target["boxes"].tolist() == [pytest.approx([0.2, 0.3, 0.2, 0.4])]
    with pytest.raises(TypeError, match="to_tensor"):
        Normalize()(image, make_target([]))


def test_boxes_keep_bounding_their_pixels_under_random_augmentation():
    rectangles = [[10, 8, 34, 30], [50, 20, 74, 52], [4, 40, 12, 56]]
    image = rectangles_image(80, 60, rectangles)
    pipeline = build_detection_transforms(DETR_STYLE)
    dropped = 0
    for seed in range(60):
        torch.manual_seed(seed)
        tensor, target = pipeline(image, make_target(rectangles))
        height, width = tensor.shape[-2:]
        boxes = target["boxes"]
        assert target["size"].tolist() == [height, width]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 3] <= height).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        white = tensor[0] > 0.5
        # every bright pixel lies in some box (up to the 1-px blur of resampling) ...
        ys, xs = torch.nonzero(white, as_tuple=True)
        inside = torch.zeros(len(xs), dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.tolist():
            inside |= (xs + 0.5 >= x1 - 1) & (xs + 0.5 <= x2 + 1) & (ys + 0.5 >= y1 - 1) & (ys + 0.5 <= y2 + 1)
        assert inside.all(), f"seed {seed}: bright pixels outside every box"
        # ... and each box is tight on the pixels of its rectangle (rectangles are far apart)
        for x1, y1, x2, y2 in boxes.tolist():
            region = white[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))]
            if (x2 - x1) < 2 or (y2 - y1) < 2:
                continue  # a sliver under 2 px may legitimately blur below the threshold
            rows, cols = torch.nonzero(region, as_tuple=True)
            assert len(rows), f"seed {seed}: box {[x1, y1, x2, y2]} holds no rectangle pixels"
            found = [cols.min() + int(x1), rows.min() + int(y1), cols.max() + int(x1) + 1, rows.max() + int(y1) + 1]
            assert np.allclose([float(v) for v in found], [x1, y1, x2, y2], atol=1.5), f"seed {seed}"
        dropped += len(rectangles) - len(boxes)
        assert torch.equal(target["labels"], target["labels"].sort().values)  # order kept
    assert dropped > 0  # crops did remove boxes in some of the seeds


def test_same_torch_seed_same_result_whatever_python_and_numpy_do():
    image = rectangles_image(80, 60, [[10, 8, 34, 30]])
    pipeline = build_detection_transforms(DETR_STYLE)
    results = []
    for other_seed in (1, 2):
        random.seed(other_seed)
        np.random.seed(other_seed)
        torch.manual_seed(123)
        tensor, target = pipeline(image, make_target([[10, 8, 34, 30]]))
        results.append((tensor, target["boxes"]))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_registry_builds_nested_nodes_and_reports_paths():
    assert set(DETECTION_TRANSFORMS.list()) >= {
        "resize",
        "random_resize",
        "random_horizontal_flip",
        "random_size_crop",
        "random_select",
        "to_tensor",
        "normalize",
    }
    assert build_detection_transforms(None) is None and build_detection_transforms([]) is None
    bad_nested = [{"type": "random_select", "transforms1": [{"type": "resise", "size": 3}], "transforms2": []}]
    with pytest.raises(
        RegistryError,
        match=r"data\.train\.transforms\.0\.transforms1\.0\.type: unknown detection_transforms type 'resise'",
    ):
        build_detection_transforms(bad_nested, "data.train.transforms")
    with pytest.raises(
        ConfigError, match=r"transforms\.0: expected 1 <= min_size <= max_size, got min_size=50, max_size=40"
    ):
        build_detection_transforms([{"type": "random_size_crop", "min_size": 50, "max_size": 40}])
    with pytest.raises(ConfigError, match=r"transforms\.0\.sizes: expected a non-empty list"):
        build_detection_transforms([{"type": "random_resize", "sizes": []}])
