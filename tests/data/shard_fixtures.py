"""Small image-text shards for the stream tests: PNGs whose pixels encode their index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vfm.data.shard_writer import write_pair_shards


def make_pairs(root: Path, count: int, maxcount: int, corrupt: tuple[int, ...] = ()) -> list[str]:
    """`count` records (image value = index % 256, caption "caption <index>") in shards of `maxcount`."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        path = root / "img" / f"{i:05d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n but not really an image")  # a PNG signature, then garbage
        else:
            Image.fromarray(np.full((8, 8, 3), i % 256, dtype=np.uint8)).save(path)
        records.append({"key": f"s{i:05d}", "image": f"img/{i:05d}.png", "caption": f"caption {i}", "label": i % 3})
    return write_pair_shards(records, root, str(root / "shards" / "pairs-%06d.tar"), maxcount)
