"""Draw a detector's predictions on images and write them as PNGs."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from vfm.data.coco import collate_detection
from vfm.data.detection_transforms import build_detection_transforms
from vfm.engine.evaluate import load_objective, move_to_device
from vfm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Distinct colours for up to 10 classes, then repeated.
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]


def list_images(path: str | Path) -> list[Path]:
    """`path` itself if it is an image, else the images directly inside the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return images
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    raise DataError(f"{path}: no such image or folder")


def class_names_from(cfg: DictConfig) -> list[str] | None:
    """Category names in contiguous-label order from data.val's COCO annotation file, when there is one."""
    node = cfg.data.val
    if node is None or "ann_file" not in node or "root" not in node:
        return None
    ann_file = Path(node.ann_file)
    ann_file = ann_file if ann_file.is_absolute() else Path(node.root) / ann_file
    if not ann_file.is_file():
        return None
    categories = json.loads(ann_file.read_text()).get("categories", [])
    return [c.get("name", str(c["id"])) for c in sorted(categories, key=lambda c: c["id"])]


def draw_detections(image: Image.Image, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                    class_names: Sequence[str] | None = None, score_threshold: float = 0.3) -> Image.Image:
    """A copy of `image` with each box (xyxy pixels) scoring >= `score_threshold` outlined and captioned."""
    canvas = image.convert("RGB")
    # Small images (the shapes set is 64 px) are enlarged so captions stay readable.
    scale = max(1, 256 // max(canvas.size))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        if score < score_threshold:
            continue
        colour = PALETTE[int(label) % len(PALETTE)]
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        name = class_names[int(label)] if class_names is not None and int(label) < len(class_names) else str(int(label))
        draw.text((x0 + 2, max(0, y0 - 11)), f"{name} {score:.2f}", fill=colour)
    return canvas


@torch.no_grad()
def visualize(cfg: DictConfig, checkpoint: str, inputs: str | Path, out_dir: str | Path,
              score_threshold: float = 0.3, weights: str = "auto") -> list[Path]:
    """Run the detector of `cfg` with `checkpoint` on every image of `inputs`; returns the PNGs written."""
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold: got {score_threshold}, expected a value in [0, 1]")
    images = list_images(inputs)
    model = load_objective(cfg, checkpoint, weights)
    if not hasattr(model, "predict"):
        raise ConfigError(f"objective.type={cfg.objective.type!r} has no predict(); it is not a detector")
    device = next(model.parameters()).device
    # The evaluation transforms of data.val (resize, normalise); the default is to_tensor + normalize.
    node = cfg.data.val if cfg.data.val is not None else cfg.data.train
    transforms = build_detection_transforms(node.get("transforms"), "data.val.transforms")
    if transforms is None:
        transforms = build_detection_transforms([{"type": "to_tensor"}, {"type": "normalize"}], "data.val.transforms")
    names = class_names_from(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, path in enumerate(images):
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")
        except OSError as error:
            raise DataError(f"{path}: cannot read image: {error}") from error
        width, height = image.size
        target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "area": torch.zeros(0), "iscrowd": torch.zeros(0, dtype=torch.int64),
                  "image_id": torch.tensor(index), "orig_size": torch.tensor([height, width]),
                  "size": torch.tensor([height, width])}
        tensor, target = transforms(image, target)
        batch = move_to_device(collate_detection([{"image": tensor, "target": target}]), device)
        prediction = model.predict(batch)[0]
        scores = prediction["scores"].detach().float().cpu()
        shown = int((scores >= score_threshold).sum())
        if shown == 0:  # say why the picture is empty, and what threshold would show something
            highest = f"the highest of {len(scores)} scored {scores.max().item():.3f}" if len(scores) else "the model predicted none"
            logger.warning("%s: no box scored >= %.2f (%s); lower --score-threshold to see more", path.name,
                           score_threshold, highest)
        else:
            logger.info("%s: %d of %d boxes scored >= %.2f", path.name, shown, len(scores), score_threshold)
        drawn = draw_detections(image, prediction["boxes"].cpu(), prediction["scores"].cpu(),
                                prediction["labels"].cpu(), names, score_threshold)
        destination = out_dir / f"{path.stem}.png"
        drawn.save(destination)
        written.append(destination)
    return written
