#!/usr/bin/env python
"""Write the captioned shapes set: python tools/make_shapes_captions.py ROOT --train N --val N [--docs N]."""

import json
import sys

from vfm.cli import OneLineErrorParser
from vfm.data.shapes_captions import make_shapes_captions
from vfm.errors import VfmError


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, generate the set, print its counts; a VfmError is one line on stderr, exit 2."""
    parser = OneLineErrorParser(prog="make_shapes_captions.py", description=__doc__)
    parser.add_argument("root", help="output folder (must not hold a captioned set yet)")
    parser.add_argument("--train", type=int, default=20000, help="number of training images")
    parser.add_argument("--val", type=int, default=1000, help="number of validation images")
    parser.add_argument("--docs", type=int, default=1000, help="number of interleaved documents (over training images)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square images in pixels")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        stats = make_shapes_captions(args.root, args.train, args.val, args.image_size, args.seed, args.docs, args.maxcount)
    except VfmError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
