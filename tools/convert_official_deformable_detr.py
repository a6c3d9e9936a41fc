#!/usr/bin/env python
"""Convert an official Deformable DETR checkpoint for vfm: python tools/convert_official_deformable_detr.py IN.pth
OUT.safetensors [--ann-file instances_val2017.json]; then train with load_from=OUT or evaluate with tools/eval.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vfm.errors import VfmError
from vfm.models.detection.official_keys import convert_official_checkpoint_file

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, convert, and turn a `VfmError` into one line on stderr with exit status 2."""
    parser = argparse.ArgumentParser(prog="convert_official_deformable_detr.py", description=__doc__.split(":")[0] + ".")
    parser.add_argument("source", help="checkpoint in the fundamentalvision/Deformable-DETR layout (.pth)")
    parser.add_argument("destination", help="output .safetensors with vfm's keys")
    parser.add_argument("--ann-file", help="COCO annotation file: keep its categories' class rows (91 raw ids -> 80)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        converted = convert_official_checkpoint_file(args.source, args.destination, args.ann_file)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {len(converted)} tensors to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
