"""A synthetic COCO-format detection set: 1-5 flat-coloured shapes on a noisy background per image.

Classes are shape types (category ids 1..3: circle, square, triangle). Object sides are drawn uniformly
from 4 px to 40/64 of the image side; boxes are the tight box of the drawn pixels and `area` their
count, so a box bounds its object exactly. Objects never touch (a one-pixel gap), so every object is
fully visible. At the default 64x64, by COCO's absolute area buckets (small < 32², medium < 96²),
about 95% of the objects are small and 5% medium (squares over 32 px, circles over ~36 px; seed 0:
281 of 6,023 train and 30 of 586 val objects); there are none large, so `bbox_APl` is -1. Every image is drawn from its own seed (seed, split, index),
so the same arguments give byte-identical files and an image does not depend on how many come before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vfm.errors import ConfigError, DataError

CATEGORIES = ("circle", "square", "triangle")
MIN_OBJECTS, MAX_OBJECTS = 1, 5
MIN_SIDE = 4
MAX_SIDE_FRACTION = 40 / 64
PLACEMENT_TRIES = 50
SPLITS = ("train", "val")
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO's area-range bounds


def _shape_mask(category: int, left: int, top: int, side: int, image_size: int) -> np.ndarray:
    """Boolean (H, W) mask of one shape in the side x side square at (left, top)."""
    canvas = Image.new("1", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    right, bottom = left + side - 1, top + side - 1  # PIL's corners are inclusive
    name = CATEGORIES[category]
    if name == "circle":
        draw.ellipse([left, top, right, bottom], fill=1)
    elif name == "square":
        draw.rectangle([left, top, right, bottom], fill=1)
    else:
        draw.polygon([(left + (side - 1) / 2, top), (left, bottom), (right, bottom)], fill=1)
    return np.array(canvas, dtype=bool)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Grow a mask by one pixel in the 8 directions."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def draw_image(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One (H, W, 3) uint8 image and its objects: `category` index, `bbox` [x, y, w, h], `area`."""
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0.0, 8.0, (image_size, image_size, 3))
    pixels = np.broadcast_to(background, (image_size, image_size, 3)).astype(np.float64)
    max_side = max(MIN_SIDE, round(MAX_SIDE_FRACTION * image_size))
    occupied = np.zeros((image_size, image_size), dtype=bool)
    objects = []
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        for _ in range(PLACEMENT_TRIES):
            category = int(rng.integers(len(CATEGORIES)))
            side = int(rng.integers(MIN_SIDE, max_side + 1))
            left, top = (int(v) for v in rng.integers(0, image_size - side + 1, 2))
            mask = _shape_mask(category, left, top, side, image_size)
            if not (mask & _dilate(occupied)).any():
                break
        else:
            break  # the image is too full for another object
        # Each channel differs from the background by 96..160 (mod 256), so shapes stand out.
        colour = (background + rng.integers(96, 161, 3)) % 256
        pixels[mask] = colour
        occupied |= mask
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        objects.append({"category": category, "bbox": bbox, "area": int(mask.sum())})
    image = np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)
    return image, objects


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(temporary, path)


def _split_stats(annotations: list[dict[str, Any]], num_images: int) -> dict[str, Any]:
    areas = np.array([a["area"] for a in annotations])
    sides = np.array([max(a["bbox"][2:]) for a in annotations])
    return {
        "images": num_images,
        "objects": len(annotations),
        "per_category": {
            name: sum(a["category_id"] == i + 1 for a in annotations) for i, name in enumerate(CATEGORIES)
        },
        "area_buckets": {
            "small": int((areas < SMALL_AREA).sum()),
            "medium": int(((areas >= SMALL_AREA) & (areas < MEDIUM_AREA)).sum()),
            "large": int((areas >= MEDIUM_AREA).sum()),
        },
        "box_side_range": [int(sides.min()), int(sides.max())] if len(sides) else [0, 0],
    }


def make_shapes_dataset(root: str | Path, num_train: int, num_val: int, image_size: int = 64, seed: int = 0) -> dict:
    """Write root/{train,val}/*.png and root/annotations/{train,val}.json; returns per-split statistics."""
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ConfigError(
            f"shapes dataset: expected num_train, num_val >= 0 and not both 0, got {num_train}, {num_val}"
        )
    if image_size < 16:
        raise ConfigError(f"shapes dataset: image_size must be at least 16 pixels, got {image_size}")
    root = Path(root)
    if (root / "annotations").exists():
        raise DataError(f"{root}: already holds a dataset (annotations/ exists); remove it or choose another folder")
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    stats, coco_files = {}, {}
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val), strict=True)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            pixels, objects = draw_image(rng, image_size)
            file_name = f"{index:06d}.png"
            Image.fromarray(pixels).save(folder / file_name, format="PNG")
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for shape in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": shape["category"] + 1,
                        "bbox": shape["bbox"],
                        "area": shape["area"],
                        "iscrowd": 0,
                    }
                )
        coco_files[split] = {
            "info": {"description": f"vfm synthetic shapes, seed {seed}, {image_size}x{image_size}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        stats[split] = _split_stats(annotations, count)
    # The annotation files go last: their presence means the images are all there.
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, data in coco_files.items():
        _write_json(root / "annotations" / f"{split}.json", data)
    return stats
