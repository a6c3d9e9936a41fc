"""Benchmark decoded image-text samples per second: vfm's webdataset stream against an image-folder loader.

Both read the same captioned shapes (PNG + caption, from tools/make_shapes_captions.py), decode to RGB float
tensors and resize to 32 px, through a torch DataLoader at batch 64 with 0, 1 and 2 workers: the stream reads
the tar shards (`image_text_shards`, shuffle buffer 1000), the baseline opens one PNG file per sample listed in
train.jsonl (a map-style Dataset, shuffled by the DataLoader). Samples/s is the median of `--repeats` passes over
`--samples` samples after a warm-up pass; ratios are against the image-folder loader at the same worker count.

    python benchmarks/vl_data.py --data data/shapes_captions
    python benchmarks/vl_data.py --data /tmp/sc --samples 2000 --out /tmp/vl_data.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
TRANSFORMS = [{"type": "resize", "size": 32}]


class CaptionFolder(Dataset):
    """The baseline: one image file per sample, caption from the JSONL record."""

    def __init__(self, root: Path) -> None:
        from vfm.data.transforms import build_transforms

        self.root = root
        self.records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
        self.transform = build_transforms(TRANSFORMS)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        with Image.open(self.root / record["image"]) as image:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
        return {"image": self.transform(pixels), "text": record["caption"]}


def rate(make_loader, samples: int, repeats: int) -> float:
    """Median samples/s over `repeats` passes of `samples` samples, after one warm-up pass."""
    rates = []
    for i in range(repeats + 1):
        loader = make_loader()
        start, seen = time.perf_counter(), 0
        for batch in itertools.islice(loader, samples // 64):
            seen += len(batch["text"])
        if i:
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> int:
    """Measure both loaders per worker count, print the table, write the JSON."""
    from vfm.data.webdataset_stream import ImageTextShards

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes_captions")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "vl_data.json"))
    args = parser.parse_args()
    if not (args.data / "classes.json").exists():
        parser.error(f"--data {args.data}: no captioned set (run tools/make_shapes_captions.py {args.data})")
    torch.set_num_threads(1)
    rows = []
    for workers in map(int, args.workers.split(",")):
        folder = rate(lambda w=workers: DataLoader(CaptionFolder(args.data), batch_size=64, shuffle=True, num_workers=w),
                      args.samples, args.repeats)
        stream = rate(lambda w=workers: DataLoader(ImageTextShards(str(args.data / "shards" / "train-*.tar"),
                                                                   transforms=TRANSFORMS), batch_size=64, num_workers=w),
                      args.samples, args.repeats)
        rows.append({"workers": workers, "image_folder": folder, "webdataset_stream": stream, "ratio": stream / folder})
    print(f"decoded samples/s, batch 64, 32 px, {args.samples} samples per pass")
    print(f"{'workers':>7} {'image folder':>13} {'shard stream':>13} {'ratio':>6}")
    for row in rows:
        print(f"{row['workers']:>7} {row['image_folder']:13.0f} {row['webdataset_stream']:13.0f} {row['ratio']:6.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": datetime.date.today().isoformat(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
