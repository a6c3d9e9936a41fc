"""A generated captioned image set: 1-3 identical shapes per image, described by a small grammar with synonyms.

Each image holds `count` shapes of one kind and one colour, all small or all large, grouped on one side of the
image; the caption names the count, size, colour, shape and position, each through one of several synonyms
and sentence templates, so a text tower must learn that "crimson disc" and "red circle" mean the same thing.
The class label is (colour, shape): 6 x 3 = 18 classes, named "red circle", ..., for zero-shot evaluation.
Every image is drawn from its own seed (seed, split, index), so the same arguments give byte-identical files.

Written under `root`: `images/{train,val}/NNNNNN.png`, `{train,val}.jsonl` (one record per image: image path,
caption, label, class name and the attributes), `classes.json` (class names and zero-shot prompt templates),
`docs.jsonl` (interleaved documents: text and image slots, MMC4-like), `tokenizer/` (a word-level
tokenizer of the captions, for tiny language models) and, through `vfm.data.shard_writer`,
the webdataset shards `shards/{train,val}-NNNNNN.tar` and `shards/docs-NNNNNN.tar`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vfm.errors import ConfigError, DataError

COLOURS = {  # name: (RGB, synonyms used in captions)
    "red": ((220, 30, 30), ("red", "crimson", "scarlet")),
    "green": ((30, 170, 40), ("green", "emerald", "grass-green")),
    "blue": ((30, 60, 220), ("blue", "navy", "azure")),
    "yellow": ((235, 215, 30), ("yellow", "golden", "lemon")),
    "purple": ((140, 40, 180), ("purple", "violet", "plum")),
    "orange": ((245, 140, 20), ("orange", "amber", "tangerine")),
}
SHAPES = {  # name: (singular synonyms, plural synonyms)
    "circle": (("circle", "disc", "round dot"), ("circles", "discs", "round dots")),
    "square": (("square", "box", "block"), ("squares", "boxes", "blocks")),
    "triangle": (("triangle", "wedge", "pyramid"), ("triangles", "wedges", "pyramids")),
}
SIZES = {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")}
POSITIONS = {
    "left": ("on the left", "at the left side", "to the left"),
    "right": ("on the right", "at the right side", "to the right"),
    "top": ("at the top", "near the top edge", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom edge", "in the lower part"),
}
COUNTS = {1: ("a", "one", "a single"), 2: ("two", "a pair of", "2"), 3: ("three", "a trio of", "3")}
CAPTION_TEMPLATES = (
    "{count} {size} {colour} {shape} {position}",
    "a picture of {count} {size} {colour} {shape} {position}",
    "{position}, {count} {colour} {shape}, {size}",
    "here we see {count} {size} {colour} {shape} {position}",
    "{count} {colour} {shape} {position}",
)
PROMPT_TEMPLATES = ("a picture of a {}", "a {}", "there is a {}", "a small {}", "a large {}")
CLASSES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
SPLITS = ("train", "val")


def _cell(position: str, size: int) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) region of the image a group at `position` is drawn in."""
    half = size // 2
    return {"left": (0, 0, half, size), "right": (half, 0, size, size),
            "top": (0, 0, size, half), "bottom": (0, half, size, size)}[position]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)


def draw_example(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, dict[str, Any]]:
    """One image and its attributes (colour, shape, size, position, count) and caption."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = list(SHAPES)[rng.integers(len(SHAPES))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    count = int(rng.integers(1, 4))
    background = tuple(int(v) for v in rng.integers(0, 60, 3) + 170)  # light grey-ish, never a shape colour
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = _cell(position, image_size)
    side = max(3, round(image_size * (rng.uniform(0.10, 0.16) if size == "small" else rng.uniform(0.20, 0.26))))
    placed: list[tuple[int, int]] = []
    for _ in range(count):
        for _ in range(100):  # rejection sampling of non-overlapping places inside the cell
            x = int(rng.integers(x0, max(x0 + 1, x1 - side)))
            y = int(rng.integers(y0, max(y0 + 1, y1 - side)))
            if all(abs(x - px) > side or abs(y - py) > side for px, py in placed):
                break
        placed.append((x, y))
        jitter = rng.integers(-20, 21, 3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour][0], jitter, strict=True))
        _draw(draw, shape, (x, y, x + side - 1, y + side - 1), fill)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, 6.0, (image_size, image_size, 3))
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    words = {
        "count": COUNTS[count][rng.integers(3)],
        "size": SIZES[size][rng.integers(3)],
        "colour": COLOURS[colour][1][rng.integers(3)],
        "shape": SHAPES[shape][0 if count == 1 else 1][rng.integers(3)],
        "position": POSITIONS[position][rng.integers(3)],
    }
    caption = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(**words)
    attributes = {"colour": colour, "shape": shape, "size": size, "position": position, "count": count}
    return image, {"caption": caption, "label": CLASSES.index(f"{colour} {shape}"),
                   "classname": f"{colour} {shape}", "attributes": attributes}


def _document(rng: np.random.Generator, records: list[dict[str, Any]]) -> dict[str, Any]:
    """An interleaved document over 2-4 training images: text and image slots in reading order."""
    picks = rng.choice(len(records), size=int(rng.integers(2, 5)), replace=False)
    slots: list[dict[str, str]] = [{"text": "A page of shape pictures."}]
    for i, pick in enumerate(picks):
        record = records[int(pick)]
        if rng.random() < 0.5:  # caption before or after its image, as in web pages
            slots += [{"text": f"Picture {i + 1} shows {record['caption']}."}, {"image": record["image"]}]
        else:
            slots += [{"image": record["image"]}, {"text": f"Above: {record['caption']}."}]
    return {"slots": slots}


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON lines through a temporary file and a rename: a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(temporary, path)


def grammar_texts() -> list[str]:
    """Every word the caption grammar and the prompts can produce (so no caption has an unknown word)."""
    words = [w for _, synonyms in COLOURS.values() for w in synonyms] + [w for pair in SHAPES.values() for g in pair for w in g]
    words += [w for group in (SIZES, POSITIONS, COUNTS) for synonyms in group.values() for w in synonyms]
    words += [t.replace("{", " ").replace("}", " ") for t in CAPTION_TEMPLATES + PROMPT_TEMPLATES] + list(CLASSES)
    return words + ["summarize:"]


def class_word_synonyms() -> dict[str, list[str]]:
    """Each word of a class name and the words captions use for it (plurals included), for caption scoring."""
    synonyms = {name: list(words) for name, (_, words) in COLOURS.items()}
    synonyms |= {name: list(singular) + list(plural) for name, (singular, plural) in SHAPES.items()}
    return synonyms


def make_shapes_captions(root: str | Path, num_train: int, num_val: int, image_size: int = 64, seed: int = 0,
                         num_docs: int = 1000, maxcount: int = 1000) -> dict[str, Any]:
    """Write the captioned set (images, JSONL, classes, documents, shards) under `root`; returns counts."""
    from vfm.data.shard_writer import write_document_shards, write_pair_shards
    from vfm.data.word_tokenizer import train_word_tokenizer

    if num_train < 1 or num_val < 1:
        raise ConfigError(f"shapes captions: expected --train and --val >= 1, got {num_train}, {num_val}")
    if image_size < 16:
        raise ConfigError(f"shapes captions: --image-size must be at least 16 pixels, got {image_size}")
    root = Path(root)
    if (root / "classes.json").exists():
        raise DataError(f"{root}: already holds a captioned set (classes.json exists); remove it or choose another folder")
    records: dict[str, list[dict[str, Any]]] = {}
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val), strict=True)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(count):
            image, meta = draw_example(np.random.default_rng([seed, split_index, index]), image_size)
            name = f"images/{split}/{index:06d}.png"
            image.save(root / name, format="PNG")
            rows.append({"key": f"{split}-{index:06d}", "image": name, **meta})
        _write_lines(root / f"{split}.jsonl", rows)
        records[split] = rows
    rng = np.random.default_rng([seed, 2])
    docs = [{"key": f"doc-{i:06d}", **_document(rng, records["train"])} for i in range(num_docs)]
    _write_lines(root / "docs.jsonl", docs)
    shards = {split: write_pair_shards(records[split], root, str(root / "shards" / f"{split}-%06d.tar"), maxcount)
              for split in SPLITS}
    shards["docs"] = write_document_shards(docs, root, str(root / "shards" / "docs-%06d.tar"), maxcount) if docs else []
    # A word-level tokenizer of the captions (and prompts) for tiny language models.
    train_word_tokenizer(grammar_texts() + [r["caption"] for r in records["train"]], root / "tokenizer")
    # classes.json goes last: its presence means everything else is there.
    temporary = root / "classes.json.tmp"
    temporary.write_text(json.dumps({"classes": list(CLASSES), "templates": list(PROMPT_TEMPLATES),
                                     "synonyms": class_word_synonyms()}, indent=1))
    os.replace(temporary, root / "classes.json")
    return {"train": num_train, "val": num_val, "docs": num_docs, "classes": len(CLASSES),
            "shards": {name: len(paths) for name, paths in shards.items()}}
